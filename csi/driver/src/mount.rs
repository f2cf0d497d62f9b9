//! Mount table queries, mounts, filesystems. Blocking helpers for the node service.
use std::fs;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use nix::mount::{mount, umount2, MntFlags, MsFlags};

use crate::attach::run;

/// Decodes the octal escapes (`\040` for space, ...) of /proc/self/mountinfo.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            out.push(u8::from_str_radix(&s[i + 1..i + 4], 8).unwrap_or(b'?'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// (mount point, source, fs type) of every mount.
pub fn mounts() -> Vec<(PathBuf, String, String)> {
    let Ok(t) = fs::read_to_string("/proc/self/mountinfo") else {
        return vec![];
    };
    t.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            let dash = f.iter().position(|x| *x == "-")?;
            Some((
                PathBuf::from(unescape(f.get(4)?)),
                unescape(f.get(dash + 2)?),
                f.get(dash + 1)?.to_string(),
            ))
        })
        .collect()
}

pub fn is_mountpoint(p: &Path) -> bool {
    let p = fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    mounts().iter().any(|(m, _, _)| *m == p)
}

/// Unmounts; not mounted counts as success.
pub fn umount(p: &Path) -> Result<()> {
    if !is_mountpoint(p) {
        return Ok(());
    }
    umount2(p, MntFlags::empty()).with_context(|| format!("unmounting {} (device or resource busy?)", p.display()))
}

/// Bind-mounts `src` on `target`, read-only if asked (a second remount is needed for
/// MS_RDONLY to apply to a bind mount).
pub fn bind(src: &Path, target: &Path, readonly: bool) -> Result<()> {
    mount(Some(src), target, None::<&str>, MsFlags::MS_BIND, None::<&str>)
        .with_context(|| format!("bind-mounting {} on {}", src.display(), target.display()))?;
    if readonly {
        if let Err(e) = mount(
            None::<&str>,
            target,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
            None::<&str>,
        ) {
            let _ = umount2(target, MntFlags::empty());
            return Err(e).with_context(|| format!("remounting {} read-only", target.display()));
        }
    }
    Ok(())
}

/// Filesystem type on a device, None if it holds none (blkid exit status 2).
pub fn fs_type(dev: &Path) -> Result<Option<String>> {
    let out = Command::new("blkid")
        .args(["-p", "-s", "TYPE", "-o", "value"])
        .arg(dev)
        .output()
        .context("running blkid")?;
    match out.status.code() {
        Some(0) => Ok(Some(String::from_utf8_lossy(&out.stdout).trim().to_string()).filter(|s| !s.is_empty())),
        Some(2) => Ok(None),
        _ => bail!(
            "blkid {} failed: {}",
            dev.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ),
    }
}

pub fn mkfs(dev: &Path, fs: &str) -> Result<()> {
    let mut cmd = match fs {
        // nodiscard: the first-use discard of a fresh RBD image is pure waste (it is
        // already thin); lazy init keeps mkfs at ~0.2 s whatever the size.
        "ext4" => {
            let mut c = Command::new("mkfs.ext4");
            c.args(["-q", "-m0", "-E", "nodiscard,lazy_itable_init=1,lazy_journal_init=1"]);
            c
        }
        "xfs" => {
            let mut c = Command::new("mkfs.xfs");
            c.args(["-q", "-K"]);
            c
        }
        other => bail!("unsupported filesystem {other}"),
    };
    run(cmd.arg(dev)).map(|_| ())
}

pub fn mount_fs(dev: &Path, target: &Path, fs: &str, flags: &[String], readonly: bool) -> Result<()> {
    let mut opts: Vec<String> = flags.to_vec();
    if fs == "xfs" && !opts.iter().any(|o| o == "nouuid") {
        // Clones and restores carry their source's XFS UUID; without nouuid the
        // second one mounted on a node is refused.
        opts.push("nouuid".into());
    }
    if readonly {
        opts.push("ro".into());
    }
    let mut cmd = Command::new("mount");
    cmd.args(["-t", fs]);
    if !opts.is_empty() {
        cmd.args(["-o", &opts.join(",")]);
    }
    run(cmd.arg(dev).arg(target)).map(|_| ())
}

/// Size in bytes of a block device (or of the device behind a bind-mounted node).
pub fn device_size(dev: &Path) -> Result<u64> {
    nix::ioctl_read!(blkgetsize64, 0x12, 114, u64);
    let f = fs::File::open(dev).with_context(|| format!("opening {}", dev.display()))?;
    let mut size: u64 = 0;
    unsafe { blkgetsize64(std::os::fd::AsRawFd::as_raw_fd(&f), &mut size) }
        .with_context(|| format!("BLKGETSIZE64 on {}", dev.display()))?;
    Ok(size)
}

pub fn is_block_device(p: &Path) -> bool {
    fs::metadata(p)
        .map(|m| m.file_type().is_block_device())
        .unwrap_or(false)
}

/// Size of the ext4 filesystem on an unmounted or mounted device (dumpe2fs -h).
pub fn ext4_size(dev: &Path) -> Result<u64> {
    let out = run(Command::new("dumpe2fs").arg("-h").arg(dev))?;
    let field = |name: &str| -> Option<u64> {
        out.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split(':').nth(1))
            .and_then(|v| v.trim().parse().ok())
    };
    match (field("Block count"), field("Block size")) {
        (Some(c), Some(s)) => Ok(c * s),
        _ => bail!("cannot read the ext4 size of {}", dev.display()),
    }
}

/// Grows an unmounted ext4 to fill its device (offline: needs no CAP_SYS_RESOURCE).
pub fn grow_ext4_offline(dev: &Path) -> Result<()> {
    // e2fsck exit 1 = errors corrected, fine; >= 4 is a real problem.
    let st = Command::new("e2fsck")
        .args(["-f", "-p"])
        .arg(dev)
        .output()
        .context("running e2fsck")?;
    if st.status.code().unwrap_or(8) >= 4 {
        bail!(
            "e2fsck -f -p {} failed: {}",
            dev.display(),
            String::from_utf8_lossy(&st.stdout).trim()
        );
    }
    run(Command::new("resize2fs").arg(dev)).map(|_| ())
}

pub enum GrowError {
    /// Online ext4 growth needs CAP_SYS_RESOURCE, which the plugin lacks.
    NeedsOffline(String),
    Other(anyhow::Error),
}

/// Grows a mounted filesystem online.
pub fn grow_online(fs: &str, dev: &Path, mountpoint: &Path) -> std::result::Result<(), GrowError> {
    match fs {
        "xfs" => run(Command::new("xfs_growfs").arg("-d").arg(mountpoint))
            .map(|_| ())
            .map_err(GrowError::Other),
        "ext4" => match run(Command::new("resize2fs").arg(dev)) {
            Ok(_) => Ok(()),
            Err(e)
                if format!("{e:#}").contains("Permission denied")
                    || format!("{e:#}").contains("Operation not permitted") =>
            {
                Err(GrowError::NeedsOffline(format!("{e:#}")))
            }
            Err(e) => Err(GrowError::Other(e)),
        },
        other => Err(GrowError::Other(anyhow::anyhow!("cannot grow {other}"))),
    }
}
