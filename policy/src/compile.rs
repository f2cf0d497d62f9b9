//! Policies compiled into what the programs look up:
//!
//! - address classes: the IPv4 space cut at every pod address and ipBlock
//!   boundary; each piece gets the class of the set of peers it matches (and,
//!   for pods, how the named ports egress rules use resolve on them), so a
//!   packet needs one LPM lookup to know who its remote side is;
//! - verdict entries: (local endpoint, class, direction, protocol, port
//!   prefix) -> rule, for every rule of every policy selecting the endpoint.
//!
//! The number of entries grows with endpoints x classes x port prefixes; the
//! per-packet work does not grow at all.

use crate::model::{Direction, Model, PodInfo, PortSel, Prefix};
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

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ClassKey {
    pub peers: BTreeSet<usize>,
    pub named: BTreeMap<(String, u8), u16>,
}

/// One verdict entry, shaped like `struct policy_key`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EntryKey {
    pub endpoint_id: u32,
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
    /// Per endpoint id: (isolated for ingress, isolated for egress).
    pub isolation: BTreeMap<u32, (bool, bool)>,
    pub entries: BTreeMap<EntryKey, u32>,
    /// Rule ids from 1; index `id - 1`.
    pub rules: Vec<RuleRef>,
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

pub fn compile(model: &Model, local: &[LocalEndpoint]) -> Compiled {
    let mut c = Compiled::default();
    let mut class_index = BTreeMap::new();
    let mut rule_index = BTreeMap::new();

    // Named ports that egress rules use: classes of pods differ by them.
    let mut egress_names: BTreeSet<(String, u8)> = BTreeSet::new();
    for p in &model.policies {
        for r in p.egress.iter().flatten() {
            for s in r.ports.iter().flatten() {
                if let PortSel::Named(n) = &s.port {
                    egress_names.insert((n.clone(), s.proto));
                }
            }
        }
    }

    // The pieces of the address space and their classes.
    let mut prefixes: BTreeMap<Prefix, Option<&PodInfo>> = BTreeMap::new();
    prefixes.insert((Ipv4Addr::UNSPECIFIED, 0), None);
    for peer in &model.peers {
        if let crate::model::Peer::Block { cidr, except } = peer {
            prefixes.entry(*cidr).or_insert(None);
            for x in except {
                prefixes.entry(*x).or_insert(None);
            }
        }
    }
    for pod in &model.pods {
        prefixes.insert((pod.ip, 32), Some(pod));
    }
    for (prefix, pod) in &prefixes {
        let peers: BTreeSet<usize> = model
            .peers
            .iter()
            .enumerate()
            .filter(|(_, peer)| match pod {
                Some(p) => peer.matches_pod(p),
                None => peer.matches_prefix(*prefix),
            })
            .map(|(i, _)| i)
            .collect();
        let named = pod
            .map(|p| {
                p.named_ports
                    .iter()
                    .filter(|(k, _)| egress_names.contains(*k))
                    .map(|(k, v)| (k.clone(), *v))
                    .collect()
            })
            .unwrap_or_default();
        let id = intern(&mut c.classes, &mut class_index, ClassKey { peers, named });
        c.ipcache.insert(*prefix, id);
    }

    // Verdicts for this node's endpoints.
    for ep in local {
        let Some(namespace) = ep.pod.as_ref().map(|k| k.namespace.as_str()) else {
            // An attachment that names no pod: no policy can select it.
            c.isolation.insert(ep.endpoint_id, (false, false));
            continue;
        };
        let pod = ep.pod.as_ref().and_then(|k| model.pod(k));
        let mut iso = (false, false);
        for d in [Direction::Ingress, Direction::Egress] {
            let (isolated, policies) = deciding(model, pod, namespace, d);
            if d == Direction::Ingress {
                iso.0 = isolated;
            } else {
                iso.1 = isolated;
            }
            for policy in policies {
                for (i, rule) in policy.rules(d).into_iter().flatten().enumerate() {
                    let rule_id = intern(
                        &mut c.rules,
                        &mut rule_index,
                        RuleRef {
                            policy: policy.key.clone(),
                            direction: d,
                            index: i,
                        },
                    );
                    for (ci, class) in c.classes.iter().enumerate() {
                        let class_id = ci as u32 + 1;
                        if let Some(peers) = &rule.peers {
                            if !peers.iter().any(|p| class.peers.contains(p)) {
                                continue;
                            }
                        }
                        let mut add = |proto: Option<u8>, port: u16, port_bits: u8| {
                            c.entries
                                .entry(EntryKey {
                                    endpoint_id: ep.endpoint_id,
                                    class_id,
                                    direction: d,
                                    proto,
                                    port,
                                    port_bits,
                                })
                                .or_insert(rule_id);
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
                                            let resolved = match d {
                                                Direction::Ingress => pod.and_then(|p| {
                                                    p.named_ports
                                                        .get(&(n.clone(), s.proto))
                                                        .copied()
                                                }),
                                                Direction::Egress => {
                                                    class.named.get(&(n.clone(), s.proto)).copied()
                                                }
                                            };
                                            if let Some(port) = resolved {
                                                add(Some(s.proto), port, 16);
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
        c.isolation.insert(ep.endpoint_id, iso);
    }
    c
}

/// Whether a local endpoint is isolated for `d`, and the policies whose
/// rules decide what it may exchange that way. `pod` is `None` for a pod
/// attached before its Pod object arrived (or after it went): its labels
/// are unknown, so it is isolated as soon as some policy of its namespace
/// could select it, and allowed only what the policies selecting every pod
/// of the namespace allow. That is a subset of what it will be allowed once
/// its labels are known: it fails closed, never open
/// (docs/threat-model.md, "Policy identities").
fn deciding<'a>(
    model: &'a Model,
    pod: Option<&'a PodInfo>,
    namespace: &str,
    d: Direction,
) -> (bool, Vec<&'a crate::model::Policy>) {
    match pod {
        Some(p) => {
            let v: Vec<_> = model.selecting(p, d).map(|(_, pol)| pol).collect();
            (!v.is_empty(), v)
        }
        None => {
            let could: Vec<_> = model
                .policies
                .iter()
                .filter(|p| p.key.namespace == namespace && p.rules(d).is_some())
                .collect();
            let sure = could
                .iter()
                .copied()
                .filter(|p| crate::selector::selects_everything(&p.pod_selector))
                .collect();
            (!could.is_empty(), sure)
        }
    }
}

impl Compiled {
    /// The class of an address: longest prefix, as st_ipcache answers.
    pub fn class_of(&self, ip: Ipv4Addr) -> u32 {
        (0..=32u8)
            .rev()
            .find_map(|len| {
                let m = if len == 0 {
                    0
                } else {
                    u32::MAX << (32 - len as u32)
                };
                self.ipcache
                    .get(&(Ipv4Addr::from(u32::from(ip) & m), len))
                    .copied()
            })
            .unwrap_or(0)
    }

    /// The rule that allows (endpoint, remote, direction, proto, port), as
    /// st_policy answers (longest matching prefix); `None` if none does.
    pub fn lookup(
        &self,
        endpoint_id: u32,
        remote: Ipv4Addr,
        d: Direction,
        proto: u8,
        port: u16,
    ) -> Option<u32> {
        let class_id = self.class_of(remote);
        let exact = (0..=16u8).rev().find_map(|bits| {
            let m = if bits == 0 {
                0
            } else {
                u16::MAX << (16 - bits as u32)
            };
            self.entries
                .get(&EntryKey {
                    endpoint_id,
                    class_id,
                    direction: d,
                    proto: Some(proto),
                    port: port & m,
                    port_bits: bits,
                })
                .copied()
        });
        exact.or_else(|| {
            self.entries
                .get(&EntryKey {
                    endpoint_id,
                    class_id,
                    direction: d,
                    proto: None,
                    port: 0,
                    port_bits: 0,
                })
                .copied()
        })
    }
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
