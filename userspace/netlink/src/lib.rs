//! The netlink operations strake needs, over `rtnetlink`: veth pairs, moving
//! links between namespaces, addresses, routes (tagged with strake's route
//! protocol so the agent only ever touches its own), and neighbours.

pub mod netns;
pub mod vxlan;

pub use vxlan::{vtep_mac, FdbEntry, Neighbour, Vxlan, VxlanSpec};

use anyhow::{anyhow, Context, Result};
use futures::TryStreamExt;
use netlink_packet_route::address::AddressAttribute;
use netlink_packet_route::link::{InfoData, InfoVeth, LinkAttribute, LinkFlags, LinkMessage};
use netlink_packet_route::neighbour::{NeighbourFlags, NeighbourState};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::AddressFamily;
use rtnetlink::{Handle, LinkUnspec, LinkVeth, RouteMessageBuilder};
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::RawFd;

/// Route protocol number marking routes strake owns (rtnetlink's
/// `RTPROT_*` space; 201 is unassigned). `ip route` shows it as "proto 201".
pub const STRAKE_ROUTE_PROTO: u8 = 201;

/// Route protocol BIRD tags the routes it learned over BGP with
/// (`RTPROT_BIRD`, "proto bird").
pub const BIRD_ROUTE_PROTO: u8 = 12;

/// Route protocol of the /32 routes toward local pods (installed by the CNI
/// plugin), kept apart from node routes so each owner only diffs its own.
pub const STRAKE_POD_ROUTE_PROTO: u8 = 202;

/// A network interface as strake sees it.
#[derive(Debug, Clone)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub mac: [u8; 6],
    pub mtu: u32,
    pub up: bool,
    /// Index of the peer interface, for a veth whose peer is in another netns.
    pub link_netnsid: Option<i32>,
}

/// An IPv4 route, as strake programs and reads them.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Route4 {
    pub dst: Ipv4Addr,
    pub prefix: u8,
    pub gateway: Option<Ipv4Addr>,
    pub oif: Option<u32>,
    pub blackhole: bool,
    pub scope_link: bool,
    pub onlink: bool,
    pub protocol: u8,
    /// The route's metric (priority): among routes to one prefix the kernel
    /// uses the lowest, which is how a fallback route stands behind another.
    pub metric: u32,
    /// Preferred source address for traffic the node itself sends.
    pub source: Option<Ipv4Addr>,
    /// Gateways of a multipath (ECMP) route, as read back; never written.
    pub next_hops: Vec<Ipv4Addr>,
}

impl Route4 {
    pub fn to(dst: Ipv4Addr, prefix: u8) -> Self {
        Route4 {
            dst,
            prefix,
            gateway: None,
            oif: None,
            blackhole: false,
            scope_link: false,
            onlink: false,
            protocol: STRAKE_ROUTE_PROTO,
            metric: 0,
            source: None,
            next_hops: Vec::new(),
        }
    }
}

impl Route4 {
    /// The /32 route toward a local pod through its host veth, as the CNI
    /// plugin installs it and CHECK expects it.
    pub fn to_pod(ip: Ipv4Addr, host_veth: u32) -> Self {
        Route4 {
            oif: Some(host_veth),
            scope_link: true,
            protocol: STRAKE_POD_ROUTE_PROTO,
            ..Route4::to(ip, 32)
        }
    }
}

impl std::fmt::Display for Route4 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.blackhole {
            write!(f, "blackhole ")?;
        }
        write!(f, "{}/{}", self.dst, self.prefix)?;
        if let Some(gw) = self.gateway {
            write!(f, " via {gw}")?;
        }
        if let Some(oif) = self.oif {
            write!(f, " oif {oif}")?;
        }
        if self.onlink {
            write!(f, " onlink")?;
        }
        if self.metric != 0 {
            write!(f, " metric {}", self.metric)?;
        }
        Ok(())
    }
}

/// A netlink connection bound to the network namespace of the thread that
/// opened it.
#[derive(Clone)]
pub struct Netlink {
    handle: Handle,
}

/// Netlink dumps come back EBUSY when the table changed while it was being
/// dumped (NLM_F_DUMP_INTR); a fresh dump is then consistent.
async fn dump_retrying<T, F, Fut>(mut dump: F) -> Result<T, rtnetlink::Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, rtnetlink::Error>>,
{
    let mut tries = 0;
    loop {
        match dump().await {
            Err(e) if is_errno(&e, nix::errno::Errno::EBUSY as i32) && tries < 10 => {
                tries += 1;
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
            r => return r,
        }
    }
}

fn is_errno(e: &rtnetlink::Error, errno: i32) -> bool {
    matches!(e, rtnetlink::Error::NetlinkError(m) if m.raw_code() == -errno)
}

impl Netlink {
    /// Opens a connection; must be called within a tokio runtime.
    pub fn connect() -> Result<Self> {
        let (conn, handle, _) = rtnetlink::new_connection().context("opening a netlink socket")?;
        tokio::spawn(conn);
        Ok(Netlink { handle })
    }

    pub async fn link_by_name(&self, name: &str) -> Result<Option<Link>> {
        let mut s = self
            .handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute();
        match s.try_next().await {
            Ok(Some(m)) => Ok(Some(to_link(&m))),
            Ok(None) => Ok(None),
            Err(e) if is_errno(&e, libc_enodev()) => Ok(None),
            Err(e) => Err(anyhow!(e).context(format!("looking up link {name}"))),
        }
    }

    pub async fn link_by_index(&self, index: u32) -> Result<Option<Link>> {
        let mut s = self.handle.link().get().match_index(index).execute();
        match s.try_next().await {
            Ok(Some(m)) => Ok(Some(to_link(&m))),
            Ok(None) => Ok(None),
            Err(e) if is_errno(&e, libc_enodev()) => Ok(None),
            Err(e) => Err(anyhow!(e).context(format!("looking up link #{index}"))),
        }
    }

    pub async fn links(&self) -> Result<Vec<Link>> {
        let msgs: Vec<LinkMessage> =
            dump_retrying(|| self.handle.link().get().execute().try_collect::<Vec<_>>())
                .await
                .context("listing links")?;
        Ok(msgs.iter().map(to_link).collect())
    }

    /// Creates a veth pair `name` <-> `peer` in this namespace.
    pub async fn create_veth(&self, name: &str, peer: &str, mtu: u32) -> Result<()> {
        self.handle
            .link()
            .add(LinkVeth::new(name, peer).mtu(mtu).build())
            .execute()
            .await
            .with_context(|| format!("creating veth pair {name}/{peer}"))
    }

    /// Creates a veth pair whose peer is born inside another namespace (open
    /// at `peer_netns_fd`) under its final name: no move between namespaces
    /// (which waits for an RCU grace period) and no rename.
    pub async fn create_veth_into(
        &self,
        name: &str,
        peer: &str,
        peer_netns_fd: RawFd,
        peer_mac: [u8; 6],
        mtu: u32,
    ) -> Result<()> {
        let peer_msg = rtnetlink::LinkMessageBuilder::<LinkUnspec>::new()
            .name(peer.to_string())
            .mtu(mtu)
            .address(peer_mac.to_vec())
            .setns_by_fd(peer_netns_fd)
            .build();
        let msg = LinkVeth::new(name, peer)
            .mtu(mtu)
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer_msg)))
            .build();
        self.handle
            .link()
            .add(msg)
            .execute()
            .await
            .with_context(|| {
                format!("creating veth {name} with peer {peer} in the pod's namespace")
            })
    }

    /// Creates a bridge.
    pub async fn create_bridge(&self, name: &str) -> Result<()> {
        self.handle
            .link()
            .add(rtnetlink::LinkBridge::new(name).build())
            .execute()
            .await
            .with_context(|| format!("creating bridge {name}"))
    }

    pub async fn set_controller(&self, index: u32, bridge: u32) -> Result<()> {
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).controller(bridge).build())
            .execute()
            .await
            .with_context(|| format!("attaching link #{index} to bridge #{bridge}"))
    }

    pub async fn set_up(&self, index: u32) -> Result<()> {
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .with_context(|| format!("setting link #{index} up"))
    }

    pub async fn set_name(&self, index: u32, name: &str) -> Result<()> {
        self.handle
            .link()
            .set(
                LinkUnspec::new_with_index(index)
                    .name(name.to_string())
                    .build(),
            )
            .execute()
            .await
            .with_context(|| format!("renaming link #{index} to {name}"))
    }

    pub async fn set_mtu(&self, index: u32, mtu: u32) -> Result<()> {
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).mtu(mtu).build())
            .execute()
            .await
            .with_context(|| format!("setting MTU {mtu} on link #{index}"))
    }

    /// Moves a link into the namespace open at `netns_fd`.
    pub async fn move_to_netns(&self, index: u32, netns_fd: RawFd) -> Result<()> {
        self.handle
            .link()
            .set(
                LinkUnspec::new_with_index(index)
                    .setns_by_fd(netns_fd)
                    .build(),
            )
            .execute()
            .await
            .with_context(|| format!("moving link #{index} into the pod's network namespace"))
    }

    /// Deletes a link; a missing link is not an error (idempotent teardown).
    pub async fn delete_link(&self, index: u32) -> Result<()> {
        match self.handle.link().del(index).execute().await {
            Ok(()) => Ok(()),
            Err(e) if is_errno(&e, libc_enodev()) => Ok(()),
            Err(e) => Err(anyhow!(e).context(format!("deleting link #{index}"))),
        }
    }

    pub async fn delete_link_by_name(&self, name: &str) -> Result<bool> {
        match self.link_by_name(name).await? {
            Some(l) => {
                self.delete_link(l.index).await?;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    pub async fn add_address(&self, index: u32, ip: Ipv4Addr, prefix: u8) -> Result<()> {
        match self
            .handle
            .address()
            .add(index, IpAddr::V4(ip), prefix)
            .execute()
            .await
        {
            Ok(()) => Ok(()),
            Err(e) if is_errno(&e, libc_eexist()) => Ok(()),
            Err(e) => Err(anyhow!(e).context(format!("adding {ip}/{prefix} to link #{index}"))),
        }
    }

    /// IPv4 addresses (with prefix length) on a link.
    pub async fn addresses(&self, index: u32) -> Result<Vec<(Ipv4Addr, u8)>> {
        let msgs: Vec<_> = dump_retrying(|| {
            self.handle
                .address()
                .get()
                .set_link_index_filter(index)
                .execute()
                .try_collect::<Vec<_>>()
        })
        .await
        .with_context(|| format!("listing addresses of link #{index}"))?;
        let mut out = Vec::new();
        for m in msgs {
            if m.header.family != AddressFamily::Inet {
                continue;
            }
            for a in &m.attributes {
                if let AddressAttribute::Address(IpAddr::V4(ip)) = a {
                    out.push((*ip, m.header.prefix_len));
                }
            }
        }
        Ok(out)
    }

    fn route_message(r: &Route4) -> RouteMessage {
        let mut b = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(r.dst, r.prefix)
            .protocol(RouteProtocol::from(r.protocol));
        if let Some(gw) = r.gateway {
            b = b.gateway(gw);
        }
        if let Some(oif) = r.oif {
            b = b.output_interface(oif);
        }
        if r.scope_link {
            b = b.scope(RouteScope::Link);
        }
        if r.onlink {
            b = b.onlink();
        }
        if r.blackhole {
            b = b.kind(RouteType::BlackHole);
        }
        if r.metric != 0 {
            b = b.priority(r.metric);
        }
        if let Some(src) = r.source {
            b = b.pref_source(src);
        }
        b.build()
    }

    /// Adds or replaces a route.
    pub async fn replace_route(&self, r: &Route4) -> Result<()> {
        self.handle
            .route()
            .add(Self::route_message(r))
            .replace()
            .execute()
            .await
            .with_context(|| format!("installing route {r}"))
    }

    /// Deletes a route; a missing route is not an error.
    pub async fn delete_route(&self, r: &Route4) -> Result<()> {
        match self
            .handle
            .route()
            .del(Self::route_message(r))
            .execute()
            .await
        {
            Ok(()) => Ok(()),
            Err(e) if is_errno(&e, libc_esrch()) => Ok(()),
            Err(e) => Err(anyhow!(e).context(format!("deleting route {r}"))),
        }
    }

    /// IPv4 routes of the main table; with `protocol`, only those it tags.
    pub async fn routes(&self, protocol: Option<u8>) -> Result<Vec<Route4>> {
        let msgs: Vec<RouteMessage> = dump_retrying(|| {
            let filter = RouteMessageBuilder::<Ipv4Addr>::new().build();
            self.handle
                .route()
                .get(filter)
                .execute()
                .try_collect::<Vec<_>>()
        })
        .await
        .context("listing routes")?;
        let mut out = Vec::new();
        for m in msgs {
            if m.header.table != 254 {
                continue; // main table only
            }
            let proto: u8 = m.header.protocol.into();
            if protocol.is_some_and(|p| p != proto) {
                continue;
            }
            let mut r = Route4::to(Ipv4Addr::UNSPECIFIED, m.header.destination_prefix_length);
            r.protocol = proto;
            r.blackhole = m.header.kind == RouteType::BlackHole;
            r.scope_link = m.header.scope == RouteScope::Link;
            r.onlink = m.header.flags.contains(RouteFlags::Onlink);
            for a in &m.attributes {
                match a {
                    RouteAttribute::Destination(RouteAddress::Inet(ip)) => r.dst = *ip,
                    RouteAttribute::Gateway(RouteAddress::Inet(ip)) => r.gateway = Some(*ip),
                    RouteAttribute::Oif(i) => r.oif = Some(*i),
                    RouteAttribute::Priority(p) => r.metric = *p,
                    RouteAttribute::PrefSource(RouteAddress::Inet(ip)) => r.source = Some(*ip),
                    RouteAttribute::MultiPath(hops) => {
                        for h in hops {
                            for a in &h.attributes {
                                if let RouteAttribute::Gateway(RouteAddress::Inet(ip)) = a {
                                    r.next_hops.push(*ip);
                                }
                            }
                        }
                    }
                    _ => {}
                }
            }
            out.push(r);
        }
        Ok(out)
    }

    /// A permanent neighbour entry (no ARP ever needed for it).
    pub async fn add_permanent_neighbour(
        &self,
        index: u32,
        ip: Ipv4Addr,
        mac: [u8; 6],
    ) -> Result<()> {
        self.handle
            .neighbours()
            .add(index, IpAddr::V4(ip))
            .link_layer_address(&mac)
            .state(NeighbourState::Permanent)
            .flags(NeighbourFlags::empty())
            .replace()
            .execute()
            .await
            .with_context(|| format!("adding permanent neighbour {ip} on link #{index}"))
    }
}

fn to_link(m: &LinkMessage) -> Link {
    let mut l = Link {
        index: m.header.index,
        name: String::new(),
        mac: [0; 6],
        mtu: 0,
        up: m.header.flags.contains(LinkFlags::Up),
        link_netnsid: None,
    };
    for a in &m.attributes {
        match a {
            LinkAttribute::IfName(n) => l.name = n.clone(),
            LinkAttribute::Address(a) if a.len() == 6 => l.mac.copy_from_slice(a),
            LinkAttribute::Mtu(m) => l.mtu = *m,
            LinkAttribute::LinkNetNsId(id) => l.link_netnsid = Some(*id),
            _ => {}
        }
    }
    l
}

fn libc_enodev() -> i32 {
    nix::errno::Errno::ENODEV as i32
}
fn libc_eexist() -> i32 {
    nix::errno::Errno::EEXIST as i32
}
fn libc_esrch() -> i32 {
    nix::errno::Errno::ESRCH as i32
}

/// Formats a MAC address the usual way.
pub fn fmt_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}
