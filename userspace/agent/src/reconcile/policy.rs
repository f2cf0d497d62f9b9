//! NetworkPolicy: keeps this node's compiled policy (strake-policy's
//! `PolicyIndex`) up to date change by change, writes what a change moved
//! (address classes, verdict entries, the identity and isolation of this
//! node's endpoints), and bumps the generation so established flows are
//! judged again against the new rules. Full passes compare the whole index
//! with the maps and write only what differs.
//!
//! CNI ADD reads a pod's identity from `PolicyState::local` and writes its
//! endpoint with it: a new pod costs one map write, whatever the policies.

use super::{LocalEvent, Outcome, Pass, Phase};
use anyhow::Result;
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use strake_datapath::policy::VerdictKey;
use strake_datapath::shared::{
    STRAKE_EP_F_ANTISPOOF, STRAKE_EP_F_EGRESS_ISOLATED, STRAKE_EP_F_INGRESS_ISOLATED,
};
use strake_datapath::Datapath;
use strake_policy::compile::{EntryKey, LocalEndpoint};
use strake_policy::index::{Dirty, PolicyIndex};
use strake_policy::model::{Direction, Prefix};
use strake_source::{Change, ClusterState, Kind, KindSet, ObjectKey, ObjectRef};

/// The kernel's side of this phase: the policy maps, and the identity and
/// isolation of endpoint entries.
pub trait PolicyKernel: Send {
    /// This node's endpoints (from the agent's records).
    fn local_endpoints(&self) -> Vec<LocalEndpoint>;
    fn set_class(&mut self, p: Prefix, class: u32) -> Result<()>;
    fn remove_class(&mut self, p: Prefix) -> Result<()>;
    fn set_verdict(&mut self, k: &VerdictKey, rule: u32) -> Result<()>;
    fn remove_verdict(&mut self, k: &VerdictKey) -> Result<()>;
    fn classes(&self) -> Result<Vec<(Prefix, u32)>>;
    fn verdicts(&self) -> Result<Vec<(VerdictKey, u32)>>;
    /// Replaces the cluster nodes' addresses; returns how many changed.
    fn set_cluster_nodes(&mut self, nodes: &[Ipv4Addr]) -> Result<usize>;
    /// (address, identity, flags) of every endpoint entry.
    fn endpoint_policy(&self) -> Result<Vec<(Ipv4Addr, u32, u32)>>;
    fn set_endpoint_policy(&mut self, ip: Ipv4Addr, identity: u32, flags: u32) -> Result<()>;
    fn bump_generation(&mut self) -> Result<u32>;
}

/// The policy maps of the node's data plane; `local` lists the endpoints.
pub struct DatapathPolicy<F> {
    pub dp: Arc<Mutex<Datapath>>,
    pub local: F,
}

impl<F> DatapathPolicy<F> {
    fn dp(&self) -> std::sync::MutexGuard<'_, Datapath> {
        self.dp.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl<F: Fn() -> Vec<LocalEndpoint> + Send> PolicyKernel for DatapathPolicy<F> {
    fn local_endpoints(&self) -> Vec<LocalEndpoint> {
        (self.local)()
    }
    fn set_class(&mut self, p: Prefix, class: u32) -> Result<()> {
        self.dp().policy.set_class(p.0, p.1, class)
    }
    fn remove_class(&mut self, p: Prefix) -> Result<()> {
        self.dp().policy.remove_class(p.0, p.1)
    }
    fn set_verdict(&mut self, k: &VerdictKey, rule: u32) -> Result<()> {
        self.dp().policy.set_verdict(k, rule)
    }
    fn remove_verdict(&mut self, k: &VerdictKey) -> Result<()> {
        self.dp().policy.remove_verdict(k)
    }
    fn classes(&self) -> Result<Vec<(Prefix, u32)>> {
        Ok(self.dp().policy.classes())
    }
    fn verdicts(&self) -> Result<Vec<(VerdictKey, u32)>> {
        Ok(self.dp().policy.verdicts())
    }
    fn set_cluster_nodes(&mut self, nodes: &[Ipv4Addr]) -> Result<usize> {
        self.dp().policy.set_cluster_nodes(nodes)
    }
    fn endpoint_policy(&self) -> Result<Vec<(Ipv4Addr, u32, u32)>> {
        Ok(self
            .dp()
            .endpoint_entries()?
            .into_iter()
            .map(|(ip, e)| (ip, e.identity, e.flags))
            .collect())
    }
    fn set_endpoint_policy(&mut self, ip: Ipv4Addr, identity: u32, flags: u32) -> Result<()> {
        let mut dp = self.dp();
        let Some(mut info) = dp.endpoint_entry(ip)? else {
            return Ok(()); // released meanwhile
        };
        info.identity = identity;
        info.flags = flags;
        dp.upsert_endpoint(ip, info)
    }
    fn bump_generation(&mut self) -> Result<u32> {
        self.dp().policy.bump_generation()
    }
}

/// Endpoint flags for an isolation pair.
pub fn flags(iso: (bool, bool)) -> u32 {
    let mut f = STRAKE_EP_F_ANTISPOOF;
    if iso.0 {
        f |= STRAKE_EP_F_INGRESS_ISOLATED;
    }
    if iso.1 {
        f |= STRAKE_EP_F_EGRESS_ISOLATED;
    }
    f
}

/// The compiled policy, shared with the API (CNI ADD, trace, status).
#[derive(Default)]
pub struct PolicyState {
    pub index: Option<PolicyIndex>,
    /// This node's pods: (identity, endpoint flags), as last applied.
    pub local: BTreeMap<ObjectKey, (u32, u32)>,
    /// Per namespace with a policy: (identity, flags) of its pods whose Pod
    /// object is not known, as last applied.
    pub unknown: BTreeMap<String, (u32, u32)>,
}

impl PolicyState {
    /// The identity and flags an endpoint of `pod` gets. A pod whose Pod
    /// object policy has not seen (attached before it arrived) gets its
    /// namespace's identity for such pods: isolated wherever a policy could
    /// select it, allowed only what every pod of the namespace is (it fails
    /// closed: docs/threat-model.md, "Policy identities"); the pass its
    /// object brings rewrites the endpoint. An endpoint naming no pod, or
    /// of a namespace without policies, is isolated by nothing.
    pub fn endpoint_policy(&self, pod: Option<&ObjectKey>) -> (u32, u32) {
        pod.and_then(|p| {
            self.local
                .get(p)
                .or_else(|| self.unknown.get(&p.namespace))
                .copied()
        })
        .unwrap_or((0, flags((false, false))))
    }

    pub fn entries(&self) -> usize {
        self.index.as_ref().map_or(0, |i| i.entries().len())
    }

    pub fn classes(&self) -> usize {
        self.index.as_ref().map_or(0, |i| i.class_count())
    }
}

fn verdict_key(k: &EntryKey) -> VerdictKey {
    VerdictKey {
        identity: k.identity,
        class_id: k.class_id,
        direction: match k.direction {
            Direction::Ingress => 0,
            Direction::Egress => 1,
        },
        proto: k.proto,
        port: k.port,
        port_bits: k.port_bits,
    }
}

pub struct PolicyPhase<K> {
    pub kernel: K,
    pub state: Arc<Mutex<PolicyState>>,
    pub node: String,
    touched: BTreeSet<ObjectRef>,
    /// Pods whose local endpoint came or went.
    endpoints: BTreeSet<ObjectKey>,
    nodes_touched: bool,
}

impl<K: PolicyKernel> PolicyPhase<K> {
    pub fn new(kernel: K, state: Arc<Mutex<PolicyState>>, node: &str) -> Self {
        PolicyPhase {
            kernel,
            state,
            node: node.to_string(),
            touched: BTreeSet::new(),
            endpoints: BTreeSet::new(),
            nodes_touched: true,
        }
    }
}

impl<K: PolicyKernel> Phase for PolicyPhase<K> {
    fn name(&self) -> &'static str {
        "policy"
    }

    fn kinds(&self) -> KindSet {
        KindSet::of(&[Kind::Node, Kind::Namespace, Kind::Pod, Kind::NetworkPolicy])
    }

    fn note(&mut self, change: &Change, _state: &ClusterState) -> bool {
        match change.kind() {
            Kind::Node => self.nodes_touched = true,
            _ => {
                self.touched.insert(change.reference.clone());
            }
        }
        true
    }

    fn note_local(&mut self, event: &LocalEvent) -> bool {
        match event {
            LocalEvent::Endpoint(Some(pod)) => {
                self.endpoints.insert(pod.clone());
                true
            }
            _ => false,
        }
    }

    fn reconcile(&mut self, pass: &Pass<'_>) -> Result<Outcome> {
        let state = self.state.clone();
        let mut ps = state.lock().unwrap();
        let local = self.kernel.local_endpoints();
        let known: Vec<(ObjectKey, Ipv4Addr)> = local
            .iter()
            .filter_map(|l| Some((l.pod.clone()?, l.ip)))
            .collect();
        let ix = ps.index.get_or_insert_with(|| PolicyIndex::new(&self.node));
        let problems_before = ix.problems();
        let full = pass.full;
        if full {
            ix.sync(pass.state, &known);
            self.touched.clear();
        } else {
            for r in std::mem::take(&mut self.touched) {
                let k = &r.key;
                match r.kind {
                    Kind::Pod => ix.set_pod(k, pass.state.pods.get(k).map(|p| &**p)),
                    Kind::Namespace => ix.set_namespace(
                        &k.name,
                        pass.state
                            .namespaces
                            .get(&k.name)
                            .and_then(|n| n.metadata.labels.as_ref()),
                    ),
                    Kind::NetworkPolicy => {
                        ix.set_policy(k, pass.state.network_policies.get(k).map(|p| &**p))
                    }
                    _ => {}
                }
            }
            for p in &self.endpoints {
                let ip = known.iter().find(|(k, _)| k == p).map(|(_, ip)| *ip);
                ix.set_known_ip(p, ip);
            }
        }
        for p in ix.problems() {
            if !problems_before.contains(&p) {
                tracing::warn!(problem = %p, "network policy problem");
            }
        }
        let mut dirty = ix.take_dirty();
        dirty.local.extend(std::mem::take(&mut self.endpoints));
        let ix = ps.index.as_ref().expect("set above");
        let mut changes = apply(&mut self.kernel, ix, &dirty, full)?;
        // Every pod of this node policy knows, attached or not yet: ADD
        // reads its identity here.
        let local_ids = ix
            .locals()
            .map(|(k, id)| (k.clone(), (id, flags(ix.isolation(id)))))
            .collect();
        let unknown_ids = ix
            .unknowns()
            .map(|(ns, id)| (ns.clone(), (id, flags(ix.isolation(id)))))
            .collect();
        ps.local = local_ids;
        ps.unknown = unknown_ids;
        changes += endpoints(&mut self.kernel, &ps, &local, &dirty, full)?;
        if self.nodes_touched || full {
            // Where the load balancer's health checks come from.
            let nodes: Vec<Ipv4Addr> = pass
                .state
                .node_names()
                .iter()
                .filter_map(|n| pass.state.node_internal_ip(n))
                .collect();
            changes += self.kernel.set_cluster_nodes(&nodes)?;
            self.nodes_touched = false;
        }
        if changes > 0 {
            let ix = ps.index.as_ref().expect("set above");
            let g = self.kernel.bump_generation()?;
            tracing::info!(
                changes,
                generation = g,
                classes = ix.class_count(),
                entries = ix.entries().len(),
                "network policy applied"
            );
        }
        Ok(Outcome::applied(changes))
    }
}

/// Writes classes and entries: new ones first (new entries may refer to a
/// class a prefix moves to), removals last. A full pass compares everything
/// with the maps and also removes what no index names.
fn apply<K: PolicyKernel>(k: &mut K, ix: &PolicyIndex, dirty: &Dirty, full: bool) -> Result<usize> {
    let mut changes = 0;
    let (have_entries, have_classes): (BTreeMap<VerdictKey, u32>, BTreeMap<Prefix, u32>) = if full {
        (
            k.verdicts()?.into_iter().collect(),
            k.classes()?.into_iter().collect(),
        )
    } else {
        Default::default()
    };
    let entry_keys: Vec<EntryKey> = if full {
        ix.entries().keys().copied().collect()
    } else {
        dirty.entries.iter().copied().collect()
    };
    let prefixes: Vec<Prefix> = if full {
        ix.ipcache().keys().copied().collect()
    } else {
        dirty.prefixes.iter().copied().collect()
    };
    for e in &entry_keys {
        if let Some(rule) = ix.entry(e) {
            let vk = verdict_key(e);
            if !full || have_entries.get(&vk) != Some(&rule) {
                k.set_verdict(&vk, rule)?;
                changes += 1;
            }
        }
    }
    for p in &prefixes {
        if let Some(c) = ix.class_of_prefix(p) {
            if !full || have_classes.get(p) != Some(&c) {
                k.set_class(*p, c)?;
                changes += 1;
            }
        }
    }
    if full {
        let want: BTreeSet<VerdictKey> = ix.entries().keys().map(verdict_key).collect();
        for vk in have_entries.keys().filter(|v| !want.contains(v)) {
            k.remove_verdict(vk)?;
            changes += 1;
        }
        for p in have_classes
            .keys()
            .filter(|p| ix.class_of_prefix(p).is_none())
        {
            k.remove_class(*p)?;
            changes += 1;
        }
    } else {
        for e in dirty.entries.iter().filter(|e| ix.entry(e).is_none()) {
            k.remove_verdict(&verdict_key(e))?;
            changes += 1;
        }
        for p in dirty
            .prefixes
            .iter()
            .filter(|p| ix.class_of_prefix(p).is_none())
        {
            k.remove_class(*p)?;
            changes += 1;
        }
    }
    Ok(changes)
}

/// Identity and isolation of this node's endpoints: those whose pod
/// changed (every one on a full pass), written where they differ.
fn endpoints<K: PolicyKernel>(
    k: &mut K,
    ps: &PolicyState,
    local: &[LocalEndpoint],
    dirty: &Dirty,
    full: bool,
) -> Result<usize> {
    let mut changes = 0;
    let have: BTreeMap<Ipv4Addr, (u32, u32)> = k
        .endpoint_policy()?
        .into_iter()
        .map(|(ip, i, f)| (ip, (i, f)))
        .collect();
    for l in local {
        let touched = full
            || l.pod.as_ref().is_some_and(|p| {
                dirty.local.contains(p) || dirty.namespaces.contains(&p.namespace)
            });
        let Some(current) = have.get(&l.ip) else {
            continue; // not attached yet: ADD writes it
        };
        if !touched {
            continue;
        }
        let want = ps.endpoint_policy(l.pod.as_ref());
        if *current != want {
            k.set_endpoint_policy(l.ip, want.0, want.1)?;
            changes += 1;
        }
    }
    Ok(changes)
}

#[cfg(test)]
mod tests;
