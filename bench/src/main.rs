//! strake-bench: every figure a ratio against a baseline measured in the same
//! run on the same machine, with the absolute numbers beside it (these
//! machines are shared and noisy). Results land in bench/results/ as JSON,
//! Markdown and PNG.

mod cni;
mod net;
mod report;
mod rr;

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
    /// CNI ADD and DEL latency, sequential and parallel.
    Cni {
        #[arg(long, default_value_t = 100)]
        pods: usize,
        #[arg(long, default_value_t = 20)]
        parallel: usize,
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
        Cmd::Cni { pods, parallel } => cni::run(pods, parallel, &cli.out),
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
