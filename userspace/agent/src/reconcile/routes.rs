//! Routes between nodes (docs/bgp.md, "Who routes what"):
//! - this node's own block is blackholed, so an unassigned pod address
//!   never leaks to a default route;
//! - a node on this node's subnet is routed directly via its InternalIP
//!   (`proto 201`), unless both run BGP: then BIRD's routes (`proto bird`)
//!   carry its block;
//! - a node on another subnet is reached through VXLAN (`strake.vxlan`,
//!   static entries, no learning) by a route at metric 1024: a fallback that
//!   the kernel uses only while no BGP route (metric 32) covers the block,
//!   so the fabric's routes win whenever it carries them.
//!
//! Only routes tagged with strake's protocol number, and strake's own VXLAN
//! device with its entries, are ever touched. Desired routes are few (one
//! per node), so every pass observes the table.

use super::{Outcome, Pass, Phase};
use anyhow::{Context, Result};
use ipnetwork::Ipv4Network;
use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use strake_netlink::{
    vtep_mac, FdbEntry, Neighbour, Netlink, Route4, Vxlan, VxlanSpec, STRAKE_ROUTE_PROTO,
};
use strake_source::{ClusterState, Kind, KindSet};

/// strake's VXLAN device.
pub const TUNNEL_DEVICE: &str = "strake.vxlan";
/// Outer IPv4 + UDP + VXLAN + inner Ethernet.
pub const VXLAN_OVERHEAD: u32 = 50;
/// Metric of the encapsulation fallback: above BIRD's (32), so a route the
/// fabric carries always wins.
pub const FALLBACK_METRIC: u32 = 1024;

/// The node's uplink as routing needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Uplink {
    pub index: u32,
    pub mtu: u32,
    /// The subnet of the node's InternalIP on it.
    pub subnet: Ipv4Network,
}

/// The kernel's side of this phase: strake's node routes and its VXLAN
/// device.
pub trait RouteTable: Send {
    /// Routes tagged with strake's node-route protocol.
    fn routes(&self) -> Result<Vec<Route4>>;
    fn replace(&self, r: &Route4) -> Result<()>;
    fn delete(&self, r: &Route4) -> Result<()>;
    /// The uplink `name`, if it holds `ip`.
    fn uplink(&self, name: &str, ip: Ipv4Addr) -> Result<Option<Uplink>>;
    fn tunnel(&self) -> Result<Option<Vxlan>>;
    /// Creates the VXLAN device, up; returns its ifindex.
    fn create_tunnel(&self, spec: &VxlanSpec) -> Result<u32>;
    fn delete_tunnel(&self) -> Result<()>;
    fn fdb(&self, tunnel: u32) -> Result<Vec<FdbEntry>>;
    fn add_fdb(&self, tunnel: u32, e: &FdbEntry) -> Result<()>;
    fn delete_fdb(&self, tunnel: u32, e: &FdbEntry) -> Result<()>;
    fn neighbours(&self, tunnel: u32) -> Result<Vec<Neighbour>>;
    fn add_neighbour(&self, tunnel: u32, n: &Neighbour) -> Result<()>;
    fn delete_neighbour(&self, tunnel: u32, ip: Ipv4Addr) -> Result<()>;
}

/// The node's routing table over rtnetlink.
pub struct NetlinkRoutes {
    pub nl: Netlink,
    pub rt: tokio::runtime::Handle,
}

impl RouteTable for NetlinkRoutes {
    fn routes(&self) -> Result<Vec<Route4>> {
        self.rt.block_on(self.nl.routes(Some(STRAKE_ROUTE_PROTO)))
    }
    fn replace(&self, r: &Route4) -> Result<()> {
        self.rt.block_on(self.nl.replace_route(r))
    }
    fn delete(&self, r: &Route4) -> Result<()> {
        self.rt.block_on(self.nl.delete_route(r))
    }
    fn uplink(&self, name: &str, ip: Ipv4Addr) -> Result<Option<Uplink>> {
        self.rt.block_on(async {
            let Some(l) = self.nl.link_by_name(name).await? else {
                return Ok(None);
            };
            let addr = self
                .nl
                .addresses(l.index)
                .await?
                .into_iter()
                .find(|(a, _)| *a == ip);
            Ok(addr.map(|(a, len)| {
                let n = Ipv4Network::new(a, len).expect("a prefix length from the kernel");
                Uplink {
                    index: l.index,
                    mtu: l.mtu,
                    subnet: Ipv4Network::new(n.network(), len).expect("a network"),
                }
            }))
        })
    }
    fn tunnel(&self) -> Result<Option<Vxlan>> {
        self.rt.block_on(self.nl.vxlan(TUNNEL_DEVICE))
    }
    fn create_tunnel(&self, spec: &VxlanSpec) -> Result<u32> {
        let index = self.rt.block_on(async {
            self.nl.create_vxlan(TUNNEL_DEVICE, spec).await?;
            let v = self
                .nl
                .vxlan(TUNNEL_DEVICE)
                .await?
                .context("the VXLAN device just created")?;
            self.nl.set_up(v.index).await?;
            anyhow::Ok(v.index)
        })?;
        // Replies to traffic that came through the tunnel may leave by the
        // uplink (node addresses are routed natively): loose reverse-path
        // filtering on the device.
        strake_netlink::netns::sysctl(&format!("net/ipv4/conf/{TUNNEL_DEVICE}/rp_filter"), "2")?;
        Ok(index)
    }
    fn delete_tunnel(&self) -> Result<()> {
        self.rt
            .block_on(self.nl.delete_link_by_name(TUNNEL_DEVICE))
            .map(|_| ())
    }
    fn fdb(&self, tunnel: u32) -> Result<Vec<FdbEntry>> {
        self.rt.block_on(self.nl.fdb(tunnel))
    }
    fn add_fdb(&self, tunnel: u32, e: &FdbEntry) -> Result<()> {
        self.rt.block_on(self.nl.add_fdb(tunnel, e))
    }
    fn delete_fdb(&self, tunnel: u32, e: &FdbEntry) -> Result<()> {
        self.rt.block_on(self.nl.delete_fdb(tunnel, e))
    }
    fn neighbours(&self, tunnel: u32) -> Result<Vec<Neighbour>> {
        self.rt.block_on(self.nl.permanent_neighbours(tunnel))
    }
    fn add_neighbour(&self, tunnel: u32, n: &Neighbour) -> Result<()> {
        self.rt
            .block_on(self.nl.add_permanent_neighbour(tunnel, n.ip, n.mac))
    }
    fn delete_neighbour(&self, tunnel: u32, ip: Ipv4Addr) -> Result<()> {
        self.rt.block_on(self.nl.delete_neighbour(tunnel, ip))
    }
}

/// Whether node `name` runs BGP. An invalid BGPConfiguration still means
/// BGP was asked for: the bgp phase keeps BIRD as it was, and so do routes.
pub fn runs_bgp(state: &ClusterState, name: &str) -> bool {
    match strake_bgp::node::configuration(state) {
        Ok(cfg) => strake_bgp::node::node_runs_bgp(state, cfg.as_ref(), name),
        Err(_) => state.nodes.contains_key(name),
    }
}

/// Where this node stands, for the routes it needs.
#[derive(Debug, Clone, Copy)]
pub struct Reach {
    pub me: Ipv4Addr,
    pub subnet: Ipv4Network,
    /// VXLAN to nodes off the subnet.
    pub encapsulate: bool,
    /// The VXLAN device, once it exists.
    pub tunnel: Option<u32>,
}

/// The routes and VXLAN peers this node should have.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DesiredNet {
    pub routes: BTreeSet<Route4>,
    /// InternalIPs of the nodes reached through VXLAN.
    pub tunnel_peers: BTreeSet<Ipv4Addr>,
}

pub fn desired(state: &ClusterState, me: &str, reach: &Reach) -> DesiredNet {
    let mut out = DesiredNet::default();
    let me_bgp = runs_bgp(state, me);
    for name in state.nodes.keys() {
        let Some((net, prefix)) = state.node_pod_cidr(name) else {
            continue;
        };
        let mut r = Route4::to(net, prefix);
        if name == me {
            r.blackhole = true;
            out.routes.insert(r);
            continue;
        }
        let Some(gw) = state.node_internal_ip(name) else {
            continue;
        };
        if reach.subnet.contains(gw) {
            if me_bgp && runs_bgp(state, name) {
                continue; // BIRD's
            }
            r.gateway = Some(gw);
            out.routes.insert(r);
        } else if reach.encapsulate {
            out.tunnel_peers.insert(gw);
            if let Some(t) = reach.tunnel {
                r.gateway = Some(gw);
                r.oif = Some(t);
                r.onlink = true;
                r.metric = FALLBACK_METRIC;
                r.source = Some(reach.me);
                out.routes.insert(r);
            }
        } else if !me_bgp {
            // Not on the subnet and nothing to carry it: the kernel will
            // refuse this, and the error names the node's address.
            r.gateway = Some(gw);
            out.routes.insert(r);
        }
    }
    out
}

/// Identity of a route for diffing: what it is, not how the kernel echoes
/// it (the kernel fills in the interface of a direct route).
fn shape(r: &Route4) -> (Ipv4Addr, u8, Option<Ipv4Addr>, bool, bool, u32) {
    (r.dst, r.prefix, r.gateway, r.blackhole, r.onlink, r.metric)
}

/// Tunnel settings that do not come from the cluster state.
#[derive(Debug, Clone, Copy)]
pub struct TunnelOptions {
    pub encapsulate: bool,
    pub vni: u32,
    pub port: u16,
}

pub struct RoutesPhase<T> {
    pub table: T,
    pub node: String,
    /// The uplink, once the node phase found it.
    pub uplink: Arc<Mutex<Option<String>>>,
    pub tunnel: TunnelOptions,
    /// Desired routes, for status.
    pub installed: Arc<AtomicUsize>,
    /// Bytes pod interfaces must leave for encapsulation (the pod MTU).
    pub overhead: Arc<AtomicU32>,
}

impl<T: RouteTable> RoutesPhase<T> {
    /// The VXLAN device as `spec` says, made or remade; its ifindex.
    fn ensure_tunnel(&self, spec: &VxlanSpec, changes: &mut usize) -> Result<u32> {
        if let Some(t) = self.table.tunnel()? {
            if t.vni == spec.vni
                && t.local == Some(spec.local)
                && t.port == spec.port
                && t.mtu == spec.mtu
                && t.mac == spec.mac
                && t.up
            {
                return Ok(t.index);
            }
            tracing::info!(
                vni = t.vni,
                port = t.port,
                mtu = t.mtu,
                "VXLAN device differs from its settings; recreating it"
            );
            self.table.delete_tunnel()?;
        }
        let index = self.table.create_tunnel(spec)?;
        tracing::info!(
            device = TUNNEL_DEVICE,
            vni = spec.vni,
            port = spec.port,
            mtu = spec.mtu,
            "VXLAN fallback device created"
        );
        *changes += 1;
        Ok(index)
    }

    /// Forwarding entries and neighbours for exactly `peers`.
    fn tunnel_entries(
        &self,
        t: u32,
        peers: &BTreeSet<Ipv4Addr>,
        changes: &mut usize,
    ) -> Result<()> {
        let want_fdb: BTreeSet<FdbEntry> = peers
            .iter()
            .map(|ip| FdbEntry {
                mac: vtep_mac(*ip),
                dst: *ip,
            })
            .collect();
        let have_fdb: BTreeSet<FdbEntry> = self.table.fdb(t)?.into_iter().collect();
        for e in have_fdb.difference(&want_fdb) {
            self.table.delete_fdb(t, e)?;
            *changes += 1;
        }
        for e in want_fdb.difference(&have_fdb) {
            self.table.add_fdb(t, e)?;
            *changes += 1;
        }
        let want_nb: BTreeSet<Neighbour> = peers
            .iter()
            .map(|ip| Neighbour {
                ip: *ip,
                mac: vtep_mac(*ip),
            })
            .collect();
        let have_nb: BTreeSet<Neighbour> = self.table.neighbours(t)?.into_iter().collect();
        for n in have_nb.difference(&want_nb) {
            self.table.delete_neighbour(t, n.ip)?;
            *changes += 1;
        }
        for n in want_nb.difference(&have_nb) {
            self.table.add_neighbour(t, n)?;
            *changes += 1;
        }
        Ok(())
    }
}

impl<T: RouteTable> Phase for RoutesPhase<T> {
    fn name(&self) -> &'static str {
        "routes"
    }

    fn kinds(&self) -> KindSet {
        KindSet::of(&[Kind::Node, Kind::BgpConfiguration])
    }

    fn reconcile(&mut self, pass: &Pass<'_>) -> Result<Outcome> {
        let state = pass.state;
        let Some(me) = state.node_internal_ip(&self.node) else {
            return Ok(Outcome::Waiting {
                after: Duration::from_secs(5),
                reason: format!("Node {} has no InternalIP yet", self.node),
            });
        };
        let Some(name) = self.uplink.lock().unwrap().clone() else {
            return Ok(Outcome::Waiting {
                after: Duration::from_secs(2),
                reason: "the uplink is not attached yet".into(),
            });
        };
        let Some(uplink) = self.table.uplink(&name, me)? else {
            return Ok(Outcome::Waiting {
                after: Duration::from_secs(2),
                reason: format!("{name} does not hold this node's InternalIP {me}"),
            });
        };
        let mut reach = Reach {
            me,
            subnet: uplink.subnet,
            encapsulate: self.tunnel.encapsulate,
            tunnel: None,
        };
        let mut changes = 0;
        let peers = desired(state, &self.node, &reach).tunnel_peers;
        if peers.is_empty() {
            if self.table.tunnel()?.is_some() {
                self.table.delete_tunnel()?;
                tracing::info!("no node needs the VXLAN fallback any more: device removed");
                changes += 1;
            }
            self.overhead.store(0, Ordering::Relaxed);
        } else {
            let spec = VxlanSpec {
                vni: self.tunnel.vni,
                local: me,
                port: self.tunnel.port,
                dev: uplink.index,
                mac: vtep_mac(me),
                mtu: uplink.mtu.saturating_sub(VXLAN_OVERHEAD),
            };
            let t = self.ensure_tunnel(&spec, &mut changes)?;
            self.tunnel_entries(t, &peers, &mut changes)?;
            reach.tunnel = Some(t);
            self.overhead.store(VXLAN_OVERHEAD, Ordering::Relaxed);
        }
        let want = desired(state, &self.node, &reach).routes;
        let current = self.table.routes()?;
        let want_shapes: BTreeSet<_> = want.iter().map(shape).collect();
        let have: BTreeSet<_> = current.iter().map(shape).collect();
        // Every route is tried: one node's bad address must not keep the
        // others unreachable. The first failure is what the pass reports.
        let mut failed = None;
        for r in current.iter().filter(|r| !want_shapes.contains(&shape(r))) {
            match self.table.delete(r) {
                Ok(()) => {
                    tracing::info!(route = %r, "withdrew node route");
                    changes += 1;
                }
                Err(e) => {
                    failed.get_or_insert(e);
                }
            }
        }
        for r in want.iter().filter(|r| !have.contains(&shape(r))) {
            match self.table.replace(r) {
                Ok(()) => {
                    tracing::info!(route = %r, "installed node route");
                    changes += 1;
                }
                Err(e) => {
                    failed.get_or_insert(e);
                }
            }
        }
        self.installed.store(
            want.len() - usize::from(failed.is_some()),
            Ordering::Relaxed,
        );
        match failed {
            Some(e) => Err(e),
            None => Ok(Outcome::applied(changes)),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests;
