//! Turning an RBD image into a local block device, behind one trait.
//!
//! | kind | device | who does the IO | when |
//! |---|---|---|---|
//! | `krbd` | `/dev/rbdN` | the kernel's rbd driver | `/sys/bus/rbd` exists: the production default |
//! | `rbd-nbd` | `/dev/nbdN` | an `rbd-nbd` daemon (librbd) | the nbd module is loaded and rbd-nbd installed |
//! | `fuse-loop` | `/dev/loopN` over a FUSE file | a `strake-rbd-fuse` daemon (librbd async IO; `rbd-fuse` selectable for comparison) | neither kernel path exists (CI, this repo's dev box) |
//!
//! Helpers (`rbd-nbd`, `strake-rbd-fuse`, `rbd-fuse`) daemonize themselves: they run in their own
//! session, re-parented to init, so they do not die with the node plugin. Their PID
//! and the device are recorded in the plugin's state dir, and a restarted plugin
//! re-adopts them (see `node::NodeService::adopt`). Credentials reach a helper through
//! a 0600 keyring file that is deleted as soon as the helper has authenticated.
use std::fmt;
use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::str::FromStr;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};
use strake_ceph::Credentials;

use crate::mount;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AttacherKind {
    Krbd,
    RbdNbd,
    FuseLoop,
}

impl fmt::Display for AttacherKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AttacherKind::Krbd => "krbd",
            AttacherKind::RbdNbd => "rbd-nbd",
            AttacherKind::FuseLoop => "fuse-loop",
        })
    }
}

impl FromStr for AttacherKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "krbd" => Ok(AttacherKind::Krbd),
            "rbd-nbd" | "nbd" => Ok(AttacherKind::RbdNbd),
            "fuse-loop" | "rbd-fuse" => Ok(AttacherKind::FuseLoop),
            _ => Err(format!("unknown attach path {s:?}; use krbd, rbd-nbd or fuse-loop")),
        }
    }
}

impl AttacherKind {
    pub const ALL: [AttacherKind; 3] = [AttacherKind::Krbd, AttacherKind::RbdNbd, AttacherKind::FuseLoop];

    /// Whether this node can use this path; Err says what is missing.
    pub fn available(self) -> Result<(), String> {
        match self {
            AttacherKind::Krbd => {
                if Path::new("/sys/bus/rbd").exists() {
                    Ok(())
                } else {
                    Err("the kernel has no rbd driver (/sys/bus/rbd is absent; modprobe rbd)".into())
                }
            }
            AttacherKind::RbdNbd => {
                if !Path::new("/sys/module/nbd").exists() && !Path::new("/dev/nbd0").exists() {
                    Err("the kernel has no nbd driver (/sys/module/nbd is absent; modprobe nbd)".into())
                } else if which("rbd-nbd").is_none() {
                    Err("rbd-nbd is not installed in the node plugin image".into())
                } else {
                    Ok(())
                }
            }
            AttacherKind::FuseLoop => {
                if !Path::new("/dev/fuse").exists() {
                    Err("/dev/fuse is absent".into())
                } else if strake_fuse_helper().is_none() && which("rbd-fuse").is_none() {
                    Err("no FUSE helper: strake-rbd-fuse is not next to strake-csi nor on PATH".into())
                } else if which("losetup").is_none() {
                    Err("losetup is not installed".into())
                } else {
                    Ok(())
                }
            }
        }
    }

    /// The best path this node offers: krbd, then rbd-nbd, then fuse-loop.
    pub fn auto() -> Option<AttacherKind> {
        AttacherKind::ALL.into_iter().find(|k| k.available().is_ok())
    }
}

pub fn which(bin: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(bin))
        .find(|p| p.is_file())
}

/// What to attach, and with which identity.
pub struct AttachRequest<'a> {
    pub pool: &'a str,
    pub image: &'a str,
    pub creds: &'a Credentials,
    pub conf: &'a Path,
    /// Per-volume directory in the plugin's state dir (keyring, fuse mountpoint, logs).
    pub dir: &'a Path,
    /// Reader-only access modes: the device refuses writes on every path (krbd and
    /// rbd-nbd map `--read-only`, fuse-loop attaches the loop device `-r`).
    pub read_only: bool,
    /// An encrypted volume's LUKS passphrase: fuse-loop hands it to strake-rbd-fuse
    /// over a pipe (`--passphrase-fd`), which loads librbd's encryption; the kernel
    /// paths leave the device encrypted for `crypt` to map.
    pub passphrase: Option<&'a [u8]>,
}

/// A live attachment, persisted in the volume's state file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    pub kind: AttacherKind,
    pub pool: String,
    pub image: String,
    pub device: PathBuf,
    /// The userspace helper (rbd-fuse, rbd-nbd), if any.
    #[serde(default)]
    pub helper_pid: Option<i32>,
    #[serde(default)]
    pub fuse_dir: Option<PathBuf>,
}

pub trait Attacher: Send + Sync {
    fn kind(&self) -> AttacherKind;
    /// Attaches (or finds the existing attachment of) the image. Blocking.
    fn attach(&self, req: &AttachRequest) -> Result<Attachment>;
    /// Detaches; succeeds if already detached. Blocking.
    fn detach(&self, a: &Attachment) -> Result<()>;
    /// Makes the device pick up a grown image.
    fn refresh_size(&self, a: &Attachment) -> Result<()>;
    /// None when healthy, else what is wrong (for logs, metrics and VolumeCondition).
    fn check(&self, a: &Attachment) -> Option<String>;
}

/// Which FUSE server the fuse-loop path runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FuseHelper {
    /// Ours (csi/rbd-fuse): librbd async IO, io_uring or worker-thread transport,
    /// discard, resize notifications, per-volume metrics.
    Strake,
    /// Debian's rbd-fuse: single-threaded, no discard. Kept for comparison.
    RbdFuse,
}

impl FromStr for FuseHelper {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "strake-rbd-fuse" => Ok(FuseHelper::Strake),
            "rbd-fuse" => Ok(FuseHelper::RbdFuse),
            _ => Err(format!("unknown FUSE helper {s:?}; use strake-rbd-fuse or rbd-fuse")),
        }
    }
}

/// Node-wide attach settings (flags of the node plugin).
#[derive(Debug, Clone, Copy)]
pub struct AttachOptions {
    /// fuse-loop: `losetup --direct-io=on` (no second copy of the data in the page
    /// cache of the FUSE file; costs readahead, see the benchmarks).
    pub fuse_loop_direct_io: bool,
    pub fuse_helper: FuseHelper,
    /// strake-rbd-fuse `--transport`: auto, io-uring or classic.
    pub fuse_transport: &'static str,
    /// strake-rbd-fuse `--queue-depth`.
    pub fuse_queue_depth: usize,
}

impl Default for AttachOptions {
    fn default() -> Self {
        AttachOptions {
            fuse_loop_direct_io: true,
            fuse_helper: FuseHelper::Strake,
            fuse_transport: "auto",
            fuse_queue_depth: 64,
        }
    }
}

/// The strake-rbd-fuse binary: `$STRAKE_RBD_FUSE`, else next to this executable
/// (where cargo and the image put it), else on PATH.
pub fn strake_fuse_helper() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("STRAKE_RBD_FUSE") {
        return Some(PathBuf::from(p));
    }
    let sibling = std::env::current_exe().ok()?.parent()?.join("strake-rbd-fuse");
    if sibling.is_file() {
        return Some(sibling);
    }
    which("strake-rbd-fuse")
}

/// Where a strake-rbd-fuse helper serves its per-volume counters (read by `metrics`).
pub fn fuse_stats_socket(volume_dir: &Path) -> PathBuf {
    volume_dir.join("rbd-fuse.sock")
}

pub fn attacher(kind: AttacherKind, opts: &AttachOptions) -> Box<dyn Attacher> {
    match kind {
        AttacherKind::Krbd => Box::new(Krbd),
        AttacherKind::RbdNbd => Box::new(RbdNbd),
        AttacherKind::FuseLoop => Box::new(FuseLoop { opts: *opts }),
    }
}

/// Runs a command, returning trimmed stdout; the error carries the command and stderr.
pub fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{:?} failed ({}): {}",
            cmd,
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Writes a 0600 keyring for `creds` and returns its path; the caller deletes it.
fn write_keyring(dir: &Path, creds: &Credentials) -> Result<PathBuf> {
    fs::create_dir_all(dir)?;
    let path = dir.join("keyring");
    let _ = fs::remove_file(&path);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)?;
    writeln!(f, "[client.{}]\n\tkey = {}", creds.user, creds.key())?;
    Ok(path)
}

/// Deletes the keyring when dropped, whatever happened in between.
struct KeyringFile(PathBuf);
impl Drop for KeyringFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

pub fn pid_alive(pid: i32) -> bool {
    // A zombie still answers kill(0); read its state instead.
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => s
            .rsplit_once(')')
            .map(|(_, rest)| !rest.trim_start().starts_with('Z'))
            .unwrap_or(false),
        Err(_) => false,
    }
}

fn cmdline(pid: i32) -> Vec<String> {
    fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            b.split(|c| *c == 0)
                .filter(|s| !s.is_empty())
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let t0 = Instant::now();
    loop {
        if f() {
            return true;
        }
        if t0.elapsed() > timeout {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Retries an operation that fails transiently with EBUSY right after an unmount
/// (seen with loop devices: docs/ceph-notes.md, item 2).
fn retry_busy<T>(what: &str, mut f: impl FnMut() -> Result<T>) -> Result<T> {
    let mut delay = Duration::from_millis(100);
    let t0 = Instant::now();
    loop {
        match f() {
            Ok(v) => return Ok(v),
            Err(e) if t0.elapsed() < Duration::from_secs(10) && format!("{e:#}").to_lowercase().contains("busy") => {
                tracing::debug!(what, error = %e, "busy; retrying");
                std::thread::sleep(delay);
                delay = (delay * 2).min(Duration::from_secs(1));
            }
            Err(e) => return Err(e),
        }
    }
}

// ---- fuse-loop ---------------------------------------------------------------------

/// A FUSE server exposes the image as a file; a loop device turns the file into a
/// block device.
pub struct FuseLoop {
    pub opts: AttachOptions,
}

/// The FUSE daemon (strake-rbd-fuse or rbd-fuse) serving `fuse_dir`, found by its
/// command line.
pub fn fuse_pid(fuse_dir: &Path) -> Option<i32> {
    FuseLoop::find_pid(fuse_dir)
}

impl FuseLoop {
    fn find_pid(fuse_dir: &Path) -> Option<i32> {
        let want = fuse_dir.to_string_lossy();
        fs::read_dir("/proc")
            .ok()?
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
            .find(|pid| {
                let c = cmdline(*pid);
                c.first().is_some_and(|a| a.ends_with("rbd-fuse"))
                    && c.iter().any(|a| a == want.as_ref())
                    && pid_alive(*pid)
            })
    }
}

/// The loop device whose backing file is `file`, if any.
pub fn loop_for_file(file: &Path) -> Option<PathBuf> {
    let want = file.to_string_lossy();
    for e in fs::read_dir("/sys/block").ok()?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with("loop") {
            continue;
        }
        if let Ok(b) = fs::read_to_string(e.path().join("loop/backing_file")) {
            if b.trim() == want {
                return Some(PathBuf::from(format!("/dev/{name}")));
            }
        }
    }
    None
}

/// The tail of a helper's log, for error messages.
fn log_tail(path: &Path) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let tail: Vec<&str> = text.lines().rev().take(5).collect();
    tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
}

impl FuseLoop {
    /// Starts strake-rbd-fuse; it returns once the mount serves (or says why not).
    /// The key travels over its stdin, never through a file or argv.
    fn start_strake(&self, req: &AttachRequest, fuse_dir: &Path) -> Result<i32> {
        let bin = strake_fuse_helper().ok_or_else(|| anyhow!("strake-rbd-fuse is not installed next to strake-csi"))?;
        let log_path = req.dir.join("rbd-fuse.log");
        let log = fs::OpenOptions::new().create(true).append(true).open(&log_path)?;
        let mut cmd = Command::new(&bin);
        cmd.arg("--conf")
            .arg(req.conf)
            .args([
                "--pool",
                req.pool,
                "--image",
                req.image,
                "--id",
                &req.creds.user,
                "--key-fd",
                "0",
            ])
            .args(["--transport", self.opts.fuse_transport])
            // Reader-only modes: librbd opens the image read-only (no exclusive lock,
            // every write refused) under the read-only loop device.
            .args(if req.read_only { &["--read-only"][..] } else { &[] })
            .args(if req.passphrase.is_some() {
                &["--encryption", "luks2", "--passphrase-fd", "3"][..]
            } else {
                &[]
            })
            .arg("--queue-depth")
            .arg(self.opts.fuse_queue_depth.to_string())
            .arg("--stats-socket")
            .arg(fuse_stats_socket(req.dir))
            .arg(fuse_dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log);
        // The passphrase on descriptor 3: a pipe the helper reads to EOF. Both ends
        // close on exec; the child gets the read end as 3 (dup2 clears close-on-exec).
        let pipe = match req.passphrase {
            Some(_) => Some(nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).context("a pipe for the passphrase")?),
            None => None,
        };
        if let Some((r, _)) = &pipe {
            let fd = std::os::fd::AsRawFd::as_raw_fd(r);
            unsafe {
                std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || {
                    let ok = if fd == 3 {
                        libc::fcntl(3, libc::F_SETFD, 0)
                    } else {
                        libc::dup2(fd, 3)
                    };
                    if ok < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let mut child = cmd.spawn().with_context(|| format!("starting {}", bin.display()))?;
        if let (Some((r, w)), Some(p)) = (pipe, req.passphrase) {
            drop(r);
            let mut w = std::fs::File::from(w);
            w.write_all(p).context("handing strake-rbd-fuse the passphrase")?;
        }
        if let Some(mut stdin) = child.stdin.take() {
            let _ = stdin.write_all(req.creds.key().as_bytes());
        }
        let out = child.wait_with_output().context("waiting for strake-rbd-fuse")?;
        let line = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if !out.status.success() {
            bail!(
                "strake-rbd-fuse for {}/{} failed ({}): {}",
                req.pool,
                req.image,
                out.status,
                log_tail(&log_path)
            );
        }
        let pid = line
            .split_whitespace()
            .find_map(|f| f.strip_prefix("pid=")?.parse::<i32>().ok())
            .ok_or_else(|| anyhow!("strake-rbd-fuse said {line:?}, not pid=..."))?;
        tracing::info!(pool = req.pool, image = req.image, helper = %line, "FUSE helper serving");
        Ok(pid)
    }

    /// Starts Debian's rbd-fuse (comparison only): it mounts, then daemonizes.
    fn start_rbd_fuse(&self, req: &AttachRequest, fuse_dir: &Path) -> Result<()> {
        if req.passphrase.is_some() {
            bail!("rbd-fuse cannot open encrypted volumes; use --fuse-helper strake-rbd-fuse");
        }
        let keyring = KeyringFile(write_keyring(req.dir, req.creds)?);
        let log_path = req.dir.join("rbd-fuse.log");
        let log = fs::OpenOptions::new().create(true).append(true).open(&log_path)?;
        let status = Command::new("rbd-fuse")
            .arg("-c")
            .arg(req.conf)
            .args(["-p", req.pool, "-r", req.image])
            .arg(fuse_dir)
            .env(
                "CEPH_ARGS",
                format!("--id {} --keyring {}", req.creds.user, keyring.0.display()),
            )
            .env_remove("CEPH_CONF")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .status()
            .context("starting rbd-fuse")?;
        if !status.success() {
            bail!(
                "rbd-fuse for {}/{} failed ({status}): {}",
                req.pool,
                req.image,
                log_tail(&log_path)
            );
        }
        // rbd-fuse reads the keyring while it mounts; remove it once the image file is there.
        let file = fuse_dir.join(req.image);
        wait_until(Duration::from_secs(15), || file.exists());
        drop(keyring);
        Ok(())
    }
}

impl Attacher for FuseLoop {
    fn kind(&self) -> AttacherKind {
        AttacherKind::FuseLoop
    }

    fn attach(&self, req: &AttachRequest) -> Result<Attachment> {
        let fuse_dir = req.dir.join("fuse");
        fs::create_dir_all(&fuse_dir)?;
        let file = fuse_dir.join(req.image);
        let mut pid = None;
        if !mount::is_mountpoint(&fuse_dir) {
            pid = match self.opts.fuse_helper {
                FuseHelper::Strake => Some(self.start_strake(req, &fuse_dir)?),
                FuseHelper::RbdFuse => {
                    self.start_rbd_fuse(req, &fuse_dir)?;
                    None
                }
            };
            if !wait_until(Duration::from_secs(15), || file.exists()) {
                bail!(
                    "the FUSE helper mounted {} but {} did not appear within 15 s",
                    fuse_dir.display(),
                    file.display()
                );
            }
        }
        let pid = pid.or_else(|| Self::find_pid(&fuse_dir));
        let device = match loop_for_file(&file) {
            Some(d) => d,
            None => {
                let mut cmd = Command::new("losetup");
                cmd.args(["--show", "-f"]);
                if req.read_only {
                    cmd.arg("--read-only");
                }
                if self.opts.fuse_loop_direct_io {
                    cmd.arg("--direct-io=on");
                }
                PathBuf::from(retry_busy("losetup", || run(cmd.arg(&file)))?)
            }
        };
        Ok(Attachment {
            kind: AttacherKind::FuseLoop,
            pool: req.pool.into(),
            image: req.image.into(),
            device,
            helper_pid: pid,
            fuse_dir: Some(fuse_dir),
        })
    }

    fn detach(&self, a: &Attachment) -> Result<()> {
        let fuse_dir = a
            .fuse_dir
            .clone()
            .ok_or_else(|| anyhow!("fuse-loop attachment without fuse_dir"))?;
        let file = fuse_dir.join(&a.image);
        // Order is forced: loop first (it holds the FUSE file open), then the FUSE mount.
        if let Some(dev) = loop_for_file(&file) {
            retry_busy("losetup -d", || run(Command::new("losetup").arg("-d").arg(&dev)))?;
            wait_until(Duration::from_secs(5), || loop_for_file(&file).is_none());
        }
        if mount::is_mountpoint(&fuse_dir) {
            retry_busy("umount fuse", || mount::umount(&fuse_dir))?;
        }
        // The helper exits once unmounted; make sure, so it releases its watch.
        let pid = a.helper_pid.or_else(|| Self::find_pid(&fuse_dir));
        if let Some(pid) = pid {
            if !wait_until(Duration::from_secs(5), || !pid_alive(pid))
                && cmdline(pid).first().is_some_and(|c| c.ends_with("rbd-fuse"))
            {
                tracing::warn!(pid, "the FUSE helper did not exit after unmount: SIGTERM");
                unsafe { libc::kill(pid, libc::SIGTERM) };
            }
        }
        Ok(())
    }

    fn refresh_size(&self, a: &Attachment) -> Result<()> {
        // The FUSE file's size follows the image (strake-rbd-fuse is told by an RBD
        // header watch); a stat makes the kernel fetch it, and the loop device needs telling.
        if let Some(d) = &a.fuse_dir {
            let _ = fs::metadata(d.join(&a.image));
        }
        run(Command::new("losetup").arg("-c").arg(&a.device)).map(|_| ())
    }

    fn check(&self, a: &Attachment) -> Option<String> {
        let fuse_dir = a.fuse_dir.as_ref()?;
        match a.helper_pid {
            Some(pid) if pid_alive(pid) => {}
            Some(pid) => {
                return Some(format!(
                "FUSE helper (pid {pid}) for {}/{} is gone: IO on {} fails until the volume is unstaged and staged again",
                a.pool,
                a.image,
                a.device.display()
            ))
            }
            None => return Some("FUSE helper pid unknown".into()),
        }
        if !mount::is_mountpoint(fuse_dir) {
            return Some(format!("FUSE mount {} is gone", fuse_dir.display()));
        }
        if loop_for_file(&fuse_dir.join(&a.image)).as_deref() != Some(a.device.as_path()) {
            return Some(format!(
                "loop device {} no longer backs {}",
                a.device.display(),
                a.image
            ));
        }
        None
    }
}

// ---- krbd --------------------------------------------------------------------------

/// The kernel rbd driver, through `rbd device map` (as ceph-csi does): IO stays in
/// the kernel, nothing runs in the plugin's container, restarts cannot hurt it.
pub struct Krbd;

fn rbd_device_list(tool: &str) -> Vec<serde_json::Value> {
    let out = match tool {
        "rbd-nbd" => run(Command::new("rbd-nbd").args(["list-mapped", "--format", "json"])),
        _ => run(Command::new("rbd").args(["device", "list", "--format", "json"])),
    };
    out.ok()
        .and_then(|o| serde_json::from_str::<Vec<serde_json::Value>>(&o).ok())
        .unwrap_or_default()
}

fn find_mapped(tool: &str, pool: &str, image: &str) -> Option<(PathBuf, Option<i32>)> {
    rbd_device_list(tool)
        .into_iter()
        .find(|d| d["pool"] == pool && d["name"].as_str().or(d["image"].as_str()) == Some(image))
        .and_then(|d| {
            Some((
                PathBuf::from(d["device"].as_str()?),
                d["pid"].as_i64().map(|p| p as i32),
            ))
        })
}

impl Attacher for Krbd {
    fn kind(&self) -> AttacherKind {
        AttacherKind::Krbd
    }

    fn attach(&self, req: &AttachRequest) -> Result<Attachment> {
        if let Some((dev, _)) = find_mapped("rbd", req.pool, req.image) {
            return Ok(Attachment {
                kind: AttacherKind::Krbd,
                pool: req.pool.into(),
                image: req.image.into(),
                device: dev,
                helper_pid: None,
                fuse_dir: None,
            });
        }
        let keyring = KeyringFile(write_keyring(req.dir, req.creds)?);
        let mut cmd = Command::new("rbd");
        if req.read_only {
            cmd.arg("--read-only");
        }
        // A Ceph client of its own per mapping (the kernel shares one otherwise), so
        // fencing one volume's client (ControllerUnpublishVolume) cuts only that volume.
        cmd.args(["--options", "noshare"]);
        let dev = run(cmd
            .args(["device", "map", "--pool", req.pool, "--id", &req.creds.user])
            .arg("--keyring")
            .arg(&keyring.0)
            .arg("-c")
            .arg(req.conf)
            .arg(req.image))?;
        Ok(Attachment {
            kind: AttacherKind::Krbd,
            pool: req.pool.into(),
            image: req.image.into(),
            device: PathBuf::from(dev),
            helper_pid: None,
            fuse_dir: None,
        })
    }

    fn detach(&self, a: &Attachment) -> Result<()> {
        if find_mapped("rbd", &a.pool, &a.image).is_some() {
            retry_busy("rbd device unmap", || {
                run(Command::new("rbd").args(["device", "unmap"]).arg(&a.device))
            })?;
        }
        Ok(())
    }

    fn refresh_size(&self, _: &Attachment) -> Result<()> {
        Ok(()) // krbd follows image resizes by itself
    }

    fn check(&self, a: &Attachment) -> Option<String> {
        (!a.device.exists()).then(|| format!("{} is gone", a.device.display()))
    }
}

// ---- rbd-nbd -----------------------------------------------------------------------

/// librbd in an `rbd-nbd` daemon serving the kernel's nbd driver. The daemon must
/// outlive the plugin's container: see the README for how to deploy it.
pub struct RbdNbd;

impl Attacher for RbdNbd {
    fn kind(&self) -> AttacherKind {
        AttacherKind::RbdNbd
    }

    fn attach(&self, req: &AttachRequest) -> Result<Attachment> {
        if let Some((dev, pid)) = find_mapped("rbd-nbd", req.pool, req.image) {
            return Ok(Attachment {
                kind: AttacherKind::RbdNbd,
                pool: req.pool.into(),
                image: req.image.into(),
                device: dev,
                helper_pid: pid,
                fuse_dir: None,
            });
        }
        let keyring = KeyringFile(write_keyring(req.dir, req.creds)?);
        let mut cmd = Command::new("rbd-nbd");
        if req.read_only {
            cmd.arg("--read-only");
        }
        let dev = run(cmd
            .args(["map", "--id", &req.creds.user])
            .arg("--keyring")
            .arg(&keyring.0)
            .arg("-c")
            .arg(req.conf)
            .arg(format!("{}/{}", req.pool, req.image)))?;
        let pid = find_mapped("rbd-nbd", req.pool, req.image).and_then(|(_, p)| p);
        Ok(Attachment {
            kind: AttacherKind::RbdNbd,
            pool: req.pool.into(),
            image: req.image.into(),
            device: PathBuf::from(dev),
            helper_pid: pid,
            fuse_dir: None,
        })
    }

    fn detach(&self, a: &Attachment) -> Result<()> {
        if find_mapped("rbd-nbd", &a.pool, &a.image).is_some() {
            retry_busy("rbd-nbd unmap", || {
                run(Command::new("rbd-nbd").arg("unmap").arg(&a.device))
            })?;
        }
        Ok(())
    }

    fn refresh_size(&self, _: &Attachment) -> Result<()> {
        Ok(()) // rbd-nbd watches the image header and resizes the nbd device
    }

    fn check(&self, a: &Attachment) -> Option<String> {
        match a.helper_pid {
            Some(pid) if pid_alive(pid) => None,
            Some(pid) => Some(format!("rbd-nbd (pid {pid}) serving {} is gone", a.device.display())),
            None => None,
        }
    }
}
