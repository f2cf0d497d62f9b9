//! A node's BGP desired state from the cluster state: whether it runs BGP,
//! its sessions, what it announces, what it refuses, and so BIRD's
//! configuration. Pure: the agent's bgp phase renders it, compares, and
//! reconfigures BIRD only when it differs.

use crate::announce::service_announcements;
use crate::bird::{Announcement, BirdLog, NodeBird};
use crate::model::{BgpConfig, BgpNode, BgpPeer, InvalidResource, CONFIGURATION_NAME};
use crate::sessions::{plan, runs_bgp};
use ipnetwork::Ipv4Network;
use std::net::Ipv4Addr;
use strake_lb::model::ModelOptions;
use strake_source::ClusterState;

/// The cluster's BGP configuration: `None` when there is none (every node
/// routes directly), an error when it is invalid.
pub fn configuration(state: &ClusterState) -> Result<Option<BgpConfig>, InvalidResource> {
    match state.bgp_configurations.get(CONFIGURATION_NAME) {
        None => Ok(None),
        Some(c) => BgpConfig::parse(CONFIGURATION_NAME, &c.spec).map(Some),
    }
}

/// Every node with an InternalIP; a node whose BGP settings are invalid is
/// reported and left out.
pub fn nodes(state: &ClusterState) -> (Vec<BgpNode>, Vec<String>) {
    let mut out = Vec::new();
    let mut problems = Vec::new();
    for (name, n) in &state.nodes {
        let Some(ip) = state.node_internal_ip(name) else {
            continue;
        };
        let labels = n.metadata.labels.clone().unwrap_or_default();
        let ann = n.metadata.annotations.clone().unwrap_or_default();
        match BgpNode::new(name, ip, labels, &ann) {
            Ok(b) => out.push(b),
            Err(e) => problems.push(e.to_string()),
        }
    }
    (out, problems)
}

/// Every valid BGPPeer; each invalid one is reported, naming its field.
pub fn peers(state: &ClusterState) -> (Vec<BgpPeer>, Vec<String>) {
    let mut out = Vec::new();
    let mut problems = Vec::new();
    for (name, p) in &state.bgp_peers {
        match BgpPeer::parse(name, &p.spec) {
            Ok(p) => out.push(p),
            Err(e) => problems.push(e.to_string()),
        }
    }
    (out, problems)
}

/// Whether node `name` runs BGP.
pub fn node_runs_bgp(state: &ClusterState, cfg: Option<&BgpConfig>, name: &str) -> bool {
    let Some(cfg) = cfg else { return false };
    let Some(n) = state.nodes.get(name) else {
        return false;
    };
    let labels = n.metadata.labels.clone().unwrap_or_default();
    let probe = BgpNode {
        name: name.into(),
        ip: Ipv4Addr::UNSPECIFIED,
        labels,
        as_number: None,
    };
    runs_bgp(cfg, &probe)
}

/// What the agent knows about the node beyond the cluster state.
#[derive(Debug, Clone)]
pub struct NodeContext {
    pub node: String,
    pub uplink: String,
    /// The uplink's subnet (address and prefix).
    pub subnet: Ipv4Network,
    pub own_route_protocols: Vec<u8>,
    pub log: BirdLog,
    pub lb: ModelOptions,
}

/// A node's BGP, desired.
#[derive(Debug, Clone)]
pub struct Desired {
    pub config: Option<BgpConfig>,
    /// BIRD's configuration; `None` when this node does not run BGP.
    pub bird: Option<NodeBird>,
    /// Resources or settings that could not be honoured.
    pub problems: Vec<String>,
}

/// The node's BGP from the cluster state. Fails only on an invalid
/// BGPConfiguration (nothing can be trusted then); a bad BGPPeer or Node
/// setting costs only itself.
pub fn desired(state: &ClusterState, ctx: &NodeContext) -> Result<Desired, InvalidResource> {
    let cfg = configuration(state)?;
    let (all, mut problems) = nodes(state);
    let me = all.iter().find(|n| n.name == ctx.node);
    let (Some(cfg), Some(me)) = (cfg.clone(), me) else {
        return Ok(Desired {
            config: cfg,
            bird: None,
            problems,
        });
    };
    if !runs_bgp(&cfg, me) {
        return Ok(Desired {
            config: Some(cfg),
            bird: None,
            problems,
        });
    }
    let (peers, p) = peers(state);
    problems.extend(p);
    let sessions = plan(&cfg, &peers, &all, me, ctx.subnet);
    problems.extend(sessions.problems);

    let mut announce = Vec::new();
    let mut never_import: Vec<Ipv4Network> = Vec::new();
    if let Some((net, len)) = state.node_pod_cidr(&ctx.node) {
        if let Ok(block) = Ipv4Network::new(net, len) {
            announce.push(Announcement {
                net: block,
                why: "pod block".into(),
            });
            never_import.push(block);
        }
    }
    announce.extend(service_announcements(state, &ctx.node, &cfg, &ctx.lb));
    never_import.extend(cfg.service_load_balancer_ips.iter().copied());
    never_import.extend(cfg.service_external_ips.iter().copied());
    let bird = NodeBird {
        node: ctx.node.clone(),
        router_id: me.ip,
        local_address: me.ip,
        local_as: crate::sessions::as_of(&cfg, me),
        uplink: ctx.uplink.clone(),
        announce,
        never_import,
        sessions: sessions.sessions,
        graceful_restart_seconds: cfg.graceful_restart_seconds,
        route_reflector_cluster_id: cfg.route_reflector_cluster_id,
        own_route_protocols: ctx.own_route_protocols.clone(),
        log: ctx.log.clone(),
    };
    Ok(Desired {
        config: Some(cfg),
        bird: Some(bird),
        problems,
    })
}

/// BIRD's configuration when the node does not run BGP but BIRD is up: no
/// sessions (every peer is told goodbye) and no announcements, so the
/// kernel protocol withdraws every route BIRD installed.
pub fn idle_config(node: &str, router_id: Ipv4Addr, uplink: &str, log: BirdLog) -> NodeBird {
    NodeBird {
        node: node.into(),
        router_id,
        local_address: router_id,
        local_as: 0,
        uplink: uplink.into(),
        announce: Vec::new(),
        never_import: Vec::new(),
        sessions: Vec::new(),
        graceful_restart_seconds: 0,
        route_reflector_cluster_id: None,
        own_route_protocols: Vec::new(),
        log,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLUSTER: &str = r#"
apiVersion: v1
kind: Node
metadata: {name: a1, labels: {rack: a}}
spec: {podCIDR: 10.244.1.0/24}
status: {addresses: [{type: InternalIP, address: 10.0.1.11}]}
---
apiVersion: v1
kind: Node
metadata: {name: a2, labels: {rack: a}}
spec: {podCIDR: 10.244.2.0/24}
status: {addresses: [{type: InternalIP, address: 10.0.1.12}]}
---
apiVersion: bgp.strake.dev/v1
kind: BGPConfiguration
metadata: {name: default}
spec: {asNumber: 65001, nodeToNodeMesh: false}
---
apiVersion: bgp.strake.dev/v1
kind: BGPPeer
metadata: {name: tor-a}
spec: {peerIP: 10.0.1.1, asNumber: 65001, nodeSelector: {matchLabels: {rack: a}}}
---
apiVersion: bgp.strake.dev/v1
kind: BGPPeer
metadata: {name: broken}
spec: {peerIP: 10.0.1.300, asNumber: 65001}
"#;

    fn ctx(node: &str) -> NodeContext {
        NodeContext {
            node: node.into(),
            uplink: "eth0".into(),
            subnet: "10.0.1.0/24".parse().unwrap(),
            own_route_protocols: vec![201, 202],
            log: BirdLog::Stderr,
            lb: ModelOptions::default(),
        }
    }

    #[test]
    fn a_node_announces_its_block_peers_with_its_router_and_reports_the_broken_peer() {
        let st = strake_source::dir::state_from_yaml(CLUSTER).unwrap();
        let d = desired(&st, &ctx("a1")).unwrap();
        let bird = d.bird.unwrap();
        assert_eq!(bird.router_id, "10.0.1.11".parse::<Ipv4Addr>().unwrap());
        assert_eq!(bird.announce.len(), 1);
        assert_eq!(bird.announce[0].net.to_string(), "10.244.1.0/24");
        assert_eq!(bird.never_import, vec!["10.244.1.0/24".parse().unwrap()]);
        let peers: Vec<String> = bird
            .sessions
            .iter()
            .map(|s| s.neighbor.to_string())
            .collect();
        assert_eq!(peers, vec!["10.0.1.1"], "mesh is off");
        assert_eq!(d.problems.len(), 1);
        assert!(
            d.problems[0]
                .contains("BGPPeer broken: spec.peerIP: \"10.0.1.300\" is not an IPv4 address"),
            "{:?}",
            d.problems
        );
        crate::bird::tests::bird_parses(&bird.render());
    }

    #[test]
    fn no_configuration_no_bgp_and_a_bad_one_is_an_error() {
        let st = strake_source::dir::state_from_yaml(
            &CLUSTER.replace("kind: BGPConfiguration", "kind: BGPPeer"),
        )
        .unwrap();
        // (The configuration became a peer named default without peerIP.)
        let d = desired(&st, &ctx("a1")).unwrap();
        assert!(d.config.is_none() && d.bird.is_none());
        assert!(!node_runs_bgp(&st, d.config.as_ref(), "a1"));
        let bad = CLUSTER.replace(
            "asNumber: 65001, nodeToNodeMesh",
            "asNumber: -1, nodeToNodeMesh",
        );
        let st = strake_source::dir::state_from_yaml(&bad).unwrap();
        let e = desired(&st, &ctx("a1")).unwrap_err();
        assert!(
            e.to_string()
                .contains("BGPConfiguration default: spec.asNumber: -1 is not an AS number"),
            "{e}"
        );
    }

    #[test]
    fn the_idle_configuration_is_valid_bird() {
        let c = idle_config("a1", "10.0.1.11".parse().unwrap(), "eth0", BirdLog::Stderr).render();
        assert!(!c.contains("protocol bgp"));
        crate::bird::tests::bird_parses(&c);
    }
}
