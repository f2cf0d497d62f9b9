//! The connection table, st_ct (ebpf/include/conntrack.h): service, reply
//! and policy entries in one LRU map, told apart by their key's kind.

use anyhow::{Context, Result};
use aya::maps::{HashMap as BpfHashMap, MapData, MapError};
use strake_ebpf::shared::{ct_entry, ct_key, STRAKE_CT_POLICY, STRAKE_CT_REPLY, STRAKE_CT_SERVICE};

pub struct Conntrack {
    map: BpfHashMap<MapData, ct_key, ct_entry>,
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
        Ok(Conntrack {
            map: crate::policy::take(ebpf, crate::map_name(strake_ebpf::shared::STRAKE_MAP_CT))?,
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
