//! NetworkPolicy: compiles the policies (strake-policy) for this node's
//! endpoints, writes the difference into the maps, sets each endpoint's
//! isolation, and bumps the generation so established flows are judged
//! again against the new rules.

use super::{LocalEvent, Outcome, Pass, Phase};
use anyhow::Result;
use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use strake_datapath::policy::VerdictKey;
use strake_datapath::shared::{
    STRAKE_EP_F_ANTISPOOF, STRAKE_EP_F_EGRESS_ISOLATED, STRAKE_EP_F_INGRESS_ISOLATED,
};
use strake_datapath::Datapath;
use strake_policy::compile::{compile, Compiled, EntryKey, LocalEndpoint};
use strake_policy::model::{Direction, Model, Prefix};
use strake_source::{ClusterState, Kind, KindSet, ObjectKey};

/// The kernel's side of this phase: the policy maps, and the isolation
/// flags of endpoint entries.
pub trait PolicyKernel: Send {
    /// This node's endpoints (from the agent's records).
    fn local_endpoints(&self) -> Vec<LocalEndpoint>;
    fn set_class(&mut self, p: Prefix, class: u32) -> Result<()>;
    fn remove_class(&mut self, p: Prefix) -> Result<()>;
    fn set_verdict(&mut self, k: &VerdictKey, rule: u32) -> Result<()>;
    fn remove_verdict(&mut self, k: &VerdictKey) -> Result<()>;
    fn classes(&self) -> Result<Vec<Prefix>>;
    fn verdicts(&self) -> Result<Vec<VerdictKey>>;
    /// Replaces the cluster nodes' addresses; returns how many changed.
    fn set_cluster_nodes(&mut self, nodes: &[Ipv4Addr]) -> Result<usize>;
    /// (address, flags) of every endpoint entry.
    fn endpoint_flags(&self) -> Result<Vec<(Ipv4Addr, u32)>>;
    fn set_endpoint_flags(&mut self, ip: Ipv4Addr, flags: u32) -> Result<()>;
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
    fn classes(&self) -> Result<Vec<Prefix>> {
        Ok(self.dp().policy.classes())
    }
    fn verdicts(&self) -> Result<Vec<VerdictKey>> {
        Ok(self.dp().policy.verdicts())
    }
    fn set_cluster_nodes(&mut self, nodes: &[Ipv4Addr]) -> Result<usize> {
        self.dp().policy.set_cluster_nodes(nodes)
    }
    fn endpoint_flags(&self) -> Result<Vec<(Ipv4Addr, u32)>> {
        Ok(self
            .dp()
            .endpoint_entries()?
            .into_iter()
            .map(|(ip, e)| (ip, e.flags))
            .collect())
    }
    fn set_endpoint_flags(&mut self, ip: Ipv4Addr, flags: u32) -> Result<()> {
        let mut dp = self.dp();
        let Some((_, mut info)) = dp.endpoint_entries()?.into_iter().find(|(a, _)| *a == ip) else {
            return Ok(()); // released meanwhile
        };
        info.flags = flags;
        dp.upsert_endpoint(ip, info)
    }
    fn bump_generation(&mut self) -> Result<u32> {
        self.dp().policy.bump_generation()
    }
}

#[derive(Default)]
pub struct PolicyState {
    pub applied: Compiled,
    pub model: Model,
    /// The pinned maps were checked against what is wanted (first sync after
    /// a start: entries of policies deleted while the agent was down go).
    swept: bool,
}

fn verdict_key(k: &EntryKey) -> VerdictKey {
    VerdictKey {
        endpoint_id: k.endpoint_id,
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

/// Compiles and applies. Returns the number of map changes.
pub fn sync<K: PolicyKernel>(
    kernel: &mut K,
    ps: &mut PolicyState,
    state: &ClusterState,
    full: bool,
) -> Result<usize> {
    let local = kernel.local_endpoints();
    let known: Vec<(ObjectKey, Ipv4Addr)> = local
        .iter()
        .filter_map(|l| Some((l.pod.clone()?, l.ip)))
        .collect();
    let model = Model::build(state, &known);
    let compiled = compile(&model, &local);
    let mut changes = 0;
    // Classes first (new entries may refer to them), removals last.
    for (p, class) in &compiled.ipcache {
        if ps.applied.ipcache.get(p) != Some(class) {
            kernel.set_class(*p, *class)?;
            changes += 1;
        }
    }
    for (k, rule) in &compiled.entries {
        if ps.applied.entries.get(k) != Some(rule) {
            kernel.set_verdict(&verdict_key(k), *rule)?;
            changes += 1;
        }
    }
    // Where the load balancer's health checks come from.
    let nodes: Vec<Ipv4Addr> = state
        .node_names()
        .iter()
        .filter_map(|n| state.node_internal_ip(n))
        .collect();
    changes += kernel.set_cluster_nodes(&nodes)?;
    // Isolation of endpoints already in the data plane.
    for (ip, have) in kernel.endpoint_flags()? {
        let Some(ep) = local.iter().find(|l| l.ip == ip) else {
            continue;
        };
        let want = flags(
            compiled
                .isolation
                .get(&ep.endpoint_id)
                .copied()
                .unwrap_or((false, false)),
        );
        if have != want {
            kernel.set_endpoint_flags(ip, want)?;
            changes += 1;
        }
    }
    for k in ps
        .applied
        .entries
        .keys()
        .filter(|k| !compiled.entries.contains_key(k))
    {
        kernel.remove_verdict(&verdict_key(k))?;
        changes += 1;
    }
    for p in ps
        .applied
        .ipcache
        .keys()
        .filter(|p| !compiled.ipcache.contains_key(p))
    {
        kernel.remove_class(*p)?;
        changes += 1;
    }
    if full || !ps.swept {
        let wanted: BTreeSet<VerdictKey> = compiled.entries.keys().map(verdict_key).collect();
        for k in kernel
            .verdicts()?
            .into_iter()
            .filter(|k| !wanted.contains(k))
        {
            kernel.remove_verdict(&k)?;
            changes += 1;
        }
        for p in kernel
            .classes()?
            .into_iter()
            .filter(|p| !compiled.ipcache.contains_key(p))
        {
            kernel.remove_class(p)?;
            changes += 1;
        }
        ps.swept = true;
    }
    if changes > 0 {
        let g = kernel.bump_generation()?;
        tracing::info!(
            changes,
            generation = g,
            classes = compiled.classes.len(),
            entries = compiled.entries.len(),
            "network policy applied"
        );
    }
    for p in &model.problems {
        if !ps.model.problems.contains(p) {
            tracing::warn!(problem = %p, "network policy problem");
        }
    }
    ps.applied = compiled;
    ps.model = model;
    Ok(changes)
}

pub struct PolicyPhase<K> {
    pub kernel: K,
    pub state: Arc<Mutex<PolicyState>>,
}

impl<K: PolicyKernel> Phase for PolicyPhase<K> {
    fn name(&self) -> &'static str {
        "policy"
    }

    fn kinds(&self) -> KindSet {
        KindSet::of(&[Kind::Node, Kind::Namespace, Kind::Pod, Kind::NetworkPolicy])
    }

    fn note_local(&mut self, event: &LocalEvent) -> bool {
        matches!(event, LocalEvent::Endpoint(_))
    }

    fn reconcile(&mut self, pass: &Pass<'_>) -> Result<Outcome> {
        let state = self.state.clone();
        let mut ps = state.lock().unwrap();
        let changes = sync(&mut self.kernel, &mut ps, pass.state, pass.full)?;
        Ok(Outcome::applied(changes))
    }
}
