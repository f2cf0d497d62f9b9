//! The reconcile contract on real agents: a phase whose kernel write fails
//! holds `applied_revision` back, `strake wait` keeps waiting and says which
//! phase failed and why, the phase retries with backoff, and once the cause
//! is gone the revision is applied with no new change.

mod common;

use common::*;
use std::time::{Duration, Instant};
use strake_api::{AgentStatus, PhaseView, Request};

fn routes_phase(st: &AgentStatus) -> PhaseView {
    st.phases
        .iter()
        .find(|p| p.name == "routes")
        .expect("a routes phase")
        .clone()
}

/// `strake wait --lab DIR`, as a user runs it: (succeeded, stderr).
fn strake_wait(dir: &std::path::Path, secs: u64) -> (bool, String) {
    let out = std::process::Command::new(strake_lab::procs::bin("strake").unwrap())
        .args(["wait", "--lab"])
        .arg(dir)
        .args(["--timeout-secs", &secs.to_string()])
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_route_the_kernel_refuses_holds_wait_back_and_is_retried_until_it_goes_in() {
    if !strake_test_support::root() {
        return;
    }
    let lab = yaml_lab(
        "rc",
        &[
            ("a.yaml", node_yaml("rc-a", "10.244.61.0/24", "10.0.61.1")),
            ("b.yaml", node_yaml("rc-b", "10.244.62.0/24", "10.0.61.2")),
            ("p.yaml", pod_yaml("rc", "p", "rc-b", "p", false)),
            // No VXLAN fallback: a node off the subnet gets a direct route.
            (
                "lab.yaml",
                "apiVersion: lab.strake.dev/v1\nkind: Lab\nmetadata: {name: rc}\nspec: {encapsulation: never}\n".into(),
            ),
        ],
    );
    let (ok, _) = strake_wait(&lab.dir, 10);
    assert!(ok, "the lab as brought up is applied");
    // A third node whose InternalIP no interface of rc-a can reach: its
    // route is refused by the kernel (the gateway is not on a local subnet,
    // and encapsulation is off).
    std::fs::write(
        lab.dir.join("c.yaml"),
        node_yaml("rc-c", "10.244.63.0/24", "10.77.0.3"),
    )
    .unwrap();
    let (ok, err) = strake_wait(&lab.dir, 2);
    assert!(!ok, "wait must not return while a route is missing:\n{err}");
    assert!(
        err.contains("rc-a")
            && err.contains("phase routes failed")
            && err.contains("10.244.63.0/24 via 10.77.0.3"),
        "wait names the node, the phase and the route:\n{err}"
    );
    assert!(err.contains("retrying in"), "{err}");

    // Retries back off: 200 ms doubling. Right after failure n, the next
    // retry is more than the previous delay away, and at most this one.
    let deadline = Instant::now() + Duration::from_secs(15);
    let first = routes_phase(&lab.agent("rc-a", Request::Status).unwrap()).failures;
    assert!(first >= 2, "retried while wait ran: {first}");
    let (mut seen, mut longest) = (None, 0);
    let revision = loop {
        let st: AgentStatus = lab.agent("rc-a", Request::Status).unwrap();
        let p = routes_phase(&st);
        assert!(p.applied_revision < st.source_revision);
        assert!(st.applied_revision < st.source_revision, "held back");
        match seen {
            None if p.failures > first => seen = Some(p.failures),
            Some(n) if p.failures == n => longest = longest.max(p.next_run_ms.unwrap_or(0)),
            Some(_) => break st.source_revision,
            None => {}
        }
        assert!(Instant::now() < deadline, "no retries: {p:?}");
        std::thread::sleep(Duration::from_millis(10));
    };
    let n = seen.unwrap();
    let delay = |n: u32| (200u64 << (n - 1)).min(30_000);
    assert!(
        longest > delay(n - 1) && longest <= delay(n),
        "after failure {n} the next retry was {longest} ms away"
    );
    // The other routes went in all the same: pods on rc-b are reachable.
    let ip = lab.pod_ip("rc", "p").unwrap();
    strake_lab::probe::tcp(&lab.node_netns("rc-a"), addr(ip, 80), T)
        .expect("traffic to the reachable node flows");

    // The cause goes away outside the cluster state: both nodes get an
    // address on 10.77.0.0/24. No object changes; the next retry installs
    // the route.
    for (node, ip) in [("rc-a", "10.77.0.1"), ("rc-b", "10.77.0.2")] {
        lab.in_node(node, move |nl| async move {
            let l = nl.link_by_name("eth0").await?.expect("eth0");
            nl.add_address(l.index, ip.parse().unwrap(), 24).await
        })
        .unwrap();
    }
    let (ok, err) = strake_wait(&lab.dir, 40);
    assert!(ok, "{err}");
    assert!(
        err.lines().count() <= 8,
        "wait says what it waits for when that changes, not every poll:\n{err}"
    );
    let st: AgentStatus = lab.agent("rc-a", Request::Status).unwrap();
    assert_eq!(st.source_revision, revision, "no new change arrived");
    assert_eq!(st.applied_revision, revision);
    let p = routes_phase(&st);
    assert_eq!((p.failures, p.last_error), (0, None));
    let routes = lab
        .in_node("rc-a", |nl| async move {
            nl.routes(Some(strake_netlink::STRAKE_ROUTE_PROTO)).await
        })
        .unwrap();
    assert!(
        routes.iter().any(|r| r.dst.to_string() == "10.244.63.0"
            && r.prefix == 24
            && r.gateway == Some("10.77.0.3".parse().unwrap())),
        "{routes:?}"
    );
}
