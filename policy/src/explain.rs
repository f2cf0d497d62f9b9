//! Why a flow is allowed or not, straight from the policies (not from the
//! compiled maps), rule by rule: what `strake policy trace` prints. The tests
//! check it agrees with the compiled entries for every pair.

use crate::model::{Direction, Model, PodInfo, PortSel, Rule};
use serde::Serialize;
use std::net::Ipv4Addr;
use strake_source::ObjectKey;

/// One side of a flow: a pod, or an address outside the pod network.
#[derive(Debug, Clone)]
pub enum Endpoint {
    Pod(ObjectKey),
    Addr(Ipv4Addr),
}

#[derive(Debug, Clone, Serialize)]
pub struct Decision {
    pub pod: String,
    pub direction: String,
    /// Some policy selects the pod for this direction.
    pub isolated: bool,
    pub allowed: bool,
    /// Rules that allow it, as `namespace/policy direction rule N`.
    pub allowed_by: Vec<String>,
    /// Why, in words.
    pub reason: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Trace {
    pub from: String,
    pub to: String,
    pub port: u16,
    pub protocol: String,
    pub allowed: bool,
    pub egress: Option<Decision>,
    pub ingress: Option<Decision>,
}

/// The other side of a flow, from the judged pod's point of view.
struct Remote<'a> {
    pod: Option<&'a PodInfo>,
    ip: Ipv4Addr,
}

/// What is judged: a direction, protocol and (destination) port.
#[derive(Clone, Copy)]
struct Question {
    d: Direction,
    proto: u8,
    port: u16,
}

fn rule_allows(model: &Model, rule: &Rule, remote: &Remote, local: &PodInfo, q: Question) -> bool {
    let (remote_ip, d, proto, port) = (remote.ip, q.d, q.proto, q.port);
    let remote = remote.pod;
    let peer_ok = match &rule.peers {
        None => true,
        Some(ps) => ps.iter().any(|&i| {
            let peer = &model.peers[i];
            match remote {
                Some(r) => peer.matches_pod(r),
                None => peer.matches_prefix((remote_ip, 32)),
            }
        }),
    };
    if !peer_ok {
        return false;
    }
    match &rule.ports {
        None => true,
        Some(specs) => specs.iter().any(|s| {
            s.proto == proto
                && match &s.port {
                    PortSel::Any => true,
                    PortSel::Range(a, b) => (*a..=*b).contains(&port),
                    PortSel::Named(n) => {
                        let dest = if d == Direction::Ingress {
                            Some(local)
                        } else {
                            remote
                        };
                        dest.and_then(|p| p.named_ports.get(&(n.clone(), proto)))
                            .copied()
                            == Some(port)
                    }
                }
        }),
    }
}

fn decide(
    model: &Model,
    local: &PodInfo,
    remote: &Remote,
    q: Question,
    node_addrs: &[Ipv4Addr],
) -> Decision {
    let (d, remote_ip) = (q.d, remote.ip);
    let mut dec = Decision {
        pod: local.key.to_string(),
        direction: d.name().into(),
        isolated: false,
        allowed: true,
        allowed_by: vec![],
        reason: String::new(),
    };
    let selecting: Vec<_> = model.selecting(local, d).collect();
    if selecting.is_empty() {
        dec.reason = format!("no NetworkPolicy selects {} for {}", local.key, d.name());
        return dec;
    }
    dec.isolated = true;
    if Some(remote_ip) == local.ip {
        dec.reason = "a pod reaching itself is never blocked".into();
        return dec;
    }
    if d == Direction::Ingress && node_addrs.contains(&remote_ip) {
        dec.reason = "traffic from the pod's own node is never blocked".into();
        return dec;
    }
    for (_, p) in &selecting {
        for (i, r) in p.rules(d).into_iter().flatten().enumerate() {
            if rule_allows(model, r, remote, local, q) {
                dec.allowed_by
                    .push(format!("{} {} rule {i}", p.key, d.name()));
            }
        }
    }
    dec.allowed = !dec.allowed_by.is_empty();
    let names: Vec<String> = selecting.iter().map(|(_, p)| p.key.to_string()).collect();
    dec.reason = if dec.allowed {
        format!("allowed by {}", dec.allowed_by.join(", "))
    } else {
        format!(
            "isolated for {} by {}; no rule of theirs allows it",
            d.name(),
            names.join(", ")
        )
    };
    dec
}

/// Explains `from` -> `to` on `port`/`proto`. `node_addrs` are the
/// destination node's addresses (always allowed in).
pub fn explain(
    model: &Model,
    from: &Endpoint,
    to: &Endpoint,
    port: u16,
    proto: u8,
    node_addrs: &[Ipv4Addr],
) -> Result<Trace, String> {
    let resolve = |e: &Endpoint| -> Result<(Option<PodInfo>, Ipv4Addr, String), String> {
        match e {
            Endpoint::Pod(k) => {
                let p = model
                    .pod(k)
                    .ok_or_else(|| format!("no pod {k} with an address"))?;
                let ip = p.ip.ok_or_else(|| format!("pod {k} has no address yet"))?;
                Ok((Some(p.clone()), ip, k.to_string()))
            }
            Endpoint::Addr(ip) => {
                let p = model.pod_by_ip(*ip).cloned();
                let name = p
                    .as_ref()
                    .map(|p| p.key.to_string())
                    .unwrap_or_else(|| ip.to_string());
                Ok((p, *ip, name))
            }
        }
    };
    let (src_pod, src_ip, src_name) = resolve(from)?;
    let (dst_pod, dst_ip, dst_name) = resolve(to)?;
    let egress = src_pod.as_ref().map(|s| {
        let remote = Remote {
            pod: dst_pod.as_ref(),
            ip: dst_ip,
        };
        decide(
            model,
            s,
            &remote,
            Question {
                d: Direction::Egress,
                proto,
                port,
            },
            &[],
        )
    });
    let ingress = dst_pod.as_ref().map(|d| {
        let remote = Remote {
            pod: src_pod.as_ref(),
            ip: src_ip,
        };
        decide(
            model,
            d,
            &remote,
            Question {
                d: Direction::Ingress,
                proto,
                port,
            },
            node_addrs,
        )
    });
    let allowed =
        egress.as_ref().is_none_or(|d| d.allowed) && ingress.as_ref().is_none_or(|d| d.allowed);
    Ok(Trace {
        from: src_name,
        to: dst_name,
        port,
        protocol: crate::model::proto_name(proto),
        allowed,
        egress,
        ingress,
    })
}
