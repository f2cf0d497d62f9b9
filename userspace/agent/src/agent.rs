//! The agent's shared state: one per process, behind an `Arc`. The
//! reconciler owns the phases; what the API and metrics read of them (the
//! load balancer's and the policy's records, the phases' standing) is
//! shared here.

use crate::config::Config;
use crate::metrics::Metrics;
use crate::reconcile::lb::LbState;
use crate::reconcile::policy::PolicyState;
use crate::reconcile::{LocalEvent, PhaseState};
use anyhow::Result;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard};
use std::time::Instant;
use strake_api::PodRef;
use strake_datapath::Datapath;
use strake_ipam::Ipam;
use strake_netlink::Netlink;
use strake_source::ClusterState;

/// What the agent remembers of an endpoint, saved with its address.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct EndpointRecord {
    pub pod: Option<PodRef>,
    pub netns: Option<String>,
    pub host_ifname: String,
    pub endpoint_id: u32,
    /// Set once the CNI plugin reported the veth in place (Attach).
    pub pod_mac: Option<[u8; 6]>,
    pub created_unix: u64,
}

/// The phases' standing, as the reconciler last published it.
#[derive(Debug, Clone, Default)]
pub struct Progress {
    pub phases: Vec<PhaseState>,
    /// The revision every phase has applied.
    pub applied_revision: u64,
}

pub struct Agent {
    pub cfg: Config,
    pub started: Instant,
    pub rt: tokio::runtime::Handle,
    pub nl: Netlink,
    pub metrics: Metrics,
    pub dp: Arc<Mutex<Datapath>>,
    pub ipam: Arc<Mutex<Ipam<EndpointRecord>>>,
    pub uplink: Arc<Mutex<Option<String>>>,
    /// Which program serves north-south Services on the uplink.
    pub north_south: Arc<Mutex<Option<crate::reconcile::node::NorthSouth>>>,
    pub routes_installed: Arc<AtomicUsize>,
    /// Bytes pod interfaces leave for encapsulation (set by the routes phase).
    pub tunnel_overhead: Arc<AtomicU32>,
    /// BGP as the bgp phase last saw it.
    pub bgp: Arc<Mutex<strake_api::BgpStatus>>,
    pub health: Arc<strake_lb::health::HealthChecker>,
    pub lb: Arc<Mutex<LbState>>,
    pub policy: Arc<Mutex<PolicyState>>,
    /// Desired state, as the reconciler keeps it.
    pub state: Arc<RwLock<ClusterState>>,
    pub progress: Mutex<Progress>,
    /// Connection-table fill, counted on the slow path (a map walk).
    pub ct_fill: AtomicU64,
    /// What the connection-table sweeps found (reconcile/conntrack.rs).
    pub ct_gc: Arc<Mutex<crate::reconcile::conntrack::CtGcStats>>,
    /// Held by CNI operations and the endpoints phase.
    pub endpoints_lock: Arc<Mutex<()>>,
    /// Node events for the reconciler (endpoints added or removed).
    pub local_events: tokio::sync::mpsc::UnboundedSender<LocalEvent>,
    /// What the healthCheckNodePort listeners answered.
    pub hc_stats: Arc<crate::hc_nodeport::HcStats>,
}

impl Agent {
    pub fn new(
        cfg: Config,
        dp: Datapath,
        ipam: Ipam<EndpointRecord>,
        nl: Netlink,
        metrics: Metrics,
        local_events: tokio::sync::mpsc::UnboundedSender<LocalEvent>,
    ) -> Arc<Self> {
        let health = strake_lb::health::HealthChecker::new(
            Some(cfg.health_check_ports),
            cfg.health_check_mark,
        );
        Arc::new(Agent {
            cfg,
            started: Instant::now(),
            rt: tokio::runtime::Handle::current(),
            nl,
            metrics,
            dp: Arc::new(Mutex::new(dp)),
            ipam: Arc::new(Mutex::new(ipam)),
            uplink: Default::default(),
            north_south: Default::default(),
            routes_installed: Default::default(),
            tunnel_overhead: Default::default(),
            bgp: Default::default(),
            health: Arc::new(health),
            lb: Default::default(),
            policy: Default::default(),
            state: Default::default(),
            progress: Default::default(),
            ct_fill: Default::default(),
            ct_gc: Default::default(),
            endpoints_lock: Default::default(),
            local_events,
            hc_stats: Default::default(),
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

    /// Desired state. Held briefly: the reconciler writes it between passes.
    pub fn state(&self) -> RwLockReadGuard<'_, ClusterState> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
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

    pub fn applied_revision(&self) -> u64 {
        self.progress.lock().unwrap().applied_revision
    }

    /// Runs a netlink future to completion from synchronous code (API
    /// handlers run on blocking threads).
    pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    /// Pod MTU: the flag, or the uplink's less what encapsulation takes
    /// (when some node is reached through the VXLAN fallback).
    pub fn pod_mtu(&self) -> Result<u32> {
        if self.cfg.pod_mtu != 0 {
            return Ok(self.cfg.pod_mtu);
        }
        let mtu = match self.uplink() {
            Some(u) => self.block_on(self.nl.link_by_name(&u))?.map(|l| l.mtu),
            None => None,
        };
        let overhead = self.tunnel_overhead.load(Ordering::Relaxed);
        Ok(mtu.unwrap_or(1500).saturating_sub(overhead))
    }
}
