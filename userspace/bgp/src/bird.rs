//! BIRD 2's configuration for one node, rendered from its desired state.
//! The text is a pure function of [`NodeBird`], so the agent compares it
//! with the file on disk and reconfigures BIRD only when it differs.
//!
//! What the configuration does (docs/bgp.md has the why of each part):
//! - `strake_announce` (static): the node's pod block and the Service
//!   addresses it announces, as blackholes that never reach the kernel;
//!   `strake_export` sends exactly these to every peer, next hop self.
//! - `strake_import`: a peer may never take this node's pod block, nor a
//!   Service address (those are the load balancer's, on every node).
//! - `strake_kernel`: learned routes go into the main table (`proto bird`),
//!   only those with a usable next hop (an unresolved one would install an
//!   `unreachable` route over the encapsulation fallback), ECMP merged;
//!   `persist` and graceful restart keep them across a BIRD restart.
//! - one `bgp` protocol per session, from the `strake_session` template.

use crate::sessions::Session;
use ipnetwork::Ipv4Network;
use std::fmt::Write;
use std::net::Ipv4Addr;
use std::path::PathBuf;

/// Where BIRD logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BirdLog {
    /// Standard error (BIRD in the foreground, as a sidecar container).
    Stderr,
    /// A file, rotated to `<file>.old` at 8 MiB.
    File(PathBuf),
}

/// A route the node originates.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Announcement {
    pub net: Ipv4Network,
    /// What it is, as a comment in the configuration ("pod block", "Service
    /// web/front LoadBalancer").
    pub why: String,
}

/// Everything one node's BIRD configuration is made from.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeBird {
    pub node: String,
    pub router_id: Ipv4Addr,
    pub local_address: Ipv4Addr,
    pub local_as: u32,
    /// The interface toward the fabric (for on-link next hops).
    pub uplink: String,
    pub announce: Vec<Announcement>,
    /// Prefixes no peer may give this node (its own, the Services').
    pub never_import: Vec<Ipv4Network>,
    pub sessions: Vec<Session>,
    /// 0: graceful restart off.
    pub graceful_restart_seconds: u32,
    pub route_reflector_cluster_id: Option<Ipv4Addr>,
    /// Kernel route protocols that are strake's own (pod and node routes):
    /// never learned back from the kernel.
    pub own_route_protocols: Vec<u8>,
    pub log: BirdLog,
}

/// BIRD's protocol names, as the status code finds them.
pub const ANNOUNCE_PROTOCOL: &str = "strake_announce";
pub const KERNEL_PROTOCOL: &str = "strake_kernel";

fn quoted(s: &str) -> String {
    // BIRD strings have no escapes; descriptions come from resource names,
    // which cannot hold quotes, but a path could.
    format!("\"{}\"", s.replace(['"', '\\', '\n'], "_"))
}

impl NodeBird {
    pub fn render(&self) -> String {
        let mut c = String::new();
        let w = &mut c;
        let _ = writeln!(
            w,
            "# BIRD configuration of node {}, written by strake-agent from the cluster's\n\
             # BGP resources (bgp.strake.dev/v1). Edits are overwritten.\n",
            self.node
        );
        match &self.log {
            BirdLog::Stderr => {
                let _ = writeln!(w, "log stderr all;");
            }
            BirdLog::File(p) => {
                let p = p.display().to_string();
                let old = format!("{p}.old");
                let _ = writeln!(w, "log {} 8388608 {} all;", quoted(&p), quoted(&old));
            }
        }
        // Epoch seconds: uptimes need no time zone or date guessing.
        let _ = writeln!(
            w,
            "timeformat protocol \"%s\";\ntimeformat route \"%s\";\nrouter id {};\n",
            self.router_id
        );
        let _ = writeln!(w, "protocol device strake_device {{ scan time 10; }}\n");
        let _ = writeln!(
            w,
            "# The uplink's subnet, to resolve next hops of peers on it.\n\
             protocol direct strake_direct {{ ipv4; interface {}; }}\n",
            quoted(&self.uplink)
        );

        let _ = writeln!(w, "protocol static {ANNOUNCE_PROTOCOL} {{\n  ipv4;");
        for a in &self.announce {
            let _ = writeln!(
                w,
                "  route {} blackhole; # {}",
                a.net,
                a.why.replace('\n', " ")
            );
        }
        let _ = writeln!(w, "}}\n");

        let _ = writeln!(w, "filter strake_import {{");
        if !self.never_import.is_empty() {
            let set: Vec<String> = self.never_import.iter().map(|n| format!("{n}+")).collect();
            let _ = writeln!(w, "  if net ~ [ {} ] then reject;", set.join(", "));
        }
        let _ = writeln!(w, "  accept;\n}}\n");
        let _ = writeln!(
            w,
            "filter strake_export {{\n  if proto = \"{ANNOUNCE_PROTOCOL}\" then accept;\n  reject;\n}}\n"
        );

        let own: Vec<String> = self
            .own_route_protocols
            .iter()
            .map(|p| format!("krt_source != {p}"))
            .collect();
        let learn_filter = if own.is_empty() {
            "all".to_string()
        } else {
            format!("where {}", own.join(" && "))
        };
        let _ = writeln!(
            w,
            "protocol kernel {KERNEL_PROTOCOL} {{\n  \
             ipv4 {{\n    import {learn_filter};\n    \
             export where source = RTS_BGP && dest = RTD_UNICAST;\n  }};\n  \
             learn;\n  persist;\n  graceful restart on;\n  merge paths on;\n  scan time 10;\n}}\n"
        );

        let _ = writeln!(w, "template bgp strake_session {{");
        if self.graceful_restart_seconds > 0 {
            let _ = writeln!(
                w,
                "  graceful restart on;\n  graceful restart time {};",
                self.graceful_restart_seconds
            );
        } else {
            let _ = writeln!(w, "  graceful restart off;");
        }
        if let Some(id) = self.route_reflector_cluster_id {
            let _ = writeln!(w, "  rr cluster id {id};");
        }
        let _ = writeln!(
            w,
            "  ipv4 {{\n    import filter strake_import;\n    export filter strake_export;\n    next hop self;\n  }};\n}}\n"
        );

        for s in &self.sessions {
            let _ = writeln!(w, "protocol bgp {} from strake_session {{", s.name);
            let _ = writeln!(w, "  description {};", quoted(&s.origin.to_string()));
            let _ = writeln!(w, "  local {} as {};", self.local_address, s.local_as);
            let _ = writeln!(w, "  neighbor {} as {};", s.neighbor, s.neighbor_as);
            if s.hold_time_seconds == 0 {
                let _ = writeln!(w, "  hold time 0;\n  keepalive time 0;");
            } else {
                let _ = writeln!(
                    w,
                    "  hold time {};\n  keepalive time {};",
                    s.hold_time_seconds,
                    (s.hold_time_seconds / 3).max(1)
                );
            }
            match s.multihop {
                None => {
                    let _ = writeln!(w, "  direct;");
                }
                Some(ttl) => {
                    let _ = writeln!(w, "  multihop {ttl};");
                }
            }
            if s.rr_client {
                let _ = writeln!(w, "  rr client;");
            }
            let mut channel = Vec::new();
            if s.multihop.is_none() {
                channel.push("gateway direct;".to_string());
            } else {
                channel.push("gateway recursive;".to_string());
            }
            if let Some(n) = s.max_prefixes {
                channel.push(format!("receive limit {n} action restart;"));
            }
            let _ = writeln!(w, "  ipv4 {{ {} }};", channel.join(" "));
            let _ = writeln!(w, "}}\n");
        }
        c
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::sessions::{session_name, Origin};

    fn session(ip: &str, asn: u32, origin: Origin) -> Session {
        let neighbor = ip.parse().unwrap();
        Session {
            name: session_name(neighbor),
            neighbor,
            neighbor_as: asn,
            local_as: 65001,
            origin,
            on_link: true,
            rr_client: false,
            hold_time_seconds: 90,
            multihop: None,
            max_prefixes: None,
        }
    }

    pub(crate) fn sample() -> NodeBird {
        let mut rr = session(
            "10.0.2.5",
            65001,
            Origin::Peer {
                resource: "rrs".into(),
                node: Some("rr2".into()),
            },
        );
        rr.multihop = Some(64);
        rr.on_link = false;
        rr.rr_client = true;
        rr.max_prefixes = Some(5000);
        NodeBird {
            node: "a1".into(),
            router_id: "10.0.1.11".parse().unwrap(),
            local_address: "10.0.1.11".parse().unwrap(),
            local_as: 65001,
            uplink: "eth0".into(),
            announce: vec![
                Announcement {
                    net: "10.244.1.0/24".parse().unwrap(),
                    why: "pod block".into(),
                },
                Announcement {
                    net: "203.0.113.10/32".parse().unwrap(),
                    why: "Service web/front LoadBalancer".into(),
                },
            ],
            never_import: vec![
                "10.244.1.0/24".parse().unwrap(),
                "203.0.113.0/24".parse().unwrap(),
            ],
            sessions: vec![
                session(
                    "10.0.1.1",
                    65001,
                    Origin::Peer {
                        resource: "tor-a".into(),
                        node: None,
                    },
                ),
                rr,
            ],
            graceful_restart_seconds: 120,
            route_reflector_cluster_id: Some("10.0.0.1".parse().unwrap()),
            own_route_protocols: vec![201, 202],
            log: BirdLog::File("/var/lib/strake/bird.log".into()),
        }
    }

    #[test]
    fn the_configuration_says_what_it_announces_refuses_and_peers_with() {
        let c = sample().render();
        for want in [
            "router id 10.0.1.11;",
            "log \"/var/lib/strake/bird.log\" 8388608 \"/var/lib/strake/bird.log.old\" all;",
            "  route 10.244.1.0/24 blackhole; # pod block",
            "  route 203.0.113.10/32 blackhole; # Service web/front LoadBalancer",
            "  if net ~ [ 10.244.1.0/24+, 203.0.113.0/24+ ] then reject;",
            "    import where krt_source != 201 && krt_source != 202;",
            "    export where source = RTS_BGP && dest = RTD_UNICAST;",
            "  persist;",
            "  merge paths on;",
            "  graceful restart time 120;",
            "  rr cluster id 10.0.0.1;",
            "protocol bgp peer_10_0_1_1 from strake_session {\n  description \"BGPPeer tor-a\";\n  local 10.0.1.11 as 65001;\n  neighbor 10.0.1.1 as 65001;\n  hold time 90;\n  keepalive time 30;\n  direct;\n  ipv4 { gateway direct; };\n}",
            "  description \"BGPPeer rrs: node rr2\";",
            "  multihop 64;\n  rr client;\n  ipv4 { gateway recursive; receive limit 5000 action restart; };",
        ] {
            assert!(c.contains(want), "missing {want:?} in\n{c}");
        }
    }

    #[test]
    fn rendering_is_deterministic_and_follows_every_input() {
        let a = sample();
        assert_eq!(a.render(), a.render());
        let mut b = sample();
        b.announce.pop();
        assert_ne!(a.render(), b.render());
        let mut c = sample();
        c.graceful_restart_seconds = 0;
        assert!(c.render().contains("graceful restart off;"));
        let mut d = sample();
        d.sessions[0].hold_time_seconds = 0;
        assert!(d.render().contains("hold time 0;\n  keepalive time 0;"));
        let mut e = sample();
        e.log = BirdLog::Stderr;
        assert!(e.render().contains("log stderr all;"));
    }

    #[test]
    fn nothing_to_announce_nothing_to_refuse_is_still_valid_bird() {
        let mut s = sample();
        s.announce.clear();
        s.never_import.clear();
        s.sessions.clear();
        s.own_route_protocols.clear();
        s.route_reflector_cluster_id = None;
        let c = s.render();
        assert!(c.contains("filter strake_import {\n  accept;\n}"), "{c}");
        assert!(c.contains("import all;"), "{c}");
        crate::bird::tests::bird_parses(&c);
    }

    /// BIRD itself (`bird -p`) must accept what is rendered.
    pub(crate) fn bird_parses(conf: &str) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bird.conf");
        std::fs::write(&path, conf).unwrap();
        let out = std::process::Command::new("bird")
            .arg("-p")
            .arg("-c")
            .arg(&path)
            .output()
            .expect("bird (Debian bird2, scripts/install-deps.sh) must be installed");
        assert!(
            out.status.success(),
            "bird -p refused the configuration: {}\n{conf}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    #[test]
    fn bird_accepts_the_rendered_configuration() {
        bird_parses(&sample().render());
    }
}
