//! The runner's rules (docs/reconcile.md), with phases that only count and
//! fail on demand, and a clock the test moves.

use super::*;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use strake_source::{ObjectKey, ObjectRef};

#[derive(Clone, Default)]
struct Probe {
    passes: Arc<AtomicUsize>,
    full_passes: Arc<AtomicUsize>,
    fail: Arc<AtomicBool>,
    wait: Arc<Mutex<Option<String>>>,
    requeue: Option<Duration>,
}

struct Counting {
    name: &'static str,
    kinds: KindSet,
    probe: Probe,
}

impl Phase for Counting {
    fn name(&self) -> &'static str {
        self.name
    }
    fn kinds(&self) -> KindSet {
        self.kinds
    }
    fn reconcile(&mut self, pass: &Pass<'_>) -> anyhow::Result<Outcome> {
        self.probe.passes.fetch_add(1, Ordering::SeqCst);
        if pass.full {
            self.probe.full_passes.fetch_add(1, Ordering::SeqCst);
        }
        if self.probe.fail.load(Ordering::SeqCst) {
            anyhow::bail!("writing st_svc: No space left on device (os error 28)");
        }
        if let Some(r) = self.probe.wait.lock().unwrap().clone() {
            return Ok(Outcome::Waiting {
                after: Duration::from_secs(1),
                reason: r,
            });
        }
        Ok(Outcome::Applied {
            changes: 1,
            requeue_after: self.probe.requeue,
        })
    }
}

fn change(kind: Kind) -> Change {
    Change {
        reference: ObjectRef {
            kind,
            key: ObjectKey::new("x", "y"),
        },
        old: None,
        new: None,
    }
}

fn two_phases() -> (Runner, Probe, Probe) {
    let (a, b) = (Probe::default(), Probe::default());
    let r = Runner::new(
        vec![
            Box::new(Counting {
                name: "routes",
                kinds: KindSet::of(&[Kind::Node]),
                probe: a.clone(),
            }),
            Box::new(Counting {
                name: "lb",
                kinds: KindSet::of(&[Kind::Service]),
                probe: b.clone(),
            }),
        ],
        Backoff::default(),
    );
    (r, a, b)
}

#[test]
fn the_first_round_is_full_and_later_ones_run_only_touched_phases() {
    let (mut r, routes, lb) = two_phases();
    let st = ClusterState::default();
    let t0 = Instant::now();
    assert_eq!(r.run(&st, 1, t0).applied_revision, 1);
    assert_eq!(routes.full_passes.load(Ordering::SeqCst), 1);
    assert_eq!(lb.full_passes.load(Ordering::SeqCst), 1);
    r.note(&change(Kind::Service), &st);
    let round = r.run(&st, 2, t0);
    assert_eq!(
        round.applied_revision, 2,
        "an untouched phase applies it as is"
    );
    assert_eq!(routes.passes.load(Ordering::SeqCst), 1);
    assert_eq!(lb.passes.load(Ordering::SeqCst), 2);
    assert_eq!(
        lb.full_passes.load(Ordering::SeqCst),
        1,
        "a change is not a full pass"
    );
    r.note(&change(Kind::Pod), &st);
    r.run(&st, 3, t0);
    assert_eq!(
        routes.passes.load(Ordering::SeqCst) + lb.passes.load(Ordering::SeqCst),
        3,
        "no phase reads pods"
    );
    r.resync();
    r.run(&st, 3, t0);
    assert_eq!(routes.full_passes.load(Ordering::SeqCst), 2);
    assert_eq!(lb.full_passes.load(Ordering::SeqCst), 2);
}

#[test]
fn a_failing_phase_holds_the_revision_back_and_retries_with_backoff_until_it_recovers() {
    let (mut r, routes, lb) = two_phases();
    let st = ClusterState::default();
    let t0 = Instant::now();
    r.run(&st, 1, t0);
    lb.fail.store(true, Ordering::SeqCst);
    r.note(&change(Kind::Service), &st);
    let round = r.run(&st, 2, t0);
    assert_eq!(round.applied_revision, 1, "revision 2 is not in the kernel");
    let s = &r.states()[1];
    assert_eq!(s.failures, 1);
    assert!(s.last_error.as_ref().unwrap().contains("No space left"));
    assert_eq!(round.next_wake, Some(t0 + Duration::from_millis(200)));

    // Other phases go on; a new change does not cut the backoff short.
    r.note(&change(Kind::Node), &st);
    r.note(&change(Kind::Service), &st);
    let round = r.run(&st, 3, t0 + Duration::from_millis(100));
    assert_eq!(routes.passes.load(Ordering::SeqCst), 2);
    assert_eq!(lb.passes.load(Ordering::SeqCst), 2, "still backing off");
    assert_eq!(round.applied_revision, 1);
    assert_eq!(r.states()[0].applied_revision, 3);

    // Retries: 200 ms, then 400, then 800, each a full pass.
    let mut t = t0 + Duration::from_millis(200);
    for (n, delay) in [(2, 400), (3, 800)] {
        let round = r.run(&st, 3, t);
        assert_eq!(r.states()[1].failures, n);
        assert_eq!(round.next_wake, Some(t + Duration::from_millis(delay)));
        assert_eq!(round.applied_revision, 1);
        t += Duration::from_millis(delay);
    }
    assert_eq!(
        lb.full_passes.load(Ordering::SeqCst),
        1 + 2,
        "retries are full passes"
    );

    // The fault clears; the due retry applies revision 3, with no new change.
    lb.fail.store(false, Ordering::SeqCst);
    let round = r.run(&st, 3, t);
    assert_eq!(round.applied_revision, 3);
    let s = &r.states()[1];
    assert_eq!(
        (s.failures, s.last_error.clone(), s.next_run),
        (0, None, None)
    );
}

#[test]
fn backoff_doubles_up_to_its_cap() {
    let b = Backoff::default();
    assert_eq!(b.delay(1), Duration::from_millis(200));
    assert_eq!(b.delay(2), Duration::from_millis(400));
    assert_eq!(b.delay(8), Duration::from_millis(25_600));
    assert_eq!(b.delay(9), Duration::from_secs(30));
    assert_eq!(b.delay(1000), Duration::from_secs(30));
}

#[test]
fn a_waiting_phase_is_not_applied_and_runs_again_on_a_change_or_when_due() {
    let (mut r, routes, _lb) = two_phases();
    let st = ClusterState::default();
    let t0 = Instant::now();
    *routes.wait.lock().unwrap() = Some("no interface holds 10.0.0.1".into());
    let round = r.run(&st, 1, t0);
    assert_eq!(round.applied_revision, 0);
    assert!(r.states()[0].waiting.is_some());
    assert_eq!(r.states()[0].failures, 0, "waiting is not failing");
    r.run(&st, 1, t0 + Duration::from_millis(10));
    assert_eq!(
        routes.passes.load(Ordering::SeqCst),
        1,
        "not due, not touched"
    );
    r.note(&change(Kind::Node), &st);
    r.run(&st, 2, t0 + Duration::from_millis(20));
    assert_eq!(
        routes.passes.load(Ordering::SeqCst),
        2,
        "a change may be what it waits for"
    );
    *routes.wait.lock().unwrap() = None;
    let round = r.run(&st, 2, t0 + Duration::from_secs(2));
    assert_eq!(round.applied_revision, 2);
    assert!(r.states()[0].waiting.is_none());
}

#[test]
fn a_requeued_phase_runs_again_when_due_and_counts_as_applied_meanwhile() {
    let p = Probe {
        requeue: Some(Duration::from_secs(10)),
        ..Default::default()
    };
    let mut r = Runner::new(
        vec![Box::new(Counting {
            name: "conntrack-gc",
            kinds: KindSet::of(&[]),
            probe: p.clone(),
        })],
        Backoff::default(),
    );
    let st = ClusterState::default();
    let t0 = Instant::now();
    let round = r.run(&st, 1, t0);
    assert_eq!(round.next_wake, Some(t0 + Duration::from_secs(10)));
    assert_eq!(
        r.run(&st, 2, t0 + Duration::from_secs(1)).applied_revision,
        2
    );
    assert_eq!(p.passes.load(Ordering::SeqCst), 1);
    r.run(&st, 2, t0 + Duration::from_secs(10));
    assert_eq!(p.passes.load(Ordering::SeqCst), 2);
}

/// The agent's phases over in-memory kernels, one of which starts failing:
/// what `strake wait` sees while it fails, the backoff, and the recovery
/// without a new change.
#[test]
fn an_injected_kernel_failure_holds_wait_back_names_the_phase_and_heals_by_retry() {
    use super::fake::{FakeLb, FakePolicy};
    use super::lb::LbPhase;
    use super::policy::PolicyPhase;
    use crate::status::phase_views;
    use strake_api::{wait_reason, SyncPoint};
    use strake_source::Op;

    let dir = tempfile::tempdir().unwrap();
    let lb_kernel = FakeLb::default();
    let policy_kernel = FakePolicy::default();
    let mut runner = Runner::new(
        vec![
            Box::new(super::routes::tests::phase(
                &super::routes::tests::FakeTable::default(),
                "n1",
            )),
            Box::new(LbPhase::new(
                lb_kernel.clone(),
                Default::default(),
                Arc::new(strake_lb::health::HealthChecker::new(None, 0)),
                "n1",
                Default::default(),
                dir.path().join("lb-ids.json"),
            )),
            Box::new(PolicyPhase::new(
                policy_kernel.clone(),
                Default::default(),
                "n1",
            )),
        ],
        Backoff::default(),
    );
    let mut st = strake_source::dir::state_from_yaml(
        "apiVersion: v1\nkind: Node\nmetadata: {name: n1}\nspec: {podCIDR: 10.244.1.0/24}\nstatus: {addresses: [{type: InternalIP, address: 10.0.0.1}]}\n",
    )
    .unwrap();
    let apply = |st: &mut ClusterState, runner: &mut Runner, op: Op| {
        let c = st.apply(op).unwrap();
        st.revision += 1;
        runner.note(&c, st);
    };
    apply(
        &mut st,
        &mut runner,
        Op::Upsert(super::testutil::service("x", "web", "10.96.0.1", None)),
    );
    apply(
        &mut st,
        &mut runner,
        Op::Upsert(super::testutil::slice(
            "x",
            "web",
            "web-1",
            &[("10.244.1.5", true)],
        )),
    );
    let target = SyncPoint {
        position: 0,
        exact: true,
    };
    let wait = |runner: &Runner, st: &ClusterState, applied: u64, now: Instant| {
        wait_reason(
            true,
            0,
            st.revision,
            applied,
            &phase_views(&runner.states(), now),
            &target,
            true,
        )
    };
    let t0 = Instant::now();
    let round = runner.run(&st, st.revision, t0);
    assert_eq!(round.applied_revision, st.revision);
    assert_eq!(wait(&runner, &st, round.applied_revision, t0), Ok(()));

    // The load balancer's maps stop taking writes; a backend is added.
    lb_kernel.fault.set(true);
    apply(
        &mut st,
        &mut runner,
        Op::Upsert(super::testutil::slice(
            "x",
            "web",
            "web-1",
            &[("10.244.1.5", true), ("10.244.1.6", true)],
        )),
    );
    let round = runner.run(&st, st.revision, t0);
    assert_eq!(round.applied_revision, st.revision - 1, "held back");
    let why = wait(&runner, &st, round.applied_revision, t0).unwrap_err();
    assert!(
        why.contains("phase lb failed (1 in a row)")
            && why.contains("No space left on device")
            && why.contains("retrying in 200 ms"),
        "{why}"
    );
    assert!(!why.contains("routes") && !why.contains("policy"), "{why}");

    // Backoff: no retry before 200 ms; then 400 ms to the next one.
    let writes = lb_kernel.fault.writes();
    runner.run(&st, st.revision, t0 + Duration::from_millis(150));
    assert_eq!(runner.states()[1].failures, 1);
    let round = runner.run(&st, st.revision, t0 + Duration::from_millis(200));
    assert_eq!(runner.states()[1].failures, 2);
    assert_eq!(round.next_wake, Some(t0 + Duration::from_millis(600)));
    let why = wait(
        &runner,
        &st,
        round.applied_revision,
        t0 + Duration::from_millis(200),
    )
    .unwrap_err();
    assert!(
        why.contains("(2 in a row)") && why.contains("retrying in 400 ms"),
        "{why}"
    );
    assert_eq!(lb_kernel.fault.writes(), writes, "nothing got through");

    // The fault clears; the due retry applies the revision, no new change.
    lb_kernel.fault.set(false);
    let round = runner.run(&st, st.revision, t0 + Duration::from_millis(600));
    assert_eq!(round.applied_revision, st.revision);
    assert_eq!(
        wait(
            &runner,
            &st,
            round.applied_revision,
            t0 + Duration::from_millis(600)
        ),
        Ok(())
    );
    let maps = lb_kernel.maps.lock().unwrap();
    let svc = maps.resolved();
    assert_eq!(
        svc.values().next().unwrap().count,
        2,
        "the new backend is in"
    );
}

/// Two runners over in-memory kernels, with the load balancer and policy
/// phases: one applies random Service, EndpointSlice, Pod, Namespace and
/// NetworkPolicy changes as they come, in rounds of incremental passes; the
/// other starts from the final state with one full round. They must leave
/// the same kernel (ids aside), for every seed.
#[test]
fn incremental_rounds_and_a_round_from_scratch_leave_the_same_kernel() {
    use super::fake::{FakeLb, FakePolicy};
    use super::lb::LbPhase;
    use super::policy::{PolicyPhase, PolicyState};
    use super::testutil::{random_op, Rng};

    struct Node {
        runner: Runner,
        lb: FakeLb,
        policy: Arc<Mutex<PolicyState>>,
        _dir: tempfile::TempDir,
    }
    fn node() -> Node {
        let dir = tempfile::tempdir().unwrap();
        let lb = FakeLb::default();
        let policy: Arc<Mutex<PolicyState>> = Default::default();
        let runner = Runner::new(
            vec![
                Box::new(LbPhase::new(
                    lb.clone(),
                    Default::default(),
                    Arc::new(strake_lb::health::HealthChecker::new(None, 0)),
                    "n1",
                    Default::default(),
                    dir.path().join("lb-ids.json"),
                )),
                Box::new(PolicyPhase::new(
                    FakePolicy::default(),
                    policy.clone(),
                    "n1",
                )),
            ],
            Backoff::default(),
        );
        Node {
            runner,
            lb,
            policy,
            _dir: dir,
        }
    }
    let t0 = Instant::now();
    for seed in 1..=100u64 {
        let mut rng = Rng(seed);
        let mut st = ClusterState::default();
        let mut a = node();
        a.runner.run(&st, 0, t0);
        for step in 0..60 {
            if let Some(c) = st.apply(random_op(&mut rng, &st)) {
                st.revision += 1;
                a.runner.note(&c, &st);
            }
            if rng.below(4) == 0 || step == 59 {
                let round = a.runner.run(&st, st.revision, t0);
                assert_eq!(round.applied_revision, st.revision);
            }
        }
        let mut b = node();
        let fresh = ClusterState::from_objects(st.objects());
        b.runner.run(&fresh, 1, t0);
        assert_eq!(
            a.lb.maps.lock().unwrap().resolved(),
            b.lb.maps.lock().unwrap().resolved(),
            "seed {seed}: load balancer"
        );
        let sem = |n: &Node| n.policy.lock().unwrap().index.as_ref().unwrap().semantic();
        assert_eq!(sem(&a), sem(&b), "seed {seed}: policy");
    }
}
