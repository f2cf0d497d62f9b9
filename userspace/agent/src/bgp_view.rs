//! What `strake bgp peers`, `strake bgp routes` and the routing part of
//! `strake status` show: the bgp phase's view, sessions and routes read
//! live from BIRD, and which route the kernel uses now for each node's
//! block.

use crate::agent::Agent;
use crate::config::Encapsulation;
use crate::reconcile::routes::TUNNEL_DEVICE;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use strake_api::{ApiError, BgpRouteView, BgpStatus, ErrorKind, NodeRouteView, RoutingView};
use strake_bgp::Control;
use strake_netlink::{BIRD_ROUTE_PROTO, STRAKE_ROUTE_PROTO};

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Agent {
    fn bird(&self) -> Control {
        Control::new(&self.cfg.bird_socket).with_timeout(Duration::from_secs(3))
    }

    /// The node's BGP, sessions as BIRD reports them right now.
    pub fn bgp_status(&self) -> Result<BgpStatus, ApiError> {
        let mut v = self.bgp.lock().unwrap().clone();
        if !v.enabled {
            return Ok(v);
        }
        match self.bird().protocols() {
            Ok(live) => {
                v.bird_running = true;
                let now = now_unix();
                for s in &mut v.sessions {
                    if let Some(p) = live.iter().find(|p| p.name == s.name) {
                        s.state = p.state.clone();
                        s.bgp_state = p.bgp_state.clone().unwrap_or_default();
                        s.established = p.established();
                        s.uptime_seconds = p.since.map(|t| now.saturating_sub(t));
                        s.last_error = p.last_error.clone();
                        s.received = p.routes.imported;
                        s.filtered = p.routes.filtered;
                        s.sent = p.routes.exported;
                        s.peer_restarting = p.neighbor_restarting;
                    }
                }
            }
            Err(_) => v.bird_running = false,
        }
        Ok(v)
    }

    /// The routes BIRD holds.
    pub fn bgp_routes(&self) -> Result<Vec<BgpRouteView>, ApiError> {
        if !self.bgp.lock().unwrap().enabled {
            return Ok(Vec::new());
        }
        let routes = self.bird().routes().map_err(|e| {
            ApiError::new(
                ErrorKind::Internal,
                format!("{e:#}; `strake status` shows the bgp phase"),
            )
        })?;
        let now = now_unix();
        Ok(routes
            .into_iter()
            .map(|r| BgpRouteView {
                prefix: r.prefix.to_string(),
                kind: r.kind,
                protocol: r.protocol,
                from: r.from.map(|a| a.to_string()),
                next_hops: r.next_hops.iter().map(|(a, _)| a.to_string()).collect(),
                as_path: r.as_path,
                best: r.primary,
                age_seconds: r.since.map(|t| now.saturating_sub(t)),
            })
            .collect())
    }

    /// For every node, what the kernel routes its pod block by now: the
    /// route of lowest metric to the block.
    pub fn routing_view(&self) -> RoutingView {
        let bgp = self.bgp.lock().unwrap().clone();
        let mut view = RoutingView {
            mode: if bgp.enabled { "bgp" } else { "direct" }.into(),
            encapsulation: match self.cfg.encapsulation {
                Encapsulation::CrossSubnet => "cross-subnet",
                Encapsulation::Never => "never",
            }
            .into(),
            sessions_established: bgp.sessions.iter().filter(|s| s.established).count(),
            sessions: bgp.sessions.len(),
            nodes: Vec::new(),
        };
        let (routes, tunnel) = self.block_on(async {
            let routes = self.nl.routes(None).await.unwrap_or_default();
            let tunnel = self
                .nl
                .link_by_name(TUNNEL_DEVICE)
                .await
                .ok()
                .flatten()
                .map(|l| l.index);
            (routes, tunnel)
        });
        let blocks: Vec<(String, Option<(std::net::Ipv4Addr, u8)>)> = {
            let st = self.state();
            st.nodes
                .keys()
                .map(|n| (n.clone(), st.node_pod_cidr(n)))
                .collect()
        };
        for (node, block) in blocks {
            let Some((net, len)) = block else { continue };
            let best = routes
                .iter()
                .filter(|r| (r.dst, r.prefix) == (net, len))
                .min_by_key(|r| r.metric);
            let (via, next_hops) = if node == self.node() {
                ("local", Vec::new())
            } else {
                match best {
                    None => ("none", Vec::new()),
                    Some(r) => {
                        let mut hops: Vec<String> =
                            r.gateway.iter().map(|g| g.to_string()).collect();
                        hops.extend(r.next_hops.iter().map(|g| g.to_string()));
                        let via = if r.blackhole {
                            "none"
                        } else if r.protocol == BIRD_ROUTE_PROTO {
                            "bgp"
                        } else if r.protocol == STRAKE_ROUTE_PROTO
                            && r.oif.is_some()
                            && r.oif == tunnel
                        {
                            "vxlan"
                        } else {
                            "direct"
                        };
                        (via, hops)
                    }
                }
            };
            view.nodes.push(NodeRouteView {
                node,
                block: format!("{net}/{len}"),
                via: via.into(),
                next_hops,
            });
        }
        view
    }
}
