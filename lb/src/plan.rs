//! What one node's data plane should hold for the cluster's services: its
//! frontends, backend sets and backends, with this node's view of locality
//! (traffic policies) and health. Pure: the agent diffs two plans and writes
//! only the difference.

use crate::model::{BackendAddr, ExternalMode, Scheduler, ServicePort};
use std::collections::BTreeMap;
use std::net::Ipv4Addr;

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
    pub affinity_timeout: u32,
    pub external: bool,
    pub dsr: bool,
    /// Traffic policy Local: the set holds this node's backends only.
    pub local: bool,
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
    /// Frontends claimed by two services (the first, by name, wins).
    pub conflicts: Vec<String>,
}

pub fn plan(services: &[ServicePort], node: &str, healthy: impl Fn(&BackendAddr) -> bool) -> Plan {
    let mut p = Plan::default();
    for sp in services {
        let mut cluster = Vec::new();
        let mut local = Vec::new();
        for b in &sp.backends {
            let is_local = b.node.as_deref() == Some(node);
            let active = b.ready && !b.terminating && healthy(&b.addr);
            let e = p.backends.entry(b.addr).or_insert(BackendPlan {
                local: is_local,
                active: false,
            });
            e.active |= active;
            if active {
                cluster.push((b.addr, b.weight));
                if is_local {
                    local.push((b.addr, b.weight));
                }
            }
        }
        for f in &sp.frontends {
            let external = f.kind.external();
            let use_local = if external {
                sp.external_local
            } else {
                sp.internal_local
            };
            let set = format!(
                "{}/{}",
                sp.name(),
                if use_local { "local" } else { "cluster" }
            );
            let members = if use_local { &local } else { &cluster };
            let table_size = match sp.scheduler {
                Scheduler::Maglev if sp.table_size_fixed => sp.table_size,
                Scheduler::Maglev => crate::maglev::table_size_for(members.len(), sp.table_size),
                Scheduler::Random => 0,
            };
            p.sets.entry(set.clone()).or_insert_with(|| SetPlan {
                members: members.clone(),
                table_size,
            });
            let key = FrontendKey {
                addr: f.addr,
                port: f.port,
                proto: f.proto,
            };
            let fp = FrontendPlan {
                service: sp.name(),
                kind: f.kind,
                set,
                affinity_timeout: sp.affinity_timeout.unwrap_or(0),
                external,
                dsr: external && !use_local && sp.external_mode == ExternalMode::Dsr,
                local: use_local,
            };
            match p.frontends.get(&key) {
                Some(existing) if existing.service != fp.service => p.conflicts.push(format!(
                    "{}:{}/{} is claimed by {} and {}; {} keeps it",
                    key.addr,
                    key.port,
                    crate::model::proto_name(key.proto),
                    existing.service,
                    fp.service,
                    existing.service
                )),
                Some(_) => {}
                None => {
                    p.frontends.insert(key, fp);
                }
            }
        }
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{services, FrontendKind, DEFAULT_TABLE_SIZE, TCP, UDP};
    use strake_source::dir::{apply_object, parse_documents};
    use strake_source::ClusterState;

    fn state(yaml: &str) -> ClusterState {
        let mut st = ClusterState::default();
        for o in parse_documents(yaml) {
            apply_object(&mut st, o.unwrap()).unwrap();
        }
        st
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
        let (sps, problems) = services(&st, DEFAULT_TABLE_SIZE);
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
        let (sps, _) = services(&st, DEFAULT_TABLE_SIZE);
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
    fn traffic_policies_choose_node_local_sets_and_dsr_applies_to_external_frontends() {
        let st = state(&format!(
            "{PODS}---\napiVersion: v1\nkind: Service\nmetadata: {{namespace: x, name: web, annotations: {{lb.strake.dev/external-mode: dsr}}}}\nspec:\n  type: LoadBalancer\n  clusterIP: 10.96.0.10\n  externalTrafficPolicy: Local\n  selector: {{app: web}}\n  ports: [{{name: http, port: 80, targetPort: http, nodePort: 30080}}]\nstatus: {{loadBalancer: {{ingress: [{{ip: 203.0.113.10}}]}}}}\n"
        ));
        let (sps, _) = services(&st, DEFAULT_TABLE_SIZE);
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
        let cip = &p.frontends[&FrontendKey {
            addr: "10.96.0.10".parse().unwrap(),
            port: 80,
            proto: TCP,
        }];
        assert!(!cip.external && !cip.local);
        assert_eq!(p.sets[&cip.set].members.len(), 2);
    }

    #[test]
    fn bad_annotations_are_reported_and_defaults_used() {
        let st = state(
            "apiVersion: v1\nkind: Service\nmetadata: {namespace: x, name: s, annotations: {lb.strake.dev/scheduler: round-robin, lb.strake.dev/maglev-table-size: \"1000\", lb.strake.dev/health-check-interval: soon}}\nspec: {clusterIP: 10.96.0.11, ports: [{port: 80}]}\n",
        );
        let (sps, problems) = services(&st, DEFAULT_TABLE_SIZE);
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert_eq!(sps[0].table_size, DEFAULT_TABLE_SIZE);
        assert_eq!(sps[0].scheduler, crate::model::Scheduler::Maglev);
    }
}
