//! Processes of the lab: started inside a namespace, found again by the
//! namespace they run in, stopped.

use anyhow::{Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::fs::File;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Where strake's binaries are: `$STRAKE_BIN_DIR`, or beside the running
/// executable (also when that is a test binary under target/*/deps).
pub fn bin_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("STRAKE_BIN_DIR") {
        return PathBuf::from(d);
    }
    let exe = std::env::current_exe().unwrap_or_default();
    let dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.file_name().is_some_and(|n| n == "deps") {
        return dir.parent().map(Path::to_path_buf).unwrap_or(dir);
    }
    dir
}

pub fn bin(name: &str) -> Result<PathBuf> {
    let p = bin_dir().join(name);
    if !p.is_file() {
        anyhow::bail!(
            "{} not found; build it first (cargo build --bins) or set STRAKE_BIN_DIR",
            p.display()
        );
    }
    Ok(p)
}

/// Starts `program` in the network namespace `netns`, in a session of its
/// own (so it outlives whoever started it), with output appended to `log`.
/// A thread reaps it when it exits, so a killed process does not linger as a
/// zombie of a long-lived caller (a test).
pub fn spawn_in_netns(netns: &Path, program: &Path, args: &[String], log: &Path) -> Result<u32> {
    let ns = File::open(netns).with_context(|| format!("opening {}", netns.display()))?;
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("opening {}", log.display()))?;
    let err = out.try_clone()?;
    let mut cmd = Command::new(program);
    cmd.args(args).stdin(Stdio::null()).stdout(out).stderr(err);
    // SAFETY: setns and setsid are async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(std::io::Error::from)?;
            nix::unistd::setsid().map_err(std::io::Error::from)?;
            // Nothing the caller holds may outlive it in a lab daemon: an
            // inherited descriptor (`flock LOCK strake lab up` passes its
            // lock's) would keep the caller's lock held by the agents and
            // BIRDs until `lab down`. Close-on-exec for all but stdio.
            if libc::close_range(3, u32::MAX, libc::CLOSE_RANGE_CLOEXEC as libc::c_int) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting {}", program.display()))?;
    let pid = child.id();
    std::thread::spawn(move || {
        let _ = child.wait();
    });
    Ok(pid)
}

/// Whether a process is alive (and not a zombie).
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => s
            .rsplit_once(')')
            .map(|(_, rest)| !rest.trim_start().starts_with('Z'))
            .unwrap_or(false),
        Err(_) => false,
    }
}

/// PIDs of all processes whose network namespace is the one at `netns`.
pub fn pids_in_netns(netns: &Path) -> Vec<u32> {
    let Ok(target) = std::fs::metadata(netns) else {
        return vec![];
    };
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in rd.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if let Ok(m) = std::fs::metadata(format!("/proc/{pid}/ns/net")) {
            if m.ino() == target.ino() && m.dev() == target.dev() && pid != std::process::id() {
                out.push(pid);
            }
        }
    }
    out
}

/// SIGTERM, then SIGKILL after `grace`; returns once they are gone.
pub fn stop(pids: &[u32], grace: Duration) {
    for &p in pids {
        let _ = kill(Pid::from_raw(p as i32), Signal::SIGTERM);
    }
    let deadline = Instant::now() + grace;
    while pids.iter().any(|&p| alive(p)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    for &p in pids.iter().filter(|&&p| alive(p)) {
        let _ = kill(Pid::from_raw(p as i32), Signal::SIGKILL);
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    while pids.iter().any(|&p| alive(p)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Runs a command in a namespace and waits for it.
pub fn run_in_netns(netns: &Path, program: &str, args: &[&str]) -> Result<std::process::Output> {
    let ns = File::open(netns).with_context(|| format!("opening {}", netns.display()))?;
    let mut cmd = Command::new(program);
    cmd.args(args).stdin(Stdio::null());
    // SAFETY: setns is async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(std::io::Error::from)
        });
    }
    cmd.output().with_context(|| format!("running {program}"))
}
