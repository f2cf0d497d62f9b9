//! dm-crypt for the kernel attach paths (krbd, rbd-nbd): the RBD device holds the
//! LUKS2 header librbd wrote at CreateVolume (cryptsetup-compatible), and `cryptsetup`
//! maps the decrypted payload at `/dev/mapper/<name>`, as ceph-csi does. The
//! passphrase reaches cryptsetup on its stdin, never argv or a file. fuse-loop does not
//! come here: strake-rbd-fuse loads the encryption in librbd itself.
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

/// Whether this node can map dm-crypt devices.
pub fn available() -> Result<(), String> {
    if !Path::new("/dev/mapper/control").exists() {
        return Err(
            "the kernel has no device-mapper (/dev/mapper/control is absent): encrypted volumes \
                    need it on krbd and rbd-nbd; fuse-loop decrypts in librbd instead"
                .into(),
        );
    }
    if crate::attach::which("cryptsetup").is_none() {
        return Err("cryptsetup is not installed in the node plugin image".into());
    }
    Ok(())
}

/// The mapping name of a volume's image.
pub fn name(image: &str) -> String {
    format!("strake-{image}")
}

pub fn mapped(name: &str) -> PathBuf {
    PathBuf::from(format!("/dev/mapper/{name}"))
}

fn cryptsetup(args: &[&str], passphrase: Option<&[u8]>) -> Result<()> {
    let mut child = Command::new("cryptsetup")
        .args(args)
        .stdin(if passphrase.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting cryptsetup")?;
    if let (Some(p), Some(mut stdin)) = (passphrase, child.stdin.take()) {
        stdin.write_all(p).context("handing cryptsetup the passphrase")?;
    }
    let out = child.wait_with_output().context("waiting for cryptsetup")?;
    if !out.status.success() {
        bail!(
            "cryptsetup {} failed ({}): {}",
            args.first().copied().unwrap_or_default(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Maps `dev`'s LUKS2 payload at /dev/mapper/`name` (a no-op when it is mapped).
pub fn open(dev: &Path, name: &str, passphrase: &[u8], read_only: bool) -> Result<PathBuf> {
    available().map_err(anyhow::Error::msg)?;
    if !mapped(name).exists() {
        let d = dev.to_string_lossy();
        // --disable-keyring keeps the volume key in the dm table, so `resize` needs no
        // passphrase later.
        let mut args = vec!["open", "--type", "luks2", "--disable-keyring", "--key-file", "-"];
        if read_only {
            args.push("--readonly");
        }
        args.extend([d.as_ref(), name]);
        cryptsetup(&args, Some(passphrase))?;
    }
    Ok(mapped(name))
}

pub fn close(name: &str) -> Result<()> {
    if mapped(name).exists() {
        cryptsetup(&["close", name], None)?;
    }
    Ok(())
}

/// Grows the mapping to its (grown) device.
pub fn resize(name: &str, passphrase: Option<&[u8]>) -> Result<()> {
    cryptsetup(&["resize", "--key-file", "-", name], passphrase)
}
