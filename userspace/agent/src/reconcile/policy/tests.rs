//! The policy phase against an in-memory kernel: what a pod or policy
//! change writes, identities for CNI ADD, and the kernel after incremental
//! passes against a pass from scratch.

use super::*;
use crate::reconcile::fake::FakePolicy;
use crate::reconcile::testutil::{namespace, pod, policy, random_op, Driven, Rng};
use strake_source::Op;

struct Harness {
    kernel: FakePolicy,
    driven: Driven<PolicyPhase<FakePolicy>>,
}

impl std::ops::Deref for Harness {
    type Target = Driven<PolicyPhase<FakePolicy>>;
    fn deref(&self) -> &Self::Target {
        &self.driven
    }
}

impl std::ops::DerefMut for Harness {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.driven
    }
}

fn harness() -> Harness {
    let kernel = FakePolicy::default();
    Harness {
        driven: Driven::new(PolicyPhase::new(kernel.clone(), Default::default(), "n1")),
        kernel,
    }
}

impl Harness {
    /// Attaches an endpoint for a pod, as CNI ADD does: its record, and an
    /// entry with the identity policy has for it.
    fn attach(&mut self, ns: &str, name: &str, ip: &str) {
        let key = ObjectKey::new(ns, name);
        let ip: Ipv4Addr = ip.parse().unwrap();
        self.kernel.local.lock().unwrap().push(LocalEndpoint {
            pod: Some(key.clone()),
            endpoint_id: 1,
            ip,
        });
        let (identity, f) = self.phase.state.lock().unwrap().endpoint_policy(Some(&key));
        self.kernel
            .maps
            .lock()
            .unwrap()
            .endpoints
            .insert(ip, (identity, f));
        self.phase.note_local(&LocalEvent::Endpoint(Some(key)));
    }
    fn endpoint(&self, ip: &str) -> (u32, u32) {
        self.kernel.maps.lock().unwrap().endpoints[&ip.parse().unwrap()]
    }
    /// The kernel's maps must hold exactly what the index says.
    fn assert_kernel_is_index(&self) {
        let ps = self.phase.state.lock().unwrap();
        let ix = ps.index.as_ref().unwrap();
        let m = self.kernel.maps.lock().unwrap();
        assert_eq!(&m.ipcache, ix.ipcache(), "ipcache");
        let want: BTreeMap<VerdictKey, u32> = ix
            .entries()
            .iter()
            .map(|(k, v)| (verdict_key(k), *v))
            .collect();
        assert_eq!(m.verdicts, want, "verdicts");
        for l in self.kernel.local.lock().unwrap().iter() {
            if let Some(have) = m.endpoints.get(&l.ip) {
                assert_eq!(
                    *have,
                    ps.endpoint_policy(l.pod.as_ref()),
                    "endpoint {}",
                    l.ip
                );
            }
        }
    }
}

const ISO_IN: u32 = STRAKE_EP_F_ANTISPOOF | STRAKE_EP_F_INGRESS_ISOLATED;

#[test]
fn add_reads_the_identity_policy_compiled_for_the_pod_and_a_label_change_moves_it() {
    let mut h = harness();
    h.apply(Op::Upsert(namespace("x", "red")));
    h.apply(Op::Upsert(pod("x", "db", "db", "n1", None, true)));
    h.apply(Op::Upsert(pod(
        "x",
        "web",
        "web",
        "n2",
        Some("10.244.2.5"),
        true,
    )));
    h.apply(Op::Upsert(policy("x", "db", Some("db"), "web", 5432, None)));
    h.pass(true);
    // ADD of x/db: its identity is known before its address is.
    h.attach("x", "db", "10.244.1.7");
    let (id, f) = h.endpoint("10.244.1.7");
    assert_ne!(id, 0);
    assert_eq!(f, ISO_IN);
    h.pass(false);
    h.assert_kernel_is_index();
    // x/web may reach x/db on 5432: an entry for (identity, class of x/web).
    {
        let ps = h.phase.state.lock().unwrap();
        let ix = ps.index.as_ref().unwrap();
        let class = strake_policy::compile::class_of(ix.ipcache(), "10.244.2.5".parse().unwrap());
        let rule =
            strake_policy::compile::lookup(ix.entries(), id, class, Direction::Ingress, 6, 5432);
        assert!(rule.is_some());
        assert!(
            strake_policy::compile::lookup(ix.entries(), id, class, Direction::Ingress, 6, 80)
                .is_none()
        );
    }
    // x/db's labels change: no policy selects it any more.
    h.apply(Op::Upsert(pod("x", "db", "cache", "n1", None, true)));
    assert!(h.pass(false) > 0);
    assert_eq!(
        h.endpoint("10.244.1.7").1,
        STRAKE_EP_F_ANTISPOOF,
        "no longer isolated"
    );
    h.assert_kernel_is_index();
}

/// A pod attached before its Pod object arrives fails closed: in a
/// namespace whose policies could select it, ADD gives it the namespace's
/// identity for pods not known (isolated, allowed what every pod of the
/// namespace is), a policy change there rewrites it, and its object's
/// arrival gives it its own.
#[test]
fn a_pod_attached_before_its_object_is_isolated_wherever_a_policy_could_select_it() {
    let mut h = harness();
    h.apply(Op::Upsert(pod(
        "x",
        "web",
        "web",
        "n2",
        Some("10.244.2.5"),
        true,
    )));
    h.pass(true);
    // No policy in x: nothing could select it.
    h.attach("x", "early", "10.244.1.8");
    assert_eq!(h.endpoint("10.244.1.8"), (0, STRAKE_EP_F_ANTISPOOF));
    h.pass(false);
    // A policy selecting db pods could select it: isolated, no entry lets
    // x/web in (it may not be a db pod).
    h.apply(Op::Upsert(policy("x", "db", Some("db"), "web", 5432, None)));
    assert!(h.pass(false) > 0);
    let (id, f) = h.endpoint("10.244.1.8");
    assert_eq!(f, ISO_IN, "isolated before its labels are known");
    assert_ne!(id, 0);
    let allowed = |h: &Harness, id: u32, port: u16| {
        let ps = h.phase.state.lock().unwrap();
        let ix = ps.index.as_ref().unwrap();
        let class = strake_policy::compile::class_of(ix.ipcache(), "10.244.2.5".parse().unwrap());
        strake_policy::compile::lookup(ix.entries(), id, class, Direction::Ingress, 6, port)
            .is_some()
    };
    assert!(!allowed(&h, id, 5432));
    h.assert_kernel_is_index();
    // A second ADD in x reads the same identity.
    h.attach("x", "early2", "10.244.1.9");
    assert_eq!(h.endpoint("10.244.1.9"), (id, ISO_IN));
    // A policy selecting every pod of x applies to it.
    h.apply(Op::Upsert(policy("x", "all", None, "web", 80, None)));
    h.pass(false);
    let (id, f) = h.endpoint("10.244.1.8");
    assert_eq!(f, ISO_IN);
    assert!(allowed(&h, id, 80));
    assert!(!allowed(&h, id, 5432));
    h.assert_kernel_is_index();
    // Its object arrives: a db pod, its own identity with both rules.
    h.apply(Op::Upsert(pod(
        "x",
        "early",
        "db",
        "n1",
        Some("10.244.1.8"),
        true,
    )));
    h.pass(false);
    let (own, f) = h.endpoint("10.244.1.8");
    assert_eq!(f, ISO_IN);
    assert!(allowed(&h, own, 5432) && allowed(&h, own, 80));
    h.assert_kernel_is_index();
}

#[test]
fn one_label_change_among_a_thousand_pods_writes_a_handful_of_entries() {
    let mut h = harness();
    for i in 0..1000 {
        let app = ["web", "db", "cache"][i % 3];
        h.apply(Op::Upsert(pod(
            "x",
            &format!("p{i}"),
            app,
            if i < 20 { "n1" } else { "n2" },
            Some(&format!("10.244.{}.{}", i / 250, i % 250 + 1)),
            true,
        )));
    }
    h.apply(Op::Upsert(policy("x", "db", Some("db"), "web", 5432, None)));
    h.apply(Op::Upsert(policy(
        "x",
        "cache",
        Some("cache"),
        "db",
        6379,
        Some("10.0.0.0/8"),
    )));
    h.pass(true);
    let writes = h.kernel.fault.writes();
    // p4 (a web pod elsewhere) becomes a db pod.
    h.apply(Op::Upsert(pod(
        "x",
        "p4",
        "db",
        "n2",
        Some("10.244.0.5"),
        true,
    )));
    let changes = h.pass(false);
    let written = h.kernel.fault.writes() - writes;
    assert!(
        changes <= 3 && written <= 3,
        "{changes} changes, {written} writes"
    );
    h.assert_kernel_is_index();
}

/// Random Pod, Namespace and NetworkPolicy changes (and others the phase
/// ignores), each batch followed by an incremental pass: the kernel holds
/// what the index holds, and the index what a fresh one over the final
/// state holds.
#[test]
fn incremental_passes_match_a_pass_from_scratch_after_random_changes() {
    for seed in 1..=150u64 {
        let mut rng = Rng(seed);
        let mut h = harness();
        h.pass(true);
        for step in 0..50 {
            let op = random_op(&mut rng, &h.state);
            h.apply(op);
            if step == 10 {
                h.attach("x", "p1", "10.244.0.201");
            }
            if rng.below(3) == 0 || step == 49 {
                h.pass(false);
            }
        }
        h.assert_kernel_is_index();
        let mut fresh = harness();
        for o in h.state.objects() {
            fresh.apply(Op::Upsert(o));
        }
        fresh
            .kernel
            .local
            .lock()
            .unwrap()
            .extend(h.kernel.local.lock().unwrap().clone());
        fresh.pass(true);
        let a = h
            .phase
            .state
            .lock()
            .unwrap()
            .index
            .as_ref()
            .unwrap()
            .semantic();
        let b = fresh
            .phase
            .state
            .lock()
            .unwrap()
            .index
            .as_ref()
            .unwrap()
            .semantic();
        assert_eq!(a, b, "seed {seed}");
    }
}
