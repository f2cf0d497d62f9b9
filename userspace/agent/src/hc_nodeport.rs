//! healthCheckNodePort: for every LoadBalancer Service with
//! `externalTrafficPolicy: Local`, an HTTP endpoint on this node's
//! addresses, as kube-proxy serves it, so a cloud load balancer sends
//! traffic only to nodes with an endpoint of their own: `200` with the
//! number of this node's serving endpoints, `503` without any, and
//! kube-proxy's JSON body and `X-Load-Balancing-Endpoint-Weight` header.
//!
//! Listeners follow the Services: [`run`] compares the ports wanted with
//! those open twice a second; each request reads the count as it is then,
//! so an endpoint moving between nodes shows at the next probe.

use crate::agent::Agent;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use strake_lb::plan::Planner;
use strake_source::ObjectKey;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A health-check port this node should serve: its Service and how many
/// local endpoints serve it (ready, not terminating: a node with only
/// terminating ones answers 503, so load balancers drain it first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HcPort {
    pub service: ObjectKey,
    pub local_endpoints: usize,
}

/// The health-check ports `planner`'s Services want on `node`. Endpoints
/// are counted once per address across the Service's ports.
pub fn wanted(planner: &Planner, node: &str) -> BTreeMap<u16, HcPort> {
    let mut addrs: BTreeMap<u16, (ObjectKey, std::collections::BTreeSet<std::net::Ipv4Addr>)> =
        BTreeMap::new();
    for sp in planner.service_ports() {
        let (Some(port), true) = (sp.health_check_node_port, sp.external_local) else {
            continue;
        };
        let e = addrs
            .entry(port)
            .or_insert_with(|| (sp.service.clone(), Default::default()));
        if e.0 != sp.service {
            continue; // two Services claiming one port: the first keeps it
        }
        e.1.extend(
            sp.backends
                .iter()
                .filter(|b| b.node.as_deref() == Some(node) && b.ready && !b.terminating)
                .map(|b| b.addr.ip),
        );
    }
    addrs
        .into_iter()
        .map(|(p, (service, a))| {
            (
                p,
                HcPort {
                    service,
                    local_endpoints: a.len(),
                },
            )
        })
        .collect()
}

/// The response kube-proxy gives (pkg/proxy/healthcheck's service server).
pub fn response(p: &HcPort) -> Vec<u8> {
    let (code, reason) = if p.local_endpoints > 0 {
        (200, "OK")
    } else {
        (503, "Service Unavailable")
    };
    let body = format!(
        "{{\n\t\"service\": {{\n\t\t\"namespace\": {:?},\n\t\t\"name\": {:?}\n\t}},\n\t\"localEndpoints\": {},\n\t\"serviceProxyHealthy\": true\n}}",
        p.service.namespace, p.service.name, p.local_endpoints
    );
    format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: application/json\r\nX-Content-Type-Options: nosniff\r\nX-Load-Balancing-Endpoint-Weight: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        p.local_endpoints,
        body.len()
    )
    .into_bytes()
}

/// What the listeners answered, for `/metrics`.
#[derive(Default)]
pub struct HcStats {
    /// (port, status code) -> responses.
    pub responses: Mutex<BTreeMap<(u16, u16), u64>>,
    pub listen_errors: AtomicU64,
}

impl HcStats {
    fn count(&self, port: u16, code: u16) {
        *self
            .responses
            .lock()
            .unwrap()
            .entry((port, code))
            .or_default() += 1;
    }
}

fn current(agent: &Agent, port: u16) -> Option<HcPort> {
    let lb = agent.lb.lock().unwrap();
    wanted(&lb.planner, &agent.cfg.node_name).remove(&port)
}

async fn serve_one(agent: Arc<Agent>, port: u16, mut s: tokio::net::TcpStream) {
    // Read the request head (any method and path answers, as kube-proxy's).
    let mut buf = vec![0u8; 4096];
    let mut n = 0;
    let read = tokio::time::timeout(Duration::from_secs(5), async {
        while n < buf.len() {
            match s.read(&mut buf[n..]).await {
                Ok(0) | Err(_) => break,
                Ok(m) => n += m,
            }
            if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                break;
            }
        }
    })
    .await;
    if read.is_err() {
        return;
    }
    let Some(p) = current(&agent, port) else {
        return; // the Service left while the request was on its way
    };
    agent
        .hc_stats
        .count(port, if p.local_endpoints > 0 { 200 } else { 503 });
    let _ = s.write_all(&response(&p)).await;
    let _ = s.shutdown().await;
}

/// Keeps one listener per wanted health-check port, on every address of
/// the node (kube-proxy's default), until the agent exits.
pub async fn run(agent: Arc<Agent>) {
    let mut open: BTreeMap<u16, tokio::task::JoinHandle<()>> = BTreeMap::new();
    let mut warned = std::collections::BTreeSet::new();
    loop {
        let want = {
            let lb = agent.lb.lock().unwrap();
            wanted(&lb.planner, &agent.cfg.node_name)
        };
        open.retain(|port, h| {
            let keep = want.contains_key(port) && !h.is_finished();
            if !keep {
                h.abort();
                tracing::info!(port, "healthCheckNodePort closed");
            }
            keep
        });
        for (port, p) in &want {
            if open.contains_key(port) {
                continue;
            }
            match tokio::net::TcpListener::bind(("0.0.0.0", *port)).await {
                Ok(l) => {
                    warned.remove(port);
                    tracing::info!(port, service = %p.service, "healthCheckNodePort listening");
                    let (a, port) = (agent.clone(), *port);
                    open.insert(
                        port,
                        tokio::spawn(async move {
                            while let Ok((s, _)) = l.accept().await {
                                tokio::spawn(serve_one(a.clone(), port, s));
                            }
                        }),
                    );
                }
                Err(e) => {
                    agent.hc_stats.listen_errors.fetch_add(1, Ordering::Relaxed);
                    if warned.insert(*port) {
                        tracing::warn!(port, service = %p.service, error = %e,
                            "cannot listen on the healthCheckNodePort (another process has it?); retrying");
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use strake_lb::model::{services, ModelOptions};

    fn planner(node: &str, endpoints: &str) -> Planner {
        let st = strake_source::dir::state_from_yaml(&format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{namespace: x, name: web}}\nspec:\n  type: LoadBalancer\n  clusterIP: 10.96.0.10\n  externalTrafficPolicy: Local\n  healthCheckNodePort: 32000\n  ports: [{{name: http, port: 80, nodePort: 30080}}, {{name: dns, port: 53, protocol: UDP, nodePort: 30053}}]\n---\napiVersion: v1\nkind: Service\nmetadata: {{namespace: x, name: cluster}}\nspec: {{type: LoadBalancer, clusterIP: 10.96.0.11, healthCheckNodePort: 32001, ports: [{{port: 80}}]}}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{namespace: x, name: web-1, labels: {{kubernetes.io/service-name: web}}}}\naddressType: IPv4\nports: [{{name: http, port: 8080, protocol: TCP}}, {{name: dns, port: 53, protocol: UDP}}]\nendpoints:\n{endpoints}"
        ))
        .unwrap();
        let (sps, _) = services(&st, &ModelOptions::default());
        let mut p = Planner::new(node);
        let mut by: BTreeMap<ObjectKey, Vec<_>> = BTreeMap::new();
        for sp in sps {
            by.entry(sp.service.clone()).or_default().push(sp);
        }
        for (k, v) in by {
            p.set_service(k, v, &|_| true);
        }
        p
    }

    #[test]
    fn a_node_reports_its_serving_endpoints_once_each_and_503_without_any() {
        let eps = "- {addresses: [10.244.1.5], nodeName: n1, conditions: {ready: true}}\n- {addresses: [10.244.1.6], nodeName: n1, conditions: {ready: false, serving: true, terminating: true}}\n- {addresses: [10.244.2.5], nodeName: n2, conditions: {ready: true}}\n";
        let w = wanted(&planner("n1", eps), "n1");
        assert_eq!(
            w.keys().copied().collect::<Vec<_>>(),
            [32000],
            "only externalTrafficPolicy Local Services have one"
        );
        assert_eq!(
            w[&32000].local_endpoints, 1,
            "one address over two ports; the terminating one does not count"
        );
        let r = String::from_utf8(response(&w[&32000])).unwrap();
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
        assert!(r.contains("X-Load-Balancing-Endpoint-Weight: 1\r\n"), "{r}");
        let body: serde_json::Value =
            serde_json::from_str(r.split("\r\n\r\n").nth(1).unwrap()).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"service": {"namespace": "x", "name": "web"}, "localEndpoints": 1, "serviceProxyHealthy": true})
        );
        let w = wanted(&planner("n3", eps), "n3");
        let r = String::from_utf8(response(&w[&32000])).unwrap();
        assert!(r.starts_with("HTTP/1.1 503 Service Unavailable\r\n"), "{r}");
        assert!(r.contains("\"localEndpoints\": 0"), "{r}");
    }
}
