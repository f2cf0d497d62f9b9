//! The agent's reconcile loop: applies the source's batches to the shared
//! desired state, shows each change to the phases, and runs a round of
//! passes whenever there is work, a retry is due, or the resync period
//! comes round. Rounds run on a blocking thread (map writes and netlink are
//! system calls); the store is only written between rounds.

use super::bgp::{BgpOptions, BgpPhase, BirdProcess};
use super::conntrack::{CtGcPhase, DatapathCt};
use super::endpoints::EndpointsPhase;
use super::lb::{DatapathLb, LbPhase};
use super::node::{KernelNode, LbNodeSettings, NodePhase};
use super::policy::PolicyPhase;
use super::routes::{NetlinkRoutes, RoutesPhase, TunnelOptions};
use super::socket_lb::{KernelSock, SocketLbPhase};
use super::{Backoff, LocalEvent, Phase, Round, Runner};
use crate::agent::Agent;
use crate::config::{Encapsulation, SourceKind};
use anyhow::{Context, Result};
use std::sync::Arc;
use strake_bgp::BirdLog;
use strake_lb::model::ModelOptions;
use strake_source::{Batch, BatchReceiver};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::time::Instant;

/// How Services are read, the same for every phase that reads them.
fn model_options(cfg: &crate::config::Config) -> ModelOptions {
    ModelOptions {
        default_table_size: cfg.maglev_table_size,
        // An API server has an endpoints controller; a directory has none,
        // so the agent plays it.
        endpoints_from_pods: cfg.source == SourceKind::Dir,
    }
}

/// The agent's phases, in the order a round runs them.
pub fn phases(agent: &Arc<Agent>) -> Vec<Box<dyn Phase>> {
    let cfg = &agent.cfg;
    vec![
        Box::new(NodePhase {
            kernel: KernelNode {
                nl: agent.nl.clone(),
                rt: agent.rt.clone(),
                dp: agent.dp.clone(),
                xdp: cfg.lb_xdp,
            },
            node: cfg.node_name.clone(),
            uplink: agent.uplink.clone(),
            north_south: agent.north_south.clone(),
            settings: LbNodeSettings {
                hash_seed: cfg.lb_hash_seed,
                snat_ports: cfg.snat_ports,
                masquerade_ports: cfg.masquerade.then_some(cfg.masquerade_ports),
                non_masquerade_cidrs: cfg.non_masquerade_cidrs.clone(),
            },
        }),
        Box::new(BgpPhase::new(
            BirdProcess {
                nl: agent.nl.clone(),
                rt: agent.rt.clone(),
                socket: cfg.bird_socket.clone(),
                config: cfg.bird_config_path(),
                binary: cfg.bird_bin.clone(),
            },
            &cfg.node_name,
            agent.uplink.clone(),
            BgpOptions {
                start: cfg.bird_start,
                socket: cfg.bird_socket.display().to_string(),
                // A BIRD the agent starts logs beside its configuration; a
                // sidecar's goes to its container's output.
                log: if cfg.bird_start {
                    BirdLog::File(cfg.bird_config_path().with_extension("log"))
                } else {
                    BirdLog::Stderr
                },
                lb: model_options(cfg),
            },
            agent.bgp.clone(),
        )),
        Box::new(RoutesPhase {
            table: NetlinkRoutes {
                nl: agent.nl.clone(),
                rt: agent.rt.clone(),
            },
            node: cfg.node_name.clone(),
            uplink: agent.uplink.clone(),
            tunnel: TunnelOptions {
                encapsulate: cfg.encapsulation == Encapsulation::CrossSubnet,
                vni: cfg.vxlan_vni,
                port: cfg.vxlan_port,
            },
            installed: agent.routes_installed.clone(),
            overhead: agent.tunnel_overhead.clone(),
        }),
        Box::new(LbPhase::new(
            DatapathLb(agent.dp.clone()),
            agent.lb.clone(),
            agent.health.clone(),
            &cfg.node_name,
            model_options(cfg),
            cfg.state_dir.join("lb-ids.json"),
        )),
        Box::new(PolicyPhase::new(
            agent.policy_kernel(),
            agent.policy.clone(),
            &cfg.node_name,
        )),
        Box::new(EndpointsPhase {
            kernel: agent.endpoint_kernel(),
            lock: agent.endpoints_lock.clone(),
        }),
        Box::new(SocketLbPhase::new(KernelSock {
            ipam: agent.ipam.clone(),
            dp: agent.dp.clone(),
        })),
        Box::new(CtGcPhase::new(
            DatapathCt(agent.dp.clone()),
            cfg.ct_timeouts(),
            cfg.ct_gc_min_interval,
            cfg.ct_gc_max_interval,
            agent.ct_gc.clone(),
        )),
    ]
}

fn absorb(agent: &Agent, runner: &mut Runner, batch: Batch) {
    let changes = {
        let mut st = agent.state.write().unwrap_or_else(|e| e.into_inner());
        st.apply_batch(batch)
    };
    let st = agent.state();
    for c in &changes {
        runner.note(c, &st);
    }
}

fn publish(agent: &Agent, runner: &Runner, round: &Round, before: &[super::PhaseState]) {
    let states = runner.states();
    for (s, b) in states.iter().zip(before) {
        if s.passes > b.passes {
            agent
                .metrics
                .observe_reconcile(s.name, s.last_duration.as_secs_f64());
        }
        if s.failures > b.failures {
            agent.metrics.error(s.name);
        }
    }
    let mut p = agent.progress.lock().unwrap();
    p.phases = states;
    p.applied_revision = round.applied_revision;
}

/// Runs until the source ends.
pub async fn run(
    agent: Arc<Agent>,
    mut runner: Runner,
    mut batches: BatchReceiver,
    mut local: UnboundedReceiver<LocalEvent>,
) -> Result<()> {
    let period = agent.cfg.resync;
    let mut resync = tokio::time::interval_at(Instant::now() + period, period);
    let health = agent.health.changed();
    let mut next_wake: Option<Instant> = None;
    loop {
        let wake = async {
            match next_wake {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            b = batches.recv() => {
                absorb(&agent, &mut runner, b.context("desired-state source ended")?);
                while let Ok(b) = batches.try_recv() {
                    absorb(&agent, &mut runner, b);
                }
            }
            Some(e) = local.recv() => runner.note_local(&e),
            _ = health.notified() => {
                let flips = agent.health.take_flips();
                if !flips.is_empty() {
                    runner.note_local(&LocalEvent::Health(flips));
                }
            }
            _ = wake => {}
            _ = resync.tick() => {
                runner.resync();
                // The slow path also counts the connection table (a map walk).
                let a = agent.clone();
                let n = tokio::task::spawn_blocking(move || a.dp().ct.entries()).await?;
                agent.ct_fill.store(n, std::sync::atomic::Ordering::Relaxed);
            }
        }
        while let Ok(e) = local.try_recv() {
            runner.note_local(&e);
        }
        if !agent.state().synced {
            continue; // nothing acts on a partial view
        }
        let before = runner.states();
        let a = agent.clone();
        let (r, round) = tokio::task::spawn_blocking(move || {
            let st = a.state();
            let round = runner.run(&st, st.revision, std::time::Instant::now());
            drop(st);
            (runner, round)
        })
        .await?;
        runner = r;
        publish(&agent, &runner, &round, &before);
        next_wake = round.next_wake.map(Instant::from_std);
    }
}

/// The runner for this agent's phases.
pub fn runner(agent: &Arc<Agent>) -> Runner {
    Runner::new(phases(agent), Backoff::default())
}
