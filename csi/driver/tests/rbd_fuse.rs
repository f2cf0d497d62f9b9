//! strake-rbd-fuse against the real dev cluster: data integrity under concurrent
//! verified IO on both transports, fsync durability across a SIGKILL of the server,
//! discard reaching RADOS, resizes seen without remounting, read-only opens, LUKS2,
//! and secrets kept out of argv. Each test uses its own pool and cleans up its loop
//! devices and mounts even when it fails.
mod common;

use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use sha2::{Digest, Sha256};
use strake_ceph::{Encryption, EncryptionFormat, IoCtx};

const HELPER: &str = env!("CARGO_BIN_EXE_strake-rbd-fuse");

/// Serializes the tests of this file: they flip the host-wide enable_uring switch and
/// fio is heavy on two cores.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static M: std::sync::Mutex<()> = std::sync::Mutex::new(());
    M.lock().unwrap_or_else(|e| e.into_inner())
}

fn set_uring(on: bool) {
    std::fs::write(strake_rbd_fuse::ENABLE_URING_PARAM, if on { "Y" } else { "N" })
        .expect("this kernel must have FUSE-over-io_uring (CONFIG_FUSE_IO_URING)");
}

/// One test's world: the lock, its own pool with image `vol`, a temp dir that is
/// cleaned (loops detached, mounts removed) when the test ends, pass or fail. Fields
/// drop in order: cleanup first, the lock last.
struct Lab {
    _cleanup: CleanupOnDrop,
    tmp: tempfile::TempDir,
    io: IoCtx,
    pool: TestPool,
    _serial: std::sync::MutexGuard<'static, ()>,
}

fn lab(tag: &str, size: u64, uring: Option<bool>) -> Lab {
    let serial = serial();
    if let Some(on) = uring {
        set_uring(on);
    }
    let pool = TestPool::new(tag);
    let io = pool.io();
    create(&io, "vol", size);
    let tmp = tempfile::tempdir().unwrap();
    Lab {
        _cleanup: CleanupOnDrop(tmp.path().to_path_buf()),
        tmp,
        io,
        pool,
        _serial: serial,
    }
}

struct Mounted {
    dir: PathBuf,
    pid: i32,
    transport: String,
    image: String,
}

impl Mounted {
    fn file(&self) -> PathBuf {
        self.dir.join("fuse").join(&self.image)
    }
    fn sock(&self) -> PathBuf {
        self.dir.join("stats.sock")
    }
}

/// Starts the helper the way the attacher does: key on stdin, daemonized.
fn start(dir: &Path, pool: &str, image: &str, extra: &[&str], stdin: &[u8]) -> Result<Mounted, String> {
    let fuse = dir.join("fuse");
    std::fs::create_dir_all(&fuse).unwrap();
    let mut child = Command::new(HELPER)
        .arg("--conf")
        .arg(conf())
        .args(["--pool", pool, "--image", image])
        .arg("--stats-socket")
        .arg(dir.join("stats.sock"))
        .args(extra)
        .arg(&fuse)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(dir.join("helper.log")).unwrap())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    let out = child.wait_with_output().unwrap();
    let line = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !out.status.success() {
        return Err(std::fs::read_to_string(dir.join("helper.log")).unwrap_or_default());
    }
    let field = |k: &str| {
        line.split_whitespace()
            .find_map(|f| f.strip_prefix(k).map(str::to_string))
            .unwrap_or_else(|| panic!("helper printed {line:?}"))
    };
    Ok(Mounted {
        dir: dir.to_path_buf(),
        pid: field("pid=").parse().unwrap(),
        transport: field("transport="),
        image: image.to_string(),
    })
}

fn loop_attach(file: &Path) -> PathBuf {
    let out = Command::new("losetup")
        .args(["--show", "-f", "--direct-io=on"])
        .arg(file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "losetup: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

fn loop_detach(dev: &Path) {
    for _ in 0..50 {
        if Command::new("losetup").arg("-d").arg(dev).status().unwrap().success() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("losetup -d {} kept failing", dev.display());
}

fn wait_gone(pid: i32) {
    let t0 = Instant::now();
    while strake_csi::attach::pid_alive(pid) {
        assert!(t0.elapsed() < Duration::from_secs(15), "helper {pid} did not exit");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Unmounts (the helper then exits and closes the image).
fn stop(m: &Mounted) {
    let fuse = m.dir.join("fuse");
    let st = Command::new("umount").arg(&fuse).status().unwrap();
    assert!(st.success(), "umount {}", fuse.display());
    wait_gone(m.pid);
}

fn create(io: &IoCtx, name: &str, size: u64) {
    io.create_image(name, size, &Default::default()).unwrap();
}

fn image_sha(io: &IoCtx, name: &str) -> String {
    let img = io.open(name).unwrap();
    let size = img.size().unwrap();
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 4 << 20];
    let mut off = 0;
    while off < size {
        let n = ((size - off) as usize).min(buf.len());
        assert_eq!(img.read_at(off, &mut buf[..n]).unwrap(), n);
        h.update(&buf[..n]);
        off += n as u64;
    }
    format!("{:x}", h.finalize())
}

fn used_bytes(pool: &str, image: &str) -> u64 {
    let out = Command::new("rbd")
        .arg("-c")
        .arg(conf())
        .args(["du", "--format", "json", &format!("{pool}/{image}")])
        .output()
        .unwrap();
    assert!(out.status.success(), "rbd du: {}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["images"][0]["used_size"].as_u64().unwrap()
}

fn fio(args: &[&str]) -> serde_json::Value {
    let out = Command::new("fio")
        .args(args)
        .args(["--output-format=json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "fio {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    // fio may print notes before the JSON document.
    let text = String::from_utf8_lossy(&out.stdout);
    let start = text.find('{').unwrap_or_else(|| panic!("no JSON from fio: {text}"));
    serde_json::from_str(&text[start..]).unwrap_or_else(|e| panic!("fio JSON: {e}: {text}"))
}

/// Random 4 KiB writes from 4 jobs at queue depth 32 each (every job its own region,
/// so what a job reads back is only what it wrote), crc32c-verified on read-back;
/// then the whole image read through the loop device and through librbd directly
/// must hash the same.
fn verified_concurrent_io(transport: &str) {
    let l = lab(
        &format!("fuse-{}", &transport[..2]),
        256 * MIB,
        Some(transport == "io-uring"),
    );
    let (io, pool, tmp) = (&l.io, &l.pool, &l.tmp);
    let m = start(tmp.path(), &pool.name, "vol", &["--transport", transport], b"").unwrap();
    assert_eq!(m.transport, transport);
    let dev = loop_attach(&m.file());
    let d = dev.to_string_lossy().to_string();
    let r = fio(&[
        "--name=verify",
        &format!("--filename={d}"),
        "--ioengine=libaio",
        "--direct=1",
        "--rw=randwrite",
        "--bs=4k",
        "--iodepth=32",
        "--numjobs=4",
        "--size=32M",
        "--offset_increment=64M",
        "--verify=crc32c",
        "--verify_fatal=1",
        "--do_verify=1",
        "--verify_state_save=0",
        "--group_reporting",
    ]);
    let job = &r["jobs"][0];
    assert_eq!(job["error"].as_i64(), Some(0), "fio reported an error: {job}");
    let written = job["write"]["io_bytes"].as_u64().unwrap();
    assert_eq!(written, 4 * 32 * MIB, "every job wrote its whole region");
    assert!(
        job["read"]["io_bytes"].as_u64().unwrap() >= written,
        "verification read everything back"
    );
    // fsync the device: the loop device sends FLUSH, i.e. FUSE FSYNC, i.e. rbd_aio_flush.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&dev)
        .unwrap()
        .sync_all()
        .unwrap();
    let via_loop = read_sha(&dev, 0, 256 * MIB);

    let snap = strake_rbd_fuse::stats::fetch(&m.sock(), Duration::from_secs(2)).unwrap();
    let v = &snap.volumes[0];
    assert_eq!(v.transport, transport);
    let w = v.ops.iter().find(|o| o.op == "write").unwrap();
    assert!(w.bytes >= written && w.errors == 0, "write counters: {w:?}");
    assert!(
        w.count >= written / 4096,
        "one FUSE write per 4 KiB direct write at least"
    );
    assert_eq!(w.buckets.last().unwrap().1, w.count.min(w.buckets.last().unwrap().1));
    assert!(v.ops.iter().find(|o| o.op == "flush").unwrap().count >= 1);
    assert_eq!(v.in_flight, 0);

    loop_detach(&dev);
    stop(&m);
    assert_eq!(image_sha(io, "vol"), via_loop, "librbd reads what the loop device read");
    io.remove_image("vol").unwrap();
}

#[test]
fn io_uring_transport_keeps_data_intact_under_concurrent_verified_writes() {
    if !strake_test_support::ceph() {
        return;
    }
    verified_concurrent_io("io-uring");
}

#[test]
fn classic_transport_keeps_data_intact_under_concurrent_verified_writes() {
    if !strake_test_support::ceph() {
        return;
    }
    verified_concurrent_io("classic");
}

/// Write through the loop device, fsync, SIGKILL the server (no chance to flush
/// anything itself), re-attach with a new server: the data is there.
#[test]
fn fsync_makes_writes_durable_across_a_sigkill_of_the_server() {
    if !strake_test_support::ceph() {
        return;
    }
    let l = lab("fuse-kill", 64 * MIB, Some(true));
    let (io, pool, tmp) = (&l.io, &l.pool, &l.tmp);
    let m = start(tmp.path(), &pool.name, "vol", &[], b"").unwrap();
    let dev = loop_attach(&m.file());
    let sha = write_data(&dev, 8 * MIB, 16 * MIB, 42); // ends with fsync
    unsafe { libc::kill(m.pid, libc::SIGKILL) };
    wait_gone(m.pid);
    // The dead server's device fails IO; tear down in the forced order.
    let mut probe = vec![0u8; 4096];
    let dead = std::fs::File::open(m.file()).and_then(|f| f.read_at(&mut probe, 0));
    assert!(dead.is_err(), "a dead FUSE server cannot serve reads");
    loop_detach(&dev);
    assert!(Command::new("umount")
        .arg(tmp.path().join("fuse"))
        .status()
        .unwrap()
        .success());

    let m2 = start(tmp.path(), &pool.name, "vol", &[], b"").unwrap();
    let dev2 = loop_attach(&m2.file());
    assert_eq!(
        read_sha(&dev2, 8 * MIB, 16 * MIB),
        sha,
        "fsync'd data survived the SIGKILL"
    );
    loop_detach(&dev2);
    stop(&m2);
    let img = io.open("vol").unwrap();
    let mut buf = vec![0u8; 16 * MIB as usize];
    img.read_at(8 * MIB, &mut buf).unwrap();
    assert_eq!(format!("{:x}", Sha256::digest(&buf)), sha, "and librbd reads it too");
}

/// blkdiscard on the loop device reaches RADOS: the image's used space drops, and
/// the discarded range reads back as zeros.
#[test]
fn discard_releases_space_in_rados() {
    if !strake_test_support::ceph() {
        return;
    }
    let l = lab("fuse-trim", 128 * MIB, Some(true));
    let (pool, tmp) = (&l.pool, &l.tmp);
    let m = start(tmp.path(), &pool.name, "vol", &[], b"").unwrap();
    let dev = loop_attach(&m.file());
    let name = dev.file_name().unwrap().to_string_lossy().to_string();
    let max = std::fs::read_to_string(format!("/sys/block/{name}/queue/discard_max_bytes")).unwrap();
    assert_ne!(max.trim(), "0", "the loop device advertises discard");
    write_data(&dev, 0, 64 * MIB, 7);
    let before = used_bytes(&pool.name, "vol");
    assert!(before >= 64 * MIB, "64 MiB written, {before} used");
    let out = Command::new("blkdiscard").arg(&dev).output().unwrap();
    assert!(
        out.status.success(),
        "blkdiscard: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let after = used_bytes(&pool.name, "vol");
    assert!(
        after < before / 8,
        "discard released the space: {before} -> {after} bytes"
    );
    let mut buf = vec![1u8; MIB as usize];
    std::fs::File::open(&dev).unwrap().read_exact(&mut buf).unwrap();
    assert!(buf.iter().all(|b| *b == 0), "discarded blocks read back as zeros");
    let snap = strake_rbd_fuse::stats::fetch(&m.sock(), Duration::from_secs(2)).unwrap();
    let d = snap.volumes[0].ops.iter().find(|o| o.op == "discard").unwrap().clone();
    assert!(d.count >= 1 && d.bytes >= 64 * MIB, "discard counted: {d:?}");
    loop_detach(&dev);
    stop(&m);
}

/// A resize made through librbd (what ControllerExpandVolume does) shows in the
/// mounted file and, after `losetup -c`, in the loop device: no remount.
#[test]
fn resize_is_seen_without_remount() {
    if !strake_test_support::ceph() {
        return;
    }
    let l = lab("fuse-grow", 64 * MIB, Some(true));
    let (io, pool, tmp) = (&l.io, &l.pool, &l.tmp);
    let m = start(tmp.path(), &pool.name, "vol", &[], b"").unwrap();
    let dev = loop_attach(&m.file());
    assert_eq!(std::fs::metadata(m.file()).unwrap().len(), 64 * MIB);
    io.open("vol").unwrap().resize(192 * MIB).unwrap();
    let t0 = Instant::now();
    while std::fs::metadata(m.file()).unwrap().len() != 192 * MIB {
        assert!(t0.elapsed() < Duration::from_secs(5), "the file never grew");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(Command::new("losetup").arg("-c").arg(&dev).status().unwrap().success());
    let out = Command::new("blockdev").arg("--getsize64").arg(&dev).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), (192 * MIB).to_string());
    // The new tail is usable.
    let sha = write_data(&dev, 150 * MIB, 8 * MIB, 9);
    assert_eq!(read_sha(&dev, 150 * MIB, 8 * MIB), sha);
    // And truncating through the file is refused: resizing is the controller's job.
    let err = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(m.file())
        .unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EPERM));
    loop_detach(&dev);
    stop(&m);
}

/// --read-only: the file is not writable, writes fail with EROFS, the mount is
/// read-only, and data reads fine.
#[test]
fn read_only_open_refuses_every_write() {
    if !strake_test_support::ceph() {
        return;
    }
    let l = lab("fuse-ro", 32 * MIB, Some(true));
    let (io, pool, tmp) = (&l.io, &l.pool, &l.tmp);
    let img = io.open("vol").unwrap();
    img.write_at(MIB, b"written before").unwrap();
    img.flush().unwrap();
    drop(img);
    let m = start(tmp.path(), &pool.name, "vol", &["--read-only"], b"").unwrap();
    let meta = std::fs::metadata(m.file()).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(meta.permissions().mode() & 0o777, 0o400);
    let err = std::fs::OpenOptions::new().write(true).open(m.file()).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{err}");
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    let line = mounts
        .lines()
        .find(|l| l.contains(&*tmp.path().join("fuse").to_string_lossy()))
        .unwrap();
    assert!(line.split(' ').nth(3).unwrap().split(',').any(|o| o == "ro"), "{line}");
    let mut buf = [0u8; 14];
    std::fs::File::open(m.file())
        .unwrap()
        .read_exact_at(&mut buf, MIB)
        .unwrap();
    assert_eq!(&buf, b"written before");
    // A read-write loop device over it is refused too.
    let rw = Command::new("losetup")
        .args(["-f", "--show"])
        .arg(m.file())
        .output()
        .unwrap();
    if rw.status.success() {
        // losetup falls back to read-only when the file is: make sure it did.
        let dev = PathBuf::from(String::from_utf8_lossy(&rw.stdout).trim());
        let name = dev.file_name().unwrap().to_string_lossy().to_string();
        assert_eq!(
            std::fs::read_to_string(format!("/sys/block/{name}/ro")).unwrap().trim(),
            "1"
        );
        loop_detach(&dev);
    }
    stop(&m);
}

/// A LUKS2 image served with its passphrase (over a descriptor) reads and writes
/// plaintext; RADOS holds only ciphertext; a wrong passphrase fails cleanly,
/// leaving no mount and no process.
#[test]
fn luks2_image_is_served_decrypted_and_stored_encrypted() {
    if !strake_test_support::ceph() {
        return;
    }
    let l = lab("fuse-luks", 64 * MIB, Some(true));
    let (io, pool, tmp) = (&l.io, &l.pool, &l.tmp);
    let pass = b"correct horse battery staple".to_vec();
    io.open("vol")
        .unwrap()
        .encryption_format(&Encryption::new(EncryptionFormat::Luks2, pass.clone()))
        .unwrap();
    let args = ["--encryption", "luks2", "--passphrase-fd", "0"];

    let e = start(tmp.path(), &pool.name, "vol", &args, b"wrong passphrase")
        .err()
        .unwrap();
    assert!(e.contains("wrong passphrase"), "{e}");
    assert!(
        !is_mountpoint(&tmp.path().join("fuse")),
        "a failed start leaves no mount"
    );

    let m = start(tmp.path(), &pool.name, "vol", &args, &pass).unwrap();
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", m.pid)).unwrap();
    let environ = std::fs::read(format!("/proc/{}/environ", m.pid)).unwrap();
    for blob in [&cmdline, &environ] {
        assert!(
            !blob.windows(pass.len()).any(|w| w == pass.as_slice()),
            "passphrase leaked"
        );
    }
    let size = std::fs::metadata(m.file()).unwrap().len();
    assert!(size < 64 * MIB, "the LUKS header is not part of the payload ({size})");
    let marker = b"strake-plaintext-marker-0123456789".repeat(100);
    let f = std::fs::OpenOptions::new().write(true).open(m.file()).unwrap();
    f.write_all_at(&marker, 0).unwrap();
    f.sync_all().unwrap();
    drop(f);
    stop(&m);

    let raw = io.open("vol").unwrap();
    let mut all = vec![0u8; 64 * MIB as usize];
    raw.read_at(0, &mut all).unwrap();
    assert!(
        !all.windows(34).any(|w| w == &marker[..34]),
        "plaintext reached RADOS unencrypted"
    );
    let m = start(tmp.path(), &pool.name, "vol", &args, &pass).unwrap();
    let mut back = vec![0u8; marker.len()];
    std::fs::File::open(m.file())
        .unwrap()
        .read_exact_at(&mut back, 0)
        .unwrap();
    assert_eq!(back, marker);
    stop(&m);
}

/// The cephx key reaches the server only over its stdin: it is in neither its
/// argv nor its environment, and a passphrase file on disk is refused.
#[test]
fn secrets_stay_out_of_argv_and_disk() {
    if !strake_test_support::ceph() {
        return;
    }
    let _g = serial();
    let pool = TestPool::new("fuse-key");
    let io = pool.io();
    create(&io, "vol", 16 * MIB);
    let s = secrets();
    let key = s["userKey"].clone();
    let tmp = tempfile::tempdir().unwrap();
    let _c = CleanupOnDrop(tmp.path().to_path_buf());
    let m = start(
        tmp.path(),
        &pool.name,
        "vol",
        &["--id", &s["userID"], "--key-fd", "0"],
        key.as_bytes(),
    )
    .unwrap();
    for f in ["cmdline", "environ"] {
        let blob = std::fs::read(format!("/proc/{}/{f}", m.pid)).unwrap();
        assert!(!String::from_utf8_lossy(&blob).contains(&key), "key in /proc/PID/{f}");
    }
    stop(&m);

    // A wrong key is refused by the cluster, with a message saying so.
    let e = start(
        tmp.path(),
        &pool.name,
        "vol",
        &["--id", &s["userID"], "--key-fd", "0"],
        b"AQBwrongkeywrongkeywrongkeywrongkeyw==",
    )
    .err()
    .unwrap();
    assert!(e.contains("client.strake-csi-test"), "{e}");

    // A passphrase file on a disk filesystem (the pool dir is not a tmpfs).
    let disk = std::env::current_dir()
        .unwrap()
        .join(format!("target-pass-{}", std::process::id()));
    std::fs::write(&disk, "pw").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&disk, std::fs::Permissions::from_mode(0o600)).unwrap();
    let args = ["--encryption", "luks2", "--passphrase-file", disk.to_str().unwrap()];
    let e = start(tmp.path(), &pool.name, "vol", &args, b"").err();
    std::fs::remove_file(&disk).unwrap();
    let e = e.unwrap();
    assert!(e.contains("disk-backed"), "{e}");
}

/// The mount allows other users in (the kernel's loop worker and the pods' processes
/// reach the file through it), so the file's own mode is what keeps an unprivileged
/// user on the node from reading or overwriting a volume: prove it does.
#[test]
fn other_users_on_the_node_can_neither_read_nor_write_the_volume() {
    if !strake_test_support::ceph() {
        return;
    }
    let l = lab("fuse-perm", 16 * MIB, Some(true));
    let m = start(l.tmp.path(), &l.pool.name, "vol", &[], b"").unwrap();
    // The temp dir must be traversable for the test to mean anything.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(l.tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let as_nobody = |script: &str| {
        Command::new("setpriv")
            .args([
                "--reuid",
                "65534",
                "--regid",
                "65534",
                "--clear-groups",
                "sh",
                "-c",
                script,
            ])
            .output()
            .unwrap()
    };
    let f = m.file().to_string_lossy().to_string();
    let ls = as_nobody(&format!("ls {}", m.dir.join("fuse").display()));
    assert!(
        ls.status.success(),
        "the directory is listable: {}",
        String::from_utf8_lossy(&ls.stderr)
    );
    for script in [
        format!("head -c 4096 {f} > /dev/null"),
        format!("printf x | dd of={f} conv=notrunc"),
    ] {
        let out = as_nobody(&script);
        assert!(!out.status.success(), "{script} succeeded as nobody");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("Permission denied"),
            "{script}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let snap = strake_rbd_fuse::stats::fetch(&m.sock(), Duration::from_secs(2)).unwrap();
    let w = snap.volumes[0].ops.iter().find(|o| o.op == "write").unwrap();
    assert_eq!(w.count, 0, "no write reached the server");
    stop(&m);
}

/// One server can serve several images (`--image` repeated): each is its own file
/// with its own size, bytes and counters, and the directory lists them all.
#[test]
fn several_images_in_one_mount_stay_separate() {
    if !strake_test_support::ceph() {
        return;
    }
    let l = lab("fuse-multi", 16 * MIB, Some(true));
    create(&l.io, "second", 48 * MIB);
    let m = start(l.tmp.path(), &l.pool.name, "vol", &["--image", "second"], b"").unwrap();
    let fuse = l.tmp.path().join("fuse");
    let mut names: Vec<String> = std::fs::read_dir(&fuse)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["second", "vol"]);
    assert_eq!(std::fs::metadata(fuse.join("vol")).unwrap().len(), 16 * MIB);
    assert_eq!(std::fs::metadata(fuse.join("second")).unwrap().len(), 48 * MIB);
    let a = write_data(&fuse.join("vol"), 0, 4 * MIB, 1);
    let b = write_data(&fuse.join("second"), 0, 4 * MIB, 2);
    assert_ne!(a, b);
    assert_eq!(read_sha(&fuse.join("vol"), 0, 4 * MIB), a);
    assert_eq!(read_sha(&fuse.join("second"), 0, 4 * MIB), b);
    let snap = strake_rbd_fuse::stats::fetch(&m.sock(), Duration::from_secs(2)).unwrap();
    assert_eq!(snap.volumes.len(), 2);
    for v in &snap.volumes {
        let w = v.ops.iter().find(|o| o.op == "write").unwrap();
        assert_eq!(w.bytes, 4 * MIB, "{}: {w:?}", v.image);
    }
    stop(&m);
    let img = l.io.open("second").unwrap();
    let mut buf = vec![0u8; 4 * MIB as usize];
    img.read_at(0, &mut buf).unwrap();
    assert_eq!(format!("{:x}", Sha256::digest(&buf)), b);
}

/// With FUSE-over-io_uring switched off, `auto` serves /dev/fuse with worker threads,
/// and asking for io-uring explicitly fails saying how to switch it on.
#[test]
fn without_the_uring_switch_auto_falls_back_and_io_uring_says_why() {
    if !strake_test_support::ceph() {
        return;
    }
    let l = lab("fuse-auto", 16 * MIB, Some(false));
    let e = start(l.tmp.path(), &l.pool.name, "vol", &["--transport", "io-uring"], b"")
        .err()
        .unwrap();
    assert!(e.contains("enable_uring"), "{e}");
    assert!(
        !is_mountpoint(&l.tmp.path().join("fuse")),
        "a refused start leaves no mount"
    );
    let m = start(l.tmp.path(), &l.pool.name, "vol", &[], b"").unwrap();
    assert_eq!(m.transport, "classic");
    let sha = write_data(&m.file(), MIB, 2 * MIB, 5);
    assert_eq!(read_sha(&m.file(), MIB, 2 * MIB), sha);
    stop(&m);
}
