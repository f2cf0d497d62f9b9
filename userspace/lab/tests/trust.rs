//! The attacks of docs/threat-model.md against a real lab: real nodes,
//! agents, programs and sockets.

mod common;

use common::*;
use std::net::Ipv4Addr;
use std::time::Duration;
use strake_api::{AgentStatus, LbStatus, Request};
use strake_lab::{probe, procs};

const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 20);

fn counter(lab: &strake_lab::Lab, node: &str, name: &str) -> u64 {
    let st: AgentStatus = lab.agent(node, Request::Status).unwrap();
    st.counters
        .iter()
        .find(|c| c.name == name)
        .map(|c| c.packets)
        .unwrap_or_else(|| panic!("no counter {name}"))
}

/// `nc -z -p <sport> <to> 80` from a node's namespace: whether it connected.
fn nc_from_port(lab: &strake_lab::Lab, node: &str, sport: u16, to: Ipv4Addr) -> bool {
    let out = procs::run_in_netns(
        &lab.node_netns(node),
        "nc",
        &[
            "-z",
            "-w",
            "2",
            "-p",
            &sport.to_string(),
            &to.to_string(),
            "80",
        ],
    )
    .unwrap();
    out.status.success()
}

fn pod(ns: &str, name: &str, node: &str, labels: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{namespace: {ns}, name: {name}, labels: {{{labels}}}}}\nspec:\n  nodeName: {node}\n  containers:\n  - name: c\n    ports: [{{name: http, containerPort: 80, protocol: TCP}}]\n"
    )
}

/// The attack that opened issue 9: from another node, a connection to a
/// policy-isolated pod from a health-check source port. And the agents' own
/// checks of that pod, which must keep working through the same policy.
#[test]
fn health_check_ports_let_nothing_past_a_policy_and_the_real_checks_still_fail_over() {
    if !strake_test_support::root() {
        return;
    }
    let (a, b) = ("hpa", "hpb");
    let files = vec![
        (
            "nodes.yaml",
            node_yaml(a, "10.244.1.0/24", "10.0.0.1") + "---\n" + &node_yaml(b, "10.244.2.0/24", "10.0.0.2"),
        ),
        ("w1.yaml", pod("hp", "w1", a, "app: web")),
        ("w3.yaml", pod("hp", "w3", b, "app: web")),
        ("client.yaml", pod("hp", "client", b, "app: client")),
        (
            "svc.yaml",
            format!(
                "apiVersion: v1\nkind: Service\nmetadata:\n  namespace: hp\n  name: web\n  annotations: {{lb.strake.dev/health-check-interval: 300ms, lb.strake.dev/health-check-timeout: 200ms}}\nspec:\n  clusterIP: {VIP}\n  selector: {{app: web}}\n  ports: [{{name: http, port: 80, targetPort: http}}]\n"
            ),
        ),
        (
            "policy.yaml",
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {namespace: hp, name: web-from-client}\nspec:\n  podSelector: {matchLabels: {app: web}}\n  policyTypes: [Ingress]\n  ingress: [{from: [{podSelector: {matchLabels: {app: client}}}]}]\n"
                .to_string(),
        ),
    ];
    let lab = yaml_lab("hp", &files);
    let w1 = lab.pod_ip("hp", "w1").unwrap();
    let client = lab.pod_netns("hp", "client");
    assert!(
        probe::tcp(&client, addr(w1, 80), T).is_ok(),
        "the allowed client reaches w1"
    );

    // Node b's processes, whatever port they bind: the old range (inside
    // the NodePort range), the new one, and an ordinary port.
    for sport in [32100, 61001, 61254, 45000] {
        assert!(
            !nc_from_port(&lab, b, sport, w1),
            "nc -p {sport} from node {b} must not reach the isolated w1"
        );
    }
    // The same nc on w1's own node is the node reaching its pod (kubelet).
    assert!(
        nc_from_port(&lab, a, 61002, w1),
        "nc works; the node itself is let in"
    );

    // Every agent's checks pass through the policy: node b probes w1 by
    // health-check encapsulation, which node a unwraps.
    std::thread::sleep(Duration::from_millis(1500));
    let all_healthy = |s: &LbStatus| {
        s.services
            .iter()
            .filter(|x| x.service == "hp/web:http")
            .flat_map(|x| &x.backends)
            .all(|b| b.healthy && b.health_error.is_none())
    };
    for n in [a, b] {
        let st: LbStatus = lab.agent(n, Request::LbList).unwrap();
        assert!(all_healthy(&st), "node {n}: {:?}", st.services);
    }
    assert!(
        counter(&lab, b, "hc_encap") > 0,
        "node {b} wrapped its probes"
    );
    assert!(counter(&lab, a, "hc_decap") > 0, "node {a} unwrapped them");
    assert!(
        counter(&lab, a, "hc_encap") > 0 && counter(&lab, b, "hc_decap") > 0,
        "and the other way"
    );

    // Failover and recovery, seen by both nodes.
    let w1_active = |want: bool| {
        move |s: &LbStatus| {
            s.services
                .iter()
                .filter(|x| x.service == "hp/web:http")
                .flat_map(|x| &x.backends)
                .any(|b| b.pod.as_deref() == Some("hp/w1") && b.active == want)
        }
    };
    lab.stop_pod_server("hp", "w1");
    lab.wait_lb(
        "w1 out on every node",
        Duration::from_secs(3),
        w1_active(false),
    )
    .unwrap();
    let counts = tcp_spread(&client, addr(VIP, 80), 50);
    assert_eq!(
        counts.get("hp/w3"),
        Some(&50),
        "only w3 while w1 is down: {counts:?}"
    );
    lab.start_pod_server(&strake_lab::PodSpec {
        namespace: "hp".into(),
        name: "w1".into(),
        node: a.into(),
        labels: [("app".to_string(), "web".to_string())].into(),
        tcp_ports: vec![80],
        udp_ports: vec![],
    })
    .unwrap();
    lab.wait_lb(
        "w1 back on every node",
        Duration::from_secs(3),
        w1_active(true),
    )
    .unwrap();
    let counts = tcp_spread(&client, addr(VIP, 80), 100);
    assert!(
        counts.get("hp/w1").copied().unwrap_or(0) > 10,
        "w1 takes traffic again: {counts:?}"
    );
    assert!(!counts.contains_key("!error"), "{counts:?}");
}

/// A pod that ran to completion keeps its object (and its old IP in status)
/// until it is deleted; its IP is free, and a new pod in another namespace
/// may get it. Policy must judge the new pod by its own labels.
#[test]
fn a_dead_pods_ip_reused_by_a_new_pod_is_judged_by_the_new_pods_labels() {
    if !strake_test_support::root() {
        return;
    }
    let (a, b) = ("dpa", "dpb");
    let files = vec![
        (
            "nodes.yaml",
            node_yaml(a, "10.244.1.0/24", "10.0.0.1") + "---\n" + &node_yaml(b, "10.244.2.0/24", "10.0.0.2"),
        ),
        ("db.yaml", pod("dpdb", "db", b, "app: db")),
        ("trusted.yaml", pod("dpapps", "trusted", a, "role: trusted")),
        ("newpod.yaml", pod("dpapps", "newpod", a, "role: untrusted")),
        (
            "policy.yaml",
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {namespace: dpdb, name: db-from-trusted}\nspec:\n  podSelector: {matchLabels: {app: db}}\n  ingress: [{from: [{namespaceSelector: {}, podSelector: {matchLabels: {role: trusted}}}]}]\n"
                .to_string(),
        ),
    ];
    let lab = yaml_lab("dp", &files);
    let db = lab.pod_ip("dpdb", "db").unwrap();
    let reused = lab.pod_ip("dpapps", "newpod").unwrap();
    let (trusted, newpod) = (
        lab.pod_netns("dpapps", "trusted"),
        lab.pod_netns("dpapps", "newpod"),
    );
    assert!(
        probe::tcp(&trusted, addr(db, 80), T).is_ok(),
        "trusted reaches db"
    );
    assert!(
        probe::tcp(&newpod, addr(db, 80), T).is_err(),
        "untrusted does not"
    );

    // A completed Job's pod, trusted, whose IP the new pod got (its
    // namespace sorts after the new pod's, so a last-wins table picks it).
    std::fs::write(
        lab.dir.join("old.yaml"),
        pod("dpzbatch", "old", a, "role: trusted")
            + &format!(
                "status: {{phase: Succeeded, podIP: {reused}, podIPs: [{{ip: {reused}}}]}}\n"
            ),
    )
    .unwrap();
    lab.wait_synced(Duration::from_secs(10)).unwrap();
    for _ in 0..3 {
        assert!(
            probe::tcp(&newpod, addr(db, 80), T).is_err(),
            "the new pod holds no identity of the dead one"
        );
    }
    assert!(probe::tcp(&trusted, addr(db, 80), T).is_ok());
}

/// strake routes no IPv6: the node's side of a pod's veth takes no router
/// advertisement, no address, and no IPv6 at all.
#[test]
fn the_nodes_side_of_a_pods_veth_has_no_ipv6() {
    if !strake_test_support::root() {
        return;
    }
    let lab = lab(
        "v6",
        &[N {
            name: "v6a",
            cidr: "10.244.1.0/24",
            ip: "10.0.0.1",
        }],
        &[P {
            ns: "v6",
            name: "p",
            node: "v6a",
        }],
    );
    let eps: Vec<strake_api::EndpointView> = lab.agent("v6a", Request::Endpoints).unwrap();
    let host = eps[0].host_ifname.clone();
    let read = |k: &str| {
        let out = procs::run_in_netns(
            &lab.node_netns("v6a"),
            "cat",
            &[&format!("/proc/sys/net/ipv6/conf/{host}/{k}")],
        )
        .unwrap();
        assert!(
            out.status.success(),
            "{host}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(read("disable_ipv6"), "1");
    assert_eq!(read("accept_ra"), "0");
    assert_eq!(read("autoconf"), "0");
    let out = procs::run_in_netns(
        &lab.node_netns("v6a"),
        "ip",
        &["-6", "addr", "show", "dev", &host],
    )
    .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).trim().is_empty(),
        "no IPv6 address on {host}"
    );
}

/// Runs `f` with this thread's effective uid set to `uid`: the raw syscall
/// changes only the calling thread (libc's setresuid would change them all),
/// and the saved uid (root) lets it change back. A unix socket records the
/// effective uid at connect(2): what the agent sees as the caller.
fn as_uid<R>(uid: u32, f: impl FnOnce() -> R) -> R {
    let keep = libc::uid_t::MAX;
    // SAFETY: setresuid has no memory effects.
    assert_eq!(
        unsafe { libc::syscall(libc::SYS_setresuid, keep, uid, keep) },
        0
    );
    let r = f();
    assert_eq!(
        unsafe { libc::syscall(libc::SYS_setresuid, keep, 0, keep) },
        0
    );
    r
}

fn raise_fd_limit(n: u64) {
    let lim = libc::rlimit {
        rlim_cur: n,
        rlim_max: n,
    };
    // SAFETY: a plain struct passed by pointer.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) }, 0);
}

fn agent_alive(lab: &strake_lab::Lab, node: &str) -> bool {
    let pid = lab.agent_pid(node).expect("agent pid") as i32;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok()
}

/// What an unprivileged user on the node, a huge request and a request that
/// never ends do to the agent: nothing that stops it or keeps it from
/// serving the CNI plugin.
#[test]
fn the_agent_api_refuses_strangers_unread_bounds_requests_and_keeps_serving_cni() {
    if !strake_test_support::root() {
        return;
    }
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;
    let node = "apia";
    let lab = lab(
        "api",
        &[N {
            name: node,
            cidr: "10.244.1.0/24",
            ip: "10.0.0.1",
        }],
        &[P {
            ns: "api",
            name: "p0",
            node,
        }],
    );
    // The file-descriptor limit of a typical service: more connections than
    // it allows are about to arrive.
    let pid = lab.agent_pid(node).unwrap().to_string();
    let out = std::process::Command::new("prlimit")
        .args(["--pid", &pid, "--nofile=1024:1024"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "prlimit: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    raise_fd_limit(8192);
    let ns = lab.node_netns(node);
    let connect = || {
        let addr = strake_api::socket_addr(strake_api::DEFAULT_SOCKET).unwrap();
        UnixStream::connect_addr(&addr)
    };

    // 1,100 connections from uid 65534, held open: each refused at once,
    // before anything is read.
    let strangers = strake_netlink::netns::run_in(&ns, move || {
        let socks: Vec<UnixStream> = as_uid(65534, || {
            (0..1100).map(|_| connect()).collect::<std::io::Result<_>>()
        })?;
        let mut refused = 0;
        for mut s in &socks {
            s.set_read_timeout(Some(Duration::from_secs(3)))?;
            let mut buf = Vec::new();
            let _ = s.read_to_end(&mut buf);
            if String::from_utf8_lossy(&buf).contains("uid 65534 may not use the strake-agent API")
            {
                refused += 1;
            }
        }
        Ok((socks, refused))
    });
    let (held, refused) = strangers.unwrap();
    assert_eq!(refused, 1100, "every stranger got a clear refusal");

    // A request that never finishes, held open too, and root's CNI ADDs
    // meanwhile.
    let (tx, rx) = std::sync::mpsc::channel();
    let ns2 = ns.clone();
    let slow = std::thread::spawn(move || {
        strake_netlink::netns::run_in(&ns2, move || {
            let mut s = connect()?;
            s.write_all(b"{\"op\": \"ping\"")?;
            tx.send(()).ok();
            s.set_read_timeout(Some(Duration::from_secs(15)))?;
            let t0 = std::time::Instant::now();
            let mut buf = Vec::new();
            let _ = s.read_to_end(&mut buf);
            Ok((t0.elapsed(), String::from_utf8_lossy(&buf).to_string()))
        })
    });
    rx.recv().unwrap();
    for i in 1..=3 {
        let p = strake_lab::PodSpec {
            namespace: "api".into(),
            name: format!("p{i}"),
            node: node.into(),
            labels: Default::default(),
            tcp_ports: vec![80],
            udp_ports: vec![],
        };
        lab.add_pod(&p)
            .unwrap_or_else(|e| panic!("CNI ADD of p{i} meanwhile: {e:#}"));
    }

    // 16 MiB from root: a clear error, the rest unread.
    let huge = strake_api::Request::Gc {
        network: "strake".into(),
        valid: (0..200_000)
            .map(|i| strake_api::AttachmentKey {
                container_id: format!("{i:064x}"),
                ifname: "eth0".into(),
                network: "strake".into(),
            })
            .collect(),
    };
    assert!(serde_json::to_vec(&huge).unwrap().len() > 16 << 20);
    let e = strake_netlink::netns::run_in(&ns, move || {
        Ok(strake_api::Client::new(strake_api::DEFAULT_SOCKET).call::<serde_json::Value>(&huge))
    })
    .unwrap()
    .unwrap_err();
    assert_eq!(e.kind, strake_api::ErrorKind::InvalidRequest, "{e}");
    assert!(e.message.contains("larger than 4 MiB"), "{e}");

    let (took, answer) = slow.join().unwrap().unwrap();
    assert!(answer.contains("did not arrive whole"), "{answer}");
    assert!(
        took < Duration::from_secs(10),
        "dropped after the timeout, not held: {took:?}"
    );
    drop(held);
    assert!(agent_alive(&lab, node), "the agent never exits");
    let st: AgentStatus = lab.agent(node, Request::Status).unwrap();
    assert_eq!(st.endpoints, 4, "every ADD went through");
}

/// A pod attached by CNI ADD before the agent has seen its Pod object: its
/// labels are unknown, and a policy of its namespace may isolate it. From
/// before the ADD until after the object arrives, a stranger probes every
/// address the pod could get, as fast as it can: not one connection.
#[test]
fn a_pod_attached_before_its_object_arrives_is_never_reachable_where_a_policy_may_isolate_it() {
    if !strake_test_support::root() {
        return;
    }
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;
    let (a, b) = ("foa", "fob");
    let files = vec![
        (
            "nodes.yaml",
            node_yaml(a, "10.244.1.0/24", "10.0.0.1") + "---\n" + &node_yaml(b, "10.244.2.0/24", "10.0.0.2"),
        ),
        ("stranger.yaml", pod("fox", "stranger", b, "app: stranger")),
        ("friend.yaml", pod("fo", "friend", b, "app: friend")),
        (
            "policy.yaml",
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {namespace: fo, name: only-friends}\nspec:\n  podSelector: {}\n  ingress: [{from: [{podSelector: {matchLabels: {app: friend}}}]}]\n"
                .to_string(),
        ),
    ];
    let lab = yaml_lab("fo", &files);
    let stranger = lab.pod_netns("fox", "stranger");
    let stop = Arc::new(AtomicBool::new(false));
    let (tries, breaches) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    // Node a holds no pod yet: its first addresses are where the pod lands.
    let probers: Vec<_> = (1..=8u8)
        .map(|host| {
            let (ns, stop, tries, breaches) = (
                stranger.clone(),
                stop.clone(),
                tries.clone(),
                breaches.clone(),
            );
            std::thread::spawn(move || {
                strake_netlink::netns::run_in(&ns, move || {
                    let to = std::net::SocketAddr::from(([10, 244, 1, host], 80));
                    while !stop.load(Ordering::Relaxed) {
                        tries.fetch_add(1, Ordering::Relaxed);
                        if std::net::TcpStream::connect_timeout(&to, Duration::from_millis(50))
                            .is_ok()
                        {
                            breaches.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Ok(())
                })
            })
        })
        .collect();
    let drops_before = counter(&lab, a, "policy_drop_ingress");

    // Kubelet's ADD, and the pod's container, before the agent has its Pod.
    lab.pod_sandbox("fo", "late").unwrap();
    let result = lab
        .runtime(a)
        .add(&lab.conflist, &lab.attachment("fo", "late"))
        .unwrap();
    let ip: Ipv4Addr = result["ips"][0]["address"]
        .as_str()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        ip.octets()[3] <= 8,
        "the pod got {ip}, which the probes cover"
    );
    let spec = strake_lab::PodSpec {
        namespace: "fo".into(),
        name: "late".into(),
        node: a.into(),
        labels: [("app".to_string(), "late".to_string())].into(),
        tcp_ports: vec![80],
        udp_ports: vec![],
    };
    lab.start_pod_server(&spec).unwrap();
    // The pod is up and serving: its friend (allowed by a policy that
    // selects every pod of the namespace) reaches it even now.
    let friend = lab.pod_netns("fo", "friend");
    assert_eq!(probe::tcp(&friend, addr(ip, 80), T).unwrap(), "fo/late");
    std::thread::sleep(Duration::from_secs(2));

    // The Pod object arrives.
    std::fs::write(lab.dir.join("late.yaml"), pod("fo", "late", a, "app: late")).unwrap();
    lab.wait_synced(Duration::from_secs(10)).unwrap();
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::Relaxed);
    for p in probers {
        p.join().unwrap().unwrap();
    }
    assert_eq!(probe::tcp(&friend, addr(ip, 80), T).unwrap(), "fo/late");
    let (tries, breaches) = (
        tries.load(Ordering::Relaxed),
        breaches.load(Ordering::Relaxed),
    );
    assert!(tries > 100, "the stranger probed all along ({tries} tries)");
    assert_eq!(breaches, 0, "{breaches} of {tries} probes reached the pod");
    assert!(
        counter(&lab, a, "policy_drop_ingress") > drops_before,
        "the stranger's packets reached node {a} and were dropped by policy"
    );
    lab.del_pod("fo", "late", a).unwrap();
}
