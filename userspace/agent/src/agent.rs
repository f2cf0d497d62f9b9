//! The agent's shared state: one per process, behind an `Arc`.

use crate::config::Config;
use crate::metrics::Metrics;
use anyhow::Result;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;
use strake_api::PodRef;
use strake_datapath::Datapath;
use strake_ipam::Ipam;
use strake_netlink::Netlink;
use strake_source::StateReceiver;

/// What the agent remembers of an endpoint, saved with its address.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EndpointRecord {
    pub pod: Option<PodRef>,
    pub netns: Option<String>,
    pub host_ifname: String,
    pub endpoint_id: u32,
    /// Set once the CNI plugin reported the veth in place (Attach).
    pub pod_mac: Option<[u8; 6]>,
    pub created_unix: u64,
}

pub struct Agent {
    pub cfg: Config,
    pub started: Instant,
    pub rt: tokio::runtime::Handle,
    pub nl: Netlink,
    pub state: StateReceiver,
    pub metrics: Metrics,
    dp: Mutex<Datapath>,
    ipam: Mutex<Ipam<EndpointRecord>>,
    uplink: Mutex<Option<String>>,
    pub routes_installed: AtomicUsize,
    pub health: strake_lb::health::HealthChecker,
    pub lb: Mutex<crate::lb_sync::LbState>,
    /// Connection-table fill, counted on the slow path (a map walk).
    pub ct_fill: std::sync::atomic::AtomicU64,
    pub policy: Mutex<crate::policy_sync::PolicyState>,
    /// The desired-state revision the data plane fully reflects.
    pub applied_revision: std::sync::atomic::AtomicU64,
}

impl Agent {
    pub fn new(
        cfg: Config,
        dp: Datapath,
        ipam: Ipam<EndpointRecord>,
        nl: Netlink,
        state: StateReceiver,
        metrics: Metrics,
    ) -> Arc<Self> {
        let health = strake_lb::health::HealthChecker::new(Some(cfg.health_check_ports));
        Arc::new(Agent {
            cfg,
            started: Instant::now(),
            rt: tokio::runtime::Handle::current(),
            nl,
            state,
            metrics,
            dp: Mutex::new(dp),
            ipam: Mutex::new(ipam),
            uplink: Mutex::new(None),
            routes_installed: AtomicUsize::new(0),
            health,
            lb: Mutex::new(Default::default()),
            ct_fill: Default::default(),
            policy: Mutex::new(Default::default()),
            applied_revision: Default::default(),
        })
    }

    pub fn node(&self) -> &str {
        &self.cfg.node_name
    }

    /// The data plane. Never held across an `.await`.
    pub fn dp(&self) -> MutexGuard<'_, Datapath> {
        self.dp.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The allocation table. Never held across an `.await`; lock order is
    /// ipam before dp.
    pub fn ipam(&self) -> MutexGuard<'_, Ipam<EndpointRecord>> {
        self.ipam.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn uplink(&self) -> Option<String> {
        self.uplink.lock().unwrap().clone()
    }

    pub fn set_uplink(&self, name: Option<String>) {
        *self.uplink.lock().unwrap() = name;
    }

    pub fn routes(&self) -> usize {
        self.routes_installed.load(Ordering::Relaxed)
    }

    /// Runs a netlink future to completion from synchronous code (API
    /// handlers run on blocking threads).
    pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    /// Pod MTU: the flag, or the uplink's.
    pub fn pod_mtu(&self) -> Result<u32> {
        if self.cfg.pod_mtu != 0 {
            return Ok(self.cfg.pod_mtu);
        }
        let mtu = match self.uplink() {
            Some(u) => self.block_on(self.nl.link_by_name(&u))?.map(|l| l.mtu),
            None => None,
        };
        Ok(mtu.unwrap_or(1500))
    }
}
