//! The load balancer's maps, typed. The agent owns what goes in; the
//! programs in xdp.c, pod.c and uplink.c read it.

use anyhow::{anyhow, Context, Result};
use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{Array, HashMap as BpfHashMap, HashOfMaps, MapData, MapError, PerCpuArray};
use aya::Ebpf;
use std::net::Ipv4Addr;
use std::os::fd::AsFd;

use crate::map_name;
use strake_ebpf::shared::{
    affinity_entry, affinity_key, backend_info, counter_value, lb_config, lb_stats, masq_config,
    slot_key, svc_info, svc_key, STRAKE_MAP_AFFINITY, STRAKE_MAP_BACKENDS, STRAKE_MAP_BE_STATS,
    STRAKE_MAP_FE_REJECT, STRAKE_MAP_FE_STATS, STRAKE_MAP_LB_CONFIG, STRAKE_MAP_LB_SOURCES,
    STRAKE_MAP_MAGLEV, STRAKE_MAP_MASQ_CONFIG, STRAKE_MAP_MASQ_SKIP, STRAKE_MAP_NODE_ADDRS,
    STRAKE_MAP_SERVICES, STRAKE_MAP_SLOTS,
};

use crate::batch::{bpf_batch, BatchAttr, BPF_MAP_DELETE_BATCH, BPF_MAP_UPDATE_BATCH};

const BPF_MAP_TYPE_ARRAY: u32 = 2;
const BPF_F_MMAPABLE: u32 = 1 << 10;
const BPF_F_INNER_MAP: u32 = 1 << 12;
/// Tables staged before an automatic commit (each holds an fd until then).
const TABLE_BATCH: usize = 512;

/// BPF_MAP_UPDATE_BATCH / BPF_MAP_DELETE_BATCH of u32 keys and values.
fn map_batch(
    map: &std::os::fd::OwnedFd,
    cmd: libc::c_long,
    keys: &[u32],
    values: Option<&[u32]>,
) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let mut attr = BatchAttr {
        keys: keys.as_ptr() as u64,
        values: values.map_or(0, |v| v.as_ptr() as u64),
        count: keys.len() as u32,
        map_fd: map.as_raw_fd() as u32,
        ..Default::default()
    };
    bpf_batch(cmd, &mut attr)?;
    if attr.count as usize != keys.len() {
        return Err(std::io::Error::other(format!(
            "batch stopped after {} of {} elements",
            attr.count,
            keys.len()
        )));
    }
    Ok(())
}

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
    /// st_maglev's fd, for batch updates (aya has none).
    maglev_fd: std::os::fd::OwnedFd,
    /// Tables made but not yet in st_maglev, and tables to remove from it:
    /// see [`LbMaps::commit_tables`].
    staged_tables: Vec<(u32, MapData)>,
    staged_removals: Vec<u32>,
    node_addrs: BpfHashMap<MapData, u32, u32>,
    config: Array<MapData, lb_config>,
    fe_stats: PerCpuArray<MapData, lb_stats>,
    be_stats: PerCpuArray<MapData, lb_stats>,
    /// New flows refused per frontend (reject.h).
    fe_reject: PerCpuArray<MapData, counter_value>,
    /// loadBalancerSourceRanges: ([frontend id, address], prefix 32 + len).
    sources: LpmTrie<MapData, [u32; 2], u32>,
    affinity: BpfHashMap<MapData, affinity_key, affinity_entry>,
    masq_config: Array<MapData, masq_config>,
    /// Destinations never masqueraded (prefix, why: STRAKE_MASQ_SKIP_*).
    masq_skip: LpmTrie<MapData, u32, u32>,
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
    pub(crate) fn take(ebpf: &mut Ebpf) -> Result<Self> {
        let maglev_name = map_name(STRAKE_MAP_MAGLEV);
        Ok(LbMaps {
            services: take(ebpf, map_name(STRAKE_MAP_SERVICES))?,
            backends: take(ebpf, map_name(STRAKE_MAP_BACKENDS))?,
            slots: take(ebpf, map_name(STRAKE_MAP_SLOTS))?,
            maglev_fd: {
                let m = ebpf
                    .map(maglev_name)
                    .ok_or_else(|| anyhow!("map {maglev_name} missing from the object"))?;
                let aya::maps::Map::HashOfMaps(d) = m else {
                    return Err(anyhow!("map st_maglev is not a hash of maps"));
                };
                d.fd().as_fd().try_clone_to_owned()?
            },
            maglev: take(ebpf, maglev_name)?,
            staged_tables: Vec::new(),
            staged_removals: Vec::new(),
            node_addrs: take(ebpf, map_name(STRAKE_MAP_NODE_ADDRS))?,
            config: take(ebpf, map_name(STRAKE_MAP_LB_CONFIG))?,
            fe_stats: take(ebpf, map_name(STRAKE_MAP_FE_STATS))?,
            be_stats: take(ebpf, map_name(STRAKE_MAP_BE_STATS))?,
            fe_reject: take(ebpf, map_name(STRAKE_MAP_FE_REJECT))?,
            sources: take(ebpf, map_name(STRAKE_MAP_LB_SOURCES))?,
            affinity: take(ebpf, map_name(STRAKE_MAP_AFFINITY))?,
            masq_config: take(ebpf, map_name(STRAKE_MAP_MASQ_CONFIG))?,
            masq_skip: take(ebpf, map_name(STRAKE_MAP_MASQ_SKIP))?,
        })
    }

    pub fn set_config(&mut self, cfg: lb_config) -> Result<()> {
        self.config.set(0, cfg, 0).context("writing st_lb_config")
    }

    pub fn config(&self) -> Result<lb_config> {
        Ok(self.config.get(&0, 0)?)
    }

    pub fn set_masq_config(&mut self, cfg: masq_config) -> Result<()> {
        self.masq_config
            .set(0, cfg, 0)
            .context("writing st_masq_config")
    }

    pub fn masq_config(&self) -> Result<masq_config> {
        Ok(self.masq_config.get(&0, 0)?)
    }

    /// The destinations never masqueraded: (network, prefix length, why).
    pub fn masq_skip(&self) -> Result<Vec<(Ipv4Addr, u8, u32)>> {
        let mut out = Vec::new();
        for r in self.masq_skip.iter() {
            let (k, why) = r.context("reading st_masq_skip")?;
            out.push((addr_of(k.data()), k.prefix_len() as u8, why));
        }
        out.sort();
        Ok(out)
    }

    /// Makes `want` the destinations never masqueraded: new and changed
    /// prefixes in first, then those no longer wanted out. Returns the
    /// number of changes.
    pub fn set_masq_skip(&mut self, want: &[(Ipv4Addr, u8, u32)]) -> Result<usize> {
        let key = |a: Ipv4Addr, len: u8| Key::new(len as u32, addr_key(a));
        let have = self.masq_skip()?;
        let mut changes = 0;
        for w in want {
            if !have.contains(w) {
                self.masq_skip
                    .insert(&key(w.0, w.1), w.2, 0)
                    .with_context(|| {
                        format!(
                            "writing st_masq_skip {}/{} (full? it holds {} prefixes)",
                            w.0,
                            w.1,
                            strake_ebpf::shared::STRAKE_MAX_MASQ_SKIP
                        )
                    })?;
                changes += 1;
            }
        }
        for (a, len, _) in have {
            if !want.iter().any(|w| (w.0, w.1) == (a, len)) {
                not_found_ok(self.masq_skip.remove(&key(a, len)))
                    .context("removing from st_masq_skip")?;
                changes += 1;
            }
        }
        Ok(changes)
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

    /// Installs a set's Maglev table now (see [`LbMaps::stage_maglev`]).
    pub fn set_maglev(&mut self, set_id: u32, table: &[u32]) -> Result<()> {
        self.stage_maglev(set_id, table)?;
        self.commit_tables()
    }

    /// Makes a set's new Maglev table: a fresh inner array filled through
    /// mmap. It takes effect at [`LbMaps::commit_tables`], by one swap of the
    /// outer entry: packets see the old table or the new one, never a mix.
    /// Every change to st_maglev makes the kernel wait for an RCU grace
    /// period (tens of ms here), so tables are installed in batches: one wait
    /// per batch instead of one per Service.
    pub fn stage_maglev(&mut self, set_id: u32, table: &[u32]) -> Result<()> {
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
        self.staged_removals.retain(|k| *k != set_id);
        self.staged_tables.retain(|(k, _)| *k != set_id);
        self.staged_tables.push((set_id, inner));
        // Each staged table holds a file descriptor until committed.
        if self.staged_tables.len() >= TABLE_BATCH {
            self.commit_tables()?;
        }
        Ok(())
    }

    /// Installs the staged tables and removes the staged removals, with one
    /// batch update and one batch delete of st_maglev.
    pub fn commit_tables(&mut self) -> Result<()> {
        let tables = std::mem::take(&mut self.staged_tables);
        if !tables.is_empty() {
            let keys: Vec<u32> = tables.iter().map(|(k, _)| *k).collect();
            let fds: Vec<u32> = tables
                .iter()
                .map(|(_, m)| {
                    use std::os::fd::AsRawFd;
                    m.fd().as_fd().as_raw_fd() as u32
                })
                .collect();
            if let Err(e) = map_batch(&self.maglev_fd, BPF_MAP_UPDATE_BATCH, &keys, Some(&fds)) {
                // Kernels without batch operations on maps of maps: one by one.
                tracing::debug!(error = %e, "batch update of st_maglev failed; updating one by one");
                for (k, m) in &tables {
                    self.maglev
                        .insert(k, m, 0)
                        .context("installing a Maglev table")?;
                }
            }
        }
        let removals = std::mem::take(&mut self.staged_removals);
        if !removals.is_empty() {
            // A batch delete stops at the first missing key: delete only
            // what is there.
            let present: std::collections::HashSet<u32> =
                self.maglev.keys().filter_map(|k| k.ok()).collect();
            let keys: Vec<u32> = removals
                .into_iter()
                .filter(|k| present.contains(k))
                .collect();
            if !keys.is_empty()
                && map_batch(&self.maglev_fd, BPF_MAP_DELETE_BATCH, &keys, None).is_err()
            {
                for k in &keys {
                    not_found_ok(self.maglev.remove(k))?;
                }
            }
        }
        Ok(())
    }

    /// Removes a set's slots (below `old_len`) now and stages the removal of
    /// its table (see [`LbMaps::commit_tables`]).
    pub fn remove_set(&mut self, set_id: u32, old_len: u32) -> Result<()> {
        self.staged_tables.retain(|(k, _)| *k != set_id);
        self.staged_removals.push(set_id);
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

    /// Frontend `id`'s loadBalancerSourceRanges (network, prefix length).
    pub fn source_ranges(&self, id: u32) -> Result<Vec<(Ipv4Addr, u8)>> {
        let mut out = Vec::new();
        for k in self.sources.keys() {
            let k = k.context("reading st_lb_sources")?;
            let [fid, addr] = k.data();
            if fid == id {
                out.push((addr_of(addr), (k.prefix_len() - 32) as u8));
            }
        }
        out.sort();
        Ok(out)
    }

    /// Makes `ranges` frontend `id`'s loadBalancerSourceRanges: the new
    /// ones in first, then those no longer listed out (nothing in between
    /// admits a client neither list names).
    pub fn set_source_ranges(&mut self, id: u32, ranges: &[(Ipv4Addr, u8)]) -> Result<()> {
        let key = |(a, len): (Ipv4Addr, u8)| Key::new(32 + len as u32, [id, addr_key(a)]);
        let old = self.source_ranges(id)?;
        for r in ranges {
            if !old.contains(r) {
                self.sources.insert(&key(*r), 1, 0).context(
                    "writing st_lb_sources (full? it holds every LoadBalancer frontend's source ranges)",
                )?;
            }
        }
        for r in old.into_iter().filter(|r| !ranges.contains(r)) {
            not_found_ok(self.sources.remove(&key(r))).context("removing from st_lb_sources")?;
        }
        Ok(())
    }

    /// Packets to frontend `id` answered with a refusal (TCP RST, ICMP port
    /// unreachable): the Service had no usable endpoint.
    pub fn frontend_rejected(&self, id: u32) -> u64 {
        self.fe_reject
            .get(&id, 0)
            .map(|v| v.iter().map(|c| c.packets).sum())
            .unwrap_or_default()
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
            let n = aya::util::nr_cpus().map_err(|(_, e)| e)?;
            self.fe_reject.set(
                f,
                aya::maps::PerCpuValues::try_from(vec![counter_value::default(); n])?,
                0,
            )?;
        }
        if let Some(b) = backend {
            zero(&mut self.be_stats, b)?;
        }
        Ok(())
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
