//! What a lab directory declares: nodes and pods (ordinary Kubernetes YAML),
//! the lab's own kinds (fabrics, routers, external hosts), all checked for
//! what the lab needs before anything is created.

use anyhow::{bail, Context, Result};
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::Path;
use strake_source::dir::DirSource;
use strake_source::ClusterState;

pub use crate::topology::{FabricSpec, RouterInterface, RouterSpec};

#[derive(Debug, Clone)]
pub struct NodeSpec {
    pub name: String,
    pub ip: Ipv4Addr,
    pub pod_cidr: (Ipv4Addr, u8),
    /// The fabric its InternalIP is on, and that fabric's prefix length.
    pub fabric: String,
    pub prefix: u8,
    /// Its default route: a router on its fabric, if there is one.
    pub gateway: Option<Ipv4Addr>,
}

#[derive(Debug, Clone)]
pub struct PodSpec {
    pub namespace: String,
    pub name: String,
    pub node: String,
    pub labels: BTreeMap<String, String>,
    pub tcp_ports: Vec<u16>,
    pub udp_ports: Vec<u16>,
}

impl PodSpec {
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// A host outside the cluster on the fabric (`kind: ExternalHost`,
/// `apiVersion: lab.strake.dev/v1`): a client of NodePorts and
/// LoadBalancer addresses, in netns `ext-<name>`.
#[derive(Debug, Clone)]
pub struct ExternalSpec {
    pub name: String,
    pub ip: Ipv4Addr,
    /// (destination, prefix, via): how it reaches service addresses.
    pub routes: Vec<(Ipv4Addr, u8, Ipv4Addr)>,
    pub fabric: String,
    pub prefix: u8,
}

#[derive(Debug, Clone)]
pub struct LabSpec {
    pub nodes: Vec<NodeSpec>,
    pub pods: Vec<PodSpec>,
    pub externals: Vec<ExternalSpec>,
    /// XDP load balancing on node uplinks (`kind: Lab`, `spec.xdp`, default
    /// true). It makes the fabric behave like NICs into XDP: TX checksum
    /// offload off on senders, xdp_pass on fabric ports, a jumbo fabric.
    pub xdp: bool,
    /// The agents' `--encapsulation` (Lab `spec.encapsulation`); their
    /// default when absent.
    pub encapsulation: Option<String>,
    /// More flags for every agent (Lab `spec.agentArgs`, a list of
    /// strings), after the lab's own: tests set timeouts and ranges with it.
    pub agent_args: Vec<String>,
    /// The L2 networks; one implicit /24 around the nodes when the lab
    /// declares none.
    pub fabrics: Vec<FabricSpec>,
    pub routers: Vec<RouterSpec>,
    pub state: ClusterState,
}

impl LabSpec {
    pub fn from_dir(dir: &Path) -> Result<Self> {
        if !dir.is_dir() {
            bail!("{} is not a directory of Kubernetes YAML", dir.display());
        }
        let state = DirSource::new(vec![dir.to_path_buf()]).load();
        if !state.errors.is_empty() {
            bail!(
                "the lab directory has invalid documents:\n  {}",
                state.errors.join("\n  ")
            );
        }
        check_bgp_resources(&state)?;
        let mut spec = Self::from_state(state)?;
        spec.read_lab_kinds(dir)?;
        spec.place_on_fabrics()?;
        Ok(spec)
    }

    /// Puts every node and external host on the fabric its address is in
    /// (or all on one implicit /24), with a default route via a router there.
    fn place_on_fabrics(&mut self) -> Result<()> {
        if self.fabrics.is_empty() {
            let prefix = 24;
            let first = self.nodes[0].ip;
            let f = FabricSpec {
                name: String::new(),
                net: first,
                prefix,
            };
            if self.nodes.iter().any(|n| !f.contains(n.ip)) {
                bail!("all nodes' InternalIPs must share one /{prefix} (the lab's fabric), or declare Fabrics (kind: Fabric, apiVersion: lab.strake.dev/v1)");
            }
            if !self.routers.is_empty() {
                bail!(
                    "Routers need Fabrics to connect (kind: Fabric, apiVersion: lab.strake.dev/v1)"
                );
            }
            self.fabrics.push(f);
        }
        crate::topology::check(&self.fabrics, &self.routers)?;
        let fabric_of = |who: &str, ip: Ipv4Addr| -> Result<(String, u8, Option<Ipv4Addr>)> {
            let mut on = self.fabrics.iter().filter(|f| f.contains(ip));
            let f = on
                .next()
                .with_context(|| format!("{who}: address {ip} is on no Fabric of the lab"))?;
            if on.next().is_some() {
                bail!("{who}: address {ip} is on more than one Fabric");
            }
            let gw = self.routers.iter().find_map(|r| r.address_on(&f.name));
            Ok((f.name.clone(), f.prefix, gw))
        };
        let mut placed = Vec::new();
        for n in &self.nodes {
            placed.push(fabric_of(&format!("Node {}", n.name), n.ip)?);
        }
        for (n, (fabric, prefix, gw)) in self.nodes.iter_mut().zip(placed) {
            (n.fabric, n.prefix, n.gateway) = (fabric, prefix, gw);
        }
        let addrs = self.service_addresses();
        let first = self.nodes[0].ip;
        let mut placed = Vec::new();
        for e in &self.externals {
            placed.push(fabric_of(&format!("ExternalHost {}", e.name), e.ip)?);
        }
        for (e, (fabric, prefix, gw)) in self.externals.iter_mut().zip(placed) {
            (e.fabric, e.prefix) = (fabric, prefix);
            if e.routes.is_empty() {
                match gw {
                    // Behind a router: everything through it.
                    Some(gw) => e.routes.push((Ipv4Addr::UNSPECIFIED, 0, gw)),
                    // On the nodes' fabric: the Services' addresses via the
                    // first node.
                    None => e.routes.extend(addrs.iter().map(|ip| (*ip, 32, first))),
                }
            }
        }
        Ok(())
    }

    /// The lab's own kinds (lab.strake.dev/v1): Lab settings, ExternalHosts.
    fn read_lab_kinds(&mut self, dir: &Path) -> Result<()> {
        use strake_source::dir::{parse_documents, yaml_files, Document};
        for f in yaml_files(dir) {
            let text = std::fs::read_to_string(&f)?;
            for o in parse_documents(&text).into_iter().flatten() {
                let Document::Other {
                    api_version,
                    kind,
                    value,
                } = o
                else {
                    continue;
                };
                if api_version != "lab.strake.dev/v1" {
                    continue;
                }
                let name = value["metadata"]["name"].as_str().unwrap_or("").to_string();
                let spec = &value["spec"];
                match kind.as_str() {
                    "Lab" => {
                        if let Some(x) = spec["xdp"].as_bool() {
                            self.xdp = x;
                        }
                        match spec.get("encapsulation") {
                            None => {}
                            Some(v) => match v.as_str() {
                                Some(e @ ("cross-subnet" | "never")) => {
                                    self.encapsulation = Some(e.to_string())
                                }
                                _ => bail!(
                                    "Lab {name}: spec.encapsulation must be cross-subnet or never (the agents' --encapsulation)"
                                ),
                            },
                        }
                        if let Some(a) = spec.get("agentArgs") {
                            self.agent_args = a
                                .as_sequence()
                                .and_then(|l| {
                                    l.iter()
                                        .map(|x| x.as_str().map(String::from))
                                        .collect::<Option<Vec<String>>>()
                                })
                                .with_context(|| {
                                    format!("Lab {name}: spec.agentArgs must be a list of strings (agent flags, e.g. [\"--snat-ports\", \"20000-20063\"])")
                                })?;
                        }
                    }
                    "Fabric" => self
                        .fabrics
                        .push(crate::topology::parse_fabric(&name, spec)?),
                    "Router" => self
                        .routers
                        .push(crate::topology::parse_router(&name, spec)?),
                    "ExternalHost" => {
                        let ip: Ipv4Addr = spec["address"]
                            .as_str()
                            .and_then(|a| a.parse().ok())
                            .with_context(|| {
                                format!("ExternalHost {name}: spec.address must be an IPv4 address")
                            })?;
                        let mut routes = Vec::new();
                        for r in spec["routes"].as_sequence().into_iter().flatten() {
                            let to = r["to"].as_str().and_then(strake_source::parse_cidr);
                            let via = r["via"].as_str().and_then(|v| v.parse::<Ipv4Addr>().ok());
                            match (to, via) {
                                (Some((net, len)), Some(via)) => routes.push((net, len, via)),
                                _ => bail!("ExternalHost {name}: each route needs `to: CIDR` and `via: address`"),
                            }
                        }
                        self.externals.push(ExternalSpec {
                            name,
                            ip,
                            routes,
                            fabric: String::new(),
                            prefix: 0,
                        });
                    }
                    other => bail!(
                        "{}: unknown lab kind {other} (Lab, Fabric, Router and ExternalHost exist)",
                        f.display()
                    ),
                }
            }
        }
        Ok(())
    }

    /// LoadBalancer ingress IPs and externalIPs of the lab's Services.
    pub fn service_addresses(&self) -> Vec<Ipv4Addr> {
        let mut out = Vec::new();
        for s in self.state.services.values() {
            let spec = s.spec.as_ref();
            out.extend(
                spec.and_then(|s| s.external_ips.clone())
                    .unwrap_or_default()
                    .iter()
                    .filter_map(|a| a.parse::<Ipv4Addr>().ok()),
            );
            if let Some(ing) = s
                .status
                .as_ref()
                .and_then(|st| st.load_balancer.as_ref())
                .and_then(|l| l.ingress.as_ref())
            {
                out.extend(
                    ing.iter()
                        .filter_map(|i| i.ip.as_ref()?.parse::<Ipv4Addr>().ok()),
                );
            }
        }
        out.sort();
        out.dedup();
        out
    }

    pub fn from_state(state: ClusterState) -> Result<Self> {
        let mut nodes = Vec::new();
        let mut ips = BTreeSet::new();
        for name in state.nodes.keys() {
            let ip = state
                .node_internal_ip(name)
                .with_context(|| format!("Node {name}: status.addresses needs an InternalIP"))?;
            let pod_cidr = state
                .node_pod_cidr(name)
                .with_context(|| format!("Node {name}: spec.podCIDR must be an IPv4 CIDR"))?;
            if !ips.insert(ip) {
                bail!("Node {name}: InternalIP {ip} is used twice");
            }
            nodes.push(NodeSpec {
                name: name.clone(),
                ip,
                pod_cidr,
                fabric: String::new(),
                prefix: 24,
                gateway: None,
            });
        }
        if nodes.is_empty() {
            bail!("the lab directory declares no Node");
        }
        for (i, a) in nodes.iter().enumerate() {
            for b in &nodes[i + 1..] {
                let len = a.pod_cidr.1.min(b.pod_cidr.1) as u32;
                let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
                if u32::from(a.pod_cidr.0) & mask == u32::from(b.pod_cidr.0) & mask {
                    bail!("Nodes {} and {} have overlapping pod CIDRs", a.name, b.name);
                }
            }
        }
        let mut pods = Vec::new();
        for (key, pod) in &state.pods {
            let spec = pod
                .spec
                .as_ref()
                .with_context(|| format!("Pod {key} has no spec"))?;
            // Completed pods run nothing (kubelet has torn their sandbox
            // down); their objects stay, as in a real cluster.
            let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
            if spec.host_network == Some(true) || matches!(phase, Some("Succeeded" | "Failed")) {
                continue;
            }
            let node = spec.node_name.clone().with_context(|| {
                format!("Pod {key}: spec.nodeName is required in the lab (there is no scheduler)")
            })?;
            if !state.nodes.contains_key(&node) {
                bail!("Pod {key}: spec.nodeName {node} is not a Node of the lab");
            }
            let mut tcp_ports = Vec::new();
            let mut udp_ports = Vec::new();
            for c in &spec.containers {
                for p in c.ports.iter().flatten() {
                    let port = u16::try_from(p.container_port).with_context(|| {
                        format!("Pod {key}: containerPort {} out of range", p.container_port)
                    })?;
                    match p.protocol.as_deref().unwrap_or("TCP") {
                        "TCP" => tcp_ports.push(port),
                        "UDP" => udp_ports.push(port),
                        _ => {} // SCTP: this kernel has none
                    }
                }
            }
            tcp_ports.sort();
            tcp_ports.dedup();
            udp_ports.sort();
            udp_ports.dedup();
            pods.push(PodSpec {
                namespace: key.namespace.clone(),
                name: key.name.clone(),
                node,
                labels: pod.metadata.labels.clone().unwrap_or_default(),
                tcp_ports,
                udp_ports,
            });
        }
        Ok(LabSpec {
            nodes,
            pods,
            externals: Vec::new(),
            xdp: true,
            encapsulation: None,
            agent_args: Vec::new(),
            fabrics: Vec::new(),
            routers: Vec::new(),
            state,
        })
    }

    pub fn fabric(&self, name: &str) -> Option<&FabricSpec> {
        self.fabrics.iter().find(|f| f.name == name)
    }

    pub fn router(&self, name: &str) -> Option<&RouterSpec> {
        self.routers.iter().find(|r| r.name == name)
    }

    pub fn node(&self, name: &str) -> Option<&NodeSpec> {
        self.nodes.iter().find(|n| n.name == name)
    }

    pub fn pod(&self, namespace: &str, name: &str) -> Option<&PodSpec> {
        self.pods
            .iter()
            .find(|p| p.namespace == namespace && p.name == name)
    }
}

/// The BGP resources of the lab, checked as the agents will check them: a
/// bad one stops `lab up` with the agents' own message.
fn check_bgp_resources(state: &ClusterState) -> Result<()> {
    for (name, c) in &state.bgp_configurations {
        strake_bgp::BgpConfig::parse(name, &c.spec)?;
    }
    for (name, p) in &state.bgp_peers {
        strake_bgp::BgpPeer::parse(name, &p.spec)?;
    }
    for (name, n) in &state.nodes {
        let (Some(ip), Some(ann)) = (state.node_internal_ip(name), &n.metadata.annotations) else {
            continue;
        };
        strake_bgp::BgpNode::new(name, ip, Default::default(), ann)?;
    }
    Ok(())
}
