//! The connection table, st_ct (ebpf/include/conntrack.h): service, reply
//! and policy entries in one LRU map, told apart by their key's kind.

use crate::batch::{bpf_batch, BatchAttr, BPF_MAP_DELETE_BATCH, BPF_MAP_LOOKUP_BATCH};
use anyhow::{anyhow, Context, Result};
use aya::maps::{HashMap as BpfHashMap, MapData, MapError};
use std::collections::{BTreeMap, HashMap};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::{Duration, Instant};
use strake_ebpf::shared::{
    ct_entry, ct_key, STRAKE_CT_F_MASQ, STRAKE_CT_F_SNAT, STRAKE_CT_POLICY, STRAKE_CT_REPLY,
    STRAKE_CT_SERVICE, STRAKE_CT_TCP_ESTABLISHED, STRAKE_CT_TCP_FIN_FWD, STRAKE_CT_TCP_FIN_REV,
    STRAKE_CT_TCP_RST, STRAKE_MAP_CT,
};

pub struct Conntrack {
    map: BpfHashMap<MapData, ct_key, ct_entry>,
    /// st_ct's fd, for batch operations (aya has none).
    fd: OwnedFd,
    /// max_entries of st_ct.
    pub capacity: u32,
}

fn missing_ok(r: Result<(), MapError>) -> Result<()> {
    match r {
        Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
        Err(MapError::SyscallError(e)) if e.io_error.kind() == std::io::ErrorKind::NotFound => {
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

/// Whether `kind` is a policy entry (STRAKE_CT_POLICY + direction).
pub fn is_policy(kind: u8) -> bool {
    kind as u32 >= STRAKE_CT_POLICY
}

impl Conntrack {
    pub(crate) fn take(ebpf: &mut aya::Ebpf, capacity: u32) -> Result<Self> {
        let name = crate::map_name(STRAKE_MAP_CT);
        let fd = match ebpf.map(name) {
            Some(aya::maps::Map::LruHashMap(d)) => d.fd().as_fd().try_clone_to_owned()?,
            _ => {
                return Err(anyhow!(
                    "map {name} missing from the object, or not an LRU hash"
                ))
            }
        };
        Ok(Conntrack {
            map: crate::policy::take(ebpf, name)?,
            fd,
            capacity,
        })
    }

    fn count(&self, pred: impl Fn(&ct_key) -> bool) -> u64 {
        self.map
            .keys()
            .filter_map(|k| k.ok())
            .filter(|k| pred(k))
            .count() as u64
    }

    /// Entries of every kind (walks the table: call from a slow path).
    pub fn entries(&self) -> u64 {
        self.count(|_| true)
    }

    /// Flows pinned to a backend (service entries).
    pub fn service_entries(&self) -> u64 {
        self.count(|k| k.kind as u32 == STRAKE_CT_SERVICE)
    }

    /// Reply entries: what turns replies of translated flows back.
    pub fn reply_entries(&self) -> u64 {
        self.count(|k| k.kind as u32 == STRAKE_CT_REPLY)
    }

    /// Removes one entry (gone already is fine).
    pub fn remove(&mut self, k: &ct_key) -> Result<()> {
        missing_ok(self.map.remove(k)).context("removing an entry from st_ct")
    }

    /// Forgets an endpoint's policy flows (its id is being reused).
    pub fn forget_policy_flows(&mut self, endpoint_id: u32) -> Result<usize> {
        let keys: Vec<ct_key> = self
            .map
            .keys()
            .filter_map(|k| k.ok())
            .filter(|k| is_policy(k.kind) && k.owner == endpoint_id)
            .collect();
        for k in &keys {
            missing_ok(self.map.remove(k)).context("removing a policy flow from st_ct")?;
        }
        Ok(keys.len())
    }
}

/// How long a flow may be idle before the sweep removes it, by what its
/// packets showed (seconds). Defaults: Cilium's (and near Linux
/// conntrack's): a handshake that never completes 60 s, an established TCP
/// connection 6 h, a closing one (reset, or a FIN each way) 10 s, UDP and
/// everything else 60 s.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Timeouts {
    pub syn: u32,
    pub established: u32,
    pub closing: u32,
    pub other: u32,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            syn: 60,
            established: 21600,
            closing: 10,
            other: 60,
        }
    }
}

/// What a flow's packets showed, for its timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FlowState {
    Syn,
    Established,
    Closing,
    Other,
}

const TCP_EST: u8 = STRAKE_CT_TCP_ESTABLISHED as u8;
const TCP_FIN_FWD: u8 = STRAKE_CT_TCP_FIN_FWD as u8;
const TCP_FIN_REV: u8 = STRAKE_CT_TCP_FIN_REV as u8;
const TCP_RST: u8 = STRAKE_CT_TCP_RST as u8;

/// The state of a flow from the TCP flags seen. `both_ways`: the flags come
/// from both directions (a service entry with its reply entry, or a policy
/// entry, which sees both); then closing needs a FIN each way, as in
/// Cilium. An entry that sees one direction only (direct return) closes on
/// its FIN.
pub fn flow_state(proto: u8, tcp: u8, both_ways: bool) -> FlowState {
    if proto != libc::IPPROTO_TCP as u8 {
        return FlowState::Other;
    }
    let fins = tcp & (TCP_FIN_FWD | TCP_FIN_REV);
    let closing = tcp & TCP_RST != 0
        || (both_ways && fins == TCP_FIN_FWD | TCP_FIN_REV)
        || (!both_ways && fins != 0);
    if closing {
        FlowState::Closing
    } else if tcp & TCP_EST != 0 {
        FlowState::Established
    } else {
        FlowState::Syn
    }
}

impl Timeouts {
    pub fn of(&self, s: FlowState) -> u32 {
        match s {
            FlowState::Syn => self.syn,
            FlowState::Established => self.established,
            FlowState::Closing => self.closing,
            FlowState::Other => self.other,
        }
    }
}

/// CLOCK_MONOTONIC in seconds: the clock of the entries' `last_seen`
/// (bpf_ktime_get_coarse_ns).
pub fn monotonic_secs() -> u32 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u32
}

/// One sweep's account.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct SweepReport {
    /// Entries left in the table.
    pub entries: u64,
    /// Entries removed as expired (a flow's service and reply entries
    /// count two).
    pub expired: u64,
    /// Entries found expired that saw a packet before they could be
    /// removed: kept.
    pub revived: u64,
    /// Reply entries holding a SNAT port, by backend id.
    pub snat_ports: BTreeMap<u32, u64>,
    /// Reply entries holding a masquerade port.
    pub masq_ports: u64,
    pub duration: Duration,
}

/// The pairing of a service entry with its reply entry: the reply entry
/// remembers the flow as the client sent it.
type FlowId = (u32, u16, u32, u16, u8, u32);

fn service_flow_id(k: &ct_key, v: &ct_entry) -> FlowId {
    let f = &k.flow;
    (f.saddr, f.sport, f.daddr, f.dport, f.proto, v.backend_id)
}

fn reply_flow_id(k: &ct_key, v: &ct_entry) -> FlowId {
    (
        v.client,
        v.cport,
        v.vip,
        v.vport,
        k.flow.proto,
        v.backend_id,
    )
}

/// For each entry of `all`, its flow's other entry: a service entry's
/// reply entry, and back (None for policy entries and lone entries).
pub fn partners(all: &[(ct_key, ct_entry)]) -> Vec<Option<usize>> {
    let mut replies: HashMap<FlowId, usize> = HashMap::new();
    for (i, (k, v)) in all.iter().enumerate() {
        if k.kind as u32 == STRAKE_CT_REPLY {
            replies.insert(reply_flow_id(k, v), i);
        }
    }
    let mut out = vec![None; all.len()];
    for (i, (k, v)) in all.iter().enumerate() {
        if k.kind as u32 == STRAKE_CT_SERVICE {
            if let Some(&j) = replies.get(&service_flow_id(k, v)) {
                out[i] = Some(j);
                out[j] = Some(i);
            }
        }
    }
    out
}

/// The state and last packet time of entry `i`'s flow: with its partner's
/// flags and time when it has one (both directions seen), its own
/// otherwise. A policy entry sees both directions itself.
pub fn unit_state(
    all: &[(ct_key, ct_entry)],
    partner: &[Option<usize>],
    i: usize,
) -> (FlowState, u32) {
    let (k, v) = &all[i];
    match partner[i] {
        Some(j) => {
            let r = &all[j].1;
            (
                flow_state(k.flow.proto, v.tcp | r.tcp, true),
                v.last_seen.max(r.last_seen),
            )
        }
        None => (
            flow_state(k.flow.proto, v.tcp, is_policy(k.kind)),
            v.last_seen,
        ),
    }
}

/// Entries per batch system call.
const BATCH: usize = 4096;

impl Conntrack {
    /// Every entry, read with BPF_MAP_LOOKUP_BATCH (4096 a call). Entries
    /// inserted or removed meanwhile may or may not be in it.
    pub fn dump(&self) -> Result<Vec<(ct_key, ct_entry)>> {
        let mut out = Vec::new();
        let mut keys = vec![ct_key::default(); BATCH];
        let mut values = vec![ct_entry::default(); BATCH];
        let (mut token_in, mut token_out) = (0u64, 0u64);
        let mut first = true;
        loop {
            let mut attr = BatchAttr {
                in_batch: if first {
                    0
                } else {
                    &mut token_in as *mut u64 as u64
                },
                out_batch: &mut token_out as *mut u64 as u64,
                keys: keys.as_mut_ptr() as u64,
                values: values.as_mut_ptr() as u64,
                count: BATCH as u32,
                map_fd: self.fd.as_raw_fd() as u32,
                ..Default::default()
            };
            let r = bpf_batch(BPF_MAP_LOOKUP_BATCH, &mut attr);
            let n = attr.count as usize;
            out.extend(keys[..n].iter().copied().zip(values[..n].iter().copied()));
            match r {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => break,
                Err(e) => return Err(anyhow::Error::new(e).context("reading st_ct in batches")),
            }
            token_in = token_out;
            first = false;
        }
        Ok(out)
    }

    /// Removes `keys` with BPF_MAP_DELETE_BATCH; one already gone is
    /// skipped. Returns how many were removed.
    fn delete(&mut self, keys: &[ct_key]) -> Result<u64> {
        let mut done = 0u64;
        let mut rest = keys;
        while !rest.is_empty() {
            let chunk = &rest[..rest.len().min(BATCH)];
            let mut attr = BatchAttr {
                keys: chunk.as_ptr() as u64,
                count: chunk.len() as u32,
                map_fd: self.fd.as_raw_fd() as u32,
                ..Default::default()
            };
            let r = bpf_batch(BPF_MAP_DELETE_BATCH, &mut attr);
            let n = attr.count as usize;
            done += n as u64;
            match r {
                Ok(()) => rest = &rest[chunk.len()..],
                // The batch stops at a missing key: skip it, go on.
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => rest = &rest[n + 1..],
                Err(e) => return Err(anyhow::Error::new(e).context("removing entries from st_ct")),
            }
        }
        Ok(done)
    }

    /// Removes the entries under `keys`: service and policy entries
    /// first, then reply entries, which give their SNAT ports back (so a
    /// port is never free while a service entry still names it). One
    /// already gone is skipped; returns how many were removed.
    pub fn remove_flows(&mut self, keys: &[ct_key]) -> Result<u64> {
        let (replies, first): (Vec<ct_key>, Vec<ct_key>) =
            keys.iter().partition(|k| k.kind as u32 == STRAKE_CT_REPLY);
        Ok(self.delete(&first)? + self.delete(&replies)?)
    }

    /// Whether the entry under `k` still shows `last_seen` (or is gone).
    fn unchanged(&self, k: &ct_key, last_seen: u32) -> bool {
        match self.map.get(k, 0) {
            Ok(v) => v.last_seen == last_seen,
            Err(_) => true,
        }
    }

    /// Removes every flow idle past its timeout at `now` (monotonic
    /// seconds). A flow's service and reply entries are judged together,
    /// on the later of their times and the flags of both, and removed
    /// together: the service entry first, then the reply entry, which gives
    /// its SNAT port back. Never a live flow: an entry is read again just
    /// before it goes and kept if a packet touched it since the walk (the
    /// race Cilium #46298 lost flows to).
    pub fn sweep(&mut self, now: u32, t: &Timeouts) -> Result<SweepReport> {
        let t0 = Instant::now();
        let all = self.dump()?;
        let partner = partners(&all);
        let expired = |last: u32, s: FlowState| now > last && now - last > t.of(s);
        // Units judged and removed whole: a service entry with its reply
        // entry, or one entry alone (a policy entry; a reply without its
        // service entry: direct return at the backend's node, or a service
        // entry the LRU took).
        let mut units: Vec<Vec<usize>> = Vec::new();
        for i in 0..all.len() {
            let (k, _) = &all[i];
            if k.kind as u32 == STRAKE_CT_REPLY && partner[i].is_some() {
                continue; // judged with its service entry
            }
            let (s, last) = unit_state(&all, &partner, i);
            if expired(last, s) {
                units.push(std::iter::once(i).chain(partner[i]).collect());
            }
        }
        let mut report = SweepReport::default();
        let mut gone = vec![false; all.len()];
        let mut doomed = Vec::new();
        for unit in &units {
            if unit
                .iter()
                .any(|&i| !self.unchanged(&all[i].0, all[i].1.last_seen))
            {
                report.revived += unit.len() as u64;
                continue;
            }
            for &i in unit {
                gone[i] = true;
                doomed.push(all[i].0);
            }
        }
        report.expired = self.remove_flows(&doomed)?;
        for (i, (k, v)) in all.iter().enumerate() {
            if gone[i] {
                continue;
            }
            report.entries += 1;
            if k.kind as u32 == STRAKE_CT_REPLY && v.flags & STRAKE_CT_F_MASQ != 0 {
                report.masq_ports += 1;
            } else if k.kind as u32 == STRAKE_CT_REPLY && v.flags & STRAKE_CT_F_SNAT != 0 {
                *report.snat_ports.entry(v.backend_id).or_default() += 1;
            }
        }
        report.duration = t0.elapsed();
        Ok(report)
    }
}
