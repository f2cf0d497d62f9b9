//! `strake`: what an operator runs on a node when something is off, and the
//! front door to the local lab.

mod output;

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;
use strake_api::{AgentStatus, Client, EndpointView, Request, SyncPoint};
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
    /// Wait until the node's agent (or every agent of --lab) has applied
    /// what its desired-state source holds now; says which phase holds it
    /// back, and why, while it waits.
    Wait {
        #[command(flatten)]
        target: Target,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 30)]
        timeout_secs: u64,
    },
    /// The load balancer: services, frontends, backends, health, counters.
    #[command(subcommand)]
    Lb(LbCmd),
    /// BGP: sessions and routes of each node's BIRD.
    #[command(subcommand)]
    Bgp(BgpCmd),
    /// The connection table: each flow's entries, state, backend and NAT
    /// port; removing flows.
    #[command(subcommand)]
    Ct(CtCmd),
    /// A simulated multi-node cluster in network namespaces (runs
    /// `strake-lab`; see `strake lab --help`).
    #[command(disable_help_flag = true)]
    Lab {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
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
enum BgpCmd {
    /// Sessions: peer, AS, state, uptime, prefixes received and sent; what
    /// the node announces; resources refused.
    Peers(Target),
    /// Routes BIRD holds: learned (best marked) and announced.
    Routes(Target),
}

/// Which connection-table entries; every option given must match.
#[derive(Args, Clone)]
struct CtSelect {
    /// Any address of the entry: source, destination, client, frontend or
    /// backend.
    #[arg(long)]
    addr: Option<std::net::Ipv4Addr>,
    /// The source address of the packets the entry matches.
    #[arg(long)]
    src: Option<std::net::Ipv4Addr>,
    /// Their destination address.
    #[arg(long)]
    dst: Option<std::net::Ipv4Addr>,
    /// Any port of the entry (source, destination, client, frontend,
    /// backend, SNAT).
    #[arg(long)]
    port: Option<u16>,
    /// tcp, udp, icmp, sctp or a protocol number.
    #[arg(long)]
    proto: Option<String>,
    /// service, reply or policy.
    #[arg(long)]
    kind: Option<String>,
}

impl CtSelect {
    fn filter(&self) -> strake_api::CtFilter {
        strake_api::CtFilter {
            addr: self.addr,
            src: self.src,
            dst: self.dst,
            port: self.port,
            proto: self.proto.clone(),
            kind: self.kind.clone(),
        }
    }
}

#[derive(Subcommand)]
enum CtCmd {
    /// Entries per node, with the flow's state, idle time and expiry.
    List {
        #[command(flatten)]
        select: CtSelect,
        #[command(flatten)]
        target: Target,
    },
    /// Remove the selected flows (service and reply entries together, so
    /// SNAT ports are free again); their next packets start new flows, with
    /// a new backend choice. Without a filter, needs --all.
    Flush {
        #[command(flatten)]
        select: CtSelect,
        /// Remove every flow of the node (every translated connection
        /// through it breaks).
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        target: Target,
    },
}

#[derive(Subcommand)]
enum LbCmd {
    /// Services with their frontends and backends, per node.
    List(Target),
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
        Cmd::Bgp(BgpCmd::Peers(t)) => {
            let all: Vec<(String, strake_api::BgpStatus)> = ask(&t, Request::Bgp)?;
            match t.output {
                Format::Json => {
                    let v: serde_json::Map<String, serde_json::Value> = all
                        .into_iter()
                        .map(|(n, s)| (n, serde_json::to_value(s).unwrap()))
                        .collect();
                    println!("{}", serde_json::to_string_pretty(&v)?)
                }
                Format::Text => {
                    for (n, s) in &all {
                        print!("{}", output::bgp_peers(n, s));
                    }
                }
            }
        }
        Cmd::Bgp(BgpCmd::Routes(t)) => {
            let all: Vec<(String, Vec<strake_api::BgpRouteView>)> = ask(&t, Request::BgpRoutes)?;
            match t.output {
                Format::Json => {
                    let v: serde_json::Map<String, serde_json::Value> = all
                        .into_iter()
                        .map(|(n, r)| (n, serde_json::to_value(r).unwrap()))
                        .collect();
                    println!("{}", serde_json::to_string_pretty(&v)?)
                }
                Format::Text => {
                    for (n, r) in &all {
                        print!("{}", output::bgp_routes(n, r));
                    }
                }
            }
        }
        Cmd::Ct(CtCmd::List { select, target }) => {
            let req = Request::CtList {
                filter: select.filter(),
            };
            let all: Vec<(String, strake_api::CtListView)> = ask(&target, req)?;
            match target.output {
                Format::Json => println!(
                    "{}",
                    serde_json::to_string_pretty(&all.iter().map(|(_, v)| v).collect::<Vec<_>>())?
                ),
                Format::Text => {
                    for (_, v) in &all {
                        print!("{}", output::ct(v));
                    }
                }
            }
        }
        Cmd::Ct(CtCmd::Flush {
            select,
            all,
            target,
        }) => {
            let filter = select.filter();
            if filter == strake_api::CtFilter::default() && !all {
                bail!("no filter given: name the flows (--addr, --src, --dst, --port, --proto, --kind), or pass --all to remove every flow");
            }
            let done: Vec<(String, strake_api::CtFlushView)> =
                ask(&target, Request::CtFlush { filter })?;
            match target.output {
                Format::Json => println!(
                    "{}",
                    serde_json::to_string_pretty(&done.iter().map(|(_, v)| v).collect::<Vec<_>>())?
                ),
                Format::Text => {
                    for (_, v) in &done {
                        println!("node {}: {} entries removed", v.node, v.removed);
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
                t.node = lab_nodes(dir)?.into_iter().next().map(|(n, _)| n);
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
        Cmd::Wait {
            target,
            timeout_secs,
        } => {
            let t0 = std::time::Instant::now();
            let deadline = t0 + Duration::from_secs(timeout_secs);
            let nodes = nodes(&target)?;
            for (name, call) in &nodes {
                let point: SyncPoint = call.call(Request::SyncPoint)?;
                let mut said = String::new();
                loop {
                    let st: AgentStatus = call.call(Request::Status)?;
                    let why = match st.reached(&point) {
                        Ok(()) => break,
                        Err(why) => why,
                    };
                    // Said again only when it changes, not as retries
                    // count down.
                    let gist = strake_api::wait_reason(
                        st.synced,
                        st.source_position,
                        st.source_revision,
                        st.applied_revision,
                        &st.phases,
                        &point,
                        false,
                    )
                    .err()
                    .unwrap_or_default();
                    if gist != said {
                        eprintln!("{name}: waiting: {why}");
                        said = gist;
                    }
                    if std::time::Instant::now() > deadline {
                        bail!("{name} has not applied the latest desired state after {timeout_secs} s: {why}");
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
            eprintln!(
                "{} in sync ({} ms)",
                if nodes.len() == 1 {
                    "node".to_string()
                } else {
                    format!("{} nodes", nodes.len())
                },
                t0.elapsed().as_millis()
            );
        }
        Cmd::Lab { args } => return lab(args),
    }
    Ok(())
}

/// Calls one agent.
type Call = Box<dyn Fn(Request) -> Result<serde_json::Value>>;

/// The agents a target names: the local one, or a lab's (all, or --node).
fn nodes(t: &Target) -> Result<Vec<(String, TypedCall)>> {
    let Some(dir) = &t.lab else {
        let socket = t.socket.clone();
        let call: Call =
            Box::new(move |req| Client::new(&socket).call(&req).map_err(|e| anyhow!(e)));
        return Ok(vec![("local".into(), TypedCall(call))]);
    };
    let mut out = Vec::new();
    for (name, ns) in lab_nodes(dir)? {
        if t.node.as_ref().is_some_and(|x| *x != name) {
            continue;
        }
        let socket = t.socket.clone();
        let label = name.clone();
        let call: Call = Box::new(move |req| {
            let socket = socket.clone();
            netns::run_in(&ns, move || {
                Client::new(&socket)
                    .with_timeout(Duration::from_secs(30))
                    .call(&req)
                    .map_err(|e| anyhow!(e))
            })
            .with_context(|| format!("node {label}"))
        });
        out.push((name, TypedCall(call)));
    }
    if out.is_empty() {
        bail!("no such node in the lab at {}", dir.display());
    }
    Ok(out)
}

struct TypedCall(Call);

impl TypedCall {
    fn call<T: serde::de::DeserializeOwned>(&self, req: Request) -> Result<T> {
        Ok(serde_json::from_value((self.0)(req)?)?)
    }
}

/// Sends `req` to the chosen agents; returns (node label, answer) pairs.
fn ask<T: serde::de::DeserializeOwned>(t: &Target, req: Request) -> Result<Vec<(String, T)>> {
    nodes(t)?
        .into_iter()
        .map(|(n, c)| Ok((n, c.call(req.clone())?)))
        .collect()
}

/// The nodes of a running lab and the namespaces their agents listen in,
/// from the index the lab keeps (`strake-lab` writes it at `up`).
fn lab_nodes(dir: &Path) -> Result<Vec<(String, PathBuf)>> {
    let want = dir
        .canonicalize()
        .with_context(|| format!("lab directory {}", dir.display()))?;
    #[derive(serde::Deserialize)]
    struct Node {
        name: String,
        netns: PathBuf,
    }
    #[derive(serde::Deserialize)]
    struct Index {
        dir: PathBuf,
        nodes: Vec<Node>,
    }
    for e in std::fs::read_dir(LABS_ROOT).into_iter().flatten().flatten() {
        let Ok(bytes) = std::fs::read(e.path().join("lab.json")) else {
            continue;
        };
        if let Ok(ix) = serde_json::from_slice::<Index>(&bytes) {
            if ix.dir == want {
                return Ok(ix.nodes.into_iter().map(|n| (n.name, n.netns)).collect());
            }
        }
    }
    bail!(
        "no running lab for {} (no {LABS_ROOT}/*/lab.json names it); start it with `strake lab up {}`",
        want.display(),
        dir.display()
    )
}

/// Where labs keep their state (the lab's own constant; the CLI does not
/// link the lab).
const LABS_ROOT: &str = "/var/lib/strake-lab";

/// `strake lab ARGS`: runs `strake-lab ARGS`, found beside this binary or
/// in PATH.
fn lab(args: Vec<String>) -> Result<()> {
    use std::os::unix::process::CommandExt;
    let beside = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(|d| d.join("strake-lab")))
        .filter(|p| p.exists());
    let program = beside.unwrap_or_else(|| PathBuf::from("strake-lab"));
    let err = std::process::Command::new(&program).args(&args).exec();
    bail!(
        "cannot run {}: {err} (build it with `cargo build -p strake-lab`)",
        program.display()
    )
}
