//! The node itself: the uplink (the interface holding the node's
//! InternalIP, unless `--uplink` names one) with its programs, and the load
//! balancer's node-wide settings: the node's address (SNAT source, DSR outer
//! source) and every local address NodePorts answer on; and masquerade's:
//! its port range and the destinations never masqueraded (every node's pod
//! CIDR and InternalIP, and the configured non-masquerade CIDRs).

use super::{Outcome, Pass, Phase};
use anyhow::{Context, Result};
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use strake_datapath::shared::{
    lb_config, masq_config, STRAKE_LB_F_TC_NORTH_SOUTH, STRAKE_MASQ_SKIP_CONFIGURED,
    STRAKE_MASQ_SKIP_NODE, STRAKE_MASQ_SKIP_PODS,
};
use strake_datapath::Datapath;
use strake_netlink::Netlink;
use strake_source::{Kind, KindSet};

/// The kernel's side of this phase.
pub trait NodeKernel: Send {
    /// The interface holding `ip`, if any.
    fn interface_with(&self, ip: Ipv4Addr) -> Result<Option<String>>;
    /// Attaches the uplink programs (tc, and XDP when configured); says
    /// which serves north-south Services.
    fn attach_uplink(&self, ifname: &str) -> Result<NorthSouth>;
    /// The uplink's ifindex and the node's addresses (pod veths excluded).
    /// This node's addresses (every interface but loopback and pod veths);
    /// fails if the uplink vanished.
    fn addresses(&self, uplink: &str) -> Result<Vec<Ipv4Addr>>;
    fn configure_lb(&self, cfg: lb_config, local: &[Ipv4Addr]) -> Result<()>;
    /// Masquerade's settings and its never-masqueraded destinations
    /// (network, prefix, why); returns the number of changes.
    fn configure_masq(&self, cfg: masq_config, skip: &[(Ipv4Addr, u8, u32)]) -> Result<usize>;
}

/// Which program serves north-south Services (NodePort, LoadBalancer,
/// externalIPs) on the uplink.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NorthSouth {
    /// Native XDP (`xdp_lb`), before the kernel allocates an skb.
    Xdp,
    /// tc ingress (`from_wire`): `--lb-xdp=false`, or native XDP would not
    /// attach (a VLAN or bond uplink, a driver without XDP).
    Tc,
}

impl NorthSouth {
    pub fn name(self) -> &'static str {
        match self {
            NorthSouth::Xdp => "xdp",
            NorthSouth::Tc => "tc",
        }
    }
}

/// Settings of the load balancer that do not come from the cluster state.
#[derive(Debug, Clone)]
pub struct LbNodeSettings {
    pub hash_seed: u32,
    pub snat_ports: (u16, u16),
    /// Masquerade's ports; None: masquerade off.
    pub masquerade_ports: Option<(u16, u16)>,
    pub non_masquerade_cidrs: Vec<(Ipv4Addr, u8)>,
}

impl LbNodeSettings {
    /// The destinations never masqueraded, from the cluster's nodes.
    fn masq_skip(&self, state: &strake_source::ClusterState) -> Vec<(Ipv4Addr, u8, u32)> {
        let mut out = Vec::new();
        for n in state.node_names() {
            if let Some((net, len)) = state.node_pod_cidr(&n) {
                out.push((net, len, STRAKE_MASQ_SKIP_PODS));
            }
            if let Some(ip) = state.node_internal_ip(&n) {
                out.push((ip, 32, STRAKE_MASQ_SKIP_NODE));
            }
        }
        for (net, len) in &self.non_masquerade_cidrs {
            out.push((*net, *len, STRAKE_MASQ_SKIP_CONFIGURED));
        }
        // One reason per prefix: the first listed.
        let mut seen = std::collections::BTreeSet::new();
        out.retain(|(a, l, _)| seen.insert((*a, *l)));
        out
    }
}

pub struct NodePhase<K> {
    pub kernel: K,
    pub node: String,
    /// The uplink once attached, shared with the API (STATUS, healthz).
    pub uplink: Arc<Mutex<Option<String>>>,
    /// Which program serves north-south Services, once attached (STATUS).
    pub north_south: Arc<Mutex<Option<NorthSouth>>>,
    pub settings: LbNodeSettings,
}

impl<K: NodeKernel> Phase for NodePhase<K> {
    fn name(&self) -> &'static str {
        "node"
    }

    fn kinds(&self) -> KindSet {
        KindSet::of(&[Kind::Node])
    }

    fn reconcile(&mut self, pass: &Pass<'_>) -> Result<Outcome> {
        let internal_ip = pass.state.node_internal_ip(&self.node);
        let current = self.uplink.lock().unwrap().clone();
        let mut changes = 0;
        let uplink = match current {
            Some(u) => u,
            None => {
                let Some(ip) = internal_ip else {
                    return Ok(Outcome::Waiting {
                        after: Duration::from_secs(5),
                        reason: format!("Node {} has no InternalIP yet", self.node),
                    });
                };
                let Some(u) = self.kernel.interface_with(ip)? else {
                    return Ok(Outcome::Waiting {
                        after: Duration::from_secs(2),
                        reason: format!(
                            "no interface holds this node's InternalIP {ip} yet; uplink programs not attached"
                        ),
                    });
                };
                let ns = self
                    .kernel
                    .attach_uplink(&u)
                    .with_context(|| format!("attaching the uplink programs to {u}"))?;
                tracing::info!(uplink = %u, north_south = ns.name(), "uplink programs attached");
                *self.north_south.lock().unwrap() = Some(ns);
                *self.uplink.lock().unwrap() = Some(u.clone());
                changes += 1;
                u
            }
        };
        let local = self.kernel.addresses(&uplink)?;
        let node_addr = internal_ip
            .or_else(|| local.first().copied())
            .context("no address for this node: neither an InternalIP nor one on the uplink")?;
        let (lo, hi) = self.settings.snat_ports;
        self.kernel.configure_lb(
            lb_config {
                node_addr: strake_datapath::lb::addr_key(node_addr),
                hash_seed: self.settings.hash_seed,
                snat_port_min: lo,
                snat_port_max: hi,
                flags: if *self.north_south.lock().unwrap() == Some(NorthSouth::Tc) {
                    STRAKE_LB_F_TC_NORTH_SOUTH
                } else {
                    0
                },
            },
            &local,
        )?;
        let (enabled, (mlo, mhi)) = match self.settings.masquerade_ports {
            Some(r) => (1, r),
            None => (0, (0, 0)),
        };
        changes += self.kernel.configure_masq(
            masq_config {
                enabled,
                port_min: mlo,
                port_max: mhi,
            },
            &self.settings.masq_skip(pass.state),
        )?;
        Ok(Outcome::applied(changes + 1))
    }
}

/// The node over rtnetlink and the data plane.
pub struct KernelNode {
    pub nl: Netlink,
    pub rt: tokio::runtime::Handle,
    pub dp: Arc<Mutex<Datapath>>,
    pub xdp: bool,
}

impl NodeKernel for KernelNode {
    fn interface_with(&self, ip: Ipv4Addr) -> Result<Option<String>> {
        self.rt.block_on(async {
            for l in self.nl.links().await? {
                if self
                    .nl
                    .addresses(l.index)
                    .await?
                    .iter()
                    .any(|(a, _)| *a == ip)
                {
                    return Ok(Some(l.name));
                }
            }
            Ok(None)
        })
    }

    fn attach_uplink(&self, ifname: &str) -> Result<NorthSouth> {
        attach_uplink(&self.dp, ifname, self.xdp)
    }

    fn addresses(&self, uplink: &str) -> Result<Vec<Ipv4Addr>> {
        self.rt.block_on(async {
            self.nl
                .link_by_name(uplink)
                .await?
                .with_context(|| format!("uplink {uplink} vanished"))?;
            let mut local = Vec::new();
            for l in self.nl.links().await? {
                if l.name == "lo" || l.name.starts_with("strk") {
                    continue;
                }
                local.extend(
                    self.nl
                        .addresses(l.index)
                        .await?
                        .into_iter()
                        .map(|(a, _)| a),
                );
            }
            Ok(local)
        })
    }

    fn configure_lb(&self, cfg: lb_config, local: &[Ipv4Addr]) -> Result<()> {
        let mut dp = self.dp.lock().unwrap_or_else(|e| e.into_inner());
        dp.lb.set_config(cfg)?;
        dp.lb.set_node_addrs(local)
    }

    fn configure_masq(&self, cfg: masq_config, skip: &[(Ipv4Addr, u8, u32)]) -> Result<usize> {
        let mut dp = self.dp.lock().unwrap_or_else(|e| e.into_inner());
        // The destinations first: never a moment masquerading one of them.
        let changes = dp.lb.set_masq_skip(skip)?;
        dp.lb.set_masq_config(cfg)?;
        Ok(changes)
    }
}

/// Attaches the uplink programs: tc, and native XDP when `xdp`. Where XDP
/// will not attach (VLAN and bond uplinks, drivers without XDP), tc ingress
/// serves north-south Services instead: a node with no outside Service
/// traffic would be worse than a slower one. Without `xdp`, an XDP program
/// an earlier run left on the uplink is taken off.
pub fn attach_uplink(dp: &Mutex<Datapath>, ifname: &str, xdp: bool) -> Result<NorthSouth> {
    let mut dp = dp.lock().unwrap_or_else(|e| e.into_inner());
    dp.attach_uplink(ifname)?;
    if !xdp {
        dp.detach_xdp(ifname)?;
        return Ok(NorthSouth::Tc);
    }
    match dp.attach_xdp(ifname) {
        Ok(()) => Ok(NorthSouth::Xdp),
        Err(e) => {
            tracing::warn!(
                uplink = ifname,
                error = format!("{e:#}"),
                "native XDP would not attach; north-south Services go through tc ingress on the uplink"
            );
            Ok(NorthSouth::Tc)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type LbSettings = Option<(lb_config, Vec<Ipv4Addr>)>;
    type MasqSettings = Option<(masq_config, Vec<(Ipv4Addr, u8, u32)>)>;

    #[derive(Default, Clone)]
    struct FakeNode {
        interfaces: Arc<Mutex<Vec<(String, Ipv4Addr)>>>,
        attached: Arc<Mutex<Vec<String>>>,
        config: Arc<Mutex<LbSettings>>,
        masq: Arc<Mutex<MasqSettings>>,
    }

    impl NodeKernel for FakeNode {
        fn interface_with(&self, ip: Ipv4Addr) -> Result<Option<String>> {
            let i = self.interfaces.lock().unwrap();
            Ok(i.iter().find(|(_, a)| *a == ip).map(|(n, _)| n.clone()))
        }
        fn attach_uplink(&self, ifname: &str) -> Result<NorthSouth> {
            self.attached.lock().unwrap().push(ifname.into());
            Ok(NorthSouth::Tc)
        }
        fn addresses(&self, _uplink: &str) -> Result<Vec<Ipv4Addr>> {
            Ok(self
                .interfaces
                .lock()
                .unwrap()
                .iter()
                .map(|x| x.1)
                .collect())
        }
        fn configure_lb(&self, cfg: lb_config, local: &[Ipv4Addr]) -> Result<()> {
            *self.config.lock().unwrap() = Some((cfg, local.to_vec()));
            Ok(())
        }
        fn configure_masq(&self, cfg: masq_config, skip: &[(Ipv4Addr, u8, u32)]) -> Result<usize> {
            *self.masq.lock().unwrap() = Some((cfg, skip.to_vec()));
            Ok(0)
        }
    }

    #[test]
    fn waits_for_the_uplink_then_attaches_and_configures_the_load_balancer() {
        let k = FakeNode::default();
        let mut phase = NodePhase {
            kernel: k.clone(),
            node: "a".into(),
            uplink: Default::default(),
            north_south: Default::default(),
            settings: LbNodeSettings {
                hash_seed: 1,
                snat_ports: (20000, 29999),
                masquerade_ports: Some((61440, 65535)),
                non_masquerade_cidrs: vec![("192.0.2.0".parse().unwrap(), 24)],
            },
        };
        let st = strake_source::dir::state_from_yaml(
            "apiVersion: v1\nkind: Node\nmetadata: {name: a}\nstatus: {addresses: [{type: InternalIP, address: 10.0.0.1}]}\n---\napiVersion: v1\nkind: Node\nmetadata: {name: b}\nspec: {podCIDR: 10.244.2.0/24}\nstatus: {addresses: [{type: InternalIP, address: 10.0.0.2}]}\n",
        )
        .unwrap();
        let pass = Pass {
            state: &st,
            full: true,
            revision: 1,
        };
        match phase.reconcile(&pass).unwrap() {
            Outcome::Waiting { reason, .. } => assert!(reason.contains("10.0.0.1"), "{reason}"),
            o => panic!("{o:?}"),
        }
        k.interfaces
            .lock()
            .unwrap()
            .push(("eth0".into(), "10.0.0.1".parse().unwrap()));
        assert!(matches!(
            phase.reconcile(&pass).unwrap(),
            Outcome::Applied { .. }
        ));
        assert_eq!(*k.attached.lock().unwrap(), vec!["eth0".to_string()]);
        let (cfg, local) = k.config.lock().unwrap().clone().unwrap();
        assert_eq!(cfg.snat_port_min, 20000);
        assert_eq!(
            cfg.flags, STRAKE_LB_F_TC_NORTH_SOUTH,
            "tc serves north-south where XDP does not"
        );
        assert_eq!(*phase.north_south.lock().unwrap(), Some(NorthSouth::Tc));
        assert_eq!(local, vec!["10.0.0.1".parse::<Ipv4Addr>().unwrap()]);
        // Masquerade: on, its ports, and never to the nodes, their pods or
        // the configured ranges.
        let (m, skip) = k.masq.lock().unwrap().clone().unwrap();
        assert_eq!((m.enabled, m.port_min, m.port_max), (1, 61440, 65535));
        let ip = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        assert_eq!(
            skip,
            vec![
                (ip("10.0.0.1"), 32, STRAKE_MASQ_SKIP_NODE),
                (ip("10.244.2.0"), 24, STRAKE_MASQ_SKIP_PODS),
                (ip("10.0.0.2"), 32, STRAKE_MASQ_SKIP_NODE),
                (ip("192.0.2.0"), 24, STRAKE_MASQ_SKIP_CONFIGURED),
            ]
        );
        // Attached once.
        phase.reconcile(&pass).unwrap();
        assert_eq!(k.attached.lock().unwrap().len(), 1);
    }
}
