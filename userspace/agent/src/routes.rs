//! Routes between nodes: every other node's pod CIDR via its InternalIP
//! (direct routing, no tunnel), and a blackhole for this node's own block so
//! an unassigned pod address never leaks to the default route. Only routes
//! tagged with strake's protocol number are ever touched.

use crate::agent::Agent;
use anyhow::Result;
use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use strake_netlink::{Route4, STRAKE_ROUTE_PROTO};
use strake_source::ClusterState;

/// The node routes this node should have.
pub fn desired_routes(state: &ClusterState, me: &str) -> BTreeSet<Route4> {
    let mut out = BTreeSet::new();
    for name in state.nodes.keys() {
        let Some((net, prefix)) = state.node_pod_cidr(name) else {
            continue;
        };
        let mut r = Route4::to(net, prefix);
        if name == me {
            r.blackhole = true;
        } else {
            let Some(gw) = state.node_internal_ip(name) else {
                continue;
            };
            r.gateway = Some(gw);
        }
        out.insert(r);
    }
    out
}

/// Identity of a route for diffing: what it is, not how the kernel echoes it.
fn shape(r: &Route4) -> (std::net::Ipv4Addr, u8, Option<std::net::Ipv4Addr>, bool) {
    (r.dst, r.prefix, r.gateway, r.blackhole)
}

/// Applies the difference between desired and installed node routes.
/// Returns (added, removed).
pub async fn reconcile_routes(agent: &Agent, state: &ClusterState) -> Result<(usize, usize)> {
    let desired = desired_routes(state, agent.node());
    let current = agent.nl.routes(Some(STRAKE_ROUTE_PROTO)).await?;
    let want: BTreeSet<_> = desired.iter().map(shape).collect();
    let have: BTreeSet<_> = current.iter().map(shape).collect();
    let mut added = 0;
    let mut removed = 0;
    for r in &current {
        if !want.contains(&shape(r)) {
            agent.nl.delete_route(r).await?;
            tracing::info!(route = %r, "withdrew node route");
            removed += 1;
        }
    }
    for r in &desired {
        if !have.contains(&shape(r)) {
            agent.nl.replace_route(r).await?;
            tracing::info!(route = %r, "installed node route");
            added += 1;
        }
    }
    agent
        .routes_installed
        .store(desired.len(), Ordering::Relaxed);
    Ok((added, removed))
}

#[cfg(test)]
mod tests {
    use super::*;
    use strake_source::dir::{apply_object, parse_documents};

    #[test]
    fn other_nodes_are_routed_and_our_block_is_blackholed() {
        let mut st = ClusterState::default();
        let yaml = r#"
apiVersion: v1
kind: Node
metadata: {name: a}
spec: {podCIDR: 10.244.1.0/24}
status: {addresses: [{type: InternalIP, address: 10.0.0.1}]}
---
apiVersion: v1
kind: Node
metadata: {name: b}
spec: {podCIDR: 10.244.2.0/24}
status: {addresses: [{type: InternalIP, address: 10.0.0.2}]}
---
apiVersion: v1
kind: Node
metadata: {name: c}
spec: {}
status: {addresses: [{type: InternalIP, address: 10.0.0.3}]}
"#;
        for o in parse_documents(yaml) {
            apply_object(&mut st, o.unwrap()).unwrap();
        }
        let r: Vec<String> = desired_routes(&st, "a")
            .iter()
            .map(|r| r.to_string())
            .collect();
        assert_eq!(
            r,
            vec!["blackhole 10.244.1.0/24", "10.244.2.0/24 via 10.0.0.2"]
        );
    }
}
