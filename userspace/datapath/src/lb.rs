//! The load balancer's maps, typed. The agent owns what goes in; the
//! programs in xdp.c, pod.c and uplink.c read it.

use anyhow::{anyhow, Context, Result};
use aya::maps::{Array, HashMap as BpfHashMap, HashOfMaps, MapData, MapError, PerCpuArray};
use aya::Ebpf;
use std::net::Ipv4Addr;
use std::os::fd::AsFd;
use strake_ebpf::shared::{
    affinity_entry, affinity_key, backend_info, ct_entry, flow_key, lb_config, lb_stats,
    rnat_entry, slot_key, svc_info, svc_key,
};

const BPF_MAP_TYPE_ARRAY: u32 = 2;
const BPF_F_MMAPABLE: u32 = 1 << 10;
const BPF_F_INNER_MAP: u32 = 1 << 12;

/// Summed per-CPU counters of one frontend or backend.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct LbCounters {
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
}

pub struct LbMaps {
    services: BpfHashMap<MapData, svc_key, svc_info>,
    backends: BpfHashMap<MapData, u32, backend_info>,
    slots: BpfHashMap<MapData, slot_key, u32>,
    maglev: HashOfMaps<MapData, u32>,
    node_addrs: BpfHashMap<MapData, u32, u32>,
    config: Array<MapData, lb_config>,
    fe_stats: PerCpuArray<MapData, lb_stats>,
    be_stats: PerCpuArray<MapData, lb_stats>,
    ct: BpfHashMap<MapData, flow_key, ct_entry>,
    rnat: BpfHashMap<MapData, flow_key, rnat_entry>,
    affinity: BpfHashMap<MapData, affinity_key, affinity_entry>,
    pub ct_capacity: u32,
}

fn take<T: TryFrom<aya::maps::Map, Error = MapError>>(ebpf: &mut Ebpf, name: &str) -> Result<T> {
    let m = ebpf
        .take_map(name)
        .ok_or_else(|| anyhow!("map {name} missing from the object"))?;
    T::try_from(m).with_context(|| format!("map {name} has an unexpected layout"))
}

fn not_found_ok(r: Result<(), MapError>) -> Result<()> {
    match r {
        Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
        Err(MapError::SyscallError(e)) if e.io_error.kind() == std::io::ErrorKind::NotFound => {
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

pub fn addr_key(a: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(a.octets())
}

pub fn addr_of(k: u32) -> Ipv4Addr {
    Ipv4Addr::from(k.to_ne_bytes())
}

impl LbMaps {
    pub(crate) fn take(ebpf: &mut Ebpf, ct_capacity: u32) -> Result<Self> {
        Ok(LbMaps {
            services: take(ebpf, "st_services")?,
            backends: take(ebpf, "st_backends")?,
            slots: take(ebpf, "st_slots")?,
            maglev: take(ebpf, "st_maglev")?,
            node_addrs: take(ebpf, "st_node_addrs")?,
            config: take(ebpf, "st_lb_config")?,
            fe_stats: take(ebpf, "st_fe_stats")?,
            be_stats: take(ebpf, "st_be_stats")?,
            ct: take(ebpf, "st_ct")?,
            rnat: take(ebpf, "st_rnat")?,
            affinity: take(ebpf, "st_affinity")?,
            ct_capacity,
        })
    }

    pub fn set_config(&mut self, cfg: lb_config) -> Result<()> {
        self.config.set(0, cfg, 0).context("writing st_lb_config")
    }

    pub fn config(&self) -> Result<lb_config> {
        Ok(self.config.get(&0, 0)?)
    }

    /// Replaces the set of this node's addresses (NodePort frontends).
    pub fn set_node_addrs(&mut self, addrs: &[Ipv4Addr]) -> Result<()> {
        let want: Vec<u32> = addrs.iter().map(|a| addr_key(*a)).collect();
        let have: Vec<u32> = self.node_addrs.keys().collect::<Result<_, _>>()?;
        for k in have.iter().filter(|k| !want.contains(k)) {
            not_found_ok(self.node_addrs.remove(k))?;
        }
        for k in want {
            self.node_addrs.insert(k, 1, 0)?;
        }
        Ok(())
    }

    pub fn services(&self) -> Result<Vec<(svc_key, svc_info)>> {
        Ok(self.services.iter().collect::<Result<_, _>>()?)
    }

    pub fn set_service(&mut self, k: svc_key, v: svc_info) -> Result<()> {
        self.services
            .insert(k, v, 0)
            .context("writing st_services (raise the frontend capacity if full)")
    }

    pub fn remove_service(&mut self, k: &svc_key) -> Result<()> {
        not_found_ok(self.services.remove(k))
    }

    pub fn backends(&self) -> Result<Vec<(u32, backend_info)>> {
        Ok(self.backends.iter().collect::<Result<_, _>>()?)
    }

    pub fn set_backend(&mut self, id: u32, v: backend_info) -> Result<()> {
        self.backends
            .insert(id, v, 0)
            .context("writing st_backends")
    }

    pub fn remove_backend(&mut self, id: u32) -> Result<()> {
        not_found_ok(self.backends.remove(&id))
    }

    /// Writes slots 0..ids.len() of a set and removes slots up to `old_len`.
    pub fn set_slots(&mut self, set_id: u32, ids: &[u32], old_len: u32) -> Result<()> {
        for (i, id) in ids.iter().enumerate() {
            self.slots
                .insert(
                    slot_key {
                        set_id,
                        slot: i as u32,
                    },
                    *id,
                    0,
                )
                .context("writing st_slots")?;
        }
        for slot in ids.len() as u32..old_len {
            not_found_ok(self.slots.remove(&slot_key { set_id, slot }))?;
        }
        Ok(())
    }

    /// Installs a set's Maglev table: a new inner array filled through mmap,
    /// then one atomic swap of the outer entry. Packets see the old table or
    /// the new one, never a mix.
    pub fn set_maglev(&mut self, set_id: u32, table: &[u32]) -> Result<()> {
        let n = table.len() as u32;
        let obj = aya_obj::Map::new_from_params(
            BPF_MAP_TYPE_ARRAY,
            4,
            4,
            n,
            BPF_F_INNER_MAP | BPF_F_MMAPABLE,
        );
        let inner =
            MapData::create(obj, "st_maglev_tbl", None).context("creating a Maglev table")?;
        // Array elements sit at an 8-byte stride (round_up(value_size, 8)).
        const STRIDE: usize = 8;
        let len = (table.len() * STRIDE).div_ceil(4096) * 4096;
        // SAFETY: a fresh BPF_F_MMAPABLE array of `n` elements, mapped shared
        // and written before the program can see it; unmapped before return.
        unsafe {
            let p = nix::sys::mman::mmap(
                None,
                std::num::NonZeroUsize::new(len).expect("non-empty table"),
                nix::sys::mman::ProtFlags::PROT_READ | nix::sys::mman::ProtFlags::PROT_WRITE,
                nix::sys::mman::MapFlags::MAP_SHARED,
                inner.fd().as_fd(),
                0,
            )
            .context("mapping a Maglev table")?;
            let base = p.as_ptr() as *mut u8;
            for (i, id) in table.iter().enumerate() {
                (base.add(i * STRIDE) as *mut u32).write(*id);
            }
            nix::sys::mman::munmap(p, len).context("unmapping a Maglev table")?;
        }
        self.maglev
            .insert(set_id, &inner, 0)
            .context("installing a Maglev table")
    }

    /// Removes a set's table and slots (slots below `old_len`).
    pub fn remove_set(&mut self, set_id: u32, old_len: u32) -> Result<()> {
        not_found_ok(self.maglev.remove(&set_id))?;
        for slot in 0..old_len {
            not_found_ok(self.slots.remove(&slot_key { set_id, slot }))?;
        }
        Ok(())
    }

    fn sum(m: &PerCpuArray<MapData, lb_stats>, id: u32) -> LbCounters {
        m.get(&id, 0)
            .map(|v| {
                v.iter().fold(LbCounters::default(), |a, s| LbCounters {
                    packets: a.packets + s.packets,
                    bytes: a.bytes + s.bytes,
                    new_flows: a.new_flows + s.new_flows,
                })
            })
            .unwrap_or_default()
    }

    pub fn frontend_counters(&self, id: u32) -> LbCounters {
        Self::sum(&self.fe_stats, id)
    }

    pub fn backend_counters(&self, id: u32) -> LbCounters {
        Self::sum(&self.be_stats, id)
    }

    /// Zeroes counters of a recycled id.
    pub fn reset_counters(&mut self, frontend: Option<u32>, backend: Option<u32>) -> Result<()> {
        let zero = |m: &mut PerCpuArray<MapData, lb_stats>, id: u32| -> Result<()> {
            let n = aya::util::nr_cpus().map_err(|(_, e)| e)?;
            m.set(
                id,
                aya::maps::PerCpuValues::try_from(vec![lb_stats::default(); n])?,
                0,
            )?;
            Ok(())
        };
        if let Some(f) = frontend {
            zero(&mut self.fe_stats, f)?;
        }
        if let Some(b) = backend {
            zero(&mut self.be_stats, b)?;
        }
        Ok(())
    }

    /// Entries in the connection table (walks it: call from a slow path).
    pub fn ct_entries(&self) -> u64 {
        self.ct.keys().filter(|k| k.is_ok()).count() as u64
    }

    pub fn rnat_entries(&self) -> u64 {
        self.rnat.keys().filter(|k| k.is_ok()).count() as u64
    }

    /// Forgets ClientIP affinity pinning `backend` for `frontend`, when the
    /// backend left the frontend's set.
    pub fn forget_affinity(&mut self, frontend: u32, backend: u32) -> Result<usize> {
        let stale: Vec<affinity_key> = self
            .affinity
            .iter()
            .filter_map(|kv| kv.ok())
            .filter(|(k, v)| k.frontend_id == frontend && v.backend_id == backend)
            .map(|(k, _)| k)
            .collect();
        for k in &stale {
            not_found_ok(self.affinity.remove(k))?;
        }
        Ok(stale.len())
    }
}
