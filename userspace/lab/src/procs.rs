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
    spawn_in(netns, None, program, args, &[], log)
}

/// [`spawn_in_netns`], also moving the process into the cgroup v2
/// directory `cgroup` before it runs anything (so every socket it makes
/// is under that cgroup's hooks), with `env` added to the caller's
/// environment.
pub fn spawn_in(
    netns: &Path,
    cgroup: Option<&Path>,
    program: &Path,
    args: &[String],
    env: &[(String, String)],
    log: &Path,
) -> Result<u32> {
    let ns = File::open(netns).with_context(|| format!("opening {}", netns.display()))?;
    let cg = open_cgroup_procs(cgroup)?;
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("opening {}", log.display()))?;
    let err = out.try_clone()?;
    let mut cmd = Command::new(program);
    cmd.args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
    // SAFETY: setns, setsid and write are async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            join_cgroup(cg.as_ref())?;
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
    run_in(netns, None, program, args)
}

/// [`run_in_netns`], in the cgroup v2 directory `cgroup` when given.
pub fn run_in(
    netns: &Path,
    cgroup: Option<&Path>,
    program: &str,
    args: &[&str],
) -> Result<std::process::Output> {
    let ns = File::open(netns).with_context(|| format!("opening {}", netns.display()))?;
    let cg = open_cgroup_procs(cgroup)?;
    let mut cmd = Command::new(program);
    cmd.args(args).stdin(Stdio::null());
    // SAFETY: setns and write are async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            join_cgroup(cg.as_ref())?;
            nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(std::io::Error::from)
        });
    }
    cmd.output().with_context(|| format!("running {program}"))
}

/// `cgroup.procs` of a cgroup, opened before the fork (the child may only
/// write after it).
fn open_cgroup_procs(cgroup: Option<&Path>) -> Result<Option<File>> {
    cgroup
        .map(|c| {
            let p = c.join("cgroup.procs");
            std::fs::OpenOptions::new()
                .write(true)
                .open(&p)
                .with_context(|| format!("opening {}", p.display()))
        })
        .transpose()
}

/// In the child, before exec: "0" moves the writing process itself.
fn join_cgroup(procs: Option<&File>) -> std::io::Result<()> {
    if let Some(f) = procs {
        use std::os::fd::AsRawFd;
        // SAFETY: write(2) of a static buffer to an open descriptor.
        if unsafe { libc::write(f.as_raw_fd(), b"0".as_ptr().cast(), 1) } != 1 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// PIDs in a cgroup v2 directory and all below it.
pub fn pids_in_cgroup(cgroup: &Path) -> Vec<u32> {
    let mut out: Vec<u32> = std::fs::read_to_string(cgroup.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    if let Ok(rd) = std::fs::read_dir(cgroup) {
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                out.extend(pids_in_cgroup(&e.path()));
            }
        }
    }
    out
}

/// Removes a cgroup v2 directory and everything below it, stopping what
/// still runs there first (a cgroup with processes cannot be removed).
pub fn remove_cgroup(cgroup: &Path) -> Result<()> {
    if !cgroup.exists() {
        return Ok(());
    }
    let me = std::process::id();
    let pids: Vec<u32> = pids_in_cgroup(cgroup)
        .into_iter()
        .filter(|p| *p != me)
        .collect();
    stop(&pids, Duration::from_secs(3));
    remove_cgroup_dirs(cgroup).with_context(|| format!("removing cgroup {}", cgroup.display()))
}

fn remove_cgroup_dirs(cgroup: &Path) -> std::io::Result<()> {
    for e in std::fs::read_dir(cgroup)?.flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            remove_cgroup_dirs(&e.path())?;
        }
    }
    // A process just reaped may linger in cgroup.procs a moment.
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        match std::fs::remove_dir(cgroup) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(e),
        }
    }
}
