//! Network namespaces: create and delete named ones the way `ip netns` does
//! (a bind mount under /run/netns), and run code inside one.
//!
//! Entering is per thread (`setns` affects only the calling thread), so
//! [`run_in`] spawns a thread for the closure; the caller's thread never moves.
//! We never use `ip netns exec`: it remounts /sys, which hides bpffs.

use anyhow::{bail, Context, Result};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};
use std::fs::{self, File, OpenOptions};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

pub const NETNS_DIR: &str = "/run/netns";

/// Path of a named network namespace.
pub fn path(name: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(name)
}

pub fn exists(name: &str) -> bool {
    path(name).exists()
}

/// Makes /run/netns a shared mount point so namespace mounts made here are
/// seen by every mount namespace (what `ip netns add` does).
fn prepare_dir() -> Result<()> {
    fs::create_dir_all(NETNS_DIR).context("creating /run/netns")?;
    let shared = || {
        mount(
            None::<&str>,
            NETNS_DIR,
            None::<&str>,
            MsFlags::MS_SHARED | MsFlags::MS_REC,
            None::<&str>,
        )
    };
    if shared().is_err() {
        mount(
            Some(NETNS_DIR),
            NETNS_DIR,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
        .context("bind-mounting /run/netns onto itself")?;
        shared().context("making /run/netns a shared mount")?;
    }
    Ok(())
}

/// Creates the named namespace. Fails if it already exists.
pub fn create(name: &str) -> Result<PathBuf> {
    let target = path(name);
    if target.exists() {
        bail!("network namespace {name} already exists");
    }
    if !is_mountpoint(Path::new(NETNS_DIR)) {
        prepare_dir()?;
    }
    File::create(&target).with_context(|| format!("creating {}", target.display()))?;
    let t = target.clone();
    let result = std::thread::spawn(move || -> Result<()> {
        unshare(CloneFlags::CLONE_NEWNET).context("unshare(CLONE_NEWNET)")?;
        mount(
            Some("/proc/thread-self/ns/net"),
            &t,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .with_context(|| format!("bind-mounting the new namespace onto {}", t.display()))?;
        Ok(())
    })
    .join()
    .expect("netns creation thread panicked");
    if let Err(e) = result {
        let _ = fs::remove_file(&target);
        return Err(e);
    }
    Ok(target)
}

/// Deletes the named namespace if it exists. The namespace itself lives on
/// while processes or open fds still hold it.
pub fn delete(name: &str) -> Result<()> {
    let target = path(name);
    if !target.exists() {
        return Ok(());
    }
    let _ = umount2(&target, MntFlags::MNT_DETACH);
    fs::remove_file(&target).with_context(|| format!("removing {}", target.display()))?;
    Ok(())
}

/// Names of all namespaces under /run/netns.
pub fn list() -> Vec<String> {
    fs::read_dir(NETNS_DIR)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn is_mountpoint(p: &Path) -> bool {
    fs::read_to_string("/proc/self/mountinfo")
        .map(|m| {
            m.lines()
                .any(|l| l.split(' ').nth(4) == Some(&*p.to_string_lossy()))
        })
        .unwrap_or(false)
}

/// Moves the calling thread into the namespace at `netns` (a path such as
/// /run/netns/x or /proc/PID/ns/net).
pub fn enter(netns: &Path) -> Result<()> {
    let f = OpenOptions::new()
        .read(true)
        .open(netns)
        .with_context(|| format!("opening network namespace {}", netns.display()))?;
    setns(f.as_fd(), CloneFlags::CLONE_NEWNET)
        .with_context(|| format!("entering network namespace {}", netns.display()))?;
    Ok(())
}

/// Runs `f` on a fresh thread inside the namespace at `netns`.
pub fn run_in<F, R>(netns: &Path, f: F) -> Result<R>
where
    F: FnOnce() -> Result<R> + Send + 'static,
    R: Send + 'static,
{
    let netns = netns.to_path_buf();
    std::thread::spawn(move || {
        enter(&netns)?;
        f()
    })
    .join()
    .map_err(|_| anyhow::anyhow!("thread inside a network namespace panicked"))?
}

/// The kernel's cookie of the network namespace at `netns`
/// (SO_NETNS_COOKIE of a socket made inside it): what BPF programs see as
/// `bpf_get_netns_cookie`. Stable for the namespace's life.
pub fn cookie(netns: &Path) -> Result<u64> {
    run_in(netns, current_cookie)
}

/// The cookie of the calling thread's network namespace.
pub fn current_cookie() -> Result<u64> {
    const SO_NETNS_COOKIE: libc::c_int = 71;
    // SAFETY: a plain socket, closed below; getsockopt writes at most
    // `len` bytes into `v`.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error()).context("socket() for SO_NETNS_COOKIE");
        }
        let mut v: u64 = 0;
        let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
        let r = libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            &mut v as *mut u64 as *mut libc::c_void,
            &mut len,
        );
        let err = std::io::Error::last_os_error();
        libc::close(fd);
        if r != 0 {
            return Err(err).context("getsockopt(SO_NETNS_COOKIE) (kernel 5.14 or later)");
        }
        Ok(v)
    }
}

/// Runs an async closure with a netlink connection inside the namespace at
/// `netns`, on a dedicated thread with its own single-threaded runtime.
pub fn with_netlink_in<F, Fut, R>(netns: &Path, f: F) -> Result<R>
where
    F: FnOnce(crate::Netlink) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<R>>,
    R: Send + 'static,
{
    run_in(netns, move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("building a runtime")?;
        rt.block_on(async move {
            let nl = crate::Netlink::connect()?;
            f(nl).await
        })
    })
}

/// Writes a sysctl of the calling thread's network namespace, e.g.
/// `net/ipv4/ip_forward`.
pub fn sysctl(key: &str, value: &str) -> Result<()> {
    let p = Path::new("/proc/sys").join(key);
    fs::write(&p, value).with_context(|| format!("setting sysctl {key}={value}"))
}

/// Turns IPv6 off on an interface of the calling thread's namespace: no
/// router advertisements taken, no autoconfigured address, nothing IPv6
/// received. A no-op on kernels without IPv6.
pub fn disable_ipv6(ifname: &str) -> Result<()> {
    if !Path::new("/proc/sys/net/ipv6/conf").join(ifname).exists() {
        return Ok(());
    }
    for (k, v) in [("accept_ra", "0"), ("autoconf", "0"), ("disable_ipv6", "1")] {
        sysctl(&format!("net/ipv6/conf/{ifname}/{k}"), v)?;
    }
    Ok(())
}
