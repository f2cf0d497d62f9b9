//! Objects and randomness for the phases' tests.

use std::sync::Arc;
use strake_source::Object;

/// xorshift64*: deterministic per seed, enough to shuffle changes.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        let mut x = self.0.max(1);
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

fn object<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> Arc<T> {
    Arc::new(serde_json::from_value(v).expect("a valid object"))
}

/// A ClusterIP Service on port 80 (target 8080), health checks off; with a
/// selector `app: <app>` when given.
pub fn service(ns: &str, name: &str, cluster_ip: &str, app: Option<&str>) -> Object {
    let mut spec = serde_json::json!({"clusterIP": cluster_ip, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]});
    if let Some(a) = app {
        spec["selector"] = serde_json::json!({"app": a});
    }
    Object::Service(object(serde_json::json!({
        "metadata": {"namespace": ns, "name": name, "annotations": {"lb.strake.dev/health-check": "none"}},
        "spec": spec,
    })))
}

/// An EndpointSlice of `svc` with one port (http 8080) and these
/// (address, ready) endpoints; the n-th endpoint's targetRef is pod `p<n>`,
/// and only the first names its node (the others' come from their pods).
pub fn slice(ns: &str, svc: &str, name: &str, eps: &[(&str, bool)]) -> Object {
    let endpoints: Vec<serde_json::Value> = eps
        .iter()
        .enumerate()
        .map(|(i, (a, r))| {
            let mut e = serde_json::json!({"addresses": [a], "conditions": {"ready": r},
                "targetRef": {"kind": "Pod", "namespace": ns, "name": format!("p{i}")}});
            if i == 0 {
                e["nodeName"] = serde_json::json!("n2");
            }
            e
        })
        .collect();
    Object::EndpointSlice(object(serde_json::json!({
        "metadata": {"namespace": ns, "name": name, "labels": {"kubernetes.io/service-name": svc}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": endpoints,
    })))
}

/// A pod labelled `app: <app>` on `node`, with its IP once known; pods
/// named `p1`, `p3`, ... weigh 2 in the Services they back.
pub fn pod(ns: &str, name: &str, app: &str, node: &str, ip: Option<&str>, ready: bool) -> Object {
    let weight = if name.ends_with(['1', '3', '5']) {
        "2"
    } else {
        "1"
    };
    let mut status = serde_json::json!({"phase": "Running", "conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}}]});
    if let Some(ip) = ip {
        status["podIP"] = serde_json::json!(ip);
    }
    Object::Pod(object(serde_json::json!({
        "metadata": {"namespace": ns, "name": name, "labels": {"app": app},
            "annotations": {"lb.strake.dev/weight": weight}},
        "spec": {"nodeName": node, "containers": [{"name": "c", "ports": [{"name": "http", "containerPort": 8080}]}]},
        "status": status,
    })))
}
