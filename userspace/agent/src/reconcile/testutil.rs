//! Objects and randomness for the phases' tests.

use super::{Outcome, Pass, Phase};
use std::sync::Arc;
use strake_source::{ClusterState, Object, Op};

/// One phase and the cluster state it is shown, as the runner would show
/// it: changes of the kinds it reads, and passes with rising revisions.
pub struct Driven<P: Phase> {
    pub phase: P,
    pub state: ClusterState,
    pub revision: u64,
}

impl<P: Phase> Driven<P> {
    pub fn new(phase: P) -> Self {
        Driven {
            phase,
            state: ClusterState::default(),
            revision: 0,
        }
    }

    /// Applies an operation; the phase notes the change if it reads its kind.
    pub fn apply(&mut self, op: Op) {
        if let Some(c) = self.state.apply(op) {
            if self.phase.kinds().contains(c.kind()) {
                self.phase.note(&c, &self.state);
            }
        }
    }

    /// One pass at the next revision.
    pub fn try_pass(&mut self, full: bool) -> anyhow::Result<Outcome> {
        self.revision += 1;
        self.phase.reconcile(&Pass {
            state: &self.state,
            full,
            revision: self.revision,
        })
    }

    /// One pass that must apply; returns the writes it made.
    pub fn pass(&mut self, full: bool) -> usize {
        match self.try_pass(full).unwrap() {
            Outcome::Applied { changes, .. } => changes,
            o => panic!("{o:?}"),
        }
    }
}

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

/// A Namespace with a `team` label.
pub fn namespace(name: &str, team: &str) -> Object {
    Object::Namespace(object(serde_json::json!({
        "metadata": {"name": name, "labels": {"team": team}},
    })))
}

/// A NetworkPolicy of `ns` selecting `app: <app>` (every pod for `None`),
/// letting in pods `app: <from>` (or namespaces with `team: <from>` when
/// `from` starts with `team=`) on TCP `port`, and, with `egress_to`,
/// isolating egress except to that CIDR.
pub fn policy(
    ns: &str,
    name: &str,
    app: Option<&str>,
    from: &str,
    port: u16,
    egress_to: Option<&str>,
) -> Object {
    let sel = match app {
        Some(a) => serde_json::json!({"matchLabels": {"app": a}}),
        None => serde_json::json!({}),
    };
    let peer = match from.strip_prefix("team=") {
        Some(t) => serde_json::json!({"namespaceSelector": {"matchLabels": {"team": t}}}),
        None => serde_json::json!({"podSelector": {"matchLabels": {"app": from}}}),
    };
    let mut spec = serde_json::json!({
        "podSelector": sel,
        "ingress": [{"from": [peer], "ports": [{"port": port}]}],
    });
    if let Some(cidr) = egress_to {
        spec["policyTypes"] = serde_json::json!(["Ingress", "Egress"]);
        spec["egress"] = serde_json::json!([{"to": [{"ipBlock": {"cidr": cidr}}]}]);
    }
    Object::NetworkPolicy(object(serde_json::json!({
        "metadata": {"namespace": ns, "name": name},
        "spec": spec,
    })))
}

/// One random change of any kind the agent reads (Service, EndpointSlice,
/// Pod, Namespace, NetworkPolicy), or a deletion of something there.
pub fn random_op(rng: &mut Rng, st: &strake_source::ClusterState) -> strake_source::Op {
    use strake_source::{Kind, ObjectKey, ObjectRef, Op};
    let svc = format!("s{}", rng.below(4));
    let ns = ["x", "y"][rng.below(2) as usize];
    let app = ["web", "db"][rng.below(2) as usize];
    match rng.below(16) {
        0 | 1 => Op::Upsert(service(
            ns,
            &svc,
            &format!("10.96.{}.{}", rng.below(2), rng.below(5) + 1),
            [None, Some("web"), Some("db")][rng.below(3) as usize],
        )),
        2 | 3 => {
            let eps: Vec<(String, bool)> = (0..rng.below(4))
                .map(|_| {
                    (
                        format!("10.244.{}.{}", rng.below(2), rng.below(6) + 1),
                        rng.below(4) > 0,
                    )
                })
                .collect();
            let eps: Vec<(&str, bool)> = eps.iter().map(|(a, r)| (a.as_str(), *r)).collect();
            Op::Upsert(slice(ns, &svc, &format!("{svc}-{}", rng.below(2)), &eps))
        }
        4..=7 => Op::Upsert(pod(
            ns,
            &format!("p{}", rng.below(6)),
            app,
            ["n1", "n2"][rng.below(2) as usize],
            (rng.below(5) > 0)
                .then(|| format!("10.244.{}.{}", rng.below(2), rng.below(6) + 1))
                .as_deref(),
            rng.below(4) > 0,
        )),
        8 => Op::Upsert(namespace(ns, ["red", "blue"][rng.below(2) as usize])),
        9..=11 => Op::Upsert(policy(
            ns,
            &format!("np{}", rng.below(3)),
            [None, Some("web"), Some("db")][rng.below(3) as usize],
            ["web", "db", "team=red", "team=blue"][rng.below(4) as usize],
            [80, 8080][rng.below(2) as usize],
            [None, Some("10.244.0.0/24"), Some("0.0.0.0/0")][rng.below(3) as usize],
        )),
        _ => {
            let all: Vec<ObjectRef> = st.references();
            if all.is_empty() {
                return Op::Delete(ObjectRef {
                    kind: Kind::Pod,
                    key: ObjectKey::new(ns, "p0"),
                });
            }
            Op::Delete(all[rng.below(all.len() as u64) as usize].clone())
        }
    }
}
