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

/// What low-level probing finds on a device: `blkid -p` reads the device itself (no
/// cache) for filesystem and other signatures (LUKS, LVM, swap, RAID) and for
/// partition tables.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Probe {
    /// `TYPE`: a filesystem or another content signature (`crypto_LUKS`, `LVM2_member`, ...).
    pub content: Option<String>,
    /// `PTTYPE`: a partition table (`dos`, `gpt`, ...).
    pub partition_table: Option<String>,
}

impl Probe {
    pub fn is_empty(&self) -> bool {
        self.content.is_none() && self.partition_table.is_none()
    }
}

/// Probes `dev` (blkid exit status 2 means it found nothing at all). Any other
/// failure, including blkid's "ambivalent result" (several signatures), is an error:
/// the caller must then not format.
pub fn probe(dev: &Path) -> Result<Probe> {
    let out = Command::new("blkid")
        .args(["-p", "-o", "export"])
        .arg(dev)
        .output()
        .context("running blkid")?;
    match out.status.code() {
        Some(0) => Ok(parse_probe(&String::from_utf8_lossy(&out.stdout))),
        Some(2) => Ok(Probe::default()),
        _ => bail!(
            "blkid -p {} failed ({}): {}",
            dev.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ),
    }
}

fn parse_probe(export: &str) -> Probe {
    let get = |key: &str| {
        export
            .lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_string)
    };
    Probe {
        content: get("TYPE"),
        partition_table: get("PTTYPE"),
    }
}

/// Filesystem type on a device, None if it holds none.
pub fn fs_type(dev: &Path) -> Result<Option<String>> {
    Ok(probe(dev)?.content)
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

/// Mounts a filesystem. Read-only mounts never write to the device: `ro` first, and
/// when the filesystem needs log recovery (a crash-consistent snapshot's restore,
/// say), which a read-only device cannot do, `norecovery` (xfs) or `noload` (ext4):
/// the filesystem is then seen as of its last checkpoint.
pub fn mount_fs(dev: &Path, target: &Path, fs: &str, flags: &[String], readonly: bool) -> Result<()> {
    // A requested `rw` must not undo a read-only mount.
    let mut opts: Vec<String> = flags.iter().filter(|o| !(readonly && *o == "rw")).cloned().collect();
    if fs == "xfs" && !opts.iter().any(|o| o == "nouuid") {
        // Clones and restores carry their source's XFS UUID; without nouuid the
        // second one mounted on a node is refused.
        opts.push("nouuid".into());
    }
    if readonly {
        opts.push("ro".into());
    }
    let attempt = |opts: &[String]| {
        let mut cmd = Command::new("mount");
        cmd.args(["-t", fs]);
        if !opts.is_empty() {
            cmd.args(["-o", &opts.join(",")]);
        }
        run(cmd.arg(dev).arg(target)).map(|_| ())
    };
    match attempt(&opts) {
        Err(first) if readonly => {
            opts.push(if fs == "xfs" { "norecovery" } else { "noload" }.into());
            tracing::info!(device = %dev.display(), error = %first, "read-only mount failed; retrying without log recovery");
            attempt(&opts).with_context(|| format!("first attempt: {first:#}"))
        }
        r => r,
    }
}

/// Whether `target` is mounted read-only (the `ro` option in /proc/self/mountinfo).
pub fn is_read_only(target: &Path) -> bool {
    let target = fs::canonicalize(target).unwrap_or_else(|_| target.to_path_buf());
    let Ok(t) = fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    t.lines().any(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        f.get(4).map(|m| PathBuf::from(unescape(m))) == Some(target.clone())
            && f.get(5).is_some_and(|o| o.split(',').any(|x| x == "ro"))
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blkid_export_is_read_for_content_and_partition_tables() {
        assert_eq!(parse_probe(""), Probe::default());
        let p = parse_probe("DEVNAME=/dev/loop3\nPTUUID=1234abcd\nPTTYPE=dos\n");
        assert_eq!(p.partition_table.as_deref(), Some("dos"));
        assert_eq!(p.content, None);
        assert!(!p.is_empty());
        let p = parse_probe("DEVNAME=/dev/loop3\nUUID=x\nBLOCK_SIZE=4096\nTYPE=ext4\n");
        assert_eq!(p.content.as_deref(), Some("ext4"));
        // PART_ENTRY_TYPE and PTUUID must not be mistaken for TYPE / PTTYPE.
        let p = parse_probe("PART_ENTRY_TYPE=0x83\nPTUUID=9\n");
        assert!(p.is_empty(), "{p:?}");
    }
}
