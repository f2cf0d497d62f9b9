//! Human-readable renderings.

use std::fmt::Write;
use strake_api::{AgentStatus, EndpointView};
use strake_lab::Lab;

fn human_bytes(b: u64) -> String {
    const U: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut i = 0;
    while v >= 1024.0 && i < U.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", U[i])
    }
}

pub fn status(s: &AgentStatus) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "node {}  (strake-agent {}, up {}s)",
        s.node, s.version, s.uptime_seconds
    );
    let _ = writeln!(
        o,
        "  pod CIDR {}   uplink {}   endpoints {}   node routes {}",
        s.pod_cidr.as_deref().unwrap_or("-"),
        s.uplink.as_deref().unwrap_or("(not attached)"),
        s.endpoints,
        s.routes
    );
    let _ = writeln!(
        o,
        "  desired state: {} (revision {}){}",
        if s.synced { "loaded" } else { "NOT loaded" },
        s.source_revision,
        if s.source_errors.is_empty() {
            String::new()
        } else {
            format!(", {} invalid documents", s.source_errors.len())
        }
    );
    let _ = writeln!(o, "  bpffs {}", s.bpffs_root);
    let _ = writeln!(
        o,
        "  {:<12} {:<18} {:>6} {:<18} {:>11}",
        "PROGRAM", "ATTACHED AT", "ID", "TAG", "ATTACHMENTS"
    );
    for p in &s.programs {
        let _ = writeln!(
            o,
            "  {:<12} {:<18} {:>6} {:<18} {:>11}",
            p.name, p.attach_point, p.id, p.tag, p.attachments
        );
    }
    let _ = writeln!(
        o,
        "  {:<16} {:>10} {:>10} {:>6}",
        "MAP", "ENTRIES", "CAPACITY", "FILL"
    );
    for m in &s.maps {
        let fill = if m.capacity > 0 {
            100.0 * m.entries as f64 / m.capacity as f64
        } else {
            0.0
        };
        let _ = writeln!(
            o,
            "  {:<16} {:>10} {:>10} {:>5.1}%",
            m.name, m.entries, m.capacity, fill
        );
    }
    let _ = writeln!(o, "  {:<16} {:>12} {:>12}", "COUNTER", "PACKETS", "BYTES");
    for c in s.counters.iter().filter(|c| c.packets > 0) {
        let _ = writeln!(
            o,
            "  {:<16} {:>12} {:>12}",
            c.name,
            c.packets,
            human_bytes(c.bytes)
        );
    }
    for e in &s.source_errors {
        let _ = writeln!(o, "  ! {e}");
    }
    o
}

pub fn endpoints(all: &[(String, Vec<EndpointView>)]) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "{:<10} {:<28} {:<15} {:<16} {:>4} {:<8}",
        "NODE", "POD", "IP", "HOST VETH", "ID", "DATAPATH"
    );
    for (node, eps) in all {
        for e in eps {
            let pod = e.pod.as_ref().map(|p| p.to_string()).unwrap_or_else(|| {
                format!("({})", &e.container_id[..12.min(e.container_id.len())])
            });
            let _ = writeln!(
                o,
                "{:<10} {:<28} {:<15} {:<16} {:>4} {:<8}",
                node,
                pod,
                e.ip,
                e.host_ifname,
                e.endpoint_id,
                if e.attached { "ok" } else { "MISSING" }
            );
        }
    }
    o
}

pub fn lab_summary(lab: &Lab) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "lab {} is up", lab.name);
    for n in &lab.spec.nodes {
        let _ = writeln!(
            o,
            "  node {:<10} {:<15} pods {}/{}",
            n.name, n.ip, n.pod_cidr.0, n.pod_cidr.1
        );
        for p in lab.spec.pods.iter().filter(|p| p.node == n.name) {
            let ip = lab
                .pod_ip(&p.namespace, &p.name)
                .map(|i| i.to_string())
                .unwrap_or_else(|_| "-".into());
            let _ = writeln!(o, "    pod {:<28} {ip}", p.key());
        }
    }
    let _ = writeln!(
        o,
        "try: strake status --lab {}    strake lab probe <ns/pod> <ip:port>",
        lab.dir.display()
    );
    o
}
