//! Secrets reach the server only through an inherited file descriptor or a file on
//! a memory filesystem (tmpfs/ramfs) that only its owner can read: never argv (any
//! user reads /proc/PID/cmdline) and never the environment (/proc/PID/environ,
//! crash dumps, child processes).
use std::fs::File;
use std::io::Read;
use std::os::fd::FromRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use anyhow::{bail, Context, Result};

const TMPFS_MAGIC: i64 = 0x0102_1994;
const RAMFS_MAGIC: i64 = 0x8584_58f6;
/// Enough for any cephx key or LUKS passphrase (cryptsetup's limit is 512 bytes).
const MAX_SECRET: u64 = 64 * 1024;

/// Reads everything from descriptor `fd` (a pipe or file the parent passed) and
/// closes it.
pub fn from_fd(fd: i32, what: &str) -> Result<Vec<u8>> {
    if fd < 0 || unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        bail!("{what}: descriptor {fd} is not open in this process");
    }
    let f = unsafe { File::from_raw_fd(fd) };
    let mut buf = Vec::new();
    f.take(MAX_SECRET + 1)
        .read_to_end(&mut buf)
        .with_context(|| format!("{what}: reading descriptor {fd}"))?;
    if buf.len() as u64 > MAX_SECRET {
        bail!("{what}: more than {MAX_SECRET} bytes on descriptor {fd}");
    }
    Ok(buf)
}

/// Reads a secret file, refusing one readable by group or others, not owned by us,
/// or (with `memory_only`, for passphrases) on a disk-backed filesystem.
pub fn from_private_file(path: &Path, what: &str, memory_only: bool) -> Result<Vec<u8>> {
    let meta = std::fs::metadata(path).with_context(|| format!("{what}: {}", path.display()))?;
    if meta.mode() & 0o077 != 0 {
        bail!(
            "{what}: {} is readable by group or others (mode {:o}); chmod 600 it",
            path.display(),
            meta.mode() & 0o777
        );
    }
    if meta.uid() != unsafe { libc::geteuid() } {
        bail!("{what}: {} is owned by uid {}, not by us", path.display(), meta.uid());
    }
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())?;
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        bail!("{what}: statfs {}: {}", path.display(), std::io::Error::last_os_error());
    }
    let fstype = st.f_type as i64;
    if memory_only && fstype != TMPFS_MAGIC && fstype != RAMFS_MAGIC {
        bail!(
            "{what}: {} is on a disk-backed filesystem (type {fstype:#x}); keep secrets on a tmpfs (e.g. a memory-backed emptyDir) or pass a descriptor",
            path.display()
        );
    }
    let mut buf = Vec::new();
    File::open(path)?.take(MAX_SECRET + 1).read_to_end(&mut buf)?;
    if buf.len() as u64 > MAX_SECRET {
        bail!("{what}: {} is larger than {MAX_SECRET} bytes", path.display());
    }
    Ok(buf)
}

/// The base64 key of `[client.<user>]` in a Ceph keyring (or a keyring holding a
/// single key).
pub fn key_from_keyring(text: &str, user: &str) -> Result<String> {
    let want = format!("[client.{user}]");
    let mut in_section = false;
    let mut any = None;
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            in_section = line == want;
            continue;
        }
        if let Some((k, v)) = line.split_once('=') {
            if k.trim() == "key" {
                if in_section {
                    return Ok(v.trim().to_string());
                }
                any.get_or_insert_with(|| v.trim().to_string());
            }
        }
    }
    if !text.contains('[') {
        if let Some(k) = any {
            return Ok(k);
        }
    }
    bail!("the keyring has no key for {want}")
}

/// Overwrites a secret before its memory is freed.
pub fn wipe(buf: &mut [u8]) {
    for b in buf.iter_mut() {
        unsafe { std::ptr::write_volatile(b, 0) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn keyring_sections() {
        let k = "[client.admin]\n\tkey = AAA==\n[client.csi]\n\tkey = BBB==\n";
        assert_eq!(key_from_keyring(k, "csi").unwrap(), "BBB==");
        assert!(key_from_keyring(k, "other").is_err());
        assert_eq!(key_from_keyring("key = CCC==", "x").unwrap(), "CCC==");
    }

    #[test]
    fn refuses_files_others_can_read_or_on_disk() {
        let dir = std::env::temp_dir().join(format!("strake-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("pass");
        std::fs::File::create(&p).unwrap().write_all(b"hunter2").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = from_private_file(&p, "passphrase", true).unwrap_err().to_string();
        assert!(e.contains("readable by group or others"), "{e}");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        // /tmp may itself be a tmpfs; the message must then be about nothing.
        assert_eq!(from_private_file(&p, "keyring", false).unwrap(), b"hunter2");
        match from_private_file(&p, "passphrase", true) {
            Ok(b) => assert_eq!(b, b"hunter2"),
            Err(e) => assert!(e.to_string().contains("disk-backed"), "{e}"),
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn reads_a_pipe() {
        let (r, w) = nix::unistd::pipe().unwrap();
        nix::unistd::write(&w, b"secret-bytes").unwrap();
        drop(w);
        use std::os::fd::IntoRawFd;
        assert_eq!(from_fd(r.into_raw_fd(), "key").unwrap(), b"secret-bytes");
        assert!(from_fd(987, "key").is_err());
    }
}
