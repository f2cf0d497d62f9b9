//! The NetworkPolicy maps, typed: address classes, verdicts, the generation,
//! drops per endpoint. The flows the policy let through are in the
//! connection table (conntrack.rs).

use crate::map_name;
use anyhow::{anyhow, Context, Result};
use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{Array, HashMap as BpfHashMap, MapData, MapError, PerCpuArray};
use aya::Ebpf;
use std::net::Ipv4Addr;
use strake_ebpf::shared::{
    counter_value, pol_config, policy_key_data, policy_verdict, STRAKE_MAP_CLUSTER_NODES,
    STRAKE_MAP_IPCACHE, STRAKE_MAP_POLICY, STRAKE_MAP_POL_CONFIG, STRAKE_MAP_POL_DROPS,
    STRAKE_MAX_ENDPOINT_IDS, STRAKE_POLICY_ANY_PROTO_BITS, STRAKE_POL_DROP_SLOTS,
};

pub struct PolicyMaps {
    ipcache: LpmTrie<MapData, u32, u32>,
    verdicts: LpmTrie<MapData, policy_key_data, policy_verdict>,
    config: Array<MapData, pol_config>,
    drops: PerCpuArray<MapData, counter_value>,
    cluster_nodes: BpfHashMap<MapData, u32, u32>,
}

pub(crate) fn take<T: TryFrom<aya::maps::Map, Error = MapError>>(
    ebpf: &mut Ebpf,
    name: &str,
) -> Result<T> {
    let m = ebpf
        .take_map(name)
        .ok_or_else(|| anyhow!("map {name} missing from the object"))?;
    T::try_from(m).with_context(|| format!("map {name} has an unexpected layout"))
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

/// A verdict entry in userspace terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VerdictKey {
    /// The policy identity (`endpoint_info.identity`) it applies to.
    pub identity: u32,
    pub class_id: u32,
    /// 0 ingress, 1 egress.
    pub direction: u8,
    /// `None`: any protocol and port.
    pub proto: Option<u8>,
    pub port: u16,
    pub port_bits: u8,
}

impl VerdictKey {
    fn lpm(&self) -> Key<policy_key_data> {
        let data = policy_key_data {
            identity: self.identity,
            class_id: self.class_id,
            direction: self.direction,
            proto: self.proto.unwrap_or(0),
            port: self.port.to_be(),
        };
        let bits = match self.proto {
            None => STRAKE_POLICY_ANY_PROTO_BITS,
            Some(_) => STRAKE_POLICY_ANY_PROTO_BITS + 8 + self.port_bits as u32,
        };
        Key::new(bits, data)
    }
}

impl PolicyMaps {
    pub(crate) fn take(ebpf: &mut Ebpf) -> Result<Self> {
        Ok(PolicyMaps {
            ipcache: take(ebpf, map_name(STRAKE_MAP_IPCACHE))?,
            verdicts: take(ebpf, map_name(STRAKE_MAP_POLICY))?,
            config: take(ebpf, map_name(STRAKE_MAP_POL_CONFIG))?,
            drops: take(ebpf, map_name(STRAKE_MAP_POL_DROPS))?,
            cluster_nodes: take(ebpf, map_name(STRAKE_MAP_CLUSTER_NODES))?,
        })
    }

    pub fn set_class(&mut self, net: Ipv4Addr, len: u8, class: u32) -> Result<()> {
        self.ipcache
            .insert(
                &Key::new(len as u32, u32::from_ne_bytes(net.octets())),
                class,
                0,
            )
            .with_context(|| format!("writing st_ipcache {net}/{len}"))
    }

    pub fn remove_class(&mut self, net: Ipv4Addr, len: u8) -> Result<()> {
        missing_ok(
            self.ipcache
                .remove(&Key::new(len as u32, u32::from_ne_bytes(net.octets()))),
        )
    }

    pub fn set_verdict(&mut self, k: &VerdictKey, rule_id: u32) -> Result<()> {
        self.verdicts
            .insert(&k.lpm(), policy_verdict { rule_id }, 0)
            .context("writing st_policy (raise STRAKE_MAX_POLICY if full)")
    }

    pub fn remove_verdict(&mut self, k: &VerdictKey) -> Result<()> {
        missing_ok(self.verdicts.remove(&k.lpm()))
    }

    /// Every class prefix in st_ipcache, with its class.
    pub fn classes(&self) -> Vec<((Ipv4Addr, u8), u32)> {
        self.ipcache
            .iter()
            .filter_map(|r| r.ok())
            .map(|(k, c)| {
                (
                    (Ipv4Addr::from(k.data().to_ne_bytes()), k.prefix_len() as u8),
                    c,
                )
            })
            .collect()
    }

    /// Every verdict in st_policy: its key and rule.
    pub fn verdicts(&self) -> Vec<(VerdictKey, u32)> {
        self.verdicts
            .iter()
            .filter_map(|r| r.ok())
            .map(|(k, v)| {
                let d = k.data();
                let bits = k.prefix_len();
                let key = VerdictKey {
                    identity: d.identity,
                    class_id: d.class_id,
                    direction: d.direction,
                    proto: (bits > STRAKE_POLICY_ANY_PROTO_BITS).then_some(d.proto),
                    port: u16::from_be(d.port),
                    port_bits: bits.saturating_sub(STRAKE_POLICY_ANY_PROTO_BITS + 8) as u8,
                };
                (key, v.rule_id)
            })
            .collect()
    }

    fn config(&self) -> pol_config {
        self.config.get(&0, 0).unwrap_or(pol_config {
            generation: 0,
            health_sport_min: 0,
            health_sport_max: 0,
        })
    }

    pub fn generation(&self) -> u32 {
        self.config().generation
    }

    /// Makes every remembered flow be judged again at its next packet.
    pub fn bump_generation(&mut self) -> Result<u32> {
        let mut c = self.config();
        c.generation = c.generation.wrapping_add(1).max(1);
        self.config.set(0, c, 0)?;
        Ok(c.generation)
    }

    /// The source ports the agents' health checks use, let into pods from
    /// cluster nodes whatever the policies (`None`: nothing is).
    pub fn set_health_check_ports(&mut self, ports: Option<(u16, u16)>) -> Result<()> {
        let mut c = self.config();
        (c.health_sport_min, c.health_sport_max) = ports.unwrap_or((0, 0));
        self.config.set(0, c, 0).context("writing st_pol_config")
    }

    /// Replaces the set of cluster nodes' addresses.
    pub fn set_cluster_nodes(&mut self, addrs: &[Ipv4Addr]) -> Result<usize> {
        let want: Vec<u32> = addrs.iter().map(|a| crate::lb::addr_key(*a)).collect();
        let have: Vec<u32> = self.cluster_nodes.keys().collect::<Result<_, _>>()?;
        let mut changes = 0;
        for k in have.iter().filter(|k| !want.contains(k)) {
            missing_ok(self.cluster_nodes.remove(k))?;
            changes += 1;
        }
        for k in want.iter().filter(|k| !have.contains(k)) {
            self.cluster_nodes
                .insert(k, 1, 0)
                .context("writing st_cluster_nodes")?;
            changes += 1;
        }
        Ok(changes)
    }

    /// Packets dropped by policy for an endpoint: (ingress, egress).
    pub fn drops(&self, endpoint_id: u32) -> (u64, u64) {
        let sum = |i: u32| {
            self.drops
                .get(&i, 0)
                .map(|v| v.iter().map(|c| c.packets).sum())
                .unwrap_or(0)
        };
        let base = (endpoint_id % STRAKE_MAX_ENDPOINT_IDS) * STRAKE_POL_DROP_SLOTS;
        (sum(base), sum(base + 1))
    }

    /// Zeroes an endpoint's drop counters (its id is being reused).
    pub fn reset_drops(&mut self, endpoint_id: u32) -> Result<()> {
        let n = aya::util::nr_cpus().map_err(|(_, e)| e)?;
        let base = (endpoint_id % STRAKE_MAX_ENDPOINT_IDS) * STRAKE_POL_DROP_SLOTS;
        for i in [base, base + 1] {
            self.drops.set(
                i,
                aya::maps::PerCpuValues::try_from(vec![counter_value::default(); n])?,
                0,
            )?;
        }
        Ok(())
    }
}
