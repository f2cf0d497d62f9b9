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
    /// Going away: keeps its flows, takes no new ones.
    pub terminating: bool,
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
                i.iter()
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
            });
        }
    }
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
        Some(v) => parse_duration(v).unwrap_or_else(|| {
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

pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num.parse().ok()?;
    match unit {
        "ms" => Some(Duration::from_millis(n)),
        "s" | "" => Some(Duration::from_secs(n)),
        "m" => Some(Duration::from_secs(n * 60)),
        _ => None,
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
                out.push(Backend {
                    addr,
                    node: e
                        .node_name
                        .clone()
                        .or_else(|| pod.and_then(|p| p.spec.as_ref()?.node_name.clone())),
                    pod: pod_key.clone(),
                    weight: pod_weight(pod),
                    ready,
                    terminating,
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
        out.push(Backend {
            addr: BackendAddr {
                ip,
                port: target,
                proto,
            },
            node: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
            pod: Some(pk.clone()),
            weight: pod_weight(Some(pod)),
            ready: running && ready_cond && !terminating,
            terminating,
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
