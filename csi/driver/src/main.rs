//! `strake-csi`: the CSI driver binary (serve) and its orphan sweeper (`sweep`).
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use strake_ceph::Credentials;
use strake_csi::attach::AttacherKind;
use strake_csi::cephconn::Connections;
use strake_csi::controller::{ControllerConfig, ControllerService};
use strake_csi::identity::IdentityService;
use strake_csi::ids::Naming;
use strake_csi::node::{NodeConfig, NodeService};
use strake_csi::params::parse_size;
use strake_csi::sweep::{sweep, SweepConfig};
use strake_csi::{metrics, server};

#[derive(Parser)]
#[command(
    name = "strake-csi",
    version,
    about = "CSI driver for Ceph RBD (controller, node, identity) and its orphan sweeper"
)]
#[command(args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    serve: Serve,
}

#[derive(Args, Clone)]
struct Common {
    /// ceph.conf naming the monitors (and, for the driver's own identity, a keyring).
    #[arg(long, env = "CEPH_CONF", default_value = "/etc/ceph/ceph.conf", global = true)]
    ceph_conf: PathBuf,
    /// cephx user for calls that carry no secrets (ListVolumes, GetCapacity, sweep);
    /// without --ceph-key-file the ceph.conf keyring is used.
    #[arg(long, env = "STRAKE_CSI_CEPH_USER", global = true)]
    ceph_user: Option<String>,
    /// File holding the base64 cephx key of --ceph-user.
    #[arg(long, env = "STRAKE_CSI_CEPH_KEY_FILE", global = true)]
    ceph_key_file: Option<PathBuf>,
    /// Bound for connecting to Ceph and for each Ceph operation, in seconds.
    #[arg(long, default_value_t = 30, global = true)]
    ceph_timeout_secs: u64,
    /// Journal instance: the omap object is csi.strake.<instance-id>. Drivers sharing a
    /// pool must differ here and in --image-prefix.
    #[arg(long, default_value = "default", global = true)]
    instance_id: String,
    /// Prefix of every image name this driver creates (<prefix>vol-<uuid>, <prefix>snap-<uuid>).
    #[arg(long, default_value = "csi-strake-", global = true)]
    image_prefix: String,
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    Controller,
    Node,
    All,
}

#[derive(Args, Clone)]
struct Serve {
    /// Which CSI services to serve (Identity is always served).
    #[arg(long, value_enum, default_value_t = Mode::All)]
    mode: Mode,
    /// CSI endpoint (unix socket).
    #[arg(long, env = "CSI_ENDPOINT", default_value = "unix:///csi/csi.sock")]
    endpoint: String,
    /// Node id reported by NodeGetInfo (the Kubernetes node name).
    #[arg(long, env = "NODE_ID")]
    node_id: Option<String>,
    /// Node plugin state (attachments, fuse mountpoints). Must survive plugin restarts.
    #[arg(long, default_value = "/var/lib/strake-csi")]
    state_dir: PathBuf,
    /// Attach path when a volume does not name one: auto picks krbd, then rbd-nbd, then fuse-loop.
    #[arg(long, default_value = "auto")]
    attacher: String,
    /// Where to serve Prometheus /metrics and /healthz; empty disables.
    #[arg(long, default_value = "127.0.0.1:9680")]
    metrics_addr: String,
    /// Pools ListVolumes/ListSnapshots scan and GetCapacity defaults to (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "rbd")]
    list_pools: Vec<String>,
    /// Size of a volume whose request gives no capacity (bytes; K/M/G/T/Ki/Mi/Gi/Ti suffixes).
    #[arg(long, default_value = "1Gi", value_parser = parse_size)]
    default_size: u64,
    /// Largest volume CreateVolume/ControllerExpandVolume accept.
    #[arg(long, default_value = "64Ti", value_parser = parse_size)]
    max_volume_size: u64,
    /// Clones deeper than this in their parent chain are flattened before the RPC returns.
    #[arg(long, default_value_t = 8)]
    max_clone_depth: u32,
    /// How long an RPC waits for another RPC on the same volume/snapshot before ABORTED.
    #[arg(long, default_value_t = 120)]
    lock_timeout_secs: u64,
    /// Controller: run `sweep --delete` over --list-pools every N seconds (0 = never),
    /// removing only provable orphans (see `strake-csi sweep --help`).
    #[arg(long, default_value_t = 0)]
    sweep_interval_secs: u64,
    /// Age after which an unfinished reservation with no image counts as abandoned.
    #[arg(long, default_value_t = 600)]
    sweep_grace_secs: u64,
    /// Filesystem when a mount capability names none.
    #[arg(long, default_value = "ext4")]
    default_fs: String,
    /// fuse-loop attach path: open the loop device with O_DIRECT on the FUSE file
    /// (true: no double caching; false: page-cache readahead, faster sequential reads).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    fuse_loop_direct_io: bool,
    /// fuse-loop attach path: the FUSE server, strake-rbd-fuse (ours) or rbd-fuse
    /// (Debian's, for comparison only).
    #[arg(long, default_value = "strake-rbd-fuse", value_parser = ["strake-rbd-fuse", "rbd-fuse"])]
    fuse_helper: String,
    /// strake-rbd-fuse transport: auto (io_uring when the kernel offers it), io-uring, classic.
    #[arg(long, default_value = "auto", value_parser = ["auto", "io-uring", "classic"])]
    fuse_transport: String,
    /// strake-rbd-fuse requests in flight per io_uring queue (or in all, classic).
    #[arg(long, default_value_t = 64)]
    fuse_queue_depth: usize,
    /// Node plugin start: switch on FUSE-over-io_uring for the whole host
    /// (`echo Y > /sys/module/fuse/parameters/enable_uring`; needs Linux 6.14+ with
    /// CONFIG_FUSE_IO_URING and a writable /sys). It only lets FUSE servers that ask
    /// for io_uring use it; others are unaffected.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    fuse_enable_uring: bool,
    /// NodeGetInfo max_volumes_per_node (0 = unlimited).
    #[arg(long, default_value_t = 0)]
    max_volumes: i64,
    /// This node's place in the failure domains, LABEL=VALUE (repeat or comma-separate),
    /// e.g. zone=eu-1a: NodeGetInfo reports it as topology.rbd.csi.strake.io/<LABEL>.
    #[arg(long, value_delimiter = ',')]
    topology: Vec<String>,
    /// A downward-API file of the pod's labels; its topology.kubernetes.io/* entries (the
    /// node's, which Kubernetes copies onto its pods) join --topology.
    #[arg(long)]
    topology_labels_file: Option<PathBuf>,
    /// Lifetime of the blocklist entry ControllerUnpublishVolume adds when it fences a
    /// node's client (0 = the cluster default, one hour).
    #[arg(long, default_value_t = 0)]
    fence_expire_secs: u32,
}

#[derive(Subcommand)]
enum Cmd {
    /// Fence a lost node by address, as ceph-csi's NetworkFence does: blocklist every
    /// Ceph client of that host (`ADDR:0/0`), so nothing it still runs can write.
    /// For a node declared lost for good; ControllerUnpublishVolume already fences the
    /// exact clients of each volume it detaches. Never use on an address other nodes share.
    Fence {
        /// The node's IP address (as the OSDs see its clients).
        #[arg(long)]
        address: std::net::IpAddr,
        /// Entry lifetime in seconds (0 = the cluster default, one hour); renew or
        /// `unfence` once the node is wiped or rebooted.
        #[arg(long, default_value_t = 0)]
        expire_secs: u32,
    },
    /// Lift a `fence` once the node is clean (rebooted, its mounts gone).
    Unfence {
        #[arg(long)]
        address: std::net::IpAddr,
    },
    /// Make one CSI call to a running driver (create-volume, stage, publish, ...).
    Call(strake_csi::call::CallArgs),
    /// List (and with --delete remove) orphaned images, journal records and temporary
    /// snapshots in the given pools. Prints one JSON object per finding.
    Sweep {
        /// Pools to sweep (comma-separated).
        #[arg(long, value_delimiter = ',', required = true)]
        pool: Vec<String>,
        /// Remove what is proven orphaned (default: only report).
        #[arg(long)]
        delete: bool,
        /// Age in seconds after which an unfinished reservation with no image is abandoned.
        #[arg(long, default_value_t = 600)]
        grace_secs: u64,
    },
}

fn init_logging(f: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match f {
        LogFormat::Text => b.init(),
        LogFormat::Json => b.json().init(),
    }
}

fn own_credentials(c: &Common) -> Result<Option<Credentials>> {
    match (&c.ceph_user, &c.ceph_key_file) {
        (Some(u), Some(f)) => {
            let key = std::fs::read_to_string(f).with_context(|| format!("reading --ceph-key-file {}", f.display()))?;
            Ok(Some(Credentials::new(u.trim_start_matches("client."), key.trim())))
        }
        (None, Some(_)) => bail!("--ceph-key-file needs --ceph-user"),
        _ => Ok(None),
    }
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    init_logging(cli.common.log_format);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(run(cli))
}

async fn run(cli: Cli) -> Result<()> {
    if let Some(Cmd::Call(args)) = &cli.cmd {
        return strake_csi::call::run(args.clone()).await;
    }
    let c = &cli.common;
    strake_csi::validate::prefix("--instance-id", &c.instance_id).map_err(anyhow::Error::msg)?;
    strake_csi::validate::prefix("--image-prefix", &c.image_prefix).map_err(anyhow::Error::msg)?;
    let conns = Arc::new(Connections::new(
        c.ceph_conf.clone(),
        Duration::from_secs(c.ceph_timeout_secs),
        own_credentials(c)?,
    ));
    let naming = Naming {
        prefix: c.image_prefix.clone(),
    };
    if let Some(Cmd::Fence { address, .. } | Cmd::Unfence { address }) = &cli.cmd {
        // ip:0/0 (port and nonce 0): every client instance on that host.
        let addr = format!("{}/0", SocketAddr::new(*address, 0));
        let add = matches!(cli.cmd, Some(Cmd::Fence { .. }));
        let ip = *address;
        let expire = match &cli.cmd {
            Some(Cmd::Fence { expire_secs, .. }) => *expire_secs,
            _ => 0,
        };
        let conns = conns.clone();
        tokio::task::spawn_blocking(move || -> Result<()> {
            let cluster = conns.get(None).map_err(|s| anyhow::anyhow!("{}", s.message()))?;
            if add {
                cluster
                    .blocklist_add(&addr, expire)
                    .with_context(|| format!("blocklisting {addr}"))?;
                eprintln!(
                    "fenced {addr}: no Ceph client on that host can write until `strake-csi unfence --address {ip}`"
                );
            } else {
                let cmd = serde_json::json!({"prefix": "osd blocklist", "blocklistop": "rm", "addr": addr});
                cluster
                    .mon_command(&cmd.to_string())
                    .with_context(|| format!("removing the blocklist entry {addr}"))?;
                eprintln!("unfenced {addr}");
            }
            Ok(())
        })
        .await??;
        return Ok(());
    }
    if let Some(Cmd::Sweep {
        pool,
        delete,
        grace_secs,
    }) = &cli.cmd
    {
        let cfg = SweepConfig {
            instance: c.instance_id.clone(),
            naming,
            grace: Duration::from_secs(*grace_secs),
            delete: *delete,
        };
        let pools = pool.clone();
        let findings = tokio::task::spawn_blocking(move || -> Result<Vec<_>> {
            let cluster = conns.get(None).map_err(|s| anyhow::anyhow!("{}", s.message()))?;
            let mut all = vec![];
            for p in &pools {
                let io = cluster.ioctx(p).with_context(|| format!("opening pool {p}"))?;
                all.extend(sweep(&io, &cfg).map_err(|s| anyhow::anyhow!("sweeping {p}: {}", s.message()))?);
            }
            Ok(all)
        })
        .await??;
        for f in &findings {
            println!("{}", serde_json::to_string(f)?);
        }
        let removed = findings.iter().filter(|f| f.removed).count();
        eprintln!(
            "sweep: {} finding(s), {} removed{}",
            findings.len(),
            removed,
            if *delete {
                ""
            } else {
                " (report only; --delete removes proven orphans)"
            }
        );
        return Ok(());
    }

    let s = &cli.serve;
    let default_attacher = match s.attacher.as_str() {
        "auto" => AttacherKind::auto(),
        other => {
            let k: AttacherKind = other.parse().map_err(anyhow::Error::msg)?;
            if let Err(why) = k.available() {
                tracing::warn!(attacher = %k, why, "the chosen attach path is not usable on this node");
            }
            Some(k)
        }
    };
    if !s.metrics_addr.is_empty() {
        let addr: SocketAddr = s
            .metrics_addr
            .parse()
            .with_context(|| format!("--metrics-addr {}", s.metrics_addr))?;
        let bound = metrics::serve(addr).await?;
        tracing::info!(%bound, "serving metrics on /metrics");
    }
    let controller = matches!(s.mode, Mode::Controller | Mode::All).then(|| {
        ControllerService::new(
            ControllerConfig {
                instance: c.instance_id.clone(),
                naming: naming.clone(),
                default_size: s.default_size,
                max_size: s.max_volume_size,
                max_clone_depth: s.max_clone_depth,
                list_pools: s.list_pools.clone(),
                lock_timeout: Duration::from_secs(s.lock_timeout_secs),
                default_fs: s.default_fs.clone(),
                fence: strake_csi::publish::FenceOptions {
                    expire_secs: s.fence_expire_secs,
                    ..Default::default()
                },
            },
            conns.clone(),
        )
    });
    let node = if matches!(s.mode, Mode::Node | Mode::All) {
        let node_id = match &s.node_id {
            Some(n) => n.clone(),
            None => std::fs::read_to_string("/proc/sys/kernel/hostname")
                .context("reading the hostname for --node-id")?
                .trim()
                .to_string(),
        };
        strake_csi::publish::validate_node_id(&node_id).map_err(|e| anyhow::anyhow!("--node-id: {}", e.message()))?;
        std::fs::create_dir_all(&s.state_dir)
            .with_context(|| format!("creating --state-dir {}", s.state_dir.display()))?;
        if s.fuse_enable_uring {
            enable_fuse_uring();
        }
        metrics::watch_fuse_helpers(s.state_dir.join("volumes"));
        let n = NodeService::new(
            NodeConfig {
                node_id,
                instance: c.instance_id.clone(),
                topology: strake_csi::topology::node_segments(&s.topology, s.topology_labels_file.as_deref())
                    .map_err(anyhow::Error::msg)?,
                state_dir: s.state_dir.clone(),
                default_attacher,
                max_volumes: s.max_volumes,
                lock_timeout: Duration::from_secs(s.lock_timeout_secs),
                default_fs: s.default_fs.clone(),
                naming: naming.clone(),
                attach: strake_csi::attach::AttachOptions {
                    fuse_loop_direct_io: s.fuse_loop_direct_io,
                    fuse_helper: s.fuse_helper.parse().map_err(anyhow::Error::msg)?,
                    fuse_transport: match s.fuse_transport.as_str() {
                        "io-uring" => "io-uring",
                        "classic" => "classic",
                        _ => "auto",
                    },
                    fuse_queue_depth: s.fuse_queue_depth,
                },
            },
            conns.clone(),
        );
        let (ok, broken) = n.adopt();
        tracing::info!(adopted = ok, broken, attacher = ?default_attacher.map(|k| k.to_string()), "node plugin ready");
        Some(n)
    } else {
        None
    };
    if controller.is_some() && s.sweep_interval_secs > 0 {
        let cfg = SweepConfig {
            instance: c.instance_id.clone(),
            naming: naming.clone(),
            grace: Duration::from_secs(s.sweep_grace_secs),
            delete: true,
        };
        tokio::spawn(periodic_sweep(
            conns.clone(),
            s.list_pools.clone(),
            cfg,
            Duration::from_secs(s.sweep_interval_secs),
        ));
    }
    let identity = IdentityService {
        controller: controller.is_some(),
    };
    let shutdown = async {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        // Attachments are deliberately left alone: published volumes outlive the plugin.
        tracing::info!("shutting down; attachments stay in place");
    };
    server::serve(&s.endpoint, identity, controller, node, shutdown).await
}

/// The runbook ceph-csi users run by hand (find leaked images and omap entries),
/// as a loop: every finding is logged, proven orphans are removed.
async fn periodic_sweep(conns: Arc<Connections>, pools: Vec<String>, cfg: SweepConfig, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.tick().await; // not at start-up: let in-flight operations from a crash be retried first
    loop {
        tick.tick().await;
        let (conns, pools, cfg) = (conns.clone(), pools.clone(), cfg.clone());
        let r = tokio::task::spawn_blocking(move || -> Result<usize> {
            let cluster = conns.get(None).map_err(|s| anyhow::anyhow!("{}", s.message()))?;
            let mut n = 0;
            for p in &pools {
                let io = cluster.ioctx(p).with_context(|| format!("opening pool {p}"))?;
                for f in sweep(&io, &cfg).map_err(|s| anyhow::anyhow!("sweeping {p}: {}", s.message()))? {
                    tracing::warn!(
                        pool = f.pool,
                        kind = f.kind,
                        object = f.object,
                        reason = f.reason,
                        removed = f.removed,
                        error = f.error,
                        "sweep finding"
                    );
                    n += 1;
                }
            }
            Ok(n)
        })
        .await;
        match r {
            Ok(Ok(n)) => tracing::info!(findings = n, "periodic sweep done"),
            Ok(Err(e)) => tracing::error!(error = %e, "periodic sweep failed"),
            Err(e) => tracing::error!(error = %e, "periodic sweep task failed"),
        }
    }
}

/// Switches on FUSE-over-io_uring for new FUSE mounts, if the kernel has it.
fn enable_fuse_uring() {
    let p = strake_rbd_fuse::ENABLE_URING_PARAM;
    if strake_rbd_fuse::uring_enabled() {
        return;
    }
    if !std::path::Path::new(p).exists() {
        tracing::info!("this kernel has no FUSE-over-io_uring (Linux 6.14+ with CONFIG_FUSE_IO_URING); strake-rbd-fuse serves /dev/fuse with worker threads");
        return;
    }
    match std::fs::write(p, "Y") {
        Ok(()) => tracing::info!(param = p, "enabled FUSE-over-io_uring"),
        Err(e) => {
            tracing::warn!(param = p, error = %e, "could not enable FUSE-over-io_uring (read-only /sys?); strake-rbd-fuse falls back to worker threads")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn sizes() {
        assert_eq!(parse_size("1Gi").unwrap(), 1 << 30);
        assert_eq!(parse_size("64Ti").unwrap(), 64 << 40);
        assert_eq!(parse_size("100").unwrap(), 100);
        assert!(parse_size("x").is_err());
        assert!(parse_size("99999999999Ti").unwrap_err().contains("64 bits"));
    }
}
