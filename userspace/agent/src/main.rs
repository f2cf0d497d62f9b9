//! strake-agent: one per node. Loads and pins the eBPF data plane, serves the
//! local API for the CNI plugin and the CLI, programs routes to other nodes,
//! and keeps all of it in line with the desired state.
//!
//! It is fail-static: killing it (even with SIGKILL) leaves programs, maps,
//! routes and endpoints in place, so traffic keeps flowing; a new agent adopts
//! them without a gap.

use anyhow::{Context, Result};
use clap::Parser;
use std::process::ExitCode;
use strake_agent::agent::Agent;
use strake_agent::config::{Config, LogFormat, SourceKind};
use strake_agent::{api, metrics, reconcile};
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
    dp.trust
        .set_config(cfg.health_check_mark, cfg.uplink_rpf.datapath())?;
    if cfg.socket_lb {
        let root = match cfg.cgroup_root.as_str() {
            "auto" => strake_datapath::sock::cgroup2_mount()?,
            p => std::path::PathBuf::from(p),
        };
        dp.attach_cgroup(&root).with_context(|| {
            format!(
                "socket load balancing at cgroup {} (--cgroup-root; --socket-lb=false turns it off)",
                root.display()
            )
        })?;
        tracing::info!(cgroup = %root.display(), "socket load balancing attached");
    }
    if let Some(eph) = ephemeral_ports() {
        for r in cfg.ephemeral_overlaps(eph) {
            tracing::warn!(range = %r, ephemeral = ?eph, "a port range of the agent overlaps the kernel's ephemeral ports (net.ipv4.ip_local_port_range): local connections may be handed one of its ports; move it, or reserve it in net.ipv4.ip_local_reserved_ports");
        }
    }
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

    let (local_tx, local_rx) = tokio::sync::mpsc::unbounded_channel();
    let agent = Agent::new(
        cfg.clone(),
        dp,
        ipam,
        nl,
        metrics::Metrics::default(),
        local_tx,
    );
    if cfg.uplink != "auto" {
        let (a, name, xdp) = (agent.clone(), cfg.uplink.clone(), cfg.lb_xdp);
        let ns =
            tokio::task::spawn_blocking(move || reconcile::node::attach_uplink(&a.dp, &name, xdp))
                .await??;
        tracing::info!(uplink = %cfg.uplink, north_south = ns.name(), "uplink programs attached");
        *agent.north_south.lock().unwrap() = Some(ns);
        agent.set_uplink(Some(cfg.uplink.clone()));
    }
    // Endpoints first: they need no desired state, and the sooner the
    // records are back in the kernel the better.
    {
        let a = agent.clone();
        tokio::task::spawn_blocking(move || a.restore_endpoints()).await??;
    }

    let api = tokio::spawn(api::serve(agent.clone()));
    let http = tokio::spawn(metrics::serve(agent.clone()));
    tokio::spawn(strake_agent::hc_nodeport::run(agent.clone()));
    let runner = reconcile::driver::runner(&agent);
    let reconciler = tokio::spawn(reconcile::driver::run(agent.clone(), runner, rx, local_rx));

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

fn ephemeral_ports() -> Option<(u16, u16)> {
    let s = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    let mut it = s.split_whitespace().map(|p| p.parse().ok());
    Some((it.next()??, it.next()??))
}
