//! What the agent reports about itself: liveness for STATUS, and the full
//! picture for `strake status`.

use crate::agent::Agent;
use crate::config::SourceKind;
use crate::reconcile::node::NorthSouth;
use crate::reconcile::PhaseState;
use strake_api::{
    AgentStatus, ApiError, CounterView, ErrorKind, MapView, PhaseView, Pong, ProgramView, SyncPoint,
};

/// Phases as the API shows them, `now` being the time of the answer.
pub fn phase_views(states: &[PhaseState], now: std::time::Instant) -> Vec<PhaseView> {
    states
        .iter()
        .map(|s| PhaseView {
            name: s.name.to_string(),
            applied_revision: s.applied_revision,
            failures: s.failures,
            last_error: s.last_error.clone(),
            waiting: s.waiting.clone(),
            next_run_ms: s
                .next_run
                .map(|t| t.saturating_duration_since(now).as_millis() as u64),
            last_duration_ms: s.last_duration.as_secs_f64() * 1000.0,
            last_changes: s.last_changes,
            passes: s.passes,
        })
        .collect()
}

impl Agent {
    pub fn pong(&self) -> Pong {
        let datapath_ok = self.uplink().is_some();
        let (can_add, reason) = match self.pod_block() {
            Err(e) => (false, Some(e.message)),
            Ok(b) => {
                let ipam = self.ipam();
                // The block may have just been learnt: judge against it.
                let free = ipam.block() != Some(b) || ipam.has_free();
                if free {
                    (true, None)
                } else {
                    (false, Some(format!("no free address left in {b}")))
                }
            }
        };
        Pong {
            node: self.node().to_string(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            can_add,
            reason,
            datapath_ok,
        }
    }

    pub fn status(&self) -> Result<AgentStatus, ApiError> {
        let internal = |e: anyhow::Error| ApiError::new(ErrorKind::Internal, format!("{e:#}"));
        // Lock order: policy, ipam, dp.
        let (policy_entries, policy_classes) = {
            let p = self.policy.lock().unwrap();
            (p.entries(), p.classes())
        };
        let (pod_cidr, synced, source_revision, source_position, source_errors) = {
            let st = self.state();
            (
                st.nodes
                    .get(self.node())
                    .and_then(|n| n.spec.as_ref()?.pod_cidr.clone()),
                st.synced,
                st.revision,
                st.position,
                st.errors.clone(),
            )
        };
        let (applied_revision, phases) = {
            let p = self.progress.lock().unwrap();
            (
                p.applied_revision,
                phase_views(&p.phases, std::time::Instant::now()),
            )
        };
        let endpoints = self.ipam().len();
        // Before the data plane's lock: it reads the state and netlink.
        let routing = self.routing_view();
        let north_south = *self.north_south.lock().unwrap();
        let dp = self.dp();
        let links = dp.pinned_endpoint_links().len();
        let programs = dp
            .programs()
            .map_err(internal)?
            .into_iter()
            .map(|p| ProgramView {
                attachments: match p.name.as_str() {
                    "from_wire" | "to_wire" => usize::from(self.uplink().is_some()),
                    "xdp_lb" => usize::from(north_south == Some(NorthSouth::Xdp)),
                    n if n.starts_with("sock_") => 1,
                    _ => links,
                },
                name: p.name,
                attach_point: p.attach_point,
                id: p.id,
                tag: p.tag,
            })
            .collect();
        let maps = dp
            .map_fill()
            .map_err(internal)?
            .into_iter()
            .map(|m| MapView {
                name: m.name,
                entries: m.entries,
                capacity: m.capacity,
            })
            .collect();
        let counters = dp
            .counters()
            .map_err(internal)?
            .into_iter()
            .map(|c| CounterView {
                name: c.name,
                packets: c.packets,
                bytes: c.bytes,
            })
            .collect();
        Ok(AgentStatus {
            node: self.node().to_string(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            uptime_seconds: self.started.elapsed().as_secs(),
            pod_cidr,
            uplink: self.uplink(),
            north_south: north_south.map(|n| n.name().to_string()),
            socket_lb: dp.sock.cgroup().map(|p| p.display().to_string()),
            bpffs_root: dp.bpffs_root().display().to_string(),
            synced,
            source_revision,
            endpoints,
            routes: self.routes(),
            programs,
            maps,
            counters,
            source_errors,
            applied_revision,
            source_position,
            phases,
            policy_generation: dp.policy.generation(),
            policy_entries,
            policy_classes,
            routing,
        })
    }
}

impl Agent {
    /// Where the source's origin stands now: a directory source stamps its
    /// directories (the agent has applied them when its position is that
    /// stamp); an API server's watches deliver in order, so what the agent
    /// has received is the point (nothing newer can be asked for without a
    /// quorum read of every kind).
    pub fn sync_point(&self) -> SyncPoint {
        match self.cfg.source {
            SourceKind::Dir => SyncPoint {
                position: strake_source::dir::content_stamp(&self.cfg.source_dirs),
                exact: true,
            },
            SourceKind::Kube => SyncPoint {
                position: self.state().position,
                exact: false,
            },
        }
    }
}
