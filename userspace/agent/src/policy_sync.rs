//! NetworkPolicy: compiles the policies (strake-policy) for this node's
//! endpoints, writes the difference into the maps, sets each endpoint's
//! isolation, and bumps the generation so established flows are judged
//! again against the new rules.

use crate::agent::Agent;
use anyhow::Result;
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use strake_datapath::policy::VerdictKey;
use strake_datapath::shared::{
    STRAKE_EP_F_ANTISPOOF, STRAKE_EP_F_EGRESS_ISOLATED, STRAKE_EP_F_INGRESS_ISOLATED,
};
use strake_policy::compile::{compile, Compiled, EntryKey, LocalEndpoint};
use strake_policy::model::{Direction, Model};
use strake_source::{ClusterState, ObjectKey};

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

/// Per endpoint id: (isolated for ingress, isolated for egress).
pub type Isolation = BTreeMap<u32, (bool, bool)>;

/// Compiles and applies. Returns the number of map changes and the
/// isolation of every local endpoint.
pub fn sync(agent: &Agent, state: &ClusterState) -> Result<(usize, Isolation)> {
    let mut ps = agent.policy.lock().unwrap();
    let local: Vec<LocalEndpoint> = agent
        .ipam()
        .allocations()
        .map(|a| LocalEndpoint {
            pod: a
                .record
                .pod
                .as_ref()
                .map(|p| ObjectKey::new(p.namespace.clone(), p.name.clone())),
            endpoint_id: a.record.endpoint_id,
            ip: a.ip,
        })
        .collect();
    let known: Vec<(ObjectKey, Ipv4Addr)> = local
        .iter()
        .filter_map(|l| Some((l.pod.clone()?, l.ip)))
        .collect();
    let model = Model::build(state, &known);
    let compiled = compile(&model, &local);
    let mut changes = 0;
    {
        let mut dp = agent.dp();
        // Classes first (new entries may refer to them), removals last.
        for (p, class) in &compiled.ipcache {
            if ps.applied.ipcache.get(p) != Some(class) {
                dp.policy.set_class(p.0, p.1, *class)?;
                changes += 1;
            }
        }
        for (k, rule) in &compiled.entries {
            if ps.applied.entries.get(k) != Some(rule) {
                dp.policy.set_verdict(&verdict_key(k), *rule)?;
                changes += 1;
            }
        }
        // Where the load balancer's health checks come from.
        let nodes: Vec<Ipv4Addr> = state
            .node_names()
            .iter()
            .filter_map(|n| state.node_internal_ip(n))
            .collect();
        changes += dp.policy.set_cluster_nodes(&nodes)?;
        // Isolation of endpoints already in the data plane.
        for (ip, mut info) in dp.endpoint_entries()? {
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
            if info.flags != want {
                info.flags = want;
                dp.upsert_endpoint(ip, info)?;
                changes += 1;
            }
        }
        for k in ps
            .applied
            .entries
            .keys()
            .filter(|k| !compiled.entries.contains_key(k))
        {
            dp.policy.remove_verdict(&verdict_key(k))?;
            changes += 1;
        }
        for p in ps
            .applied
            .ipcache
            .keys()
            .filter(|p| !compiled.ipcache.contains_key(p))
        {
            dp.policy.remove_class(p.0, p.1)?;
            changes += 1;
        }
        if !ps.swept {
            let wanted: std::collections::BTreeSet<VerdictKey> =
                compiled.entries.keys().map(verdict_key).collect();
            for k in dp
                .policy
                .verdicts()
                .into_iter()
                .filter(|k| !wanted.contains(k))
            {
                dp.policy.remove_verdict(&k)?;
                changes += 1;
            }
            for p in dp
                .policy
                .classes()
                .into_iter()
                .filter(|p| !compiled.ipcache.contains_key(p))
            {
                dp.policy.remove_class(p.0, p.1)?;
                changes += 1;
            }
            ps.swept = true;
        }
        if changes > 0 {
            let g = dp.policy.bump_generation()?;
            tracing::info!(
                changes,
                generation = g,
                classes = compiled.classes.len(),
                entries = compiled.entries.len(),
                "network policy applied"
            );
        }
    }
    for p in &model.problems {
        if !ps.model.problems.contains(p) {
            tracing::warn!(problem = %p, "network policy problem");
        }
    }
    let iso = compiled.isolation.clone();
    ps.applied = compiled;
    ps.model = model;
    Ok((changes, iso))
}

impl Agent {
    pub fn policy_trace(
        &self,
        from: &str,
        to: &str,
        port: u16,
        protocol: &str,
    ) -> Result<strake_api::PolicyTraceView, strake_api::ApiError> {
        use strake_api::{ApiError, ErrorKind, PolicyDecisionView};
        use strake_policy::explain::{explain, Endpoint};
        let bad = |m: String| ApiError::new(ErrorKind::InvalidRequest, m);
        let parse = |s: &str| -> Result<Endpoint, ApiError> {
            if let Ok(ip) = s.parse::<Ipv4Addr>() {
                return Ok(Endpoint::Addr(ip));
            }
            let (ns, name) = s
                .split_once('/')
                .ok_or_else(|| bad(format!("{s:?}: give namespace/pod or an IPv4 address")))?;
            Ok(Endpoint::Pod(ObjectKey::new(ns, name)))
        };
        let proto = strake_policy::model::proto_number(&protocol.to_ascii_uppercase())
            .ok_or_else(|| bad(format!("protocol {protocol:?}: use tcp, udp or sctp")))?;
        let (src, dst) = (parse(from)?, parse(to)?);
        let ps = self.policy.lock().unwrap();
        // The destination node's own addresses are always let in.
        let st = self.state.borrow().clone();
        let dst_node_ip: Vec<Ipv4Addr> = match &dst {
            Endpoint::Pod(k) => ps
                .model
                .pod(k)
                .and_then(|p| p.node.as_ref())
                .and_then(|n| st.node_internal_ip(n))
                .into_iter()
                .collect(),
            Endpoint::Addr(_) => vec![],
        };
        let t = explain(&ps.model, &src, &dst, port, proto, &dst_node_ip)
            .map_err(|e| ApiError::new(ErrorKind::NotFound, e))?;
        let view = |d: strake_policy::explain::Decision| PolicyDecisionView {
            pod: d.pod,
            direction: d.direction,
            isolated: d.isolated,
            allowed: d.allowed,
            allowed_by: d.allowed_by,
            reason: d.reason,
        };
        Ok(strake_api::PolicyTraceView {
            from: t.from,
            to: t.to,
            port: t.port,
            protocol: t.protocol,
            allowed: t.allowed,
            egress: t.egress.map(view),
            ingress: t.ingress.map(view),
        })
    }
}
