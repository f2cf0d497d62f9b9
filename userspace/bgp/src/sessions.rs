//! Which BGP sessions a node holds: the node-to-node mesh, and every
//! `BGPPeer` whose `nodeSelector` picks it, plus the reverse side of every
//! `BGPPeer` whose `peerSelector` picks it (a route reflector holds a session
//! with each node that was told to peer with it, or BGP never comes up).
//!
//! One session per neighbor address: the first definition wins (BGPPeers by
//! name, then the mesh), and a second one that disagrees about the
//! neighbor's AS is reported, not silently merged.

use crate::model::{BgpConfig, BgpNode, BgpPeer, PeerTarget};
use ipnetwork::Ipv4Network;
use std::net::Ipv4Addr;
use strake_policy::selector::matches;

/// Where a session comes from, for status and BIRD's description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// The node-to-node mesh, with this node.
    Mesh { node: String },
    /// A `BGPPeer`; `node` when the neighbor is a node of the cluster.
    Peer {
        resource: String,
        node: Option<String>,
    },
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::Mesh { node } => write!(f, "node-to-node mesh: node {node}"),
            Origin::Peer {
                resource,
                node: None,
            } => write!(f, "BGPPeer {resource}"),
            Origin::Peer {
                resource,
                node: Some(n),
            } => write!(f, "BGPPeer {resource}: node {n}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// BIRD's protocol name, from the neighbor address (stable, unique).
    pub name: String,
    pub neighbor: Ipv4Addr,
    pub neighbor_as: u32,
    pub local_as: u32,
    pub origin: Origin,
    /// The neighbor is on this node's subnet: a direct session whose next
    /// hops need no resolution.
    pub on_link: bool,
    /// This node reflects routes to the neighbor (it is a route reflector,
    /// the neighbor a node of its AS that is not).
    pub rr_client: bool,
    pub hold_time_seconds: u32,
    /// TTL for a neighbor off the subnet.
    pub multihop: Option<u8>,
    pub max_prefixes: Option<u32>,
}

impl Session {
    pub fn ibgp(&self) -> bool {
        self.neighbor_as == self.local_as
    }
}

/// BIRD's protocol name for the session with `ip`.
pub fn session_name(ip: Ipv4Addr) -> String {
    let o = ip.octets();
    format!("peer_{}_{}_{}_{}", o[0], o[1], o[2], o[3])
}

/// The sessions of one node, and what could not be honoured.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SessionPlan {
    pub sessions: Vec<Session>,
    pub problems: Vec<String>,
}

/// Whether `node` runs BGP under `cfg`.
pub fn runs_bgp(cfg: &BgpConfig, node: &BgpNode) -> bool {
    matches(&cfg.node_selector, &node.labels)
}

/// A node's AS under `cfg`.
pub fn as_of(cfg: &BgpConfig, node: &BgpNode) -> u32 {
    node.as_number.unwrap_or(cfg.as_number)
}

/// The sessions of node `me`, whose uplink is on `subnet`.
pub fn plan(
    cfg: &BgpConfig,
    peers: &[BgpPeer],
    nodes: &[BgpNode],
    me: &BgpNode,
    subnet: Ipv4Network,
) -> SessionPlan {
    let mut out = SessionPlan::default();
    if !runs_bgp(cfg, me) {
        return out;
    }
    let local_as = as_of(cfg, me);
    let others: Vec<&BgpNode> = nodes
        .iter()
        .filter(|n| n.name != me.name && n.ip != me.ip && runs_bgp(cfg, n))
        .collect();
    let add = |out: &mut SessionPlan,
               ip: Ipv4Addr,
               asn: u32,
               origin: Origin,
               peer: Option<&BgpPeer>,
               node: Option<&BgpNode>| {
        if let Some(have) = out.sessions.iter().find(|s| s.neighbor == ip) {
            if have.neighbor_as != asn {
                out.problems.push(format!(
                    "{origin} asks for a session with {ip} as AS {asn}, but {} already holds it as AS {}; keeping the first",
                    have.origin, have.neighbor_as
                ));
            }
            return;
        }
        let on_link = subnet.contains(ip);
        let multihop = (!on_link).then(|| peer.and_then(|p| p.ebgp_multihop).unwrap_or(64));
        let rr_client = me.is_route_reflector()
            && asn == local_as
            && node.is_some_and(|n| !n.is_route_reflector());
        out.sessions.push(Session {
            name: session_name(ip),
            neighbor: ip,
            neighbor_as: asn,
            local_as,
            origin,
            on_link,
            rr_client,
            hold_time_seconds: peer
                .and_then(|p| p.hold_time_seconds)
                .unwrap_or(cfg.hold_time_seconds),
            multihop,
            max_prefixes: peer.and_then(|p| p.max_prefixes),
        });
    };

    let mut sorted: Vec<&BgpPeer> = peers.iter().collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    for p in sorted {
        let picks_me = matches(&p.node_selector, &me.labels);
        match &p.target {
            PeerTarget::Address { ip, as_number } => {
                if picks_me && *ip != me.ip {
                    let origin = Origin::Peer {
                        resource: p.name.clone(),
                        node: None,
                    };
                    add(&mut out, *ip, *as_number, origin, Some(p), None);
                }
            }
            PeerTarget::Nodes(sel) => {
                let me_is_target = matches(sel, &me.labels);
                for n in &others {
                    let forward = picks_me && matches(sel, &n.labels);
                    let reverse = me_is_target && matches(&p.node_selector, &n.labels);
                    if forward || reverse {
                        let origin = Origin::Peer {
                            resource: p.name.clone(),
                            node: Some(n.name.clone()),
                        };
                        add(&mut out, n.ip, as_of(cfg, n), origin, Some(p), Some(n));
                    }
                }
            }
        }
    }
    if cfg.node_to_node_mesh {
        // The mesh joins the nodes of one subnet: a node elsewhere is reached
        // through the fabric's routers or the encapsulation fallback, never
        // through a next hop this node cannot reach directly.
        for n in others.iter().filter(|n| subnet.contains(n.ip)) {
            let origin = Origin::Mesh {
                node: n.name.clone(),
            };
            add(&mut out, n.ip, as_of(cfg, n), origin, None, Some(n));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ROUTE_REFLECTOR_LABEL;

    fn node(name: &str, ip: &str, labels: &[(&str, &str)]) -> BgpNode {
        BgpNode {
            name: name.into(),
            ip: ip.parse().unwrap(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            as_number: None,
        }
    }

    fn peer(name: &str, yaml: &str) -> BgpPeer {
        BgpPeer::parse(name, &serde_yaml::from_str(yaml).unwrap()).unwrap()
    }

    fn net(s: &str) -> Ipv4Network {
        s.parse().unwrap()
    }

    fn neighbors(p: &SessionPlan) -> Vec<(String, u32, String)> {
        p.sessions
            .iter()
            .map(|s| (s.neighbor.to_string(), s.neighbor_as, s.origin.to_string()))
            .collect()
    }

    fn racks() -> Vec<BgpNode> {
        vec![
            node("a1", "10.0.1.11", &[("rack", "a")]),
            node("a2", "10.0.1.12", &[("rack", "a")]),
            node("b1", "10.0.2.11", &[("rack", "b")]),
            node("b2", "10.0.2.12", &[("rack", "b")]),
        ]
    }

    #[test]
    fn the_mesh_joins_the_nodes_of_one_subnet() {
        let nodes = racks();
        let p = plan(
            &BgpConfig::default(),
            &[],
            &nodes,
            &nodes[0],
            net("10.0.1.0/24"),
        );
        assert_eq!(
            neighbors(&p),
            vec![(
                "10.0.1.12".into(),
                64512,
                "node-to-node mesh: node a2".into()
            )]
        );
        let s = &p.sessions[0];
        assert!(s.on_link && s.ibgp() && !s.rr_client);
        assert_eq!((s.name.as_str(), s.multihop), ("peer_10_0_1_12", None));
    }

    #[test]
    fn each_rack_peers_with_its_own_router_by_label() {
        let cfg = BgpConfig {
            node_to_node_mesh: false,
            ..Default::default()
        };
        let peers = [
            peer(
                "tor-a",
                "{peerIP: 10.0.1.1, asNumber: 65001, nodeSelector: {matchLabels: {rack: a}}}",
            ),
            peer(
                "tor-b",
                "{peerIP: 10.0.2.1, asNumber: 65002, nodeSelector: {matchLabels: {rack: b}}}",
            ),
        ];
        let nodes = racks();
        let a = plan(&cfg, &peers, &nodes, &nodes[1], net("10.0.1.0/24"));
        assert_eq!(
            neighbors(&a),
            vec![("10.0.1.1".into(), 65001, "BGPPeer tor-a".into())]
        );
        assert!(!a.sessions[0].ibgp());
        let b = plan(&cfg, &peers, &nodes, &nodes[2], net("10.0.2.0/24"));
        assert_eq!(
            neighbors(&b),
            vec![("10.0.2.1".into(), 65002, "BGPPeer tor-b".into())]
        );
    }

    #[test]
    fn route_reflectors_hold_the_reverse_sessions_and_reflect_to_their_clients() {
        let cfg = BgpConfig {
            node_to_node_mesh: false,
            ..Default::default()
        };
        let rr = &[(ROUTE_REFLECTOR_LABEL, "true")][..];
        let nodes = vec![
            node("rr1", "10.0.1.5", rr),
            node("rr2", "10.0.2.5", rr),
            node("a1", "10.0.1.11", &[]),
            node("b1", "10.0.2.11", &[]),
        ];
        // Every node peers with the route reflectors.
        let peers = [peer(
            "to-rrs",
            "{peerSelector: {matchLabels: {bgp.strake.dev/route-reflector: 'true'}}}",
        )];
        let a1 = plan(&cfg, &peers, &nodes, &nodes[2], net("10.0.1.0/24"));
        assert_eq!(
            neighbors(&a1),
            vec![
                ("10.0.1.5".into(), 64512, "BGPPeer to-rrs: node rr1".into()),
                ("10.0.2.5".into(), 64512, "BGPPeer to-rrs: node rr2".into()),
            ]
        );
        assert!(a1.sessions.iter().all(|s| !s.rr_client));
        assert_eq!(a1.sessions[1].multihop, Some(64), "rr2 is off the subnet");
        let rr1 = plan(&cfg, &peers, &nodes, &nodes[0], net("10.0.1.0/24"));
        let got: Vec<(String, bool)> = rr1
            .sessions
            .iter()
            .map(|s| (s.neighbor.to_string(), s.rr_client))
            .collect();
        assert_eq!(
            got,
            vec![
                ("10.0.2.5".into(), false),
                ("10.0.1.11".into(), true),
                ("10.0.2.11".into(), true),
            ],
            "reflectors peer with each other as equals and reflect to every client"
        );
    }

    #[test]
    fn nodes_outside_the_configuration_selector_hold_no_session_and_get_none() {
        let cfg = BgpConfig {
            node_selector: serde_json::from_value(
                serde_json::json!({"matchLabels": {"bgp": "on"}}),
            )
            .unwrap(),
            ..Default::default()
        };
        let nodes = vec![
            node("a1", "10.0.1.11", &[("bgp", "on")]),
            node("a2", "10.0.1.12", &[("bgp", "on")]),
            node("a3", "10.0.1.13", &[]),
        ];
        let p = plan(&cfg, &[], &nodes, &nodes[0], net("10.0.1.0/24"));
        assert_eq!(neighbors(&p).len(), 1, "{p:?}");
        assert!(plan(&cfg, &[], &nodes, &nodes[2], net("10.0.1.0/24"))
            .sessions
            .is_empty());
    }

    #[test]
    fn one_session_per_neighbor_and_a_conflicting_as_is_reported() {
        let nodes = racks();
        let peers = [
            peer("a-first", "{peerIP: 10.0.1.1, asNumber: 65001}"),
            peer("b-second", "{peerIP: 10.0.1.1, asNumber: 65009}"),
            peer("c-same", "{peerIP: 10.0.1.1, asNumber: 65001}"),
            // The mesh would also give a2; the BGPPeer came first.
            peer("d-nodes", "{peerSelector: {matchLabels: {rack: a}}}"),
            peer("e-self", "{peerIP: 10.0.1.11, asNumber: 1}"),
        ];
        let p = plan(
            &BgpConfig::default(),
            &peers,
            &nodes,
            &nodes[0],
            net("10.0.1.0/24"),
        );
        assert_eq!(
            neighbors(&p),
            vec![
                ("10.0.1.1".into(), 65001, "BGPPeer a-first".into()),
                ("10.0.1.12".into(), 64512, "BGPPeer d-nodes: node a2".into()),
                // a1 is one of d-nodes' targets: every node it picks peers with a1.
                ("10.0.2.11".into(), 64512, "BGPPeer d-nodes: node b1".into()),
                ("10.0.2.12".into(), 64512, "BGPPeer d-nodes: node b2".into()),
            ]
        );
        assert_eq!(p.problems.len(), 1, "{:?}", p.problems);
        assert!(p.problems[0].contains("BGPPeer b-second asks for a session with 10.0.1.1 as AS 65009, but BGPPeer a-first already holds it as AS 65001"));
    }

    #[test]
    fn per_node_as_and_peer_timers() {
        let mut nodes = racks();
        nodes[1].as_number = Some(65011);
        let peers = [peer(
            "tor",
            "{peerIP: 192.0.2.1, asNumber: 65000, holdTimeSeconds: 30, ebgpMultihop: 3, maxPrefixes: 1000}",
        )];
        let p = plan(
            &BgpConfig::default(),
            &peers,
            &nodes,
            &nodes[0],
            net("10.0.1.0/24"),
        );
        let tor = &p.sessions[0];
        assert_eq!(
            (
                tor.hold_time_seconds,
                tor.multihop,
                tor.max_prefixes,
                tor.on_link
            ),
            (30, Some(3), Some(1000), false)
        );
        assert_eq!(p.sessions[1].neighbor_as, 65011, "a2 has its own AS");
        assert!(!p.sessions[1].ibgp());
    }
}
