//! Which Service addresses a node announces, as MetalLB's and Cilium's BGP
//! modes do: a LoadBalancer ingress address or an externalIP, when it lies
//! inside the ranges the `BGPConfiguration` allows, and the Service has a
//! ready endpoint that traffic arriving at this node may use: on this node
//! for `externalTrafficPolicy: Local`, anywhere for `Cluster`. The ranges
//! are the guard against a Service claiming someone else's address (a
//! fabric-wide hijack otherwise: any Service author could announce the API
//! server's IP).

use crate::bird::Announcement;
use crate::model::BgpConfig;
use ipnetwork::Ipv4Network;
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use strake_lb::model::{service_ports, FrontendKind, ModelOptions};
use strake_source::ClusterState;

/// The Service addresses node `me` announces, with why.
pub fn service_announcements(
    state: &ClusterState,
    me: &str,
    cfg: &BgpConfig,
    opts: &ModelOptions,
) -> Vec<Announcement> {
    if cfg.service_load_balancer_ips.is_empty() && cfg.service_external_ips.is_empty() {
        return Vec::new();
    }
    let inside = |nets: &[Ipv4Network], ip: Ipv4Addr| nets.iter().any(|n| n.contains(ip));
    let mut out: BTreeMap<Ipv4Addr, String> = BTreeMap::new();
    for (key, svc) in &state.services {
        let mut problems = Vec::new();
        for port in service_ports(state, key, svc, opts, &mut problems) {
            let usable = port.backends.iter().any(|b| {
                b.ready && !b.terminating && (!port.external_local || b.node.as_deref() == Some(me))
            });
            if !usable {
                continue;
            }
            let policy = if port.external_local {
                "Local"
            } else {
                "Cluster"
            };
            for f in &port.frontends {
                let (allowed, what) = match f.kind {
                    FrontendKind::LoadBalancer => (
                        inside(&cfg.service_load_balancer_ips, f.addr),
                        "LoadBalancer",
                    ),
                    FrontendKind::ExternalIp => {
                        (inside(&cfg.service_external_ips, f.addr), "externalIP")
                    }
                    _ => continue,
                };
                if allowed {
                    out.entry(f.addr)
                        .or_insert_with(|| format!("Service {key} {what} ({policy})"));
                }
            }
        }
    }
    out.into_iter()
        .map(|(ip, why)| Announcement {
            net: Ipv4Network::new(ip, 32).expect("a /32"),
            why,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SERVICES: &str = r#"
apiVersion: v1
kind: Service
metadata: {namespace: web, name: local}
spec:
  selector: {app: web}
  externalTrafficPolicy: Local
  type: LoadBalancer
  ports: [{port: 80}]
status: {loadBalancer: {ingress: [{ip: 203.0.113.10}]}}
---
apiVersion: v1
kind: Service
metadata: {namespace: web, name: cluster}
spec:
  selector: {app: web}
  type: LoadBalancer
  externalIPs: [198.51.100.7, 8.8.8.8]
  ports: [{port: 80}]
status: {loadBalancer: {ingress: [{ip: 203.0.113.11}, {ip: 192.0.2.99}]}}
---
apiVersion: v1
kind: Service
metadata: {namespace: web, name: nobody}
spec:
  selector: {app: none}
  type: LoadBalancer
  ports: [{port: 80}]
status: {loadBalancer: {ingress: [{ip: 203.0.113.12}]}}
"#;

    fn pod(name: &str, node: &str, ready: bool) -> String {
        format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata: {{namespace: web, name: {name}, labels: {{app: web}}}}\n\
             spec: {{nodeName: {node}, containers: [{{name: c, ports: [{{containerPort: 80}}]}}]}}\n\
             status: {{podIP: 10.244.{}.5, phase: Running, conditions: [{{type: Ready, status: '{}'}}]}}\n",
            if node == "a" { 1 } else { 2 },
            if ready { "True" } else { "False" }
        )
    }

    fn announced(yaml: &str, me: &str) -> Vec<String> {
        let st = strake_source::dir::state_from_yaml(yaml).unwrap();
        let cfg = BgpConfig {
            service_load_balancer_ips: vec!["203.0.113.0/24".parse().unwrap()],
            service_external_ips: vec!["198.51.100.0/24".parse().unwrap()],
            ..Default::default()
        };
        let opts = ModelOptions {
            endpoints_from_pods: true,
            ..Default::default()
        };
        service_announcements(&st, me, &cfg, &opts)
            .into_iter()
            .map(|a| format!("{} {}", a.net, a.why))
            .collect()
    }

    #[test]
    fn local_services_from_nodes_with_an_endpoint_cluster_ones_from_every_node() {
        let yaml = format!("{SERVICES}{}", pod("w1", "a", true));
        assert_eq!(
            announced(&yaml, "a"),
            vec![
                "198.51.100.7/32 Service web/cluster externalIP (Cluster)",
                "203.0.113.10/32 Service web/local LoadBalancer (Local)",
                "203.0.113.11/32 Service web/cluster LoadBalancer (Cluster)",
            ]
        );
        assert_eq!(
            announced(&yaml, "b"),
            vec![
                "198.51.100.7/32 Service web/cluster externalIP (Cluster)",
                "203.0.113.11/32 Service web/cluster LoadBalancer (Cluster)",
            ],
            "b has no endpoint of the Local Service"
        );
    }

    #[test]
    fn addresses_outside_the_allowed_ranges_are_never_announced() {
        let yaml = format!("{SERVICES}{}", pod("w1", "a", true));
        let all = announced(&yaml, "a").join("\n");
        assert!(
            !all.contains("8.8.8.8") && !all.contains("192.0.2.99"),
            "{all}"
        );
        let st = strake_source::dir::state_from_yaml(&yaml).unwrap();
        let off = service_announcements(&st, "a", &BgpConfig::default(), &ModelOptions::default());
        assert!(off.is_empty(), "no ranges, no announcements: {off:?}");
    }

    #[test]
    fn announcements_are_withdrawn_when_the_endpoints_go() {
        let yaml = format!("{SERVICES}{}", pod("w1", "a", false));
        assert!(
            announced(&yaml, "a").is_empty(),
            "a not-ready endpoint is none"
        );
        assert!(announced(SERVICES, "a").is_empty());
    }
}
