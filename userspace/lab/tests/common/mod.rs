//! Shared helpers for lab tests: each test builds its own lab with uniquely
//! named nodes and namespaces, so tests can run side by side, and tears it
//! down even when it fails.

#![allow(dead_code)]

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;
use std::time::Duration;
use strake_lab::Lab;

pub struct TestLab {
    pub lab: Lab,
    _dir: tempfile::TempDir,
}

impl Drop for TestLab {
    fn drop(&mut self) {
        if let Err(e) = self.lab.down() {
            eprintln!("lab down: {e:#}");
        }
    }
}

impl std::ops::Deref for TestLab {
    type Target = Lab;
    fn deref(&self) -> &Lab {
        &self.lab
    }
}

pub struct N<'a> {
    pub name: &'a str,
    pub cidr: &'a str,
    pub ip: &'a str,
}

pub struct P<'a> {
    pub ns: &'a str,
    pub name: &'a str,
    pub node: &'a str,
}

/// Writes the YAML for `nodes` and `pods` (each pod serving TCP and UDP on
/// port 80) into a directory named `name`, and brings the lab up.
pub fn lab(name: &str, nodes: &[N], pods: &[P]) -> TestLab {
    let base = tempfile::tempdir().unwrap();
    let dir: PathBuf = base.path().join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let mut y = String::new();
    for n in nodes {
        y += &format!(
            "apiVersion: v1\nkind: Node\nmetadata: {{name: {}}}\nspec: {{podCIDR: {}}}\nstatus: {{addresses: [{{type: InternalIP, address: {}}}]}}\n---\n",
            n.name, n.cidr, n.ip
        );
    }
    for p in pods {
        y += &format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{namespace: {}, name: {}, labels: {{app: {}}}}}\nspec:\n  nodeName: {}\n  containers:\n  - name: c\n    ports: [{{containerPort: 80, protocol: TCP}}, {{containerPort: 80, protocol: UDP}}]\n---\n",
            p.ns, p.name, p.name, p.node
        );
    }
    std::fs::write(dir.join("lab.yaml"), y).unwrap();
    let lab = Lab::load(&dir).unwrap();
    let _ = lab.down(); // leftovers of an earlier, killed run
    let t = TestLab { lab, _dir: base };
    if let Err(e) = t.lab.up() {
        panic!("lab up: {e:#}");
    }
    t
}

pub const T: Duration = Duration::from_secs(2);

pub fn addr(ip: Ipv4Addr, port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(ip, port)
}

/// Runs the plugin binary directly in a node's namespace with raw stdin and
/// environment, as a runtime would; returns (exit ok, stdout JSON).
pub fn raw_cni(
    lab: &Lab,
    node: &str,
    env: &[(&str, &str)],
    stdin: &[u8],
) -> (bool, serde_json::Value) {
    use std::io::Write;
    use std::os::fd::AsFd;
    use std::os::unix::process::CommandExt;
    let ns = std::fs::File::open(lab.node_netns(node)).unwrap();
    let mut cmd = std::process::Command::new(strake_lab::procs::bin("strake-cni").unwrap());
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    unsafe {
        cmd.pre_exec(move || {
            nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(std::io::Error::from)
        });
    }
    let mut child = cmd.spawn().unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    let out = child.wait_with_output().unwrap();
    let v = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
    (out.status.success(), v)
}

/// A lab from arbitrary YAML files (name -> content) in a directory named
/// `name`; the directory stays writable for live changes.
pub struct YamlLab {
    pub lab: Lab,
    pub dir: PathBuf,
    _base: tempfile::TempDir,
}

impl Drop for YamlLab {
    fn drop(&mut self) {
        if let Err(e) = self.lab.down() {
            eprintln!("lab down: {e:#}");
        }
    }
}

impl std::ops::Deref for YamlLab {
    type Target = Lab;
    fn deref(&self) -> &Lab {
        &self.lab
    }
}

pub fn yaml_lab(name: &str, files: &[(&str, String)]) -> YamlLab {
    yaml_lab_on(name, files, None)
}

/// The same, with the agents on a given source (else STRAKE_LAB_SOURCE's).
pub fn yaml_lab_on(
    name: &str,
    files: &[(&str, String)],
    source: Option<strake_lab::LabSource>,
) -> YamlLab {
    let base = tempfile::tempdir().unwrap();
    let dir = base.path().join(name);
    std::fs::create_dir_all(&dir).unwrap();
    for (f, text) in files {
        std::fs::write(dir.join(f), text).unwrap();
    }
    let mut lab = Lab::load(&dir).unwrap();
    if let Some(s) = source {
        lab = lab.with_source(s);
    }
    let _ = lab.down();
    let t = YamlLab {
        lab,
        dir,
        _base: base,
    };
    if let Err(e) = t.lab.up() {
        panic!("lab up: {e:#}");
    }
    t
}

pub fn node_yaml(name: &str, cidr: &str, ip: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Node\nmetadata: {{name: {name}}}\nspec: {{podCIDR: {cidr}}}\nstatus: {{addresses: [{{type: InternalIP, address: {ip}}}]}}\n"
    )
}

/// A pod serving TCP and UDP on 80 (port names http, dns), optionally
/// terminating (deletionTimestamp set).
pub fn pod_yaml(ns: &str, name: &str, node: &str, app: &str, terminating: bool) -> String {
    let del = if terminating {
        ", deletionTimestamp: \"2026-01-01T00:00:00Z\""
    } else {
        ""
    };
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{namespace: {ns}, name: {name}, labels: {{app: {app}}}{del}}}\nspec:\n  nodeName: {node}\n  containers:\n  - name: c\n    ports: [{{name: http, containerPort: 80, protocol: TCP}}, {{name: dns, containerPort: 80, protocol: UDP}}]\n"
    )
}

pub fn pod_spec(ns: &str, name: &str, node: &str, app: &str) -> strake_lab::PodSpec {
    strake_lab::PodSpec {
        namespace: ns.into(),
        name: name.into(),
        node: node.into(),
        labels: [("app".to_string(), app.to_string())].into(),
        tcp_ports: vec![80],
        udp_ports: vec![80],
    }
}

/// Opens `n` TCP connections from inside `ns`, one after another, and counts
/// the greetings (backend names); failures are counted under "!error".
pub fn tcp_spread(
    ns: &std::path::Path,
    to: SocketAddrV4,
    n: usize,
) -> std::collections::BTreeMap<String, usize> {
    strake_netlink::netns::run_in(ns, move || {
        use std::io::BufRead;
        let mut m = std::collections::BTreeMap::new();
        for _ in 0..n {
            let got = std::net::TcpStream::connect_timeout(&to.into(), Duration::from_secs(2))
                .and_then(|s| {
                    s.set_read_timeout(Some(Duration::from_secs(2)))?;
                    let mut line = String::new();
                    std::io::BufReader::new(s).read_line(&mut line)?;
                    Ok(line.trim_end().to_string())
                });
            *m.entry(got.unwrap_or_else(|_| "!error".into()))
                .or_default() += 1;
        }
        Ok(m)
    })
    .unwrap()
}

/// The same with UDP datagrams, each from a new socket (a new flow).
pub fn udp_spread(
    ns: &std::path::Path,
    to: SocketAddrV4,
    n: usize,
) -> std::collections::BTreeMap<String, usize> {
    strake_netlink::netns::run_in(ns, move || {
        let mut m = std::collections::BTreeMap::new();
        for _ in 0..n {
            let got = (|| -> std::io::Result<String> {
                let s = std::net::UdpSocket::bind("0.0.0.0:0")?;
                s.set_read_timeout(Some(Duration::from_secs(1)))?;
                s.send_to(b"x", to)?;
                let mut buf = [0u8; 256];
                let (k, _) = s.recv_from(&mut buf)?;
                Ok(String::from_utf8_lossy(&buf[..k]).to_string())
            })();
            *m.entry(got.unwrap_or_else(|_| "!error".into()))
                .or_default() += 1;
        }
        Ok(m)
    })
    .unwrap()
}

/// Runs `strake-lab client` in a lab target (its namespace and its node's
/// cgroup) and returns its attempts.
pub fn client(
    lab: &strake_lab::Lab,
    target: &str,
    to: SocketAddrV4,
    mode: &str,
    n: usize,
) -> Vec<strake_lab::probe::Attempt> {
    let bin = strake_lab::procs::bin("strake-lab").unwrap();
    let (to_s, n_s) = (to.to_string(), n.to_string());
    let out = lab
        .exec(
            target,
            bin.to_str().unwrap(),
            &[
                "client",
                &to_s,
                "--mode",
                mode,
                "--count",
                &n_s,
                "--timeout-ms",
                "2000",
            ],
        )
        .unwrap();
    assert!(
        out.status.success(),
        "client in {target}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}
