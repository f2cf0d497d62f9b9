//! The trust maps, typed: how the programs tell the agent's health checks
//! and the uplink's legitimate sources from forgeries, and which direct
//! return they accept (docs/threat-model.md).

use crate::map_name;
use crate::policy::take;
use anyhow::{Context, Result};
use aya::maps::{Array, HashMap as BpfHashMap, MapData, MapError};
use aya::Ebpf;
use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use strake_ebpf::shared::{
    dsr_target_key, flow_key, trust_config, STRAKE_MAP_DSR_TARGETS, STRAKE_MAP_HC_FLOWS,
    STRAKE_MAP_HC_PROBES, STRAKE_MAP_TRUST, STRAKE_RPF_LOOSE, STRAKE_RPF_OFF, STRAKE_RPF_STRICT,
};

/// The reverse-path check of sources arriving on the uplink for local pods.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rpf {
    /// The route back leaves by the interface the packet came in on.
    Strict,
    /// Some route back exists (asymmetric routing, several uplinks).
    Loose,
    Off,
}

impl Rpf {
    fn raw(self) -> u32 {
        match self {
            Rpf::Strict => STRAKE_RPF_STRICT,
            Rpf::Loose => STRAKE_RPF_LOOSE,
            Rpf::Off => STRAKE_RPF_OFF,
        }
    }
}

/// A (frontend, local backend) pair direct-return IPIP may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DsrTarget {
    /// `0.0.0.0` for a NodePort (any cluster node's address).
    pub vip: Ipv4Addr,
    pub vport: u16,
    pub proto: u8,
    pub backend: Ipv4Addr,
    pub bport: u16,
}

impl DsrTarget {
    fn key(&self) -> dsr_target_key {
        dsr_target_key {
            vip: crate::lb::addr_key(self.vip),
            backend: crate::lb::addr_key(self.backend),
            vport: self.vport.to_be(),
            bport: self.bport.to_be(),
            proto: self.proto,
            pad: [0; 3],
        }
    }

    fn of(k: &dsr_target_key) -> Self {
        DsrTarget {
            vip: crate::lb::addr_of(k.vip),
            vport: u16::from_be(k.vport),
            proto: k.proto,
            backend: crate::lb::addr_of(k.backend),
            bport: u16::from_be(k.bport),
        }
    }
}

pub struct TrustMaps {
    config: Array<MapData, trust_config>,
    dsr_targets: BpfHashMap<MapData, dsr_target_key, u32>,
    hc_flows: BpfHashMap<MapData, flow_key, u64>,
    hc_probes: BpfHashMap<MapData, flow_key, u64>,
}

impl TrustMaps {
    pub(crate) fn take(ebpf: &mut Ebpf) -> Result<Self> {
        Ok(TrustMaps {
            config: take(ebpf, map_name(STRAKE_MAP_TRUST))?,
            dsr_targets: take(ebpf, map_name(STRAKE_MAP_DSR_TARGETS))?,
            hc_flows: take(ebpf, map_name(STRAKE_MAP_HC_FLOWS))?,
            hc_probes: take(ebpf, map_name(STRAKE_MAP_HC_PROBES))?,
        })
    }

    /// `hc_mark`: the SO_MARK of the agent's health-check sockets (0: no
    /// health-check encapsulation, so remote checks of isolated pods fail).
    pub fn set_config(&mut self, hc_mark: u32, rpf: Rpf) -> Result<()> {
        self.config
            .set(
                0,
                trust_config {
                    hc_mark,
                    rpf: rpf.raw(),
                },
                0,
            )
            .context("writing st_trust")
    }

    pub fn dsr_targets(&self) -> Result<BTreeSet<DsrTarget>> {
        let mut out = BTreeSet::new();
        for k in self.dsr_targets.keys() {
            out.insert(DsrTarget::of(&k.context("reading st_dsr_targets")?));
        }
        Ok(out)
    }

    /// Makes the map hold exactly `want` (value: the frontend id); returns
    /// the number of entries written or removed.
    pub fn set_dsr_targets(&mut self, want: &[(DsrTarget, u32)]) -> Result<usize> {
        let have = self.dsr_targets()?;
        let keep: BTreeSet<DsrTarget> = want.iter().map(|(t, _)| *t).collect();
        let mut changes = 0;
        for t in have.difference(&keep) {
            self.remove_dsr_target(t)?;
            changes += 1;
        }
        for (t, frontend_id) in want {
            if self.dsr_targets.get(&t.key(), 0).ok() != Some(*frontend_id) {
                self.add_dsr_target(t, *frontend_id)?;
                changes += 1;
            }
        }
        Ok(changes)
    }

    pub fn add_dsr_target(&mut self, t: &DsrTarget, frontend_id: u32) -> Result<()> {
        self.dsr_targets.insert(t.key(), frontend_id, 0).context(
            "writing st_dsr_targets (full? it holds one entry per DSR frontend and local backend)",
        )
    }

    pub fn remove_dsr_target(&mut self, t: &DsrTarget) -> Result<()> {
        match self.dsr_targets.remove(&t.key()) {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(e).context("removing from st_dsr_targets"),
        }
    }

    /// Health checks in flight: (unwrapped for local pods, sent by this node).
    pub fn health_check_flows(&self) -> (usize, usize) {
        (self.hc_flows.keys().count(), self.hc_probes.keys().count())
    }
}
