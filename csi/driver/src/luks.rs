//! The LUKS2 header of an encrypted volume's image: written at CreateVolume, read back
//! for the payload offset.
//!
//! The header is made by `cryptsetup luksFormat` (Debian's cryptsetup-bin) on an
//! in-memory file (memfd), with exactly the layout librbd's own `rbd_encryption_format`
//! gives (LUKS2, aes-xts-plain64 with a 512-bit key, 4096-byte sectors, the payload at
//! 16 MiB), and copied to the start of the image; librbd's loader (strake-rbd-fuse) and
//! `cryptsetup open` (krbd, rbd-nbd) read it as their own. We write it ourselves for its
//! key derivation: librbd (Ceph 16) always benchmarks argon2id, seconds of CPU and 1 GiB
//! of memory at format and again at every load, which protects low-entropy human
//! passphrases; ours are 32 random bytes (256 bits, see `kms`), which no KDF makes
//! harder to guess, so the keyslot uses PBKDF2-SHA256 at cryptsetup's minimum of 1000
//! iterations and both format and load take milliseconds.
//!
//! The passphrase reaches cryptsetup on its stdin, the memfd as descriptor 3; nothing
//! touches a disk but the image.
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::process::{Command, Stdio};

use strake_ceph::Image;

use crate::errors::{self, Error};
use crate::kms::Passphrase;

/// Where the encrypted payload starts, as librbd places it: LUKS2's default 16 MiB.
pub const PAYLOAD_OFFSET: u64 = 16 << 20;
const MAGIC: &[u8; 6] = b"LUKS\xba\xbe";

/// Whether an image starts with a LUKS header (`LUKS\xba\xbe`), read raw.
pub fn has_header(img: &Image) -> Result<bool, Error> {
    let mut b = [0u8; 6];
    let n = img
        .read_at(0, &mut b)
        .map_err(|e| errors::ceph("reading the image header", e))?;
    Ok(n == 6 && b == *MAGIC)
}

/// The parsed JSON area of a LUKS2 header, from the header's first bytes.
fn json_area(head: &[u8], bad: &dyn Fn(&str) -> Error) -> Result<serde_json::Value, Error> {
    if head.len() < 16 || &head[..6] != MAGIC || u16::from_be_bytes([head[6], head[7]]) != 2 {
        return Err(bad("no LUKS2 magic"));
    }
    let hdr_size = u64::from_be_bytes(head[8..16].try_into().expect("8 bytes")) as usize;
    if !(8192..=4 << 20).contains(&hdr_size) || head.len() < hdr_size {
        return Err(bad("implausible header size"));
    }
    let json = &head[4096..hdr_size];
    let end = json.iter().position(|b| *b == 0).unwrap_or(json.len());
    serde_json::from_slice(&json[..end]).map_err(|e| bad(&e.to_string()))
}

fn segment_offset(v: &serde_json::Value) -> Option<u64> {
    v["segments"]["0"]["offset"].as_str()?.parse().ok()
}

/// Where a LUKS2 header says the encrypted payload starts (its first segment's offset),
/// read from the header's JSON area, which needs no key derivation.
pub fn payload_offset(img: &Image) -> Result<u64, Error> {
    let bad = |why: &str| Error::internal(format!("the LUKS2 header of {} is not readable: {why}", img.name()));
    let read = |buf: &mut [u8]| {
        img.read_at(0, buf)
            .map_err(|e| errors::ceph("reading the LUKS2 header", e))
    };
    let mut bin = [0u8; 16];
    read(&mut bin)?;
    let hdr_size = u64::from_be_bytes(bin[8..16].try_into().expect("8 bytes"));
    if &bin[..6] != MAGIC || !(8192..=4 << 20).contains(&hdr_size) {
        return Err(bad("no LUKS2 magic or an implausible header size"));
    }
    let mut head = vec![0u8; hdr_size as usize];
    read(&mut head)?;
    segment_offset(&json_area(&head, &bad)?).ok_or_else(|| bad("no segment offset"))
}

/// The LUKS2 header for `p`, made by cryptsetup in memory: the bytes up to the end of
/// the last keyslot area (the rest up to the payload is unused and reads as zeros on a
/// new image). Returns the header and the payload offset.
pub fn make_header(p: &Passphrase) -> Result<(Vec<u8>, u64), Error> {
    let fail = |what: &str, e: &dyn std::fmt::Display| {
        Error::internal(format!(
            "writing a LUKS2 header failed ({what}: {e}); the node needs cryptsetup (Debian's cryptsetup-bin)"
        ))
    };
    let fd: OwnedFd = nix::sys::memfd::memfd_create(c"strake-luks2-header", nix::sys::memfd::MFdFlags::MFD_CLOEXEC)
        .map_err(|e| fail("memfd_create", &e))?;
    let mut file = std::fs::File::from(fd);
    // cryptsetup wants a device at least as large as the payload offset.
    file.set_len(PAYLOAD_OFFSET + (1 << 20))
        .map_err(|e| fail("sizing the memfd", &e))?;
    let sectors = (PAYLOAD_OFFSET / 512).to_string();
    let mut cmd = Command::new("cryptsetup");
    cmd.args(["luksFormat", "--batch-mode", "--type", "luks2"])
        .args([
            "--cipher",
            "aes-xts-plain64",
            "--key-size",
            "512",
            "--sector-size",
            "4096",
        ])
        .args([
            "--pbkdf",
            "pbkdf2",
            "--hash",
            "sha256",
            "--pbkdf-force-iterations",
            "1000",
        ])
        .args(["--offset", &sectors, "--key-file", "-", "/proc/self/fd/3"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let raw = file.as_raw_fd();
    // The child gets the memfd as 3 (dup2 clears close-on-exec).
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || {
            let ok = if raw == 3 {
                libc::fcntl(3, libc::F_SETFD, 0)
            } else {
                libc::dup2(raw, 3)
            };
            if ok < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(|e| fail("starting cryptsetup", &e))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(p.bytes())
            .map_err(|e| fail("handing cryptsetup the passphrase", &e))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| fail("waiting for cryptsetup", &e))?;
    if !out.status.success() {
        return Err(fail(
            "cryptsetup luksFormat",
            &format!("{}: {}", out.status, String::from_utf8_lossy(&out.stderr).trim()),
        ));
    }
    let mut head = vec![0u8; PAYLOAD_OFFSET as usize];
    file.seek(SeekFrom::Start(0))
        .and_then(|_| file.read_exact(&mut head))
        .map_err(|e| fail("reading the header back", &e))?;
    let bad = |why: &str| Error::internal(format!("cryptsetup wrote a LUKS2 header we cannot read: {why}"));
    let v = json_area(&head, &bad)?;
    let offset = segment_offset(&v).ok_or_else(|| bad("no segment offset"))?;
    if offset != PAYLOAD_OFFSET {
        return Err(bad(&format!("the payload is at {offset}, not {PAYLOAD_OFFSET}")));
    }
    let hdr_size = u64::from_be_bytes(head[8..16].try_into().expect("8 bytes"));
    let mut end = 2 * hdr_size;
    for ks in v["keyslots"].as_object().into_iter().flat_map(|m| m.values()) {
        let area = &ks["area"];
        let num = |k: &str| area[k].as_str().and_then(|s| s.parse::<u64>().ok());
        let (Some(o), Some(s)) = (num("offset"), num("size")) else {
            return Err(bad("a keyslot without its area"));
        };
        end = end.max(o + s);
    }
    head.truncate(end.min(PAYLOAD_OFFSET) as usize);
    Ok((head, offset))
}

/// Writes a fresh LUKS2 header for `p` to `img` (a new image: what is past the header
/// reads as zeros). The magic goes last, so a crash part-way leaves an image
/// [`has_header`] does not take for formatted, and the retry writes it all again.
/// Returns the payload offset.
pub fn format(img: &Image, p: &Passphrase) -> Result<u64, Error> {
    let (head, offset) = make_header(p)?;
    let ctx = format!("writing the LUKS2 header of {}", img.name());
    img.write_at(4096, &head[4096..])
        .and_then(|_| img.write_at(0, &head[..4096]))
        .map_err(|e| errors::ceph(&ctx, e))?;
    Ok(offset)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_header_is_librbds_layout_with_a_fast_kdf_and_opens_with_its_passphrase_only() {
        if crate::attach::which("cryptsetup").is_none() {
            panic!("cryptsetup is not installed (scripts/install-deps.sh installs cryptsetup-bin)");
        }
        let p = Passphrase::generate().unwrap();
        let (head, offset) = make_header(&p).unwrap();
        assert_eq!(offset, PAYLOAD_OFFSET);
        assert!(head.len() < 1 << 20, "{} bytes", head.len());
        assert!(
            !head.windows(p.bytes().len()).any(|w| w == p.bytes()),
            "the passphrase is in the header"
        );
        // cryptsetup reads it back: the layout librbd writes, and the passphrase opens it.
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("hdr");
        let mut img = head.clone();
        img.resize(PAYLOAD_OFFSET as usize + 4096, 0);
        std::fs::write(&f, &img).unwrap();
        let dump = Command::new("cryptsetup").arg("luksDump").arg(&f).output().unwrap();
        let dump = String::from_utf8_lossy(&dump.stdout).to_string();
        for want in [
            "Version:       \t2",
            "offset: 16777216 [bytes]",
            "cipher: aes-xts-plain64",
            "sector: 4096 [bytes]",
            "PBKDF:      pbkdf2",
            "Key:        512 bits",
        ] {
            assert!(dump.contains(want), "{want:?} not in\n{dump}");
        }
        let open = |pass: &[u8]| {
            let mut c = Command::new("cryptsetup")
                .args(["open", "--test-passphrase", "--key-file", "-"])
                .arg(&f)
                .stdin(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            c.stdin.take().unwrap().write_all(pass).unwrap();
            c.wait().unwrap().success()
        };
        assert!(open(p.bytes()));
        assert!(!open(b"not the passphrase"));
    }
}
