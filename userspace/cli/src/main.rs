//! `strake`: what an operator runs on a node when something is off, and the
//! front door to the local lab.

mod output;

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::net::SocketAddrV4;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use strake_api::{AgentStatus, Client, EndpointView, Request};
use strake_lab::Lab;
use strake_netlink::netns;

#[derive(Parser)]
#[command(
    name = "strake",
    version,
    about = "Inspect a strake node, or run a simulated cluster locally"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    Text,
    Json,
}

/// Which agents to ask.
#[derive(Args, Clone)]
struct Target {
    /// The agent's API socket (`@name` abstract, or a path).
    #[arg(long, default_value = strake_api::DEFAULT_SOCKET, env = "STRAKE_API_SOCKET")]
    socket: String,
    /// Ask every node of this lab directory.
    #[arg(long)]
    lab: Option<PathBuf>,
    /// With --lab: only this node.
    #[arg(long)]
    node: Option<String>,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value = "text")]
    output: Format,
}

#[derive(Subcommand)]
enum Cmd {
    /// Per node: version, attached programs, endpoints, map fill, counters.
    Status(Target),
    /// Endpoints (pods) of each node, with addresses and data-plane state.
    Endpoints(Target),
    /// NetworkPolicy: why a flow is allowed or not.
    #[command(subcommand)]
    Policy(PolicyCmd),
    /// Wait until every node's data plane reflects the current desired state.
    Wait {
        /// Lab directory whose nodes to wait for.
        #[arg(long)]
        lab: PathBuf,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 30)]
        timeout_secs: u64,
    },
    /// The load balancer: services, frontends, backends, health, counters.
    #[command(subcommand)]
    Lb(LbCmd),
    /// A simulated multi-node cluster in network namespaces.
    #[command(subcommand)]
    Lab(LabCmd),
}

#[derive(Subcommand)]
enum PolicyCmd {
    /// The verdict for FROM -> TO on PORT/PROTO, and which policy and rule
    /// gave it (or that none did). FROM is namespace/pod; TO is namespace/pod
    /// or an IPv4 address.
    Trace {
        from: String,
        to: String,
        /// e.g. 80/tcp
        port: String,
        #[command(flatten)]
        target: Target,
    },
}

#[derive(Subcommand)]
enum LbCmd {
    /// Services with their frontends and backends, per node.
    List(Target),
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
        /// `namespace/pod`, `node/<name>` or `ext/<name>`.
        target: String,
        #[arg(trailing_var_arg = true, required = true)]
        command: Vec<String>,
    },
    /// Connect from a pod to an address and print the answer.
    Probe {
        /// `namespace/pod`, `node/<name>` or `ext/<name>`.
        from: String,
        /// ip:port
        to: SocketAddrV4,
        #[arg(long, default_value = "tcp")]
        proto: String,
        #[arg(long, default_value = "2")]
        timeout_secs: u64,
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
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("strake: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.cmd {
        Cmd::Status(t) => {
            let all: Vec<(String, AgentStatus)> = ask(&t, Request::Status)?;
            match t.output {
                Format::Json => println!(
                    "{}",
                    serde_json::to_string_pretty(&all.iter().map(|(_, s)| s).collect::<Vec<_>>())?
                ),
                Format::Text => {
                    for (_, s) in &all {
                        print!("{}", output::status(s));
                    }
                }
            }
        }
        Cmd::Endpoints(t) => {
            let all: Vec<(String, Vec<EndpointView>)> = ask(&t, Request::Endpoints)?;
            match t.output {
                Format::Json => {
                    let v: serde_json::Map<String, serde_json::Value> = all
                        .into_iter()
                        .map(|(n, e)| (n, serde_json::to_value(e).unwrap()))
                        .collect();
                    println!("{}", serde_json::to_string_pretty(&v)?)
                }
                Format::Text => print!("{}", output::endpoints(&all)),
            }
        }
        Cmd::Lb(LbCmd::List(t)) => {
            let all: Vec<(String, strake_api::LbStatus)> = ask(&t, Request::LbList)?;
            match t.output {
                Format::Json => println!(
                    "{}",
                    serde_json::to_string_pretty(&all.iter().map(|(_, s)| s).collect::<Vec<_>>())?
                ),
                Format::Text => {
                    for (_, s) in &all {
                        print!("{}", output::lb(s));
                    }
                }
            }
        }
        Cmd::Policy(PolicyCmd::Trace {
            from,
            to,
            port,
            target,
        }) => {
            let (p, proto) = port.split_once('/').unwrap_or((port.as_str(), "tcp"));
            let port: u16 = p
                .parse()
                .with_context(|| format!("{p:?} is not a port; use e.g. 80/tcp"))?;
            let req = Request::PolicyTrace {
                from,
                to,
                port,
                protocol: proto.into(),
            };
            // Any node knows every policy; ask one.
            let mut t = target.clone();
            if let (Some(dir), None) = (&t.lab, &t.node) {
                t.node = Some(Lab::load(dir)?.spec.nodes[0].name.clone());
            }
            let all: Vec<(String, strake_api::PolicyTraceView)> = ask(&t, req)?;
            let (_, trace) = &all[0];
            match target.output {
                Format::Json => println!("{}", serde_json::to_string_pretty(trace)?),
                Format::Text => print!("{}", output::trace(trace)),
            }
            if !trace.allowed {
                std::process::exit(2);
            }
        }
        Cmd::Wait { lab, timeout_secs } => {
            let lab = Lab::load(&lab)?;
            let t0 = std::time::Instant::now();
            lab.wait_synced(Duration::from_secs(timeout_secs))?;
            eprintln!(
                "{} nodes in sync ({} ms)",
                lab.spec.nodes.len(),
                t0.elapsed().as_millis()
            );
        }
        Cmd::Lab(l) => lab(l)?,
    }
    Ok(())
}

/// Sends `req` to the chosen agents; returns (node label, answer) pairs.
fn ask<T: serde::de::DeserializeOwned + Send + 'static>(
    t: &Target,
    req: Request,
) -> Result<Vec<(String, T)>> {
    match &t.lab {
        None => {
            let v = Client::new(&t.socket).call(&req).map_err(|e| anyhow!(e))?;
            Ok(vec![("local".into(), v)])
        }
        Some(dir) => {
            let lab = Lab::load(dir)?;
            let mut out = Vec::new();
            for n in &lab.spec.nodes {
                if t.node.as_ref().is_some_and(|x| *x != n.name) {
                    continue;
                }
                let v = lab
                    .agent(&n.name, req.clone())
                    .with_context(|| format!("node {}", n.name))?;
                out.push((n.name.clone(), v));
            }
            if out.is_empty() {
                bail!("no such node in lab {}", lab.name);
            }
            Ok(out)
        }
    }
}

/// `namespace/pod` or `node/<name>` to a namespace path.
fn netns_of(target: &str) -> Result<PathBuf> {
    let (a, b) = target
        .split_once('/')
        .ok_or_else(|| anyhow!("{target}: expected namespace/pod, node/<name> or ext/<name>"))?;
    let name = match a {
        "node" => Lab::node_netns_name(b),
        "ext" => Lab::ext_netns_name(b),
        _ => Lab::pod_netns_name(a, b),
    };
    let p = netns::path(&name);
    if !p.exists() {
        bail!("no network namespace {name} (is the lab up?)");
    }
    Ok(p)
}

fn lab(cmd: LabCmd) -> Result<()> {
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
            print!("{}", output::lab_summary(&lab));
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
            let ns = netns_of(&target)?;
            let args: Vec<&str> = command[1..].iter().map(|s| s.as_str()).collect();
            let out = strake_lab::procs::run_in_netns(&ns, &command[0], &args)?;
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
        LabCmd::Serve { name, tcp, udp } => strake_lab::serve::serve(&name, &tcp, &udp)?,
    }
    Ok(())
}
