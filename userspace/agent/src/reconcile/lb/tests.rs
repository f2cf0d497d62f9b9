//! The load balancer phase against an in-memory kernel: what a change
//! writes, id allocation and reuse, restarts, and incremental passes against
//! a from-scratch pass after random changes.

use super::*;
use crate::reconcile::fake::FakeLb;
use crate::reconcile::testutil::{pod, random_op, service, slice, Driven, Rng};
use strake_source::{ObjectRef, Op};

struct Harness {
    kernel: FakeLb,
    driven: Driven<LbPhase<FakeLb>>,
    _dir: tempfile::TempDir,
}

impl std::ops::Deref for Harness {
    type Target = Driven<LbPhase<FakeLb>>;
    fn deref(&self) -> &Self::Target {
        &self.driven
    }
}

impl std::ops::DerefMut for Harness {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.driven
    }
}

fn harness(node: &str) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    harness_in(node, dir, FakeLb::default())
}

fn harness_in(node: &str, dir: tempfile::TempDir, kernel: FakeLb) -> Harness {
    let phase = LbPhase::new(
        kernel.clone(),
        Default::default(),
        Arc::new(HealthChecker::new(None, 0)),
        node,
        ModelOptions::default(),
        dir.path().join("lb-ids.json"),
    );
    Harness {
        kernel,
        driven: Driven::new(phase),
        _dir: dir,
    }
}

impl Harness {
    fn ids(&self) -> Ids {
        self.phase.state.lock().unwrap().ids.clone()
    }
}

fn ip(s: &str) -> u32 {
    addr_key(s.parse().unwrap())
}

#[test]
fn services_from_slices_and_from_selectors_are_installed() {
    let mut h = harness("n1");
    h.apply(Op::Upsert(service("x", "web", "10.96.0.1", Some("web"))));
    h.apply(Op::Upsert(pod(
        "x",
        "a",
        "web",
        "n1",
        Some("10.244.1.5"),
        true,
    )));
    h.apply(Op::Upsert(pod(
        "x",
        "b",
        "web",
        "n2",
        Some("10.244.2.5"),
        true,
    )));
    h.apply(Op::Upsert(service("x", "db", "10.96.0.2", None)));
    h.apply(Op::Upsert(slice(
        "x",
        "db",
        "db-1",
        &[("10.244.1.9", true), ("10.244.2.9", false)],
    )));
    assert!(h.pass(true) > 0);
    let r = h.kernel.maps.lock().unwrap().resolved();
    let web = &r[&(ip("10.96.0.1"), 80u16.to_be(), 6)];
    assert_eq!(web.count, 2);
    assert_eq!(web.table_size, 251);
    assert_eq!(web.table.len(), 251);
    let db = &r[&(ip("10.96.0.2"), 80u16.to_be(), 6)];
    assert_eq!(db.count, 1, "the not-ready endpoint takes no new flows");
    assert_eq!(db.slots[0].0, ip("10.244.1.9"));
    // Ids were saved.
    let saved: Ids = serde_json::from_slice(&std::fs::read(&h.phase.ids_path).unwrap()).unwrap();
    assert_eq!(saved, h.ids());
    assert_eq!(h.pass(false), 0, "nothing changed, nothing written");
}

#[test]
fn one_backend_change_writes_only_that_services_entries() {
    let mut h = harness("n1");
    for i in 0..200 {
        h.apply(Op::Upsert(service(
            "x",
            &format!("s{i}"),
            &format!("10.96.1.{}", i % 250),
            None,
        )));
        h.apply(Op::Upsert(slice(
            "x",
            &format!("s{i}"),
            &format!("s{i}-1"),
            &[(&format!("10.244.{}.{}", i / 200, i % 200 + 1), true)],
        )));
    }
    h.pass(true);
    let before = h.kernel.fault.writes();
    h.apply(Op::Upsert(slice(
        "x",
        "s7",
        "s7-1",
        &[("10.244.0.8", true), ("10.244.9.9", true)],
    )));
    let changes = h.pass(false);
    let writes = h.kernel.fault.writes() - before;
    // A new backend, the set's slots and table, its frontend.
    assert_eq!(changes, 3, "backend, set, frontend");
    assert_eq!(writes, 4, "backend + slots + table + frontend");
}

#[test]
fn ids_are_stable_freed_when_unused_and_reused_lowest_first() {
    let mut h = harness("n1");
    for (n, vip) in [("a", "10.96.0.1"), ("b", "10.96.0.2"), ("c", "10.96.0.3")] {
        h.apply(Op::Upsert(service("x", n, vip, None)));
        h.apply(Op::Upsert(slice(
            "x",
            n,
            &format!("{n}-1"),
            &[(&format!("10.244.1.{}", n.as_bytes()[0]), true)],
        )));
    }
    h.pass(true);
    let ids = h.ids();
    assert_eq!(
        ids.frontends.values().copied().collect::<BTreeSet<_>>(),
        [1, 2, 3].into()
    );
    let b_id = ids.frontends["10.96.0.2:80/6"];
    h.apply(Op::Delete(ObjectRef {
        kind: Kind::Service,
        key: ObjectKey::new("x", "b"),
    }));
    h.pass(false);
    let after = h.ids();
    assert!(!after.frontends.contains_key("10.96.0.2:80/6"));
    assert_eq!(
        after.frontends["10.96.0.1:80/6"], ids.frontends["10.96.0.1:80/6"],
        "others keep theirs"
    );
    assert!(!h.kernel.maps.lock().unwrap().services.contains_key(&(
        ip("10.96.0.2"),
        80u16.to_be(),
        6
    )));
    h.apply(Op::Upsert(service("x", "d", "10.96.0.4", None)));
    h.pass(false);
    assert_eq!(
        h.ids().frontends["10.96.0.4:80/6"],
        b_id,
        "the freed id, lowest first"
    );
}

#[test]
fn a_restarted_agent_keeps_its_ids_and_one_without_its_state_dir_takes_them_from_the_maps() {
    let mut h = harness("n1");
    h.apply(Op::Upsert(service("x", "a", "10.96.0.1", None)));
    h.apply(Op::Upsert(slice(
        "x",
        "a",
        "a-1",
        &[("10.244.1.1", true), ("10.244.1.2", true)],
    )));
    h.apply(Op::Upsert(service("x", "b", "10.96.0.2", None)));
    h.pass(true);
    let ids = h.ids();
    let resolved = h.kernel.maps.lock().unwrap().resolved();
    let objects = h.state.objects();

    // Same state directory: same ids, same kernel.
    let Harness { kernel, _dir, .. } = h;
    let mut h2 = harness_in("n1", _dir, kernel.clone());
    for o in &objects {
        h2.apply(Op::Upsert(o.clone()));
    }
    h2.pass(true);
    assert_eq!(h2.ids(), ids);
    assert_eq!(kernel.maps.lock().unwrap().resolved(), resolved);

    // State directory lost, and a Service deleted while the agent was down:
    // frontend and backend ids come from the maps; the stray frontend goes.
    let mut h3 = harness_in("n1", tempfile::tempdir().unwrap(), kernel.clone());
    for o in objects
        .iter()
        .filter(|o| o.reference().unwrap().key.name != "b")
    {
        h3.apply(Op::Upsert(o.clone()));
    }
    h3.pass(true);
    let ids3 = h3.ids();
    assert_eq!(
        ids3.frontends["10.96.0.1:80/6"],
        ids.frontends["10.96.0.1:80/6"]
    );
    assert_eq!(ids3.backends, ids.backends);
    let maps = kernel.maps.lock().unwrap();
    assert_eq!(
        maps.services.len(),
        1,
        "the deleted Service's frontend is gone"
    );
}

#[test]
fn a_failed_write_is_retried_by_a_full_pass_that_finishes_the_job() {
    let mut h = harness("n1");
    h.apply(Op::Upsert(service("x", "a", "10.96.0.1", None)));
    h.apply(Op::Upsert(slice("x", "a", "a-1", &[("10.244.1.1", true)])));
    h.pass(true);
    h.kernel.fault.set(true);
    h.apply(Op::Upsert(slice(
        "x",
        "a",
        "a-1",
        &[("10.244.1.1", true), ("10.244.1.2", true)],
    )));
    let e = h.try_pass(false).unwrap_err();
    assert!(format!("{e:#}").contains("No space left"), "{e:#}");
    h.kernel.fault.set(false);
    h.pass(true);
    let r = h.kernel.maps.lock().unwrap().resolved();
    assert_eq!(r[&(ip("10.96.0.1"), 80u16.to_be(), 6)].count, 2);
}

/// Random changes of every kind (the phase is shown those it reads), with
/// incremental passes in between: the kernel ends as a fresh agent's full
/// pass over the final state leaves its own, ids aside.
#[test]
fn incremental_passes_match_a_pass_from_scratch_after_random_changes() {
    for seed in 1..=150u64 {
        let mut rng = Rng(seed);
        let mut h = harness("n1");
        h.pass(true);
        for step in 0..40 {
            let op = random_op(&mut rng, &h.state);
            h.apply(op);
            if rng.below(3) == 0 || step == 39 {
                h.pass(false);
            }
        }
        let mut fresh = harness("n1");
        for o in h.state.objects() {
            fresh.apply(Op::Upsert(o));
        }
        fresh.pass(true);
        let (a, b) = (
            h.kernel.maps.lock().unwrap().resolved(),
            fresh.kernel.maps.lock().unwrap().resolved(),
        );
        assert_eq!(a, b, "seed {seed}");
        // The planners agree too (what lb list shows).
        let pa = h.phase.state.lock().unwrap().planner.plan();
        let pb = fresh.phase.state.lock().unwrap().planner.plan();
        assert_eq!(pa, pb, "seed {seed}");
    }
}

#[test]
fn load_balancer_source_ranges_are_written_for_the_load_balancer_ip_and_follow_changes() {
    let lb = |ranges: serde_json::Value| {
        let mut spec = serde_json::json!({"type": "LoadBalancer", "clusterIP": "10.96.0.1",
            "selector": {"app": "web"},
            "ports": [{"name": "http", "port": 80, "targetPort": 8080, "nodePort": 30080}]});
        if !ranges.is_null() {
            spec["loadBalancerSourceRanges"] = ranges;
        }
        strake_source::Object::Service(Arc::new(
            serde_json::from_value(serde_json::json!({
                "metadata": {"namespace": "x", "name": "web", "annotations": {"lb.strake.dev/health-check": "none"}},
                "spec": spec,
                "status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.10"}]}},
            }))
            .unwrap(),
        ))
    };
    let mut h = harness("n1");
    h.apply(Op::Upsert(pod(
        "x",
        "a",
        "web",
        "n1",
        Some("10.244.1.5"),
        true,
    )));
    h.apply(Op::Upsert(lb(serde_json::json!([
        "198.51.100.0/24",
        "10.0.0.100/32"
    ]))));
    h.pass(false);
    let fid = |h: &Harness, addr: &str, port: u16| {
        h.ids().frontends[&fkey(&FrontendKey {
            addr: addr.parse().unwrap(),
            port,
            proto: strake_lb::model::TCP,
        })]
    };
    let lb_fid = fid(&h, "203.0.113.10", 80);
    let flags = |h: &Harness, addr: &str, port: u16| {
        h.kernel.maps.lock().unwrap().services[&(ip(addr), port.to_be(), 6)].flags
    };
    assert_ne!(
        flags(&h, "203.0.113.10", 80) & STRAKE_SVC_F_SOURCE_RANGES,
        0
    );
    assert_eq!(
        h.kernel
            .maps
            .lock()
            .unwrap()
            .source_ranges
            .get(&lb_fid)
            .cloned(),
        Some(vec![
            ("10.0.0.100".parse().unwrap(), 32),
            ("198.51.100.0".parse().unwrap(), 24)
        ])
    );
    assert_eq!(
        flags(&h, "0.0.0.0", 30080) & STRAKE_SVC_F_SOURCE_RANGES,
        0,
        "the NodePort is not filtered (kube-proxy filters the LoadBalancer IP)"
    );
    assert_eq!(h.kernel.maps.lock().unwrap().source_ranges.len(), 1);

    h.apply(Op::Upsert(lb(serde_json::json!(["10.0.0.100/32"]))));
    h.pass(false);
    assert_eq!(
        h.kernel.maps.lock().unwrap().source_ranges[&lb_fid],
        vec![("10.0.0.100".parse().unwrap(), 32)]
    );
    h.apply(Op::Upsert(lb(serde_json::Value::Null)));
    h.pass(false);
    assert_eq!(
        flags(&h, "203.0.113.10", 80) & STRAKE_SVC_F_SOURCE_RANGES,
        0
    );
    assert!(h.kernel.maps.lock().unwrap().source_ranges.is_empty());
}
