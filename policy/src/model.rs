//! NetworkPolicies and pods, read from the cluster state into the shapes the
//! compiler and the explainer share. The semantics are the API reference's:
//! - `policyTypes` defaults to Ingress, plus Egress when the policy has
//!   egress rules;
//! - a peer with `podSelector` alone selects pods of the policy's namespace,
//!   `namespaceSelector` alone every pod of the selected namespaces, both
//!   together the selected pods of the selected namespaces;
//! - an empty or missing `from`/`to` matches everything, an empty or missing
//!   `ports` every port and protocol; a port without a protocol is TCP;
//! - named ports are resolved on the destination pod, protocol included.

use crate::selector::{matches, Labels};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use strake_source::{parse_cidr, ClusterState, ObjectKey};

pub const TCP: u8 = 6;
pub const UDP: u8 = 17;
pub const SCTP: u8 = 132;
pub const ICMP: u8 = 1;

pub fn proto_number(name: &str) -> Option<u8> {
    match name {
        "TCP" => Some(TCP),
        "UDP" => Some(UDP),
        "SCTP" => Some(SCTP),
        _ => None,
    }
}

pub fn proto_name(p: u8) -> String {
    match p {
        TCP => "TCP".into(),
        UDP => "UDP".into(),
        SCTP => "SCTP".into(),
        ICMP => "ICMP".into(),
        n => format!("proto {n}"),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Direction {
    Ingress,
    Egress,
}

impl Direction {
    pub fn name(self) -> &'static str {
        match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct PodInfo {
    pub key: ObjectKey,
    /// Its address, once known (status, or the node's own endpoint record).
    pub ip: Option<Ipv4Addr>,
    pub labels: Labels,
    pub ns_labels: Labels,
    pub node: Option<String>,
    /// Container ports by (name, protocol).
    pub named_ports: BTreeMap<(String, u8), u16>,
}

impl PodInfo {
    /// What policy reads of a pod; `None` for host-network pods (their
    /// address is the node's: policy does not apply to them).
    pub fn from_pod(
        key: &ObjectKey,
        pod: &k8s_openapi::api::core::v1::Pod,
        ns_labels: Labels,
        known_ip: Option<Ipv4Addr>,
    ) -> Option<PodInfo> {
        let spec = pod.spec.as_ref();
        if spec.and_then(|s| s.host_network) == Some(true) {
            return None;
        }
        // A pod that has run to completion holds no address: a new pod
        // may already have its IP, and must not be judged by the dead
        // one's labels (the load balancer skips these too).
        if matches!(
            pod.status.as_ref().and_then(|s| s.phase.as_deref()),
            Some("Succeeded" | "Failed")
        ) {
            return None;
        }
        let ip = pod
            .status
            .as_ref()
            .and_then(|s| s.pod_ip.as_ref())
            .and_then(|i| i.parse().ok())
            .or(known_ip);
        let mut named_ports = BTreeMap::new();
        for c in spec.map(|s| s.containers.as_slice()).unwrap_or_default() {
            for p in c.ports.iter().flatten() {
                if let (Some(n), Some(proto)) = (
                    &p.name,
                    proto_number(p.protocol.as_deref().unwrap_or("TCP")),
                ) {
                    named_ports.insert((n.clone(), proto), p.container_port as u16);
                }
            }
        }
        Some(PodInfo {
            key: key.clone(),
            ip,
            labels: pod.metadata.labels.clone().unwrap_or_default(),
            ns_labels,
            node: spec.and_then(|s| s.node_name.clone()),
            named_ports,
        })
    }
}

/// An IPv4 prefix.
pub type Prefix = (Ipv4Addr, u8);

pub fn prefix_contains(outer: Prefix, inner: Prefix) -> bool {
    if inner.1 < outer.1 {
        return false;
    }
    let mask = if outer.1 == 0 {
        0
    } else {
        u32::MAX << (32 - outer.1 as u32)
    };
    u32::from(inner.0) & mask == u32::from(outer.0) & mask
}

#[derive(Debug, Clone, PartialEq)]
pub enum Peer {
    Pods {
        policy_ns: String,
        namespace_selector: Option<LabelSelector>,
        pod_selector: Option<LabelSelector>,
    },
    Block {
        cidr: Prefix,
        except: Vec<Prefix>,
    },
}

impl Peer {
    pub fn matches_pod(&self, pod: &PodInfo) -> bool {
        match self {
            Peer::Pods {
                policy_ns,
                namespace_selector,
                pod_selector,
            } => {
                let ns_ok = match namespace_selector {
                    Some(ns) => matches(ns, &pod.ns_labels),
                    None => pod.key.namespace == *policy_ns,
                };
                ns_ok
                    && pod_selector
                        .as_ref()
                        .is_none_or(|s| matches(s, &pod.labels))
            }
            Peer::Block { .. } => pod.ip.is_some_and(|ip| self.matches_prefix((ip, 32))),
        }
    }

    /// A canonical text of the peer: equal peers, equal keys (peers are
    /// interned by it; selectors have no order of their own).
    pub fn key(&self) -> String {
        match self {
            Peer::Pods {
                policy_ns,
                namespace_selector,
                pod_selector,
            } => {
                let j = |s: &Option<LabelSelector>| {
                    s.as_ref()
                        .map(|s| serde_json::to_string(s).unwrap_or_default())
                        .unwrap_or_else(|| "-".into())
                };
                // Without a namespace selector the policy's namespace counts.
                let ns = match namespace_selector {
                    Some(_) => j(namespace_selector),
                    None => format!("ns={policy_ns}"),
                };
                format!("pods {ns} {}", j(pod_selector))
            }
            Peer::Block { cidr, except } => {
                let x: Vec<String> = except.iter().map(|(a, l)| format!("{a}/{l}")).collect();
                format!("block {}/{} except {}", cidr.0, cidr.1, x.join(","))
            }
        }
    }

    /// Whether every address of `p` is in the block (and none in an except).
    pub fn matches_prefix(&self, p: Prefix) -> bool {
        match self {
            Peer::Block { cidr, except } => {
                prefix_contains(*cidr, p) && !except.iter().any(|x| prefix_contains(*x, p))
            }
            Peer::Pods { .. } => false,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum PortSel {
    /// Every port of the protocol.
    Any,
    Range(u16, u16),
    Named(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct PortSpec {
    pub proto: u8,
    pub port: PortSel,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    /// Indices into `Model::peers`; `None` matches every peer.
    pub peers: Option<Vec<usize>>,
    /// `None` matches every port and protocol.
    pub ports: Option<Vec<PortSpec>>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub key: ObjectKey,
    pub pod_selector: LabelSelector,
    /// `None` when the policy does not affect this direction.
    pub ingress: Option<Vec<Rule>>,
    pub egress: Option<Vec<Rule>>,
}

impl Policy {
    pub fn rules(&self, d: Direction) -> Option<&Vec<Rule>> {
        match d {
            Direction::Ingress => self.ingress.as_ref(),
            Direction::Egress => self.egress.as_ref(),
        }
    }

    pub fn selects(&self, pod: &PodInfo) -> bool {
        pod.key.namespace == self.key.namespace && matches(&self.pod_selector, &pod.labels)
    }
}

#[derive(Debug, Clone, Default)]
pub struct Model {
    pub pods: BTreeMap<ObjectKey, PodInfo>,
    pub peers: Vec<Peer>,
    pub policies: Vec<Policy>,
    pub problems: Vec<String>,
}

/// The `policyTypes` of a policy, defaulted as the API does.
fn policy_types(spec: &k8s_openapi::api::networking::v1::NetworkPolicySpec) -> Vec<String> {
    match &spec.policy_types {
        Some(t) if !t.is_empty() => t.clone(),
        _ => {
            let mut t = vec!["Ingress".to_string()];
            if spec.egress.as_ref().is_some_and(|e| !e.is_empty()) {
                t.push("Egress".into());
            }
            t
        }
    }
}

/// A NetworkPolicy in the compiler's terms. `intern` gives each peer the
/// id rules refer to it by; problems (bad CIDRs, unknown protocols) are
/// reported and the offending peer or port skipped.
pub fn read_policy(
    key: &ObjectKey,
    np: &NetworkPolicy,
    intern: &mut dyn FnMut(Peer) -> usize,
    problems: &mut Vec<String>,
) -> Option<Policy> {
    let spec = np.spec.as_ref()?;
    let types = policy_types(spec);
    let mut rules = |dir: Direction| -> Option<Vec<Rule>> {
        let name = if dir == Direction::Ingress {
            "Ingress"
        } else {
            "Egress"
        };
        if !types.iter().any(|t| t == name) {
            return None;
        }
        let raw: Vec<(Option<Vec<_>>, Option<Vec<_>>)> = match dir {
            Direction::Ingress => spec
                .ingress
                .iter()
                .flatten()
                .map(|r| (r.from.clone(), r.ports.clone()))
                .collect(),
            Direction::Egress => spec
                .egress
                .iter()
                .flatten()
                .map(|r| (r.to.clone(), r.ports.clone()))
                .collect(),
        };
        Some(
            raw.into_iter()
                .map(|(peers, ports)| read_rule(key, peers, ports, intern, problems))
                .collect(),
        )
    };
    let ingress = rules(Direction::Ingress);
    let egress = rules(Direction::Egress);
    Some(Policy {
        key: key.clone(),
        pod_selector: spec.pod_selector.clone().unwrap_or_default(),
        ingress,
        egress,
    })
}

impl Model {
    /// `known_ips` adds pod addresses the state does not carry yet (a node's
    /// own endpoints, before their status is published).
    pub fn build(state: &ClusterState, known_ips: &[(ObjectKey, Ipv4Addr)]) -> Model {
        let mut m = Model::default();
        for (key, pod) in &state.pods {
            let known = known_ips.iter().find(|(k, _)| k == key).map(|(_, ip)| *ip);
            if let Some(p) =
                PodInfo::from_pod(key, pod, state.namespace_labels(&key.namespace), known)
            {
                m.pods.insert(key.clone(), p);
            }
        }
        for (key, np) in &state.network_policies {
            let mut peers = std::mem::take(&mut m.peers);
            let mut problems = std::mem::take(&mut m.problems);
            let mut intern = |p: Peer| {
                if let Some(i) = peers.iter().position(|x| *x == p) {
                    return i;
                }
                peers.push(p);
                peers.len() - 1
            };
            if let Some(p) = read_policy(key, np, &mut intern, &mut problems) {
                m.policies.push(p);
            }
            m.peers = peers;
            m.problems = problems;
        }
        m
    }

    pub fn pod(&self, key: &ObjectKey) -> Option<&PodInfo> {
        self.pods.get(key)
    }

    pub fn pod_by_ip(&self, ip: Ipv4Addr) -> Option<&PodInfo> {
        self.pods.values().find(|p| p.ip == Some(ip))
    }

    /// Policies selecting `pod` that affect direction `d`, with their index.
    pub fn selecting<'a>(
        &'a self,
        pod: &'a PodInfo,
        d: Direction,
    ) -> impl Iterator<Item = (usize, &'a Policy)> {
        self.policies
            .iter()
            .enumerate()
            .filter(move |(_, p)| p.rules(d).is_some() && p.selects(pod))
    }
}

fn read_rule(
    key: &ObjectKey,
    peers: Option<Vec<k8s_openapi::api::networking::v1::NetworkPolicyPeer>>,
    ports: Option<Vec<k8s_openapi::api::networking::v1::NetworkPolicyPort>>,
    intern: &mut dyn FnMut(Peer) -> usize,
    problems: &mut Vec<String>,
) -> Rule {
    let peers = peers.filter(|p| !p.is_empty()).map(|ps| {
        ps.into_iter()
            .filter_map(|p| {
                let peer = match (&p.ip_block, &p.namespace_selector, &p.pod_selector) {
                    (Some(b), None, None) => {
                        let Some(cidr) = parse_cidr(&b.cidr) else {
                            problems.push(format!(
                                "NetworkPolicy {key}: ipBlock cidr {:?} is not IPv4; ignored",
                                b.cidr
                            ));
                            return None;
                        };
                        let except = b
                            .except
                            .iter()
                            .flatten()
                            .filter_map(|e| parse_cidr(e))
                            .map(|x| (mask(x), x.1))
                            .collect();
                        Peer::Block {
                            cidr: (mask(cidr), cidr.1),
                            except,
                        }
                    }
                    (None, None, None) => {
                        problems.push(format!(
                            "NetworkPolicy {key}: a peer with no selector nor ipBlock; ignored"
                        ));
                        return None;
                    }
                    (Some(_), _, _) => {
                        problems.push(format!(
                            "NetworkPolicy {key}: ipBlock cannot be combined with selectors; ignored"
                        ));
                        return None;
                    }
                    (None, ns, pod) => Peer::Pods {
                        policy_ns: key.namespace.clone(),
                        namespace_selector: ns.clone(),
                        pod_selector: pod.clone(),
                    },
                };
                Some(intern(peer))
            })
            .collect()
    });
    let ports = ports.filter(|p| !p.is_empty()).map(|ps| {
        ps.into_iter()
            .filter_map(|p| {
                let proto = p.protocol.as_deref().unwrap_or("TCP");
                let Some(proto) = proto_number(proto) else {
                    problems.push(format!(
                        "NetworkPolicy {key}: protocol {proto} unknown; port ignored"
                    ));
                    return None;
                };
                let port = match (&p.port, p.end_port) {
                    (None, _) => PortSel::Any,
                    (Some(IntOrString::Int(n)), None) => PortSel::Range(*n as u16, *n as u16),
                    (Some(IntOrString::Int(n)), Some(e)) if e >= *n => {
                        PortSel::Range(*n as u16, e as u16)
                    }
                    (Some(IntOrString::Int(_)), Some(_)) => {
                        problems.push(format!("NetworkPolicy {key}: endPort below port; ignored"));
                        return None;
                    }
                    (Some(IntOrString::String(name)), _) => PortSel::Named(name.clone()),
                };
                Some(PortSpec { proto, port })
            })
            .collect()
    });
    Rule { peers, ports }
}

fn mask(p: Prefix) -> Ipv4Addr {
    let m = if p.1 == 0 {
        0
    } else {
        u32::MAX << (32 - p.1 as u32)
    };
    Ipv4Addr::from(u32::from(p.0) & m)
}
