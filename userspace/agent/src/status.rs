//! What the agent reports about itself: liveness for STATUS, and the full
//! picture for `strake status`.

use crate::agent::Agent;
use strake_api::{AgentStatus, ApiError, CounterView, ErrorKind, MapView, Pong, ProgramView};

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
            (p.applied.entries.len(), p.applied.classes.len())
        };
        let st = self.state.borrow().clone();
        let endpoints = self.ipam().len();
        let dp = self.dp();
        let links = dp.pinned_endpoint_links().len();
        let programs = dp
            .programs()
            .map_err(internal)?
            .into_iter()
            .map(|p| ProgramView {
                attachments: match p.name.as_str() {
                    "from_wire" => usize::from(self.uplink().is_some()),
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
            pod_cidr: st
                .nodes
                .get(self.node())
                .and_then(|n| n.spec.as_ref()?.pod_cidr.clone()),
            uplink: self.uplink(),
            bpffs_root: dp.bpffs_root().display().to_string(),
            synced: st.synced,
            source_revision: st.revision,
            endpoints,
            routes: self.routes(),
            programs,
            maps,
            counters,
            source_errors: st.errors.clone(),
            applied_revision: self
                .applied_revision
                .load(std::sync::atomic::Ordering::Acquire),
            source_content_stamp: st.content_stamp,
            policy_generation: dp.policy.generation(),
            policy_entries,
            policy_classes,
        })
    }
}
