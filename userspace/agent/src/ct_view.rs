//! `strake ct list` / `strake ct flush`: the connection table as an
//! operator reads it, and removing the flows a filter names.

use crate::agent::Agent;
use std::collections::HashMap;
use std::net::Ipv4Addr;
use strake_api::{ApiError, CtEntryView, CtFilter, CtFlushView, CtListView, ErrorKind};
use strake_datapath::conntrack::{self, is_policy, FlowState, Timeouts};
use strake_datapath::shared::{
    backend_info, ct_entry, ct_key, STRAKE_CT_F_DSR, STRAKE_CT_F_HAIRPIN, STRAKE_CT_F_INBOUND,
    STRAKE_CT_F_MASQ, STRAKE_CT_F_SNAT, STRAKE_CT_POLICY, STRAKE_CT_REPLY, STRAKE_CT_SERVICE,
    STRAKE_DIR_EGRESS,
};

fn internal(e: anyhow::Error) -> ApiError {
    ApiError::new(ErrorKind::Internal, format!("{e:#}"))
}

fn ip(be: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from_be(be))
}

fn port(be: u16) -> u16 {
    u16::from_be(be)
}

fn proto_name(p: u8) -> String {
    match p as i32 {
        libc::IPPROTO_TCP => "tcp".into(),
        libc::IPPROTO_UDP => "udp".into(),
        libc::IPPROTO_ICMP => "icmp".into(),
        libc::IPPROTO_SCTP => "sctp".into(),
        n => n.to_string(),
    }
}

/// The protocol number a filter's `proto` names.
fn proto_number(s: &str) -> Result<u8, ApiError> {
    match s.to_ascii_lowercase().as_str() {
        "tcp" => Ok(libc::IPPROTO_TCP as u8),
        "udp" => Ok(libc::IPPROTO_UDP as u8),
        "icmp" => Ok(libc::IPPROTO_ICMP as u8),
        "sctp" => Ok(libc::IPPROTO_SCTP as u8),
        n => n.parse().map_err(|_| {
            ApiError::new(
                ErrorKind::InvalidRequest,
                format!("--proto {s}: use tcp, udp, icmp, sctp or a protocol number"),
            )
        }),
    }
}

fn check_kind(k: &Option<String>) -> Result<(), ApiError> {
    match k.as_deref() {
        None | Some("service" | "reply" | "policy") => Ok(()),
        Some(k) => Err(ApiError::new(
            ErrorKind::InvalidRequest,
            format!("--kind {k}: use service, reply or policy"),
        )),
    }
}

fn state_name(s: FlowState) -> &'static str {
    match s {
        FlowState::Syn => "syn",
        FlowState::Established => "established",
        FlowState::Closing => "closing",
        FlowState::Other => "other",
    }
}

/// What an operator sees of entry `i` of `all` at `now`.
fn view(
    all: &[(ct_key, ct_entry)],
    partner: &[Option<usize>],
    i: usize,
    now: u32,
    t: &Timeouts,
    backends: &HashMap<u32, backend_info>,
) -> CtEntryView {
    let (k, v) = &all[i];
    let (state, last) = conntrack::unit_state(all, partner, i);
    let idle = now.saturating_sub(last);
    let kind = k.kind as u32;
    let policy = is_policy(k.kind);
    let mut flags = Vec::new();
    for (bit, name) in [
        (STRAKE_CT_F_SNAT, "snat"),
        (STRAKE_CT_F_DSR, "dsr"),
        (STRAKE_CT_F_HAIRPIN, "hairpin"),
        (STRAKE_CT_F_MASQ, "masq"),
        (STRAKE_CT_F_INBOUND, "inbound"),
    ] {
        if !policy && v.flags & bit != 0 {
            flags.push(name.to_string());
        }
    }
    if policy && v.revoked != 0 {
        flags.push("revoked".into());
    }
    if policy && v.exempt != 0 {
        flags.push("exempt".into());
    }
    let f = &k.flow;
    // What the flow looked like as the client sent it: a service entry's
    // key is that; a reply entry remembers it.
    let (client, frontend) = match kind {
        STRAKE_CT_SERVICE => (
            Some(format!("{}:{}", ip(f.saddr), port(f.sport))),
            Some(format!("{}:{}", ip(f.daddr), port(f.dport))),
        ),
        STRAKE_CT_REPLY => (
            Some(format!("{}:{}", ip(v.client), port(v.cport))),
            Some(format!("{}:{}", ip(v.vip), port(v.vport))),
        ),
        _ => (None, None),
    };
    let backend_id = (!policy).then_some(v.backend_id);
    let backend = match kind {
        // A reply entry's key starts at the backend.
        STRAKE_CT_REPLY => Some(format!("{}:{}", ip(f.saddr), port(f.sport))),
        STRAKE_CT_SERVICE => backends
            .get(&v.backend_id)
            .map(|b| format!("{}:{}", ip(b.addr), port(b.port))),
        _ => None,
    };
    let nat_port = match kind {
        STRAKE_CT_SERVICE if v.flags & STRAKE_CT_F_SNAT != 0 => Some(port(v.nat_port)),
        STRAKE_CT_REPLY if v.flags & STRAKE_CT_F_SNAT != 0 => Some(port(f.dport)),
        _ => None,
    };
    CtEntryView {
        kind: match kind {
            STRAKE_CT_SERVICE => "service",
            STRAKE_CT_REPLY => "reply",
            _ => "policy",
        }
        .into(),
        proto: proto_name(f.proto),
        src: ip(f.saddr),
        sport: port(f.sport),
        dst: ip(f.daddr),
        dport: port(f.dport),
        state: state_name(state).into(),
        idle_seconds: idle,
        expires_in_seconds: t.of(state).saturating_sub(idle),
        flags,
        client,
        frontend,
        backend_id,
        backend,
        nat_port,
        endpoint_id: policy.then_some(k.owner),
        direction: policy.then(|| {
            if kind - STRAKE_CT_POLICY == STRAKE_DIR_EGRESS {
                "egress".to_string()
            } else {
                "ingress".to_string()
            }
        }),
    }
}

/// A filter, checked once.
struct Matcher<'a> {
    f: &'a CtFilter,
    proto: Option<u8>,
}

impl<'a> Matcher<'a> {
    fn new(f: &'a CtFilter) -> Result<Self, ApiError> {
        check_kind(&f.kind)?;
        let proto = f.proto.as_deref().map(proto_number).transpose()?;
        Ok(Matcher { f, proto })
    }

    fn matches(&self, k: &ct_key, e: &CtEntryView) -> bool {
        let f = self.f;
        let addrs = || {
            [Some(e.src), Some(e.dst)].into_iter().chain(
                [&e.client, &e.frontend, &e.backend]
                    .into_iter()
                    .map(|s| s.as_deref().and_then(|s| s.split(':').next()?.parse().ok())),
            )
        };
        let ports = || {
            [Some(e.sport), Some(e.dport), e.nat_port]
                .into_iter()
                .chain([&e.client, &e.frontend, &e.backend].into_iter().map(|s| {
                    s.as_deref()
                        .and_then(|s| s.rsplit(':').next()?.parse().ok())
                }))
        };
        f.src.is_none_or(|a| a == e.src)
            && f.dst.is_none_or(|a| a == e.dst)
            && f.addr.is_none_or(|a| addrs().any(|x| x == Some(a)))
            && f.port.is_none_or(|p| ports().any(|x| x == Some(p)))
            && self.proto.is_none_or(|p| p == k.flow.proto)
            && f.kind.as_deref().is_none_or(|want| want == e.kind)
    }
}

/// Every entry with its key, and each one's partner (conntrack::partners).
type Views = (Vec<(ct_key, CtEntryView)>, Vec<Option<usize>>);

impl Agent {
    /// Every entry with its view, and each one's partner.
    fn ct_views(&self) -> Result<Views, ApiError> {
        let dp = self.dp();
        let all = dp.ct.dump().map_err(internal)?;
        let backends: HashMap<u32, backend_info> =
            dp.lb.backends().map_err(internal)?.into_iter().collect();
        drop(dp);
        let partner = conntrack::partners(&all);
        let (now, t) = (conntrack::monotonic_secs(), self.cfg.ct_timeouts());
        let views = (0..all.len())
            .map(|i| (all[i].0, view(&all, &partner, i, now, &t, &backends)))
            .collect();
        Ok((views, partner))
    }

    pub fn ct_list(&self, filter: &CtFilter) -> Result<CtListView, ApiError> {
        let m = Matcher::new(filter)?;
        let (views, _) = self.ct_views()?;
        let total = views.len() as u64;
        let mut entries: Vec<CtEntryView> = views
            .into_iter()
            .filter(|(k, e)| m.matches(k, e))
            .map(|(_, e)| e)
            .collect();
        entries.sort_by(|a, b| {
            (&a.kind, a.src, a.sport, a.dst, a.dport)
                .cmp(&(&b.kind, b.src, b.sport, b.dst, b.dport))
        });
        Ok(CtListView {
            node: self.node().to_string(),
            total,
            capacity: self.dp().ct.capacity as u64,
            entries,
        })
    }

    /// Removes the selected entries and their flows' other entries (a
    /// service entry's reply entry and back): a flow goes whole, and its
    /// SNAT port with it. Its next packet starts a new flow: a new backend
    /// choice.
    pub fn ct_flush(&self, filter: &CtFilter) -> Result<CtFlushView, ApiError> {
        let m = Matcher::new(filter)?;
        let (views, partner) = self.ct_views()?;
        let mut chosen = vec![false; views.len()];
        for (i, (k, e)) in views.iter().enumerate() {
            if m.matches(k, e) {
                chosen[i] = true;
                if let Some(j) = partner[i] {
                    chosen[j] = true;
                }
            }
        }
        let keys: Vec<ct_key> = views
            .iter()
            .zip(&chosen)
            .filter(|(_, c)| **c)
            .map(|((k, _), _)| *k)
            .collect();
        let removed = self.dp().ct.remove_flows(&keys).map_err(internal)?;
        tracing::info!(removed, ?filter, "connection-table entries flushed");
        Ok(CtFlushView {
            node: self.node().to_string(),
            removed,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(kind: &str) -> CtEntryView {
        CtEntryView {
            kind: kind.into(),
            proto: "udp".into(),
            src: "10.0.0.100".parse().unwrap(),
            sport: 40000,
            dst: "10.0.0.1".parse().unwrap(),
            dport: 30080,
            state: "other".into(),
            idle_seconds: 0,
            expires_in_seconds: 60,
            flags: vec!["snat".into()],
            client: Some("10.0.0.100:40000".into()),
            frontend: Some("10.0.0.1:30080".into()),
            backend_id: Some(3),
            backend: Some("10.244.2.5:80".into()),
            nat_port: Some(20001),
            endpoint_id: None,
            direction: None,
        }
    }

    fn key(proto: i32) -> ct_key {
        ct_key {
            flow: strake_datapath::shared::flow_key {
                proto: proto as u8,
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn filters_match_any_address_or_port_of_an_entry_and_refuse_nonsense() {
        let e = entry("service");
        let k = key(libc::IPPROTO_UDP);
        let yes = |f: CtFilter| Matcher::new(&f).unwrap().matches(&k, &e);
        assert!(yes(CtFilter::default()));
        assert!(yes(CtFilter {
            addr: Some("10.244.2.5".parse().unwrap()),
            port: Some(20001),
            proto: Some("UDP".into()),
            kind: Some("service".into()),
            ..Default::default()
        }));
        assert!(yes(CtFilter {
            src: Some("10.0.0.100".parse().unwrap()),
            dst: Some("10.0.0.1".parse().unwrap()),
            port: Some(80),
            ..Default::default()
        }));
        assert!(!yes(CtFilter {
            src: Some("10.0.0.1".parse().unwrap()),
            ..Default::default()
        }));
        assert!(!yes(CtFilter {
            proto: Some("tcp".into()),
            ..Default::default()
        }));
        assert!(!yes(CtFilter {
            kind: Some("reply".into()),
            ..Default::default()
        }));
        assert!(!yes(CtFilter {
            port: Some(443),
            ..Default::default()
        }));
        for bad in [
            CtFilter {
                proto: Some("tpc".into()),
                ..Default::default()
            },
            CtFilter {
                kind: Some("nat".into()),
                ..Default::default()
            },
        ] {
            let e = Matcher::new(&bad).err().unwrap();
            assert_eq!(e.kind, ErrorKind::InvalidRequest);
            assert!(e.message.contains("use "), "{}", e.message);
        }
    }
}
