//! The load balancer's maps, in line with the Services: a change re-models
//! the Services it touches (strake-lb's `ServiceDeps`), re-plans them on
//! this node (`Planner`), and writes only the frontends, sets and backends
//! whose plan changed. A full pass re-models every Service, diffs the whole
//! plan against what was written, and observes the service and backend maps
//! for entries nobody wrote (a lost state directory).
//!
//! Ids (frontends, backends, sets) are stable and saved, so a restarted
//! agent keeps the ids conntrack entries refer to.

use super::{LocalEvent, Outcome, Pass, Phase};
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use strake_datapath::lb::{addr_key, addr_of};
use strake_datapath::shared::{
    backend_info, svc_info, svc_key, STRAKE_BE_F_ACTIVE, STRAKE_BE_F_LOCAL, STRAKE_MAX_BACKENDS,
    STRAKE_MAX_BACKEND_SETS, STRAKE_MAX_FRONTENDS, STRAKE_SVC_F_DSR, STRAKE_SVC_F_EXTERNAL,
    STRAKE_SVC_F_LOCAL, STRAKE_SVC_F_REJECT, STRAKE_SVC_F_SOURCE_RANGES,
};
use strake_datapath::Datapath;
use strake_lb::health::HealthChecker;
use strake_lb::model::{BackendAddr, ModelOptions};
use strake_lb::plan::{
    BackendPlan, Dirty, DsrTarget, FrontendKey, FrontendPlan, Plan, Planner, SetPlan,
};
use strake_lb::touch::ServiceDeps;
use strake_source::{Change, ClusterState, Kind, KindSet, ObjectKey};

/// The kernel's side of this phase: the load balancer's maps.
pub trait LbKernel: Send {
    fn set_backend(&mut self, id: u32, v: backend_info) -> Result<()>;
    fn remove_backend(&mut self, id: u32) -> Result<()>;
    /// Zeroes the counters of a recycled frontend or backend id.
    fn reset_counters(&mut self, frontend: Option<u32>, backend: Option<u32>) -> Result<()>;
    /// Writes slots 0..ids.len() of a set, removing those up to `old_len`.
    fn set_slots(&mut self, set: u32, ids: &[u32], old_len: u32) -> Result<()>;
    /// A set's next Maglev table, in force at `commit_tables`.
    fn stage_maglev(&mut self, set: u32, table: &[u32]) -> Result<()>;
    fn commit_tables(&mut self) -> Result<()>;
    fn remove_set(&mut self, set: u32, old_len: u32) -> Result<()>;
    fn set_service(&mut self, k: svc_key, v: svc_info) -> Result<()>;
    fn remove_service(&mut self, k: &svc_key) -> Result<()>;
    fn forget_affinity(&mut self, frontend: u32, backend: u32) -> Result<()>;
    fn services(&self) -> Result<Vec<(svc_key, svc_info)>>;
    fn backends(&self) -> Result<Vec<(u32, backend_info)>>;
    /// What direct-return IPIP may deliver here (docs/threat-model.md, DSR).
    fn set_dsr_target(&mut self, t: &DsrTarget, frontend_id: u32) -> Result<()>;
    fn remove_dsr_target(&mut self, t: &DsrTarget) -> Result<()>;
    fn dsr_targets(&self) -> Result<Vec<DsrTarget>>;
    /// Makes `ranges` a frontend's loadBalancerSourceRanges (empty: none).
    fn set_source_ranges(
        &mut self,
        frontend_id: u32,
        ranges: &[(std::net::Ipv4Addr, u8)],
    ) -> Result<()>;
}

/// The maps of the node's data plane. Each call takes the data-plane lock
/// for its own write only, so CNI calls never wait for a large apply.
pub struct DatapathLb(pub Arc<Mutex<Datapath>>);

impl DatapathLb {
    fn dp(&self) -> std::sync::MutexGuard<'_, Datapath> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl LbKernel for DatapathLb {
    fn set_backend(&mut self, id: u32, v: backend_info) -> Result<()> {
        self.dp().lb.set_backend(id, v)
    }
    fn remove_backend(&mut self, id: u32) -> Result<()> {
        self.dp().lb.remove_backend(id)
    }
    fn reset_counters(&mut self, frontend: Option<u32>, backend: Option<u32>) -> Result<()> {
        let mut dp = self.dp();
        if let Some(f) = frontend {
            dp.sock.reset_counters(f)?;
        }
        dp.lb.reset_counters(frontend, backend)
    }
    fn set_slots(&mut self, set: u32, ids: &[u32], old_len: u32) -> Result<()> {
        self.dp().lb.set_slots(set, ids, old_len)
    }
    fn stage_maglev(&mut self, set: u32, table: &[u32]) -> Result<()> {
        self.dp().lb.stage_maglev(set, table)
    }
    fn commit_tables(&mut self) -> Result<()> {
        self.dp().lb.commit_tables()
    }
    fn remove_set(&mut self, set: u32, old_len: u32) -> Result<()> {
        self.dp().lb.remove_set(set, old_len)
    }
    fn set_service(&mut self, k: svc_key, v: svc_info) -> Result<()> {
        self.dp().lb.set_service(k, v)
    }
    fn remove_service(&mut self, k: &svc_key) -> Result<()> {
        self.dp().lb.remove_service(k)
    }
    fn forget_affinity(&mut self, frontend: u32, backend: u32) -> Result<()> {
        self.dp().lb.forget_affinity(frontend, backend).map(|_| ())
    }
    fn services(&self) -> Result<Vec<(svc_key, svc_info)>> {
        self.dp().lb.services()
    }
    fn backends(&self) -> Result<Vec<(u32, backend_info)>> {
        self.dp().lb.backends()
    }
    fn set_dsr_target(&mut self, t: &DsrTarget, frontend_id: u32) -> Result<()> {
        self.dp().trust.add_dsr_target(&dsr_key(t), frontend_id)
    }
    fn remove_dsr_target(&mut self, t: &DsrTarget) -> Result<()> {
        self.dp().trust.remove_dsr_target(&dsr_key(t))
    }
    fn set_source_ranges(
        &mut self,
        frontend_id: u32,
        ranges: &[(std::net::Ipv4Addr, u8)],
    ) -> Result<()> {
        self.dp().lb.set_source_ranges(frontend_id, ranges)
    }
    fn dsr_targets(&self) -> Result<Vec<DsrTarget>> {
        Ok(self
            .dp()
            .trust
            .dsr_targets()?
            .into_iter()
            .map(|t| {
                (
                    FrontendKey {
                        addr: t.vip,
                        port: t.vport,
                        proto: t.proto,
                    },
                    BackendAddr {
                        ip: t.backend,
                        port: t.bport,
                        proto: t.proto,
                    },
                )
            })
            .collect())
    }
}

fn dsr_key(t: &DsrTarget) -> strake_datapath::trust::DsrTarget {
    strake_datapath::trust::DsrTarget {
        vip: t.0.addr,
        vport: t.0.port,
        proto: t.0.proto,
        backend: t.1.ip,
        bport: t.1.port,
    }
}

/// Stable ids, saved across restarts.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Ids {
    pub frontends: BTreeMap<String, u32>,
    pub backends: BTreeMap<String, u32>,
    pub sets: BTreeMap<String, u32>,
    /// Slots written per set, to remove the surplus when a set shrinks.
    #[serde(default)]
    pub slot_lens: BTreeMap<String, u32>,
}

pub fn fkey(k: &FrontendKey) -> String {
    format!("{}:{}/{}", k.addr, k.port, k.proto)
}

pub fn bkey(b: &BackendAddr) -> String {
    format!("{}:{}/{}", b.ip, b.port, b.proto)
}

/// Free ids of one kind, lowest first: allocation and release are
/// O(log n) whatever the number of Services.
#[derive(Debug, Clone, Default)]
pub struct IdPool {
    free: BTreeSet<u32>,
    /// Ids above this were never handed out.
    high: u32,
    max: u32,
    what: &'static str,
}

impl IdPool {
    pub fn new(used: impl Iterator<Item = u32>, max: u32, what: &'static str) -> Self {
        let used: BTreeSet<u32> = used.collect();
        let high = used.last().copied().unwrap_or(0);
        IdPool {
            free: (1..high).filter(|i| !used.contains(i)).collect(),
            high,
            max,
            what,
        }
    }

    /// The id of `key`, allocating the lowest free one for a new key;
    /// returns whether it is new.
    pub fn allocate(
        &mut self,
        map: &mut BTreeMap<String, u32>,
        key: String,
    ) -> Result<(u32, bool)> {
        if let Some(id) = map.get(&key) {
            return Ok((*id, false));
        }
        let id = match self.free.pop_first() {
            Some(id) => id,
            None if self.high + 1 < self.max => {
                self.high += 1;
                self.high
            }
            None => anyhow::bail!(
                "no free {} id: the maps hold at most {} (see --lb-max-slots and the README)",
                self.what,
                self.max - 1
            ),
        };
        map.insert(key, id);
        Ok((id, true))
    }

    pub fn release(&mut self, map: &mut BTreeMap<String, u32>, key: &str) -> Option<u32> {
        let id = map.remove(key)?;
        self.free.insert(id);
        Some(id)
    }
}

/// What the load balancer holds, as this phase wrote it, and what it wants.
#[derive(Default)]
pub struct LbState {
    pub ids: Ids,
    /// The plan as written to the kernel.
    pub applied: Plan,
    /// The plan as wanted: Services, their models and this node's view.
    pub planner: Planner,
    pub problems: BTreeMap<ObjectKey, Vec<String>>,
    pools: Option<[IdPool; 3]>,
    ids_dirty: bool,
}

impl LbState {
    pub fn problems(&self) -> Vec<String> {
        let mut p: Vec<String> = self.problems.values().flatten().cloned().collect();
        p.extend(self.planner.conflicts());
        p
    }
}

pub struct LbPhase<K> {
    pub kernel: K,
    pub state: Arc<Mutex<LbState>>,
    pub health: Arc<HealthChecker>,
    pub node: String,
    pub opts: ModelOptions,
    /// Where the ids are saved (`lb-ids.json`).
    pub ids_path: PathBuf,
    deps: ServiceDeps,
    touched: BTreeSet<ObjectKey>,
    loaded: bool,
}

impl<K: LbKernel> LbPhase<K> {
    pub fn new(
        kernel: K,
        state: Arc<Mutex<LbState>>,
        health: Arc<HealthChecker>,
        node: &str,
        opts: ModelOptions,
        ids_path: PathBuf,
    ) -> Self {
        LbPhase {
            kernel,
            state,
            health,
            node: node.to_string(),
            opts,
            ids_path,
            deps: ServiceDeps::default(),
            touched: BTreeSet::new(),
            loaded: false,
        }
    }

    /// Saved ids, or (first start, lost state directory) the ids the pinned
    /// maps hold, so existing connections keep their backends.
    fn load_ids(&self) -> Result<Ids> {
        match std::fs::read(&self.ids_path) {
            Ok(b) => serde_json::from_slice(&b).with_context(|| {
                format!(
                    "{} is corrupt; remove it (ids are rebuilt from the maps)",
                    self.ids_path.display()
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut ids = Ids::default();
                for (id, b) in self.kernel.backends()? {
                    let a = BackendAddr {
                        ip: addr_of(b.addr),
                        port: u16::from_be(b.port),
                        proto: b.proto,
                    };
                    ids.backends.insert(bkey(&a), id);
                }
                for (k, v) in self.kernel.services()? {
                    ids.frontends.insert(fkey(&frontend_of(&k)), v.frontend_id);
                }
                Ok(ids)
            }
            Err(e) => Err(e).with_context(|| format!("reading {}", self.ids_path.display())),
        }
    }
}

fn frontend_of(k: &svc_key) -> FrontendKey {
    FrontendKey {
        addr: addr_of(k.addr),
        port: u16::from_be(k.port),
        proto: k.proto,
    }
}

fn svc_key_of(k: &FrontendKey) -> svc_key {
    svc_key {
        addr: addr_key(k.addr),
        port: k.port.to_be(),
        proto: k.proto,
        pad: 0,
    }
}

impl<K: LbKernel> Phase for LbPhase<K> {
    fn name(&self) -> &'static str {
        "lb"
    }

    fn kinds(&self) -> KindSet {
        KindSet::of(&[Kind::Service, Kind::EndpointSlice, Kind::Pod, Kind::Node])
    }

    fn note(&mut self, change: &Change, state: &ClusterState) -> bool {
        let zone = |o: &Option<strake_source::Object>| match o {
            Some(strake_source::Object::Node(n)) => n
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(strake_lb::model::ZONE_LABEL).cloned()),
            _ => None,
        };
        if change.kind() == Kind::Node {
            // A node's zone is every zone-aware Service's business: this
            // node's picks its preferred endpoints, another's moves that
            // node's endpoints between zones. Rare; re-plan them all.
            if zone(&change.old) == zone(&change.new) {
                return false;
            }
            self.touched.extend(state.services.keys().cloned());
            return true;
        }
        let t = self.deps.touched(change);
        let any = !t.is_empty();
        self.touched.extend(t);
        any
    }

    fn note_local(&mut self, event: &LocalEvent) -> bool {
        let LocalEvent::Health(flipped) = event else {
            return false;
        };
        let lb = self.state.lock().unwrap();
        let before = self.touched.len();
        for b in flipped {
            self.touched.extend(lb.planner.services_of(b).cloned());
        }
        self.touched.len() != before
    }

    fn reconcile(&mut self, pass: &Pass<'_>) -> Result<Outcome> {
        let state = self.state.clone();
        let mut lb = state.lock().unwrap();
        if !self.loaded {
            lb.ids = self.load_ids()?;
            lb.pools = None;
            lb.planner = Planner::new(&self.node);
            self.loaded = true;
        }
        let zone_moved = lb
            .planner
            .set_zone(strake_lb::model::node_zone(pass.state, &self.node));
        let services: BTreeSet<ObjectKey> = if pass.full || zone_moved {
            self.touched.clear();
            pass.state
                .services
                .keys()
                .chain(lb.planner.service_keys())
                .cloned()
                .collect()
        } else {
            std::mem::take(&mut self.touched)
        };
        // Probes bind the node's address: the backend's node checks the
        // health-check encapsulation against it.
        self.health
            .set_source_addr(pass.state.node_internal_ip(&self.node));
        let health = self.health.clone();
        let healthy = move |b: &BackendAddr| health.healthy(b);
        for key in &services {
            match pass.state.services.get(key) {
                Some(svc) => {
                    let mut problems = Vec::new();
                    let ports = strake_lb::model::service_ports(
                        pass.state,
                        key,
                        svc,
                        &self.opts,
                        &mut problems,
                    );
                    self.deps
                        .record(key, pass.state, &ports, self.opts.endpoints_from_pods);
                    lb.planner.set_service(key.clone(), ports, &healthy);
                    let old = lb.problems.get(key);
                    for p in problems
                        .iter()
                        .filter(|p| old.is_none_or(|o| !o.contains(p)))
                    {
                        tracing::warn!(problem = %p, "service configuration problem");
                    }
                    if problems.is_empty() {
                        lb.problems.remove(key);
                    } else {
                        lb.problems.insert(key.clone(), problems);
                    }
                }
                None => {
                    self.deps.forget(key);
                    lb.planner.remove_service(key);
                    lb.problems.remove(key);
                }
            }
        }
        let mut dirty = lb.planner.take_dirty();
        for b in &dirty.targets {
            self.health.set_target(*b, lb.planner.target(b).cloned());
        }
        if pass.full {
            // Everything wanted or written is compared.
            dirty.frontends.extend(lb.planner.frontend_keys().copied());
            dirty.frontends.extend(lb.applied.frontends.keys().copied());
            dirty.sets.extend(lb.planner.set_names().cloned());
            dirty.sets.extend(lb.applied.sets.keys().cloned());
            dirty.sets.extend(lb.ids.sets.keys().cloned());
            dirty.backends.extend(lb.planner.backend_addrs().copied());
            dirty.backends.extend(lb.applied.backends.keys().copied());
            dirty
                .dsr_targets
                .extend(lb.planner.dsr_target_keys().copied());
            dirty
                .dsr_targets
                .extend(lb.applied.dsr_targets.iter().copied());
        }
        for c in lb.planner.conflicts() {
            tracing::debug!(conflict = %c, "frontend claimed twice");
        }
        let mut changes = apply(&mut self.kernel, &mut lb, &dirty)?;
        if pass.full {
            changes += observe(&mut self.kernel, &mut lb)?;
        }
        if lb.ids_dirty {
            let bytes = serde_json::to_vec_pretty(&lb.ids)?;
            strake_ipam::write_atomic(&self.ids_path, &bytes)
                .with_context(|| format!("saving {}", self.ids_path.display()))?;
            lb.ids_dirty = false;
        }
        Ok(Outcome::applied(changes))
    }
}

fn backend_value(addr: &BackendAddr, bp: &BackendPlan) -> backend_info {
    let mut flags = 0u8;
    if bp.local {
        flags |= STRAKE_BE_F_LOCAL as u8;
    }
    if bp.active {
        flags |= STRAKE_BE_F_ACTIVE as u8;
    }
    backend_info {
        addr: addr_key(addr.ip),
        port: addr.port.to_be(),
        proto: addr.proto,
        flags,
    }
}

/// A set's (id, slots, Maglev table size) as a frontend's entry names it.
type SetRef<'a> = (&'a SetPlan, u32);

fn set_fields((set, id): SetRef<'_>) -> (u32, u32, u32) {
    let count = set.members.iter().map(|(_, w)| *w).sum();
    let table = if set.members.is_empty() {
        0
    } else {
        set.table_size
    };
    (id, count, table)
}

fn frontend_value(fp: &FrontendPlan, set: SetRef<'_>, inside: SetRef<'_>, fid: u32) -> svc_info {
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
    if fp.reject {
        flags |= STRAKE_SVC_F_REJECT;
    }
    if fp.source_ranges.is_some() {
        flags |= STRAKE_SVC_F_SOURCE_RANGES;
    }
    let (set_id, count, table_size) = set_fields(set);
    let (inside_set_id, inside_count, inside_table_size) = set_fields(inside);
    svc_info {
        frontend_id: fid,
        set_id,
        count,
        table_size,
        affinity_timeout: fp.affinity_timeout,
        flags,
        inside_set_id,
        inside_count,
        inside_table_size,
    }
}

/// Writes what differs between the plan and what was written, for the
/// `dirty` keys, in dependency order: backends before the sets that name
/// them, tables in before frontends point at them, removals in reverse.
fn apply<K: LbKernel>(k: &mut K, lb: &mut LbState, dirty: &Dirty) -> Result<usize> {
    let LbState {
        ids,
        applied,
        planner,
        ids_dirty,
        pools,
        ..
    } = lb;
    let [fpool, spool, bpool] = pools.get_or_insert_with(|| {
        [
            IdPool::new(
                ids.frontends.values().copied(),
                STRAKE_MAX_FRONTENDS,
                "frontend",
            ),
            IdPool::new(
                ids.sets.values().copied(),
                STRAKE_MAX_BACKEND_SETS,
                "backend set",
            ),
            IdPool::new(
                ids.backends.values().copied(),
                STRAKE_MAX_BACKENDS,
                "backend",
            ),
        ]
    });
    let mut changes = 0;
    // Sets whose entries were rewritten: their frontends hold their size.
    let mut changed_sets = BTreeSet::new();
    let result = (|| -> Result<()> {
        // 1. Backends, so sets never point at one the program cannot find.
        for addr in &dirty.backends {
            let Some(bp) = planner.backend(addr) else {
                continue;
            };
            let (id, new) = bpool.allocate(&mut ids.backends, bkey(addr))?;
            if new {
                *ids_dirty = true;
                k.reset_counters(None, Some(id))?;
            }
            if applied.backends.get(addr) != Some(&bp) {
                k.set_backend(id, backend_value(addr, &bp))?;
                applied.backends.insert(*addr, bp);
                changes += 1;
            }
        }
        // 2. Sets: slots (weights as repeats) and a Maglev table; a changed
        //    set gets a whole new table.
        for name in &dirty.sets {
            let Some(sp) = planner.set(name) else {
                continue;
            };
            let (set_id, new) = spool.allocate(&mut ids.sets, name.clone())?;
            *ids_dirty |= new;
            let old = applied.sets.get(name);
            if old == Some(sp) {
                continue;
            }
            let mut slots = Vec::new();
            let mut entries = Vec::new();
            for (addr, w) in &sp.members {
                let id = ids.backends[&bkey(addr)];
                slots.extend(std::iter::repeat_n(id, *w as usize));
                entries.push(strake_lb::maglev::Entry {
                    key: ((u32::from(addr.ip) as u64) << 24)
                        | ((addr.port as u64) << 8)
                        | addr.proto as u64,
                    id,
                    weight: *w,
                });
            }
            let old_len = ids.slot_lens.get(name).copied().unwrap_or(0);
            k.set_slots(set_id, &slots, old_len)?;
            if ids.slot_lens.insert(name.clone(), slots.len() as u32) != Some(slots.len() as u32) {
                *ids_dirty = true;
            }
            if sp.table_size > 0 && !entries.is_empty() {
                k.stage_maglev(set_id, &strake_lb::maglev::build(&entries, sp.table_size))?;
            }
            // Backends that left the set lose the ClientIP affinity pinning
            // them.
            if let Some(o) = old {
                let gone: Vec<u32> = o
                    .members
                    .iter()
                    .filter(|(a, _)| !sp.members.iter().any(|(b, _)| b == a))
                    .filter_map(|(a, _)| ids.backends.get(&bkey(a)).copied())
                    .collect();
                for fk in planner.frontends_of_set(name) {
                    let with_affinity =
                        planner.frontend(fk).is_some_and(|f| f.affinity_timeout > 0);
                    if let (true, Some(fid)) = (with_affinity, ids.frontends.get(&fkey(fk))) {
                        for b in &gone {
                            k.forget_affinity(*fid, *b)?;
                        }
                    }
                }
            }
            applied.sets.insert(name.clone(), sp.clone());
            changed_sets.insert(name.clone());
            changes += 1;
        }
        // Tables in, with one RCU wait for all of them, before any frontend
        // points at them.
        k.commit_tables()?;
        // 3. Frontends, pointing at their sets.
        for fk in &dirty.frontends {
            match planner.frontend(fk) {
                Some(fp) => {
                    let (Some(set), Some(inside)) =
                        (planner.set(&fp.set), planner.set(&fp.inside_set))
                    else {
                        continue;
                    };
                    let (fid, new) = fpool.allocate(&mut ids.frontends, fkey(fk))?;
                    if new {
                        *ids_dirty = true;
                        k.reset_counters(Some(fid), None)?;
                    }
                    let value = frontend_value(
                        fp,
                        (set, ids.sets[&fp.set]),
                        (inside, ids.sets[&fp.inside_set]),
                        fid,
                    );
                    let old = applied.frontends.get(fk);
                    if old != Some(fp)
                        || changed_sets.contains(&fp.set)
                        || changed_sets.contains(&fp.inside_set)
                        || new
                    {
                        // Source ranges in before the frontend enforces
                        // them, out after it stops (or another took the
                        // id: a recycled id starts clean).
                        let ranges = fp.source_ranges.as_deref().unwrap_or_default();
                        let rewrite = new
                            || old.is_none()
                            || old.map(|o| &o.source_ranges) != Some(&fp.source_ranges);
                        if rewrite && !ranges.is_empty() {
                            k.set_source_ranges(fid, ranges)?;
                        }
                        k.set_service(svc_key_of(fk), value)?;
                        if rewrite && ranges.is_empty() {
                            k.set_source_ranges(fid, &[])?;
                        }
                        applied.frontends.insert(*fk, fp.clone());
                        changes += 1;
                    }
                }
                None => {
                    if applied.frontends.remove(fk).is_some()
                        || ids.frontends.contains_key(&fkey(fk))
                    {
                        k.remove_service(&svc_key_of(fk))?;
                        if let Some(fid) = ids.frontends.get(&fkey(fk)) {
                            k.set_source_ranges(*fid, &[])?;
                        }
                        fpool.release(&mut ids.frontends, &fkey(fk));
                        *ids_dirty = true;
                        changes += 1;
                    }
                }
            }
        }
        // Where direct return may deliver: once the frontends have ids.
        for t in &dirty.dsr_targets {
            let fid = ids.frontends.get(&fkey(&t.0)).copied();
            match (planner.dsr_target(t), fid) {
                (true, Some(fid)) => {
                    if !applied.dsr_targets.contains(t) {
                        k.set_dsr_target(t, fid)?;
                        applied.dsr_targets.insert(*t);
                        changes += 1;
                    }
                }
                _ => {
                    if applied.dsr_targets.contains(t) {
                        k.remove_dsr_target(t)?;
                        applied.dsr_targets.remove(t);
                        changes += 1;
                    }
                }
            }
        }
        // 4. Sets nobody wants.
        for name in &dirty.sets {
            if planner.set(name).is_some() {
                continue;
            }
            applied.sets.remove(name);
            if let Some(id) = spool.release(&mut ids.sets, name) {
                k.remove_set(id, ids.slot_lens.remove(name).unwrap_or(0))?;
                *ids_dirty = true;
                changes += 1;
            }
        }
        k.commit_tables()?;
        // 5. Backends nobody uses.
        for addr in &dirty.backends {
            if planner.backend(addr).is_some() {
                continue;
            }
            applied.backends.remove(addr);
            if let Some(id) = bpool.release(&mut ids.backends, &bkey(addr)) {
                k.remove_backend(id)?;
                *ids_dirty = true;
                changes += 1;
            }
        }
        Ok(())
    })();
    result.map(|()| changes)
}

/// Full passes: frontends and backends in the maps that no plan wrote
/// (a lost state directory, a crash between a write and saving the ids)
/// go; entries that differ from what was written are rewritten.
fn observe<K: LbKernel>(k: &mut K, lb: &mut LbState) -> Result<usize> {
    let mut changes = 0;
    for (key, info) in k.services()? {
        let fk = frontend_of(&key);
        let want = lb.applied.frontends.get(&fk).and_then(|fp| {
            let set = (lb.applied.sets.get(&fp.set)?, *lb.ids.sets.get(&fp.set)?);
            let inside = (
                lb.applied.sets.get(&fp.inside_set)?,
                *lb.ids.sets.get(&fp.inside_set)?,
            );
            Some(frontend_value(
                fp,
                set,
                inside,
                *lb.ids.frontends.get(&fkey(&fk))?,
            ))
        });
        match want {
            None => {
                k.remove_service(&key)?;
                changes += 1;
            }
            Some(v) if v != info => {
                k.set_service(key, v)?;
                changes += 1;
            }
            Some(_) => {}
        }
    }
    let by_id: BTreeMap<u32, backend_info> = lb
        .applied
        .backends
        .iter()
        .filter_map(|(a, bp)| Some((*lb.ids.backends.get(&bkey(a))?, backend_value(a, bp))))
        .collect();
    for t in k.dsr_targets()? {
        if !lb.applied.dsr_targets.contains(&t) {
            k.remove_dsr_target(&t)?;
            changes += 1;
        }
    }
    for (id, info) in k.backends()? {
        let want = by_id.get(&id).copied();
        match want {
            None => {
                k.remove_backend(id)?;
                changes += 1;
            }
            Some(v) if v != info => {
                k.set_backend(id, v)?;
                changes += 1;
            }
            Some(_) => {}
        }
    }
    Ok(changes)
}

#[cfg(test)]
mod tests;
