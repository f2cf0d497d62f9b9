//! Service load balancing in a real lab: real sockets through the XDP and tc
//! programs, Services and pods changed live through the lab directory.

mod common;

use common::*;
use std::io::Read;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use strake_api::{AgentStatus, LbStatus, Request};
use strake_lab::probe;

const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const LB_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);

fn service(
    ns: &str,
    name: &str,
    vip: Ipv4Addr,
    app: &str,
    extra_spec: &str,
    annotations: &str,
) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  namespace: {ns}\n  name: {name}\n  annotations: {{{annotations}}}\nspec:\n  clusterIP: {vip}\n  selector: {{app: {app}}}\n  ports:\n  - {{name: http, port: 80, targetPort: http, protocol: TCP}}\n  - {{name: dns, port: 80, targetPort: dns, protocol: UDP}}\n{extra_spec}"
    )
}

/// Two nodes; backends w1, w2 on the first, w3 on the second; a client pod
/// on the second.
fn base(prefix: &str) -> Vec<(&'static str, String)> {
    let (a, b) = (format!("{prefix}a"), format!("{prefix}b"));
    vec![
        (
            "nodes.yaml",
            node_yaml(&a, "10.244.1.0/24", "10.0.0.1")
                + "---\n"
                + &node_yaml(&b, "10.244.2.0/24", "10.0.0.2"),
        ),
        ("w1.yaml", pod_yaml(prefix, "w1", &a, "web", false)),
        ("w2.yaml", pod_yaml(prefix, "w2", &a, "web", false)),
        ("w3.yaml", pod_yaml(prefix, "w3", &b, "web", false)),
        (
            "client.yaml",
            pod_yaml(prefix, "client", &b, "client", false),
        ),
    ]
}

fn lb_counter(lab: &strake_lab::Lab, node: &str, name: &str) -> u64 {
    let st: AgentStatus = lab.agent(node, Request::Status).unwrap();
    st.counters
        .iter()
        .find(|c| c.name == name)
        .map(|c| c.packets)
        .unwrap_or(0)
}

#[test]
fn cluster_ip_spreads_3000_connections_evenly_over_backends_on_two_nodes() {
    if !strake_test_support::root() {
        return;
    }
    let mut files = base("ld");
    files.push(("svc.yaml", service("ld", "web", VIP, "web", "", "")));
    let lab = yaml_lab("ld", &files);
    let client = lab.pod_netns("ld", "client");
    for (what, counts) in [
        ("TCP", tcp_spread(&client, addr(VIP, 80), 3000)),
        ("UDP", udp_spread(&client, addr(VIP, 80), 3000)),
    ] {
        assert!(
            !counts.contains_key("!error"),
            "{what}: failures {counts:?}"
        );
        assert_eq!(counts.len(), 3, "{what}: {counts:?}");
        for (backend, n) in &counts {
            assert!(
                (850..=1150).contains(n),
                "{what}: {backend} got {n} of 3000 (expected 1000 +-15%): {counts:?}"
            );
        }
        eprintln!("{what}: {counts:?}");
    }
}

#[test]
fn nodeport_and_load_balancer_ip_from_outside_in_snat_and_dsr_modes() {
    if !strake_test_support::root() {
        return;
    }
    let mut files = base("ex");
    let lb_spec =
        "  type: LoadBalancer\nstatus:\n  loadBalancer:\n    ingress: [{ip: 203.0.113.10}]\n";
    let with_nodeport = |mode: &str| {
        service(
            "ex",
            "public",
            Ipv4Addr::new(10, 96, 0, 11),
            "web",
            lb_spec,
            &format!("lb.strake.dev/external-mode: {mode}"),
        )
        .replace(
            "targetPort: http, protocol: TCP}",
            "targetPort: http, protocol: TCP, nodePort: 30080}",
        )
    };
    files.push(("svc.yaml", with_nodeport("snat")));
    files.push((
        "ext.yaml",
        "apiVersion: lab.strake.dev/v1\nkind: ExternalHost\nmetadata: {name: exc}\nspec: {address: 10.0.0.100}\n".into(),
    ));
    let lab = yaml_lab("ex", &files);
    let ext = lab.ext_netns("exc");
    let targets = [
        addr("10.0.0.1".parse().unwrap(), 30080),
        addr("10.0.0.2".parse().unwrap(), 30080),
        addr(LB_IP, 80),
    ];
    for mode in ["snat", "dsr"] {
        if mode == "dsr" {
            std::fs::write(lab.dir.join("svc.yaml"), with_nodeport("dsr")).unwrap();
            lab.wait_lb(
                "external mode dsr",
                Duration::from_secs(5),
                |s: &LbStatus| {
                    s.services
                        .iter()
                        .any(|x| x.service == "ex/public:http" && x.external_mode == "dsr")
                },
            )
            .unwrap();
        }
        for t in targets {
            let counts = tcp_spread(&ext, t, 60);
            assert!(!counts.contains_key("!error"), "{mode} {t}: {counts:?}");
            assert!(
                counts.len() >= 2,
                "{mode} {t}: reaches several backends {counts:?}"
            );
        }
        let udp = udp_spread(&ext, addr(LB_IP, 80), 30);
        assert!(!udp.contains_key("!error"), "{mode} UDP: {udp:?}");
    }
    // DSR really went by IPIP: the first node wrapped, the second unwrapped
    // and answered directly; SNAT replies were turned back at the first.
    let (a, b) = ("exa", "exb");
    assert!(lb_counter(&lab, a, "lb_encap") > 0, "node a encapsulated");
    assert!(lb_counter(&lab, b, "lb_decap") > 0, "node b decapsulated");
    assert!(lb_counter(&lab, a, "lb_reversed") > 0);
}

#[test]
fn client_ip_affinity_sticks_for_its_timeout_then_may_move() {
    if !strake_test_support::root() {
        return;
    }
    let mut files = base("af");
    let sticky =
        "  sessionAffinity: ClientIP\n  sessionAffinityConfig: {clientIP: {timeoutSeconds: 1}}\n";
    files.push(("svc.yaml", service("af", "web", VIP, "web", sticky, "")));
    let lab = yaml_lab("af", &files);
    let client = lab.pod_netns("af", "client");
    let counts = tcp_spread(&client, addr(VIP, 80), 40);
    assert_eq!(
        counts.len(),
        1,
        "one client, one backend within the timeout: {counts:?}"
    );
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..8 {
        std::thread::sleep(Duration::from_millis(1200));
        seen.extend(tcp_spread(&client, addr(VIP, 80), 1).into_keys());
    }
    assert!(!seen.contains("!error"));
    assert!(
        seen.len() >= 2,
        "after the timeout a client is free to move: {seen:?}"
    );
}

#[test]
fn failing_backends_leave_within_the_health_check_window_and_come_back() {
    if !strake_test_support::root() {
        return;
    }
    let mut files = base("hc");
    files.push((
        "svc.yaml",
        service(
            "hc",
            "web",
            VIP,
            "web",
            "",
            "lb.strake.dev/health-check-interval: 300ms, lb.strake.dev/health-check-timeout: 200ms, lb.strake.dev/health-check-unhealthy-threshold: \"2\"",
        ),
    ));
    let lab = yaml_lab("hc", &files);
    let client = lab.pod_netns("hc", "client");
    let is_active = |want: bool| {
        move |s: &LbStatus| {
            s.services
                .iter()
                .filter(|x| x.service == "hc/web:http")
                .flat_map(|x| &x.backends)
                .any(|b| b.pod.as_deref() == Some("hc/w1") && b.active == want)
        }
    };
    lab.stop_pod_server("hc", "w1");
    let killed = Instant::now();
    // Window: 2 failures x 300 ms + the 200 ms timeout, plus a reconcile.
    lab.wait_lb("w1 out", Duration::from_secs(3), is_active(false))
        .unwrap();
    let took = killed.elapsed();
    assert!(took < Duration::from_millis(1500), "w1 left after {took:?}");
    let counts = tcp_spread(&client, addr(VIP, 80), 200);
    assert!(
        !counts.contains_key("!error"),
        "no failure after the window: {counts:?}"
    );
    assert!(
        !counts.contains_key("hc/w1"),
        "no new connection to the dead backend: {counts:?}"
    );

    lab.start_pod_server(&pod_spec("hc", "w1", "hca", "web"))
        .unwrap();
    lab.wait_lb("w1 back", Duration::from_secs(3), is_active(true))
        .unwrap();
    let counts = tcp_spread(&client, addr(VIP, 80), 200);
    assert!(
        counts.get("hc/w1").copied().unwrap_or(0) > 20,
        "w1 takes traffic again: {counts:?}"
    );
    assert!(!counts.contains_key("!error"), "{counts:?}");
}

#[test]
fn rolling_replacement_never_resets_a_stream_nor_fails_a_new_connection() {
    if !strake_test_support::root() {
        return;
    }
    let mut files = base("rl");
    files.push((
        "svc.yaml",
        service(
            "rl",
            "web",
            VIP,
            "web",
            "",
            "lb.strake.dev/health-check: none",
        ),
    ));
    let lab = Arc::new(yaml_lab("rl", &files));
    let client = lab.pod_netns("rl", "client");

    // A long-lived stream through the service.
    let (stream, backend) = probe::tcp_stream(&client, addr(VIP, 80), T).unwrap();
    let keep = backend.trim_start_matches("rl/").to_string();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let echoed = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (s, stop) = (stream.try_clone().unwrap(), stop.clone());
        std::thread::spawn(move || -> std::io::Result<()> {
            while !stop.load(Ordering::Relaxed) {
                probe::write_all(&s, &[7u8; 1024])?;
                std::thread::sleep(Duration::from_millis(5));
            }
            s.shutdown(std::net::Shutdown::Write)
        })
    };
    let reader = {
        let (mut s, echoed, stop) = (stream.try_clone().unwrap(), echoed.clone(), stop.clone());
        std::thread::spawn(move || -> std::io::Result<()> {
            let mut buf = [0u8; 65536];
            loop {
                match s.read(&mut buf)? {
                    0 if stop.load(Ordering::Relaxed) => return Ok(()),
                    0 => return Err(std::io::Error::other("closed while streaming")),
                    n => echoed.fetch_add(n as u64, Ordering::Relaxed),
                };
            }
        })
    };
    // New connections all the while.
    let failures = Arc::new(AtomicU64::new(0));
    let attempts = Arc::new(AtomicU64::new(0));
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
    let has = |pod: &str, active: bool| {
        let pod = format!("rl/{pod}");
        move |s: &LbStatus| {
            s.services
                .iter()
                .filter(|x| x.service == "rl/web:http")
                .flat_map(|x| &x.backends)
                .any(|b| b.pod.as_deref() == Some(pod.as_str()) && b.active == active)
        }
    };
    let gone = |pod: &str| {
        let pod = format!("rl/{pod}");
        move |s: &LbStatus| {
            !s.services
                .iter()
                .flat_map(|x| &x.backends)
                .any(|b| b.pod.as_deref() == Some(pod.as_str()))
        }
    };
    let t5 = Duration::from_secs(5);
    // Replace every backend but the stream's, one by one: start the new pod,
    // let the old one terminate gracefully, then remove it.
    let nodes = ["rla", "rla", "rlb"];
    let mut n = 10;
    for (i, old) in ["w1", "w2", "w3"].iter().enumerate() {
        if *old == keep {
            continue;
        }
        n += 1;
        let new = format!("w{n}");
        let node = nodes[i];
        std::fs::write(
            lab.dir.join(format!("{new}.yaml")),
            pod_yaml("rl", &new, node, "web", false),
        )
        .unwrap();
        lab.add_pod(&pod_spec("rl", &new, node, "web")).unwrap();
        lab.wait_lb("new pod active", t5, has(&new, true)).unwrap();
        std::fs::write(
            lab.dir.join(format!("{old}.yaml")),
            pod_yaml("rl", old, node, "web", true),
        )
        .unwrap();
        lab.wait_lb("old pod terminating", t5, has(old, false))
            .unwrap();
        std::fs::remove_file(lab.dir.join(format!("{old}.yaml"))).unwrap();
        lab.wait_lb("old pod gone", t5, gone(old)).unwrap();
        lab.del_pod("rl", old, node).unwrap();
        let before = echoed.load(Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(200));
        assert!(
            echoed.load(Ordering::Relaxed) > before,
            "the stream flows after replacing {old}"
        );
    }
    // The stream's own backend terminates gracefully: it keeps the stream,
    // new connections go elsewhere.
    let node = if keep == "w3" { "rlb" } else { "rla" };
    std::fs::write(
        lab.dir.join(format!("{keep}.yaml")),
        pod_yaml("rl", &keep, node, "web", true),
    )
    .unwrap();
    lab.wait_lb("stream's backend terminating", t5, has(&keep, false))
        .unwrap();
    let counts = tcp_spread(&client, addr(VIP, 80), 50);
    assert!(
        !counts.contains_key(&format!("rl/{keep}")),
        "no new flows to a terminating backend: {counts:?}"
    );
    let before = echoed.load(Ordering::Relaxed);
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        echoed.load(Ordering::Relaxed) > before,
        "the stream flows on its terminating backend"
    );

    stop.store(true, Ordering::Relaxed);
    writer
        .join()
        .unwrap()
        .expect("the stream was never reset (writer)");
    reader
        .join()
        .unwrap()
        .expect("the stream was never reset (reader)");
    prober.join().unwrap();
    let (f, a) = (
        failures.load(Ordering::Relaxed),
        attempts.load(Ordering::Relaxed),
    );
    assert!(a > 50, "the prober ran ({a} attempts)");
    assert_eq!(f, 0, "{f} of {a} new connections failed during the rollout");
}

/// kube-proxy's graceful-termination fallback: a Service whose every
/// endpoint is terminating but still serving keeps taking connections;
/// once one is ready, only it gets new ones.
#[test]
fn with_every_endpoint_terminating_new_connections_still_succeed_until_one_is_ready() {
    if !strake_test_support::root() {
        return;
    }
    let mut files = base("gt");
    files.push(("svc.yaml", service("gt", "web", VIP, "web", "", "")));
    let lab = yaml_lab("gt", &files);
    let client = lab.pod_netns("gt", "client");
    let t5 = Duration::from_secs(5);
    let active = |pod: &str| {
        let pod = format!("gt/{pod}");
        move |s: &LbStatus| {
            s.services
                .iter()
                .filter(|x| x.service == "gt/web:http")
                .flat_map(|x| &x.backends)
                .any(|b| b.pod.as_deref() == Some(pod.as_str()) && b.active && b.terminating)
        }
    };
    for (w, node) in [("w1", "gta"), ("w2", "gta"), ("w3", "gtb")] {
        std::fs::write(
            lab.dir.join(format!("{w}.yaml")),
            pod_yaml("gt", w, node, "web", true),
        )
        .unwrap();
    }
    for w in ["w1", "w2", "w3"] {
        lab.wait_lb("every backend terminating, serving", t5, active(w))
            .unwrap();
    }
    let counts = tcp_spread(&client, addr(VIP, 80), 60);
    assert!(!counts.contains_key("!error"), "{counts:?}");
    assert_eq!(
        counts.len(),
        3,
        "all three terminating ones serve: {counts:?}"
    );
    // A ready one arrives: it alone takes new connections.
    std::fs::write(
        lab.dir.join("w9.yaml"),
        pod_yaml("gt", "w9", "gtb", "web", false),
    )
    .unwrap();
    lab.add_pod(&pod_spec("gt", "w9", "gtb", "web")).unwrap();
    lab.wait_lb(
        "the ready one is the only active one",
        t5,
        |s: &LbStatus| {
            s.services
                .iter()
                .filter(|x| x.service == "gt/web:http")
                .all(|x| {
                    x.backends
                        .iter()
                        .all(|b| b.active == (b.pod.as_deref() == Some("gt/w9")))
                })
        },
    )
    .unwrap();
    let counts = tcp_spread(&client, addr(VIP, 80), 30);
    assert_eq!(
        counts.keys().collect::<Vec<_>>(),
        ["gt/w9"],
        "only the ready one: {counts:?}"
    );
}

/// (rejected packets of a frontend, the node's lb_rejected counter).
fn rejected(
    lab: &strake_lab::Lab,
    node: &str,
    addr: Ipv4Addr,
    port: u16,
    proto: &str,
) -> (u64, u64) {
    let st: LbStatus = lab.agent(node, Request::LbList).unwrap();
    let fe = st
        .services
        .iter()
        .filter(|s| s.protocol.eq_ignore_ascii_case(proto))
        .flat_map(|s| &s.frontends)
        .find(|f| f.address == addr && f.port == port)
        .unwrap_or_else(|| panic!("{node} has no frontend {addr}:{port}/{proto}: {st:?}"));
    (fe.rejected, lb_counter(lab, node, "lb_rejected"))
}

#[test]
fn a_service_without_endpoints_is_refused_on_the_packet_path() {
    if !strake_test_support::root() {
        return;
    }
    // An outside client of a NodePort (XDP on the uplink) and a pod opted
    // out of the socket load balancer (tc on its veth): connect() fails
    // with ECONNREFUSED at once, UDP gets ICMP port unreachable (a
    // connected socket's recv fails with ECONNREFUSED), not a timeout.
    let empty = Ipv4Addr::new(10, 96, 0, 30);
    let mut files = base("rj");
    files.push((
        "empty.yaml",
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{namespace: rj, name: empty}}\nspec:\n  type: NodePort\n  clusterIP: {empty}\n  selector: {{app: nothing}}\n  ports:\n  - {{name: http, port: 80, protocol: TCP, nodePort: 30090}}\n  - {{name: dns, port: 80, protocol: UDP, nodePort: 30091}}\n"
        ),
    ));
    files.push((
        "wire.yaml",
        pod_yaml("rj", "wire", "rja", "client", false).replace(
            "labels: {app: client}",
            "labels: {app: client}, annotations: {lb.strake.dev/socket-lb: \"false\"}",
        ),
    ));
    files.push((
        "ext.yaml",
        "apiVersion: lab.strake.dev/v1\nkind: ExternalHost\nmetadata: {name: rjx}\nspec: {address: 10.0.0.100}\n".into(),
    ));
    let lab = yaml_lab("rj", &files);
    let node_a = Ipv4Addr::new(10, 0, 0, 1);
    let refused_fast = |what: &str, attempts: &[strake_lab::probe::Attempt], fast: bool| {
        assert!(!attempts.is_empty());
        for a in attempts {
            assert_eq!(a.errno, Some(libc::ECONNREFUSED), "{what}: {a:?}");
            if fast {
                assert!(a.micros < 100_000, "{what}: refused in under 100 ms: {a:?}");
            }
        }
    };

    let before = (
        rejected(&lab, "rja", Ipv4Addr::UNSPECIFIED, 30090, "TCP"),
        rejected(&lab, "rja", Ipv4Addr::UNSPECIFIED, 30091, "UDP"),
    );
    let ext = lab.ext_netns("rjx");
    let (tcp, udp) = strake_netlink::netns::run_in(&ext, move || {
        Ok((
            probe::client(addr(node_a, 30090), "tcp", 5, Duration::from_secs(2))?,
            probe::client(addr(node_a, 30091), "udp", 3, Duration::from_secs(2))?,
        ))
    })
    .unwrap();
    refused_fast("outside TCP to a NodePort", &tcp, true);
    refused_fast("outside UDP to a NodePort", &udp, true);
    let after = (
        rejected(&lab, "rja", Ipv4Addr::UNSPECIFIED, 30090, "TCP"),
        rejected(&lab, "rja", Ipv4Addr::UNSPECIFIED, 30091, "UDP"),
    );
    // XDP answered, not the node's stack (which would refuse too, had the
    // SYN gone up): counted per frontend.
    assert_eq!(
        after.0 .0 - before.0 .0,
        5,
        "TCP frontend: {before:?} -> {after:?}"
    );
    assert_eq!(
        after.1 .0 - before.1 .0,
        3,
        "UDP frontend: {before:?} -> {after:?}"
    );

    let before = rejected(&lab, "rja", empty, 80, "TCP");
    refused_fast(
        "opted-out pod TCP to a ClusterIP",
        &client(&lab, "rj/wire", addr(empty, 80), "tcp", 5),
        true,
    );
    refused_fast(
        "opted-out pod UDP to a ClusterIP",
        &client(&lab, "rj/wire", addr(empty, 80), "udp", 3),
        true,
    );
    let after = rejected(&lab, "rja", empty, 80, "TCP");
    assert_eq!(after.0 - before.0, 5, "{before:?} -> {after:?}");
    assert!(
        after.1 >= before.1 + 8,
        "lb_rejected: {before:?} -> {after:?}"
    );
}

#[test]
fn load_balancer_source_ranges_admit_a_listed_host_and_drop_another() {
    if !strake_test_support::root() {
        return;
    }
    let mut files = base("sr");
    files.push((
        "svc.yaml",
        service(
            "sr",
            "public",
            Ipv4Addr::new(10, 96, 0, 11),
            "web",
            "  type: LoadBalancer\n  loadBalancerSourceRanges: [10.0.0.100/32]\nstatus:\n  loadBalancer:\n    ingress: [{ip: 203.0.113.10}]\n",
            "",
        )
        .replace(
            "targetPort: http, protocol: TCP}",
            "targetPort: http, protocol: TCP, nodePort: 30080}",
        ),
    ));
    files.push((
        "ext.yaml",
        "apiVersion: lab.strake.dev/v1\nkind: ExternalHost\nmetadata: {name: srok}\nspec: {address: 10.0.0.100}\n---\napiVersion: lab.strake.dev/v1\nkind: ExternalHost\nmetadata: {name: srno}\nspec: {address: 10.0.0.101}\n".into(),
    ));
    let lab = yaml_lab("sr", &files);
    let denied = |lab: &strake_lab::Lab| {
        lb_counter(lab, "sra", "lb_source_denied") + lb_counter(lab, "srb", "lb_source_denied")
    };
    let before = denied(&lab);
    let ok = tcp_spread(&lab.ext_netns("srok"), addr(LB_IP, 80), 20);
    assert!(!ok.contains_key("!error"), "the listed host: {ok:?}");
    assert_eq!(denied(&lab), before, "nothing denied for the listed host");

    let refused = probe::tcp(
        &lab.ext_netns("srno"),
        addr(LB_IP, 80),
        Duration::from_millis(700),
    );
    assert!(
        refused.is_err(),
        "a host outside the ranges got in: {refused:?}"
    );
    let udp = probe::udp(
        &lab.ext_netns("srno"),
        addr(LB_IP, 80),
        Duration::from_millis(700),
    );
    assert!(udp.is_err(), "UDP from outside the ranges: {udp:?}");
    assert!(
        denied(&lab) >= before + 2,
        "the XDP drop is counted: {before} -> {}",
        denied(&lab)
    );
    // The ranges guard the LoadBalancer IP only (as kube-proxy's): the
    // same host still reaches the NodePort.
    let np = tcp_spread(
        &lab.ext_netns("srno"),
        addr(Ipv4Addr::new(10, 0, 0, 1), 30080),
        5,
    );
    assert!(!np.contains_key("!error"), "NodePort: {np:?}");
}

/// GET on a node's healthCheckNodePort from an outside host: (status code,
/// JSON body).
fn hc_get(ns: &std::path::Path, to: std::net::SocketAddrV4) -> Option<(u16, serde_json::Value)> {
    strake_netlink::netns::run_in(ns, move || {
        use std::io::Write;
        let mut s = std::net::TcpStream::connect_timeout(&to.into(), Duration::from_secs(1))?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: lb\r\n\r\n")?;
        let mut r = String::new();
        s.read_to_string(&mut r)?;
        let code = r
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let body = r.split("\r\n\r\n").nth(1).unwrap_or("");
        Ok((code, serde_json::from_str(body)?))
    })
    .ok()
}

#[test]
fn health_check_node_port_answers_200_with_local_endpoints_and_503_without_as_they_move() {
    if !strake_test_support::root() {
        return;
    }
    let (a, b) = ("hna", "hnb");
    let lb_svc = service(
        "hn",
        "public",
        Ipv4Addr::new(10, 96, 0, 11),
        "web",
        "  type: LoadBalancer\n  externalTrafficPolicy: Local\n  healthCheckNodePort: 32000\nstatus:\n  loadBalancer:\n    ingress: [{ip: 203.0.113.10}]\n",
        "",
    );
    let files = vec![
        (
            "nodes.yaml",
            node_yaml(a, "10.244.1.0/24", "10.0.0.1")
                + "---\n"
                + &node_yaml(b, "10.244.2.0/24", "10.0.0.2"),
        ),
        ("w1.yaml", pod_yaml("hn", "w1", a, "web", false)),
        ("svc.yaml", lb_svc),
        (
            "ext.yaml",
            "apiVersion: lab.strake.dev/v1\nkind: ExternalHost\nmetadata: {name: hnx}\nspec: {address: 10.0.0.100}\n".into(),
        ),
    ];
    let lab = yaml_lab("hn", &files);
    let ext = lab.ext_netns("hnx");
    let (on_a, on_b) = (
        addr(Ipv4Addr::new(10, 0, 0, 1), 32000),
        addr(Ipv4Addr::new(10, 0, 0, 2), 32000),
    );
    let expect = |to, code: u16, n: u64| {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let got = hc_get(&ext, to);
            if let Some((c, body)) = &got {
                if *c == code && body["localEndpoints"] == n {
                    assert_eq!(body["service"]["namespace"], "hn", "{body}");
                    assert_eq!(body["service"]["name"], "public", "{body}");
                    assert_eq!(body["serviceProxyHealthy"], true, "{body}");
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "{to}: wanted {code} with {n} local endpoints, got {got:?}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    expect(on_a, 200, 1);
    expect(on_b, 503, 0);
    // The endpoint moves to the other node: so do the answers.
    for w in ["w2", "w3"] {
        std::fs::write(
            lab.dir.join(format!("{w}.yaml")),
            pod_yaml("hn", w, b, "web", false),
        )
        .unwrap();
        lab.add_pod(&pod_spec("hn", w, b, "web")).unwrap();
    }
    std::fs::remove_file(lab.dir.join("w1.yaml")).unwrap();
    lab.del_pod("hn", "w1", a).unwrap();
    expect(on_a, 503, 0);
    expect(on_b, 200, 2);
    // Counted in metrics, per port and code.
    let metrics = strake_netlink::netns::run_in(&lab.node_netns(b), || {
        use std::io::Write;
        let mut s = std::net::TcpStream::connect(("127.0.0.1", strake_lab::AGENT_METRICS_PORT))?;
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: lab\r\n\r\n")?;
        let mut body = String::new();
        s.read_to_string(&mut body)?;
        Ok(body)
    })
    .unwrap();
    assert!(
        metrics.contains("strake_lb_health_check_node_port_local_endpoints{service=\"hn/public\",port=\"32000\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            "strake_lb_health_check_node_port_responses_total{port=\"32000\",code=\"200\"}"
        ),
        "{metrics}"
    );
}

#[test]
fn an_ip_mode_proxy_load_balancer_address_is_not_short_circuited() {
    if !strake_test_support::root() {
        return;
    }
    let mut files = base("im");
    files.push((
        "svc.yaml",
        service(
            "im",
            "public",
            Ipv4Addr::new(10, 96, 0, 11),
            "web",
            "  type: LoadBalancer\nstatus:\n  loadBalancer:\n    ingress: [{ip: 203.0.113.10}, {ip: 203.0.113.20, ipMode: Proxy}]\n",
            "",
        ),
    ));
    files.push((
        "ext.yaml",
        "apiVersion: lab.strake.dev/v1\nkind: ExternalHost\nmetadata: {name: imx}\nspec: {address: 10.0.0.100}\n".into(),
    ));
    let lab = yaml_lab("im", &files);
    let st: LbStatus = lab.agent("ima", Request::LbList).unwrap();
    let lb_ips: Vec<Ipv4Addr> = st
        .services
        .iter()
        .filter(|s| s.service == "im/public:http")
        .flat_map(|s| &s.frontends)
        .filter(|f| f.kind == "LoadBalancer")
        .map(|f| f.address)
        .collect();
    assert_eq!(lb_ips, [LB_IP], "only the VIP-mode address: {st:?}");
    let ext = lab.ext_netns("imx");
    let vip = tcp_spread(&ext, addr(LB_IP, 80), 10);
    assert!(
        !vip.contains_key("!error"),
        "VIP mode is balanced here: {vip:?}"
    );
    // A pod sending to the Proxy-mode address is not translated: it goes
    // toward the load balancer (none in the lab, so it fails).
    let client = lab.pod_netns("im", "client");
    let proxied = tcp_spread(&client, addr(Ipv4Addr::new(203, 0, 113, 20), 80), 1);
    assert_eq!(
        proxied.get("!error"),
        Some(&1),
        "never balanced to a backend: {proxied:?}"
    );
}

#[test]
fn without_xdp_nodeport_and_load_balancer_ip_work_through_the_tc_fallback() {
    if !strake_test_support::root() {
        return;
    }
    // --lb-xdp=false stands in for an uplink without native XDP (a VLAN,
    // a bond, a driver without it): the same north-south Services through
    // tc ingress on the uplink, in SNAT and DSR modes; a Service without
    // endpoints still refused at once; `strake status` says tc serves.
    let mut files = base("tf");
    let lb_spec =
        "  type: LoadBalancer\nstatus:\n  loadBalancer:\n    ingress: [{ip: 203.0.113.10}]\n";
    let with_nodeport = |mode: &str| {
        service(
            "tf",
            "public",
            Ipv4Addr::new(10, 96, 0, 11),
            "web",
            lb_spec,
            &format!("lb.strake.dev/external-mode: {mode}"),
        )
        .replace(
            "targetPort: http, protocol: TCP}",
            "targetPort: http, protocol: TCP, nodePort: 30080}",
        )
    };
    files.push(("svc.yaml", with_nodeport("snat")));
    files.push((
        "empty.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {namespace: tf, name: empty}\nspec:\n  type: NodePort\n  clusterIP: 10.96.0.30\n  selector: {app: nothing}\n  ports:\n  - {name: http, port: 80, protocol: TCP, nodePort: 30090}\n".into(),
    ));
    files.push((
        "ext.yaml",
        "apiVersion: lab.strake.dev/v1\nkind: ExternalHost\nmetadata: {name: tfx}\nspec: {address: 10.0.0.100}\n".into(),
    ));
    files.push((
        "lab.yaml",
        "apiVersion: lab.strake.dev/v1\nkind: Lab\nmetadata: {name: tf}\nspec: {xdp: false}\n"
            .into(),
    ));
    let lab = yaml_lab("tf", &files);
    let (a, b) = ("tfa", "tfb");
    for n in [a, b] {
        let st: AgentStatus = lab.agent(n, Request::Status).unwrap();
        assert_eq!(st.north_south.as_deref(), Some("tc"), "{n}: {st:?}");
        let xdp = st.programs.iter().find(|p| p.name == "xdp_lb").unwrap();
        assert_eq!(xdp.attachments, 0, "{n}: no XDP program on the uplink");
    }
    let ext = lab.ext_netns("tfx");
    let targets = [
        addr("10.0.0.1".parse().unwrap(), 30080),
        addr("10.0.0.2".parse().unwrap(), 30080),
        addr(LB_IP, 80),
    ];
    let translated = lb_counter(&lab, a, "lb_translated");
    for mode in ["snat", "dsr"] {
        if mode == "dsr" {
            std::fs::write(lab.dir.join("svc.yaml"), with_nodeport("dsr")).unwrap();
            lab.wait_lb("external mode dsr", Duration::from_secs(5), |s| {
                s.services
                    .iter()
                    .any(|x| x.service == "tf/public:http" && x.external_mode == "dsr")
            })
            .unwrap();
        }
        for t in targets {
            let counts = tcp_spread(&ext, t, 60);
            assert!(!counts.contains_key("!error"), "{mode} {t}: {counts:?}");
            assert_eq!(
                counts.len(),
                3,
                "{mode} {t}: every backend, on both nodes {counts:?}"
            );
        }
        let udp = udp_spread(&ext, addr(LB_IP, 80), 30);
        assert!(!udp.contains_key("!error"), "{mode} UDP: {udp:?}");
    }
    assert!(
        lb_counter(&lab, a, "lb_translated") > translated,
        "node a's tc translated"
    );
    assert!(lb_counter(&lab, a, "lb_encap") > 0, "DSR wrapped at tc");
    assert!(lb_counter(&lab, b, "lb_decap") > 0);
    let refused = strake_netlink::netns::run_in(&ext, move || {
        probe::client(
            addr("10.0.0.1".parse().unwrap(), 30090),
            "tcp",
            3,
            Duration::from_secs(2),
        )
    })
    .unwrap();
    for r in &refused {
        assert_eq!(r.errno, Some(libc::ECONNREFUSED), "{r:?}");
        assert!(r.micros < 100_000, "refused in under 100 ms: {r:?}");
    }
    assert!(
        lb_counter(&lab, a, "lb_rejected") >= 3,
        "tc refused, not the stack"
    );
}
