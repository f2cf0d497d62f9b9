//! What the Services of a cluster ask of the data plane, independent of any
//! node: frontends, backends (with readiness and weights) and how to choose
//! among them. Built from Services and EndpointSlices; in standalone mode,
//! where a Service with a selector has no EndpointSlice, from Pods, as the
//! Kubernetes endpoints controller would.

use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::Duration;
use strake_source::{ClusterState, ObjectKey};

pub const TCP: u8 = 6;
pub const UDP: u8 = 17;

/// Annotations a Service (or a Pod, for weights) may carry. Everything else
/// is plain Kubernetes.
pub mod annotation {
    pub const SCHEDULER: &str = "lb.strake.dev/scheduler";
    pub const MAGLEV_TABLE_SIZE: &str = "lb.strake.dev/maglev-table-size";
    pub const EXTERNAL_MODE: &str = "lb.strake.dev/external-mode";
    pub const HEALTH_CHECK: &str = "lb.strake.dev/health-check";
    pub const HEALTH_PATH: &str = "lb.strake.dev/health-check-path";
    pub const HEALTH_PORT: &str = "lb.strake.dev/health-check-port";
    pub const HEALTH_INTERVAL: &str = "lb.strake.dev/health-check-interval";
    pub const HEALTH_TIMEOUT: &str = "lb.strake.dev/health-check-timeout";
    pub const HEALTHY_THRESHOLD: &str = "lb.strake.dev/health-check-healthy-threshold";
    pub const UNHEALTHY_THRESHOLD: &str = "lb.strake.dev/health-check-unhealthy-threshold";
    /// On a Pod: its relative weight in every Service it backs (default 1).
    pub const WEIGHT: &str = "lb.strake.dev/weight";
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FrontendKind {
    ClusterIp,
    NodePort,
    LoadBalancer,
    ExternalIp,
}

impl FrontendKind {
    pub fn external(self) -> bool {
        self != FrontendKind::ClusterIp
    }
}

/// An address, port and protocol clients send to. NodePort frontends have
/// address 0.0.0.0: any of the node's addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Frontend {
    pub addr: Ipv4Addr,
    pub port: u16,
    pub proto: u8,
    pub kind: FrontendKind,
}

/// A backend's identity: the same address, port and protocol is the same
/// backend for every Service that uses it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BackendAddr {
    pub ip: Ipv4Addr,
    pub port: u16,
    pub proto: u8,
}

impl std::fmt::Display for BackendAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}/{}", self.ip, self.port, proto_name(self.proto))
    }
}

pub fn proto_name(p: u8) -> &'static str {
    match p {
        TCP => "TCP",
        UDP => "UDP",
        _ => "?",
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    pub addr: BackendAddr,
    pub node: Option<String>,
    pub pod: Option<ObjectKey>,
    pub weight: u32,
    /// Takes new flows (EndpointSlice `ready`).
    pub ready: bool,
    /// Going away: keeps its flows, takes no new ones while the Service
    /// has a ready endpoint.
    pub terminating: bool,
    /// Still answers (EndpointSlice `serving`): a terminating endpoint
    /// that serves takes new flows when no endpoint is ready, as
    /// kube-proxy's graceful-termination fallback does.
    pub serving: bool,
    /// Its zone: the EndpointSlice endpoint's `zone`, else its node's
    /// `topology.kubernetes.io/zone` label.
    pub zone: Option<String>,
    /// EndpointSlice `hints.forZones`: the zones whose clients it serves
    /// (None: no hints).
    pub hint_zones: Option<Vec<String>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheduler {
    /// Consistent hashing: every node picks the same backend for a flow, and
    /// backend changes move the fewest flows. The default.
    Maglev,
    /// A uniformly random backend per new flow (weights respected).
    Random,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExternalMode {
    /// Remote backends see the node as the client; replies come back through it.
    Snat,
    /// Remote backends get the client's packet by IPIP and answer it directly.
    Dsr,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealthProbe {
    None,
    Tcp,
    Http { path: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    pub probe: HealthProbe,
    /// Port to probe instead of the backend's own.
    pub port: Option<u16>,
    pub interval: Duration,
    pub timeout: Duration,
    pub healthy_threshold: u32,
    pub unhealthy_threshold: u32,
}

impl Default for HealthCheck {
    fn default() -> Self {
        HealthCheck {
            probe: HealthProbe::Tcp,
            port: None,
            interval: Duration::from_secs(2),
            timeout: Duration::from_secs(1),
            healthy_threshold: 1,
            unhealthy_threshold: 2,
        }
    }
}

/// One port of one Service, everything the data plane needs for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePort {
    pub service: ObjectKey,
    pub port_name: String,
    pub proto: u8,
    pub frontends: Vec<Frontend>,
    pub backends: Vec<Backend>,
    pub scheduler: Scheduler,
    /// Maglev table size: the largest automatic size, or the size the
    /// Service's annotation fixes (`table_size_fixed`).
    pub table_size: u32,
    pub table_size_fixed: bool,
    /// ClientIP session affinity timeout, seconds.
    pub affinity_timeout: Option<u32>,
    pub external_mode: ExternalMode,
    /// externalTrafficPolicy: Local.
    pub external_local: bool,
    /// internalTrafficPolicy: Local.
    pub internal_local: bool,
    pub health: HealthCheck,
    /// loadBalancerSourceRanges of a LoadBalancer Service (IPv4 networks,
    /// host bits cleared): None admits every client; Some, only those in
    /// a range (none if no entry was a valid IPv4 range).
    pub source_ranges: Option<Vec<(Ipv4Addr, u8)>>,
    /// healthCheckNodePort of a LoadBalancer Service with
    /// externalTrafficPolicy Local: where this node tells load balancers
    /// how many of its endpoints serve.
    pub health_check_node_port: Option<u16>,
    /// trafficDistribution PreferClose (or its newer name PreferSameZone):
    /// clients prefer endpoints in their own node's zone.
    pub prefer_close: bool,
}

impl ServicePort {
    pub fn name(&self) -> String {
        format!("{}:{}", self.service, self.port_name)
    }
}

/// The largest automatic Maglev table size (prime; Cilium's default: 100 x
/// ~160 backends). Tables are sized by backend count below it.
pub const DEFAULT_TABLE_SIZE: u32 = 16381;

/// How Services are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelOptions {
    /// The largest automatic Maglev table.
    pub default_table_size: u32,
    /// Where a Service with a selector has no EndpointSlice, derive its
    /// endpoints from Pods, as the endpoints controller would: standalone
    /// mode, where no controller runs. Off against an API server, where a
    /// missing slice means the controller has not written it yet.
    pub endpoints_from_pods: bool,
}

impl Default for ModelOptions {
    fn default() -> Self {
        ModelOptions {
            default_table_size: DEFAULT_TABLE_SIZE,
            endpoints_from_pods: true,
        }
    }
}

/// All service ports of the cluster, and the problems found on the way (bad
/// annotations, unresolvable ports), which never stop the rest.
pub fn services(state: &ClusterState, opts: &ModelOptions) -> (Vec<ServicePort>, Vec<String>) {
    let mut out = Vec::new();
    let mut problems = Vec::new();
    for (key, svc) in &state.services {
        out.extend(service_ports(state, key, svc, opts, &mut problems));
    }
    (out, problems)
}

/// The ports of one Service (none for headless and ExternalName ones).
pub fn service_ports(
    state: &ClusterState,
    key: &ObjectKey,
    svc: &Service,
    opts: &ModelOptions,
    problems: &mut Vec<String>,
) -> Vec<ServicePort> {
    let mut out = Vec::new();
    let Some(spec) = &svc.spec else {
        return out;
    };
    let cluster_ip = spec.cluster_ip.as_deref().unwrap_or("");
    if cluster_ip == "None" || spec.type_.as_deref() == Some("ExternalName") {
        return out; // headless and ExternalName services have no frontend
    }
    let slices: Vec<&EndpointSlice> = state
        .slices_of(key)
        .map(|s| &**s)
        .filter(|s| s.address_type == "IPv4")
        .collect();
    let has_slices = state.slices_by_service.contains_key(key);
    {
        let ann = svc.metadata.annotations.clone().unwrap_or_default();
        let mut bad = |what: String| problems.push(format!("Service {key}: {what}"));
        let scheduler = match ann.get(annotation::SCHEDULER).map(|s| s.as_str()) {
            None | Some("maglev") => Scheduler::Maglev,
            Some("random") => Scheduler::Random,
            Some(other) => {
                bad(format!(
                    "{}={other:?} is not maglev or random; using maglev",
                    annotation::SCHEDULER
                ));
                Scheduler::Maglev
            }
        };
        let (table_size, table_size_fixed) = match ann.get(annotation::MAGLEV_TABLE_SIZE) {
            None => (opts.default_table_size, false),
            Some(v) => match v.parse::<u32>() {
                Ok(n) if crate::maglev::is_prime(n) && (251..=1_000_003).contains(&n) => (n, true),
                _ => {
                    bad(format!(
                        "{}={v:?} must be a prime between 251 and 1000003; sizing automatically",
                        annotation::MAGLEV_TABLE_SIZE
                    ));
                    (opts.default_table_size, false)
                }
            },
        };
        let external_mode = match ann.get(annotation::EXTERNAL_MODE).map(|s| s.as_str()) {
            None | Some("snat") => ExternalMode::Snat,
            Some("dsr") => ExternalMode::Dsr,
            Some(other) => {
                bad(format!(
                    "{}={other:?} is not snat or dsr; using snat",
                    annotation::EXTERNAL_MODE
                ));
                ExternalMode::Snat
            }
        };
        let health = health_check(&ann, &mut bad);
        let affinity_timeout = (spec.session_affinity.as_deref() == Some("ClientIP")).then(|| {
            spec.session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds)
                .map(|t| t.clamp(1, 86400) as u32)
                .unwrap_or(10800)
        });
        let ty = spec.type_.as_deref().unwrap_or("ClusterIP");
        let source_ranges = spec
            .load_balancer_source_ranges
            .as_ref()
            .filter(|r| ty == "LoadBalancer" && !r.is_empty())
            .map(|r| source_ranges(r, &mut bad));
        let cluster_ip: Option<Ipv4Addr> = cluster_ip.parse().ok();
        let external_ips: Vec<Ipv4Addr> = spec
            .external_ips
            .iter()
            .flatten()
            .filter_map(|a| a.parse().ok())
            .collect();
        let lb_ips: Vec<Ipv4Addr> = svc
            .status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|l| l.ingress.as_ref())
            .map(|i| {
                // ipMode Proxy: the load balancer proxies (it sends to the
                // NodePort), so its address is not short-circuited here:
                // traffic to it goes out to the load balancer, as
                // kube-proxy leaves it (KEP-1860). VIP (the default) is.
                i.iter()
                    .filter(|x| x.ip_mode.as_deref() != Some("Proxy"))
                    .filter_map(|x| x.ip.as_ref()?.parse().ok())
                    .collect()
            })
            .unwrap_or_default();
        for p in spec.ports.iter().flatten() {
            let proto = match p.protocol.as_deref().unwrap_or("TCP") {
                "TCP" => TCP,
                "UDP" => UDP,
                other => {
                    bad(format!(
                        "port {}: protocol {other} is not load-balanced (TCP and UDP are)",
                        p.port
                    ));
                    continue;
                }
            };
            let port = p.port as u16;
            let mut frontends = Vec::new();
            if let Some(ip) = cluster_ip {
                frontends.push(Frontend {
                    addr: ip,
                    port,
                    proto,
                    kind: FrontendKind::ClusterIp,
                });
            }
            if matches!(ty, "NodePort" | "LoadBalancer") {
                if let Some(np) = p.node_port.filter(|n| *n > 0) {
                    frontends.push(Frontend {
                        addr: Ipv4Addr::UNSPECIFIED,
                        port: np as u16,
                        proto,
                        kind: FrontendKind::NodePort,
                    });
                }
            }
            if ty == "LoadBalancer" {
                for ip in &lb_ips {
                    frontends.push(Frontend {
                        addr: *ip,
                        port,
                        proto,
                        kind: FrontendKind::LoadBalancer,
                    });
                }
            }
            for ip in &external_ips {
                frontends.push(Frontend {
                    addr: *ip,
                    port,
                    proto,
                    kind: FrontendKind::ExternalIp,
                });
            }
            let port_name = p.name.clone().unwrap_or_default();
            let backends = if has_slices {
                backends_from_slices(&slices, &port_name, proto, state)
            } else if opts.endpoints_from_pods {
                backends_from_pods(key, svc, p, proto, state)
            } else {
                Vec::new()
            };
            out.push(ServicePort {
                service: key.clone(),
                port_name,
                proto,
                frontends,
                backends,
                scheduler,
                table_size,
                table_size_fixed,
                affinity_timeout,
                external_mode,
                external_local: spec.external_traffic_policy.as_deref() == Some("Local"),
                internal_local: spec.internal_traffic_policy.as_deref() == Some("Local"),
                health: health.clone(),
                source_ranges: source_ranges.clone(),
                health_check_node_port: spec
                    .health_check_node_port
                    .filter(|p| {
                        ty == "LoadBalancer"
                            && spec.external_traffic_policy.as_deref() == Some("Local")
                            && (1..=65535).contains(p)
                    })
                    .map(|p| p as u16),
                prefer_close: matches!(
                    spec.traffic_distribution.as_deref(),
                    Some("PreferClose" | "PreferSameZone")
                ),
            });
        }
    }
    out
}

/// The node label kube-proxy reads a node's zone from.
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";

/// A node's zone (its `topology.kubernetes.io/zone` label), if it has one.
pub fn node_zone(state: &ClusterState, node: &str) -> Option<String> {
    state
        .nodes
        .get(node)?
        .metadata
        .labels
        .as_ref()?
        .get(ZONE_LABEL)
        .filter(|z| !z.is_empty())
        .cloned()
}

/// loadBalancerSourceRanges as IPv4 networks. IPv6 ranges are for IPv6
/// addresses (strake balances IPv4); anything else is reported and left
/// out, which narrows the list, never widens it.
fn source_ranges(ranges: &[String], bad: &mut impl FnMut(String)) -> Vec<(Ipv4Addr, u8)> {
    let mut out = Vec::new();
    for r in ranges {
        let r = r.trim();
        if r.contains(':') {
            continue;
        }
        let parsed = r.split_once('/').and_then(|(a, l)| {
            let a: Ipv4Addr = a.parse().ok()?;
            let l: u8 = l.parse().ok().filter(|l| *l <= 32)?;
            let mask = if l == 0 { 0 } else { u32::MAX << (32 - l) };
            Some((Ipv4Addr::from(u32::from(a) & mask), l))
        });
        match parsed {
            Some(n) if !out.contains(&n) => out.push(n),
            Some(_) => {}
            None => bad(format!(
                "loadBalancerSourceRanges entry {r:?} is not an IPv4 CIDR (a.b.c.d/n); left out"
            )),
        }
    }
    out.sort();
    out
}

fn health_check(ann: &BTreeMap<String, String>, bad: &mut impl FnMut(String)) -> HealthCheck {
    let mut h = HealthCheck::default();
    match ann.get(annotation::HEALTH_CHECK).map(|s| s.as_str()) {
        None | Some("tcp") => {}
        Some("http") => {
            h.probe = HealthProbe::Http {
                path: ann
                    .get(annotation::HEALTH_PATH)
                    .cloned()
                    .unwrap_or_else(|| "/healthz".into()),
            }
        }
        Some("none") => h.probe = HealthProbe::None,
        Some(other) => bad(format!(
            "{}={other:?} is not tcp, http or none; using tcp",
            annotation::HEALTH_CHECK
        )),
    }
    let dur = |k: &str, d: Duration, bad: &mut dyn FnMut(String)| match ann.get(k) {
        None => d,
        Some(v) => parse_duration(v).unwrap_or_else(|_| {
            bad(format!("{k}={v:?} is not a duration like 500ms, 2s or 1m"));
            d
        }),
    };
    h.interval = dur(annotation::HEALTH_INTERVAL, h.interval, bad).max(Duration::from_millis(100));
    h.timeout = dur(annotation::HEALTH_TIMEOUT, h.timeout, bad).min(h.interval);
    let num = |k: &str, d: u32, bad: &mut dyn FnMut(String)| match ann.get(k) {
        None => d,
        Some(v) => v
            .parse()
            .ok()
            .filter(|n| (1..=100).contains(n))
            .unwrap_or_else(|| {
                bad(format!("{k}={v:?} must be a number from 1 to 100"));
                d
            }),
    };
    h.healthy_threshold = num(annotation::HEALTHY_THRESHOLD, h.healthy_threshold, bad);
    h.unhealthy_threshold = num(annotation::UNHEALTHY_THRESHOLD, h.unhealthy_threshold, bad);
    h.port = ann
        .get(annotation::HEALTH_PORT)
        .and_then(|p| p.parse().ok());
    h
}

/// `500ms`, `30s` (or `30`), `5m`, `6h`: the one duration syntax of
/// annotations and the agent's flags.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let (num, unit) = t.split_at(t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len()));
    let bad = || format!("invalid duration {s:?}: use e.g. 500ms, 30s, 5m, 6h");
    let n: u64 = num.parse().map_err(|_| bad())?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" | "" => Ok(Duration::from_secs(n)),
        "m" => n.checked_mul(60).map(Duration::from_secs).ok_or_else(bad),
        "h" => n.checked_mul(3600).map(Duration::from_secs).ok_or_else(bad),
        _ => Err(bad()),
    }
}

fn pod_weight(pod: Option<&Pod>) -> u32 {
    pod.and_then(|p| {
        p.metadata
            .annotations
            .as_ref()?
            .get(annotation::WEIGHT)?
            .parse()
            .ok()
    })
    .filter(|w: &u32| (1..=100).contains(w))
    .unwrap_or(1)
}

fn backends_from_slices(
    slices: &[&k8s_openapi::api::discovery::v1::EndpointSlice],
    port_name: &str,
    proto: u8,
    state: &ClusterState,
) -> Vec<Backend> {
    let mut out: Vec<Backend> = Vec::new();
    for s in slices {
        let Some(port) = s.ports.iter().flatten().find(|p| {
            p.name.as_deref().unwrap_or("") == port_name
                && match p.protocol.as_deref().unwrap_or("TCP") {
                    "TCP" => proto == TCP,
                    "UDP" => proto == UDP,
                    _ => false,
                }
        }) else {
            continue;
        };
        let Some(port) = port.port else { continue };
        for e in s.endpoints.iter().flatten() {
            let c = e.conditions.clone().unwrap_or_default();
            let terminating = c.terminating.unwrap_or(false);
            // The API's defaults: ready unset means ready; serving unset means ready.
            // Unset `ready` means ready (the API's default). Terminating and
            // not-ready endpoints stay, for the flows they already have.
            let ready = c.ready.unwrap_or(true) && !terminating;
            // `serving` unset: the same as `ready` (the API's definition).
            let serving = c.serving.or(c.ready).unwrap_or(true);
            let pod_key = e
                .target_ref
                .as_ref()
                .filter(|r| r.kind.as_deref() == Some("Pod"))
                .and_then(|r| Some(ObjectKey::new(r.namespace.clone()?, r.name.clone()?)));
            let pod = pod_key
                .as_ref()
                .and_then(|k| state.pods.get(k))
                .map(|p| &**p);
            for a in &e.addresses {
                let Ok(ip) = a.parse::<Ipv4Addr>() else {
                    continue;
                };
                let addr = BackendAddr {
                    ip,
                    port: port as u16,
                    proto,
                };
                if out.iter().any(|b| b.addr == addr) {
                    continue;
                }
                let node = e
                    .node_name
                    .clone()
                    .or_else(|| pod.and_then(|p| p.spec.as_ref()?.node_name.clone()));
                out.push(Backend {
                    addr,
                    zone: e
                        .zone
                        .clone()
                        .or_else(|| node_zone(state, node.as_deref()?)),
                    hint_zones: e.hints.as_ref().and_then(|h| {
                        Some(
                            h.for_zones
                                .as_ref()?
                                .iter()
                                .map(|z| z.name.clone())
                                .collect(),
                        )
                    }),
                    node,
                    pod: pod_key.clone(),
                    weight: pod_weight(pod),
                    ready,
                    terminating,
                    serving,
                });
            }
        }
    }
    out.sort_by_key(|b| b.addr);
    out
}

fn backends_from_pods(
    key: &ObjectKey,
    svc: &Service,
    port: &k8s_openapi::api::core::v1::ServicePort,
    proto: u8,
    state: &ClusterState,
) -> Vec<Backend> {
    let Some(selector) = svc
        .spec
        .as_ref()
        .and_then(|s| s.selector.as_ref())
        .filter(|s| !s.is_empty())
    else {
        return Vec::new(); // no selector: endpoints are managed by hand (EndpointSlices)
    };
    let mut out = Vec::new();
    for (pk, pod) in state.pods_in(&key.namespace) {
        let labels = pod.metadata.labels.clone().unwrap_or_default();
        if !selector.iter().all(|(k, v)| labels.get(k) == Some(v)) {
            continue;
        }
        let Some(ip) = pod
            .status
            .as_ref()
            .and_then(|s| s.pod_ip.as_ref())
            .and_then(|i| i.parse::<Ipv4Addr>().ok())
        else {
            continue;
        };
        let target = match &port.target_port {
            None => Some(port.port as u16),
            Some(IntOrString::Int(n)) => Some(*n as u16),
            Some(IntOrString::String(name)) => named_port(pod, name, proto),
        };
        let Some(target) = target else { continue }; // the pod lacks that named port
        let status = pod.status.as_ref();
        let running = status.and_then(|s| s.phase.as_deref()) == Some("Running");
        let ready_cond = status
            .and_then(|s| s.conditions.as_ref())
            .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
            .map(|c| c.status == "True")
            .unwrap_or(false);
        let terminating = pod.metadata.deletion_timestamp.is_some();
        let node = pod.spec.as_ref().and_then(|s| s.node_name.clone());
        out.push(Backend {
            addr: BackendAddr {
                ip,
                port: target,
                proto,
            },
            zone: node.as_deref().and_then(|n| node_zone(state, n)),
            hint_zones: None,
            node,
            pod: Some(pk.clone()),
            weight: pod_weight(Some(pod)),
            ready: running && ready_cond && !terminating,
            terminating,
            serving: running && ready_cond,
        });
    }
    out.sort_by_key(|b| b.addr);
    out
}

/// A container port by name and protocol, as a Service's named targetPort
/// resolves per pod.
pub fn named_port(pod: &Pod, name: &str, proto: u8) -> Option<u16> {
    pod.spec
        .as_ref()?
        .containers
        .iter()
        .flat_map(|c| c.ports.iter().flatten())
        .find_map(|p| {
            let pp = match p.protocol.as_deref().unwrap_or("TCP") {
                "TCP" => TCP,
                "UDP" => UDP,
                _ => 0,
            };
            (p.name.as_deref() == Some(name) && pp == proto).then_some(p.container_port as u16)
        })
}

#[cfg(test)]
mod tests {
    //! The model as a user's objects shape it: which frontends a Service
    //! type gets, where backends come from (EndpointSlices, or Pods in
    //! standalone mode), their readiness and weights, and what a bad
    //! annotation does (reported, default used, the rest unaffected).

    use super::*;

    fn state(yaml: &str) -> ClusterState {
        strake_source::dir::state_from_yaml(yaml).unwrap()
    }

    fn ports(yaml: &str, opts: &ModelOptions) -> (Vec<ServicePort>, Vec<String>) {
        services(&state(yaml), opts)
    }

    fn one(yaml: &str) -> ServicePort {
        let (mut p, problems) = ports(yaml, &ModelOptions::default());
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(p.len(), 1, "{p:?}");
        p.remove(0)
    }

    fn addrs(p: &ServicePort) -> Vec<String> {
        p.backends.iter().map(|b| b.addr.to_string()).collect()
    }

    fn be(p: &ServicePort, ip: &str) -> Backend {
        p.backends
            .iter()
            .find(|b| b.addr.ip.to_string() == ip)
            .unwrap_or_else(|| panic!("no backend {ip} in {:?}", addrs(p)))
            .clone()
    }

    const LB_SERVICE: &str = "
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  type: LoadBalancer
  clusterIP: 10.96.0.10
  externalIPs: [192.0.2.7, not-an-ip]
  ports:
  - {name: http, port: 80, nodePort: 30080}
  - {name: dns, port: 53, protocol: UDP, nodePort: 30053}
  - {name: sig, port: 9, protocol: SCTP}
status:
  loadBalancer: {ingress: [{ip: 203.0.113.1}, {hostname: lb.example}]}
";

    #[test]
    fn an_ip_mode_proxy_address_gets_no_frontend_and_vip_mode_ones_do() {
        let p = one("apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: shop}\nspec: {type: LoadBalancer, clusterIP: 10.96.0.10, ports: [{port: 80, nodePort: 30080}]}\nstatus: {loadBalancer: {ingress: [{ip: 203.0.113.1}, {ip: 203.0.113.2, ipMode: VIP}, {ip: 203.0.113.3, ipMode: Proxy}]}}\n");
        let lb: Vec<String> = p
            .frontends
            .iter()
            .filter(|f| f.kind == FrontendKind::LoadBalancer)
            .map(|f| f.addr.to_string())
            .collect();
        assert_eq!(lb, ["203.0.113.1", "203.0.113.2"]);
        assert!(
            p.frontends.iter().any(|f| f.kind == FrontendKind::NodePort),
            "the proxying load balancer's way in stays"
        );
    }

    #[test]
    fn load_balancer_source_ranges_are_ipv4_networks_and_a_bad_entry_only_narrows() {
        let with = |ty: &str, ranges: &str| {
            ports(
                &format!("apiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: shop}}\nspec:\n  type: {ty}\n  clusterIP: 10.96.0.10\n  loadBalancerSourceRanges: {ranges}\n  ports: [{{port: 80, nodePort: 30080}}]\n"),
                &ModelOptions::default(),
            )
        };
        let (p, problems) = with(
            "LoadBalancer",
            "[10.1.2.3/24, 192.0.2.7/32, \"2001:db8::/64\", 10.1.2.0/24]",
        );
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(
            p[0].source_ranges,
            Some(vec![
                ("10.1.2.0".parse().unwrap(), 24),
                ("192.0.2.7".parse().unwrap(), 32)
            ]),
            "host bits cleared, duplicates and IPv6 left out"
        );
        let (p, problems) = with("LoadBalancer", "[nonsense, 10.0.0.0/33]");
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert_eq!(
            p[0].source_ranges,
            Some(vec![]),
            "nothing valid admits no one"
        );
        assert_eq!(with("LoadBalancer", "[]").0[0].source_ranges, None);
        assert_eq!(
            with("NodePort", "[10.0.0.0/8]").0[0].source_ranges,
            None,
            "a LoadBalancer field"
        );
    }

    #[test]
    fn a_load_balancer_service_gets_every_frontend_per_port_and_sctp_is_reported() {
        let (p, problems) = ports(LB_SERVICE, &ModelOptions::default());
        assert_eq!(p.len(), 2, "TCP and UDP ports, not SCTP");
        assert_eq!(problems.len(), 1);
        assert!(
            problems[0].contains("shop/web") && problems[0].contains("SCTP"),
            "{problems:?}"
        );
        let fe = |i: usize| -> Vec<(String, u16, FrontendKind)> {
            p[i].frontends
                .iter()
                .map(|f| (f.addr.to_string(), f.port, f.kind))
                .collect()
        };
        assert_eq!(
            fe(0),
            vec![
                ("10.96.0.10".into(), 80, FrontendKind::ClusterIp),
                ("0.0.0.0".into(), 30080, FrontendKind::NodePort),
                ("203.0.113.1".into(), 80, FrontendKind::LoadBalancer),
                ("192.0.2.7".into(), 80, FrontendKind::ExternalIp),
            ]
        );
        assert!(p[0].frontends.iter().all(|f| f.proto == TCP));
        assert_eq!((p[1].port_name.as_str(), p[1].proto), ("dns", UDP));
        assert!(p[1].frontends.iter().all(|f| f.proto == UDP));
        assert_eq!(p[0].name(), "shop/web:http");
        assert!(!FrontendKind::ClusterIp.external() && FrontendKind::NodePort.external());
    }

    #[test]
    fn a_cluster_ip_service_ignores_node_ports_and_headless_or_external_name_ones_have_none() {
        let p = one("
apiVersion: v1
kind: Service
metadata: {name: a, namespace: x}
spec: {clusterIP: 10.96.0.1, ports: [{port: 80, nodePort: 30001}]}
");
        assert_eq!(p.frontends.len(), 1);
        assert_eq!(p.frontends[0].kind, FrontendKind::ClusterIp);
        let (p, problems) = ports(
            "
apiVersion: v1
kind: Service
metadata: {name: headless, namespace: x}
spec: {clusterIP: None, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: ext, namespace: x}
spec: {type: ExternalName, externalName: db.example, ports: [{port: 5432}]}
",
            &ModelOptions::default(),
        );
        assert!(p.is_empty() && problems.is_empty(), "{p:?} {problems:?}");
    }

    #[test]
    fn good_annotations_are_used() {
        let p = one("
apiVersion: v1
kind: Service
metadata:
  name: a
  namespace: x
  annotations:
    lb.strake.dev/scheduler: random
    lb.strake.dev/maglev-table-size: '251'
    lb.strake.dev/external-mode: dsr
    lb.strake.dev/health-check: http
    lb.strake.dev/health-check-path: /ready
    lb.strake.dev/health-check-port: '8081'
    lb.strake.dev/health-check-interval: 500ms
    lb.strake.dev/health-check-timeout: 2s
    lb.strake.dev/health-check-healthy-threshold: '3'
    lb.strake.dev/health-check-unhealthy-threshold: '5'
spec:
  clusterIP: 10.96.0.1
  externalTrafficPolicy: Local
  internalTrafficPolicy: Local
  sessionAffinity: ClientIP
  sessionAffinityConfig: {clientIP: {timeoutSeconds: 100000}}
  ports: [{port: 80}]
");
        assert_eq!(p.scheduler, Scheduler::Random);
        assert_eq!((p.table_size, p.table_size_fixed), (251, true));
        assert_eq!(p.external_mode, ExternalMode::Dsr);
        assert!(p.external_local && p.internal_local);
        assert_eq!(p.affinity_timeout, Some(86400), "clamped to a day");
        assert_eq!(
            p.health,
            HealthCheck {
                probe: HealthProbe::Http {
                    path: "/ready".into()
                },
                port: Some(8081),
                interval: Duration::from_millis(500),
                // A timeout longer than the interval is cut to it.
                timeout: Duration::from_millis(500),
                healthy_threshold: 3,
                unhealthy_threshold: 5,
            }
        );
    }

    #[test]
    fn bad_annotations_are_each_reported_and_fall_back_to_the_default() {
        let (p, problems) = ports(
            "
apiVersion: v1
kind: Service
metadata:
  name: a
  namespace: x
  annotations:
    lb.strake.dev/scheduler: round-robin
    lb.strake.dev/maglev-table-size: '1000'
    lb.strake.dev/external-mode: tunnel
    lb.strake.dev/health-check: icmp
    lb.strake.dev/health-check-interval: fast
    lb.strake.dev/health-check-unhealthy-threshold: '0'
spec: {clusterIP: 10.96.0.1, sessionAffinity: ClientIP, ports: [{port: 80}]}
",
            &ModelOptions::default(),
        );
        assert_eq!(p.len(), 1, "the Service is still served");
        let p = &p[0];
        for (key, value) in [
            ("scheduler", "round-robin"),
            ("maglev-table-size", "1000"),
            ("external-mode", "tunnel"),
            ("health-check", "icmp"),
            ("health-check-interval", "fast"),
            ("health-check-unhealthy-threshold", "0"),
        ] {
            let key = format!("lb.strake.dev/{key}=\"{value}\"");
            assert_eq!(
                problems.iter().filter(|m| m.contains(&key)).count(),
                1,
                "{key} in {problems:?}"
            );
        }
        assert_eq!(problems.len(), 6, "{problems:?}");
        assert!(problems.iter().all(|m| m.starts_with("Service x/a: ")));
        assert_eq!(p.scheduler, Scheduler::Maglev);
        assert_eq!(
            (p.table_size, p.table_size_fixed),
            (DEFAULT_TABLE_SIZE, false)
        );
        assert_eq!(p.external_mode, ExternalMode::Snat);
        assert_eq!(p.health, HealthCheck::default());
        assert_eq!(p.affinity_timeout, Some(10800), "ClientIP's default: 3 h");
        assert!(!p.external_local && !p.internal_local);
    }

    const SLICED: &str = "
apiVersion: v1
kind: Service
metadata: {name: web, namespace: x}
spec: {clusterIP: 10.96.0.1, selector: {app: web}, ports: [{name: http, port: 80}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, namespace: x, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080}, {name: http, port: 8053, protocol: UDP}]
endpoints:
- addresses: [10.244.1.1]
  nodeName: n1
- addresses: [10.244.1.2]
  conditions: {ready: false}
  targetRef: {kind: Pod, namespace: x, name: p2}
- addresses: [10.244.1.3, not-an-ip]
  conditions: {ready: true, terminating: true}
- addresses: [10.244.1.4]
  targetRef: {kind: Pod, namespace: x, name: heavy}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-2, namespace: x, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints:
- addresses: [10.244.1.1]
- addresses: [10.244.0.9]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-3, namespace: x, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: metrics, port: 9090}]
endpoints: [{addresses: [10.244.7.7]}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-v6, namespace: x, labels: {kubernetes.io/service-name: web}}
addressType: IPv6
ports: [{name: http, port: 8080}]
endpoints: [{addresses: ['fd00::1']}]
---
apiVersion: v1
kind: Pod
metadata: {name: p2, namespace: x, annotations: {lb.strake.dev/weight: '500'}}
spec: {nodeName: n2, containers: [{name: c}]}
---
apiVersion: v1
kind: Pod
metadata: {name: heavy, namespace: x, annotations: {lb.strake.dev/weight: '7'}}
spec: {nodeName: n3, containers: [{name: c}]}
";

    #[test]
    fn endpoint_slices_give_backends_with_their_conditions_once_each() {
        let p = one(SLICED);
        assert_eq!(
            addrs(&p),
            [
                "10.244.0.9:8080/TCP",
                "10.244.1.1:8080/TCP",
                "10.244.1.2:8080/TCP",
                "10.244.1.3:8080/TCP",
                "10.244.1.4:8080/TCP",
            ],
            "sorted, the port of the Service port's name and protocol, one \
             entry per address, other ports' slices and IPv6 slices left out"
        );
        let b = be(&p, "10.244.1.1");
        assert!(b.ready && !b.terminating, "unset conditions mean ready");
        assert_eq!((b.node.as_deref(), b.weight), (Some("n1"), 1));
        let b = be(&p, "10.244.1.2");
        assert!(!b.ready && !b.terminating);
        assert_eq!(b.pod, Some(ObjectKey::new("x", "p2")));
        assert_eq!(b.node.as_deref(), Some("n2"), "from the pod's spec");
        assert_eq!(b.weight, 1, "a weight out of 1..=100 is ignored");
        let b = be(&p, "10.244.1.3");
        assert!(!b.ready && b.terminating, "terminating takes no new flows");
        assert_eq!(be(&p, "10.244.1.4").weight, 7);
    }

    #[test]
    fn a_service_with_slices_never_takes_endpoints_from_pods() {
        // Its slice lists nothing (the controller found no ready pod): the
        // matching pod must not be used behind the controller's back.
        let p = one("
apiVersion: v1
kind: Service
metadata: {name: web, namespace: x}
spec: {clusterIP: 10.96.0.1, selector: {app: web}, ports: [{port: 80}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, namespace: x, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
---
apiVersion: v1
kind: Pod
metadata: {name: p, namespace: x, labels: {app: web}}
spec: {containers: [{name: c}]}
status: {phase: Running, podIP: 10.244.1.1, conditions: [{type: Ready, status: 'True'}]}
");
        assert!(p.backends.is_empty(), "{:?}", addrs(&p));
    }

    const PODS: &str = "
apiVersion: v1
kind: Service
metadata: {name: web, namespace: x}
spec:
  clusterIP: 10.96.0.1
  selector: {app: web}
  ports:
  - {name: http, port: 80, targetPort: http}
  - {name: admin, port: 81, targetPort: 9000}
  - {name: plain, port: 82}
---
apiVersion: v1
kind: Service
metadata: {name: manual, namespace: x}
spec: {clusterIP: 10.96.0.2, ports: [{port: 80}]}
---
apiVersion: v1
kind: Pod
metadata: {name: ready, namespace: x, labels: {app: web, extra: y}}
spec: {nodeName: n1, containers: [{name: c, ports: [{name: http, containerPort: 8080}]}]}
status: {phase: Running, podIP: 10.244.1.1, conditions: [{type: Ready, status: 'True'}]}
---
apiVersion: v1
kind: Pod
metadata: {name: starting, namespace: x, labels: {app: web}}
spec: {containers: [{name: c, ports: [{name: http, containerPort: 8081}]}]}
status: {phase: Running, podIP: 10.244.1.2, conditions: [{type: Ready, status: 'False'}]}
---
apiVersion: v1
kind: Pod
metadata: {name: going, namespace: x, labels: {app: web}, deletionTimestamp: '2026-01-01T00:00:00Z'}
spec: {containers: [{name: c, ports: [{name: http, containerPort: 8080}]}]}
status: {phase: Running, podIP: 10.244.1.3, conditions: [{type: Ready, status: 'True'}]}
---
apiVersion: v1
kind: Pod
metadata: {name: no-named-port, namespace: x, labels: {app: web}}
spec: {containers: [{name: c, ports: [{name: http, containerPort: 8080, protocol: UDP}]}]}
status: {phase: Running, podIP: 10.244.1.4, conditions: [{type: Ready, status: 'True'}]}
---
apiVersion: v1
kind: Pod
metadata: {name: no-ip, namespace: x, labels: {app: web}}
spec: {containers: [{name: c}]}
status: {phase: Pending}
---
apiVersion: v1
kind: Pod
metadata: {name: other-app, namespace: x, labels: {app: db}}
spec: {containers: [{name: c}]}
status: {phase: Running, podIP: 10.244.1.6}
---
apiVersion: v1
kind: Pod
metadata: {name: other-ns, namespace: y, labels: {app: web}}
spec: {containers: [{name: c}]}
status: {phase: Running, podIP: 10.244.1.7}
";

    #[test]
    fn without_slices_standalone_mode_selects_pods_as_the_endpoints_controller_would() {
        let (p, problems) = ports(PODS, &ModelOptions::default());
        assert!(problems.is_empty(), "{problems:?}");
        let port = |name: &str| p.iter().find(|p| p.port_name == name).unwrap();
        let http = port("http");
        assert_eq!(
            addrs(http),
            [
                "10.244.1.1:8080/TCP",
                "10.244.1.2:8081/TCP",
                "10.244.1.3:8080/TCP"
            ],
            "the named port resolves per pod; a pod without it (TCP) is left out"
        );
        let b = be(http, "10.244.1.1");
        assert!(b.ready && !b.terminating);
        assert_eq!(b.node.as_deref(), Some("n1"));
        assert_eq!(b.pod, Some(ObjectKey::new("x", "ready")));
        assert!(!be(http, "10.244.1.2").ready, "not Ready");
        let b = be(http, "10.244.1.3");
        assert!(!b.ready && b.terminating, "being deleted");
        assert_eq!(
            addrs(port("admin")),
            [
                "10.244.1.1:9000/TCP",
                "10.244.1.2:9000/TCP",
                "10.244.1.3:9000/TCP",
                "10.244.1.4:9000/TCP"
            ]
        );
        assert_eq!(
            addrs(port("plain"))[0],
            "10.244.1.1:82/TCP",
            "targetPort unset: port"
        );
        let manual = p.iter().find(|p| p.service.name == "manual").unwrap();
        assert!(manual.backends.is_empty(), "no selector: endpoints by hand");

        let (p, _) = ports(
            PODS,
            &ModelOptions {
                endpoints_from_pods: false,
                ..Default::default()
            },
        );
        assert!(
            p.iter().all(|p| p.backends.is_empty()),
            "against an API server, pods are never endpoints by themselves"
        );
    }

    #[test]
    fn named_ports_match_name_and_protocol() {
        let st = state(PODS);
        let pod = &st.pods[&ObjectKey::new("x", "no-named-port")];
        assert_eq!(named_port(pod, "http", UDP), Some(8080));
        assert_eq!(named_port(pod, "http", TCP), None);
        assert_eq!(named_port(pod, "grpc", UDP), None);
    }

    #[test]
    fn durations_take_ms_s_m_h_or_plain_seconds() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration(" 2s "), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("6h"), Ok(Duration::from_secs(21600)));
        for bad in [
            "",
            "s",
            "1d",
            "1.5s",
            "-1s",
            "ms500",
            "99999999999999999999m",
        ] {
            let e = parse_duration(bad).unwrap_err();
            assert!(
                e.contains(&format!("{bad:?}")) && e.contains("500ms"),
                "{e}"
            );
        }
        assert!(parse_duration("307445734561825861m").is_err(), "overflow");
    }
}
