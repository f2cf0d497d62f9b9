//! In-memory kernels for the phases' tests: maps as `BTreeMap`s, and a
//! switch that makes every write fail, as a full map or a lost device would.

use super::endpoints::{EndpointKernel, Record};
use super::lb::LbKernel;
use super::policy::PolicyKernel;
use anyhow::{bail, Result};
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use strake_datapath::policy::VerdictKey;
use strake_datapath::shared::{backend_info, endpoint_info, svc_info, svc_key};
use strake_lb::plan::DsrTarget;
use strake_policy::compile::LocalEndpoint;
use strake_policy::model::Prefix;

/// Makes writes fail while set; counts writes.
#[derive(Clone, Default)]
pub struct Fault {
    pub fail: Arc<AtomicBool>,
    pub writes: Arc<AtomicUsize>,
}

impl Fault {
    pub fn write(&self, what: &str) -> Result<()> {
        if self.fail.load(Ordering::SeqCst) {
            bail!("writing {what}: No space left on device (os error 28)");
        }
        self.writes.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
    pub fn set(&self, fail: bool) {
        self.fail.store(fail, Ordering::SeqCst);
    }
    pub fn writes(&self) -> usize {
        self.writes.load(Ordering::SeqCst)
    }
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LbMaps {
    pub services: BTreeMap<(u32, u16, u8), svc_info>,
    pub backends: BTreeMap<u32, backend_info>,
    pub slots: BTreeMap<(u32, u32), u32>,
    pub maglev: BTreeMap<u32, Vec<u32>>,
    staged: BTreeMap<u32, Vec<u32>>,
    unstage: Vec<u32>,
    pub forgotten_affinity: Vec<(u32, u32)>,
    pub dsr_targets: BTreeMap<DsrTarget, u32>,
    /// loadBalancerSourceRanges by frontend id.
    pub source_ranges: BTreeMap<u32, Vec<(std::net::Ipv4Addr, u8)>>,
}

#[derive(Clone, Default)]
pub struct FakeLb {
    pub maps: Arc<Mutex<LbMaps>>,
    pub fault: Fault,
}

fn sk(k: &svc_key) -> (u32, u16, u8) {
    (k.addr, k.port, k.proto)
}

impl LbKernel for FakeLb {
    fn set_backend(&mut self, id: u32, v: backend_info) -> Result<()> {
        self.fault.write("st_backends")?;
        self.maps.lock().unwrap().backends.insert(id, v);
        Ok(())
    }
    fn remove_backend(&mut self, id: u32) -> Result<()> {
        self.fault.write("st_backends")?;
        self.maps.lock().unwrap().backends.remove(&id);
        Ok(())
    }
    fn reset_counters(&mut self, _f: Option<u32>, _b: Option<u32>) -> Result<()> {
        Ok(())
    }
    fn set_slots(&mut self, set: u32, ids: &[u32], old_len: u32) -> Result<()> {
        self.fault.write("st_slots")?;
        let mut m = self.maps.lock().unwrap();
        for (i, id) in ids.iter().enumerate() {
            m.slots.insert((set, i as u32), *id);
        }
        for i in ids.len() as u32..old_len {
            m.slots.remove(&(set, i));
        }
        Ok(())
    }
    fn stage_maglev(&mut self, set: u32, table: &[u32]) -> Result<()> {
        self.fault.write("st_maglev")?;
        self.maps.lock().unwrap().staged.insert(set, table.to_vec());
        Ok(())
    }
    fn commit_tables(&mut self) -> Result<()> {
        let mut m = self.maps.lock().unwrap();
        let staged = std::mem::take(&mut m.staged);
        m.maglev.extend(staged);
        for s in std::mem::take(&mut m.unstage) {
            m.maglev.remove(&s);
        }
        Ok(())
    }
    fn remove_set(&mut self, set: u32, old_len: u32) -> Result<()> {
        self.fault.write("st_slots")?;
        let mut m = self.maps.lock().unwrap();
        for i in 0..old_len {
            m.slots.remove(&(set, i));
        }
        m.unstage.push(set);
        Ok(())
    }
    fn set_service(&mut self, k: svc_key, v: svc_info) -> Result<()> {
        self.fault.write("st_svc")?;
        self.maps.lock().unwrap().services.insert(sk(&k), v);
        Ok(())
    }
    fn remove_service(&mut self, k: &svc_key) -> Result<()> {
        self.fault.write("st_svc")?;
        self.maps.lock().unwrap().services.remove(&sk(k));
        Ok(())
    }
    fn forget_affinity(&mut self, frontend: u32, backend: u32) -> Result<()> {
        self.maps
            .lock()
            .unwrap()
            .forgotten_affinity
            .push((frontend, backend));
        Ok(())
    }
    fn services(&self) -> Result<Vec<(svc_key, svc_info)>> {
        Ok(self
            .maps
            .lock()
            .unwrap()
            .services
            .iter()
            .map(|((addr, port, proto), v)| {
                (
                    svc_key {
                        addr: *addr,
                        port: *port,
                        proto: *proto,
                        pad: 0,
                    },
                    *v,
                )
            })
            .collect())
    }
    fn backends(&self) -> Result<Vec<(u32, backend_info)>> {
        Ok(self
            .maps
            .lock()
            .unwrap()
            .backends
            .iter()
            .map(|(k, v)| (*k, *v))
            .collect())
    }
    fn set_dsr_target(&mut self, t: &DsrTarget, frontend_id: u32) -> Result<()> {
        self.fault.write("st_dsr_targets")?;
        self.maps
            .lock()
            .unwrap()
            .dsr_targets
            .insert(*t, frontend_id);
        Ok(())
    }
    fn remove_dsr_target(&mut self, t: &DsrTarget) -> Result<()> {
        self.fault.write("st_dsr_targets")?;
        self.maps.lock().unwrap().dsr_targets.remove(t);
        Ok(())
    }
    fn set_source_ranges(
        &mut self,
        frontend_id: u32,
        r: &[(std::net::Ipv4Addr, u8)],
    ) -> Result<()> {
        self.fault.write("st_lb_sources")?;
        let mut m = self.maps.lock().unwrap();
        if r.is_empty() {
            m.source_ranges.remove(&frontend_id);
        } else {
            m.source_ranges.insert(frontend_id, r.to_vec());
        }
        Ok(())
    }
    fn dsr_targets(&self) -> Result<Vec<DsrTarget>> {
        Ok(self
            .maps
            .lock()
            .unwrap()
            .dsr_targets
            .keys()
            .copied()
            .collect())
    }
}

/// What a frontend resolves to, ids followed: the view a packet has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedFrontend {
    pub count: u32,
    pub table_size: u32,
    pub flags: u32,
    pub affinity_timeout: u32,
    /// Backends of the slots, in slot order.
    pub slots: Vec<(u32, u16, u8, u8)>,
    /// Backends of the Maglev table, in table order.
    pub table: Vec<(u32, u16, u8, u8)>,
}

impl LbMaps {
    /// Every frontend as a packet would see it, ids resolved to addresses:
    /// two kernels with different ids but the same behaviour compare equal.
    pub fn resolved(&self) -> BTreeMap<(u32, u16, u8), ResolvedFrontend> {
        let backend = |id: &u32| {
            let b = self.backends.get(id).copied().unwrap_or_default();
            (b.addr, b.port, b.proto, b.flags)
        };
        self.services
            .iter()
            .map(|(k, v)| {
                let slots = (0..v.count)
                    .filter_map(|i| self.slots.get(&(v.set_id, i)))
                    .map(backend)
                    .collect();
                let table = if v.table_size > 0 {
                    self.maglev
                        .get(&v.set_id)
                        .map(|t| t.iter().map(backend).collect())
                        .unwrap_or_default()
                } else {
                    vec![]
                };
                (
                    *k,
                    ResolvedFrontend {
                        count: v.count,
                        table_size: v.table_size,
                        flags: v.flags,
                        affinity_timeout: v.affinity_timeout,
                        slots,
                        table,
                    },
                )
            })
            .collect()
    }
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PolicyMaps {
    pub ipcache: BTreeMap<Prefix, u32>,
    pub verdicts: BTreeMap<VerdictKey, u32>,
    pub nodes: Vec<Ipv4Addr>,
    /// Endpoint entries: (identity, flags).
    pub endpoints: BTreeMap<Ipv4Addr, (u32, u32)>,
    pub generation: u32,
}

#[derive(Clone, Default)]
pub struct FakePolicy {
    pub maps: Arc<Mutex<PolicyMaps>>,
    pub local: Arc<Mutex<Vec<LocalEndpoint>>>,
    pub fault: Fault,
}

impl PolicyKernel for FakePolicy {
    fn local_endpoints(&self) -> Vec<LocalEndpoint> {
        self.local.lock().unwrap().clone()
    }
    fn set_class(&mut self, p: Prefix, class: u32) -> Result<()> {
        self.fault.write("st_ipcache")?;
        self.maps.lock().unwrap().ipcache.insert(p, class);
        Ok(())
    }
    fn remove_class(&mut self, p: Prefix) -> Result<()> {
        self.fault.write("st_ipcache")?;
        self.maps.lock().unwrap().ipcache.remove(&p);
        Ok(())
    }
    fn set_verdict(&mut self, k: &VerdictKey, rule: u32) -> Result<()> {
        self.fault.write("st_policy")?;
        self.maps.lock().unwrap().verdicts.insert(*k, rule);
        Ok(())
    }
    fn remove_verdict(&mut self, k: &VerdictKey) -> Result<()> {
        self.fault.write("st_policy")?;
        self.maps.lock().unwrap().verdicts.remove(k);
        Ok(())
    }
    fn classes(&self) -> Result<Vec<(Prefix, u32)>> {
        Ok(self
            .maps
            .lock()
            .unwrap()
            .ipcache
            .iter()
            .map(|(k, v)| (*k, *v))
            .collect())
    }
    fn verdicts(&self) -> Result<Vec<(VerdictKey, u32)>> {
        Ok(self
            .maps
            .lock()
            .unwrap()
            .verdicts
            .iter()
            .map(|(k, v)| (*k, *v))
            .collect())
    }
    fn set_cluster_nodes(&mut self, nodes: &[Ipv4Addr]) -> Result<usize> {
        let mut m = self.maps.lock().unwrap();
        if m.nodes == nodes {
            return Ok(0);
        }
        self.fault.write("st_cluster_nodes")?;
        m.nodes = nodes.to_vec();
        Ok(1)
    }
    fn endpoint_policy(&self) -> Result<Vec<(Ipv4Addr, u32, u32)>> {
        Ok(self
            .maps
            .lock()
            .unwrap()
            .endpoints
            .iter()
            .map(|(k, (i, f))| (*k, *i, *f))
            .collect())
    }
    fn set_endpoint_policy(&mut self, ip: Ipv4Addr, identity: u32, flags: u32) -> Result<()> {
        self.fault.write("st_endpoints")?;
        self.maps
            .lock()
            .unwrap()
            .endpoints
            .insert(ip, (identity, flags));
        Ok(())
    }
    fn bump_generation(&mut self) -> Result<u32> {
        let mut m = self.maps.lock().unwrap();
        m.generation += 1;
        Ok(m.generation)
    }
}

#[derive(Debug, Default, Clone)]
pub struct Node {
    pub records: Vec<Record>,
    /// name -> (ifindex, mac)
    pub links: BTreeMap<String, (u32, [u8; 6])>,
    pub entries: BTreeMap<Ipv4Addr, endpoint_info>,
    /// Interfaces whose programs run (attached).
    pub attached: BTreeMap<String, bool>,
    /// Pinned links (may outlive the device).
    pub pinned: Vec<String>,
}

#[derive(Clone, Default)]
pub struct FakeEndpoints {
    pub node: Arc<Mutex<Node>>,
    pub fault: Fault,
}

impl EndpointKernel for FakeEndpoints {
    fn records(&self) -> Vec<Record> {
        self.node.lock().unwrap().records.clone()
    }
    fn link(&self, ifname: &str) -> Result<Option<(u32, [u8; 6])>> {
        Ok(self.node.lock().unwrap().links.get(ifname).copied())
    }
    fn host_veths(&self) -> Result<Vec<(u32, String)>> {
        Ok(self
            .node
            .lock()
            .unwrap()
            .links
            .iter()
            .filter(|(n, _)| n.starts_with("strk"))
            .map(|(n, (i, _))| (*i, n.clone()))
            .collect())
    }
    fn delete_link(&mut self, ifindex: u32) -> Result<()> {
        self.fault.write("link")?;
        let mut n = self.node.lock().unwrap();
        n.links.retain(|_, (i, _)| *i != ifindex);
        Ok(())
    }
    fn entries(&self) -> Result<Vec<(Ipv4Addr, endpoint_info)>> {
        Ok(self
            .node
            .lock()
            .unwrap()
            .entries
            .iter()
            .map(|(k, v)| (*k, *v))
            .collect())
    }
    fn upsert(&mut self, ip: Ipv4Addr, info: endpoint_info) -> Result<()> {
        self.fault.write("st_endpoints")?;
        self.node.lock().unwrap().entries.insert(ip, info);
        Ok(())
    }
    fn remove(&mut self, ip: Ipv4Addr) -> Result<()> {
        self.fault.write("st_endpoints")?;
        self.node.lock().unwrap().entries.remove(&ip);
        Ok(())
    }
    fn attach(&mut self, ifname: &str) -> Result<()> {
        self.fault.write("tcx link")?;
        let mut n = self.node.lock().unwrap();
        if !n.links.contains_key(ifname) {
            bail!("attaching to {ifname}: No such device");
        }
        n.attached.insert(ifname.into(), true);
        if !n.pinned.iter().any(|p| p == ifname) {
            n.pinned.push(ifname.into());
        }
        Ok(())
    }
    fn detach(&mut self, ifname: &str) -> Result<()> {
        let mut n = self.node.lock().unwrap();
        n.attached.remove(ifname);
        n.pinned.retain(|p| p != ifname);
        Ok(())
    }
    fn attached(&self, ifname: &str) -> Result<bool> {
        Ok(self
            .node
            .lock()
            .unwrap()
            .attached
            .get(ifname)
            .copied()
            .unwrap_or(false))
    }
    fn pinned(&self) -> Vec<String> {
        self.node.lock().unwrap().pinned.clone()
    }
}
