//! The `strake-rbd-fuse` command (its binary is built by the strake-csi package, next
//! to `strake-csi`, which starts it): mounts RBD images as files. By default it
//! daemonizes once the mount is serving, prints `pid=<pid> transport=<io-uring|classic>`
//! and exits 0, or prints why it could not and exits 1, so a caller knows the outcome
//! when the command returns. See docs/rbd-fuse.md.
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use clap::{Parser, ValueEnum};
use strake_ceph::{Cluster, ConnectOptions, Credentials, Encryption, EncryptionFormat, UpdateWatch};

use crate::fs::{Fs, Volume};
use crate::session::{self, MountOptions};
use crate::{classic, secret, stats, uring};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Transport {
    /// io_uring when the kernel offers it (enable_uring=Y), else classic.
    Auto,
    /// FUSE-over-io_uring; fail if the kernel does not offer it.
    IoUring,
    /// Worker threads reading /dev/fuse.
    Classic,
}

#[derive(Parser, Debug)]
#[command(
    name = "strake-rbd-fuse",
    about = "Serve RBD images as files of a FUSE filesystem (librbd async IO, FUSE-over-io_uring)",
    after_help = "Secrets are taken only from descriptors or owner-only files on a tmpfs, never from \
                  arguments or the environment. Unmount the directory (after detaching any loop \
                  device) to stop the server; SIGTERM unmounts when nothing holds a file open."
)]
struct Args {
    /// Directory to mount on; each image appears in it as a file of the same name.
    mountpoint: PathBuf,
    /// ceph.conf with the monitors' addresses.
    #[arg(long, default_value = "/etc/ceph/ceph.conf")]
    conf: PathBuf,
    /// RBD pool of the images.
    #[arg(long)]
    pool: String,
    /// Image to serve; repeat for several.
    #[arg(long = "image", required = true)]
    images: Vec<String>,
    /// cephx user, without the `client.` prefix.
    #[arg(long, default_value = "admin")]
    id: String,
    /// Read the user's base64 key from this inherited descriptor (until EOF).
    #[arg(long, conflicts_with = "keyring")]
    key_fd: Option<i32>,
    /// Read the user's key from this keyring file (0600, owned by us).
    #[arg(long)]
    keyring: Option<PathBuf>,
    /// Open the images read-only: librbd refuses writes, the files are mode 0400,
    /// the mount is read-only, and no exclusive lock is taken.
    #[arg(long)]
    read_only: bool,
    /// Load LUKS encryption (librbd's own) on every image before serving it.
    #[arg(long, value_parser = parse_format)]
    encryption: Option<EncryptionFormat>,
    /// Read the LUKS passphrase from this inherited descriptor (until EOF, bytes as-is).
    #[arg(long, requires = "encryption", conflicts_with = "passphrase_file")]
    passphrase_fd: Option<i32>,
    /// Read the LUKS passphrase from this file: owner-only, on a tmpfs or ramfs.
    #[arg(long, requires = "encryption")]
    passphrase_file: Option<PathBuf>,
    /// How requests reach the server.
    #[arg(long, value_enum, default_value = "auto")]
    transport: Transport,
    /// Ring entries per io_uring queue (one queue per CPU), or request buffers of
    /// the classic transport: the most requests in flight.
    #[arg(long, default_value_t = 64)]
    queue_depth: usize,
    /// Pin each io_uring queue thread to the CPU whose requests it serves. Helps on
    /// big idle hosts; on small shared ones (2 cores with an OSD) it can leave a
    /// queue waiting for its busy CPU while the other idles, so it is off by default.
    #[arg(long)]
    pin_queues: bool,
    /// Reader threads of the classic transport.
    #[arg(long, default_value_t = 4)]
    threads: usize,
    /// Serve per-volume counters as JSON on this unix socket.
    #[arg(long)]
    stats_socket: Option<PathBuf>,
    /// Bound for connecting and for each cluster operation, in seconds.
    #[arg(long, default_value_t = 30)]
    ceph_timeout_secs: u64,
    /// Stay in the foreground instead of daemonizing once the mount serves.
    #[arg(long)]
    foreground: bool,
    #[arg(long, default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
}

fn parse_format(s: &str) -> Result<EncryptionFormat, String> {
    s.parse()
}

/// What the server tells the waiting parent: one line.
struct Ready(Option<OwnedFd>);

impl Ready {
    fn send(&mut self, line: &str) {
        if let Some(fd) = self.0.take() {
            let mut f = std::fs::File::from(fd);
            let _ = f.write_all(line.as_bytes());
        }
    }
}

/// Runs the command with the process's arguments; never returns on failure.
pub fn main() {
    let args = Args::parse();
    // Secrets are read before anything else, so a bad descriptor fails right here.
    let secrets = match read_secrets(&args) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("strake-rbd-fuse: {e:#}");
            std::process::exit(1);
        }
    };
    let ready = if args.foreground {
        Ready(None)
    } else {
        // Fork before librados starts its threads; the parent only waits for the line.
        match daemonize() {
            Ok(r) => r,
            Err(e) => {
                eprintln!("strake-rbd-fuse: {e:#}");
                std::process::exit(1);
            }
        }
    };
    init_logging(&args.log_format);
    let mut ready = ready;
    if let Err(e) = serve(args, secrets, &mut ready) {
        tracing::error!(error = format!("{e:#}"), "strake-rbd-fuse failed");
        ready.send(&format!("error {e:#}\n"));
        std::process::exit(1);
    }
}

fn init_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("STRAKE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        b.json().init();
    } else {
        b.init();
    }
}

struct Secrets {
    key: Option<String>,
    encryption: Option<Encryption>,
}

fn read_secrets(a: &Args) -> Result<Secrets> {
    let key = match (&a.key_fd, &a.keyring) {
        (Some(fd), _) => {
            let mut raw = secret::from_fd(*fd, "--key-fd")?;
            let k = String::from_utf8(raw.clone()).context("--key-fd: the key is not text")?;
            secret::wipe(&mut raw);
            Some(k.trim().to_string())
        }
        (None, Some(path)) => {
            let mut raw = secret::from_private_file(path, "--keyring", false)?;
            let k = secret::key_from_keyring(&String::from_utf8_lossy(&raw), &a.id);
            secret::wipe(&mut raw);
            Some(k?)
        }
        (None, None) => None, // the conf file's own keyring (an admin on a dev box)
    };
    let encryption = match a.encryption {
        None => None,
        Some(format) => {
            let pass = match (&a.passphrase_fd, &a.passphrase_file) {
                (Some(fd), _) => secret::from_fd(*fd, "--passphrase-fd")?,
                (None, Some(p)) => secret::from_private_file(p, "--passphrase-file", true)?,
                (None, None) => bail!("--encryption needs --passphrase-fd or --passphrase-file"),
            };
            if pass.is_empty() {
                bail!("the LUKS passphrase is empty");
            }
            Some(Encryption::new(format, pass))
        }
    };
    Ok(Secrets { key, encryption })
}

/// Forks; the parent waits for the child's ready line, prints it and exits.
fn daemonize() -> Result<Ready> {
    let (r, w) = nix::unistd::pipe().context("pipe")?;
    match unsafe { nix::unistd::fork() }.context("fork")? {
        nix::unistd::ForkResult::Parent { .. } => {
            drop(w);
            let mut line = String::new();
            let _ = std::fs::File::from(r).read_to_string(&mut line);
            let line = line.trim();
            if let Some(rest) = line.strip_prefix("ready ") {
                println!("{rest}");
                std::process::exit(0);
            }
            let why = line
                .strip_prefix("error ")
                .unwrap_or("the server exited before it was ready");
            eprintln!("strake-rbd-fuse: {why}");
            std::process::exit(1);
        }
        nix::unistd::ForkResult::Child => {
            drop(r);
            nix::unistd::setsid().context("setsid")?;
            // stdin is not ours to keep, and stdout belongs to the parent's one line
            // (a caller reading it until EOF must not wait for us): both go, and our
            // output is stderr only (the caller's log file).
            let null = std::fs::File::open("/dev/null")?;
            unsafe {
                libc::dup2(null.as_raw_fd(), 0);
                libc::dup2(2, 1);
            }
            Ok(Ready(Some(w)))
        }
    }
}

/// Signals handled by a dedicated thread; blocked everywhere else (set before any
/// thread starts, so librados's threads inherit the mask).
fn block_signals() -> nix::sys::signal::SigSet {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    for s in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        set.add(s);
    }
    let _ = set.thread_block();
    set
}

fn serve(a: Args, secrets: Secrets, ready: &mut Ready) -> Result<()> {
    let sigs = block_signals();
    let want_uring = match a.transport {
        Transport::Classic => false,
        Transport::Auto => crate::uring_enabled(),
        Transport::IoUring => {
            if !crate::uring_enabled() {
                bail!(
                    "--transport io-uring: the kernel's FUSE-over-io_uring is off; enable it with `echo Y > {}` (Linux 6.14+, CONFIG_FUSE_IO_URING) or use --transport auto",
                    crate::ENABLE_URING_PARAM
                );
            }
            true
        }
    };
    if is_mountpoint(&a.mountpoint) {
        bail!("{} is already a mount point; unmount it first", a.mountpoint.display());
    }
    let cluster = Cluster::connect(&ConnectOptions {
        conf: a.conf.clone(),
        credentials: secrets.key.map(|k| Credentials::new(a.id.clone(), k)),
        op_timeout: Duration::from_secs(a.ceph_timeout_secs),
    })
    .with_context(|| format!("connecting to the cluster as client.{}", a.id))?;
    let io = cluster.ioctx(&a.pool)?;
    let mut volumes = Vec::new();
    for name in &a.images {
        let image = if a.read_only {
            io.open_read_only(name)
        } else {
            io.open(name)
        }
        .with_context(|| format!("opening {}/{name}", a.pool))?;
        if let Some(enc) = &secrets.encryption {
            image.encryption_load(enc).map_err(|e| {
                anyhow!(
                    "loading {:?} encryption on {}/{name}: {e} ({})",
                    enc.format,
                    a.pool,
                    if e.errno == libc::EPERM {
                        "wrong passphrase"
                    } else {
                        "is the image formatted with that LUKS version?"
                    }
                )
            })?;
        }
        volumes.push(Volume {
            pool: a.pool.clone(),
            image_name: name.clone(),
            image,
            read_only: a.read_only,
            stats: Default::default(),
        });
    }
    drop(secrets.encryption); // wipes the passphrase
    let fs = Fs::new(volumes);

    let ch = Arc::new(session::mount(&MountOptions {
        mountpoint: a.mountpoint.clone(),
        fsname: format!("{}/{}", a.pool, a.images.join("+")),
        read_only: a.read_only,
    })?);
    // From here on a failure must not leave the mount behind.
    let started = start_transports(&a, &ch, &fs, want_uring);
    let (transport, mut threads) = match started {
        Ok(t) => t,
        Err(e) => {
            let _ = session::unmount(&a.mountpoint, true);
            return Err(e);
        }
    };

    // A resize (ControllerExpandVolume) changes the image header: tell the kernel at
    // once so the next stat / `losetup -c` sees the new size, without a remount.
    let mut watches: Vec<(usize, UpdateWatch)> = Vec::new();
    for (i, v) in fs.volumes.iter().enumerate() {
        let (ch2, ino) = (ch.clone(), i as u64 + 2);
        match v.image.watch_updates(Box::new(move || ch2.notify_inval_inode(ino))) {
            Ok(w) => watches.push((i, w)),
            Err(e) => {
                tracing::warn!(image = v.image_name, error = %e, "no header watch: a resize shows up within the 1 s attribute timeout")
            }
        }
    }

    if let Some(path) = &a.stats_socket {
        // A weak reference, so the images can be closed at unmount (see below).
        let (fs2, t) = (Arc::downgrade(&fs), transport);
        stats::serve(
            path,
            Arc::new(move || stats::Snapshot {
                pid: std::process::id(),
                volumes: fs2
                    .upgrade()
                    .map(|fs| {
                        fs.volumes
                            .iter()
                            .map(|v| v.stats.snapshot(&v.pool, &v.image_name, t, v.read_only))
                            .collect()
                    })
                    .unwrap_or_default(),
            }),
        )
        .unwrap_or_else(|e| tracing::warn!(socket = %path.display(), error = %e, "no stats socket: this volume's IO metrics are not exported"));
    }

    let mp = a.mountpoint.clone();
    let signals = std::thread::Builder::new().name("signals".into()).spawn(move || loop {
        let Ok(sig) = sigs.wait() else { continue };
        match session::unmount(&mp, false) {
            Ok(()) => tracing::info!(signal = ?sig, "unmounted on signal"),
            Err(e) => tracing::warn!(signal = ?sig, error = %e, "not unmounting: the file is still in use (detach the loop device first); still serving"),
        }
    });
    if let Err(e) = signals {
        let _ = session::unmount(&a.mountpoint, true);
        return Err(anyhow!("starting the signal thread: {e}"));
    }

    tracing::info!(
        pool = a.pool,
        images = ?a.images,
        mountpoint = %a.mountpoint.display(),
        transport,
        read_only = a.read_only,
        encrypted = a.encryption.is_some(),
        "serving"
    );
    ready.send(&format!("ready pid={} transport={transport}\n", std::process::id()));

    // Transports end when the filesystem is unmounted.
    for t in threads.drain(..) {
        let _ = t.join();
    }
    for (i, w) in watches {
        let _ = fs.volumes[i].image.unwatch_updates(w);
    }
    for v in &fs.volumes {
        if !v.read_only {
            if let Err(e) = v.image.flush() {
                tracing::error!(image = v.image_name, error = %e, "final flush failed");
            }
        }
    }
    tracing::info!(mountpoint = %a.mountpoint.display(), "unmounted; closing the images");
    // Closing (rbd_close) removes the image's watch and releases its exclusive lock at
    // once; a process that merely exits leaves both to time out on the OSD (30 s), and
    // DeleteVolume would refuse the image meanwhile.
    match Arc::try_unwrap(fs) {
        Ok(fs) => drop(fs),
        Err(_) => tracing::warn!("images still referenced at exit; their watches expire on the OSD instead"),
    }
    Ok(())
}

type Threads = Vec<std::thread::JoinHandle<()>>;

fn start_transports(
    a: &Args,
    ch: &Arc<session::Channel>,
    fs: &Arc<Fs>,
    want_uring: bool,
) -> Result<(&'static str, Threads)> {
    let neg = session::handshake(ch, want_uring)?;
    if neg.uring {
        // FORGET and INTERRUPT stay on /dev/fuse even with io_uring: one reader.
        let mut threads = classic::start(ch.clone(), fs.clone(), 1, 4)?;
        match uring::start(ch.clone(), fs.clone(), a.queue_depth, a.pin_queues) {
            Ok(q) => {
                threads.extend(q.threads);
                return Ok(("io-uring", threads));
            }
            Err(e) if a.transport == Transport::IoUring => return Err(e.context("registering io_uring queues")),
            Err(e) => {
                // The kernel went back to /dev/fuse when the registration failed.
                tracing::warn!(
                    error = format!("{e:#}"),
                    "FUSE-over-io_uring unavailable; serving /dev/fuse with worker threads"
                );
                threads.extend(classic::start(ch.clone(), fs.clone(), a.threads, a.queue_depth)?);
                return Ok(("classic", threads));
            }
        }
    }
    if want_uring && !neg.uring_offered {
        tracing::info!("the kernel did not offer FUSE-over-io_uring; serving /dev/fuse with worker threads");
    }
    Ok((
        "classic",
        classic::start(ch.clone(), fs.clone(), a.threads, a.queue_depth)?,
    ))
}

fn is_mountpoint(p: &std::path::Path) -> bool {
    let want = match std::fs::canonicalize(p) {
        Ok(c) => c,
        Err(_) => return false,
    };
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|m| std::path::Path::new(&m.replace("\\040", " ")) == want)
}
