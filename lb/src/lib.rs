//! Service load balancing: what the data plane should do for every Service
//! (frontends, backend sets, scheduling), derived from Services and
//! EndpointSlices (or Pods, in standalone mode), plus Maglev tables and
//! backend health checks.
//!
//! - [`model`]: cluster-wide service ports, frontends and backends;
//! - [`plan`]: one node's view (locality, health) as kernel-shaped state,
//!   kept Service by Service;
//! - [`touch`]: which Services an object change touches;
//! - [`maglev`]: consistent-hashing tables with minimal disruption;
//! - [`health`]: active TCP/HTTP checks with thresholds.

pub mod health;
pub mod maglev;
pub mod model;
pub mod plan;
pub mod touch;
