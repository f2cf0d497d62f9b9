//! The load balancer as people and scripts see it (`strake lb list`).

use crate::agent::Agent;
use crate::reconcile::lb::{bkey, fkey};
use std::sync::atomic::Ordering;
use strake_api::{
    ApiError, LbBackendView, LbCountersView, LbFrontendView, LbServiceView, LbSocketCountersView,
    LbStatus,
};
use strake_datapath::lb::LbCounters;
use strake_lb::model::{ExternalMode, FrontendKind, Scheduler};
use strake_lb::plan::FrontendKey;

fn counters(c: LbCounters) -> LbCountersView {
    LbCountersView {
        packets: c.packets,
        bytes: c.bytes,
        new_flows: c.new_flows,
    }
}

impl Agent {
    pub fn lb_status(&self) -> Result<LbStatus, ApiError> {
        let health = self.health.snapshot();
        let lb = self.lb.lock().unwrap();
        let dp = self.dp();
        let mut services = Vec::new();
        for sp in lb.planner.service_ports() {
            let frontends = sp
                .frontends
                .iter()
                .map(|f| {
                    let key = FrontendKey {
                        addr: f.addr,
                        port: f.port,
                        proto: f.proto,
                    };
                    let id = lb.ids.frontends.get(&fkey(&key)).copied();
                    let plan = lb.applied.frontends.get(&key);
                    LbFrontendView {
                        kind: match f.kind {
                            FrontendKind::ClusterIp => "ClusterIP",
                            FrontendKind::NodePort => "NodePort",
                            FrontendKind::LoadBalancer => "LoadBalancer",
                            FrontendKind::ExternalIp => "ExternalIP",
                        }
                        .into(),
                        address: f.addr,
                        port: f.port,
                        id,
                        scope: if plan.is_some_and(|p| p.local) {
                            "local"
                        } else {
                            "cluster"
                        }
                        .into(),
                        counters: counters(
                            id.map(|i| dp.lb.frontend_counters(i)).unwrap_or_default(),
                        ),
                        socket: {
                            let c = id.map(|i| dp.sock.frontend_counters(i)).unwrap_or_default();
                            LbSocketCountersView {
                                connects: c.connects,
                                datagrams: c.datagrams,
                                refused: c.refused,
                            }
                        },
                        rejected: id.map(|i| dp.lb.frontend_rejected(i)).unwrap_or_default(),
                    }
                })
                .collect();
            let backends = sp
                .backends
                .iter()
                .map(|b| {
                    let id = lb.ids.backends.get(&bkey(&b.addr)).copied();
                    let h = health.get(&b.addr);
                    let bp = lb.applied.backends.get(&b.addr);
                    LbBackendView {
                        address: b.addr.ip,
                        port: b.addr.port,
                        node: b.node.clone(),
                        pod: b.pod.as_ref().map(|p| p.to_string()),
                        weight: b.weight,
                        ready: b.ready,
                        terminating: b.terminating,
                        healthy: h.is_none_or(|h| h.healthy),
                        health_error: h.and_then(|h| h.last_error.clone()),
                        active: bp.is_some_and(|p| p.active),
                        local: bp.is_some_and(|p| p.local),
                        id,
                        counters: counters(
                            id.map(|i| dp.lb.backend_counters(i)).unwrap_or_default(),
                        ),
                    }
                })
                .collect();
            services.push(LbServiceView {
                service: sp.name(),
                protocol: strake_lb::model::proto_name(sp.proto).into(),
                scheduler: match sp.scheduler {
                    Scheduler::Maglev => "maglev",
                    Scheduler::Random => "random",
                }
                .into(),
                // The cluster-wide set's table (a Local set's may be smaller).
                table_size: lb
                    .applied
                    .sets
                    .get(&format!("{}/cluster", sp.name()))
                    .or_else(|| lb.applied.sets.get(&format!("{}/local", sp.name())))
                    .map_or(0, |s| s.table_size),
                affinity_timeout: sp.affinity_timeout,
                external_mode: match sp.external_mode {
                    ExternalMode::Snat => "snat",
                    ExternalMode::Dsr => "dsr",
                }
                .into(),
                external_traffic_policy: if sp.external_local {
                    "Local"
                } else {
                    "Cluster"
                }
                .into(),
                internal_traffic_policy: if sp.internal_local {
                    "Local"
                } else {
                    "Cluster"
                }
                .into(),
                frontends,
                backends,
            });
        }
        Ok(LbStatus {
            node: self.node().to_string(),
            services,
            ct_entries: self.ct_fill.load(Ordering::Relaxed),
            ct_capacity: dp.ct.capacity as u64,
            rnat_entries: 0,
            problems: lb.problems(),
        })
    }
}
