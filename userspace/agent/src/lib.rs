//! strake-agent: one per node. Loads and pins the eBPF data plane, serves the
//! local API for the CNI plugin and the CLI, and keeps routes, the load
//! balancer, network policy and endpoints in line with the desired state
//! through one reconcile contract (docs/reconcile.md).
//!
//! It is fail-static: killing it (even with SIGKILL) leaves programs, maps,
//! routes and endpoints in place, so traffic keeps flowing; a new agent adopts
//! them without a gap.

pub mod agent;
pub mod api;
pub mod bgp_view;
pub mod config;
pub mod ct_view;
pub mod endpoints;
pub mod hc_nodeport;
pub mod lb_view;
pub mod metrics;
pub mod policy_view;
pub mod reconcile;
pub mod status;
