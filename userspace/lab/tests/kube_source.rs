//! The agents on `--source kube` against the lab's stand-in API server:
//! Services reach their backends through the EndpointSlices it writes as the
//! endpoints controller would, and a broken watch or a `410 Gone` (the
//! client relists) in the middle of traffic neither drops a connection nor
//! stops later changes from applying.

mod common;

use common::*;
use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use strake_api::LbStatus;
use strake_lab::LabSource;

const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 20);

fn files(p: &str) -> Vec<(&'static str, String)> {
    let (a, b) = (format!("{p}a"), format!("{p}b"));
    vec![
        (
            "nodes.yaml",
            node_yaml(&a, "10.244.1.0/24", "10.0.0.1")
                + "---\n"
                + &node_yaml(&b, "10.244.2.0/24", "10.0.0.2"),
        ),
        ("w1.yaml", pod_yaml(p, "w1", &a, "web", false)),
        ("w2.yaml", pod_yaml(p, "w2", &a, "web", false)),
        ("w3.yaml", pod_yaml(p, "w3", &b, "web", false)),
        ("client.yaml", pod_yaml(p, "client", &b, "client", false)),
        (
            "svc.yaml",
            format!(
                "apiVersion: v1\nkind: Service\nmetadata: {{namespace: {p}, name: web, annotations: {{lb.strake.dev/health-check: none}}}}\nspec:\n  clusterIP: {VIP}\n  selector: {{app: web}}\n  ports:\n  - {{name: http, port: 80, targetPort: http, protocol: TCP}}\n"
            ),
        ),
    ]
}

fn count(stats: &serde_json::Value, what: &str, kind: &str) -> u64 {
    stats[what][kind].as_u64().unwrap_or(0)
}

#[test]
fn service_traffic_survives_a_broken_watch_and_a_410_relist_and_later_changes_apply() {
    if !strake_test_support::root() {
        return;
    }
    let lab = Arc::new(yaml_lab_on("kw", &files("kw"), Some(LabSource::Kube)));
    let client = lab.pod_netns("kw", "client");
    let counts = tcp_spread(&client, addr(VIP, 80), 300);
    assert!(!counts.contains_key("!error"), "{counts:?}");
    assert_eq!(
        counts.len(),
        3,
        "every backend, from EndpointSlices: {counts:?}"
    );
    let before = lab.kube_api("stats").unwrap();
    assert!(
        count(&before, "watches", "EndpointSlice") >= 2,
        "both agents watch EndpointSlices: {before}"
    );

    // Traffic all the while.
    let stop = Arc::new(AtomicBool::new(false));
    let (failures, attempts) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let prober = {
        let (f, a, stop, client) = (
            failures.clone(),
            attempts.clone(),
            stop.clone(),
            client.clone(),
        );
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let c = tcp_spread(&client, addr(VIP, 80), 5);
                a.fetch_add(5, Ordering::Relaxed);
                f.fetch_add(
                    c.get("!error").copied().unwrap_or(0) as u64,
                    Ordering::Relaxed,
                );
            }
        })
    };
    let t5 = Duration::from_secs(10);
    let backend = |pod: &'static str, active: Option<bool>| {
        move |s: &LbStatus| {
            let found = s
                .services
                .iter()
                .filter(|x| x.service == "kw/web:http")
                .flat_map(|x| &x.backends)
                .find(|b| b.pod.as_deref() == Some(pod));
            match active {
                Some(want) => found.is_some_and(|b| b.active == want),
                None => found.is_none(),
            }
        }
    };

    // 1. Every watch breaks; a change made meanwhile still arrives (the
    // watches resume from their resourceVersion).
    lab.kube_api("disconnect").unwrap();
    std::fs::write(
        lab.dir.join("w1.yaml"),
        pod_yaml("kw", "w1", "kwa", "web", true),
    )
    .unwrap();
    lab.wait_lb(
        "w1 terminating after a broken watch",
        t5,
        backend("kw/w1", Some(false)),
    )
    .unwrap();
    let after_break = lab.kube_api("stats").unwrap();
    assert!(
        count(&after_break, "watches", "Pod") > count(&before, "watches", "Pod"),
        "the agents watched again: {before} -> {after_break}"
    );

    // 2. The history is compacted: every watch gets 410 Gone and the agents
    // relist every kind; nothing they hold changes, so nothing flaps.
    lab.kube_api("expire").unwrap();
    let deadline = std::time::Instant::now() + t5;
    let relisted = loop {
        let s = lab.kube_api("stats").unwrap();
        if [
            "Pod",
            "Service",
            "EndpointSlice",
            "Node",
            "Namespace",
            "NetworkPolicy",
        ]
        .iter()
        .all(|k| count(&s, "lists", k) >= count(&after_break, "lists", k) + 2)
        {
            break s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no relist after 410: {s}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    std::thread::sleep(Duration::from_millis(500));
    lab.wait_synced(t5).unwrap();

    // 3. Later changes apply: w1 goes, w4 comes.
    std::fs::remove_file(lab.dir.join("w1.yaml")).unwrap();
    lab.wait_lb("w1 gone after the relist", t5, backend("kw/w1", None))
        .unwrap();
    lab.del_pod("kw", "w1", "kwa").unwrap();
    std::fs::write(
        lab.dir.join("w4.yaml"),
        pod_yaml("kw", "w4", "kwb", "web", false),
    )
    .unwrap();
    lab.add_pod(&pod_spec("kw", "w4", "kwb", "web")).unwrap();
    lab.wait_lb("w4 active", t5, backend("kw/w4", Some(true)))
        .unwrap();
    lab.wait_synced(t5).unwrap();

    stop.store(true, Ordering::Relaxed);
    prober.join().unwrap();
    let (f, a) = (
        failures.load(Ordering::Relaxed),
        attempts.load(Ordering::Relaxed),
    );
    assert!(a > 50, "the prober ran ({a} attempts)");
    assert_eq!(
        f, 0,
        "{f} of {a} connections failed across the break and the relist ({relisted})"
    );
    let counts = tcp_spread(&client, addr(VIP, 80), 100);
    assert!(!counts.contains_key("!error"), "{counts:?}");
    assert!(
        counts.contains_key("kw/w4") && !counts.contains_key("kw/w1"),
        "{counts:?}"
    );

    // What the agents asked of the API server is exactly what their
    // ClusterRole grants, and what the source declares it asks.
    let asked: BTreeSet<(String, String, String)> =
        serde_json::from_value(lab.kube_api("stats").unwrap()["access"].clone()).unwrap();
    let declared: BTreeSet<(String, String, String)> = strake_source::kube::ACCESS
        .iter()
        .flat_map(|(g, r, verbs)| {
            verbs
                .iter()
                .map(|v| (g.to_string(), r.to_string(), v.to_string()))
        })
        .collect();
    assert_eq!(
        asked, declared,
        "strake_source::kube::ACCESS is what the agents ask for"
    );
    assert_eq!(
        asked,
        cluster_role_grants(),
        "deploy/strake/rbac.yaml grants what the agents ask for, no more"
    );
}

/// Every (group, resource, verb) the agent's ClusterRole grants.
fn cluster_role_grants() -> BTreeSet<(String, String, String)> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/strake/rbac.yaml");
    let text = std::fs::read_to_string(path).unwrap();
    let role = serde_yaml::Deserializer::from_str(&text)
        .map(|d| <serde_json::Value as serde::Deserialize>::deserialize(d).unwrap())
        .find(|v| v["kind"] == "ClusterRole")
        .expect("a ClusterRole in deploy/strake/rbac.yaml");
    let strs = |v: &serde_json::Value| -> Vec<String> {
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|x| x.as_str().map(String::from))
            .collect()
    };
    let mut out = BTreeSet::new();
    for rule in role["rules"].as_array().unwrap() {
        for g in strs(&rule["apiGroups"]) {
            for r in strs(&rule["resources"]) {
                for v in strs(&rule["verbs"]) {
                    out.insert((g.clone(), r.clone(), v));
                }
            }
        }
    }
    out
}
