//! Every knob of the agent, as command-line flags (each also readable from an
//! environment variable, for DaemonSet manifests).

use clap::{Parser, ValueEnum};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SourceKind {
    /// Directories of Kubernetes YAML (standalone mode).
    Dir,
}

#[derive(Debug, Clone, Parser)]
#[command(
    name = "strake-agent",
    version,
    about = "strake node agent: eBPF pod networking, routes and endpoint state for one node"
)]
pub struct Config {
    /// This node's name, as in its Node object.
    #[arg(long, env = "NODE_NAME")]
    pub node_name: String,

    /// Where desired state comes from.
    #[arg(long, value_enum, default_value = "dir", env = "STRAKE_SOURCE")]
    pub source: SourceKind,

    /// Directory of Kubernetes YAML for `--source dir`; repeat for overlays
    /// (later directories may add `status` to earlier objects).
    #[arg(long = "source-dir", env = "STRAKE_SOURCE_DIR", value_delimiter = ',')]
    pub source_dirs: Vec<PathBuf>,

    /// bpffs directory for this agent's pinned maps and links.
    #[arg(long, default_value = "/sys/fs/bpf/strake", env = "STRAKE_BPFFS_ROOT")]
    pub bpffs_root: PathBuf,

    /// Directory for durable state (IPAM allocations and endpoint records).
    #[arg(long, default_value = "/var/lib/strake", env = "STRAKE_STATE_DIR")]
    pub state_dir: PathBuf,

    /// Local API socket: `@name` for an abstract socket (per network
    /// namespace), otherwise a filesystem path.
    #[arg(long, default_value = strake_api::DEFAULT_SOCKET, env = "STRAKE_API_SOCKET")]
    pub api_socket: String,

    /// Address for /metrics and /healthz.
    #[arg(long, default_value = "0.0.0.0:9753", env = "STRAKE_METRICS_ADDR")]
    pub metrics_addr: String,

    /// Interface toward other nodes; `auto` picks the one holding the node's
    /// InternalIP.
    #[arg(long, default_value = "auto", env = "STRAKE_UPLINK")]
    pub uplink: String,

    /// MTU for pod interfaces; 0 uses the uplink's MTU (no encapsulation, so
    /// no overhead to subtract).
    #[arg(long, default_value_t = 0, env = "STRAKE_POD_MTU")]
    pub pod_mtu: u32,

    /// Capacity of the endpoint map.
    #[arg(long, default_value_t = 16384, env = "STRAKE_MAX_ENDPOINTS")]
    pub max_endpoints: u32,

    /// Full reconcile period, on top of reacting to every change.
    #[arg(long, default_value = "30s", value_parser = parse_duration, env = "STRAKE_RESYNC")]
    pub resync: Duration,

    /// Log format.
    #[arg(long, value_enum, default_value = "text", env = "STRAKE_LOG_FORMAT")]
    pub log_format: LogFormat,

    /// Append logs to this file instead of stderr.
    #[arg(long, env = "STRAKE_LOG_FILE")]
    pub log_file: Option<PathBuf>,

    /// uid allowed on the API socket besides root.
    #[arg(long, env = "STRAKE_API_ALLOW_UID")]
    pub api_allow_uid: Option<u32>,
}

/// `500ms`, `30s`, `5m`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit())
        .map(|i| s.split_at(i))
        .unwrap_or((s, "s"));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid duration {s:?}: use e.g. 500ms, 30s, 5m"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" | "" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        _ => Err(format!("invalid duration unit in {s:?}: use ms, s or m")),
    }
}
