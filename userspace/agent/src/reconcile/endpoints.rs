//! Endpoints: every attached pod's map entry and programs, as its record
//! says, and nothing that belongs to no record. CNI ADD and DEL write their
//! own endpoint; this phase restores all of them after a start and repairs
//! drift on full passes: entries rewritten with live interface data, pinned
//! links taken over (program swapped atomically), leftovers of crashes swept
//! (veths, links and map entries of no record).
//!
//! The identity and isolation flags of an entry belong to the policy phase:
//! this phase keeps the ones the entry has (a new entry is isolated by
//! neither direction until the policy phase says otherwise, which it does
//! in the same round).

use super::{Outcome, Pass, Phase};
use crate::agent::EndpointRecord;
use anyhow::Result;
use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use strake_datapath::shared::{endpoint_info, STRAKE_EP_F_ANTISPOOF};
use strake_source::KindSet;

/// One record of the agent's allocation table.
#[derive(Debug, Clone)]
pub struct Record {
    pub key: String,
    pub ip: Ipv4Addr,
    pub record: EndpointRecord,
}

/// The kernel's side of this phase (and the records it follows).
pub trait EndpointKernel: Send {
    fn records(&self) -> Vec<Record>;
    /// A host-side veth: (ifindex, MAC).
    fn link(&self, ifname: &str) -> Result<Option<(u32, [u8; 6])>>;
    /// Host-side pod veths (`strk*`): (ifindex, name).
    fn host_veths(&self) -> Result<Vec<(u32, String)>>;
    fn delete_link(&mut self, ifindex: u32) -> Result<()>;
    fn entries(&self) -> Result<Vec<(Ipv4Addr, endpoint_info)>>;
    fn upsert(&mut self, ip: Ipv4Addr, info: endpoint_info) -> Result<()>;
    fn remove(&mut self, ip: Ipv4Addr) -> Result<()>;
    /// Attaches the pod programs (taking over pinned links).
    fn attach(&mut self, ifname: &str) -> Result<()>;
    fn detach(&mut self, ifname: &str) -> Result<()>;
    /// Whether the kernel runs the pod programs on this veth.
    fn attached(&self, ifname: &str) -> Result<bool>;
    /// Interfaces with pinned endpoint links.
    fn pinned(&self) -> Vec<String>;
}

pub struct EndpointsPhase<K> {
    pub kernel: K,
    /// Held by CNI operations too: a pass never sees half an ADD or DEL.
    pub lock: Arc<Mutex<()>>,
}

/// What one pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Repair {
    pub restored: usize,
    pub vanished: usize,
    pub swept: Vec<String>,
    pub changes: usize,
}

/// Brings every endpoint in line with its record; sweeps what belongs to
/// none. `attach_all`: (re)attach programs everywhere (after a start, to
/// swap in this agent's programs), else only where they are missing.
pub fn repair<K: EndpointKernel>(k: &mut K, attach_all: bool) -> Result<Repair> {
    let records = k.records();
    let entries = k.entries()?;
    let mut out = Repair::default();
    for r in &records {
        let have = entries.iter().find(|(ip, _)| *ip == r.ip).map(|(_, e)| *e);
        let Some(pod_mac) = attached_mac(&r.record, have.as_ref()) else {
            continue; // allocated, not attached yet: its ADD is under way
        };
        let ifname = &r.record.host_ifname;
        match k.link(ifname)? {
            Some((ifindex, host_mac)) => {
                let want = endpoint_info {
                    ifindex,
                    flags: have.map_or(STRAKE_EP_F_ANTISPOOF, |e| e.flags),
                    pod_mac,
                    host_mac,
                    endpoint_id: r.record.endpoint_id,
                    identity: have.map_or(0, |e| e.identity),
                };
                if have != Some(want) {
                    k.upsert(r.ip, want)?;
                    out.changes += 1;
                }
                if attach_all || !k.attached(ifname)? {
                    k.attach(ifname)?;
                    out.changes += usize::from(!attach_all);
                }
                out.restored += 1;
            }
            None => {
                tracing::warn!(key = %r.key, ip = %r.ip, veth = %ifname,
                    "veth vanished; keeping the address until CNI DEL or GC");
                if have.is_some() {
                    k.remove(r.ip)?;
                    out.changes += 1;
                }
                k.detach(ifname)?;
                out.vanished += 1;
            }
        }
    }
    out.swept = sweep(k, &records)?;
    out.changes += out.swept.len();
    Ok(out)
}

/// The pod MAC of an attached endpoint, or None while its ADD is under
/// way. Attach saves the MAC in memory only: after a restart the map entry
/// of the record's endpoint id is what shows the endpoint attached.
pub fn attached_mac(record: &EndpointRecord, entry: Option<&endpoint_info>) -> Option<[u8; 6]> {
    record.pod_mac.or_else(|| {
        entry
            .filter(|e| e.endpoint_id == record.endpoint_id)
            .map(|e| e.pod_mac)
    })
}

/// Removes host veths, pinned links and map entries that belong to no
/// record: what a crash between two steps can leave behind.
pub fn sweep<K: EndpointKernel>(k: &mut K, records: &[Record]) -> Result<Vec<String>> {
    let ifnames: BTreeSet<&str> = records
        .iter()
        .map(|r| r.record.host_ifname.as_str())
        .collect();
    let ips: BTreeSet<Ipv4Addr> = records.iter().map(|r| r.ip).collect();
    let mut swept = Vec::new();
    for (index, name) in k.host_veths()? {
        if !ifnames.contains(name.as_str()) {
            k.delete_link(index)?;
            swept.push(format!("veth {name}"));
        }
    }
    for ifname in k.pinned() {
        if !ifnames.contains(ifname.as_str()) {
            k.detach(&ifname)?;
            swept.push(format!("links of {ifname}"));
        }
    }
    for (ip, _) in k.entries()? {
        if !ips.contains(&ip) {
            k.remove(ip)?;
            swept.push(format!("map entry {ip}"));
        }
    }
    Ok(swept)
}

impl<K: EndpointKernel> Phase for EndpointsPhase<K> {
    fn name(&self) -> &'static str {
        "endpoints"
    }

    fn kinds(&self) -> KindSet {
        KindSet::of(&[])
    }

    fn reconcile(&mut self, pass: &Pass<'_>) -> Result<Outcome> {
        if !pass.full {
            return Ok(Outcome::applied(0));
        }
        let _cni = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let r = repair(&mut self.kernel, false)?;
        if !r.swept.is_empty() {
            tracing::info!(swept = ?r.swept, "swept leftovers of no endpoint");
        }
        Ok(Outcome::applied(r.changes))
    }
}

/// The node's endpoints: records from the allocation table, entries and
/// links from the data plane, veths over rtnetlink.
pub struct KernelEndpoints {
    pub ipam: Arc<Mutex<strake_ipam::Ipam<EndpointRecord>>>,
    pub dp: Arc<Mutex<strake_datapath::Datapath>>,
    pub nl: strake_netlink::Netlink,
    pub rt: tokio::runtime::Handle,
}

impl KernelEndpoints {
    fn dp(&self) -> std::sync::MutexGuard<'_, strake_datapath::Datapath> {
        self.dp.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl EndpointKernel for KernelEndpoints {
    fn records(&self) -> Vec<Record> {
        let ipam = self.ipam.lock().unwrap_or_else(|e| e.into_inner());
        ipam.allocations()
            .map(|a| Record {
                key: a.key.to_string(),
                ip: a.ip,
                record: a.record.clone(),
            })
            .collect()
    }
    fn link(&self, ifname: &str) -> Result<Option<(u32, [u8; 6])>> {
        Ok(self
            .rt
            .block_on(self.nl.link_by_name(ifname))?
            .map(|l| (l.index, l.mac)))
    }
    fn host_veths(&self) -> Result<Vec<(u32, String)>> {
        Ok(self
            .rt
            .block_on(self.nl.links())?
            .into_iter()
            .filter(|l| l.name.starts_with("strk"))
            .map(|l| (l.index, l.name))
            .collect())
    }
    fn delete_link(&mut self, ifindex: u32) -> Result<()> {
        self.rt.block_on(self.nl.delete_link(ifindex))
    }
    fn entries(&self) -> Result<Vec<(Ipv4Addr, endpoint_info)>> {
        self.dp().endpoint_entries()
    }
    fn upsert(&mut self, ip: Ipv4Addr, info: endpoint_info) -> Result<()> {
        self.dp().upsert_endpoint(ip, info)
    }
    fn remove(&mut self, ip: Ipv4Addr) -> Result<()> {
        self.dp().remove_endpoint(ip)
    }
    fn attach(&mut self, ifname: &str) -> Result<()> {
        self.dp().attach_endpoint(ifname)
    }
    fn detach(&mut self, ifname: &str) -> Result<()> {
        self.dp().detach_endpoint(ifname)
    }
    fn attached(&self, ifname: &str) -> Result<bool> {
        self.dp().endpoint_attached(ifname)
    }
    fn pinned(&self) -> Vec<String> {
        self.dp().pinned_endpoint_links()
    }
}

#[cfg(test)]
mod tests;
