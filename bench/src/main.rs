//! strake-bench: every figure a ratio against a baseline measured in the same
//! run on the same machine, with the absolute numbers beside it (these
//! machines are shared and noisy). Results land in bench/results/ as JSON,
//! Markdown and PNG.

mod bgp;
mod cni;
mod kube_rules;
mod lb;
mod lb_control;
mod lb_packet;
mod net;
mod policy;
mod report;
mod rr;
mod sock_lb;
mod trust;

use anyhow::Result;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "strake-bench", about = "strake benchmarks (run as root)")]
struct Cli {
    /// Where results go.
    #[arg(long, default_value = "bench/results", global = true)]
    out: PathBuf,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Pod-to-pod TCP throughput and request/response, same node and across
    /// nodes: strake vs plain kernel routing.
    Net {
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        #[arg(long, default_value_t = 5)]
        secs: u64,
        /// Pin client and servers to this CPU (the machine is shared).
        #[arg(long)]
        cpu: Option<usize>,
    },
    /// Across racks: pod-to-pod TCP throughput and request/response routed
    /// by BGP vs the VXLAN fallback vs plain kernel routing; convergence of
    /// a new Node and of a Service endpoint.
    Bgp {
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        #[arg(long, default_value_t = 5)]
        secs: u64,
        /// Pin client and server to this CPU (the machine is shared).
        #[arg(long)]
        cpu: Option<usize>,
    },
    /// CNI ADD and DEL latency, sequential and parallel.
    Cni {
        #[arg(long, default_value_t = 100)]
        pods: usize,
        #[arg(long, default_value_t = 20)]
        parallel: usize,
    },
    /// Service traffic through a VIP (TCP connections/s, request/response,
    /// UDP packets/s): strake vs kube-proxy's iptables and nftables rules.
    Lb {
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        #[arg(long, default_value_t = 3)]
        secs: u64,
        /// Numbers of Services installed, comma-separated.
        #[arg(long, default_value = "10,5000", value_delimiter = ',')]
        scales: Vec<usize>,
        /// Pin clients and backend servers to this CPU.
        #[arg(long)]
        cpu: Option<usize>,
    },
    /// Socket-level load balancing: pod -> ClusterIP (TCP_RR, TCP_CRR, UDP)
    /// through the socket hooks vs pod -> pod directly, vs the per-packet
    /// path and vs nftables; host network -> ClusterIP CRR vs nftables.
    SockLb {
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        #[arg(long, default_value_t = 3)]
        secs: u64,
        /// Pin clients and backend servers to this CPU.
        #[arg(long)]
        cpu: Option<usize>,
    },
    /// Nanoseconds per packet of the load balancer's programs
    /// (BPF_PROG_TEST_RUN): table hits and new flows.
    LbPacket {
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        #[arg(long, default_value_t = 1_000_000)]
        repeat: u32,
        #[arg(long, default_value_t = 5000)]
        new_flows: u32,
    },
    /// Installing 1k/10k/50k Services and changing one: strake's agent vs
    /// iptables-restore and nft -f of kube-proxy's rules.
    LbControl {
        #[arg(long, default_value = "1000,10000,50000", value_delimiter = ',')]
        scales: Vec<usize>,
        #[arg(long, default_value_t = 10)]
        backends: usize,
        #[arg(long, default_value_t = 2)]
        rounds: usize,
        /// Stop a baseline's restore after this long (reported as a lower bound).
        #[arg(long, default_value_t = 300)]
        limit_secs: u64,
    },
    /// NetworkPolicy: pod-to-pod rates with 0/1k/10k rules selecting the
    /// pods, and time from writing policies to enforcement on every node.
    Policy {
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        #[arg(long, default_value_t = 3)]
        secs: u64,
        #[arg(long, default_value = "0,1000,10000", value_delimiter = ',')]
        rules: Vec<usize>,
    },
    /// Nanoseconds per packet of the trust checks (BPF_PROG_TEST_RUN): the
    /// uplink's reverse-path check and the health-check wrap, each against
    /// the same program without it.
    Trust {
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        #[arg(long, default_value_t = 20_000)]
        runs: u32,
    },
    /// The 64-byte request/response server (run inside a pod).
    #[command(hide = true)]
    RrServer {
        #[arg(long)]
        port: u16,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let r: Result<()> = match cli.cmd {
        Cmd::Net { rounds, secs, cpu } => net::run(&net::Opts { rounds, secs, cpu }, &cli.out),
        Cmd::Bgp { rounds, secs, cpu } => bgp::run(&bgp::Opts { rounds, secs, cpu }, &cli.out),
        Cmd::Cni { pods, parallel } => cni::run(pods, parallel, &cli.out),
        Cmd::Lb {
            rounds,
            secs,
            scales,
            cpu,
        } => lb::run(
            &lb::Opts {
                rounds,
                secs,
                scales,
                cpu,
            },
            &cli.out,
        ),
        Cmd::SockLb { rounds, secs, cpu } => {
            sock_lb::run(&sock_lb::Opts { rounds, secs, cpu }, &cli.out)
        }
        Cmd::LbPacket {
            rounds,
            repeat,
            new_flows,
        } => lb_packet::run(
            &lb_packet::Opts {
                rounds,
                repeat,
                new_flows,
            },
            &cli.out,
        ),
        Cmd::LbControl {
            scales,
            backends,
            rounds,
            limit_secs,
        } => lb_control::run(
            &lb_control::Opts {
                scales,
                backends,
                rounds,
                limit_secs,
            },
            &cli.out,
        ),
        Cmd::Policy {
            rounds,
            secs,
            rules,
        } => policy::run(
            &policy::Opts {
                rounds,
                secs,
                rules,
            },
            &cli.out,
        ),
        Cmd::Trust { rounds, runs } => trust::run(&trust::Opts { rounds, runs }, &cli.out),
        Cmd::RrServer { port } => rr::server(port),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("strake-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}
