//! Making sure a bpffs is mounted where we pin.

use anyhow::{bail, Context, Result};
use nix::mount::{mount, MsFlags};
use nix::sys::statfs::{statfs, BPF_FS_MAGIC};
use std::path::Path;
use std::sync::Mutex;

/// Ensures `root` lies on a bpffs and exists. Mounts one at /sys/fs/bpf when
/// nothing is mounted there (hosts without systemd, fresh containers).
pub fn ensure_bpffs(root: &Path) -> Result<()> {
    // Two loaders in one process must not both mount (the second mount would
    // hide what the first one pinned).
    static MOUNT: Mutex<()> = Mutex::new(());
    let _guard = MOUNT.lock().unwrap_or_else(|e| e.into_inner());
    let base = Path::new("/sys/fs/bpf");
    if root.starts_with(base) && !on_bpffs(base) {
        std::fs::create_dir_all(base).ok();
        mount(
            Some("bpf"),
            base,
            Some("bpf"),
            MsFlags::empty(),
            None::<&str>,
        )
        .context("mounting bpffs at /sys/fs/bpf")?;
    }
    std::fs::create_dir_all(root).with_context(|| format!("creating {}", root.display()))?;
    if !on_bpffs(root) {
        bail!(
            "{} is not on a bpffs: mount one (mount -t bpf bpf {}) or choose a --bpffs-root under /sys/fs/bpf",
            root.display(),
            root.display()
        );
    }
    Ok(())
}

fn on_bpffs(p: &Path) -> bool {
    statfs(p)
        .map(|s| s.filesystem_type() == BPF_FS_MAGIC)
        .unwrap_or(false)
}
