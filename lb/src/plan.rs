//! What one node's data plane should hold for the cluster's services: its
//! frontends, backend sets and backends, with this node's view of locality
//! (traffic policies) and health. Pure, and kept Service by Service
//! ([`Planner`]): a change re-plans the Services it touches and names the
//! keys whose plan changed, which is all the agent writes.

use crate::model::{BackendAddr, ExternalMode, HealthCheck, HealthProbe, Scheduler, ServicePort};
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use strake_source::ObjectKey;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FrontendKey {
    pub addr: Ipv4Addr,
    pub port: u16,
    pub proto: u8,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrontendPlan {
    /// Service and port it belongs to, `ns/name:port` (for stats and CLI).
    pub service: String,
    pub kind: crate::model::FrontendKind,
    pub set: String,
    /// The set of clients inside the cluster (pods, the node itself): the
    /// internal traffic policy's. Only an externalTrafficPolicy Local
    /// external frontend has one that differs from `set` (kube-proxy sends
    /// pod and node traffic to its external addresses to every endpoint).
    pub inside_set: String,
    pub affinity_timeout: u32,
    pub external: bool,
    pub dsr: bool,
    /// Traffic policy Local: the set holds this node's backends only.
    pub local: bool,
    /// No usable endpoint anywhere in the cluster: new flows are refused
    /// (kube-proxy's REJECT), not dropped as when only a Local scope is
    /// empty while other nodes have endpoints.
    pub reject: bool,
    /// A LoadBalancer frontend's loadBalancerSourceRanges (None: any
    /// client).
    pub source_ranges: Option<Vec<(Ipv4Addr, u8)>>,
}

/// Backends new flows of a frontend may go to, with weights; and how to pick.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetPlan {
    pub members: Vec<(BackendAddr, u32)>,
    /// Maglev table size; 0 for the random scheduler.
    pub table_size: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackendPlan {
    pub local: bool,
    /// Ready, healthy and not terminating: may take new flows.
    pub active: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub frontends: BTreeMap<FrontendKey, FrontendPlan>,
    pub sets: BTreeMap<String, SetPlan>,
    pub backends: BTreeMap<BackendAddr, BackendPlan>,
    /// What direct-return IPIP may ask this node to deliver.
    pub dsr_targets: BTreeSet<DsrTarget>,
    /// Frontends claimed by two services (the first, by name, wins).
    pub conflicts: Vec<String>,
}

/// The whole plan for `services`, from scratch.
pub fn plan(services: &[ServicePort], node: &str, healthy: impl Fn(&BackendAddr) -> bool) -> Plan {
    plan_in_zone(services, node, None, healthy)
}

/// The same for a node in `zone`.
pub fn plan_in_zone(
    services: &[ServicePort],
    node: &str,
    zone: Option<&str>,
    healthy: impl Fn(&BackendAddr) -> bool,
) -> Plan {
    let mut by_service: BTreeMap<ObjectKey, Vec<ServicePort>> = BTreeMap::new();
    for sp in services {
        by_service
            .entry(sp.service.clone())
            .or_default()
            .push(sp.clone());
    }
    let mut p = Planner::new(node);
    p.set_zone(zone.map(str::to_string));
    for (k, ports) in by_service {
        p.set_service(k, ports, &healthy);
    }
    p.plan()
}

/// A DSR frontend and one of its backends on this node: every local
/// backend, ready or not (a terminating one still serves the flows other
/// nodes pinned to it).
pub type DsrTarget = (FrontendKey, BackendAddr);

/// Who claims a key, in claim order: the first claim is the one in force.
type Claims<T> = BTreeMap<(ObjectKey, usize), T>;

/// What one Service contributes to the plan.
#[derive(Debug, Clone, Default)]
pub struct ServicePlan {
    pub ports: Vec<ServicePort>,
    frontends: Vec<(FrontendKey, usize, FrontendPlan)>,
    sets: Vec<(String, usize, SetPlan)>,
    /// (backend, local, active).
    backends: Vec<(BackendAddr, bool, bool)>,
    targets: Vec<(BackendAddr, usize, HealthCheck)>,
    dsr_targets: Vec<(DsrTarget, usize)>,
}

#[derive(Debug, Clone, Copy, Default)]
struct BackendRefs {
    refs: u32,
    local: u32,
    active: u32,
}

/// Keys whose plan changed since the last [`Planner::take_dirty`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dirty {
    pub frontends: BTreeSet<FrontendKey>,
    pub sets: BTreeSet<String>,
    pub backends: BTreeSet<BackendAddr>,
    /// Backends whose health check (or lack of one) changed.
    pub targets: BTreeSet<BackendAddr>,
    pub dsr_targets: BTreeSet<DsrTarget>,
}

impl Dirty {
    pub fn is_empty(&self) -> bool {
        self.frontends.is_empty()
            && self.sets.is_empty()
            && self.backends.is_empty()
            && self.targets.is_empty()
            && self.dsr_targets.is_empty()
    }
}

/// The plan of one node, kept up to date Service by Service: replacing one
/// Service's contribution costs that Service, and says which frontends,
/// sets and backends it changed. Folding every Service into a new planner
/// gives the same plan (`plan`).
#[derive(Debug, Clone, Default)]
pub struct Planner {
    node: String,
    /// This node's zone (`topology.kubernetes.io/zone`), for topology
    /// hints and trafficDistribution PreferClose.
    zone: Option<String>,
    services: BTreeMap<ObjectKey, ServicePlan>,
    frontends: BTreeMap<FrontendKey, Claims<FrontendPlan>>,
    sets: BTreeMap<String, Claims<SetPlan>>,
    backends: BTreeMap<BackendAddr, BackendRefs>,
    /// Services by the backends they use (health flips re-plan them).
    backend_services: BTreeMap<BackendAddr, BTreeSet<ObjectKey>>,
    targets: BTreeMap<BackendAddr, Claims<HealthCheck>>,
    dsr_targets: BTreeMap<DsrTarget, Claims<()>>,
    /// Frontends by the set they point at.
    set_frontends: BTreeMap<String, BTreeSet<FrontendKey>>,
    dirty: Dirty,
}

/// The ready backends a node in `zone` prefers for a cluster-scoped set,
/// as kube-proxy's topology filter: when every ready endpoint carries
/// `hints.forZones`, those hinting this zone; else, for trafficDistribution
/// PreferClose (no EndpointSlice controller wrote hints, as in standalone
/// mode), those in this zone. None (no preference: all of them) when the
/// node has no zone, the Service asks for none, or the zone has no
/// endpoint: then every zone's endpoints serve, as kube-proxy falls back.
fn zone_preferred(
    sp: &ServicePort,
    zone: Option<&str>,
    usable: &dyn Fn(&crate::model::Backend) -> bool,
) -> Option<BTreeSet<BackendAddr>> {
    let zone = zone?;
    let ready: Vec<&crate::model::Backend> = sp.backends.iter().filter(|b| usable(b)).collect();
    let preferred: BTreeSet<BackendAddr> =
        if !ready.is_empty() && ready.iter().all(|b| b.hint_zones.is_some()) {
            ready
                .iter()
                .filter(|b| b.hint_zones.iter().flatten().any(|z| z == zone))
                .map(|b| b.addr)
                .collect()
        } else if sp.prefer_close {
            ready
                .iter()
                .filter(|b| b.zone.as_deref() == Some(zone))
                .map(|b| b.addr)
                .collect()
        } else {
            return None;
        };
    (!preferred.is_empty()).then_some(preferred)
}

/// The plan of one Service's ports on `node` (in `zone`).
fn service_plan(
    ports: Vec<ServicePort>,
    node: &str,
    zone: Option<&str>,
    healthy: &dyn Fn(&BackendAddr) -> bool,
) -> ServicePlan {
    let mut sp_out = ServicePlan::default();
    for (pi, sp) in ports.iter().enumerate() {
        let mut cluster = Vec::new();
        let mut local = Vec::new();
        // kube-proxy's graceful-termination fallback, per scope: with no
        // ready endpoint (cluster-wide, or on this node for Local), new
        // flows go to the terminating endpoints that still serve.
        let usable = |b: &crate::model::Backend| b.ready && !b.terminating && healthy(&b.addr);
        let fallback = |b: &crate::model::Backend| b.terminating && b.serving && healthy(&b.addr);
        let is_local = |b: &crate::model::Backend| b.node.as_deref() == Some(node);
        let cluster_fallback = !sp.backends.iter().any(usable);
        let local_fallback = !sp.backends.iter().any(|b| usable(b) && is_local(b));
        // Topology (zones) narrows the cluster scope only, as kube-proxy:
        // a Local policy already keeps traffic on the node.
        let preferred = zone_preferred(sp, zone, &usable);
        for b in &sp.backends {
            let is_local = is_local(b);
            let in_cluster = match &preferred {
                Some(p) => p.contains(&b.addr),
                None => usable(b) || (cluster_fallback && fallback(b)),
            };
            let in_local = is_local && (usable(b) || (local_fallback && fallback(b)));
            // The local set matters only where a traffic policy is Local.
            let uses_local = sp.external_local || sp.internal_local;
            let active = in_cluster || (uses_local && in_local);
            sp_out.backends.push((b.addr, is_local, active));
            if in_cluster {
                cluster.push((b.addr, b.weight));
            }
            if in_local {
                local.push((b.addr, b.weight));
            }
            // A TCP probe of a UDP port means nothing: UDP backends are
            // checked only on an explicit health-check port.
            if sp.health.probe != HealthProbe::None
                && (b.addr.proto == crate::model::TCP || sp.health.port.is_some())
            {
                sp_out.targets.push((b.addr, pi, sp.health.clone()));
            }
        }
        for f in &sp.frontends {
            let external = f.kind.external();
            let use_local = if external {
                sp.external_local
            } else {
                sp.internal_local
            };
            let set_name =
                |local: bool| format!("{}/{}", sp.name(), if local { "local" } else { "cluster" });
            let set = set_name(use_local);
            let inside_set = set_name(sp.internal_local);
            for (name, is_local) in [(&set, use_local), (&inside_set, sp.internal_local)] {
                if sp_out.sets.iter().any(|(n, i, _)| n == name && *i == pi) {
                    continue;
                }
                let members = if is_local { &local } else { &cluster };
                let table_size = match sp.scheduler {
                    Scheduler::Maglev if sp.table_size_fixed => sp.table_size,
                    Scheduler::Maglev => {
                        crate::maglev::table_size_for(members.len(), sp.table_size)
                    }
                    Scheduler::Random => 0,
                };
                sp_out.sets.push((
                    name.clone(),
                    pi,
                    SetPlan {
                        members: members.clone(),
                        table_size,
                    },
                ));
            }
            let key = FrontendKey {
                addr: f.addr,
                port: f.port,
                proto: f.proto,
            };
            let dsr = external && !use_local && sp.external_mode == ExternalMode::Dsr;
            if dsr {
                for b in sp
                    .backends
                    .iter()
                    .filter(|b| b.node.as_deref() == Some(node))
                {
                    sp_out.dsr_targets.push(((key, b.addr), pi));
                }
            }
            sp_out.frontends.push((
                key,
                pi,
                FrontendPlan {
                    service: sp.name(),
                    kind: f.kind,
                    set,
                    inside_set,
                    affinity_timeout: sp.affinity_timeout.unwrap_or(0),
                    external,
                    dsr,
                    local: use_local,
                    reject: cluster.is_empty(),
                    source_ranges: (f.kind == crate::model::FrontendKind::LoadBalancer)
                        .then(|| sp.source_ranges.clone())
                        .flatten(),
                },
            ));
        }
    }
    sp_out.ports = ports;
    sp_out
}

fn claim<K: Ord + Clone, T: PartialEq + Clone>(
    map: &mut BTreeMap<K, Claims<T>>,
    key: &K,
    by: (ObjectKey, usize),
    value: Option<T>,
) -> bool {
    let before = map.get(key).and_then(|c| c.values().next().cloned());
    let claims = map.entry(key.clone()).or_default();
    match value {
        Some(v) => {
            // A later duplicate from the same claimer does not replace the
            // first (the first port to name a frontend keeps it).
            claims.entry(by).or_insert(v);
        }
        None => {
            claims.remove(&by);
        }
    }
    if claims.is_empty() {
        map.remove(key);
    }
    let after = map.get(key).and_then(|c| c.values().next().cloned());
    before != after
}

impl Planner {
    pub fn new(node: &str) -> Self {
        Planner {
            node: node.to_string(),
            ..Default::default()
        }
    }

    /// This node's zone. A change alters every zone-aware Service's plan:
    /// the caller re-plans them all when this returns true.
    pub fn set_zone(&mut self, zone: Option<String>) -> bool {
        let changed = self.zone != zone;
        self.zone = zone;
        changed
    }

    /// Replaces one Service's ports (an empty list, or `remove_service`,
    /// takes it out). `healthy` judges its backends now.
    pub fn set_service(
        &mut self,
        key: ObjectKey,
        ports: Vec<ServicePort>,
        healthy: &dyn Fn(&BackendAddr) -> bool,
    ) {
        self.remove_service(&key);
        if ports.is_empty() {
            return;
        }
        let sp = service_plan(ports, &self.node, self.zone.as_deref(), healthy);
        for (n, pi, set) in &sp.sets {
            if claim(&mut self.sets, n, (key.clone(), *pi), Some(set.clone())) {
                self.dirty.sets.insert(n.clone());
            }
        }
        for (f, pi, fp) in &sp.frontends {
            // A frontend's entry also holds its set's size: a changed set
            // rewrites it.
            if claim(&mut self.frontends, f, (key.clone(), *pi), Some(fp.clone()))
                || self.dirty.sets.contains(&fp.set)
                || self.dirty.sets.contains(&fp.inside_set)
            {
                self.dirty.frontends.insert(*f);
            }
            for set in [&fp.set, &fp.inside_set] {
                self.set_frontends
                    .entry(set.clone())
                    .or_default()
                    .insert(*f);
            }
        }
        for (b, local, active) in &sp.backends {
            let before = self.backend(b);
            let e = self.backends.entry(*b).or_default();
            e.refs += 1;
            e.local += u32::from(*local);
            e.active += u32::from(*active);
            if self.backend(b) != before {
                self.dirty.backends.insert(*b);
            }
            self.backend_services
                .entry(*b)
                .or_default()
                .insert(key.clone());
        }
        for (b, pi, h) in &sp.targets {
            if claim(&mut self.targets, b, (key.clone(), *pi), Some(h.clone())) {
                self.dirty.targets.insert(*b);
            }
        }
        for (t, pi) in &sp.dsr_targets {
            if claim(&mut self.dsr_targets, t, (key.clone(), *pi), Some(())) {
                self.dirty.dsr_targets.insert(*t);
            }
        }
        self.services.insert(key, sp);
    }

    pub fn remove_service(&mut self, key: &ObjectKey) {
        let Some(sp) = self.services.remove(key) else {
            return;
        };
        for (f, pi, fp) in &sp.frontends {
            if claim::<_, FrontendPlan>(&mut self.frontends, f, (key.clone(), *pi), None) {
                self.dirty.frontends.insert(*f);
            }
            for set in [&fp.set, &fp.inside_set] {
                if let Some(s) = self.set_frontends.get_mut(set) {
                    s.remove(f);
                    if s.is_empty() {
                        self.set_frontends.remove(set);
                    }
                }
            }
        }
        for (n, pi, _) in &sp.sets {
            if claim::<_, SetPlan>(&mut self.sets, n, (key.clone(), *pi), None) {
                self.dirty.sets.insert(n.clone());
            }
        }
        for (b, local, active) in &sp.backends {
            let before = self.backend(b);
            if let Some(e) = self.backends.get_mut(b) {
                e.refs -= 1;
                e.local -= u32::from(*local);
                e.active -= u32::from(*active);
                if e.refs == 0 {
                    self.backends.remove(b);
                }
            }
            if self.backend(b) != before {
                self.dirty.backends.insert(*b);
            }
            if let Some(s) = self.backend_services.get_mut(b) {
                s.remove(key);
                if s.is_empty() {
                    self.backend_services.remove(b);
                }
            }
        }
        for (b, pi, _) in &sp.targets {
            if claim::<_, HealthCheck>(&mut self.targets, b, (key.clone(), *pi), None) {
                self.dirty.targets.insert(*b);
            }
        }
        for (t, pi) in &sp.dsr_targets {
            if claim::<_, ()>(&mut self.dsr_targets, t, (key.clone(), *pi), None) {
                self.dirty.dsr_targets.insert(*t);
            }
        }
    }

    /// The frontend in force at `k`.
    pub fn frontend(&self, k: &FrontendKey) -> Option<&FrontendPlan> {
        self.frontends.get(k)?.values().next()
    }

    pub fn set(&self, name: &str) -> Option<&SetPlan> {
        self.sets.get(name)?.values().next()
    }

    pub fn backend(&self, b: &BackendAddr) -> Option<BackendPlan> {
        self.backends.get(b).map(|e| BackendPlan {
            local: e.local > 0,
            active: e.active > 0,
        })
    }

    /// The health check a backend should get (the first claimer's).
    pub fn target(&self, b: &BackendAddr) -> Option<&HealthCheck> {
        self.targets.get(b)?.values().next()
    }

    /// Whether direct return may deliver to this (frontend, backend).
    pub fn dsr_target(&self, t: &DsrTarget) -> bool {
        self.dsr_targets.contains_key(t)
    }

    pub fn dsr_target_keys(&self) -> impl Iterator<Item = &DsrTarget> {
        self.dsr_targets.keys()
    }

    /// Frontends pointing at a set.
    pub fn frontends_of_set(&self, set: &str) -> impl Iterator<Item = &FrontendKey> {
        self.set_frontends.get(set).into_iter().flatten()
    }

    /// Services using a backend.
    pub fn services_of(&self, b: &BackendAddr) -> impl Iterator<Item = &ObjectKey> {
        self.backend_services.get(b).into_iter().flatten()
    }

    /// Every Service's ports as last set (for `strake lb list`).
    pub fn service_ports(&self) -> impl Iterator<Item = &ServicePort> {
        self.services.values().flat_map(|s| s.ports.iter())
    }

    pub fn ports_of(&self, key: &ObjectKey) -> Option<&[ServicePort]> {
        self.services.get(key).map(|s| s.ports.as_slice())
    }

    pub fn service_keys(&self) -> impl Iterator<Item = &ObjectKey> {
        self.services.keys()
    }

    pub fn frontend_keys(&self) -> impl Iterator<Item = &FrontendKey> {
        self.frontends.keys()
    }

    pub fn set_names(&self) -> impl Iterator<Item = &String> {
        self.sets.keys()
    }

    pub fn backend_addrs(&self) -> impl Iterator<Item = &BackendAddr> {
        self.backends.keys()
    }

    /// What changed since the last call.
    pub fn take_dirty(&mut self) -> Dirty {
        std::mem::take(&mut self.dirty)
    }

    /// Frontends claimed by two Services: who keeps them.
    pub fn conflicts(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (k, claims) in &self.frontends {
            let mut it = claims.values();
            let Some(winner) = it.next() else { continue };
            for fp in it.filter(|fp| fp.service != winner.service) {
                out.push(format!(
                    "{}:{}/{} is claimed by {} and {}; {} keeps it",
                    k.addr,
                    k.port,
                    crate::model::proto_name(k.proto),
                    winner.service,
                    fp.service,
                    winner.service
                ));
            }
        }
        out
    }

    /// The whole plan as it stands.
    pub fn plan(&self) -> Plan {
        Plan {
            frontends: self
                .frontends
                .keys()
                .filter_map(|k| Some((*k, self.frontend(k)?.clone())))
                .collect(),
            sets: self
                .sets
                .keys()
                .filter_map(|k| Some((k.clone(), self.set(k)?.clone())))
                .collect(),
            backends: self
                .backends
                .keys()
                .filter_map(|k| Some((*k, self.backend(k)?)))
                .collect(),
            dsr_targets: self.dsr_targets.keys().copied().collect(),
            conflicts: self.conflicts(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{services, FrontendKind, ModelOptions, DEFAULT_TABLE_SIZE, TCP, UDP};
    use strake_source::ClusterState;

    fn state(yaml: &str) -> ClusterState {
        strake_source::dir::state_from_yaml(yaml).unwrap()
    }

    const PODS: &str = r#"
apiVersion: v1
kind: Pod
metadata: {namespace: x, name: a, labels: {app: web}}
spec: {nodeName: n1, containers: [{name: c, ports: [{name: http, containerPort: 8080}, {name: dns, containerPort: 53, protocol: UDP}]}]}
status: {phase: Running, podIP: 10.244.1.5, conditions: [{type: Ready, status: "True"}]}
---
apiVersion: v1
kind: Pod
metadata: {namespace: x, name: b, labels: {app: web}, annotations: {lb.strake.dev/weight: "3"}}
spec: {nodeName: n2, containers: [{name: c, ports: [{name: http, containerPort: 9090}]}]}
status: {phase: Running, podIP: 10.244.2.5, conditions: [{type: Ready, status: "True"}]}
---
apiVersion: v1
kind: Pod
metadata: {namespace: x, name: notready, labels: {app: web}}
spec: {nodeName: n1, containers: [{name: c, ports: [{name: http, containerPort: 8080}]}]}
status: {phase: Running, podIP: 10.244.1.6, conditions: [{type: Ready, status: "False"}]}
---
apiVersion: v1
kind: Pod
metadata: {namespace: y, name: elsewhere, labels: {app: web}}
spec: {nodeName: n1, containers: [{name: c}]}
status: {phase: Running, podIP: 10.244.1.7, conditions: [{type: Ready, status: "True"}]}
"#;

    #[test]
    fn selector_services_resolve_named_ports_per_pod_and_respect_readiness() {
        let st = state(&format!(
            "{PODS}---\napiVersion: v1\nkind: Service\nmetadata: {{namespace: x, name: web}}\nspec:\n  type: NodePort\n  clusterIP: 10.96.0.10\n  selector: {{app: web}}\n  ports: [{{name: http, port: 80, targetPort: http, nodePort: 30080}}, {{name: dns, port: 53, targetPort: dns, protocol: UDP}}]\n"
        ));
        let (sps, problems) = services(&st, &ModelOptions::default());
        assert!(problems.is_empty(), "{problems:?}");
        let http = sps.iter().find(|s| s.port_name == "http").unwrap();
        let got: Vec<(String, u16, bool, u32)> = http
            .backends
            .iter()
            .map(|b| (b.addr.ip.to_string(), b.addr.port, b.ready, b.weight))
            .collect();
        assert_eq!(
            got,
            vec![
                ("10.244.1.5".into(), 8080, true, 1),
                ("10.244.1.6".into(), 8080, false, 1),
                ("10.244.2.5".into(), 9090, true, 3), // named port differs per pod
            ]
        );
        assert_eq!(http.frontends.len(), 2);
        assert!(http
            .frontends
            .iter()
            .any(|f| f.kind == FrontendKind::NodePort
                && f.port == 30080
                && f.addr.is_unspecified()));
        // Only pod a has a UDP port named dns.
        let dns = sps.iter().find(|s| s.port_name == "dns").unwrap();
        assert_eq!(dns.proto, UDP);
        assert_eq!(dns.backends.len(), 1);

        let p = plan(&sps, "n1", |_| true);
        let set = &p.sets["x/web:http/cluster"];
        assert_eq!(set.members.len(), 2, "the not-ready pod takes no new flows");
        assert!(
            p.backends.values().filter(|b| !b.active).count() == 1,
            "but stays for its flows"
        );
        assert!(
            p.backends[&crate::model::BackendAddr {
                ip: "10.244.1.5".parse().unwrap(),
                port: 8080,
                proto: TCP
            }]
                .local
        );
        // Unhealthy backends leave the sets too.
        let p = plan(&sps, "n1", |b| b.port != 9090);
        assert_eq!(p.sets["x/web:http/cluster"].members.len(), 1);
    }

    #[test]
    fn endpoint_slices_win_over_selectors_and_terminating_endpoints_keep_only_their_flows() {
        let st = state(&format!(
            "{PODS}---\napiVersion: v1\nkind: Service\nmetadata: {{namespace: x, name: web}}\nspec: {{clusterIP: 10.96.0.10, selector: {{app: web}}, ports: [{{name: http, port: 80}}]}}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{namespace: x, name: web-1, labels: {{kubernetes.io/service-name: web}}}}\naddressType: IPv4\nports: [{{name: http, port: 8080, protocol: TCP}}]\nendpoints:\n- {{addresses: [10.244.1.5], nodeName: n1, conditions: {{ready: true}}}}\n- {{addresses: [10.244.2.9], nodeName: n2, conditions: {{ready: false, serving: true, terminating: true}}}}\n"
        ));
        let (sps, _) = services(&st, &ModelOptions::default());
        assert_eq!(sps[0].backends.len(), 2);
        let p = plan(&sps, "n2", |_| true);
        assert_eq!(p.sets["x/web:http/cluster"].members.len(), 1);
        assert_eq!(
            p.backends.len(),
            2,
            "the terminating one stays for existing flows"
        );
    }

    #[test]
    fn with_no_ready_endpoint_new_flows_go_to_the_terminating_ones_that_still_serve() {
        let slice = |extra: &str| {
            state(&format!(
                "{PODS}---\napiVersion: v1\nkind: Service\nmetadata: {{namespace: x, name: web}}\nspec: {{clusterIP: 10.96.0.10, selector: {{app: web}}, ports: [{{name: http, port: 80}}]}}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{namespace: x, name: web-1, labels: {{kubernetes.io/service-name: web}}}}\naddressType: IPv4\nports: [{{name: http, port: 8080, protocol: TCP}}]\nendpoints:\n- {{addresses: [10.244.1.5], nodeName: n1, conditions: {{ready: false, serving: true, terminating: true}}}}\n- {{addresses: [10.244.2.9], nodeName: n2, conditions: {{ready: false, serving: true, terminating: true}}}}\n- {{addresses: [10.244.2.10], nodeName: n2, conditions: {{ready: false, serving: false, terminating: true}}}}\n{extra}"
            ))
        };
        let members = |st: &ClusterState| {
            let (sps, _) = services(st, &ModelOptions::default());
            let p = plan(&sps, "n1", |_| true);
            let mut m: Vec<String> = p.sets["x/web:http/cluster"]
                .members
                .iter()
                .map(|(b, _)| b.ip.to_string())
                .collect();
            m.sort();
            (m, p.backends.values().filter(|b| b.active).count())
        };
        let (m, active) = members(&slice(""));
        assert_eq!(
            m,
            ["10.244.1.5", "10.244.2.9"],
            "the serving ones, not the one that stopped serving"
        );
        assert_eq!(active, 2);
        let (m, active) = members(&slice(
            "- {addresses: [10.244.1.7], nodeName: n1, conditions: {ready: true}}\n",
        ));
        assert_eq!(
            m,
            ["10.244.1.7"],
            "once one is ready, only it takes new flows"
        );
        assert_eq!(active, 1);
    }

    #[test]
    fn traffic_policies_choose_node_local_sets_and_dsr_applies_to_external_frontends() {
        let st = state(&format!(
            "{PODS}---\napiVersion: v1\nkind: Service\nmetadata: {{namespace: x, name: web, annotations: {{lb.strake.dev/external-mode: dsr}}}}\nspec:\n  type: LoadBalancer\n  clusterIP: 10.96.0.10\n  externalTrafficPolicy: Local\n  selector: {{app: web}}\n  ports: [{{name: http, port: 80, targetPort: http, nodePort: 30080}}]\nstatus: {{loadBalancer: {{ingress: [{{ip: 203.0.113.10}}]}}}}\n"
        ));
        let (sps, _) = services(&st, &ModelOptions::default());
        let p = plan(&sps, "n1", |_| true);
        let lb = &p.frontends[&FrontendKey {
            addr: "203.0.113.10".parse().unwrap(),
            port: 80,
            proto: TCP,
        }];
        assert!(
            lb.external && lb.local && !lb.dsr,
            "Local policy: no DSR, no SNAT, local backends"
        );
        assert_eq!(p.sets[&lb.set].members.len(), 1);
        assert_eq!(
            (lb.inside_set.as_str(), p.sets[&lb.inside_set].members.len()),
            ("x/web:http/cluster", 2),
            "clients inside the cluster reach every endpoint"
        );
        let cip = &p.frontends[&FrontendKey {
            addr: "10.96.0.10".parse().unwrap(),
            port: 80,
            proto: TCP,
        }];
        assert!(!cip.external && !cip.local);
        assert_eq!(p.sets[&cip.set].members.len(), 2);
        assert_eq!(cip.inside_set, cip.set);
    }

    #[test]
    fn only_a_service_without_any_usable_endpoint_is_refused() {
        let svc = |selector: &str| {
            state(&format!(
                "{PODS}---\napiVersion: v1\nkind: Service\nmetadata: {{namespace: x, name: web}}\nspec:\n  type: NodePort\n  clusterIP: 10.96.0.10\n  externalTrafficPolicy: Local\n  selector: {{app: {selector}}}\n  ports: [{{name: http, port: 80, targetPort: http, nodePort: 30080}}]\n"
            ))
        };
        let fe = |p: &Plan, addr: &str, port: u16| {
            p.frontends[&FrontendKey {
                addr: addr.parse().unwrap(),
                port,
                proto: TCP,
            }]
                .clone()
        };
        let (sps, _) = services(&svc("nothing"), &ModelOptions::default());
        let p = plan(&sps, "n1", |_| true);
        assert!(fe(&p, "10.96.0.10", 80).reject && fe(&p, "0.0.0.0", 30080).reject);
        // Endpoints on n1 and n2: n3 has no local one for its Local
        // NodePort, which drops (kube-proxy's "has no local endpoints"),
        // while its ClusterIP has endpoints.
        let (sps, _) = services(&svc("web"), &ModelOptions::default());
        let p = plan(&sps, "n3", |_| true);
        let np = fe(&p, "0.0.0.0", 30080);
        assert!(np.local && p.sets[&np.set].members.is_empty() && !np.reject);
        assert!(!fe(&p, "10.96.0.10", 80).reject);
        // Every endpoint failing its health check is no usable endpoint.
        assert!(fe(&plan(&sps, "n1", |_| false), "10.96.0.10", 80).reject);
    }

    #[test]
    fn dsr_targets_are_the_external_frontends_with_each_local_backend() {
        let st = state(&format!(
            "{PODS}---\napiVersion: v1\nkind: Service\nmetadata: {{namespace: x, name: web, annotations: {{lb.strake.dev/external-mode: dsr}}}}\nspec:\n  type: LoadBalancer\n  clusterIP: 10.96.0.10\n  selector: {{app: web}}\n  ports: [{{name: http, port: 80, targetPort: http, nodePort: 30080}}]\nstatus: {{loadBalancer: {{ingress: [{{ip: 203.0.113.10}}]}}}}\n"
        ));
        let (sps, _) = services(&st, &ModelOptions::default());
        // Backends that fail their checks, or are not ready, still serve the
        // flows other nodes pinned to them.
        let p = plan(&sps, "n1", |_| false);
        let got: Vec<(String, String)> = p
            .dsr_targets
            .iter()
            .map(|(f, b)| (format!("{}:{}", f.addr, f.port), b.to_string()))
            .collect();
        let want: Vec<(String, String)> = [
            ("0.0.0.0:30080", "10.244.1.5"),
            ("0.0.0.0:30080", "10.244.1.6"),
            ("203.0.113.10:80", "10.244.1.5"),
            ("203.0.113.10:80", "10.244.1.6"),
        ]
        .map(|(f, b)| (f.to_string(), format!("{b}:8080/TCP")))
        .to_vec();
        assert_eq!(
            got, want,
            "NodePort and LoadBalancer, not the ClusterIP; n1's backends (the not-ready one too), not n2's"
        );
        assert!(plan(&sps, "n3", |_| true).dsr_targets.is_empty());
        // Kept Service by Service: the Service leaving takes them along.
        let mut planner = Planner::new("n1");
        planner.set_service(sps[0].service.clone(), sps.clone(), &|_| true);
        assert_eq!(planner.take_dirty().dsr_targets.len(), 4);
        planner.remove_service(&sps[0].service);
        let dirty = planner.take_dirty();
        assert_eq!(dirty.dsr_targets.len(), 4);
        assert!(dirty.dsr_targets.iter().all(|t| !planner.dsr_target(t)));
    }

    #[test]
    fn bad_annotations_are_reported_and_defaults_used() {
        let st = state(
            "apiVersion: v1\nkind: Service\nmetadata: {namespace: x, name: s, annotations: {lb.strake.dev/scheduler: round-robin, lb.strake.dev/maglev-table-size: \"1000\", lb.strake.dev/health-check-interval: soon}}\nspec: {clusterIP: 10.96.0.11, ports: [{port: 80}]}\n",
        );
        let (sps, problems) = services(&st, &ModelOptions::default());
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert_eq!(sps[0].table_size, DEFAULT_TABLE_SIZE);
        assert_eq!(sps[0].scheduler, crate::model::Scheduler::Maglev);
    }

    /// Nodes n1, n2 in zone-a, n3 in zone-b; pods a (n1), b (n2), c (n3).
    fn zoned(service_extra: &str, more: &str) -> Vec<ServicePort> {
        let st = state(&format!(
            "apiVersion: v1\nkind: Node\nmetadata: {{name: n1, labels: {{topology.kubernetes.io/zone: zone-a}}}}\n---\napiVersion: v1\nkind: Node\nmetadata: {{name: n2, labels: {{topology.kubernetes.io/zone: zone-a}}}}\n---\napiVersion: v1\nkind: Node\nmetadata: {{name: n3, labels: {{topology.kubernetes.io/zone: zone-b}}}}\n---\napiVersion: v1\nkind: Service\nmetadata: {{namespace: x, name: web}}\nspec:\n  type: NodePort\n  clusterIP: 10.96.0.10\n  selector: {{app: web}}\n  ports: [{{name: http, port: 80, targetPort: 8080, nodePort: 30080}}]\n{service_extra}\n{more}"
        ));
        services(&st, &ModelOptions::default()).0
    }

    fn pod(name: &str, node: &str, ip: &str) -> String {
        format!("---\napiVersion: v1\nkind: Pod\nmetadata: {{namespace: x, name: {name}, labels: {{app: web}}}}\nspec: {{nodeName: {node}, containers: [{{name: c}}]}}\nstatus: {{phase: Running, podIP: {ip}, conditions: [{{type: Ready, status: \"True\"}}]}}\n")
    }

    fn members(p: &Plan, set: &str) -> Vec<String> {
        p.sets[set]
            .members
            .iter()
            .map(|(b, _)| b.ip.to_string())
            .collect()
    }

    #[test]
    fn prefer_close_keeps_a_nodes_clients_in_its_zone_and_falls_back_to_all() {
        let pods = pod("a", "n1", "10.244.1.5")
            + &pod("b", "n2", "10.244.2.5")
            + &pod("c", "n3", "10.244.3.5");
        let sps = zoned("  trafficDistribution: PreferClose", &pods);
        assert_eq!(
            sps[0].backends[0].zone.as_deref(),
            Some("zone-a"),
            "from the pod's node"
        );
        let cluster = "x/web:http/cluster";
        let p = plan_in_zone(&sps, "n1", Some("zone-a"), |_| true);
        assert_eq!(members(&p, cluster), ["10.244.1.5", "10.244.2.5"]);
        let c = BackendAddr {
            ip: "10.244.3.5".parse().unwrap(),
            port: 8080,
            proto: TCP,
        };
        assert!(
            !p.backends[&c].active,
            "the other zone's takes no new flows here"
        );
        let p = plan_in_zone(&sps, "n3", Some("zone-b"), |_| true);
        assert_eq!(members(&p, cluster), ["10.244.3.5"]);
        assert!(p.backends[&c].active);
        // Its zone's endpoint unhealthy: every zone's serve.
        let p = plan_in_zone(&sps, "n3", Some("zone-b"), |b| b != &c);
        assert_eq!(members(&p, cluster), ["10.244.1.5", "10.244.2.5"]);
        // A node without a zone, or a zone without endpoints: all of them.
        for (node, zone) in [("n4", None), ("n4", Some("zone-c"))] {
            let p = plan_in_zone(&sps, node, zone, |_| true);
            assert_eq!(members(&p, cluster).len(), 3, "{zone:?}");
        }
        // Without trafficDistribution (and no hints), zones do not matter.
        let sps = zoned("", &pods);
        let p = plan_in_zone(&sps, "n3", Some("zone-b"), |_| true);
        assert_eq!(members(&p, cluster).len(), 3);
    }

    #[test]
    fn topology_hints_choose_for_the_zone_they_name_when_every_ready_endpoint_has_them() {
        let slice = |hint_c: &str| {
            format!("---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{namespace: x, name: web-1, labels: {{kubernetes.io/service-name: web}}}}\naddressType: IPv4\nports: [{{name: http, port: 8080, protocol: TCP}}]\nendpoints:\n- {{addresses: [10.244.1.5], nodeName: n1, zone: zone-a, hints: {{forZones: [{{name: zone-a}}]}}}}\n- {{addresses: [10.244.3.5], nodeName: n3, zone: zone-b, hints: {{forZones: [{{name: zone-b}}, {{name: zone-c}}]}}}}\n- {{addresses: [10.244.3.6], nodeName: n3, zone: zone-b{hint_c}}}\n- {{addresses: [10.244.3.7], nodeName: n3, conditions: {{ready: false}}}}\n")
        };
        let sps = zoned("", &slice(", hints: {forZones: [{name: zone-a}]}"));
        let cluster = "x/web:http/cluster";
        let p = plan_in_zone(&sps, "n2", Some("zone-a"), |_| true);
        assert_eq!(
            members(&p, cluster),
            ["10.244.1.5", "10.244.3.6"],
            "hints, not the endpoint's own zone; the not-ready one needs none"
        );
        let p = plan_in_zone(&sps, "n9", Some("zone-c"), |_| true);
        assert_eq!(
            members(&p, cluster),
            ["10.244.3.5"],
            "a zone without endpoints of its own"
        );
        // One ready endpoint without hints: kube-proxy ignores them all.
        let sps = zoned("", &slice(""));
        let p = plan_in_zone(&sps, "n2", Some("zone-a"), |_| true);
        assert_eq!(members(&p, cluster).len(), 3);
    }

    #[test]
    fn a_zone_change_replans_and_local_policies_ignore_zones() {
        let pods = pod("a", "n1", "10.244.1.5") + &pod("c", "n3", "10.244.3.5");
        let sps = zoned(
            "  trafficDistribution: PreferClose\n  externalTrafficPolicy: Local",
            &pods,
        );
        let mut planner = Planner::new("n1");
        assert!(!planner.set_zone(None));
        planner.set_service(sps[0].service.clone(), sps.clone(), &|_| true);
        let cluster = "x/web:http/cluster";
        assert_eq!(planner.set(cluster).unwrap().members.len(), 2);
        planner.take_dirty();
        assert!(planner.set_zone(Some("zone-a".into())));
        planner.set_service(sps[0].service.clone(), sps.clone(), &|_| true);
        assert!(planner.take_dirty().sets.contains(cluster));
        assert_eq!(planner.set(cluster).unwrap().members.len(), 1);
        assert_eq!(
            planner.set("x/web:http/local").unwrap().members.len(),
            1,
            "the node's own, zones or not"
        );
    }
}
