//! The `bgp.strake.dev/v1` resources, read from their YAML (or the API
//! server's JSON) and checked field by field, so a bad definition is refused
//! with a message that names the field, and the node itself.
//!
//! - `BGPConfiguration` (cluster-scoped, one named `default`): the AS
//!   number, the node-to-node mesh, which nodes run BGP, timers, and which
//!   Service addresses may be announced.
//! - `BGPPeer` (cluster-scoped, any number): a session held by the nodes its
//!   `nodeSelector` picks, either with a router (`peerIP`, `asNumber`) or
//!   with other nodes (`peerSelector`: route reflectors, for instance).
//!
//! Per node: the annotation `bgp.strake.dev/as-number` overrides the AS, and
//! the label `bgp.strake.dev/route-reflector: "true"` makes it a route
//! reflector for the nodes of its AS that peer with it.

use ipnetwork::Ipv4Network;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::net::Ipv4Addr;

pub const API_VERSION: &str = "bgp.strake.dev/v1";
pub const CONFIGURATION_KIND: &str = "BGPConfiguration";
pub const PEER_KIND: &str = "BGPPeer";
/// The one BGPConfiguration the agents read.
pub const CONFIGURATION_NAME: &str = "default";
/// Node annotation: this node's AS number, instead of the configuration's.
pub const AS_ANNOTATION: &str = "bgp.strake.dev/as-number";
/// Node label: `"true"` makes the node a route reflector.
pub const ROUTE_REFLECTOR_LABEL: &str = "bgp.strake.dev/route-reflector";

pub const DEFAULT_AS: u32 = 64512;
pub const DEFAULT_HOLD_TIME: u32 = 90;
pub const DEFAULT_GRACEFUL_RESTART: u32 = 120;

/// A resource (or node setting) refused, with the field that is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidResource {
    pub kind: &'static str,
    pub name: String,
    pub field: String,
    pub message: String,
}

impl std::fmt::Display for InvalidResource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}: {}",
            self.kind, self.name, self.field, self.message
        )
    }
}

impl std::error::Error for InvalidResource {}

/// The cluster-wide BGP settings (`BGPConfiguration default`).
#[derive(Debug, Clone, PartialEq)]
pub struct BgpConfig {
    /// AS of every node without its own annotation.
    pub as_number: u32,
    /// Sessions between every two BGP nodes that share a subnet.
    pub node_to_node_mesh: bool,
    /// Which nodes run BGP; the others keep direct routes.
    pub node_selector: LabelSelector,
    pub hold_time_seconds: u32,
    /// 0 turns graceful restart off.
    pub graceful_restart_seconds: u32,
    /// Cluster ID of the route reflectors (BIRD's default: its router ID).
    pub route_reflector_cluster_id: Option<Ipv4Addr>,
    /// LoadBalancer ingress addresses inside these are announced.
    pub service_load_balancer_ips: Vec<Ipv4Network>,
    /// externalIPs inside these are announced.
    pub service_external_ips: Vec<Ipv4Network>,
}

impl Default for BgpConfig {
    fn default() -> Self {
        BgpConfig {
            as_number: DEFAULT_AS,
            node_to_node_mesh: true,
            node_selector: LabelSelector::default(),
            hold_time_seconds: DEFAULT_HOLD_TIME,
            graceful_restart_seconds: DEFAULT_GRACEFUL_RESTART,
            route_reflector_cluster_id: None,
            service_load_balancer_ips: Vec::new(),
            service_external_ips: Vec::new(),
        }
    }
}

/// Who a `BGPPeer` session is with.
#[derive(Debug, Clone, PartialEq)]
pub enum PeerTarget {
    /// A router (or anything else that is not a node of the cluster).
    Address { ip: Ipv4Addr, as_number: u32 },
    /// Every BGP node these labels select, at its InternalIP and AS.
    Nodes(LabelSelector),
}

#[derive(Debug, Clone, PartialEq)]
pub struct BgpPeer {
    pub name: String,
    /// The nodes that hold the session (empty: every BGP node).
    pub node_selector: LabelSelector,
    pub target: PeerTarget,
    pub hold_time_seconds: Option<u32>,
    /// TTL for a peer that is not on the node's subnet.
    pub ebgp_multihop: Option<u8>,
    /// More prefixes than this from the peer restart the session.
    pub max_prefixes: Option<u32>,
}

/// What the sessions need to know about a node.
#[derive(Debug, Clone, PartialEq)]
pub struct BgpNode {
    pub name: String,
    pub ip: Ipv4Addr,
    pub labels: BTreeMap<String, String>,
    /// From the `bgp.strake.dev/as-number` annotation.
    pub as_number: Option<u32>,
}

impl BgpNode {
    /// A node from its name, InternalIP, labels and annotations; a bad AS
    /// annotation is refused.
    pub fn new(
        name: &str,
        ip: Ipv4Addr,
        labels: BTreeMap<String, String>,
        annotations: &BTreeMap<String, String>,
    ) -> Result<Self, InvalidResource> {
        let as_number = match annotations.get(AS_ANNOTATION) {
            None => None,
            Some(v) => Some(
                v.trim()
                    .parse::<u64>()
                    .ok()
                    .and_then(|n| as_number(n).ok())
                    .ok_or_else(|| InvalidResource {
                        kind: "Node",
                        name: name.into(),
                        field: format!("metadata.annotations[\"{AS_ANNOTATION}\"]"),
                        message: format!("{v:?} is not an AS number (1 to 4294967295, not 23456)"),
                    })?,
            ),
        };
        Ok(BgpNode {
            name: name.into(),
            ip,
            labels,
            as_number,
        })
    }

    pub fn is_route_reflector(&self) -> bool {
        self.labels
            .get(ROUTE_REFLECTOR_LABEL)
            .is_some_and(|v| v == "true")
    }
}

/// The fields of one `spec`, each taken once; whatever is left is unknown.
struct Fields<'a> {
    kind: &'static str,
    name: &'a str,
    map: Map<String, Value>,
}

impl<'a> Fields<'a> {
    fn new(kind: &'static str, name: &'a str, spec: &Value) -> Result<Self, InvalidResource> {
        let map = match spec {
            Value::Null => Map::new(),
            Value::Object(m) => m.clone(),
            other => {
                return Err(InvalidResource {
                    kind,
                    name: name.into(),
                    field: "spec".into(),
                    message: format!("must be a mapping, not {}", type_name(other)),
                })
            }
        };
        Ok(Fields { kind, name, map })
    }

    fn err(&self, field: &str, message: impl Into<String>) -> InvalidResource {
        InvalidResource {
            kind: self.kind,
            name: self.name.into(),
            field: field.into(),
            message: message.into(),
        }
    }

    fn take(&mut self, key: &str) -> Option<Value> {
        self.map.remove(key).filter(|v| !v.is_null())
    }

    fn bool(&mut self, key: &str) -> Result<Option<bool>, InvalidResource> {
        match self.take(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(b)),
            Some(v) => Err(self.err(
                &format!("spec.{key}"),
                format!("must be true or false, not {v}"),
            )),
        }
    }

    fn uint(&mut self, key: &str, min: u64, max: u64) -> Result<Option<u64>, InvalidResource> {
        match self.take(key) {
            None => Ok(None),
            Some(v) => match v.as_u64() {
                Some(n) if (min..=max).contains(&n) => Ok(Some(n)),
                _ => Err(self.err(
                    &format!("spec.{key}"),
                    format!("must be a whole number from {min} to {max}, not {v}"),
                )),
            },
        }
    }

    fn as_number(&mut self, key: &str) -> Result<Option<u32>, InvalidResource> {
        match self.take(key) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .and_then(|n| as_number(n).ok())
                .map(Some)
                .ok_or_else(|| {
                    self.err(
                        &format!("spec.{key}"),
                        format!("{v} is not an AS number (1 to 4294967295, not 23456)"),
                    )
                }),
        }
    }

    fn ipv4(&mut self, key: &str) -> Result<Option<Ipv4Addr>, InvalidResource> {
        match self.take(key) {
            None => Ok(None),
            Some(v) => v
                .as_str()
                .and_then(|s| s.parse::<Ipv4Addr>().ok())
                .map(Some)
                .ok_or_else(|| {
                    self.err(
                        &format!("spec.{key}"),
                        format!("{v} is not an IPv4 address"),
                    )
                }),
        }
    }

    fn selector(&mut self, key: &str) -> Result<Option<LabelSelector>, InvalidResource> {
        let Some(v) = self.take(key) else {
            return Ok(None);
        };
        let field = format!("spec.{key}");
        let sel: LabelSelector = serde_json::from_value(v).map_err(|e| {
            self.err(
                &field,
                format!("not a label selector (matchLabels, matchExpressions): {e}"),
            )
        })?;
        for (i, e) in sel.match_expressions.iter().flatten().enumerate() {
            let at = format!("{field}.matchExpressions[{i}]");
            let values = e.values.as_deref().unwrap_or_default();
            match e.operator.as_str() {
                "In" | "NotIn" if values.is_empty() => {
                    return Err(self.err(
                        &format!("{at}.values"),
                        format!("operator {} needs at least one value", e.operator),
                    ))
                }
                "Exists" | "DoesNotExist" if !values.is_empty() => {
                    return Err(self.err(
                        &format!("{at}.values"),
                        format!("operator {} takes no values", e.operator),
                    ))
                }
                "In" | "NotIn" | "Exists" | "DoesNotExist" => {}
                other => {
                    return Err(self.err(
                        &format!("{at}.operator"),
                        format!("{other:?} is not In, NotIn, Exists or DoesNotExist"),
                    ))
                }
            }
        }
        Ok(Some(sel))
    }

    fn cidrs(&mut self, key: &str) -> Result<Vec<Ipv4Network>, InvalidResource> {
        let Some(v) = self.take(key) else {
            return Ok(Vec::new());
        };
        let field = format!("spec.{key}");
        let Value::Array(items) = v else {
            return Err(self.err(&field, "must be a list of {cidr: ...}"));
        };
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let at = format!("{field}[{i}].cidr");
            let s = item
                .get("cidr")
                .and_then(Value::as_str)
                .ok_or_else(|| self.err(&at, "is required (an IPv4 CIDR)"))?;
            let net: Ipv4Network = s
                .parse()
                .map_err(|_| self.err(&at, format!("{s:?} is not an IPv4 CIDR")))?;
            if net.network() != net.ip() {
                return Err(self.err(
                    &at,
                    format!(
                        "{s} has host bits set (did you mean {}/{}?)",
                        net.network(),
                        net.prefix()
                    ),
                ));
            }
            out.push(net);
        }
        Ok(out)
    }

    /// Refuses a field that is not in `known`, first: a misspelt field is
    /// the mistake to name, not the field it was meant to be.
    fn known(&self, known: &[&str]) -> Result<(), InvalidResource> {
        match self.map.keys().find(|k| !known.contains(&k.as_str())) {
            None => Ok(()),
            Some(k) => {
                let hint = known
                    .iter()
                    .find(|n| n.eq_ignore_ascii_case(k))
                    .map(|n| format!("did you mean {n}? "))
                    .unwrap_or_default();
                Err(self.err(
                    &format!("spec.{k}"),
                    format!("unknown field ({hint}known: {})", known.join(", ")),
                ))
            }
        }
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

/// A 4-octet AS number; 0 and AS_TRANS (23456) are not usable.
fn as_number(n: u64) -> Result<u32, ()> {
    match u32::try_from(n) {
        Ok(0) | Ok(23456) | Err(_) => Err(()),
        Ok(n) => Ok(n),
    }
}

/// Every field of a BGPConfiguration spec (deploy/strake/crds.yaml has the same).
pub const CONFIG_FIELDS: &[&str] = &[
    "asNumber",
    "nodeToNodeMesh",
    "nodeSelector",
    "holdTimeSeconds",
    "gracefulRestartSeconds",
    "routeReflectorClusterID",
    "serviceLoadBalancerIPs",
    "serviceExternalIPs",
];

impl BgpConfig {
    /// The configuration from a `BGPConfiguration`'s name and spec.
    pub fn parse(name: &str, spec: &Value) -> Result<Self, InvalidResource> {
        let mut f = Fields::new(CONFIGURATION_KIND, name, spec)?;
        f.known(CONFIG_FIELDS)?;
        if name != CONFIGURATION_NAME {
            return Err(f.err(
                "metadata.name",
                format!("only the BGPConfiguration named {CONFIGURATION_NAME:?} is read"),
            ));
        }
        let d = BgpConfig::default();
        let hold = f.uint("holdTimeSeconds", 0, 65535)?;
        if matches!(hold, Some(1 | 2)) {
            return Err(f.err("spec.holdTimeSeconds", "must be 0 or at least 3 (RFC 4271)"));
        }
        let cfg = BgpConfig {
            as_number: f.as_number("asNumber")?.unwrap_or(d.as_number),
            node_to_node_mesh: f.bool("nodeToNodeMesh")?.unwrap_or(d.node_to_node_mesh),
            node_selector: f.selector("nodeSelector")?.unwrap_or_default(),
            hold_time_seconds: hold.map_or(d.hold_time_seconds, |h| h as u32),
            graceful_restart_seconds: f
                .uint("gracefulRestartSeconds", 0, 4095)?
                .map_or(d.graceful_restart_seconds, |s| s as u32),
            route_reflector_cluster_id: f.ipv4("routeReflectorClusterID")?,
            service_load_balancer_ips: f.cidrs("serviceLoadBalancerIPs")?,
            service_external_ips: f.cidrs("serviceExternalIPs")?,
        };
        Ok(cfg)
    }
}

/// Every field of a BGPPeer spec (deploy/strake/crds.yaml has the same).
pub const PEER_FIELDS: &[&str] = &[
    "nodeSelector",
    "peerIP",
    "asNumber",
    "peerSelector",
    "holdTimeSeconds",
    "ebgpMultihop",
    "maxPrefixes",
];

impl BgpPeer {
    /// A peer from a `BGPPeer`'s name and spec.
    pub fn parse(name: &str, spec: &Value) -> Result<Self, InvalidResource> {
        let mut f = Fields::new(PEER_KIND, name, spec)?;
        f.known(PEER_FIELDS)?;
        let node_selector = f.selector("nodeSelector")?.unwrap_or_default();
        let peer_ip = f.ipv4("peerIP")?;
        let asn = f.as_number("asNumber")?;
        let peer_selector = f.selector("peerSelector")?;
        let target = match (peer_ip, peer_selector) {
            (Some(ip), None) => PeerTarget::Address {
                ip,
                as_number: asn.ok_or_else(|| {
                    f.err(
                        "spec.asNumber",
                        "is required with spec.peerIP (the router's AS)",
                    )
                })?,
            },
            (None, Some(sel)) => {
                if asn.is_some() {
                    return Err(f.err(
                        "spec.asNumber",
                        "goes with spec.peerIP; nodes picked by spec.peerSelector keep their own AS",
                    ));
                }
                PeerTarget::Nodes(sel)
            }
            (Some(_), Some(_)) => {
                return Err(f.err(
                    "spec.peerSelector",
                    "give spec.peerIP or spec.peerSelector, not both",
                ))
            }
            (None, None) => {
                return Err(f.err(
                    "spec.peerIP",
                    "one of spec.peerIP (a router) or spec.peerSelector (nodes) is required",
                ))
            }
        };
        let hold = f.uint("holdTimeSeconds", 0, 65535)?;
        if matches!(hold, Some(1 | 2)) {
            return Err(f.err("spec.holdTimeSeconds", "must be 0 or at least 3 (RFC 4271)"));
        }
        let peer = BgpPeer {
            name: name.into(),
            node_selector,
            target,
            hold_time_seconds: hold.map(|h| h as u32),
            ebgp_multihop: f.uint("ebgpMultihop", 1, 255)?.map(|t| t as u8),
            max_prefixes: f.uint("maxPrefixes", 1, u32::MAX as u64)?.map(|n| n as u32),
        };
        Ok(peer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(yaml: &str) -> Value {
        serde_yaml::from_str(yaml).unwrap()
    }

    fn peer_err(yaml: &str) -> String {
        BgpPeer::parse("tor", &spec(yaml)).unwrap_err().to_string()
    }

    #[test]
    fn a_router_peer_and_a_node_peer() {
        let p = BgpPeer::parse(
            "tor",
            &spec("{peerIP: 10.0.1.1, asNumber: 65001, nodeSelector: {matchLabels: {rack: a}}}"),
        )
        .unwrap();
        assert_eq!(
            p.target,
            PeerTarget::Address {
                ip: "10.0.1.1".parse().unwrap(),
                as_number: 65001
            }
        );
        assert_eq!(
            p.node_selector.match_labels.unwrap()["rack"],
            "a".to_string()
        );
        let p = BgpPeer::parse(
            "rrs",
            &spec("{peerSelector: {matchExpressions: [{key: bgp.strake.dev/route-reflector, operator: Exists}]}}"),
        )
        .unwrap();
        assert!(matches!(p.target, PeerTarget::Nodes(_)));
    }

    #[test]
    fn every_bad_peer_is_refused_naming_its_field() {
        let cases = [
            ("{peerIP: 10.0.1, asNumber: 65001}", "BGPPeer tor: spec.peerIP: \"10.0.1\" is not an IPv4 address"),
            ("{peerIP: 10.0.1.1}", "BGPPeer tor: spec.asNumber: is required with spec.peerIP"),
            ("{peerIP: 10.0.1.1, asNumber: 0}", "spec.asNumber: 0 is not an AS number"),
            ("{peerIP: 10.0.1.1, asNumber: 23456}", "spec.asNumber: 23456 is not an AS number"),
            ("{peerIP: 10.0.1.1, asNumber: 4294967296}", "spec.asNumber: 4294967296 is not an AS number"),
            ("{peerIP: 10.0.1.1, asNumber: \"65001\"}", "spec.asNumber: \"65001\" is not an AS number"),
            ("{asNumber: 65001}", "spec.peerIP: one of spec.peerIP (a router) or spec.peerSelector"),
            ("{peerIP: 10.0.1.1, asNumber: 1, peerSelector: {}}", "spec.peerSelector: give spec.peerIP or spec.peerSelector, not both"),
            ("{peerSelector: {}, asNumber: 65001}", "spec.asNumber: goes with spec.peerIP"),
            ("{peerIp: 10.0.1.1, asNumber: 1}", "spec.peerIp: unknown field (did you mean peerIP? known: nodeSelector, peerIP"),
            ("{peer: 10.0.1.1, asNumber: 1}", "spec.peer: unknown field (known: nodeSelector, peerIP"),
            ("{peerIP: 10.0.1.1, asNumber: 1, holdTimeSeconds: 2}", "spec.holdTimeSeconds: must be 0 or at least 3"),
            ("{peerIP: 10.0.1.1, asNumber: 1, ebgpMultihop: 0}", "spec.ebgpMultihop: must be a whole number from 1 to 255, not 0"),
            ("{peerIP: 10.0.1.1, asNumber: 1, nodeSelector: {matchExpressions: [{key: rack, operator: Contains, values: [a]}]}}",
             "spec.nodeSelector.matchExpressions[0].operator: \"Contains\" is not In, NotIn, Exists or DoesNotExist"),
            ("{peerIP: 10.0.1.1, asNumber: 1, nodeSelector: {matchExpressions: [{key: rack, operator: In}]}}",
             "spec.nodeSelector.matchExpressions[0].values: operator In needs at least one value"),
            ("{peerIP: 10.0.1.1, asNumber: 1, nodeSelector: {matchExpressions: [{key: rack, operator: Exists, values: [a]}]}}",
             "spec.nodeSelector.matchExpressions[0].values: operator Exists takes no values"),
            ("{peerIP: 10.0.1.1, asNumber: 1, nodeSelector: {matchLabels: [rack]}}", "spec.nodeSelector: not a label selector"),
            ("[10.0.1.1]", "BGPPeer tor: spec: must be a mapping, not a list"),
        ];
        for (yaml, want) in cases {
            let got = peer_err(yaml);
            assert!(got.contains(want), "{yaml}\n  got:  {got}\n  want: {want}");
        }
    }

    #[test]
    fn the_configuration_defaults_and_its_bad_fields() {
        let c = BgpConfig::parse("default", &Value::Null).unwrap();
        assert_eq!(c, BgpConfig::default());
        let c = BgpConfig::parse(
            "default",
            &spec("{asNumber: 65010, nodeToNodeMesh: false, gracefulRestartSeconds: 0, serviceLoadBalancerIPs: [{cidr: 203.0.113.0/24}]}"),
        )
        .unwrap();
        assert_eq!(c.as_number, 65010);
        assert!(!c.node_to_node_mesh);
        assert_eq!(c.graceful_restart_seconds, 0);
        assert_eq!(
            c.service_load_balancer_ips,
            vec!["203.0.113.0/24".parse().unwrap()]
        );
        let err =
            |name: &str, yaml: &str| BgpConfig::parse(name, &spec(yaml)).unwrap_err().to_string();
        assert!(err("other", "{}").contains(
            "BGPConfiguration other: metadata.name: only the BGPConfiguration named \"default\""
        ));
        assert!(err("default", "{nodeToNodeMesh: yes please}")
            .contains("spec.nodeToNodeMesh: must be true or false"));
        assert!(err("default", "{serviceLoadBalancerIPs: [{cidr: 203.0.113.5/24}]}")
            .contains("spec.serviceLoadBalancerIPs[0].cidr: 203.0.113.5/24 has host bits set (did you mean 203.0.113.0/24?)"));
        assert!(err("default", "{serviceExternalIPs: [{}]}")
            .contains("spec.serviceExternalIPs[0].cidr: is required"));
        assert!(err("default", "{routeReflectorClusterID: 7}")
            .contains("spec.routeReflectorClusterID: 7 is not an IPv4 address"));
        assert!(err("default", "{gracefulRestartSeconds: 5000}")
            .contains("spec.gracefulRestartSeconds: must be a whole number from 0 to 4095"));
        assert!(err("default", "{mesh: true}").contains("spec.mesh: unknown field"));
    }

    #[test]
    fn a_node_annotation_sets_its_as_and_a_bad_one_is_refused() {
        let ann = |v: &str| BTreeMap::from([(AS_ANNOTATION.to_string(), v.to_string())]);
        let ip = "10.0.1.11".parse().unwrap();
        let n = BgpNode::new("a1", ip, BTreeMap::new(), &ann("65001")).unwrap();
        assert_eq!(n.as_number, Some(65001));
        let e = BgpNode::new("a1", ip, BTreeMap::new(), &ann("rack-a")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "Node a1: metadata.annotations[\"bgp.strake.dev/as-number\"]: \"rack-a\" is not an AS number (1 to 4294967295, not 23456)"
        );
    }
}
