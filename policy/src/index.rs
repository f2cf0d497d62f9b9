//! The compiled policy of one node, kept up to date change by change: what
//! [`crate::compile::compile`] computes from scratch, at the cost of what a
//! change touches.
//!
//! - a pod's labels or address change: its address piece is classified
//!   again (its peers are evaluated on it: O(peers)); if it lands in a class
//!   nobody had, that class's verdict entries are computed for this node's
//!   identities (O(identities x rules)); a class nobody has any more loses
//!   its entries. A pod of this node gets its identity again;
//! - a namespace's labels change: the pieces of its pods are classified
//!   again;
//! - a policy changes: the peers it adds or drops are evaluated on every
//!   piece (O(pieces) per peer), this node's pods of its namespace get their
//!   identities again, and so does the namespace's identity for pods whose
//!   object is not known; identities that name the policy get their entries
//!   again.
//!
//! Ids (classes, identities, rules) are stable while in use; an id freed by
//! a change is not handed out again until the change's writes are taken
//! ([`PolicyIndex::take_dirty`]), so no entry ever means two things at once.

use crate::compile::{
    class_entries, class_key, identity_key, unknown_identity_key, ClassKey, EntryKey, IdentityKey,
    RuleRef, Semantic,
};
use crate::model::{read_policy, Peer, PodInfo, Policy, Prefix};
use crate::selector::Labels;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use strake_source::ObjectKey;

/// Ids for keys, reference-counted, lowest free id first, freed ids held
/// back until `release`.
#[derive(Debug, Clone)]
struct Table<K: Ord + Clone> {
    by_key: BTreeMap<K, u32>,
    by_id: BTreeMap<u32, (K, u32)>,
    free: BTreeSet<u32>,
    next: u32,
    held: Vec<u32>,
}

impl<K: Ord + Clone> Default for Table<K> {
    fn default() -> Self {
        Table {
            by_key: BTreeMap::new(),
            by_id: BTreeMap::new(),
            free: BTreeSet::new(),
            next: 1,
            held: Vec::new(),
        }
    }
}

impl<K: Ord + Clone> Table<K> {
    /// One more reference to `k`; returns its id and whether it is new.
    fn acquire(&mut self, k: &K) -> (u32, bool) {
        if let Some(id) = self.by_key.get(k) {
            self.by_id.get_mut(id).expect("indexed").1 += 1;
            return (*id, false);
        }
        let id = self.free.pop_first().unwrap_or_else(|| {
            self.next += 1;
            self.next - 1
        });
        self.by_key.insert(k.clone(), id);
        self.by_id.insert(id, (k.clone(), 1));
        (id, true)
    }

    /// One reference fewer; returns whether the id is gone.
    fn release(&mut self, id: u32) -> bool {
        let Some(e) = self.by_id.get_mut(&id) else {
            return false;
        };
        e.1 -= 1;
        if e.1 > 0 {
            return false;
        }
        let (k, _) = self.by_id.remove(&id).expect("present");
        self.by_key.remove(&k);
        self.held.push(id);
        true
    }

    fn key(&self, id: u32) -> Option<&K> {
        self.by_id.get(&id).map(|(k, _)| k)
    }

    fn ids(&self) -> impl Iterator<Item = (u32, &K)> {
        self.by_id.iter().map(|(id, (k, _))| (*id, k))
    }

    fn unhold(&mut self) {
        self.free.extend(self.held.drain(..));
    }

    fn len(&self) -> usize {
        self.by_id.len()
    }
}

/// One piece of the address space: the pods claiming it (as a /32) and the
/// ipBlock bounds it is (0/0 is always there).
#[derive(Debug, Clone, Default)]
struct Piece {
    pods: BTreeSet<ObjectKey>,
    blocks: u32,
}

/// What changed in the kernel's terms since the last `take_dirty`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dirty {
    pub prefixes: BTreeSet<Prefix>,
    pub entries: BTreeSet<EntryKey>,
    /// This node's pods whose identity changed.
    pub local: BTreeSet<ObjectKey>,
    /// Namespaces whose identity for pods not known changed.
    pub namespaces: BTreeSet<String>,
}

#[derive(Debug, Clone, Default)]
pub struct PolicyIndex {
    node: String,
    pods: BTreeMap<ObjectKey, PodInfo>,
    /// Addresses pods' status gives (`None`: not yet).
    status_ips: BTreeMap<ObjectKey, Option<Ipv4Addr>>,
    known_ips: BTreeMap<ObjectKey, Ipv4Addr>,
    ns_labels: BTreeMap<String, Labels>,
    policies: BTreeMap<ObjectKey, Policy>,
    problems: BTreeMap<ObjectKey, Vec<String>>,
    peers: Table<String>,
    peer_values: BTreeMap<u32, Peer>,
    egress_names: BTreeMap<(String, u8), u32>,
    pieces: BTreeMap<Prefix, Piece>,
    prefix_class: BTreeMap<Prefix, u32>,
    classes: Table<ClassKey>,
    local: BTreeMap<ObjectKey, u32>,
    /// Per namespace with a policy: the identity of its pods whose object
    /// is not known.
    unknown: BTreeMap<String, u32>,
    identities: Table<IdentityKey>,
    entries: BTreeMap<EntryKey, u32>,
    /// Entries by class, to drop a class's entries in one go.
    class_entries: BTreeMap<u32, BTreeSet<EntryKey>>,
    rules: Table<RuleRef>,
    dirty: Dirty,
}

fn all_prefix() -> Prefix {
    (Ipv4Addr::UNSPECIFIED, 0)
}

impl PolicyIndex {
    pub fn new(node: &str) -> Self {
        let mut ix = PolicyIndex {
            node: node.to_string(),
            ..Default::default()
        };
        ix.pieces.insert(all_prefix(), Piece::default());
        ix.reclassify(all_prefix());
        ix
    }

    /// Everything from a cluster state (tests and full passes compare with it).
    pub fn from_state(
        node: &str,
        state: &strake_source::ClusterState,
        known_ips: &[(ObjectKey, Ipv4Addr)],
    ) -> Self {
        let mut ix = PolicyIndex::new(node);
        ix.sync(state, known_ips);
        ix
    }

    /// Brings the index in line with `state`: every object upserted, every
    /// object no longer there removed. Cheap where nothing changed.
    pub fn sync(
        &mut self,
        state: &strake_source::ClusterState,
        known_ips: &[(ObjectKey, Ipv4Addr)],
    ) {
        self.known_ips = known_ips.iter().cloned().collect();
        let gone_ns: Vec<String> = self
            .ns_labels
            .keys()
            .filter(|n| !state.namespaces.contains_key(*n))
            .cloned()
            .collect();
        for n in gone_ns {
            self.set_namespace(&n, None);
        }
        for (n, ns) in &state.namespaces {
            self.set_namespace(n, ns.metadata.labels.as_ref());
        }
        let gone: Vec<ObjectKey> = self
            .policies
            .keys()
            .filter(|k| !state.network_policies.contains_key(*k))
            .cloned()
            .collect();
        for k in gone {
            self.set_policy(&k, None);
        }
        for (k, p) in &state.network_policies {
            self.set_policy(k, Some(p));
        }
        let gone: Vec<ObjectKey> = self
            .pods
            .keys()
            .filter(|k| !state.pods.contains_key(*k))
            .cloned()
            .collect();
        for k in gone {
            self.set_pod(&k, None);
        }
        for (k, p) in &state.pods {
            self.set_pod(k, Some(p));
        }
    }

    fn namespace_labels(&self, ns: &str) -> Labels {
        let mut l = self.ns_labels.get(ns).cloned().unwrap_or_default();
        l.insert("kubernetes.io/metadata.name".into(), ns.to_string());
        l
    }

    fn is_local(&self, p: &PodInfo) -> bool {
        p.node.as_deref() == Some(self.node.as_str())
    }

    /// A pod (`None`: deleted).
    pub fn set_pod(&mut self, key: &ObjectKey, pod: Option<&Pod>) {
        let new = pod
            .and_then(|p| PodInfo::from_pod(key, p, self.namespace_labels(&key.namespace), None));
        match &new {
            Some(p) => self.status_ips.insert(key.clone(), p.ip),
            None => self.status_ips.remove(key),
        };
        let new = new.map(|mut p| {
            p.ip = p.ip.or_else(|| self.known_ips.get(key).copied());
            p
        });
        self.set_pod_info(key, new);
    }

    /// A local endpoint's address for its pod, for as long as the pod's
    /// status does not carry it (`None`: the endpoint is gone).
    pub fn set_known_ip(&mut self, key: &ObjectKey, ip: Option<Ipv4Addr>) {
        match ip {
            Some(ip) => self.known_ips.insert(key.clone(), ip),
            None => self.known_ips.remove(key),
        };
        if let Some(mut p) = self.pods.get(key).cloned() {
            p.ip = self.status_ips.get(key).copied().flatten().or(ip);
            self.set_pod_info(key, Some(p));
        }
    }

    fn set_pod_info(&mut self, key: &ObjectKey, new: Option<PodInfo>) {
        let old = self.pods.get(key).cloned();
        if old == new {
            return;
        }
        match &new {
            Some(p) => self.pods.insert(key.clone(), p.clone()),
            None => self.pods.remove(key),
        };
        let (old_ip, new_ip) = (
            old.as_ref().and_then(|p| p.ip),
            new.as_ref().and_then(|p| p.ip),
        );
        if old_ip != new_ip {
            if let Some(ip) = old_ip {
                if let Some(piece) = self.pieces.get_mut(&(ip, 32)) {
                    piece.pods.remove(key);
                    if piece.pods.is_empty() && piece.blocks == 0 {
                        self.pieces.remove(&(ip, 32));
                    }
                }
                self.reclassify((ip, 32));
            }
        }
        if let Some(ip) = new_ip {
            self.pieces
                .entry((ip, 32))
                .or_default()
                .pods
                .insert(key.clone());
            self.reclassify((ip, 32));
        }
        let local = old.as_ref().is_some_and(|p| self.is_local(p))
            || new.as_ref().is_some_and(|p| self.is_local(p));
        if local {
            self.refresh_identity(key);
        }
    }

    /// A namespace's labels (`None`: the namespace is gone).
    pub fn set_namespace(&mut self, name: &str, labels: Option<&Labels>) {
        let before = self.ns_labels.get(name).cloned();
        let after = labels.cloned();
        if before == after {
            return;
        }
        match after {
            Some(l) => self.ns_labels.insert(name.to_string(), l),
            None => self.ns_labels.remove(name),
        };
        let labels = self.namespace_labels(name);
        let keys: Vec<ObjectKey> = self
            .pods
            .range(ObjectKey::new(name, "")..)
            .take_while(|(k, _)| k.namespace == name)
            .map(|(k, _)| k.clone())
            .collect();
        for k in keys {
            let mut p = self.pods[&k].clone();
            p.ns_labels = labels.clone();
            self.set_pod_info(&k, Some(p));
        }
    }

    /// A NetworkPolicy (`None`: deleted).
    pub fn set_policy(&mut self, key: &ObjectKey, np: Option<&NetworkPolicy>) {
        let old = self.policies.get(key).cloned();
        // Peers of the new version first, so peers both versions share keep
        // their ids (and the pieces their classes).
        let mut problems = Vec::new();
        let mut added_peers = Vec::new();
        let new = np.and_then(|np| {
            let peers = &mut self.peers;
            let values = &mut self.peer_values;
            let mut intern = |p: Peer| {
                let (id, fresh) = peers.acquire(&p.key());
                if fresh {
                    values.insert(id, p);
                    added_peers.push(id);
                }
                id as usize
            };
            read_policy(key, np, &mut intern, &mut problems)
        });
        if problems.is_empty() {
            self.problems.remove(key);
        } else {
            self.problems.insert(key.clone(), problems);
        }
        if new.is_some() && new == old {
            // Unchanged (a full pass): give back what reading it took.
            for id in new.iter().flat_map(peer_ids) {
                self.peers.release(id as u32);
            }
            return;
        }
        let mut removed_peers = Vec::new();
        for id in old.iter().flat_map(peer_ids) {
            if self.peers.release(id as u32) {
                removed_peers.push(id as u32);
            }
        }
        // Rules of the old version go; the new one's are named as entries
        // are computed.
        if let Some(o) = &old {
            self.release_rules(o);
        }
        let names_before: BTreeSet<(String, u8)> = self.egress_names.keys().cloned().collect();
        for n in old.iter().flat_map(egress_port_names) {
            if let Some(c) = self.egress_names.get_mut(&n) {
                *c -= 1;
                if *c == 0 {
                    self.egress_names.remove(&n);
                }
            }
        }
        for n in new.iter().flat_map(egress_port_names) {
            *self.egress_names.entry(n).or_default() += 1;
        }
        let names_changed =
            self.egress_names.keys().cloned().collect::<BTreeSet<_>>() != names_before;
        match &new {
            Some(p) => self.policies.insert(key.clone(), p.clone()),
            None => self.policies.remove(key),
        };

        // The address space: bounds of added and removed ipBlocks.
        let mut touched: BTreeSet<Prefix> = BTreeSet::new();
        for id in &added_peers {
            if let Some(Peer::Block { cidr, except }) = self.peer_values.get(id) {
                for p in std::iter::once(cidr).chain(except.iter()) {
                    self.pieces.entry(*p).or_default().blocks += 1;
                    touched.insert(*p);
                }
            }
        }
        for id in &removed_peers {
            if let Some(Peer::Block { cidr, except }) = self.peer_values.get(id).cloned() {
                for p in std::iter::once(cidr).chain(except) {
                    if let Some(piece) = self.pieces.get_mut(&p) {
                        piece.blocks -= 1;
                        if piece.blocks == 0 && piece.pods.is_empty() && p != all_prefix() {
                            self.pieces.remove(&p);
                        }
                    }
                    touched.insert(p);
                }
            }
        }
        // Pieces an added peer matches, or whose class names a removed one,
        // or (egress named ports changed) every pod's.
        for (prefix, piece) in &self.pieces {
            let owner = piece.pods.last().and_then(|k| self.pods.get(k));
            let matched = added_peers.iter().any(|id| {
                let peer = &self.peer_values[id];
                match owner {
                    Some(p) => peer.matches_pod(p),
                    None => peer.matches_prefix(*prefix),
                }
            });
            let named = self
                .prefix_class
                .get(prefix)
                .and_then(|c| self.classes.key(*c))
                .is_some_and(|k| {
                    removed_peers
                        .iter()
                        .any(|id| k.peers.contains(&(*id as usize)))
                });
            if matched || named || (names_changed && owner.is_some()) {
                touched.insert(*prefix);
            }
        }
        for id in &removed_peers {
            self.peer_values.remove(id);
        }
        for p in touched {
            self.reclassify(p);
        }
        // Identities: this node's pods of the namespace are selected anew;
        // identities naming the policy get their entries again.
        let locals: Vec<ObjectKey> = self
            .pods
            .range(ObjectKey::new(key.namespace.clone(), "")..)
            .take_while(|(k, _)| k.namespace == key.namespace)
            .filter(|(_, p)| self.is_local(p))
            .map(|(k, _)| k.clone())
            .collect();
        for k in &locals {
            self.refresh_identity(k);
        }
        self.refresh_unknown(&key.namespace);
        let naming: Vec<u32> = self
            .identities
            .ids()
            .filter(|(_, ik)| ik.ingress.contains(key) || ik.egress.contains(key))
            .map(|(id, _)| id)
            .collect();
        for id in naming {
            self.recompute_identity(id);
        }
    }

    fn release_rules(&mut self, p: &Policy) {
        let ids: Vec<u32> = self
            .rules
            .ids()
            .filter(|(_, r)| r.policy == p.key)
            .map(|(id, _)| id)
            .collect();
        for id in ids {
            self.rules.release(id);
        }
    }

    /// Classifies one piece again (or forgets it, if it is gone).
    fn reclassify(&mut self, prefix: Prefix) {
        let old = self.prefix_class.get(&prefix).copied();
        let new_key = self.pieces.get(&prefix).map(|piece| {
            let owner = piece.pods.last().and_then(|k| self.pods.get(k));
            let names: BTreeSet<(String, u8)> = self.egress_names.keys().cloned().collect();
            class_key(
                self.peer_values.iter().map(|(id, p)| (*id as usize, p)),
                owner,
                prefix,
                &names,
            )
        });
        if old.and_then(|c| self.classes.key(c)) == new_key.as_ref() {
            return;
        }
        self.dirty.prefixes.insert(prefix);
        match new_key {
            Some(k) => {
                let (id, fresh) = self.classes.acquire(&k);
                self.prefix_class.insert(prefix, id);
                if fresh {
                    self.class_added(id);
                }
            }
            None => {
                self.prefix_class.remove(&prefix);
            }
        }
        if let Some(c) = old {
            if self.classes.release(c) {
                self.class_removed(c);
            }
        }
    }

    /// Entries of identity `id` for class `class_id`.
    fn entries_for(&mut self, id: u32, class_id: u32) -> BTreeMap<EntryKey, u32> {
        let mut out = BTreeMap::new();
        let (Some(ik), Some(ck)) = (
            self.identities.key(id).cloned(),
            self.classes.key(class_id).cloned(),
        ) else {
            return out;
        };
        let mut wanted: Vec<RuleRef> = Vec::new();
        {
            let policies = &self.policies;
            let lookup = |k: &ObjectKey| policies.get(k);
            let mut rule_id = |r: RuleRef| {
                wanted.push(r);
                wanted.len() as u32 // placeholder, mapped below
            };
            class_entries(id, &ik, &lookup, class_id, &ck, &mut rule_id, &mut out);
        }
        // Rule ids: a rule keeps its id while the policy stands.
        let ids: Vec<u32> = wanted
            .iter()
            .map(|r| match self.rules.by_key.get(r) {
                Some(id) => *id,
                None => self.rules.acquire(r).0,
            })
            .collect();
        for v in out.values_mut() {
            *v = ids[*v as usize - 1];
        }
        out
    }

    fn put_entries(&mut self, id: u32, class_id: u32, want: BTreeMap<EntryKey, u32>) {
        let have: Vec<EntryKey> = self
            .class_entries
            .get(&class_id)
            .into_iter()
            .flatten()
            .filter(|e| e.identity == id)
            .copied()
            .collect();
        for e in have {
            if !want.contains_key(&e) {
                self.entries.remove(&e);
                self.class_entries.get_mut(&class_id).unwrap().remove(&e);
                self.dirty.entries.insert(e);
            }
        }
        for (e, r) in want {
            if self.entries.insert(e, r) != Some(r) {
                self.dirty.entries.insert(e);
            }
            self.class_entries.entry(class_id).or_default().insert(e);
        }
        if self
            .class_entries
            .get(&class_id)
            .is_some_and(|s| s.is_empty())
        {
            self.class_entries.remove(&class_id);
        }
    }

    fn class_added(&mut self, class_id: u32) {
        let ids: Vec<u32> = self.identities.ids().map(|(i, _)| i).collect();
        for id in ids {
            let want = self.entries_for(id, class_id);
            self.put_entries(id, class_id, want);
        }
    }

    fn class_removed(&mut self, class_id: u32) {
        for e in self.class_entries.remove(&class_id).into_iter().flatten() {
            self.entries.remove(&e);
            self.dirty.entries.insert(e);
        }
    }

    /// Every entry of an identity, again (its policies changed).
    fn recompute_identity(&mut self, id: u32) {
        let classes: Vec<u32> = self.classes.ids().map(|(c, _)| c).collect();
        for c in classes {
            let want = self.entries_for(id, c);
            self.put_entries(id, c, want);
        }
    }

    fn drop_identity_entries(&mut self, id: u32) {
        let keys: Vec<EntryKey> = self
            .entries
            .range(
                EntryKey {
                    identity: id,
                    class_id: 0,
                    direction: crate::model::Direction::Ingress,
                    proto: None,
                    port: 0,
                    port_bits: 0,
                }..,
            )
            .take_while(|(e, _)| e.identity == id)
            .map(|(e, _)| *e)
            .collect();
        for e in keys {
            self.entries.remove(&e);
            if let Some(s) = self.class_entries.get_mut(&e.class_id) {
                s.remove(&e);
            }
            self.dirty.entries.insert(e);
        }
    }

    /// A local pod's identity, again.
    fn refresh_identity(&mut self, key: &ObjectKey) {
        let new_key = self.pods.get(key).filter(|p| self.is_local(p)).map(|p| {
            identity_key(
                p,
                self.policies
                    .range(ObjectKey::new(key.namespace.clone(), "")..)
                    .take_while(|(k, _)| k.namespace == key.namespace)
                    .map(|(_, p)| p),
            )
        });
        let old = self.local.get(key).copied();
        if old.and_then(|i| self.identities.key(i)) == new_key.as_ref() {
            return;
        }
        self.dirty.local.insert(key.clone());
        match new_key {
            Some(k) => {
                let (id, fresh) = self.identities.acquire(&k);
                self.local.insert(key.clone(), id);
                if fresh {
                    self.recompute_identity(id);
                }
            }
            None => {
                self.local.remove(key);
            }
        }
        if let Some(i) = old {
            if self.identities.release(i) {
                self.drop_identity_entries(i);
            }
        }
    }

    /// The identity of a namespace's pods whose object is not known, again.
    fn refresh_unknown(&mut self, ns: &str) {
        let new_key = unknown_identity_key(
            self.policies
                .range(ObjectKey::new(ns, "")..)
                .take_while(|(k, _)| k.namespace == ns)
                .map(|(_, p)| p),
        );
        let old = self.unknown.get(ns).copied();
        if old.and_then(|i| self.identities.key(i)) == new_key.as_ref() {
            return;
        }
        self.dirty.namespaces.insert(ns.to_string());
        match new_key {
            Some(k) => {
                let (id, fresh) = self.identities.acquire(&k);
                self.unknown.insert(ns.to_string(), id);
                if fresh {
                    self.recompute_identity(id);
                }
            }
            None => {
                self.unknown.remove(ns);
            }
        }
        if let Some(i) = old {
            if self.identities.release(i) {
                self.drop_identity_entries(i);
            }
        }
    }

    /// What changed since the last call; ids freed meanwhile may be handed
    /// out again from now on.
    pub fn take_dirty(&mut self) -> Dirty {
        self.peers.unhold();
        self.classes.unhold();
        self.identities.unhold();
        self.rules.unhold();
        std::mem::take(&mut self.dirty)
    }

    /// Marks everything dirty (a full pass writes everything that differs).
    pub fn all(&self) -> Dirty {
        Dirty {
            prefixes: self.prefix_class.keys().copied().collect(),
            entries: self.entries.keys().copied().collect(),
            local: self.local.keys().cloned().collect(),
            namespaces: self.unknown.keys().cloned().collect(),
        }
    }

    pub fn class_of_prefix(&self, p: &Prefix) -> Option<u32> {
        self.prefix_class.get(p).copied()
    }

    pub fn entry(&self, e: &EntryKey) -> Option<u32> {
        self.entries.get(e).copied()
    }

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

    /// Per namespace with a policy: the identity of its pods whose object
    /// is not known.
    pub fn unknowns(&self) -> impl Iterator<Item = (&String, u32)> {
        self.unknown.iter().map(|(k, v)| (k, *v))
    }

    /// This node's pods and their identities.
    pub fn locals(&self) -> impl Iterator<Item = (&ObjectKey, u32)> {
        self.local.iter().map(|(k, v)| (k, *v))
    }

    /// (isolated for ingress, for egress) of an identity.
    pub fn isolation(&self, identity: u32) -> (bool, bool) {
        self.identities
            .key(identity)
            .map(|k| k.isolation())
            .unwrap_or_default()
    }

    /// Whether policy knows this pod (it has seen its Pod object).
    pub fn knows(&self, pod: &ObjectKey) -> bool {
        self.pods.contains_key(pod)
    }

    pub fn ipcache(&self) -> &BTreeMap<Prefix, u32> {
        &self.prefix_class
    }

    pub fn entries(&self) -> &BTreeMap<EntryKey, u32> {
        &self.entries
    }

    pub fn class_count(&self) -> usize {
        self.classes.len()
    }

    pub fn problems(&self) -> Vec<String> {
        self.problems.values().flatten().cloned().collect()
    }

    /// The rule an id stands for.
    pub fn rule(&self, id: u32) -> Option<&RuleRef> {
        self.rules.key(id)
    }

    pub fn semantic(&self) -> Semantic {
        Semantic::from_tables(
            &self.prefix_class,
            &|id| self.classes.key(id).cloned(),
            &|p| {
                self.peer_values
                    .get(&(p as u32))
                    .map(|x| x.key())
                    .unwrap_or_else(|| format!("freed peer {p}"))
            },
            &self.local,
            &self.unknown,
            &|id| self.identities.key(id).cloned(),
            &self.entries,
            &|id| self.rules.key(id).cloned(),
        )
    }
}

fn peer_ids(p: &Policy) -> Vec<usize> {
    p.ingress
        .iter()
        .chain(p.egress.iter())
        .flatten()
        .flat_map(|r| r.peers.iter().flatten().copied())
        .collect()
}

fn egress_port_names(p: &Policy) -> Vec<(String, u8)> {
    crate::compile::egress_names(std::iter::once(p))
        .into_iter()
        .collect()
}
