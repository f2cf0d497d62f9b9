//! Keeps the load balancer's maps in line with the Services: computes this
//! node's plan (strake-lb), diffs it against what was applied and writes only
//! the difference. Ids (frontends, backends, sets) are stable and saved, so a
//! restarted agent keeps the ids conntrack entries refer to.

use crate::agent::Agent;
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use strake_datapath::lb::{addr_key, addr_of};
use strake_datapath::shared::{
    backend_info, lb_config, svc_info, svc_key, STRAKE_BE_F_ACTIVE, STRAKE_BE_F_LOCAL,
    STRAKE_MAX_BACKENDS, STRAKE_MAX_BACKEND_SETS, STRAKE_MAX_FRONTENDS, STRAKE_SVC_F_DSR,
    STRAKE_SVC_F_EXTERNAL, STRAKE_SVC_F_LOCAL,
};
use strake_lb::model::{BackendAddr, HealthProbe, ServicePort};
use strake_lb::plan::{FrontendKey, Plan};

/// Stable ids, saved across restarts.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Ids {
    pub frontends: BTreeMap<String, u32>,
    pub backends: BTreeMap<String, u32>,
    pub sets: BTreeMap<String, u32>,
    /// Slots written per set, to remove the surplus when a set shrinks.
    #[serde(default)]
    slot_lens: BTreeMap<String, u32>,
}

pub fn fkey(k: &FrontendKey) -> String {
    format!("{}:{}/{}", k.addr, k.port, k.proto)
}

pub fn bkey(b: &BackendAddr) -> String {
    format!("{}:{}/{}", b.ip, b.port, b.proto)
}

/// The free ids of one kind (frontends, sets, backends), lowest first:
/// built once per apply, so allocating stays O(log n) at 50,000 Services.
struct IdPool {
    free: BTreeSet<u32>,
    what: &'static str,
}

impl IdPool {
    fn new(map: &BTreeMap<String, u32>, max: u32, what: &'static str) -> Self {
        let used: std::collections::HashSet<u32> = map.values().copied().collect();
        IdPool {
            free: (1..max).filter(|i| !used.contains(i)).collect(),
            what,
        }
    }

    /// The id of `key`, allocating the lowest free one for a new key.
    fn allocate(&mut self, map: &mut BTreeMap<String, u32>, key: String) -> Result<u32> {
        if let Some(id) = map.get(&key) {
            return Ok(*id);
        }
        let id = self.free.pop_first().with_context(|| {
            format!(
                "no free {} id: too many for the maps (see --lb-max-slots and README)",
                self.what
            )
        })?;
        map.insert(key, id);
        Ok(id)
    }
}

/// What the load balancer holds now, as last applied.
#[derive(Default)]
pub struct LbState {
    pub ids: Ids,
    pub applied: Plan,
    pub services: Vec<ServicePort>,
    pub problems: Vec<String>,
    ids_dirty: bool,
    loaded: bool,
}

impl LbState {
    fn ids_path(agent: &Agent) -> std::path::PathBuf {
        agent.cfg.state_dir.join("lb-ids.json")
    }

    fn load(agent: &Agent) -> Result<Ids> {
        match std::fs::read(Self::ids_path(agent)) {
            Ok(b) => serde_json::from_slice(&b)
                .context("lb-ids.json is corrupt; remove it (ids are rebuilt)"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // No saved ids (first start, or the state dir was lost): take
                // backend and frontend ids from the pinned maps, so existing
                // connections keep their backends.
                let dp = agent.dp();
                let mut ids = Ids::default();
                for (id, b) in dp.lb.backends()? {
                    let a = BackendAddr {
                        ip: addr_of(b.addr),
                        port: u16::from_be(b.port),
                        proto: b.proto,
                    };
                    ids.backends.insert(bkey(&a), id);
                }
                for (k, v) in dp.lb.services()? {
                    let f = FrontendKey {
                        addr: addr_of(k.addr),
                        port: u16::from_be(k.port),
                        proto: k.proto,
                    };
                    ids.frontends.insert(fkey(&f), v.frontend_id);
                }
                Ok(ids)
            }
            Err(e) => Err(e).context("reading lb-ids.json"),
        }
    }
}

/// Writes node-wide settings: addresses NodePorts answer on, SNAT source,
/// hash seed. Called when the uplink is known.
pub fn configure_node(
    agent: &Agent,
    node_addr: Ipv4Addr,
    uplink_ifindex: u32,
    local_addrs: &[Ipv4Addr],
) -> Result<()> {
    let (lo, hi) = agent.cfg.snat_ports;
    let mut dp = agent.dp();
    dp.lb.set_config(lb_config {
        node_addr: addr_key(node_addr),
        uplink_ifindex,
        hash_seed: agent.cfg.lb_hash_seed,
        snat_port_min: lo,
        snat_port_max: hi,
    })?;
    dp.lb.set_node_addrs(local_addrs)
}

/// One reconcile pass: model, health targets, plan, apply.
pub fn reconcile(agent: &Agent, state: &strake_source::ClusterState) -> Result<(usize, usize)> {
    let (services, problems) = strake_lb::model::services(state, agent.cfg.maglev_table_size);
    let targets: Vec<(BackendAddr, strake_lb::model::HealthCheck)> = services
        .iter()
        .flat_map(|sp| {
            sp.backends.iter().filter_map(move |b| {
                // A TCP probe of a UDP port means nothing: UDP backends are
                // checked only on an explicit health-check port.
                let probe_ok = sp.health.probe != HealthProbe::None
                    && (b.addr.proto == strake_lb::model::TCP || sp.health.port.is_some());
                probe_ok.then(|| (b.addr, sp.health.clone()))
            })
        })
        .collect();
    agent.health.set_targets(targets);
    let plan = strake_lb::plan::plan(&services, agent.node(), |b| agent.health.healthy(b));
    let mut lb = agent.lb.lock().unwrap();
    if !lb.loaded {
        lb.ids = LbState::load(agent)?;
        lb.loaded = true;
    }
    for p in problems.iter().chain(plan.conflicts.iter()) {
        if !lb.problems.contains(p) {
            tracing::warn!(problem = %p, "service configuration problem");
        }
    }
    lb.problems = problems
        .into_iter()
        .chain(plan.conflicts.iter().cloned())
        .collect();
    lb.services = services;
    let changes = apply(agent, &mut lb, plan)?;
    if lb.ids_dirty {
        let bytes = serde_json::to_vec_pretty(&lb.ids)?;
        strake_ipam::write_atomic(&LbState::ids_path(agent), &bytes)
            .context("saving lb-ids.json")?;
        lb.ids_dirty = false;
    }
    Ok((changes, lb.applied.frontends.len()))
}

/// Items written between releases of the data-plane lock, so that CNI and
/// API calls are not held up for the whole of a large apply.
const LOCK_CHUNK: usize = 1024;

fn apply(agent: &Agent, lb: &mut LbState, plan: Plan) -> Result<usize> {
    let mut dp = agent.dp();
    let mut changes = 0;
    let old = std::mem::take(&mut lb.applied);
    let mut backend_pool = IdPool::new(&lb.ids.backends, STRAKE_MAX_BACKENDS, "backend");
    let mut set_pool = IdPool::new(&lb.ids.sets, STRAKE_MAX_BACKEND_SETS, "backend set");
    let mut frontend_pool = IdPool::new(&lb.ids.frontends, STRAKE_MAX_FRONTENDS, "frontend");
    let mut written = 0usize;
    macro_rules! breathe {
        () => {
            written += 1;
            if written % LOCK_CHUNK == 0 {
                drop(dp);
                dp = agent.dp();
            }
        };
    }

    // 1. Backends first, so sets never point at a backend the program
    //    cannot find.
    let mut backend_ids: BTreeMap<BackendAddr, u32> = BTreeMap::new();
    for (addr, bp) in &plan.backends {
        let before = lb.ids.backends.len();
        let id = backend_pool.allocate(&mut lb.ids.backends, bkey(addr))?;
        if lb.ids.backends.len() != before {
            lb.ids_dirty = true;
            dp.lb.reset_counters(None, Some(id))?;
        }
        backend_ids.insert(*addr, id);
        if old.backends.get(addr) != Some(bp) {
            let mut flags = 0u8;
            if bp.local {
                flags |= STRAKE_BE_F_LOCAL as u8;
            }
            if bp.active {
                flags |= STRAKE_BE_F_ACTIVE as u8;
            }
            dp.lb.set_backend(
                id,
                backend_info {
                    addr: addr_key(addr.ip),
                    port: addr.port.to_be(),
                    proto: addr.proto,
                    flags,
                },
            )?;
            changes += 1;
            breathe!();
        }
    }

    // 2. Sets: slots (weights as repeats) and a Maglev table when the
    //    scheduler is Maglev. A changed set gets a whole new table.
    let mut affinity_frontends: BTreeMap<&str, Vec<&FrontendKey>> = BTreeMap::new();
    for (fk, fp) in &plan.frontends {
        if fp.affinity_timeout > 0 {
            affinity_frontends
                .entry(fp.set.as_str())
                .or_default()
                .push(fk);
        }
    }
    for (name, sp) in &plan.sets {
        let before = lb.ids.sets.len();
        let set_id = set_pool.allocate(&mut lb.ids.sets, name.clone())?;
        lb.ids_dirty |= lb.ids.sets.len() != before;
        let old_set = old.sets.get(name);
        if old_set == Some(sp) {
            continue;
        }
        let mut slots = Vec::new();
        let mut entries = Vec::new();
        for (addr, w) in &sp.members {
            let id = backend_ids[addr];
            slots.extend(std::iter::repeat_n(id, *w as usize));
            entries.push(strake_lb::maglev::Entry {
                key: ((u32::from(addr.ip) as u64) << 24)
                    | ((addr.port as u64) << 8)
                    | addr.proto as u64,
                id,
                weight: *w,
            });
        }
        let old_len = lb.ids.slot_lens.get(name).copied().unwrap_or(0);
        dp.lb.set_slots(set_id, &slots, old_len)?;
        if lb.ids.slot_lens.insert(name.clone(), slots.len() as u32) != Some(slots.len() as u32) {
            lb.ids_dirty = true;
        }
        if sp.table_size > 0 && !entries.is_empty() {
            let table = strake_lb::maglev::build(&entries, sp.table_size);
            dp.lb.stage_maglev(set_id, &table)?;
        }
        // Backends that left the set lose the ClientIP affinity pinning them.
        if let Some(o) = old_set {
            let gone: Vec<u32> = o
                .members
                .iter()
                .filter(|(a, _)| !sp.members.iter().any(|(b, _)| b == a))
                .filter_map(|(a, _)| lb.ids.backends.get(&bkey(a)).copied())
                .collect();
            for fk in affinity_frontends.get(name.as_str()).into_iter().flatten() {
                if let Some(fid) = lb.ids.frontends.get(&fkey(fk)) {
                    for b in &gone {
                        dp.lb.forget_affinity(*fid, *b)?;
                    }
                }
            }
        }
        changes += 1;
        breathe!();
    }

    // Tables in, with one RCU wait for all of them, before any frontend
    // points at them.
    dp.lb.commit_tables()?;

    // 3. Frontends, pointing at their sets.
    for (k, fp) in &plan.frontends {
        let before = lb.ids.frontends.len();
        let fid = frontend_pool.allocate(&mut lb.ids.frontends, fkey(k))?;
        if lb.ids.frontends.len() != before {
            lb.ids_dirty = true;
            dp.lb.reset_counters(Some(fid), None)?;
        }
        let set = &plan.sets[&fp.set];
        let set_changed = old.sets.get(&fp.set) != Some(set);
        if old.frontends.get(k) == Some(fp) && !set_changed {
            continue;
        }
        let mut flags = 0;
        if fp.external {
            flags |= STRAKE_SVC_F_EXTERNAL;
        }
        if fp.dsr {
            flags |= STRAKE_SVC_F_DSR;
        }
        if fp.local {
            flags |= STRAKE_SVC_F_LOCAL;
        }
        let count = set.members.iter().map(|(_, w)| *w).sum();
        dp.lb.set_service(
            svc_key {
                addr: addr_key(k.addr),
                port: k.port.to_be(),
                proto: k.proto,
                pad: 0,
            },
            svc_info {
                frontend_id: fid,
                set_id: lb.ids.sets[&fp.set],
                count,
                table_size: if set.members.is_empty() {
                    0
                } else {
                    set.table_size
                },
                affinity_timeout: fp.affinity_timeout,
                flags,
            },
        )?;
        changes += 1;
        breathe!();
    }

    // 4. Removals, in reverse order of dependency.
    for k in old
        .frontends
        .keys()
        .filter(|k| !plan.frontends.contains_key(k))
    {
        dp.lb.remove_service(&svc_key {
            addr: addr_key(k.addr),
            port: k.port.to_be(),
            proto: k.proto,
            pad: 0,
        })?;
        lb.ids.frontends.remove(&fkey(k));
        lb.ids_dirty = true;
        changes += 1;
        breathe!();
    }
    let stale_sets: Vec<String> = lb
        .ids
        .sets
        .keys()
        .filter(|n| !plan.sets.contains_key(*n))
        .cloned()
        .collect();
    for name in stale_sets {
        let id = lb.ids.sets.remove(&name).expect("listed");
        dp.lb
            .remove_set(id, lb.ids.slot_lens.remove(&name).unwrap_or(0))?;
        lb.ids_dirty = true;
        changes += 1;
        breathe!();
    }
    dp.lb.commit_tables()?;
    let wanted_backends: BTreeSet<String> = plan.backends.keys().map(bkey).collect();
    let stale_backends: Vec<String> = lb
        .ids
        .backends
        .keys()
        .filter(|k| !wanted_backends.contains(*k))
        .cloned()
        .collect();
    for key in stale_backends {
        let id = lb.ids.backends.remove(&key).expect("listed");
        dp.lb.remove_backend(id)?;
        lb.ids_dirty = true;
        changes += 1;
        breathe!();
    }
    // Frontends in the map that no plan knows (a lost state dir).
    if old.frontends.is_empty() {
        let known: BTreeSet<String> = plan.frontends.keys().map(fkey).collect();
        for (k, _) in dp.lb.services()? {
            let f = FrontendKey {
                addr: addr_of(k.addr),
                port: u16::from_be(k.port),
                proto: k.proto,
            };
            if !known.contains(&fkey(&f)) {
                dp.lb.remove_service(&k)?;
            }
        }
    }
    lb.applied = plan;
    Ok(changes)
}
