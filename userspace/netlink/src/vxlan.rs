//! A VXLAN device and the static state behind it, as Calico's VXLAN mode
//! keeps it: no learning and no flooding; for every remote node a
//! permanent neighbour (its VTEP MAC behind its InternalIP, on the device)
//! and a forwarding entry (that MAC → the node's InternalIP, the outer
//! destination). Routes through the device then need nothing resolved at
//! run time.

use crate::{dump_retrying, is_errno, Netlink};
use anyhow::{anyhow, Context, Result};
use futures::TryStreamExt;
use netlink_packet_route::link::{InfoData, InfoKind, InfoVxlan, LinkAttribute, LinkInfo};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::AddressFamily;
use std::net::Ipv4Addr;

/// What a VXLAN device is: the settings that matter to its peers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vxlan {
    pub index: u32,
    pub vni: u32,
    pub local: Option<Ipv4Addr>,
    pub port: u16,
    pub mtu: u32,
    pub mac: [u8; 6],
    pub up: bool,
}

/// A VXLAN device to create: sending from `local` out of link `dev`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanSpec {
    pub vni: u32,
    pub local: Ipv4Addr,
    pub port: u16,
    pub dev: u32,
    pub mac: [u8; 6],
    pub mtu: u32,
}

/// A forwarding entry of a VXLAN device: frames to `mac` go to `dst`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FdbEntry {
    pub mac: [u8; 6],
    pub dst: Ipv4Addr,
}

/// A permanent IPv4 neighbour.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Neighbour {
    pub ip: Ipv4Addr,
    pub mac: [u8; 6],
}

impl Netlink {
    /// The VXLAN device `name`, if there is one.
    pub async fn vxlan(&self, name: &str) -> Result<Option<Vxlan>> {
        let mut s = self
            .handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute();
        let m = match s.try_next().await {
            Ok(Some(m)) => m,
            Ok(None) => return Ok(None),
            Err(e) if is_errno(&e, nix::errno::Errno::ENODEV as i32) => return Ok(None),
            Err(e) => return Err(anyhow!(e).context(format!("looking up link {name}"))),
        };
        let l = crate::to_link(&m);
        let mut v = Vxlan {
            index: l.index,
            vni: 0,
            local: None,
            port: 0,
            mtu: l.mtu,
            mac: l.mac,
            up: l.up,
        };
        let mut is_vxlan = false;
        for a in &m.attributes {
            let LinkAttribute::LinkInfo(infos) = a else {
                continue;
            };
            for i in infos {
                match i {
                    LinkInfo::Kind(InfoKind::Vxlan) => is_vxlan = true,
                    LinkInfo::Data(InfoData::Vxlan(data)) => {
                        for d in data {
                            match d {
                                InfoVxlan::Id(id) => v.vni = *id,
                                InfoVxlan::Local(ip) => v.local = Some(*ip),
                                InfoVxlan::Port(p) => v.port = *p,
                                _ => {}
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
        if !is_vxlan {
            anyhow::bail!("link {name} exists and is not a VXLAN device");
        }
        Ok(Some(v))
    }

    /// Creates a VXLAN device as `spec` says, with learning off (every
    /// entry is static).
    pub async fn create_vxlan(&self, name: &str, spec: &VxlanSpec) -> Result<()> {
        let msg = rtnetlink::LinkVxlan::new(name, spec.vni)
            .local(spec.local)
            .port(spec.port)
            .dev(spec.dev)
            .learning(false)
            .mtu(spec.mtu)
            .address(spec.mac.to_vec())
            .build();
        self.handle
            .link()
            .add(msg)
            .execute()
            .await
            .with_context(|| {
                format!(
                    "creating VXLAN device {name} (VNI {}, port {})",
                    spec.vni, spec.port
                )
            })
    }

    /// Forwarding entries of a VXLAN device that carry a destination.
    pub async fn fdb(&self, index: u32) -> Result<Vec<FdbEntry>> {
        let msgs: Vec<NeighbourMessage> = dump_retrying(|| {
            self.handle
                .neighbours()
                .get()
                .set_address_family(AddressFamily::Bridge)
                .execute()
                .try_collect::<Vec<_>>()
        })
        .await
        .context("listing forwarding entries")?;
        Ok(msgs
            .iter()
            .filter(|m| m.header.family == AddressFamily::Bridge && m.header.ifindex == index)
            .filter_map(|m| {
                let mut mac = None;
                let mut dst = None;
                for a in &m.attributes {
                    match a {
                        NeighbourAttribute::LinkLayerAddress(l) if l.len() == 6 => {
                            mac = Some(<[u8; 6]>::try_from(&l[..]).ok()?)
                        }
                        // Bridge-family entries carry the outer IPv4
                        // destination as raw bytes.
                        NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => {
                            dst = Some(*ip)
                        }
                        NeighbourAttribute::Destination(NeighbourAddress::Other(b))
                            if b.len() == 4 =>
                        {
                            dst = Some(Ipv4Addr::new(b[0], b[1], b[2], b[3]))
                        }
                        _ => {}
                    }
                }
                Some(FdbEntry {
                    mac: mac?,
                    dst: dst?,
                })
            })
            .collect())
    }

    fn fdb_message(index: u32, e: &FdbEntry) -> NeighbourMessage {
        let mut m = NeighbourMessage::default();
        m.header.family = AddressFamily::Bridge;
        m.header.ifindex = index;
        m.header.state = NeighbourState::Permanent;
        m.header.flags = NeighbourFlags::Own;
        m.attributes
            .push(NeighbourAttribute::LinkLayerAddress(e.mac.to_vec()));
        m.attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(
                e.dst,
            )));
        m
    }

    /// Adds (or replaces) a forwarding entry.
    pub async fn add_fdb(&self, index: u32, e: &FdbEntry) -> Result<()> {
        let mut req = self.handle.neighbours().add_bridge(index, &e.mac).replace();
        *req.message_mut() = Self::fdb_message(index, e);
        req.execute().await.with_context(|| {
            format!(
                "adding forwarding entry {} dst {} on link #{index}",
                crate::fmt_mac(&e.mac),
                e.dst
            )
        })
    }

    /// Deletes a forwarding entry; a missing one is not an error.
    pub async fn delete_fdb(&self, index: u32, e: &FdbEntry) -> Result<()> {
        match self
            .handle
            .neighbours()
            .del(Self::fdb_message(index, e))
            .execute()
            .await
        {
            Ok(()) => Ok(()),
            Err(err) if is_errno(&err, nix::errno::Errno::ENOENT as i32) => Ok(()),
            Err(err) => Err(anyhow!(err).context(format!(
                "deleting forwarding entry {} on link #{index}",
                crate::fmt_mac(&e.mac)
            ))),
        }
    }

    /// Permanent IPv4 neighbours of a link.
    pub async fn permanent_neighbours(&self, index: u32) -> Result<Vec<Neighbour>> {
        let msgs: Vec<NeighbourMessage> = dump_retrying(|| {
            self.handle
                .neighbours()
                .get()
                .execute()
                .try_collect::<Vec<_>>()
        })
        .await
        .context("listing neighbours")?;
        Ok(msgs
            .iter()
            .filter(|m| {
                m.header.family == AddressFamily::Inet
                    && m.header.ifindex == index
                    && m.header.state == NeighbourState::Permanent
            })
            .filter_map(|m| {
                let mut ip = None;
                let mut mac = None;
                for a in &m.attributes {
                    match a {
                        NeighbourAttribute::Destination(NeighbourAddress::Inet(a)) => ip = Some(*a),
                        NeighbourAttribute::LinkLayerAddress(l) if l.len() == 6 => {
                            mac = <[u8; 6]>::try_from(&l[..]).ok()
                        }
                        _ => {}
                    }
                }
                Some(Neighbour { ip: ip?, mac: mac? })
            })
            .collect())
    }

    /// Deletes an IPv4 neighbour; a missing one is not an error.
    pub async fn delete_neighbour(&self, index: u32, ip: Ipv4Addr) -> Result<()> {
        let mut m = NeighbourMessage::default();
        m.header.family = AddressFamily::Inet;
        m.header.ifindex = index;
        m.attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)));
        match self.handle.neighbours().del(m).execute().await {
            Ok(()) => Ok(()),
            Err(e) if is_errno(&e, nix::errno::Errno::ENOENT as i32) => Ok(()),
            Err(e) => Err(anyhow!(e).context(format!("deleting neighbour {ip} on link #{index}"))),
        }
    }
}

/// The VTEP MAC of a node: locally administered, unicast, derived from its
/// InternalIP, so every node computes every other's without asking.
pub fn vtep_mac(node_ip: Ipv4Addr) -> [u8; 6] {
    let o = node_ip.octets();
    [0x0e, 0x73, o[0], o[1], o[2], o[3]]
}
