//! The rules kube-proxy writes for Services, for the baselines: its iptables
//! mode (a KUBE-SERVICES chain matched rule by rule, a chain per service
//! choosing an endpoint by `statistic random`, a chain per endpoint doing
//! the DNAT, masquerade by mark) and its nftables mode (one verdict map
//! keyed by address, protocol and port; `numgen random` over endpoint
//! chains). Written from kube-proxy's documented rule layout, without
//! comments and conntrack-state extras, so the baselines are if anything a
//! little lighter than the real thing.

use std::fmt::Write;
use std::net::Ipv4Addr;

#[derive(Debug, Clone)]
pub struct Svc {
    pub cluster_ip: Ipv4Addr,
    /// A LoadBalancer address (external traffic is masqueraded).
    pub lb_ip: Option<Ipv4Addr>,
    pub port: u16,
    /// "tcp" and/or "udp".
    pub protos: Vec<&'static str>,
    pub backends: Vec<(Ipv4Addr, u16)>,
}

/// kube-proxy names chains by a hash of what they stand for (names are
/// limited to 28 characters).
fn chain(kind: &str, parts: &[&dyn std::fmt::Display]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in p.to_string().bytes().chain([0xff]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    format!("KUBE-{kind}-{h:016X}")
}

fn svc_chain(i: usize, proto: &str) -> String {
    chain("SVC", &[&i, &proto])
}
fn ext_chain(i: usize, proto: &str) -> String {
    chain("EXT", &[&i, &proto])
}
fn sep_chain(i: usize, proto: &str, b: &(Ipv4Addr, u16)) -> String {
    chain("SEP", &[&i, &proto, &b.0, &b.1])
}

fn services_rules(out: &mut String, svcs: &[Svc]) {
    for (i, s) in svcs.iter().enumerate() {
        for p in &s.protos {
            let _ = writeln!(
                out,
                "-A KUBE-SERVICES -d {}/32 -p {p} -m {p} --dport {} -j {}",
                s.cluster_ip,
                s.port,
                svc_chain(i, p)
            );
            if let Some(lb) = s.lb_ip {
                let _ = writeln!(
                    out,
                    "-A KUBE-SERVICES -d {lb}/32 -p {p} -m {p} --dport {} -j {}",
                    s.port,
                    ext_chain(i, p)
                );
            }
        }
    }
}

fn service_chains(out: &mut String, i: usize, s: &Svc, declare: bool) {
    for p in &s.protos {
        let svc = svc_chain(i, p);
        if declare {
            let _ = writeln!(out, ":{svc} - [0:0]");
            if s.lb_ip.is_some() {
                let _ = writeln!(out, ":{} - [0:0]", ext_chain(i, p));
            }
            for b in &s.backends {
                let _ = writeln!(out, ":{} - [0:0]", sep_chain(i, p, b));
            }
            continue;
        }
        if s.lb_ip.is_some() {
            let ext = ext_chain(i, p);
            let _ = writeln!(out, "-A {ext} -j KUBE-MARK-MASQ");
            let _ = writeln!(out, "-A {ext} -j {svc}");
        }
        let n = s.backends.len();
        for (k, b) in s.backends.iter().enumerate() {
            let sep = sep_chain(i, p, b);
            if k + 1 < n {
                let _ = writeln!(
                    out,
                    "-A {svc} -m statistic --mode random --probability {:.11} -j {sep}",
                    1.0 / (n - k) as f64
                );
            } else {
                let _ = writeln!(out, "-A {svc} -j {sep}");
            }
            let _ = writeln!(out, "-A {sep} -s {}/32 -j KUBE-MARK-MASQ", b.0);
            let _ = writeln!(
                out,
                "-A {sep} -p {p} -m {p} -j DNAT --to-destination {}:{}",
                b.0, b.1
            );
        }
    }
}

/// The whole nat table, for `iptables-restore`.
pub fn iptables(svcs: &[Svc]) -> String {
    let mut o = String::with_capacity(svcs.len() * 1500);
    o += "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n";
    o += ":KUBE-SERVICES - [0:0]\n:KUBE-POSTROUTING - [0:0]\n:KUBE-MARK-MASQ - [0:0]\n";
    for (i, s) in svcs.iter().enumerate() {
        service_chains(&mut o, i, s, true);
    }
    o += "-A PREROUTING -j KUBE-SERVICES\n-A OUTPUT -j KUBE-SERVICES\n-A POSTROUTING -j KUBE-POSTROUTING\n";
    o += "-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000\n";
    o += "-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN\n";
    o += "-A KUBE-POSTROUTING -j MARK --xor-mark 0x4000\n";
    o += "-A KUBE-POSTROUTING -j MASQUERADE --random-fully\n";
    services_rules(&mut o, svcs);
    for (i, s) in svcs.iter().enumerate() {
        service_chains(&mut o, i, s, false);
    }
    o += "COMMIT\n";
    o
}

/// What kube-proxy (1.28+, MinimizeIPTablesRestore) restores with
/// `--noflush` when one service's endpoints change from `old` to
/// `svcs[i]`: KUBE-SERVICES rewritten whole, the changed service's chains,
/// and the endpoint chains that went away flushed and deleted.
pub fn iptables_change_one(svcs: &[Svc], i: usize, old: &Svc) -> String {
    let mut o = String::with_capacity(svcs.len() * 200);
    o += "*nat\n:KUBE-SERVICES - [0:0]\n";
    service_chains(&mut o, i, &svcs[i], true);
    let gone: Vec<String> = old
        .protos
        .iter()
        .flat_map(|p| {
            old.backends
                .iter()
                .filter(|b| !svcs[i].backends.contains(b))
                .map(move |b| sep_chain(i, p, b))
        })
        .collect();
    for g in &gone {
        let _ = writeln!(o, ":{g} - [0:0]");
    }
    services_rules(&mut o, svcs);
    service_chains(&mut o, i, &svcs[i], false);
    for g in &gone {
        let _ = writeln!(o, "-X {g}");
    }
    o += "COMMIT\n";
    o
}

const NFT_TABLE: &str = "ip kube-proxy";

fn nft_svc(i: usize, p: &str) -> String {
    format!("service-{i}-{p}")
}
fn nft_ext(i: usize, p: &str) -> String {
    format!("external-{i}-{p}")
}
fn nft_ep(i: usize, p: &str, b: &(Ipv4Addr, u16)) -> String {
    format!("endpoint-{i}-{p}-{}-{}", b.0, b.1).replace('.', "-")
}

fn nft_service(o: &mut String, i: usize, s: &Svc, declare: bool) {
    for p in &s.protos {
        if declare {
            let _ = writeln!(o, "add chain {NFT_TABLE} {}", nft_svc(i, p));
            if s.lb_ip.is_some() {
                let _ = writeln!(o, "add chain {NFT_TABLE} {}", nft_ext(i, p));
            }
            for b in &s.backends {
                let _ = writeln!(o, "add chain {NFT_TABLE} {}", nft_ep(i, p, b));
            }
            continue;
        }
        let vmap: Vec<String> = s
            .backends
            .iter()
            .enumerate()
            .map(|(k, b)| format!("{k} : goto {}", nft_ep(i, p, b)))
            .collect();
        let _ = writeln!(
            o,
            "add rule {NFT_TABLE} {} numgen random mod {} vmap {{ {} }}",
            nft_svc(i, p),
            s.backends.len(),
            vmap.join(", ")
        );
        if s.lb_ip.is_some() {
            let _ = writeln!(
                o,
                "add rule {NFT_TABLE} {} jump mark-for-masquerade",
                nft_ext(i, p)
            );
            let _ = writeln!(
                o,
                "add rule {NFT_TABLE} {} goto {}",
                nft_ext(i, p),
                nft_svc(i, p)
            );
        }
        for b in &s.backends {
            let ep = nft_ep(i, p, b);
            let _ = writeln!(
                o,
                "add rule {NFT_TABLE} {ep} ip saddr {} jump mark-for-masquerade",
                b.0
            );
            let _ = writeln!(
                o,
                "add rule {NFT_TABLE} {ep} meta l4proto {p} dnat to {}:{}",
                b.0, b.1
            );
        }
    }
}

fn nft_elements(o: &mut String, i: usize, s: &Svc, verb: &str) {
    for p in &s.protos {
        let mut e = vec![format!(
            "{} . {p} . {} : goto {}",
            s.cluster_ip,
            s.port,
            nft_svc(i, p)
        )];
        if let Some(lb) = s.lb_ip {
            e.push(format!("{lb} . {p} . {} : goto {}", s.port, nft_ext(i, p)));
        }
        let _ = writeln!(
            o,
            "{verb} element {NFT_TABLE} service-ips {{ {} }}",
            e.join(", ")
        );
    }
}

/// The whole kube-proxy table, for `nft -f`.
pub fn nft(svcs: &[Svc]) -> String {
    let mut o = String::with_capacity(svcs.len() * 1200);
    let _ = writeln!(o, "add table {NFT_TABLE}");
    for c in ["mark-for-masquerade", "masquerading", "services"] {
        let _ = writeln!(o, "add chain {NFT_TABLE} {c}");
    }
    let _ = writeln!(o, "add chain {NFT_TABLE} nat-prerouting {{ type nat hook prerouting priority dstnat ; policy accept ; }}");
    let _ = writeln!(o, "add chain {NFT_TABLE} nat-output {{ type nat hook output priority -100 ; policy accept ; }}");
    let _ = writeln!(o, "add chain {NFT_TABLE} nat-postrouting {{ type nat hook postrouting priority srcnat ; policy accept ; }}");
    let _ = writeln!(o, "add map {NFT_TABLE} service-ips {{ type ipv4_addr . inet_proto . inet_service : verdict ; }}");
    let _ = writeln!(
        o,
        "add rule {NFT_TABLE} mark-for-masquerade meta mark set meta mark or 0x4000"
    );
    let _ = writeln!(
        o,
        "add rule {NFT_TABLE} masquerading meta mark & 0x4000 == 0 return"
    );
    let _ = writeln!(
        o,
        "add rule {NFT_TABLE} masquerading meta mark set meta mark xor 0x4000"
    );
    let _ = writeln!(
        o,
        "add rule {NFT_TABLE} masquerading masquerade fully-random"
    );
    let _ = writeln!(o, "add rule {NFT_TABLE} nat-prerouting jump services");
    let _ = writeln!(o, "add rule {NFT_TABLE} nat-output jump services");
    let _ = writeln!(o, "add rule {NFT_TABLE} nat-postrouting jump masquerading");
    let _ = writeln!(
        o,
        "add rule {NFT_TABLE} services ip daddr . meta l4proto . th dport vmap @service-ips"
    );
    for (i, s) in svcs.iter().enumerate() {
        nft_service(&mut o, i, s, true);
    }
    for (i, s) in svcs.iter().enumerate() {
        nft_service(&mut o, i, s, false);
        nft_elements(&mut o, i, s, "add");
    }
    o
}

/// What kube-proxy's nftables mode sends when one service's endpoints change
/// from `old` to `new`: new endpoint chains, the service chain rewritten,
/// the endpoint chains that went away deleted. The map is untouched.
pub fn nft_change_one(i: usize, old: &Svc, new: &Svc) -> String {
    let mut o = String::new();
    for p in &new.protos {
        for b in new.backends.iter().filter(|b| !old.backends.contains(b)) {
            let _ = writeln!(o, "add chain {NFT_TABLE} {}", nft_ep(i, p, b));
            let ep = nft_ep(i, p, b);
            let _ = writeln!(
                o,
                "add rule {NFT_TABLE} {ep} ip saddr {} jump mark-for-masquerade",
                b.0
            );
            let _ = writeln!(
                o,
                "add rule {NFT_TABLE} {ep} meta l4proto {p} dnat to {}:{}",
                b.0, b.1
            );
        }
        let _ = writeln!(o, "flush chain {NFT_TABLE} {}", nft_svc(i, p));
        let vmap: Vec<String> = new
            .backends
            .iter()
            .enumerate()
            .map(|(k, b)| format!("{k} : goto {}", nft_ep(i, p, b)))
            .collect();
        let _ = writeln!(
            o,
            "add rule {NFT_TABLE} {} numgen random mod {} vmap {{ {} }}",
            nft_svc(i, p),
            new.backends.len(),
            vmap.join(", ")
        );
        for b in old.backends.iter().filter(|b| !new.backends.contains(b)) {
            let _ = writeln!(o, "flush chain {NFT_TABLE} {}", nft_ep(i, p, b));
            let _ = writeln!(o, "delete chain {NFT_TABLE} {}", nft_ep(i, p, b));
        }
    }
    o
}

/// Removes what either baseline installed in the calling namespace
/// (iptables here is Debian's default, the nf_tables backend).
pub fn flush_commands() -> Vec<Vec<&'static str>> {
    vec![
        vec!["nft", "delete", "table", "ip", "kube-proxy"],
        vec!["nft", "delete", "table", "ip", "nat"],
    ]
}
