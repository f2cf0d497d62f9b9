//! NetworkPolicy conformance on the model Kubernetes' own network-policy e2e
//! tests use: namespaces x, y, z, each with pods a, b, c, labelled pod=<name>
//! and ns=<name> (and kubernetes.io/metadata.name), every pod serving TCP and
//! UDP on 80 and 81 with ports named serve-80-tcp, serve-81-tcp, serve-80-udp,
//! serve-81-udp; spread over two nodes. Each case applies real NetworkPolicy
//! YAML and checks the whole 9x9 reachability matrix with real traffic.

mod common;

use common::*;
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4, TcpStream, UdpSocket};
use std::path::Path;
use std::time::Duration;

const NS: [&str; 3] = ["x", "y", "z"];
const PODS: [&str; 3] = ["a", "b", "c"];
const TCP: &str = "TCP";
const UDP: &str = "UDP";
const WAIT: Duration = Duration::from_millis(700);

fn all_pods() -> Vec<String> {
    NS.iter()
        .flat_map(|n| PODS.iter().map(move |p| format!("{n}/{p}")))
        .collect()
}

fn ns_yaml(ns: &str, extra: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {ns}\n  labels: {{ns: {ns}{extra}}}\n"
    )
}

fn model_pod_yaml(ns: &str, pod: &str, node: &str, labels: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{namespace: {ns}, name: {pod}, labels: {{{labels}}}}}\nspec:\n  nodeName: {node}\n  containers:\n  - name: c\n    ports:\n    - {{name: serve-80-tcp, containerPort: 80, protocol: TCP}}\n    - {{name: serve-81-tcp, containerPort: 81, protocol: TCP}}\n    - {{name: serve-80-udp, containerPort: 80, protocol: UDP}}\n    - {{name: serve-81-udp, containerPort: 81, protocol: UDP}}\n"
    )
}

fn node_of(pod: &str) -> &'static str {
    // a and c on one node, b on the other: same-node and cross-node pairs.
    if pod == "b" {
        "npb"
    } else {
        "npa"
    }
}

struct Conformance {
    lab: YamlLab,
    ips: BTreeMap<String, Ipv4Addr>,
    failures: Vec<String>,
}

impl Conformance {
    fn new() -> Self {
        let mut files: Vec<(String, String)> = vec![(
            "nodes.yaml".into(),
            node_yaml("npa", "10.244.1.0/24", "10.0.0.1")
                + "---\n"
                + &node_yaml("npb", "10.244.2.0/24", "10.0.0.2"),
        )];
        for ns in NS {
            files.push((format!("ns-{ns}.yaml"), ns_yaml(ns, "")));
            for p in PODS {
                files.push((
                    format!("pod-{ns}-{p}.yaml"),
                    model_pod_yaml(ns, p, node_of(p), &format!("pod: {p}")),
                ));
            }
        }
        // A Service in front of x/a, for probes through a ClusterIP.
        files.push((
            "svc.yaml".into(),
            "apiVersion: v1\nkind: Service\nmetadata: {namespace: x, name: xa}\nspec:\n  clusterIP: 10.96.7.1\n  selector: {pod: a}\n  ports: [{name: http, port: 80, targetPort: serve-80-tcp}]\n".into(),
        ));
        let refs: Vec<(&str, String)> =
            files.iter().map(|(a, b)| (a.as_str(), b.clone())).collect();
        let lab = yaml_lab("netpol", &refs);
        let ips = all_pods()
            .into_iter()
            .map(|k| {
                let (ns, p) = k.split_once('/').unwrap();
                let ip = lab.pod_ip(ns, p).unwrap();
                (k, ip)
            })
            .collect();
        Conformance {
            lab,
            ips,
            failures: vec![],
        }
    }

    fn write(&self, file: &str, yaml: &str) {
        std::fs::write(self.lab.dir.join(file), yaml).unwrap();
    }

    fn remove(&self, file: &str) {
        let _ = std::fs::remove_file(self.lab.dir.join(file));
    }

    fn sync(&self) {
        self.lab.wait_synced(Duration::from_secs(10)).unwrap();
    }

    /// Probes every pair on `port`/`proto` (to `target` if given, else to
    /// the destination pod) and compares with `expect(from, to)`.
    /// Every node's data-plane counters, by "node/counter".
    fn counters(&self) -> BTreeMap<String, u64> {
        let mut out = BTreeMap::new();
        for n in &self.lab.spec.nodes {
            if let Ok(st) = self
                .lab
                .agent::<strake_api::AgentStatus>(&n.name, strake_api::Request::Status)
            {
                for c in st.counters {
                    out.insert(format!("{}/{}", n.name, c.name), c.packets);
                }
            }
        }
        out
    }

    fn check(
        &mut self,
        case: &str,
        port: u16,
        proto: &'static str,
        target: Option<Ipv4Addr>,
        expect: impl Fn(&str, &str) -> bool,
    ) {
        let before = self.counters();
        let pods = all_pods();
        let mut handles = Vec::new();
        for from in &pods {
            for to in &pods {
                let (ns, p) = from.split_once('/').unwrap();
                let netns = self.lab.pod_netns(ns, p);
                let dst = SocketAddrV4::new(target.unwrap_or(self.ips[to]), port);
                let (from, to) = (from.clone(), to.clone());
                handles.push(std::thread::spawn(move || {
                    let ok = reach(&netns, dst, proto);
                    (from, to, ok)
                }));
                if target.is_some() {
                    break; // one destination: the service
                }
            }
        }
        let got: Vec<(String, String, bool)> =
            handles.into_iter().map(|h| h.join().unwrap()).collect();
        let mut wrong = Vec::new();
        for (from, to, ok) in &got {
            let want = expect(from, to);
            if *ok != want {
                wrong.push(format!(
                    "{from} -> {to}: {} (expected {})",
                    if *ok { "reached" } else { "blocked" },
                    if want { "reached" } else { "blocked" }
                ));
            }
        }
        if !wrong.is_empty() {
            let mut table = format!("{case} on {port}/{proto}:\n      ");
            for to in &pods {
                table += &format!("{to:>4}");
            }
            for from in &pods {
                table += &format!("\n  {from}");
                for to in &pods {
                    let Some((_, _, ok)) = got.iter().find(|(f, t, _)| f == from && t == to) else {
                        continue;
                    };
                    let mark = if *ok == expect(from, to) {
                        if *ok {
                            "."
                        } else {
                            "X"
                        }
                    } else if *ok {
                        "!"
                    } else {
                        "?"
                    };
                    table += &format!("{mark:>4}");
                }
            }
            // What the data plane counted meanwhile, to tell policy drops
            // from other losses.
            let moved: Vec<String> = self
                .counters()
                .into_iter()
                .filter_map(|(k, v)| {
                    let d = v.saturating_sub(before.get(&k).copied().unwrap_or(0));
                    (d > 0 && !k.ends_with("/to_pod")).then(|| format!("{k} +{d}"))
                })
                .collect();
            self.failures.push(format!(
                "{table}\n  (. reached, X blocked as expected; ! reached but should not, ? blocked but should not)\n  {}\n  counters: {}",
                wrong.join("\n  "),
                moved.join(", ")
            ));
        }
    }
}

fn reach(netns: &Path, to: SocketAddrV4, proto: &str) -> bool {
    let udp = proto == UDP;
    strake_netlink::netns::run_in(netns, move || {
        Ok(if udp {
            let s = UdpSocket::bind("0.0.0.0:0")?;
            s.set_read_timeout(Some(WAIT))?;
            s.send_to(b"probe", to)?;
            let mut buf = [0u8; 64];
            s.recv_from(&mut buf).is_ok()
        } else {
            TcpStream::connect_timeout(&to.into(), WAIT).is_ok()
        })
    })
    .unwrap_or(false)
}

fn policy(ns: &str, name: &str, spec: &str) -> String {
    format!("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{namespace: {ns}, name: {name}}}\nspec:\n{spec}")
}

fn ns_of(p: &str) -> &str {
    p.split_once('/').unwrap().0
}

#[test]
fn network_policy_conformance_on_the_e2e_model() {
    if !strake_test_support::root() {
        return;
    }
    let mut c = Conformance::new();
    let both = [(80, TCP), (81, TCP), (80, UDP), (81, UDP)];
    let open = |_: &str, _: &str| true;

    // Nothing applied: everything reaches everything.
    for (port, proto) in both {
        c.check("no policy", port, proto, None, open);
    }
    c.check(
        "no policy, via ClusterIP 10.96.7.1",
        80,
        TCP,
        Some("10.96.7.1".parse().unwrap()),
        open,
    );

    // Default deny ingress in x.
    c.write(
        "p1.yaml",
        &policy(
            "x",
            "deny-ingress",
            "  podSelector: {}\n  policyTypes: [Ingress]\n",
        ),
    );
    c.sync();
    for (port, proto) in [(80, TCP), (81, UDP)] {
        c.check("default-deny ingress in x", port, proto, None, |f, t| {
            ns_of(t) != "x" || f == t
        });
    }
    // Allow-all ingress stacked on top: a union, so everything is allowed.
    c.write(
        "p2.yaml",
        &policy("x", "allow-all", "  podSelector: {}\n  ingress: [{}]\n"),
    );
    c.sync();
    c.check("deny + allow-all ingress in x", 80, TCP, None, open);
    c.remove("p1.yaml");
    c.remove("p2.yaml");

    // Default deny egress in x (replies of allowed flows still pass).
    c.write(
        "p1.yaml",
        &policy(
            "x",
            "deny-egress",
            "  podSelector: {}\n  policyTypes: [Egress]\n",
        ),
    );
    c.sync();
    for (port, proto) in [(80, TCP), (80, UDP)] {
        c.check("default-deny egress in x", port, proto, None, |f, t| {
            ns_of(f) != "x" || f == t
        });
    }
    // Deny both ways.
    c.write(
        "p1.yaml",
        &policy(
            "x",
            "deny-both",
            "  podSelector: {}\n  policyTypes: [Ingress, Egress]\n",
        ),
    );
    c.sync();
    c.check("default-deny both in x", 81, TCP, None, |f, t| {
        f == t || (ns_of(f) != "x" && ns_of(t) != "x")
    });
    c.remove("p1.yaml");

    // podSelector: x/a only from pods b of x.
    c.write("p1.yaml", &policy("x", "a-from-b", "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from: [{podSelector: {matchLabels: {pod: b}}}]\n"));
    c.sync();
    c.check("x/a from x/b (podSelector)", 80, TCP, None, |f, t| {
        t != "x/a" || f == "x/b" || f == t
    });
    // namespaceSelector: x/a from everything in y.
    c.write("p1.yaml", &policy("x", "a-from-y", "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from: [{namespaceSelector: {matchLabels: {ns: y}}}]\n"));
    c.sync();
    c.check("x/a from namespace y", 80, TCP, None, |f, t| {
        t != "x/a" || ns_of(f) == "y" || f == t
    });
    // Both in one peer (AND).
    c.write("p1.yaml", &policy("x", "a-from-yb", "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from:\n    - namespaceSelector: {matchLabels: {ns: y}}\n      podSelector: {matchLabels: {pod: b}}\n"));
    c.sync();
    c.check("x/a from y/b (AND)", 81, TCP, None, |f, t| {
        t != "x/a" || f == "y/b" || f == t
    });
    // Two peers (OR).
    c.write("p1.yaml", &policy("x", "a-from-y-or-c", "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from:\n    - namespaceSelector: {matchLabels: {ns: y}}\n    - podSelector: {matchLabels: {pod: c}}\n"));
    c.sync();
    c.check("x/a from y or x/c (OR)", 80, TCP, None, |f, t| {
        t != "x/a" || ns_of(f) == "y" || f == "x/c" || f == t
    });
    // matchExpressions: namespaces NotIn [x], pods In [b, c] with a key that Exists.
    c.write("p1.yaml", &policy("x", "a-expr", "  podSelector: {matchExpressions: [{key: pod, operator: In, values: [a]}]}\n  ingress:\n  - from:\n    - namespaceSelector: {matchExpressions: [{key: ns, operator: NotIn, values: [x]}, {key: ns, operator: Exists}]}\n      podSelector: {matchExpressions: [{key: pod, operator: In, values: [b, c]}, {key: tier, operator: DoesNotExist}]}\n"));
    c.sync();
    c.check(
        "x/a from b,c of y,z (matchExpressions)",
        80,
        TCP,
        None,
        |f, t| t != "x/a" || f == t || (ns_of(f) != "x" && !f.ends_with("/a")),
    );
    c.remove("p1.yaml");

    // Ports: x/a only on TCP 81.
    c.write(
        "p1.yaml",
        &policy(
            "x",
            "a-81",
            "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - ports: [{port: 81}]\n",
        ),
    );
    c.sync();
    c.check("x/a on 81 only: 80/TCP", 80, TCP, None, |f, t| {
        t != "x/a" || f == t
    });
    c.check("x/a on 81 only: 81/TCP", 81, TCP, None, open);
    c.check(
        "x/a on 81 only: 81/UDP (no protocol means TCP)",
        81,
        UDP,
        None,
        |f, t| t != "x/a" || f == t,
    );
    // Named port, protocol included.
    c.write("p1.yaml", &policy("x", "a-named", "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - ports: [{port: serve-80-tcp}]\n"));
    c.sync();
    c.check("x/a on serve-80-tcp: 80/TCP", 80, TCP, None, open);
    c.check("x/a on serve-80-tcp: 81/TCP", 81, TCP, None, |f, t| {
        t != "x/a" || f == t
    });
    c.check("x/a on serve-80-tcp: 80/UDP", 80, UDP, None, |f, t| {
        t != "x/a" || f == t
    });
    // endPort range, and a UDP-only rule that must not allow TCP.
    c.write("p1.yaml", &policy("x", "a-range", "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - ports: [{port: 79, endPort: 80, protocol: TCP}, {port: 81, protocol: UDP}]\n"));
    c.sync();
    c.check("x/a TCP 79-80: 80/TCP", 80, TCP, None, open);
    c.check("x/a TCP 79-80: 81/TCP", 81, TCP, None, |f, t| {
        t != "x/a" || f == t
    });
    c.check("x/a UDP 81: 81/UDP", 81, UDP, None, open);
    c.check("x/a UDP 81 does not allow 80/UDP", 80, UDP, None, |f, t| {
        t != "x/a" || f == t
    });
    c.remove("p1.yaml");

    // ipBlock with except (pod addresses): x/a from 10.244.0.0/16 except y/b.
    let yb = c.ips["y/b"];
    c.write("p1.yaml", &policy("x", "a-block", &format!("  podSelector: {{matchLabels: {{pod: a}}}}\n  ingress:\n  - from: [{{ipBlock: {{cidr: 10.244.0.0/16, except: [{yb}/32]}}}}]\n")));
    c.sync();
    c.check("x/a from 10.244/16 except y/b", 80, TCP, None, |f, t| {
        t != "x/a" || f != "y/b"
    });
    // Egress to one address only.
    let za = c.ips["z/a"];
    c.write("p1.yaml", &policy("y", "to-za", &format!("  podSelector: {{}}\n  policyTypes: [Egress]\n  egress:\n  - to: [{{ipBlock: {{cidr: {za}/32}}}}]\n")));
    c.sync();
    c.check("y egress only to z/a", 80, UDP, None, |f, t| {
        ns_of(f) != "y" || t == "z/a" || f == t
    });
    c.remove("p1.yaml");

    // Ingress and egress together: x/b takes from y only and sends to z only.
    c.write("p1.yaml", &policy("x", "b-both", "  podSelector: {matchLabels: {pod: b}}\n  policyTypes: [Ingress, Egress]\n  ingress:\n  - from: [{namespaceSelector: {matchLabels: {ns: y}}}]\n  egress:\n  - to: [{namespaceSelector: {matchLabels: {ns: z}}}]\n"));
    c.sync();
    c.check("x/b in from y, out to z", 80, TCP, None, |f, t| {
        if f == t {
            return true;
        }
        (t != "x/b" || ns_of(f) == "y") && (f != "x/b" || ns_of(t) == "z")
    });
    // Egress denied at the client even where the server allows all.
    c.write(
        "p1.yaml",
        &policy(
            "z",
            "z-no-egress",
            "  podSelector: {}\n  policyTypes: [Egress]\n",
        ),
    );
    c.write(
        "p2.yaml",
        &policy("x", "x-allow-all", "  podSelector: {}\n  ingress: [{}]\n"),
    );
    c.sync();
    c.check(
        "z may send nothing, x accepts everything",
        80,
        TCP,
        None,
        |f, t| ns_of(f) != "z" || f == t,
    );
    c.remove("p1.yaml");
    c.remove("p2.yaml");

    // Overlapping policies on one pod: union per port.
    c.write("p1.yaml", &policy("x", "a-y-80", "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from: [{namespaceSelector: {matchLabels: {ns: y}}}]\n    ports: [{port: 80}]\n"));
    c.write("p2.yaml", &policy("x", "a-z-81", "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from: [{namespaceSelector: {matchLabels: {ns: z}}}]\n    ports: [{port: 81}]\n"));
    c.sync();
    c.check("x/a: y on 80, z on 81 -> 80", 80, TCP, None, |f, t| {
        t != "x/a" || ns_of(f) == "y" || f == t
    });
    c.check("x/a: y on 80, z on 81 -> 81", 81, TCP, None, |f, t| {
        t != "x/a" || ns_of(f) == "z" || f == t
    });
    // Update a policy in place: p1 now allows z instead of y.
    c.write("p1.yaml", &policy("x", "a-y-80", "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from: [{namespaceSelector: {matchLabels: {ns: z}}}]\n    ports: [{port: 80}]\n"));
    c.sync();
    c.check("policy updated: x/a from z on 80", 80, TCP, None, |f, t| {
        t != "x/a" || ns_of(f) == "z" || f == t
    });
    c.remove("p2.yaml");

    // Label changes: x/a takes pods labelled pod=b from any namespace...
    c.write("p1.yaml", &policy("x", "a-from-any-b", "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from: [{namespaceSelector: {}, podSelector: {matchLabels: {pod: b}}}]\n"));
    c.sync();
    c.check("x/a from any pod=b", 80, TCP, None, |f, t| {
        t != "x/a" || f.ends_with("/b") || f == t
    });
    // ... then y/c is relabelled pod=b: it is let in.
    c.write(
        "pod-y-c.yaml",
        &model_pod_yaml("y", "c", node_of("c"), "pod: b"),
    );
    c.sync();
    c.check("after relabelling y/c as pod=b", 80, TCP, None, |f, t| {
        t != "x/a" || f.ends_with("/b") || f == "y/c" || f == t
    });
    c.write(
        "pod-y-c.yaml",
        &model_pod_yaml("y", "c", node_of("c"), "pod: c"),
    );
    // Namespace labels: x/a takes namespaces labelled team=blue; z becomes blue.
    c.write("p1.yaml", &policy("x", "a-from-blue", "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from: [{namespaceSelector: {matchLabels: {team: blue}}}]\n"));
    c.sync();
    c.check("x/a from team=blue (none yet)", 81, TCP, None, |f, t| {
        t != "x/a" || f == t
    });
    c.write("ns-z.yaml", &ns_yaml("z", ", team: blue"));
    c.sync();
    c.check(
        "after labelling namespace z team=blue",
        81,
        TCP,
        None,
        |f, t| t != "x/a" || ns_of(f) == "z" || f == t,
    );
    c.write("ns-z.yaml", &ns_yaml("z", ""));

    // Through the Service in front of x/a: judged on the real backend.
    c.write("p1.yaml", &policy("x", "a-from-y-svc", "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from: [{namespaceSelector: {matchLabels: {ns: y}}}]\n"));
    c.sync();
    c.check(
        "via ClusterIP 10.96.7.1 to x/a",
        80,
        TCP,
        Some("10.96.7.1".parse().unwrap()),
        |f, _| ns_of(f) == "y" || f == "x/a",
    );
    // ... and egress denied toward the Service's backend, judged on the backend.
    c.write("p2.yaml", &policy("y", "y-not-to-x", "  podSelector: {matchLabels: {pod: b}}\n  policyTypes: [Egress]\n  egress:\n  - to: [{namespaceSelector: {matchLabels: {ns: z}}}]\n"));
    c.sync();
    c.check(
        "via ClusterIP, y/b may only send to z",
        80,
        TCP,
        Some("10.96.7.1".parse().unwrap()),
        |f, _| (ns_of(f) == "y" && f != "y/b") || f == "x/a",
    );

    // Deletion restores connectivity.
    c.remove("p1.yaml");
    c.remove("p2.yaml");
    c.sync();
    for (port, proto) in both {
        c.check("all policies deleted", port, proto, None, open);
    }

    assert!(
        c.failures.is_empty(),
        "{} case(s) failed:\n\n{}",
        c.failures.len(),
        c.failures.join("\n\n")
    );
}

/// What happens to a connection already established when a policy stops
/// allowing it: it is judged again at its next packet and dropped, in both
/// directions, however the peers retransmit. When the policy goes, new
/// connections work again and the old one resumes.
#[test]
fn established_connections_are_cut_when_a_policy_revokes_them() {
    if !strake_test_support::root() {
        return;
    }
    let files = vec![
        (
            "nodes.yaml",
            node_yaml("nra", "10.244.1.0/24", "10.0.0.1")
                + "---\n"
                + &node_yaml("nrb", "10.244.2.0/24", "10.0.0.2"),
        ),
        (
            "s.yaml",
            model_pod_yaml("rv", "server", "nra", "pod: server"),
        ),
        (
            "c.yaml",
            model_pod_yaml("rv", "client", "nrb", "pod: client"),
        ),
    ];
    let lab = yaml_lab("revoke", &files);
    let server = lab.pod_ip("rv", "server").unwrap();
    let (s, greeting) = strake_lab::probe::tcp_stream(
        &lab.pod_netns("rv", "client"),
        SocketAddrV4::new(server, 80),
        T,
    )
    .unwrap();
    assert_eq!(
        greeting, "rv/server",
        "the server greets with its name first"
    );
    let echo = |s: &TcpStream, wait: Duration| -> bool {
        use std::io::{Read, Write};
        let mut s = s;
        s.set_read_timeout(Some(wait)).unwrap();
        if s.write_all(b"ping").is_err() {
            return false;
        }
        let mut b = [0u8; 4];
        s.read_exact(&mut b).is_ok()
    };
    assert!(echo(&s, T), "the connection works before any policy");
    std::fs::write(
        lab.dir.join("p.yaml"),
        policy(
            "rv",
            "server-only-from-nobody",
            "  podSelector: {matchLabels: {pod: server}}\n  ingress: []\n",
        ),
    )
    .unwrap();
    lab.wait_synced(Duration::from_secs(10)).unwrap();
    let r = echo(&s, Duration::from_millis(800));
    assert!(
        !r,
        "the established connection is cut once the policy applies"
    );
    let st: strake_api::AgentStatus = lab.agent("nra", strake_api::Request::Status).unwrap();
    assert!(
        st.counters
            .iter()
            .any(|c| c.name == "policy_revoked" && c.packets > 0),
        "counted as revoked"
    );
    std::fs::remove_file(lab.dir.join("p.yaml")).unwrap();
    lab.wait_synced(Duration::from_secs(10)).unwrap();
    assert!(
        reach(
            &lab.pod_netns("rv", "client"),
            SocketAddrV4::new(server, 80),
            TCP
        ),
        "new connections work again"
    );
    // The revoked connection was kept revoked both ways (the server's
    // retransmissions did not reopen it as a flow of the server's); now
    // allowed again, it resumes at its next retransmission.
    assert!(
        echo(&s, Duration::from_secs(8)),
        "the revoked connection resumes once allowed again"
    );
}
