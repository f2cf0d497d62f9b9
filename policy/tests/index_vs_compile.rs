//! The index kept change by change must say what a compilation from scratch
//! says, after any sequence of Pod, Namespace and NetworkPolicy changes:
//! classes of every address piece, identities of this node's pods, and
//! every verdict entry, compared in terms that do not depend on ids.

use std::net::Ipv4Addr;
use std::sync::Arc;
use strake_policy::compile::compile;
use strake_policy::index::PolicyIndex;
use strake_policy::model::Model;
use strake_source::{Change, ClusterState, Kind, Object, ObjectKey, ObjectRef, Op};

/// xorshift64*: deterministic per seed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        let mut x = self.0.max(1);
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d) % n.max(1)
    }
    fn pick<'a>(&mut self, xs: &[&'a str]) -> &'a str {
        xs[self.below(xs.len() as u64) as usize]
    }
}

fn obj<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> Arc<T> {
    Arc::new(serde_json::from_value(v).expect("valid object"))
}

fn selector(r: &mut Rng) -> serde_json::Value {
    match r.below(4) {
        0 => serde_json::json!({}),
        1 => serde_json::json!({"matchLabels": {"app": r.pick(&["a", "b", "c"])}}),
        2 => {
            serde_json::json!({"matchExpressions": [{"key": "tier", "operator": r.pick(&["In", "NotIn"]), "values": [r.pick(&["web", "db"])]}]})
        }
        _ => {
            serde_json::json!({"matchExpressions": [{"key": "app", "operator": r.pick(&["Exists", "DoesNotExist"])}]})
        }
    }
}

fn peer(r: &mut Rng) -> serde_json::Value {
    match r.below(5) {
        0 => serde_json::json!({"podSelector": selector(r)}),
        1 => {
            serde_json::json!({"namespaceSelector": {"matchLabels": {"team": r.pick(&["red", "blue"])}}})
        }
        2 => serde_json::json!({"namespaceSelector": {}, "podSelector": selector(r)}),
        3 => {
            serde_json::json!({"ipBlock": {"cidr": r.pick(&["10.1.0.0/16", "10.1.1.0/24", "0.0.0.0/0"]),
            "except": [r.pick(&["10.1.1.0/28", "10.1.0.3/32", "10.1.2.0/24"])]}})
        }
        _ => serde_json::json!({"ipBlock": {"cidr": r.pick(&["10.1.0.0/24", "192.168.0.0/16"])}}),
    }
}

fn ports(r: &mut Rng) -> Option<serde_json::Value> {
    let one = |r: &mut Rng| match r.below(4) {
        0 => serde_json::json!({"port": 80}),
        1 => {
            serde_json::json!({"port": 1000, "endPort": 1000 + r.below(300) as i32, "protocol": "UDP"})
        }
        2 => {
            serde_json::json!({"port": r.pick(&["http", "dns", "metrics"]), "protocol": r.pick(&["TCP", "UDP"])})
        }
        _ => serde_json::json!({"protocol": "SCTP"}),
    };
    match r.below(3) {
        0 => None,
        _ => Some(serde_json::json!((0..1 + r.below(2))
            .map(|_| one(r))
            .collect::<Vec<_>>())),
    }
}

fn rule(r: &mut Rng, side: &str) -> serde_json::Value {
    let mut rule = serde_json::json!({});
    if r.below(4) > 0 {
        rule[side] = serde_json::json!((0..1 + r.below(2)).map(|_| peer(r)).collect::<Vec<_>>());
    }
    if let Some(p) = ports(r) {
        rule["ports"] = p;
    }
    rule
}

fn random_op(r: &mut Rng, st: &ClusterState) -> Op {
    let ns = r.pick(&["x", "y", "z"]);
    match r.below(12) {
        0 => Op::Upsert(Object::Namespace(obj(serde_json::json!({
            "metadata": {"name": ns, "labels": {"team": r.pick(&["red", "blue", "none"])}}
        })))),
        1..=5 => {
            let mut status = serde_json::json!({"phase": "Running"});
            if r.below(5) > 0 {
                // A small pool: addresses get reused and shared.
                status["podIP"] =
                    serde_json::json!(format!("10.1.{}.{}", r.below(3), r.below(5) + 1));
            }
            Op::Upsert(Object::Pod(obj(serde_json::json!({
                "metadata": {"namespace": ns, "name": format!("p{}", r.below(6)),
                    "labels": {"app": r.pick(&["a", "b", "c"]), "tier": r.pick(&["web", "db"])}},
                "spec": {"nodeName": r.pick(&["me", "other"]), "hostNetwork": r.below(10) == 0,
                    "containers": [{"name": "c", "ports": [
                        {"name": "http", "containerPort": 8000 + r.below(3) as i32},
                        {"name": "dns", "containerPort": 53, "protocol": "UDP"}]}]},
                "status": status,
            }))))
        }
        6..=9 => {
            let mut spec = serde_json::json!({"podSelector": selector(r)});
            match r.below(4) {
                0 => spec["policyTypes"] = serde_json::json!(["Ingress"]),
                1 => spec["policyTypes"] = serde_json::json!(["Egress"]),
                2 => spec["policyTypes"] = serde_json::json!(["Ingress", "Egress"]),
                _ => {}
            }
            spec["ingress"] =
                serde_json::json!((0..r.below(3)).map(|_| rule(r, "from")).collect::<Vec<_>>());
            spec["egress"] =
                serde_json::json!((0..r.below(3)).map(|_| rule(r, "to")).collect::<Vec<_>>());
            Op::Upsert(Object::NetworkPolicy(obj(serde_json::json!({
                "metadata": {"namespace": ns, "name": format!("np{}", r.below(4))},
                "spec": spec,
            }))))
        }
        _ => {
            let all = st.references();
            if all.is_empty() {
                return Op::Delete(ObjectRef {
                    kind: Kind::Pod,
                    key: ObjectKey::new(ns, "p0"),
                });
            }
            Op::Delete(all[r.below(all.len() as u64) as usize].clone())
        }
    }
}

fn feed(ix: &mut PolicyIndex, c: &Change, st: &ClusterState) {
    let key = &c.reference.key;
    match c.kind() {
        Kind::Pod => ix.set_pod(key, st.pods.get(key).map(|p| &**p)),
        Kind::Namespace => ix.set_namespace(
            &key.name,
            st.namespaces
                .get(&key.name)
                .and_then(|n| n.metadata.labels.as_ref()),
        ),
        Kind::NetworkPolicy => ix.set_policy(key, st.network_policies.get(key).map(|p| &**p)),
        _ => {}
    }
}

fn local_pods(st: &ClusterState) -> Vec<ObjectKey> {
    st.pods_by_node
        .get("me")
        .into_iter()
        .flatten()
        .cloned()
        .collect()
}

#[test]
fn the_index_says_what_a_compilation_from_scratch_says_after_random_changes() {
    let mut nonempty = 0;
    for seed in 1..=300u64 {
        let mut r = Rng(seed);
        let mut st = ClusterState::default();
        let mut ix = PolicyIndex::new("me");
        // Endpoints of this node known before their pods' status says so.
        let known: Vec<(ObjectKey, Ipv4Addr)> =
            vec![(ObjectKey::new("x", "p1"), "10.1.9.1".parse().unwrap())];
        for (k, ip) in &known {
            ix.set_known_ip(k, Some(*ip));
        }
        for step in 0..60 {
            let op = random_op(&mut r, &st);
            if let Some(c) = st.apply(op) {
                feed(&mut ix, &c, &st);
            }
            if step % 7 == 0 {
                ix.take_dirty();
            }
            if step % 10 == 9 || step == 59 {
                let model = Model::build(&st, &known);
                let want = compile(&model, &local_pods(&st)).semantic();
                let got = ix.semantic();
                assert_eq!(
                    got.ipcache, want.ipcache,
                    "seed {seed} step {step}: classes"
                );
                assert_eq!(got.local, want.local, "seed {seed} step {step}: identities");
                assert_eq!(
                    got.unknown, want.unknown,
                    "seed {seed} step {step}: identities of pods not known"
                );
                assert_eq!(
                    got.entries, want.entries,
                    "seed {seed} step {step}: entries"
                );
                nonempty += usize::from(!want.entries.is_empty());
            }
        }
        // And a fresh index over the final state agrees, as a full pass does.
        let fresh = PolicyIndex::from_state("me", &st, &known);
        assert_eq!(fresh.semantic(), ix.semantic(), "seed {seed}: fresh index");
        // Re-syncing the kept index changes nothing.
        ix.take_dirty();
        ix.sync(&st, &known);
        assert_eq!(
            ix.take_dirty(),
            Default::default(),
            "seed {seed}: resync wrote"
        );
    }
    assert!(
        nonempty > 500,
        "the sequences exercise entries ({nonempty})"
    );
}
