//! Human-readable renderings.

use std::fmt::Write;
use strake_api::{AgentStatus, EndpointView};

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
        "  north-south Services {}",
        match s.north_south.as_deref() {
            Some("xdp") => "XDP (native, on the uplink)",
            Some("tc") => "tc ingress on the uplink (no native XDP)",
            _ => "(uplink not attached)",
        }
    );
    let _ = writeln!(
        o,
        "  socket load balancing {}",
        s.socket_lb
            .as_deref()
            .map(|c| format!("attached at cgroup {c}"))
            .unwrap_or_else(|| "off (Services by per-packet translation only)".into())
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
    let _ = writeln!(
        o,
        "  applied: revision {} of {}",
        s.applied_revision, s.source_revision
    );
    let r = &s.routing;
    let _ = writeln!(
        o,
        "  routing: {}{}, encapsulation {}",
        r.mode,
        if r.mode == "bgp" {
            format!(
                " ({}/{} sessions established)",
                r.sessions_established, r.sessions
            )
        } else {
            String::new()
        },
        r.encapsulation
    );
    for n in &r.nodes {
        let _ = writeln!(
            o,
            "    {:<12} {:<18} via {:<6} {}",
            n.node,
            n.block,
            n.via,
            n.next_hops.join(",")
        );
    }
    let _ = writeln!(
        o,
        "  {:<10} {:>8} {:>8} {:>9}  STATE",
        "PHASE", "APPLIED", "PASSES", "LAST"
    );
    for p in &s.phases {
        let state = match (&p.last_error, &p.waiting) {
            (Some(e), _) => format!(
                "FAILED x{}, retry in {} ms: {e}",
                p.failures,
                p.next_run_ms.unwrap_or(0)
            ),
            (None, Some(w)) => format!("waiting: {w}"),
            _ if p.applied_revision >= s.source_revision => "ok".into(),
            _ => "pending".into(),
        };
        let _ = writeln!(
            o,
            "  {:<10} {:>8} {:>8} {:>7.1}ms  {state}",
            p.name, p.applied_revision, p.passes, p.last_duration_ms
        );
    }
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

pub fn lb(s: &strake_api::LbStatus) -> String {
    let mut o = String::new();
    let fill = if s.ct_capacity > 0 {
        100.0 * s.ct_entries as f64 / s.ct_capacity as f64
    } else {
        0.0
    };
    let _ = writeln!(
        o,
        "node {}: {} service ports, connection table {}/{} ({fill:.1}%)",
        s.node,
        s.services.len(),
        s.ct_entries,
        s.ct_capacity
    );
    for svc in &s.services {
        let _ = writeln!(
            o,
            "  {} {}  scheduler {}{}  external {} (policy {}), internal policy {}{}",
            svc.service,
            svc.protocol,
            svc.scheduler,
            if svc.scheduler == "maglev" {
                format!(" M={}", svc.table_size)
            } else {
                String::new()
            },
            svc.external_mode,
            svc.external_traffic_policy,
            svc.internal_traffic_policy,
            svc.affinity_timeout
                .map(|t| format!("  affinity ClientIP {t}s"))
                .unwrap_or_default()
        );
        for f in &svc.frontends {
            let addr = if f.address.is_unspecified() {
                "*".to_string()
            } else {
                f.address.to_string()
            };
            // The socket path translates no packet, so its work is counted
            // apart; shown only where it did any, to keep the table narrow.
            let sock = &f.socket;
            let socket = if sock.connects + sock.datagrams + sock.refused > 0 {
                format!(
                    "  socket: {} connects {} datagrams {} refused",
                    sock.connects, sock.datagrams, sock.refused
                )
            } else {
                String::new()
            };
            let _ = writeln!(
                o,
                "    {:<12} {:>21}  {:<7}  {:>10} pkts {:>10} flows{}{socket}",
                f.kind,
                format!("{addr}:{}", f.port),
                f.scope,
                f.counters.packets,
                f.counters.new_flows,
                if f.rejected > 0 {
                    format!(" {:>10} rejected", f.rejected)
                } else {
                    String::new()
                }
            );
        }
        for b in &svc.backends {
            let state = if b.active {
                "active".to_string()
            } else if b.terminating {
                "terminating".into()
            } else if !b.ready {
                "not-ready".into()
            } else if !b.healthy {
                format!("unhealthy ({})", b.health_error.as_deref().unwrap_or("?"))
            } else {
                "inactive".into()
            };
            let _ = writeln!(
                o,
                "    -> {:>21} w{} {:<10} {:<24} {:>10} pkts {:>10} flows  {}",
                format!("{}:{}", b.address, b.port),
                b.weight,
                b.node.as_deref().unwrap_or("-"),
                b.pod.as_deref().unwrap_or("-"),
                b.counters.packets,
                b.counters.new_flows,
                state
            );
        }
    }
    for p in &s.problems {
        let _ = writeln!(o, "  ! {p}");
    }
    o
}

pub fn trace(t: &strake_api::PolicyTraceView) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "{} -> {} {}/{}: {}",
        t.from,
        t.to,
        t.port,
        t.protocol,
        if t.allowed { "ALLOWED" } else { "DENIED" }
    );
    for d in [&t.egress, &t.ingress].into_iter().flatten() {
        let _ = writeln!(
            o,
            "  {:<7} of {:<20} {}  {}",
            d.direction,
            d.pod,
            if d.allowed { "allow" } else { "deny " },
            d.reason
        );
    }
    if t.egress.is_none() {
        let _ = writeln!(o, "  egress  not a pod: no policy applies");
    }
    if t.ingress.is_none() {
        let _ = writeln!(o, "  ingress not a pod: no policy applies");
    }
    o
}

fn age(s: Option<u64>) -> String {
    match s {
        None => "-".into(),
        Some(s) if s < 120 => format!("{s}s"),
        Some(s) if s < 7200 => format!("{}m", s / 60),
        Some(s) if s < 172800 => format!("{}h", s / 3600),
        Some(s) => format!("{}d", s / 86400),
    }
}

/// `strake bgp peers`, one node.
pub fn bgp_peers(node: &str, s: &strake_api::BgpStatus) -> String {
    let mut o = String::new();
    if !s.enabled {
        let _ = writeln!(
            o,
            "node {node}: BGP off (no BGPConfiguration selects it; routes are direct)"
        );
        return o;
    }
    let _ = writeln!(
        o,
        "node {node}: AS {}, router id {}, BIRD {} ({})",
        s.as_number.map_or("-".into(), |a| a.to_string()),
        s.router_id.as_deref().unwrap_or("-"),
        if s.bird_running {
            "running"
        } else {
            "NOT RUNNING"
        },
        s.bird_socket
    );
    let _ = writeln!(
        o,
        "  {:<15} {:>10} {:<12} {:>7} {:>8} {:>5}  FROM",
        "PEER", "AS", "STATE", "UPTIME", "RECEIVED", "SENT"
    );
    for p in &s.sessions {
        let mut state = p.bgp_state.clone();
        if p.peer_restarting {
            state.push_str(" (peer restarting)");
        }
        let _ = writeln!(
            o,
            "  {:<15} {:>10} {:<12} {:>7} {:>8} {:>5}  {}{}",
            p.neighbor,
            p.neighbor_as,
            state,
            age(p.uptime_seconds),
            p.received,
            p.sent,
            p.origin,
            p.last_error
                .as_ref()
                .filter(|_| !p.established)
                .map(|e| format!("  [{e}]"))
                .unwrap_or_default()
        );
    }
    for a in &s.announced {
        let _ = writeln!(o, "  announces {:<18} {}", a.prefix, a.why);
    }
    for p in &s.problems {
        let _ = writeln!(o, "  REFUSED: {p}");
    }
    o
}

/// `strake bgp routes`, one node.
pub fn bgp_routes(node: &str, routes: &[strake_api::BgpRouteView]) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "node {node}:");
    let _ = writeln!(
        o,
        "  {:<18} {:<4} {:<16} {:<15} {:<20} {:>6}  AS PATH",
        "PREFIX", "BEST", "FROM", "PEER", "NEXT HOP", "AGE"
    );
    for r in routes {
        let from = if r.protocol == "strake_announce" {
            "(announced)".to_string()
        } else {
            r.protocol.clone()
        };
        let hops = if r.next_hops.is_empty() {
            r.kind.clone()
        } else {
            r.next_hops.join(",")
        };
        let _ = writeln!(
            o,
            "  {:<18} {:<4} {:<16} {:<15} {:<20} {:>6}  {}",
            r.prefix,
            if r.best { "*" } else { "" },
            from,
            r.from.as_deref().unwrap_or("-"),
            hops,
            age(r.age_seconds),
            r.as_path
                .iter()
                .map(|a| a.to_string())
                .collect::<Vec<_>>()
                .join(" ")
        );
    }
    o
}

pub fn ct(v: &strake_api::CtListView) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "node {}: {} of {} entries in the table, {} shown",
        v.node,
        v.total,
        v.capacity,
        v.entries.len()
    );
    if v.entries.is_empty() {
        return o;
    }
    let _ = writeln!(
        o,
        "  {:<8} {:<5} {:<22} {:<22} {:<12} {:>6} {:>8}  details",
        "KIND", "PROTO", "SOURCE", "DESTINATION", "STATE", "IDLE", "EXPIRES"
    );
    for e in &v.entries {
        let mut details = Vec::new();
        if let Some(c) = &e.client {
            details.push(format!("client {c}"));
        }
        if let Some(f) = &e.frontend {
            details.push(format!("frontend {f}"));
        }
        match (&e.backend, e.backend_id) {
            (Some(b), Some(id)) => details.push(format!("backend {b} (id {id})")),
            (None, Some(id)) => details.push(format!("backend id {id}")),
            _ => {}
        }
        if let Some(p) = e.nat_port {
            details.push(format!("nat port {p}"));
        }
        if let (Some(id), Some(d)) = (e.endpoint_id, &e.direction) {
            details.push(format!("endpoint {id} {d}"));
        }
        if !e.flags.is_empty() {
            details.push(e.flags.join(","));
        }
        let _ = writeln!(
            o,
            "  {:<8} {:<5} {:<22} {:<22} {:<12} {:>5}s {:>7}s  {}",
            e.kind,
            e.proto,
            format!("{}:{}", e.src, e.sport),
            format!("{}:{}", e.dst, e.dport),
            e.state,
            e.idle_seconds,
            e.expires_in_seconds,
            details.join("  ")
        );
    }
    o
}
