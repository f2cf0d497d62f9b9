//! Readers of BIRD's `show protocols all` and `show route all` replies, as
//! the control socket sends them (with the `%s` time format the rendered
//! configuration sets, so times are epoch seconds).

use crate::control::{Line, Reply};
use ipnetwork::Ipv4Network;
use serde::{Deserialize, Serialize};
use std::net::Ipv4Addr;

/// Route counts of a protocol's channel.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteCounts {
    pub imported: u64,
    pub filtered: u64,
    pub exported: u64,
    pub preferred: u64,
}

/// One protocol of `show protocols all`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Protocol {
    pub name: String,
    /// `BGP`, `Kernel`, `Static`, ...
    pub proto: String,
    /// `up`, `start`, `down`, ...
    pub state: String,
    /// When it entered that state (epoch seconds).
    pub since: Option<u64>,
    /// `Established`, `Active`, `Idle`, ... for BGP.
    pub info: String,
    pub description: Option<String>,
    pub bgp_state: Option<String>,
    pub neighbor_address: Option<Ipv4Addr>,
    pub neighbor_as: Option<u32>,
    pub local_as: Option<u32>,
    pub last_error: Option<String>,
    /// The neighbor is restarting and its routes are kept, stale.
    pub neighbor_restarting: bool,
    pub routes: RouteCounts,
}

impl Protocol {
    pub fn established(&self) -> bool {
        self.bgp_state.as_deref() == Some("Established")
    }
}

fn detail<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    let t = text.trim_start();
    let rest = t.strip_prefix(key)?.strip_prefix(':')?;
    Some(rest.trim())
}

fn counts(s: &str) -> RouteCounts {
    let mut c = RouteCounts::default();
    for part in s.split(',') {
        let mut it = part.split_whitespace();
        let (Some(n), Some(what)) = (it.next(), it.next()) else {
            continue;
        };
        let Ok(n) = n.parse() else { continue };
        match what {
            "imported" => c.imported = n,
            "filtered" => c.filtered = n,
            "exported" => c.exported = n,
            "preferred" => c.preferred = n,
            _ => {}
        }
    }
    c
}

/// Protocols from a `show protocols all` reply.
pub fn protocols(reply: &Reply) -> Vec<Protocol> {
    let mut out: Vec<Protocol> = Vec::new();
    for Line { code, text } in &reply.lines {
        match code {
            // One row of the table: name, protocol, table, state, since, info.
            1002 => {
                let f: Vec<&str> = text.split_whitespace().collect();
                if f.len() < 4 {
                    continue;
                }
                out.push(Protocol {
                    name: f[0].into(),
                    proto: f[1].into(),
                    state: f[3].into(),
                    since: f.get(4).and_then(|s| s.parse().ok()),
                    info: f.get(5..).map(|r| r.join(" ")).unwrap_or_default(),
                    ..Default::default()
                });
            }
            1006 => {
                let Some(p) = out.last_mut() else { continue };
                if let Some(v) = detail(text, "Description") {
                    p.description = Some(v.into());
                } else if let Some(v) = detail(text, "BGP state") {
                    p.bgp_state = Some(v.into());
                } else if let Some(v) = detail(text, "Neighbor address") {
                    p.neighbor_address = v.parse().ok();
                } else if let Some(v) = detail(text, "Neighbor AS") {
                    p.neighbor_as = v.parse().ok();
                } else if let Some(v) = detail(text, "Local AS") {
                    p.local_as = v.parse().ok();
                } else if let Some(v) = detail(text, "Last error") {
                    p.last_error = Some(v.into());
                } else if let Some(v) = detail(text, "Routes") {
                    p.routes = counts(v);
                } else if text.trim() == "Neighbor graceful restart active" {
                    p.neighbor_restarting = true;
                }
            }
            _ => {}
        }
    }
    out
}

/// One route of `show route all`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    pub table: String,
    pub prefix: Ipv4Network,
    /// `unicast`, `blackhole`, `unreachable`, `prohibit`.
    pub kind: String,
    /// The protocol it came from (a session, `strake_announce`, ...).
    pub protocol: String,
    pub since: Option<u64>,
    /// The peer that sent it.
    pub from: Option<Ipv4Addr>,
    /// BIRD's best route for the prefix (the one exported to the kernel).
    pub primary: bool,
    /// `(address, interface)` of every next hop (several for ECMP).
    pub next_hops: Vec<(Ipv4Addr, String)>,
    pub as_path: Vec<u32>,
    pub bgp_next_hop: Option<Ipv4Addr>,
    pub local_pref: Option<u32>,
}

const KINDS: [&str; 4] = ["unicast", "blackhole", "unreachable", "prohibit"];

/// `kind [proto since from X] * (pref) [origin]`, after the prefix.
fn route_head(table: &str, prefix: Ipv4Network, rest: &str) -> Option<Route> {
    let rest = rest.trim();
    let (kind, rest) = rest.split_once(char::is_whitespace)?;
    if !KINDS.contains(&kind) {
        return None;
    }
    let open = rest.find('[')?;
    let close = rest[open..].find(']')? + open;
    let inside: Vec<&str> = rest[open + 1..close].split_whitespace().collect();
    let after = &rest[close + 1..];
    let from = inside
        .iter()
        .position(|t| *t == "from")
        .and_then(|i| inside.get(i + 1))
        .and_then(|a| a.parse().ok());
    Some(Route {
        table: table.into(),
        prefix,
        kind: kind.into(),
        protocol: inside.first()?.to_string(),
        since: inside.get(1).and_then(|s| s.parse().ok()),
        from,
        primary: after.split_whitespace().next() == Some("*"),
        next_hops: Vec::new(),
        as_path: Vec::new(),
        bgp_next_hop: None,
        local_pref: None,
    })
}

/// Routes from a `show route all` (or `show route export P`) reply.
pub fn routes(reply: &Reply) -> Vec<Route> {
    let mut out: Vec<Route> = Vec::new();
    let mut table = String::new();
    let mut prefix: Option<Ipv4Network> = None;
    for Line { text, .. } in &reply.lines {
        let trimmed = text.trim();
        if let Some(t) = trimmed
            .strip_prefix("Table ")
            .and_then(|t| t.strip_suffix(':'))
        {
            table = t.into();
            continue;
        }
        if !text.starts_with(char::is_whitespace) && !text.is_empty() {
            // A new prefix and its first route.
            let (p, rest) = text.split_once(char::is_whitespace).unwrap_or((text, ""));
            prefix = p.parse().ok();
            if let Some(r) = prefix.and_then(|p| route_head(&table, p, rest)) {
                out.push(r);
            }
            continue;
        }
        if KINDS.iter().any(|k| trimmed.starts_with(&format!("{k} ["))) {
            // Another route for the same prefix.
            if let Some(r) = prefix.and_then(|p| route_head(&table, p, trimmed)) {
                out.push(r);
            }
            continue;
        }
        let Some(r) = out.last_mut() else { continue };
        if let Some(v) = trimmed.strip_prefix("via ") {
            let mut it = v.split_whitespace();
            if let Some(Ok(gw)) = it.next().map(str::parse) {
                let dev = match (it.next(), it.next()) {
                    (Some("on"), Some(d)) => d.to_string(),
                    _ => String::new(),
                };
                r.next_hops.push((gw, dev));
            }
        } else if let Some(v) = detail(trimmed, "BGP.as_path") {
            r.as_path = v
                .split_whitespace()
                .filter_map(|a| a.parse().ok())
                .collect();
        } else if let Some(v) = detail(trimmed, "BGP.next_hop") {
            r.bgp_next_hop = v.split_whitespace().next().and_then(|a| a.parse().ok());
        } else if let Some(v) = detail(trimmed, "BGP.local_pref") {
            r.local_pref = v.parse().ok();
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::read_reply;
    use std::io::Cursor;

    fn reply(raw: &str) -> Reply {
        read_reply(&mut Cursor::new(raw.as_bytes())).unwrap()
    }

    // As BIRD 2.0.12 sends them on its socket (codes and all).
    const PROTOCOLS: &str = "2002-Name       Proto      Table      State  Since         Info\n\
1002-strake_device Device     ---        up     1796259700    \n\
1006-\n\
1002-peer_10_0_1_1 BGP        ---        up     1796259743    Established   \n\
1006-  Description:    BGPPeer tor-a\n \
  BGP state:          Established\n \
    Neighbor address: 10.0.1.1\n \
    Neighbor AS:      65001\n \
    Local AS:         65001\n \
    Neighbor ID:      10.0.1.1\n \
    Session:          internal multihop AS4\n \
    Hold timer:       80.1/90\n \
  Channel ipv4\n \
    State:          UP\n \
    Routes:         3 imported, 1 filtered, 2 exported, 3 preferred\n \
    Route change stats:     received   rejected   filtered    ignored   accepted\n \
      Import updates:              4          0          1          0          3\n\
1006-\n\
1002-peer_10_0_2_5 BGP        ---        start  1796259800    Active        Socket: Connection refused\n\
1006-  Description:    BGPPeer rrs: node rr2\n \
  BGP state:          Active\n \
    Neighbor address: 10.0.2.5\n \
    Neighbor AS:      65001\n \
    Local AS:         65001\n \
    Neighbor graceful restart active\n \
    Last error:       Socket: Connection refused\n \
  Channel ipv4\n \
    Routes:         2 imported, 0 exported, 2 preferred\n\
0000 \n";

    #[test]
    fn sessions_with_their_state_peer_and_counts() {
        let p = protocols(&reply(PROTOCOLS));
        assert_eq!(p.len(), 3);
        assert_eq!(p[0].proto, "Device");
        let tor = &p[1];
        assert!(tor.established());
        assert_eq!(tor.since, Some(1796259743));
        assert_eq!(tor.description.as_deref(), Some("BGPPeer tor-a"));
        assert_eq!(tor.neighbor_address, Some("10.0.1.1".parse().unwrap()));
        assert_eq!((tor.neighbor_as, tor.local_as), (Some(65001), Some(65001)));
        assert_eq!(
            tor.routes,
            RouteCounts {
                imported: 3,
                filtered: 1,
                exported: 2,
                preferred: 3
            }
        );
        let rr = &p[2];
        assert!(!rr.established());
        assert_eq!(rr.info, "Active Socket: Connection refused");
        assert_eq!(rr.last_error.as_deref(), Some("Socket: Connection refused"));
        assert!(rr.neighbor_restarting);
    }

    const ROUTES: &str = "1007-Table master4:\n \
10.244.1.0/24        blackhole [strake_announce 1796259700] * (200)\n\
1008-\tType: static univ\n\
1007-10.244.3.0/24        unicast [peer_10_0_1_1 1796259743 from 10.0.1.1] * (100) [AS65002i]\n \
\tvia 10.0.1.1 on eth0\n\
1008-\tType: BGP univ\n\
1012-\tBGP.origin: IGP\n \
\tBGP.as_path: 65002 64512\n \
\tBGP.next_hop: 10.0.1.1\n \
\tBGP.local_pref: 100\n\
1007-                     unicast [peer_10_0_1_2 1796259750 from 10.0.1.2] (100) [AS65003i]\n \
\tvia 10.0.1.2 on eth0\n\
1008-\tType: BGP univ\n\
1012-\tBGP.as_path: 65003 64512\n\
1007-203.0.113.10/32      unicast [peer_10_0_1_1 1796259743] * (100) [i]\n \
\tvia 10.0.1.11 on eth0 weight 1\n \
\tvia 10.0.1.12 on eth0 weight 1\n\
0000 \n";

    #[test]
    fn routes_with_alternatives_as_paths_and_ecmp_next_hops() {
        let r = routes(&reply(ROUTES));
        assert_eq!(r.len(), 4, "{r:#?}");
        assert_eq!(
            (
                r[0].prefix.to_string(),
                r[0].kind.as_str(),
                r[0].protocol.as_str(),
                r[0].primary
            ),
            ("10.244.1.0/24".into(), "blackhole", "strake_announce", true)
        );
        assert_eq!(r[0].table, "master4");
        let best = &r[1];
        assert_eq!(best.from, Some("10.0.1.1".parse().unwrap()));
        assert_eq!(best.as_path, vec![65002, 64512]);
        assert_eq!(
            best.next_hops,
            vec![("10.0.1.1".parse().unwrap(), "eth0".into())]
        );
        assert_eq!((best.local_pref, best.primary), (Some(100), true));
        let alt = &r[2];
        assert_eq!(
            alt.prefix.to_string(),
            "10.244.3.0/24",
            "an alternative keeps the prefix"
        );
        assert!(!alt.primary);
        assert_eq!(alt.as_path, vec![65003, 64512]);
        assert_eq!(r[3].next_hops.len(), 2, "both ECMP next hops");
    }
}
