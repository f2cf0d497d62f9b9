//! `strake-lab`: a simulated multi-node cluster in network namespaces, driven
//! by strake's real binaries. `strake lab ...` runs this; it is its own
//! binary so that the node CLI does not carry the lab.

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use std::fmt::Write as _;
use std::net::SocketAddrV4;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use strake_lab::Lab;

#[derive(Parser)]
#[command(
    name = "strake-lab",
    version,
    about = "A simulated multi-node cluster in network namespaces (also: strake lab ...)"
)]
struct Cli {
    #[command(subcommand)]
    cmd: LabCmd,
}

#[derive(Subcommand)]
enum LabCmd {
    /// Build the lab a directory of Kubernetes YAML describes; returns once every agent has applied it.
    Up {
        dir: PathBuf,
        /// CNI conflist to attach pods with (default: deploy/cni/10-strake.conflist).
        #[arg(long)]
        conflist: Option<PathBuf>,
    },
    /// Remove everything `lab up` made (also after a failed `up`).
    Down { dir: PathBuf },
    /// (Re)start the agent of one node, as its DaemonSet pod would be.
    Restart { dir: PathBuf, node: String },
    /// Run a command inside a pod's (ns/name) or node's (node/NAME) namespace.
    Exec {
        /// `namespace/pod`, `node/<name>`, `ext/<name>` or `router/<name>`.
        target: String,
        #[arg(trailing_var_arg = true, required = true)]
        command: Vec<String>,
    },
    /// Connect from a pod to an address and print the answer.
    Probe {
        /// `namespace/pod`, `node/<name>`, `ext/<name>` or `router/<name>`.
        from: String,
        /// ip:port
        to: SocketAddrV4,
        #[arg(long, default_value = "tcp")]
        proto: String,
        #[arg(long, default_value = "2")]
        timeout_secs: u64,
    },
    /// Wait until every node's agent has applied what the lab's directory
    /// holds now.
    Wait {
        dir: PathBuf,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 30)]
        timeout_secs: u64,
    },
    /// Exchanges with an address from this process, one JSON line per
    /// attempt (answer, getpeername, UDP source, errno); run it with
    /// `strake lab exec` to see what a node's or pod's application sees.
    #[command(hide = true)]
    Client {
        to: SocketAddrV4,
        /// tcp, udp (connected) or udp-sendto (unconnected).
        #[arg(long, default_value = "tcp")]
        mode: String,
        #[arg(long, default_value_t = 1)]
        count: usize,
        #[arg(long, default_value_t = 2000)]
        timeout_ms: u64,
    },
    /// Serve a pod's ports (what the lab runs inside each pod).
    #[command(hide = true)]
    Serve {
        #[arg(long)]
        name: String,
        #[arg(long, value_delimiter = ',')]
        tcp: Vec<u16>,
        #[arg(long, value_delimiter = ',')]
        udp: Vec<u16>,
    },
    /// Serve the lab's stand-in Kubernetes API (what `lab up` starts with
    /// STRAKE_LAB_SOURCE=kube).
    #[command(hide = true)]
    KubeApi {
        /// Directories of YAML to serve, in overlay order.
        #[arg(long = "dir", required = true)]
        dirs: Vec<PathBuf>,
        /// Network namespaces to listen in (127.0.0.1:6443 in each).
        #[arg(long = "netns", required = true)]
        netns: Vec<PathBuf>,
        /// The control socket.
        #[arg(long)]
        control: PathBuf,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse().cmd) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("strake-lab: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `namespace/pod`, `node/<name>`, `ext/<name>` or `router/<name>` to a
/// namespace path.
fn netns_of(target: &str) -> Result<PathBuf> {
    Ok(strake_lab::target_netns(target)?.0)
}

fn run(cmd: LabCmd) -> Result<()> {
    match cmd {
        LabCmd::Up { dir, conflist } => {
            let lab = Lab::load_with(&dir, conflist.as_deref())?;
            eprintln!(
                "lab {}: {} nodes, {} pods; logs and state in {}",
                lab.name,
                lab.spec.nodes.len(),
                lab.spec.pods.len(),
                lab.root.display()
            );
            lab.up().with_context(|| {
                format!(
                    "lab up failed; `strake lab down {}` cleans up",
                    dir.display()
                )
            })?;
            print!("{}", summary(&lab));
        }
        LabCmd::Down { dir } => {
            let lab = Lab::load(&dir)?;
            lab.down()?;
            eprintln!("lab {} is down", lab.name);
        }
        LabCmd::Restart { dir, node } => {
            let lab = Lab::load(&dir)?;
            if lab.spec.node(&node).is_none() {
                bail!("lab {} has no node {node}", lab.name);
            }
            if let Some(pid) = lab
                .agent_pid(&node)
                .filter(|p| strake_lab::procs::alive(*p))
            {
                strake_lab::procs::stop(&[pid], Duration::from_secs(5));
            }
            let pid = lab.start_agent(&node)?;
            lab.wait_agent_ready(&node, Duration::from_secs(30))?;
            eprintln!("agent of node {node} running again (pid {pid})");
        }
        LabCmd::Exec { target, command } => {
            // In the target's namespace and, for a node or a pod, in its
            // node's cgroup: what runs there sees that node's socket load
            // balancer, as a host-network process or a container would.
            let (ns, name) = strake_lab::target_netns(&target)?;
            let cg = strake_lab::cgroup_of_netns(&name);
            let args: Vec<&str> = command[1..].iter().map(|s| s.as_str()).collect();
            let out = strake_lab::procs::run_in(&ns, cg.as_deref(), &command[0], &args)?;
            use std::io::Write;
            std::io::stdout().write_all(&out.stdout)?;
            std::io::stderr().write_all(&out.stderr)?;
            if !out.status.success() {
                bail!("{} exited with {}", command[0], out.status);
            }
        }
        LabCmd::Probe {
            from,
            to,
            proto,
            timeout_secs,
        } => {
            let ns = netns_of(&from)?;
            let t = Duration::from_secs(timeout_secs);
            let answer = match proto.as_str() {
                "tcp" => strake_lab::probe::tcp(&ns, to, t)?,
                "udp" => strake_lab::probe::udp(&ns, to, t)?,
                p => bail!("--proto {p}: use tcp or udp"),
            };
            println!("{answer}");
        }
        LabCmd::Wait { dir, timeout_secs } => {
            let lab = Lab::load(&dir)?;
            let t0 = std::time::Instant::now();
            lab.wait_synced(Duration::from_secs(timeout_secs))?;
            eprintln!(
                "{} nodes in sync ({} ms)",
                lab.spec.nodes.len(),
                t0.elapsed().as_millis()
            );
        }
        LabCmd::Client {
            to,
            mode,
            count,
            timeout_ms,
        } => {
            let t = Duration::from_millis(timeout_ms);
            for a in strake_lab::probe::client(to, &mode, count, t)? {
                println!("{}", serde_json::to_string(&a)?);
            }
        }
        LabCmd::Serve { name, tcp, udp } => strake_lab::serve::serve(&name, &tcp, &udp)?,
        LabCmd::KubeApi {
            dirs,
            netns,
            control,
        } => {
            tracing_subscriber::fmt()
                .json()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_default_env()
                        .unwrap_or_else(|_| "info".into()),
                )
                .init();
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?
                .block_on(strake_lab::kube_api::serve(dirs, netns, control))?
        }
    }
    Ok(())
}

fn summary(lab: &Lab) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "lab {} is up", lab.name);
    for n in &lab.spec.nodes {
        let _ = writeln!(
            o,
            "  node {:<10} {:<15} pods {}/{}",
            n.name, n.ip, n.pod_cidr.0, n.pod_cidr.1
        );
        for p in lab.spec.pods.iter().filter(|p| p.node == n.name) {
            let ip = lab
                .pod_ip(&p.namespace, &p.name)
                .map(|i| i.to_string())
                .unwrap_or_else(|_| "-".into());
            let _ = writeln!(o, "    pod {:<28} {ip}", p.key());
        }
    }
    let _ = writeln!(
        o,
        "try: strake status --lab {}    strake lab probe <ns/pod> <ip:port>",
        lab.dir.display()
    );
    o
}
