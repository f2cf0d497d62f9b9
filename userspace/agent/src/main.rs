//! strake-agent: one per node. Loads and pins the eBPF data plane, serves the
//! local API for the CNI plugin and the CLI, programs routes to other nodes,
//! and keeps all of it in line with the desired state.
//!
//! It is fail-static: killing it (even with SIGKILL) leaves programs, maps,
//! routes and endpoints in place, so traffic keeps flowing; a new agent adopts
//! them without a gap.

mod agent;
mod api;
mod config;
mod endpoints;
mod lb_sync;
mod lb_view;
mod metrics;
mod policy_sync;
mod routes;
mod status;

use agent::Agent;
use anyhow::{Context, Result};
use clap::Parser;
use config::{Config, LogFormat, SourceKind};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;
use strake_datapath::{Datapath, DatapathConfig};
use strake_ipam::Ipam;
use strake_netlink::{netns, Netlink};
use strake_source::dir::DirSource;

fn main() -> ExitCode {
    let cfg = Config::parse();
    if let Err(e) = cfg.validate() {
        eprintln!("strake-agent: {e}");
        return ExitCode::from(2);
    }
    if let Err(e) = init_logging(&cfg) {
        eprintln!("strake-agent: {e:#}");
        return ExitCode::FAILURE;
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the runtime");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cfg)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "strake-agent stopped");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(cfg: &Config) -> Result<()> {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("STRAKE_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match (&cfg.log_file, cfg.log_format) {
        (Some(p), fmt) => {
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .with_context(|| format!("opening --log-file {}", p.display()))?;
            let b = builder
                .with_writer(std::sync::Mutex::new(f))
                .with_ansi(false);
            if fmt == LogFormat::Json {
                b.json().init()
            } else {
                b.init()
            }
        }
        (None, LogFormat::Json) => builder.json().init(),
        (None, LogFormat::Text) => builder.init(),
    }
    Ok(())
}

async fn run(cfg: Config) -> Result<()> {
    tracing::info!(node = %cfg.node_name, bpffs = %cfg.bpffs_root.display(), state = %cfg.state_dir.display(), "strake-agent starting");
    // The fast path's FIB lookups and the slow path both need forwarding.
    netns::sysctl("net/ipv4/ip_forward", "1")?;
    netns::sysctl("net/ipv4/conf/all/forwarding", "1")?;

    let mut dp = Datapath::load(&DatapathConfig {
        bpffs_root: cfg.bpffs_root.clone(),
        max_endpoints: cfg.max_endpoints,
        ct_size: cfg.ct_size,
        lb_max_slots: cfg.lb_max_slots,
    })?;
    dp.policy
        .set_health_check_ports(Some(cfg.health_check_ports))?;
    std::fs::create_dir_all(&cfg.state_dir)
        .with_context(|| format!("creating {}", cfg.state_dir.display()))?;
    let ipam = Ipam::open(cfg.state_dir.join("endpoints.json"))?;
    let nl = Netlink::connect()?;

    let (tx, rx) = strake_source::channel();
    match cfg.source {
        SourceKind::Dir => {
            if cfg.source_dirs.is_empty() {
                anyhow::bail!("--source dir needs at least one --source-dir");
            }
            let src = DirSource::new(cfg.source_dirs.clone());
            tokio::spawn(async move {
                if let Err(e) = src.run(tx).await {
                    tracing::error!(error = format!("{e:#}"), "desired-state source stopped");
                }
            });
        }
        SourceKind::Kube => {
            let src = strake_source::kube::KubeSource::infer().await?;
            tokio::spawn(async move {
                if let Err(e) = src.run(tx).await {
                    tracing::error!(error = format!("{e:#}"), "desired-state source stopped");
                }
            });
        }
    }

    let agent = Agent::new(cfg.clone(), dp, ipam, nl, rx, metrics::Metrics::default());
    if cfg.uplink != "auto" {
        attach_uplink(&agent, cfg.uplink.clone()).await?;
    }
    // Endpoints first: they need no desired state, and the sooner the
    // records are back in the kernel the better.
    {
        let a = agent.clone();
        tokio::task::spawn_blocking(move || a.restore_endpoints()).await??;
    }

    let api = tokio::spawn(api::serve(agent.clone()));
    let http = tokio::spawn(metrics::serve(agent.clone()));
    let reconciler = tokio::spawn(reconcile_loop(agent.clone()));

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = api => r?.context("API server")?,
        r = http => r?.context("metrics server")?,
        r = reconciler => r?.context("reconciler")?,
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("exiting; the data plane keeps forwarding with its last state");
    Ok(())
}

async fn attach_uplink(agent: &Arc<Agent>, ifname: String) -> Result<()> {
    let a = agent.clone();
    let name = ifname.clone();
    let xdp = agent.cfg.lb_xdp;
    tokio::task::spawn_blocking(move || -> Result<()> {
        let mut dp = a.dp();
        dp.attach_uplink(&name)?;
        if xdp {
            dp.attach_xdp(&name)?;
        }
        Ok(())
    })
    .await??;
    tracing::info!(uplink = %ifname, xdp, "uplink programs attached");
    agent.set_uplink(Some(ifname));
    Ok(())
}

/// Node-wide load-balancer settings: the node's address (SNAT source, DSR
/// outer source), the uplink, and every local address NodePorts answer on.
async fn configure_lb_node(agent: &Arc<Agent>, st: &strake_source::ClusterState) -> Result<()> {
    let Some(uplink) = agent.uplink() else {
        return Ok(());
    };
    let link = agent
        .nl
        .link_by_name(&uplink)
        .await?
        .context("uplink vanished")?;
    let mut local = Vec::new();
    for l in agent.nl.links().await? {
        if l.name == "lo" || l.name.starts_with("strk") {
            continue;
        }
        local.extend(
            agent
                .nl
                .addresses(l.index)
                .await?
                .into_iter()
                .map(|(a, _)| a),
        );
    }
    let node_addr = st
        .node_internal_ip(agent.node())
        .or_else(|| local.first().copied())
        .context("no address for this node")?;
    lb_sync::configure_node(agent, node_addr, link.index, &local)
}

/// The interface holding the node's InternalIP.
async fn find_uplink(agent: &Agent, st: &strake_source::ClusterState) -> Result<Option<String>> {
    let Some(ip) = st.node_internal_ip(agent.node()) else {
        return Ok(None);
    };
    for l in agent.nl.links().await? {
        if agent
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
}

/// Level-based: whenever desired state changes (and every `--resync`), derive
/// what the kernel should hold and apply the difference.
async fn reconcile_loop(agent: Arc<Agent>) -> Result<()> {
    let mut rx = agent.state.clone();
    rx.wait_for(|s| s.synced)
        .await
        .context("desired-state source ended")?;
    loop {
        let st = rx.borrow_and_update().clone();
        let t0 = Instant::now();
        if agent.uplink().is_none() {
            match find_uplink(&agent, &st).await {
                Ok(Some(u)) => {
                    if let Err(e) = attach_uplink(&agent, u).await {
                        agent.metrics.error("uplink");
                        tracing::error!(
                            error = format!("{e:#}"),
                            "attaching the uplink program failed"
                        );
                    }
                }
                Ok(None) => {
                    tracing::warn!(node = %agent.node(), "no interface holds this node's InternalIP yet; uplink program not attached")
                }
                Err(e) => {
                    tracing::error!(error = format!("{e:#}"), "looking for the uplink failed")
                }
            }
        }
        if let Err(e) = configure_lb_node(&agent, &st).await {
            agent.metrics.error("lb");
            tracing::error!(
                error = format!("{e:#}"),
                "configuring the load balancer failed; will retry"
            );
        }
        let t_lb = Instant::now();
        let (a, s2) = (agent.clone(), st.clone());
        match tokio::task::spawn_blocking(move || lb_sync::reconcile(&a, &s2)).await? {
            Ok((changes, frontends)) if changes > 0 => {
                tracing::info!(
                    changes,
                    frontends,
                    revision = st.revision,
                    elapsed_ms = t_lb.elapsed().as_millis() as u64,
                    "load balancer reconciled"
                )
            }
            Ok(_) => {}
            Err(e) => {
                agent.metrics.error("lb");
                tracing::error!(
                    error = format!("{e:#}"),
                    "reconciling the load balancer failed; will retry"
                );
            }
        }
        agent
            .metrics
            .observe_reconcile("lb", t_lb.elapsed().as_secs_f64());
        let t_pol = Instant::now();
        let (a, s3) = (agent.clone(), st.clone());
        if let Err(e) = tokio::task::spawn_blocking(move || policy_sync::sync(&a, &s3)).await? {
            agent.metrics.error("policy");
            tracing::error!(
                error = format!("{e:#}"),
                "applying network policy failed; will retry"
            );
        }
        agent
            .metrics
            .observe_reconcile("policy", t_pol.elapsed().as_secs_f64());
        match routes::reconcile_routes(&agent, &st).await {
            Ok((added, removed)) if added + removed > 0 => {
                tracing::info!(
                    added,
                    removed,
                    revision = st.revision,
                    "node routes reconciled"
                )
            }
            Ok(_) => {}
            Err(e) => {
                agent.metrics.error("routes");
                tracing::error!(
                    error = format!("{e:#}"),
                    "reconciling node routes failed; will retry"
                );
            }
        }
        agent
            .metrics
            .observe_reconcile("routes", t0.elapsed().as_secs_f64());
        agent
            .applied_revision
            .store(st.revision, std::sync::atomic::Ordering::Release);

        let health = agent.health.changed();
        tokio::select! {
            r = rx.changed() => r.context("desired-state source ended")?,
            // A backend's health flipped: sets change, state does not.
            _ = health.notified() => {}
            _ = tokio::time::sleep(agent.cfg.resync) => {
                // The slow path also counts the connection table (a map walk).
                let a = agent.clone();
                let n = tokio::task::spawn_blocking(move || a.dp().lb.ct_entries()).await?;
                agent.ct_fill.store(n, std::sync::atomic::Ordering::Relaxed);
            }
        }
    }
}
