//! Policies compiled into what the programs look up:
//!
//! - address classes: the IPv4 space cut at every pod address and ipBlock
//!   boundary; each piece gets the class of the set of peers it matches (and,
//!   for pods, how the named ports egress rules use resolve on them), so a
//!   packet needs one LPM lookup to know who its remote side is;
//! - identities: the pods of this node, grouped by what decides their
//!   verdicts (the policies selecting them per direction, and the named
//!   ports their ingress rules resolve on them). A pod's endpoint entry
//!   carries its identity, so a new pod needs one write: its entry. Every
//!   namespace with a policy also has the identity of a pod of it whose
//!   Pod object is not known (yet): attached before its object arrived,
//!   or after it went ([`unknown_identity_key`]);
//! - verdict entries: (identity, class, direction, protocol, port prefix)
//!   -> rule, for every rule of every policy selecting the identity.
//!
//! [`compile`] computes all of it from scratch; `index::PolicyIndex` keeps
//! the same result up to date change by change. The number of entries grows
//! with identities x classes x port prefixes; the per-packet work does not
//! grow at all.

use crate::model::{Direction, Model, Peer, PodInfo, Policy, PortSel, Prefix};
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use strake_source::ObjectKey;

/// A pod attached to this node.
#[derive(Debug, Clone)]
pub struct LocalEndpoint {
    pub pod: Option<ObjectKey>,
    pub endpoint_id: u32,
    pub ip: Ipv4Addr,
}

/// What an address is to the policies: the peers it matches (by id in the
/// table of whoever computed it) and, for a pod, its named ports that
/// egress rules use.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ClassKey {
    pub peers: BTreeSet<usize>,
    pub named: BTreeMap<(String, u8), u16>,
}

/// What decides a local pod's verdicts.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct IdentityKey {
    /// (isolated for ingress, for egress).
    pub isolated: (bool, bool),
    /// Policies whose rules decide what it may exchange, per direction.
    pub ingress: Vec<ObjectKey>,
    pub egress: Vec<ObjectKey>,
    /// Its named ports that those ingress rules name.
    pub named: BTreeMap<(String, u8), u16>,
}

impl IdentityKey {
    /// (isolated for ingress, for egress).
    pub fn isolation(&self) -> (bool, bool) {
        self.isolated
    }
}

/// One verdict entry, shaped like `struct policy_key`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EntryKey {
    pub identity: u32,
    pub class_id: u32,
    pub direction: Direction,
    /// `None`: every protocol and port (a rule without ports).
    pub proto: Option<u8>,
    pub port: u16,
    /// Leading port bits that must match (0: every port of `proto`).
    pub port_bits: u8,
}

/// What a rule id stands for.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RuleRef {
    pub policy: ObjectKey,
    pub direction: Direction,
    pub index: usize,
}

impl std::fmt::Display for RuleRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {} rule {}",
            self.policy,
            self.direction.name(),
            self.index
        )
    }
}

#[derive(Debug, Clone, Default)]
pub struct Compiled {
    /// Class ids from 1; index `id - 1`.
    pub classes: Vec<ClassKey>,
    pub ipcache: BTreeMap<Prefix, u32>,
    /// Identity ids from 1; index `id - 1`.
    pub identities: Vec<IdentityKey>,
    /// This node's pods and their identities.
    pub local: BTreeMap<ObjectKey, u32>,
    /// Per namespace with a policy: the identity of its pods whose Pod
    /// object is not known.
    pub unknown: BTreeMap<String, u32>,
    pub entries: BTreeMap<EntryKey, u32>,
    /// Rule ids from 1; index `id - 1`.
    pub rules: Vec<RuleRef>,
    /// Peer keys (`Peer::key`) by the ids class keys use.
    pub peer_keys: Vec<String>,
}

/// Splits an inclusive port range into (start, prefix bits) blocks.
pub fn port_prefixes(start: u16, end: u16) -> Vec<(u16, u8)> {
    let mut out = Vec::new();
    let (mut s, e) = (start as u32, end as u32);
    while s <= e {
        let mut size: u32 = if s == 0 {
            1 << 16
        } else {
            s & s.wrapping_neg()
        };
        while s + size - 1 > e {
            size >>= 1;
        }
        out.push((s as u16, 16 - size.trailing_zeros() as u8));
        s += size;
    }
    out
}

fn intern<T: Ord + Clone>(v: &mut Vec<T>, index: &mut BTreeMap<T, u32>, x: T) -> u32 {
    if let Some(id) = index.get(&x) {
        return *id;
    }
    v.push(x.clone());
    let id = v.len() as u32;
    index.insert(x, id);
    id
}

/// Named ports (name, protocol) that egress rules of `policies` use:
/// classes of pods differ by them.
pub fn egress_names<'a>(policies: impl Iterator<Item = &'a Policy>) -> BTreeSet<(String, u8)> {
    let mut out = BTreeSet::new();
    for p in policies {
        for r in p.egress.iter().flatten() {
            for s in r.ports.iter().flatten() {
                if let PortSel::Named(n) = &s.port {
                    out.insert((n.clone(), s.proto));
                }
            }
        }
    }
    out
}

/// The class of an address: the pod holding it (`owner`), or the piece of
/// the address space `prefix` is.
pub fn class_key<'a>(
    peers: impl Iterator<Item = (usize, &'a Peer)>,
    owner: Option<&PodInfo>,
    prefix: Prefix,
    egress_names: &BTreeSet<(String, u8)>,
) -> ClassKey {
    let peers = peers
        .filter(|(_, peer)| match owner {
            Some(p) => peer.matches_pod(p),
            None => peer.matches_prefix(prefix),
        })
        .map(|(i, _)| i)
        .collect();
    let named = owner
        .map(|p| {
            p.named_ports
                .iter()
                .filter(|(k, _)| egress_names.contains(*k))
                .map(|(k, v)| (k.clone(), *v))
                .collect()
        })
        .unwrap_or_default();
    ClassKey { peers, named }
}

/// The identity of a local pod, given the policies of its namespace.
pub fn identity_key<'a>(pod: &PodInfo, policies: impl Iterator<Item = &'a Policy>) -> IdentityKey {
    let mut k = IdentityKey::default();
    for p in policies.filter(|p| p.selects(pod)) {
        if let Some(rules) = &p.ingress {
            k.ingress.push(p.key.clone());
            for r in rules {
                for s in r.ports.iter().flatten() {
                    if let PortSel::Named(n) = &s.port {
                        if let Some(port) = pod.named_ports.get(&(n.clone(), s.proto)) {
                            k.named.insert((n.clone(), s.proto), *port);
                        }
                    }
                }
            }
        }
        if p.egress.is_some() {
            k.egress.push(p.key.clone());
        }
    }
    k.isolated = (!k.ingress.is_empty(), !k.egress.is_empty());
    k
}

/// The identity of a pod of a namespace whose policies are `policies`, for
/// as long as its Pod object is not known: attached before the object
/// arrived (or after it went). Its labels are unknown, so it is isolated
/// per direction as soon as some policy of its namespace could select it,
/// and allowed only what the policies selecting every pod of the namespace
/// allow (named ports wait for its containers). That is a subset of what it
/// will be allowed once its labels are known: it fails closed, never open
/// (docs/threat-model.md, "Policy identities"). `None` where no policy
/// could select it: nothing isolates it.
pub fn unknown_identity_key<'a>(policies: impl Iterator<Item = &'a Policy>) -> Option<IdentityKey> {
    let mut k = IdentityKey::default();
    let mut any = false;
    for p in policies {
        any = true;
        let everything = crate::selector::selects_everything(&p.pod_selector);
        if p.ingress.is_some() {
            k.isolated.0 = true;
            if everything {
                k.ingress.push(p.key.clone());
            }
        }
        if p.egress.is_some() {
            k.isolated.1 = true;
            if everything {
                k.egress.push(p.key.clone());
            }
        }
    }
    any.then_some(k)
}

/// Verdict entries of identity `id` (`key`) for one class: every rule of
/// its policies that lets that class in (ingress) or out to it (egress).
/// The first rule to claim an entry keeps it.
#[allow(clippy::too_many_arguments)]
pub fn class_entries<'p>(
    id: u32,
    key: &IdentityKey,
    policy: &dyn Fn(&ObjectKey) -> Option<&'p Policy>,
    class_id: u32,
    class: &ClassKey,
    rule_id: &mut dyn FnMut(RuleRef) -> u32,
    out: &mut BTreeMap<EntryKey, u32>,
) {
    for (d, list) in [
        (Direction::Ingress, &key.ingress),
        (Direction::Egress, &key.egress),
    ] {
        for p in list.iter().filter_map(policy) {
            for (i, rule) in p.rules(d).into_iter().flatten().enumerate() {
                if let Some(peers) = &rule.peers {
                    if !peers.iter().any(|p| class.peers.contains(p)) {
                        continue;
                    }
                }
                let rid = rule_id(RuleRef {
                    policy: p.key.clone(),
                    direction: d,
                    index: i,
                });
                let mut add = |proto: Option<u8>, port: u16, port_bits: u8| {
                    out.entry(EntryKey {
                        identity: id,
                        class_id,
                        direction: d,
                        proto,
                        port,
                        port_bits,
                    })
                    .or_insert(rid);
                };
                match &rule.ports {
                    None => add(None, 0, 0),
                    Some(specs) => {
                        for s in specs {
                            match &s.port {
                                PortSel::Any => add(Some(s.proto), 0, 0),
                                PortSel::Range(a, b) => {
                                    for (port, bits) in port_prefixes(*a, *b) {
                                        add(Some(s.proto), port, bits);
                                    }
                                }
                                PortSel::Named(n) => {
                                    // Resolved on the destination pod.
                                    let named = match d {
                                        Direction::Ingress => &key.named,
                                        Direction::Egress => &class.named,
                                    };
                                    if let Some(port) = named.get(&(n.clone(), s.proto)) {
                                        add(Some(s.proto), *port, 16);
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The pieces of the address space: everywhere (0/0), every ipBlock's
/// bounds, every pod address; a pod's /32 names its pod (the last pod by
/// key, if two claim one address).
pub fn pieces<'a>(
    peers: impl Iterator<Item = &'a Peer>,
    pods: impl Iterator<Item = &'a PodInfo>,
) -> BTreeMap<Prefix, Option<&'a PodInfo>> {
    let mut out: BTreeMap<Prefix, Option<&PodInfo>> = BTreeMap::new();
    out.insert((Ipv4Addr::UNSPECIFIED, 0), None);
    for peer in peers {
        if let Peer::Block { cidr, except } = peer {
            out.entry(*cidr).or_insert(None);
            for x in except {
                out.entry(*x).or_insert(None);
            }
        }
    }
    for pod in pods {
        if let Some(ip) = pod.ip {
            out.insert((ip, 32), Some(pod));
        }
    }
    out
}

/// Everything, from scratch, for the pods `local` names (this node's).
pub fn compile(model: &Model, local: &[ObjectKey]) -> Compiled {
    let mut c = Compiled {
        peer_keys: model.peers.iter().map(|p| p.key()).collect(),
        ..Default::default()
    };
    let mut class_index = BTreeMap::new();
    let mut identity_index = BTreeMap::new();
    let mut rule_index = BTreeMap::new();
    let names = egress_names(model.policies.iter());
    for (prefix, pod) in pieces(model.peers.iter(), model.pods.values()) {
        let key = class_key(model.peers.iter().enumerate(), pod, prefix, &names);
        let id = intern(&mut c.classes, &mut class_index, key);
        c.ipcache.insert(prefix, id);
    }
    for k in local {
        let Some(pod) = model.pod(k) else { continue };
        let key = identity_key(
            pod,
            model
                .policies
                .iter()
                .filter(|p| p.key.namespace == k.namespace),
        );
        let id = intern(&mut c.identities, &mut identity_index, key);
        c.local.insert(k.clone(), id);
    }
    let namespaces: BTreeSet<&str> = model
        .policies
        .iter()
        .map(|p| p.key.namespace.as_str())
        .collect();
    for ns in namespaces {
        let key = unknown_identity_key(model.policies.iter().filter(|p| p.key.namespace == ns))
            .expect("the namespace has a policy");
        let id = intern(&mut c.identities, &mut identity_index, key);
        c.unknown.insert(ns.to_string(), id);
    }
    let by_key: BTreeMap<&ObjectKey, &Policy> =
        model.policies.iter().map(|p| (&p.key, p)).collect();
    let policy = |k: &ObjectKey| by_key.get(k).copied();
    for (ii, ik) in c.identities.iter().enumerate() {
        for (ci, ck) in c.classes.iter().enumerate() {
            let mut rule_id = |r: RuleRef| intern(&mut c.rules, &mut rule_index, r);
            class_entries(
                ii as u32 + 1,
                ik,
                &policy,
                ci as u32 + 1,
                ck,
                &mut rule_id,
                &mut c.entries,
            );
        }
    }
    c
}

/// A class by what it is: its peers' keys and its named ports.
pub type SemClass = (BTreeSet<String>, BTreeMap<(String, u8), u16>);

/// An entry by what it is: (identity, a prefix of its class, direction,
/// protocol, port, port bits, rule).
pub type SemEntry = (IdentityKey, Prefix, Direction, Option<u8>, u16, u8, RuleRef);

/// Compiled state in terms that do not depend on how ids were handed out:
/// two compilations of the same state compare equal.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Semantic {
    pub ipcache: BTreeMap<Prefix, SemClass>,
    pub local: BTreeMap<ObjectKey, IdentityKey>,
    pub unknown: BTreeMap<String, IdentityKey>,
    pub entries: BTreeSet<SemEntry>,
}

impl Semantic {
    /// From id-based tables: `class`, `identity`, `rule` and `peer` resolve
    /// ids. Entries are listed per prefix of their class, so that two
    /// classes with one key (impossible in either) would show.
    #[allow(clippy::too_many_arguments)]
    pub fn from_tables(
        ipcache: &BTreeMap<Prefix, u32>,
        class: &dyn Fn(u32) -> Option<ClassKey>,
        peer: &dyn Fn(usize) -> String,
        local: &BTreeMap<ObjectKey, u32>,
        unknown: &BTreeMap<String, u32>,
        identity: &dyn Fn(u32) -> Option<IdentityKey>,
        entries: &BTreeMap<EntryKey, u32>,
        rule: &dyn Fn(u32) -> Option<RuleRef>,
    ) -> Semantic {
        let sem_class = |id: u32| -> Option<SemClass> {
            let k = class(id)?;
            Some((k.peers.iter().map(|p| peer(*p)).collect(), k.named))
        };
        let mut by_class: BTreeMap<u32, Vec<Prefix>> = BTreeMap::new();
        let mut s = Semantic::default();
        for (p, c) in ipcache {
            by_class.entry(*c).or_default().push(*p);
            s.ipcache.insert(*p, sem_class(*c).unwrap_or_default());
        }
        for (k, i) in local {
            s.local.insert(k.clone(), identity(*i).unwrap_or_default());
        }
        for (ns, i) in unknown {
            s.unknown
                .insert(ns.clone(), identity(*i).unwrap_or_default());
        }
        for (e, r) in entries {
            let ik = identity(e.identity).unwrap_or_default();
            let rr = rule(*r).unwrap_or(RuleRef {
                policy: ObjectKey::new("?", "?"),
                direction: e.direction,
                index: usize::MAX,
            });
            for p in by_class.get(&e.class_id).into_iter().flatten() {
                s.entries.insert((
                    ik.clone(),
                    *p,
                    e.direction,
                    e.proto,
                    e.port,
                    e.port_bits,
                    rr.clone(),
                ));
            }
        }
        s
    }
}

impl Compiled {
    pub fn semantic(&self) -> Semantic {
        Semantic::from_tables(
            &self.ipcache,
            &|id| self.classes.get(id as usize - 1).cloned(),
            &|p| self.peer_keys[p].clone(),
            &self.local,
            &self.unknown,
            &|id| self.identities.get(id as usize - 1).cloned(),
            &self.entries,
            &|id| self.rules.get(id as usize - 1).cloned(),
        )
    }

    /// The class of an address: longest prefix, as st_ipcache answers.
    pub fn class_of(&self, ip: Ipv4Addr) -> u32 {
        class_of(&self.ipcache, ip)
    }

    /// The identity of a local pod, if it is one.
    pub fn identity_of(&self, pod: &ObjectKey) -> Option<u32> {
        self.local.get(pod).copied()
    }

    /// The identity an endpoint attached for `pod` gets: its own, else (its
    /// Pod object unknown) its namespace's for unknown pods; `None`: nothing
    /// isolates it.
    pub fn identity_for(&self, pod: Option<&ObjectKey>) -> Option<u32> {
        let pod = pod?;
        self.identity_of(pod)
            .or_else(|| self.unknown.get(&pod.namespace).copied())
    }

    /// (isolated for ingress, for egress) of an identity.
    pub fn isolation(&self, identity: u32) -> (bool, bool) {
        self.identities
            .get((identity as usize).wrapping_sub(1))
            .map(|k| k.isolation())
            .unwrap_or_default()
    }

    /// The rule that allows (identity, remote, direction, proto, port), as
    /// st_policy answers (longest matching prefix); `None` if none does.
    pub fn lookup(
        &self,
        identity: u32,
        remote: Ipv4Addr,
        d: Direction,
        proto: u8,
        port: u16,
    ) -> Option<u32> {
        lookup(
            &self.entries,
            identity,
            self.class_of(remote),
            d,
            proto,
            port,
        )
    }
}

/// Longest-prefix class lookup in an ipcache.
pub fn class_of(ipcache: &BTreeMap<Prefix, u32>, ip: Ipv4Addr) -> u32 {
    (0..=32u8)
        .rev()
        .find_map(|len| {
            let m = if len == 0 {
                0
            } else {
                u32::MAX << (32 - len as u32)
            };
            ipcache
                .get(&(Ipv4Addr::from(u32::from(ip) & m), len))
                .copied()
        })
        .unwrap_or(0)
}

/// The verdict entry lookup the program does: the longest port prefix of
/// the protocol, else a rule without ports.
pub fn lookup(
    entries: &BTreeMap<EntryKey, u32>,
    identity: u32,
    class_id: u32,
    d: Direction,
    proto: u8,
    port: u16,
) -> Option<u32> {
    let exact = (0..=16u8).rev().find_map(|bits| {
        let m = if bits == 0 {
            0
        } else {
            u16::MAX << (16 - bits as u32)
        };
        entries
            .get(&EntryKey {
                identity,
                class_id,
                direction: d,
                proto: Some(proto),
                port: port & m,
                port_bits: bits,
            })
            .copied()
    });
    exact.or_else(|| {
        entries
            .get(&EntryKey {
                identity,
                class_id,
                direction: d,
                proto: None,
                port: 0,
                port_bits: 0,
            })
            .copied()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_ranges_split_into_aligned_prefixes() {
        assert_eq!(port_prefixes(80, 80), vec![(80, 16)]);
        assert_eq!(port_prefixes(0, 65535), vec![(0, 0)]);
        assert_eq!(port_prefixes(80, 81), vec![(80, 15)]);
        assert_eq!(port_prefixes(81, 84), vec![(81, 16), (82, 15), (84, 16)]);
        let p = port_prefixes(1000, 30000);
        let covered: u32 = p.iter().map(|(_, b)| 1u32 << (16 - *b as u32)).sum();
        assert_eq!(covered, 29001);
        assert!(p.len() < 32);
    }
}
