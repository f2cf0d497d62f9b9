//! The connection table in a real lab: `strake ct list` shows a live flow
//! through a NodePort with its backend and SNAT port, and `strake ct flush`
//! removes it, so the flow's next packet is a new flow with a new backend
//! choice.

mod common;

use common::*;
use std::net::UdpSocket;
use std::time::Duration;
use strake_api::LbStatus;

fn nodeport_service() -> String {
    "apiVersion: v1\nkind: Service\nmetadata: {namespace: ct, name: web}\nspec:\n  type: NodePort\n  clusterIP: 10.96.0.20\n  selector: {app: web}\n  ports:\n  - {name: dns, port: 80, targetPort: dns, protocol: UDP, nodePort: 30053}\n".into()
}

/// `strake ct ARGS --lab DIR --node NODE -o json`, parsed.
fn ct(lab: &YamlLab, node: &str, args: &[&str]) -> serde_json::Value {
    let out = std::process::Command::new(strake_lab::procs::bin("strake").unwrap())
        .arg("ct")
        .args(args)
        .args(["--lab", &lab.dir.display().to_string(), "--node", node])
        .args(["-o", "json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "strake ct {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v[0].clone()
}

/// Deletes every neighbour entry the node has learnt on its uplink.
fn forget_neighbours(lab: &YamlLab, node: &str) {
    let out = lab
        .exec(
            &format!("node/{node}"),
            "ip",
            &["neigh", "flush", "dev", "eth0"],
        )
        .unwrap();
    assert!(
        out.status.success(),
        "ip neigh flush on {node}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A node's packet counter (packets).
fn counter(lab: &YamlLab, node: &str, name: &str) -> u64 {
    let st: strake_api::AgentStatus = lab.agent(node, strake_api::Request::Status).unwrap();
    st.counters
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no counter {name}"))
        .packets
}

#[test]
fn ct_list_shows_a_live_flow_and_ct_flush_lets_its_next_packet_pick_a_new_backend() {
    if !strake_test_support::root() {
        return;
    }
    let files = vec![
        (
            "nodes.yaml",
            node_yaml("cta", "10.244.1.0/24", "10.0.0.1")
                + "---\n"
                + &node_yaml("ctb", "10.244.2.0/24", "10.0.0.2"),
        ),
        ("w1.yaml", pod_yaml("ct", "w1", "ctb", "web", false)),
        ("svc.yaml", nodeport_service()),
        (
            "ext.yaml",
            "apiVersion: lab.strake.dev/v1\nkind: ExternalHost\nmetadata: {name: ctx}\nspec: {address: 10.0.0.100}\n".into(),
        ),
    ];
    let lab = yaml_lab("ct", &files);
    let ext = lab.ext_netns("ctx");
    // Neither node has resolved the other (nor the client) yet: XDP cannot
    // resolve a next hop, so it hands such translated packets to tc, which
    // can. The stack would drop them (their source is the node's own
    // address) and resolve nothing: the flow's first packet, and every
    // one after, lost.
    forget_neighbours(&lab, "cta");
    forget_neighbours(&lab, "ctb");
    // One UDP socket: every datagram is the same flow, pinned to w1 (the
    // only backend, on the other node: SNATed at cta).
    let sock = strake_netlink::netns::run_in(&ext, || {
        let s = UdpSocket::bind("0.0.0.0:0")?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        s.connect("10.0.0.1:30053")?;
        Ok(s)
    })
    .unwrap();
    let ask = |s: &UdpSocket| -> String {
        s.send(b"x").unwrap();
        let mut buf = [0u8; 256];
        let n = s.recv(&mut buf).expect("an answer");
        String::from_utf8_lossy(&buf[..n]).to_string()
    };
    // The very first datagram is answered (UDP has no retransmission).
    let first = {
        let mut buf = [0u8; 256];
        sock.send(b"x")
            .and_then(|_| sock.recv(&mut buf))
            .map(|n| String::from_utf8_lossy(&buf[..n]).to_string())
    };
    if first.is_err() {
        let lb: LbStatus = lab.agent("cta", strake_api::Request::LbList).unwrap();
        let st: strake_api::AgentStatus = lab.agent("cta", strake_api::Request::Status).unwrap();
        panic!(
            "no answer to the first datagram ({first:?}); ct {:#}\nlb {lb:#?}\ncounters {:?}",
            ct(&lab, "cta", &["list"]),
            st.counters
        );
    }
    let first = first.ok();
    // ...by way of tc: the client's datagram toward ctb (and the reply
    // toward the client, unless the client's ARP taught cta its address)
    // had an unresolved next hop at cta's XDP.
    assert!(
        counter(&lab, "cta", "xdp_neigh_to_tc") >= 1,
        "XDP handed its unresolved frames to tc"
    );
    assert_eq!(first.as_deref(), Some("ct/w1"));
    let cport = sock.local_addr().unwrap().port();

    let listed = ct(
        &lab,
        "cta",
        &["list", "--addr", "10.0.0.100", "--proto", "udp"],
    );
    let entries = listed["entries"].as_array().unwrap();
    let service = entries
        .iter()
        .find(|e| e["kind"] == "service")
        .unwrap_or_else(|| panic!("no service entry: {listed:#}"));
    assert_eq!(service["src"], "10.0.0.100");
    assert_eq!(service["sport"], cport);
    assert_eq!(service["dport"], 30053);
    assert_eq!(service["state"], "other");
    assert!(service["flags"]
        .as_array()
        .unwrap()
        .iter()
        .any(|f| f == "snat"));
    let w1 = lab.pod_ip("ct", "w1").unwrap();
    assert_eq!(service["backend"], format!("{w1}:80"), "{listed:#}");
    let nat_port = service["nat_port"].as_u64().expect("a SNAT port");
    let reply = entries
        .iter()
        .find(|e| e["kind"] == "reply")
        .unwrap_or_else(|| panic!("no reply entry: {listed:#}"));
    assert_eq!(reply["dport"].as_u64(), Some(nat_port), "{listed:#}");
    assert_eq!(reply["client"], format!("10.0.0.100:{cport}"));
    // Filters that do not match show nothing.
    let none = ct(
        &lab,
        "cta",
        &["list", "--addr", "10.0.0.100", "--proto", "tcp"],
    );
    assert_eq!(none["entries"].as_array().unwrap().len(), 0, "{none:#}");

    // A second backend, and the first draining: the pinned flow stays on
    // w1 (established flows keep their backend)...
    std::fs::write(
        lab.dir.join("w2.yaml"),
        pod_yaml("ct", "w2", "ctb", "web", false),
    )
    .unwrap();
    lab.add_pod(&pod_spec("ct", "w2", "ctb", "web")).unwrap();
    std::fs::write(
        lab.dir.join("w1.yaml"),
        pod_yaml("ct", "w1", "ctb", "web", true),
    )
    .unwrap();
    lab.wait_lb(
        "w2 active, w1 draining",
        Duration::from_secs(10),
        |s: &LbStatus| {
            let bs: Vec<_> = s.services.iter().flat_map(|x| &x.backends).collect();
            bs.iter()
                .any(|b| b.pod.as_deref() == Some("ct/w2") && b.active)
                && bs
                    .iter()
                    .any(|b| b.pod.as_deref() == Some("ct/w1") && !b.active)
        },
    )
    .unwrap();
    for _ in 0..5 {
        assert_eq!(ask(&sock), "ct/w1", "the pinned flow keeps its backend");
    }
    // ...until it is flushed: both its entries go, and the next datagram
    // is a new flow, which only w2 may take.
    let flushed = ct(
        &lab,
        "cta",
        &["flush", "--src", "10.0.0.100", "--port", &cport.to_string()],
    );
    assert_eq!(
        flushed["removed"], 2,
        "service and reply entries: {flushed:#}"
    );
    let left = ct(&lab, "cta", &["list", "--addr", "10.0.0.100"]);
    assert_eq!(left["entries"].as_array().unwrap().len(), 0, "{left:#}");
    assert_eq!(ask(&sock), "ct/w2", "the flushed flow starts over");

    // Flushing everything needs saying so.
    let out = std::process::Command::new(strake_lab::procs::bin("strake").unwrap())
        .args(["ct", "flush", "--lab", &lab.dir.display().to_string()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--all"));
}

/// A lab of two nodes, a TCP NodePort 30080 whose only backend runs on the
/// second node (so the first SNATs every flow), an outside client, and
/// `agent_args` for every agent.
fn snat_lab(name: &str, agent_args: &str) -> YamlLab {
    let (a, b) = (format!("{name}a"), format!("{name}b"));
    let files = vec![
        (
            "lab.yaml",
            format!("apiVersion: lab.strake.dev/v1\nkind: Lab\nmetadata: {{name: {name}}}\nspec:\n  agentArgs: [{agent_args}]\n"),
        ),
        (
            "nodes.yaml",
            node_yaml(&a, "10.244.1.0/24", "10.0.0.1")
                + "---\n"
                + &node_yaml(&b, "10.244.2.0/24", "10.0.0.2"),
        ),
        ("w1.yaml", pod_yaml(name, "w1", &b, "web", false)),
        (
            "svc.yaml",
            format!("apiVersion: v1\nkind: Service\nmetadata: {{namespace: {name}, name: web}}\nspec:\n  type: NodePort\n  clusterIP: 10.96.0.30\n  selector: {{app: web}}\n  ports:\n  - {{name: http, port: 80, targetPort: http, protocol: TCP, nodePort: 30080}}\n"),
        ),
        (
            "ext.yaml",
            format!("apiVersion: lab.strake.dev/v1\nkind: ExternalHost\nmetadata: {{name: {name}x}}\nspec: {{address: 10.0.0.100}}\n"),
        ),
    ];
    yaml_lab(name, &files)
}

/// `n` TCP connections, one after another, from inside `ns` to `to`: each
/// reads the greeting and closes. A connection may take up to `patience`
/// (the kernel retransmits a SYN a dropped one). Returns the failures
/// (index, error) and the time taken.
fn sequential_connections(
    ns: &std::path::Path,
    to: std::net::SocketAddrV4,
    n: usize,
    patience: Duration,
) -> (Vec<(usize, String)>, Duration) {
    strake_netlink::netns::run_in(ns, move || {
        use std::io::Read;
        let t0 = std::time::Instant::now();
        let mut failed = Vec::new();
        for i in 0..n {
            let r = std::net::TcpStream::connect_timeout(&to.into(), patience).and_then(|mut s| {
                s.set_read_timeout(Some(patience))?;
                let mut buf = [0u8; 64];
                let k = s.read(&mut buf)?;
                if k == 0 {
                    return Err(std::io::Error::other("closed without a greeting"));
                }
                Ok(())
            });
            if let Err(e) = r {
                failed.push((i, e.to_string()));
                if failed.len() > 20 {
                    break;
                }
            }
        }
        Ok((failed, t0.elapsed()))
    })
    .unwrap()
}

#[test]
fn fifteen_thousand_sequential_connections_through_a_snated_node_port_all_succeed() {
    if !strake_test_support::root() {
        return;
    }
    // --snat-ports at its default (10,000 ports). A closed flow holds its
    // port until a sweep finds it past --ct-timeout-closing: at the
    // defaults (10 s, sweeps at least 10 s apart) the ports carry about 500
    // new connections a second to one backend, and this client opens more
    // (~650/s here); a faster sweep and a shorter closing timeout keep it
    // within them (a SYN dropped for want of a port would be retransmitted
    // and get one after the next sweep: `patience`).
    let lab = snat_lab(
        "cts",
        "\"--ct-gc-min-interval\", \"1s\", \"--ct-timeout-closing\", \"5s\"",
    );
    let ext = lab.ext_netns("ctsx");
    let to = "10.0.0.1:30080".parse().unwrap();
    let (failed, took) = sequential_connections(&ext, to, 15_000, Duration::from_secs(10));
    let st: strake_api::AgentStatus = lab.agent("ctsa", strake_api::Request::Status).unwrap();
    eprintln!(
        "counters: {:?}",
        st.counters
            .iter()
            .filter(|c| c.packets > 0 && (c.name.starts_with("lb_") || c.name.starts_with("ct_")))
            .map(|c| (c.name.clone(), c.packets))
            .collect::<Vec<_>>()
    );
    assert!(
        failed.is_empty(),
        "{} failed in {took:?}, first: {:?}\ncounters {:?}",
        failed.len(),
        &failed[..failed.len().min(5)],
        st.counters
    );
    eprintln!("15000 connections in {took:?}");
}

#[test]
fn with_64_snat_ports_connections_faster_than_the_ports_all_succeed_once_closed_ones_expire() {
    if !strake_test_support::root() {
        return;
    }
    let lab = snat_lab(
        "ctp",
        "\"--snat-ports\", \"20000-20063\", \"--ct-timeout-closing\", \"1s\", \"--ct-gc-min-interval\", \"1s\"",
    );
    let ext = lab.ext_netns("ctpx");
    let to = "10.0.0.1:30080".parse().unwrap();
    // 300 connections: far more than 64 ports while each closed one holds
    // its port for a second or more. A new flow that finds no port is
    // dropped and counted; its SYN, retransmitted, gets a port once the
    // sweep (at once at its minimum after a failure) frees closed ones.
    let (failed, took) = sequential_connections(&ext, to, 300, Duration::from_secs(10));
    let st: strake_api::AgentStatus = lab.agent("ctpa", strake_api::Request::Status).unwrap();
    assert!(
        failed.is_empty(),
        "{} failed in {took:?}, first: {:?}\ncounters {:?}",
        failed.len(),
        &failed[..failed.len().min(5)],
        st.counters
    );
    // The ports really ran out on the way (the test is not vacuous), and
    // were given back: never more than 64 in use.
    assert!(
        counter(&lab, "ctpa", "lb_snat_full") > 0,
        "300 connections should have outrun 64 ports"
    );
    let listed = ct(&lab, "ctpa", &["list", "--kind", "reply"]);
    let n = listed["entries"].as_array().unwrap().len();
    assert!(n <= 64, "{n} reply entries with 64 ports");
    eprintln!("300 connections over 64 ports in {took:?}");
}

#[test]
fn an_active_stream_survives_a_flood_that_fills_the_table_twice_over() {
    if !strake_test_support::root() {
        return;
    }
    // A table of 4,096 entries; the flood: 8,192 UDP flows from a pod to a
    // ClusterIP, each from its own port, each two entries (service and
    // reply): four tables' worth.
    let files = vec![
        (
            "lab.yaml",
            "apiVersion: lab.strake.dev/v1\nkind: Lab\nmetadata: {name: ctf}\nspec:\n  agentArgs: [\"--ct-size\", \"4096\"]\n".to_string(),
        ),
        (
            "nodes.yaml",
            node_yaml("ctfa", "10.244.1.0/24", "10.0.0.1")
                + "---\n"
                + &node_yaml("ctfb", "10.244.2.0/24", "10.0.0.2"),
        ),
        ("w1.yaml", pod_yaml("ctf", "w1", "ctfb", "web", false)),
        ("c1.yaml", pod_yaml("ctf", "c1", "ctfa", "client", false)),
        ("c2.yaml", pod_yaml("ctf", "c2", "ctfa", "flood", false)),
        (
            "svc.yaml",
            "apiVersion: v1\nkind: Service\nmetadata: {namespace: ctf, name: web}\nspec:\n  clusterIP: 10.96.0.40\n  selector: {app: web}\n  ports:\n  - {name: http, port: 80, targetPort: http, protocol: TCP}\n  - {name: dns, port: 80, targetPort: dns, protocol: UDP}\n".into(),
        ),
    ];
    let lab = yaml_lab("ctf", &files);
    let vip = std::net::SocketAddrV4::new("10.96.0.40".parse().unwrap(), 80);
    // The stream: through the ClusterIP to w1 on the other node, translated
    // per packet at c1's veth (the test's threads are outside the node's
    // cgroup, so no socket hook translates it first).
    let (stream, greeting) =
        strake_lab::probe::tcp_stream(&lab.pod_netns("ctf", "c1"), vip, T).unwrap();
    assert_eq!(greeting, "ctf/w1");
    // w1 drains and w2 takes new flows: the stream now lives on its table
    // entries alone. Were they evicted, its next packet would be a new flow
    // for w2, which would reset it.
    std::fs::write(
        lab.dir.join("w2.yaml"),
        pod_yaml("ctf", "w2", "ctfb", "web", false),
    )
    .unwrap();
    lab.add_pod(&pod_spec("ctf", "w2", "ctfb", "web")).unwrap();
    std::fs::write(
        lab.dir.join("w1.yaml"),
        pod_yaml("ctf", "w1", "ctfb", "web", true),
    )
    .unwrap();
    lab.wait_lb(
        "w2 active, w1 draining",
        Duration::from_secs(10),
        |s: &LbStatus| {
            let bs: Vec<_> = s.services.iter().flat_map(|x| &x.backends).collect();
            bs.iter()
                .any(|b| b.pod.as_deref() == Some("ctf/w2") && b.active)
                && bs
                    .iter()
                    .any(|b| b.pod.as_deref() == Some("ctf/w1") && !b.active)
        },
    )
    .unwrap();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flooder = {
        let (ns, done) = (lab.pod_netns("ctf", "c2"), done.clone());
        std::thread::spawn(move || {
            let sent = strake_netlink::netns::run_in(&ns, move || {
                let mut sent = 0;
                for _ in 0..8192 {
                    let s = UdpSocket::bind("0.0.0.0:0")?;
                    if s.send_to(b"flood", vip).is_ok() {
                        sent += 1;
                    }
                }
                Ok(sent)
            })
            .unwrap();
            done.store(true, std::sync::atomic::Ordering::SeqCst);
            sent
        })
    };
    // Echo a chunk every few milliseconds all through the flood, and a
    // second after.
    use std::io::{Read, Write};
    let mut s = &stream;
    let chunk = [0x5au8; 512];
    let mut buf = [0u8; 512];
    let mut rounds = 0;
    let mut after = None;
    loop {
        s.write_all(&chunk)
            .unwrap_or_else(|e| panic!("write, round {rounds}: {e}"));
        s.read_exact(&mut buf)
            .unwrap_or_else(|e| panic!("echo lost in the flood, round {rounds}: {e}"));
        assert_eq!(buf, chunk);
        rounds += 1;
        std::thread::sleep(Duration::from_millis(2));
        if done.load(std::sync::atomic::Ordering::SeqCst) {
            let t = *after.get_or_insert_with(std::time::Instant::now);
            if t.elapsed() > Duration::from_secs(1) {
                break;
            }
        }
    }
    assert_eq!(flooder.join().unwrap(), 8192);
    // The flood did fill the table (and so pushed its own flows out).
    let listed = ct(&lab, "ctfa", &["list"]);
    let n = listed["entries"].as_array().unwrap().len();
    assert!(n > 3500, "only {n} entries of 4096 after the flood");
    let translated = counter(&lab, "ctfa", "lb_translated");
    assert!(translated >= 8192, "lb_translated {translated}");
    eprintln!("{rounds} echoes through a flood of 8192 flows; {n} entries left");
    // What the test guards against, done on purpose: with its entries
    // gone, the stream's next packet goes to w2, and it breaks.
    let c1 = lab.pod_ip("ctf", "c1").unwrap().to_string();
    let port = stream.local_addr().unwrap().port().to_string();
    ct(&lab, "ctfa", &["flush", "--src", &c1, "--port", &port]);
    let broken = s
        .write_all(&chunk)
        .and_then(|_| s.read_exact(&mut buf))
        .is_err();
    assert!(broken, "a stream without its entries would not survive");
}
