//! Every knob of the agent, as command-line flags (each also readable from an
//! environment variable, for DaemonSet manifests).

use clap::{Parser, ValueEnum};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Rpf {
    Strict,
    Loose,
    Off,
}

impl Rpf {
    pub fn datapath(self) -> strake_datapath::trust::Rpf {
        match self {
            Rpf::Strict => strake_datapath::trust::Rpf::Strict,
            Rpf::Loose => strake_datapath::trust::Rpf::Loose,
            Rpf::Off => strake_datapath::trust::Rpf::Off,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SourceKind {
    /// Directories of Kubernetes YAML (standalone mode).
    Dir,
    /// The Kubernetes API server: in a pod, its service account; elsewhere
    /// KUBECONFIG or ~/.kube/config.
    Kube,
}

/// How pods of a node on another subnet are reached when the fabric does
/// not carry their routes (docs/bgp.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Encapsulation {
    /// VXLAN to nodes off this node's subnet, as a fallback behind BGP
    /// routes; same-subnet traffic stays plain.
    CrossSubnet,
    /// Never encapsulate: off-subnet nodes need BGP routes through the
    /// fabric.
    Never,
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

    /// MTU for pod interfaces; 0 uses the uplink's, less the VXLAN header
    /// (50 bytes) when some node is reached through the encapsulation
    /// fallback.
    #[arg(long, default_value_t = 0, env = "STRAKE_POD_MTU")]
    pub pod_mtu: u32,

    /// Encapsulation toward nodes on other subnets.
    #[arg(
        long,
        value_enum,
        default_value = "cross-subnet",
        env = "STRAKE_ENCAPSULATION"
    )]
    pub encapsulation: Encapsulation,

    /// UDP port of the VXLAN fallback (the same on every node).
    #[arg(long, default_value_t = 4789, env = "STRAKE_VXLAN_PORT")]
    pub vxlan_port: u16,

    /// VXLAN network identifier of the fallback (the same on every node).
    #[arg(long, default_value_t = 4096, env = "STRAKE_VXLAN_VNI")]
    pub vxlan_vni: u32,

    /// BIRD's control socket (BGP; docs/bgp.md).
    #[arg(
        long,
        default_value = "/var/run/strake/bird.ctl",
        env = "STRAKE_BIRD_SOCKET"
    )]
    pub bird_socket: PathBuf,

    /// BIRD's configuration, written by the agent; default
    /// `<state-dir>/bird.conf`.
    #[arg(long, env = "STRAKE_BIRD_CONFIG")]
    pub bird_config: Option<PathBuf>,

    /// Start BIRD when BGP is on and nothing answers on --bird-socket; off
    /// when a sidecar container runs it (deploy/strake/agent.yaml).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, env = "STRAKE_BIRD_START")]
    pub bird_start: bool,

    /// The BIRD 2 daemon to start.
    #[arg(long, default_value = "bird", env = "STRAKE_BIRD_BIN")]
    pub bird_bin: PathBuf,

    /// Capacity of the endpoint map.
    #[arg(long, default_value_t = 16384, env = "STRAKE_MAX_ENDPOINTS")]
    pub max_endpoints: u32,

    /// Capacity of the connection table (st_ct: service, reply and policy
    /// entries together; a translated flow takes two) and of the affinity
    /// table: LRU maps, so when full the least recently used flows are
    /// forgotten (watch strake_lb_ct_entries).
    #[arg(long, default_value_t = strake_datapath::shared::STRAKE_CT_SIZE, env = "STRAKE_CT_SIZE")]
    pub ct_size: u32,

    /// Capacity of the load balancer's backend-set table: at least the sum,
    /// over all Service ports, of their backends. Changing it on a node that
    /// already pinned the table needs that table removed (maps_v2/st_slots).
    #[arg(long, default_value_t = strake_datapath::shared::STRAKE_MAX_SLOTS, env = "STRAKE_LB_MAX_SLOTS")]
    pub lb_max_slots: u32,

    /// Largest Maglev table for Services that do not fix one (prime). Below
    /// it, a table holds the smallest of 251, 509, 1021, ... slots that gives
    /// each backend 100; 8 bytes of kernel memory per slot.
    #[arg(long, default_value_t = strake_lb::model::DEFAULT_TABLE_SIZE, env = "STRAKE_MAGLEV_TABLE_SIZE",
          value_parser = parse_prime)]
    pub maglev_table_size: u32,

    /// Flow hash seed; must be the same on every node, so that every node
    /// picks the same backend for a flow.
    #[arg(long, default_value_t = 0x5374_7261, env = "STRAKE_LB_HASH_SEED")]
    pub lb_hash_seed: u32,

    /// Ports on the node's address used to SNAT external traffic to remote
    /// backends (clear of the ephemeral and NodePort ranges).
    #[arg(long, default_value = "20000-29999", value_parser = parse_port_range, env = "STRAKE_SNAT_PORTS")]
    pub snat_ports: (u16, u16),

    /// BPF masquerade: pod traffic to destinations outside the cluster (not
    /// in any node's pod CIDR, not a node's address, not in
    /// --non-masquerade-cidrs) leaves with the node's InternalIP, replies
    /// turned back on the uplink (TCP, UDP, ICMP echo).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, env = "STRAKE_MASQUERADE")]
    pub masquerade: bool,

    /// Destinations pods reach with their own address, as ip-masq-agent's
    /// nonMasqueradeCIDRs: comma-separated CIDRs (e.g. the networks that
    /// route the pod ranges back themselves). Empty by default.
    #[arg(long, value_delimiter = ',', value_parser = parse_cidr, env = "STRAKE_NON_MASQUERADE_CIDRS")]
    pub non_masquerade_cidrs: Vec<(Ipv4Addr, u8)>,

    /// Ports on the node's address masqueraded flows get (per destination
    /// address and port; clear of the ephemeral, NodePort, --snat-ports and
    /// --health-check-ports ranges).
    #[arg(long, default_value = "61440-65535", value_parser = parse_port_range, env = "STRAKE_MASQUERADE_PORTS")]
    pub masquerade_ports: (u16, u16),

    /// Connection-table timeouts: how long a flow may be idle before the
    /// sweep removes it (and gives its SNAT port back), by what its packets
    /// showed. A TCP handshake not completed (SYN, SYN-ACK):
    #[arg(long, default_value = "60s", value_parser = strake_lb::model::parse_duration, env = "STRAKE_CT_TIMEOUT_SYN")]
    pub ct_timeout_syn: Duration,

    /// ... an established TCP connection (Cilium's default, 6h):
    #[arg(long, default_value = "6h", value_parser = strake_lb::model::parse_duration, env = "STRAKE_CT_TIMEOUT_ESTABLISHED")]
    pub ct_timeout_established: Duration,

    /// ... a closing TCP connection (a reset, or a FIN each way):
    #[arg(long, default_value = "10s", value_parser = strake_lb::model::parse_duration, env = "STRAKE_CT_TIMEOUT_CLOSING")]
    pub ct_timeout_closing: Duration,

    /// ... UDP and every other protocol (ICMP echo included):
    #[arg(long, default_value = "60s", value_parser = strake_lb::model::parse_duration, env = "STRAKE_CT_TIMEOUT_OTHER")]
    pub ct_timeout_other: Duration,

    /// Shortest and longest time between connection-table sweeps. The
    /// interval halves (down to the minimum) while sweeps find much to
    /// remove or the table is over 90 % full, drops to the minimum when a
    /// SNAT allocation failed, and grows by half (up to the maximum) while
    /// they find little, as Cilium's GC between 10 s and 12 h.
    #[arg(long, default_value = "10s", value_parser = strake_lb::model::parse_duration, env = "STRAKE_CT_GC_MIN_INTERVAL")]
    pub ct_gc_min_interval: Duration,

    #[arg(long, default_value = "5m", value_parser = strake_lb::model::parse_duration, env = "STRAKE_CT_GC_MAX_INTERVAL")]
    pub ct_gc_max_interval: Duration,

    /// Source ports of the backend health checks (from the node's
    /// InternalIP). They identify nothing: a probe passes a NetworkPolicy
    /// only by the health-check mark below. They let this node's XDP tell
    /// the replies from NodePort traffic, so they must lie outside
    /// --node-port-range and --snat-ports; keep them out of the kernel's
    /// ephemeral range too (net.ipv4.ip_local_port_range, 32768-60999 by
    /// default).
    #[arg(long, default_value = "61000-61255", value_parser = parse_port_range, env = "STRAKE_HEALTH_CHECK_PORTS")]
    pub health_check_ports: (u16, u16),

    /// The cluster's NodePort range (kube-apiserver's
    /// --service-node-port-range), which --health-check-ports and
    /// --snat-ports must stay clear of.
    #[arg(long, default_value = "30000-32767", value_parser = parse_port_range, env = "STRAKE_NODE_PORT_RANGE")]
    pub node_port_range: (u16, u16),

    /// SO_MARK the agent sets on health checks of pods on other nodes; the
    /// uplink's egress program wraps marked probes in health-check IPIP,
    /// the one thing the backend's node lets past its policies as a check
    /// (docs/threat-model.md). Setting a mark needs CAP_NET_ADMIN. Must not
    /// collide with marks other software on the node sets; 0 turns the
    /// encapsulation off (remote checks of policy-isolated pods then fail).
    #[arg(long, default_value = "0x53540000", value_parser = parse_u32, env = "STRAKE_HEALTH_CHECK_MARK")]
    pub health_check_mark: u32,

    /// Reverse-path check of sources arriving on the uplink for local pods
    /// (they bypass the kernel's rp_filter): `strict` (the route back leaves
    /// by the uplink), `loose` (some route back exists: asymmetric routing
    /// over several interfaces), `off`.
    #[arg(long, value_enum, default_value = "strict", env = "STRAKE_UPLINK_RPF")]
    pub uplink_rpf: Rpf,

    /// Attach the XDP load balancer to the uplink (north-south Services).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, env = "STRAKE_LB_XDP")]
    pub lb_xdp: bool,

    /// Socket-level load balancing: Services translated at connect() and
    /// sendto() by cgroup hooks, for host-network processes and pods alike.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, env = "STRAKE_SOCKET_LB")]
    pub socket_lb: bool,

    /// cgroup v2 directory the socket hooks attach to; they apply to every
    /// process below it. `auto`: the cgroup2 mount (found in
    /// /proc/self/mountinfo: /sys/fs/cgroup, or /sys/fs/cgroup/unified on a
    /// hybrid host).
    #[arg(long, default_value = "auto", env = "STRAKE_CGROUP_ROOT")]
    pub cgroup_root: String,

    /// Full pass period: every phase recomputes everything and observes the
    /// kernel (strays removed, drift repaired). Changes in between are
    /// applied as they come, each costing what it touches.
    #[arg(long, default_value = "5m", value_parser = strake_lb::model::parse_duration, env = "STRAKE_RESYNC")]
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

impl Config {
    /// Where the agent writes BIRD's configuration.
    pub fn bird_config_path(&self) -> PathBuf {
        self.bird_config
            .clone()
            .unwrap_or_else(|| self.state_dir.join("bird.conf"))
    }

    /// Checks what clap cannot check flag by flag.
    pub fn validate(&self) -> Result<(), String> {
        if self.ct_gc_min_interval.is_zero() || self.ct_gc_min_interval > self.ct_gc_max_interval {
            return Err(format!(
                "--ct-gc-min-interval {:?} must be above 0 and at most --ct-gc-max-interval {:?}",
                self.ct_gc_min_interval, self.ct_gc_max_interval
            ));
        }
        if self.vxlan_vni == 0 || self.vxlan_vni >= 1 << 24 {
            return Err(format!(
                "--vxlan-vni {}: a VXLAN network identifier is 1 to 16777215",
                self.vxlan_vni
            ));
        }
        let overlap = |(a, b): (u16, u16), (c, d): (u16, u16)| a <= d && c <= b;
        let ((a, b), (c, d), (e, f)) = (
            self.snat_ports,
            self.health_check_ports,
            self.node_port_range,
        );
        if overlap(self.snat_ports, self.health_check_ports) {
            return Err(format!(
                "--snat-ports {a}-{b} and --health-check-ports {c}-{d} overlap: replies to health checks would be taken for SNATed traffic; pick disjoint ranges"
            ));
        }
        if overlap(self.health_check_ports, self.node_port_range) {
            return Err(format!(
                "--health-check-ports {c}-{d} overlaps the NodePort range {e}-{f} (--node-port-range): a Service on one of those NodePorts would take health-check replies; pick ports outside it (e.g. the default 61000-61255)"
            ));
        }
        for (name, r) in [
            ("--snat-ports", self.snat_ports),
            ("--health-check-ports", self.health_check_ports),
            ("--node-port-range", self.node_port_range),
        ] {
            if overlap(self.masquerade_ports, r) {
                let ((m, n), (x, y)) = (self.masquerade_ports, r);
                return Err(format!(
                    "--masquerade-ports {m}-{n} overlaps {name} {x}-{y}: replies to masqueraded flows would be confused with that traffic; pick disjoint ranges"
                ));
            }
        }
        if overlap(self.snat_ports, self.node_port_range) {
            return Err(format!(
                "--snat-ports {a}-{b} overlaps the NodePort range {e}-{f} (--node-port-range): replies to SNATed flows and NodePort traffic would be confused; pick ports outside it"
            ));
        }
        Ok(())
    }

    /// Port ranges of ours the kernel may also hand out as ephemeral ports
    /// (a local connection from one of them would be taken for ours).
    pub fn ephemeral_overlaps(&self, ephemeral: (u16, u16)) -> Vec<String> {
        let overlap = |(a, b): (u16, u16)| a <= ephemeral.1 && ephemeral.0 <= b;
        [
            ("--health-check-ports", self.health_check_ports),
            ("--snat-ports", self.snat_ports),
            ("--masquerade-ports", self.masquerade_ports),
        ]
        .into_iter()
        .filter(|(_, r)| overlap(*r))
        .map(|(n, (a, b))| format!("{n} {a}-{b}"))
        .collect()
    }
}

/// Decimal or 0x-prefixed hexadecimal.
fn parse_u32(s: &str) -> Result<u32, String> {
    let r = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(h) => u32::from_str_radix(h, 16),
        None => s.parse(),
    };
    r.map_err(|_| format!("{s:?} is not a 32-bit number (decimal or 0x...)"))
}

fn parse_prime(s: &str) -> Result<u32, String> {
    let n: u32 = s.parse().map_err(|_| format!("{s:?} is not a number"))?;
    if !strake_lb::maglev::is_prime(n) || n < 251 {
        return Err(format!(
            "{n} is not a prime of at least 251 (e.g. 16381, 65537)"
        ));
    }
    Ok(n)
}

/// A.B.C.D/LEN, host bits clear.
fn parse_cidr(s: &str) -> Result<(Ipv4Addr, u8), String> {
    let n: ipnetwork::Ipv4Network = s
        .trim()
        .parse()
        .map_err(|e| format!("{s:?}: not an IPv4 CIDR (A.B.C.D/LEN): {e}"))?;
    if n.network() != n.ip() {
        return Err(format!(
            "{s:?}: host bits set; the network is {}/{}",
            n.network(),
            n.prefix()
        ));
    }
    Ok((n.network(), n.prefix()))
}

fn parse_port_range(s: &str) -> Result<(u16, u16), String> {
    let (a, b) = s
        .split_once('-')
        .ok_or_else(|| format!("{s:?}: use FIRST-LAST, e.g. 20000-29999"))?;
    let (a, b): (u16, u16) = (
        a.parse().map_err(|_| format!("bad port {a:?}"))?,
        b.parse().map_err(|_| format!("bad port {b:?}"))?,
    );
    if a == 0 || a > b {
        return Err(format!(
            "{s:?}: FIRST must be at least 1 and no more than LAST"
        ));
    }
    Ok((a, b))
}

impl Config {
    /// The connection-table timeouts, in the sweep's terms (seconds).
    pub fn ct_timeouts(&self) -> strake_datapath::conntrack::Timeouts {
        let s = |d: Duration| d.as_secs().clamp(1, u32::MAX as u64) as u32;
        strake_datapath::conntrack::Timeouts {
            syn: s(self.ct_timeout_syn),
            established: s(self.ct_timeout_established),
            closing: s(self.ct_timeout_closing),
            other: s(self.ct_timeout_other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// deploy/strake/agent.yaml runs this binary: its flags must parse, and
    /// the conflist it installs must be the one deploy/cni ships.
    #[test]
    fn the_daemonset_in_deploy_runs_with_flags_the_agent_accepts() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy");
        let text = std::fs::read_to_string(root.join("strake/agent.yaml")).unwrap();
        let mut args = None;
        let mut env = None;
        let mut conflist = None;
        let mut bootstrap = None;
        for o in strake_source::dir::parse_documents(&text) {
            if let strake_source::dir::Document::Other { kind, value, .. } = o.unwrap() {
                if kind == "DaemonSet" {
                    let c = &value["spec"]["template"]["spec"]["containers"][0];
                    env = Some(c["env"].clone());
                    args = Some(
                        c["args"]
                            .as_sequence()
                            .unwrap()
                            .iter()
                            .map(|a| a.as_str().unwrap().to_string())
                            .collect::<Vec<_>>(),
                    );
                } else if kind == "ConfigMap" && value["metadata"]["name"] == "strake-bootstrap" {
                    bootstrap = Some(value["data"].clone());
                } else if kind == "ConfigMap" {
                    conflist = value["data"]["10-strake.conflist"]
                        .as_str()
                        .map(str::to_string);
                }
            }
        }
        let mut argv = vec!["strake-agent".to_string(), "--node-name=n".into()];
        argv.extend(args.expect("a DaemonSet with args"));
        let c = Config::try_parse_from(&argv).unwrap_or_else(|e| panic!("{argv:?}: {e}"));
        assert!(matches!(c.source, SourceKind::Kube));
        c.validate().unwrap();
        let shipped: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(root.join("cni/10-strake.conflist")).unwrap(),
        )
        .unwrap();
        let installed: serde_json::Value =
            serde_json::from_str(&conflist.expect("the CNI ConfigMap")).unwrap();
        assert_eq!(installed, shipped);
        // Bootstrap: the API server's real address, from strake-bootstrap,
        // overrides the kubelet's KUBERNETES_SERVICE_* (a ClusterIP).
        let env = env.expect("the agent's env");
        let data = bootstrap.expect("the strake-bootstrap ConfigMap");
        for (var, key) in [
            ("KUBERNETES_SERVICE_HOST", "apiServerHost"),
            ("KUBERNETES_SERVICE_PORT", "apiServerPort"),
        ] {
            let e = env
                .as_sequence()
                .unwrap()
                .iter()
                .find(|e| e["name"] == var)
                .unwrap_or_else(|| panic!("{var} not set in the DaemonSet"));
            let r = &e["valueFrom"]["configMapKeyRef"];
            assert_eq!(r["name"], "strake-bootstrap", "{var}");
            assert_eq!(r["key"], key, "{var}");
            assert!(
                data[key].as_str().is_some(),
                "strake-bootstrap has no {key}"
            );
        }
        assert_ne!(
            c.cgroup_root, "auto",
            "the container's own cgroup is not the node's"
        );
    }

    #[test]
    fn overlapping_snat_and_health_check_ports_are_refused() {
        let mut c = Config::parse_from(["strake-agent", "--node-name", "n"]);
        assert!(c.validate().is_ok(), "the defaults are disjoint");
        c.health_check_ports = (29000, 29100);
        let e = c.validate().unwrap_err();
        assert!(e.contains("overlap"), "{e}");
    }

    /// The old default, 32000-32255, lay inside Kubernetes' NodePort range:
    /// a Service on NodePort 32000 would have swallowed health-check replies.
    #[test]
    fn health_check_ports_inside_the_nodeport_range_are_refused() {
        let c = Config::parse_from(["strake-agent", "--node-name", "n"]);
        let (lo, hi) = c.node_port_range;
        let (a, b) = c.health_check_ports;
        assert!(b < lo || a > hi, "the default is outside {lo}-{hi}");
        assert!(
            c.ephemeral_overlaps((32768, 60999)).is_empty(),
            "and outside Linux's default ephemeral range"
        );
        for args in [
            vec!["--health-check-ports", "32000-32255"],
            vec!["--node-port-range", "30000-61100"],
        ] {
            let mut argv = vec!["strake-agent", "--node-name", "n"];
            argv.extend(args.iter());
            let e = Config::parse_from(&argv).validate().unwrap_err();
            assert!(e.contains("NodePort range"), "{args:?}: {e}");
        }
        let e = Config::parse_from([
            "strake-agent",
            "--node-name",
            "n",
            "--snat-ports",
            "30000-30100",
        ])
        .validate()
        .unwrap_err();
        assert!(e.contains("NodePort range"), "{e}");
    }

    #[test]
    fn the_health_check_mark_parses_in_hex_or_decimal() {
        let c = Config::parse_from(["strake-agent", "--node-name", "n"]);
        assert_eq!(c.health_check_mark, 0x5354_0000);
        for (arg, want) in [("0x10", 16), ("16", 16), ("0", 0)] {
            let c = Config::parse_from([
                "strake-agent",
                "--node-name",
                "n",
                "--health-check-mark",
                arg,
            ]);
            assert_eq!(c.health_check_mark, want);
        }
        assert!(Config::try_parse_from([
            "strake-agent",
            "--node-name",
            "n",
            "--health-check-mark",
            "0xfffffffff"
        ])
        .is_err());
    }
}
