//! Shared harness for the integration tests: the real cluster from
//! deploy/dev/ceph-up.sh, a throwaway pool per test, and the real strake-csi binary
//! driven over its unix socket.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use strake_ceph::{Cluster, ConnectOptions, IoCtx};
use strake_csi::csi::controller_client::ControllerClient;
use strake_csi::csi::group_controller_client::GroupControllerClient;
use strake_csi::csi::identity_client::IdentityClient;
use strake_csi::csi::node_client::NodeClient;
use strake_csi::csi::volume_capability::access_mode::Mode;
use strake_csi::csi::volume_capability::{AccessMode, AccessType, BlockVolume, MountVolume};
use strake_csi::csi::*;
use strake_csi::journal::Journal;
use tonic::transport::Channel;

pub const INSTANCE: &str = "default";
pub const PREFIX: &str = "csi-strake-";
pub const MIB: u64 = 1 << 20;
pub const GIB: u64 = 1 << 30;

pub fn conf() -> PathBuf {
    let p = PathBuf::from(std::env::var("CEPH_CONF").unwrap_or_else(|_| "/var/lib/strake/ceph-dev/ceph.conf".into()));
    assert!(
        p.exists(),
        "no Ceph cluster for the CSI tests: {} does not exist. Start one with deploy/dev/ceph-up.sh \
         (scripts/test.sh does), or point CEPH_CONF at a cluster's ceph.conf",
        p.display()
    );
    p
}

pub fn admin() -> Cluster {
    static C: OnceLock<Cluster> = OnceLock::new();
    C.get_or_init(|| {
        Cluster::connect(&ConnectOptions::new(conf()))
            .expect("connecting to the dev Ceph cluster as client.admin failed; is it running? (deploy/dev/ceph-up.sh)")
    })
    .clone()
}

fn mon(cmd: serde_json::Value) -> Vec<u8> {
    admin()
        .mon_command(&cmd.to_string())
        .unwrap_or_else(|e| panic!("mon command {cmd}: {e}"))
}

/// A pool of its own for one test, so "the pool holds no image and the journal no
/// entry" can be asserted exactly. Deleted on drop.
pub struct TestPool {
    pub name: String,
}

impl TestPool {
    pub fn new(tag: &str) -> Self {
        let name = format!("t-{tag}-{}", &uuid::Uuid::new_v4().simple().to_string()[..6]);
        mon(serde_json::json!({"prefix": "osd pool create", "pool": name, "pg_num": 8, "pgp_num": 8}));
        mon(serde_json::json!({"prefix": "osd pool application enable", "pool": name, "app": "rbd"}));
        TestPool { name }
    }

    pub fn io(&self) -> IoCtx {
        admin().ioctx(&self.name).unwrap()
    }

    /// Image names in the pool, including the RBD trash.
    pub fn images(&self) -> Vec<String> {
        let io = self.io();
        let mut v: Vec<String> = io.list_images().unwrap().into_iter().map(|i| i.name).collect();
        v.extend(
            io.trash_list()
                .unwrap()
                .into_iter()
                .map(|t| format!("trash:{}", t.name)),
        );
        v.sort();
        v
    }

    pub fn journal_keys(&self) -> Vec<String> {
        let io = self.io();
        Journal::new(&io, INSTANCE).all_keys().unwrap()
    }

    pub fn assert_empty(&self) {
        assert_eq!(
            self.images(),
            Vec::<String>::new(),
            "pool {} still holds images",
            self.name
        );
        assert_eq!(
            self.journal_keys(),
            Vec::<String>::new(),
            "journal in pool {} still has entries",
            self.name
        );
    }

    pub fn params(&self) -> HashMap<String, String> {
        HashMap::from([("pool".to_string(), self.name.clone())])
    }
}

impl Drop for TestPool {
    fn drop(&mut self) {
        let _ = admin().mon_command(
            &serde_json::json!({"prefix": "osd pool rm", "pool": self.name, "pool2": self.name, "yes_i_really_really_mean_it": true})
                .to_string(),
        );
    }
}

/// A cephx user restricted to RBD (as a StorageClass secret would carry), created once.
pub fn secrets() -> HashMap<String, String> {
    static S: OnceLock<HashMap<String, String>> = OnceLock::new();
    S.get_or_init(|| {
        let out = mon(serde_json::json!({
            "prefix": "auth get-or-create", "entity": "client.strake-csi-test",
            "caps": ["mon", "profile rbd", "osd", "profile rbd", "mgr", "profile rbd"], "format": "json"
        }));
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        HashMap::from([
            ("userID".to_string(), "strake-csi-test".to_string()),
            ("userKey".to_string(), v[0]["key"].as_str().unwrap().to_string()),
        ])
    })
    .clone()
}

pub fn mount_cap(fs: &str) -> VolumeCapability {
    VolumeCapability {
        access_type: Some(AccessType::Mount(MountVolume {
            fs_type: fs.into(),
            ..Default::default()
        })),
        access_mode: Some(AccessMode {
            mode: Mode::SingleNodeWriter as i32,
        }),
    }
}

pub fn block_cap() -> VolumeCapability {
    VolumeCapability {
        access_type: Some(AccessType::Block(BlockVolume {})),
        access_mode: Some(AccessMode {
            mode: Mode::SingleNodeWriter as i32,
        }),
    }
}

pub fn range(bytes: u64) -> Option<CapacityRange> {
    Some(CapacityRange {
        required_bytes: bytes as i64,
        limit_bytes: 0,
    })
}

pub struct DriverOpts {
    pub mode: &'static str,
    pub list_pools: Vec<String>,
    pub failpoint: Option<String>,
    pub state_dir: Option<PathBuf>,
    pub extra_env: Vec<(String, String)>,
    /// NodeGetInfo's node id (two node plugins in one test need two).
    pub node_id: &'static str,
    pub extra_args: Vec<String>,
}

impl Default for DriverOpts {
    fn default() -> Self {
        DriverOpts {
            mode: "all",
            list_pools: vec![],
            failpoint: None,
            state_dir: None,
            extra_env: vec![],
            node_id: "test-node",
            extra_args: vec![],
        }
    }
}

/// The real strake-csi binary on a socket in a temp dir, logging to a file.
pub struct Driver {
    pub child: Child,
    pub socket: PathBuf,
    pub dir: PathBuf,
    pub state_dir: PathBuf,
    pub log: PathBuf,
    pub metrics: String,
    _tmp: Option<tempfile::TempDir>,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Driver {
    pub fn start(opts: DriverOpts) -> Driver {
        let tmp = tempfile::Builder::new().prefix("strake-csi-test").tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        Self::start_in(dir, Some(tmp), opts)
    }

    /// Starts on an existing directory (restart tests reuse socket and state).
    pub fn start_in(dir: PathBuf, tmp: Option<tempfile::TempDir>, opts: DriverOpts) -> Driver {
        let socket = dir.join("csi.sock");
        let state_dir = opts.state_dir.clone().unwrap_or_else(|| dir.join("state"));
        let log = dir.join(format!(
            "driver-{}.log",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        let metrics = format!("127.0.0.1:{}", free_port());
        let logf = std::fs::File::create(&log).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_strake-csi"));
        cmd.args(["--mode", opts.mode, "--endpoint"])
            .arg(&socket)
            .arg("--state-dir")
            .arg(&state_dir)
            .args(["--node-id", opts.node_id, "--metrics-addr", &metrics, "--ceph-conf"])
            .arg(conf())
            .env("RUST_LOG", "debug,h2=info,tower=info,hyper=info")
            .env_remove("STRAKE_CSI_FAILPOINT")
            .stdin(Stdio::null())
            .stdout(logf.try_clone().unwrap())
            .stderr(logf);
        if !opts.list_pools.is_empty() {
            cmd.arg("--list-pools").arg(opts.list_pools.join(","));
        }
        cmd.args(&opts.extra_args);
        if let Some(fp) = &opts.failpoint {
            cmd.env("STRAKE_CSI_FAILPOINT", fp);
        }
        for (k, v) in &opts.extra_env {
            cmd.env(k, v);
        }
        // Its own process group, as a container would be: killing it never reaches us.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let child = cmd.spawn().expect("starting strake-csi");
        let d = Driver {
            child,
            socket,
            dir,
            state_dir,
            log,
            metrics,
            _tmp: tmp,
        };
        let t0 = Instant::now();
        while std::os::unix::net::UnixStream::connect(&d.socket).is_err() {
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "strake-csi did not open its socket in 20 s; log:\n{}",
                d.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        d
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub async fn channel(&self) -> Channel {
        strake_csi::client::connect(&self.socket)
            .await
            .expect("connecting to the driver socket")
    }
    pub async fn controller(&self) -> ControllerClient<Channel> {
        ControllerClient::new(self.channel().await)
    }
    pub async fn group(&self) -> GroupControllerClient<Channel> {
        GroupControllerClient::new(self.channel().await)
    }
    pub async fn node(&self) -> NodeClient<Channel> {
        NodeClient::new(self.channel().await)
    }
    pub async fn identity(&self) -> IdentityClient<Channel> {
        IdentityClient::new(self.channel().await)
    }

    /// SIGKILL, like the kubelet killing a container.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits for a process that is expected to kill itself (failpoint).
    pub fn wait_dead(&mut self, timeout: Duration) -> bool {
        let t0 = Instant::now();
        while t0.elapsed() < timeout {
            if let Ok(Some(_)) = self.child.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    pub fn metrics_text(&self) -> String {
        let mut s = std::net::TcpStream::connect(&self.metrics).expect("metrics endpoint");
        write!(s, "GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        self.kill();
        if self._tmp.is_some() {
            cleanup_dir(&self.dir);
        }
    }
}

/// After a failed test: unmount everything under `dir`, detach loop devices backed
/// by files under it (deepest first, loops before their FUSE mounts), so one
/// failure does not leak into the machine or the next test.
pub fn cleanup_dir(dir: &Path) {
    let d = dir.to_string_lossy().to_string();
    let under = || {
        let mut m: Vec<PathBuf> = strake_csi::mount::mounts()
            .into_iter()
            .map(|(m, _, _)| m)
            .filter(|m| m.to_string_lossy().starts_with(&d))
            .collect();
        m.sort();
        m.reverse();
        m
    };
    for m in under() {
        if !m.ends_with("fuse") {
            let _ = Command::new("umount").arg(&m).status();
        }
    }
    if let Ok(out) = Command::new("losetup").args(["-n", "-O", "NAME,BACK-FILE"]).output() {
        for l in String::from_utf8_lossy(&out.stdout).lines() {
            let mut f = l.split_whitespace();
            if let (Some(dev), Some(back)) = (f.next(), f.next()) {
                if back.starts_with(&d) {
                    let _ = Command::new("losetup").args(["-d", dev]).status();
                }
            }
        }
    }
    for m in under() {
        let _ = Command::new("umount").arg(&m).status();
    }
}

pub struct CleanupOnDrop(pub PathBuf);
impl Drop for CleanupOnDrop {
    fn drop(&mut self) {
        cleanup_dir(&self.0);
    }
}

/// Deterministic pseudo-random bytes (xorshift), so checksums are reproducible.
pub fn fill(buf: &mut [u8], seed: &mut u64) {
    for chunk in buf.chunks_mut(8) {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        let b = seed.to_le_bytes();
        chunk.copy_from_slice(&b[..chunk.len()]);
    }
}

/// Writes `len` bytes of seeded data to `path` at `offset` (file or device), fsyncs,
/// and returns the sha256.
pub fn write_data(path: &Path, offset: u64, len: u64, seed: u64) -> String {
    use std::io::{Seek, SeekFrom};
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .unwrap();
    f.seek(SeekFrom::Start(offset)).unwrap();
    let mut h = Sha256::new();
    let mut s = seed | 1;
    let mut buf = vec![0u8; MIB as usize];
    let mut left = len;
    while left > 0 {
        let n = left.min(MIB) as usize;
        fill(&mut buf[..n], &mut s);
        f.write_all(&buf[..n]).unwrap();
        h.update(&buf[..n]);
        left -= n as u64;
    }
    f.sync_all().unwrap();
    format!("{:x}", h.finalize())
}

pub fn read_sha(path: &Path, offset: u64, len: u64) -> String {
    use std::io::{Seek, SeekFrom};
    let mut f = std::fs::File::open(path).unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
    f.seek(SeekFrom::Start(offset)).unwrap();
    let mut h = Sha256::new();
    let mut buf = vec![0u8; MIB as usize];
    let mut left = len;
    while left > 0 {
        let n = left.min(MIB) as usize;
        f.read_exact(&mut buf[..n]).unwrap();
        h.update(&buf[..n]);
        left -= n as u64;
    }
    format!("{:x}", h.finalize())
}

pub fn is_mountpoint(p: &Path) -> bool {
    strake_csi::mount::is_mountpoint(p)
}

/// No rbd-fuse, loop device or mount of ours left under `dir`.
pub fn assert_node_clean(dir: &Path) {
    let d = dir.to_string_lossy().to_string();
    let mounts: Vec<_> = strake_csi::mount::mounts()
        .into_iter()
        .filter(|(m, _, _)| m.to_string_lossy().starts_with(&d))
        .collect();
    assert!(mounts.is_empty(), "mounts left under {d}: {mounts:?}");
    let loops = Command::new("losetup")
        .args(["-n", "-O", "NAME,BACK-FILE"])
        .output()
        .unwrap();
    let loops = String::from_utf8_lossy(&loops.stdout);
    assert!(
        !loops.lines().any(|l| l.contains(&d)),
        "loop devices left for {d}: {loops}"
    );
}

pub async fn create(
    c: &mut ControllerClient<Channel>,
    name: &str,
    pool: &TestPool,
    size: u64,
    cap: VolumeCapability,
    source: Option<volume_content_source::Type>,
) -> Volume {
    c.create_volume(CreateVolumeRequest {
        name: name.into(),
        capacity_range: range(size),
        volume_capabilities: vec![cap],
        parameters: pool.params(),
        secrets: secrets(),
        volume_content_source: source.map(|t| VolumeContentSource { r#type: Some(t) }),
        ..Default::default()
    })
    .await
    .unwrap_or_else(|e| panic!("CreateVolume {name}: {e:?}"))
    .into_inner()
    .volume
    .unwrap()
}

pub async fn stage(n: &mut NodeClient<Channel>, v: &Volume, staging: &Path, cap: VolumeCapability) {
    n.node_stage_volume(NodeStageVolumeRequest {
        volume_id: v.volume_id.clone(),
        staging_target_path: staging.to_string_lossy().into(),
        volume_capability: Some(cap),
        secrets: secrets(),
        volume_context: v.volume_context.clone(),
        ..Default::default()
    })
    .await
    .unwrap_or_else(|e| panic!("NodeStageVolume {}: {e:?}", v.volume_id));
}

pub async fn publish(
    n: &mut NodeClient<Channel>,
    v: &Volume,
    staging: &Path,
    target: &Path,
    cap: VolumeCapability,
    readonly: bool,
) {
    n.node_publish_volume(NodePublishVolumeRequest {
        volume_id: v.volume_id.clone(),
        staging_target_path: staging.to_string_lossy().into(),
        target_path: target.to_string_lossy().into(),
        volume_capability: Some(cap),
        readonly,
        volume_context: v.volume_context.clone(),
        ..Default::default()
    })
    .await
    .unwrap_or_else(|e| panic!("NodePublishVolume {}: {e:?}", v.volume_id));
}

pub async fn unpublish(n: &mut NodeClient<Channel>, v: &Volume, target: &Path) {
    n.node_unpublish_volume(NodeUnpublishVolumeRequest {
        volume_id: v.volume_id.clone(),
        target_path: target.to_string_lossy().into(),
    })
    .await
    .unwrap_or_else(|e| panic!("NodeUnpublishVolume {}: {e:?}", v.volume_id));
}

pub async fn unstage(n: &mut NodeClient<Channel>, v: &Volume, staging: &Path) {
    n.node_unstage_volume(NodeUnstageVolumeRequest {
        volume_id: v.volume_id.clone(),
        staging_target_path: staging.to_string_lossy().into(),
    })
    .await
    .unwrap_or_else(|e| panic!("NodeUnstageVolume {}: {e:?}", v.volume_id));
}

/// The node id [`DriverOpts`] gives a node plugin unless a test names another.
pub const NODE: &str = "test-node";

/// ControllerPublishVolume to `node`, as the attach/detach controller does before the
/// kubelet may stage the volume there.
pub async fn publish_to(c: &mut ControllerClient<Channel>, v: &Volume, node: &str, cap: VolumeCapability) {
    c.controller_publish_volume(ControllerPublishVolumeRequest {
        volume_id: v.volume_id.clone(),
        node_id: node.into(),
        volume_capability: Some(cap),
        secrets: secrets(),
        volume_context: v.volume_context.clone(),
        ..Default::default()
    })
    .await
    .unwrap_or_else(|e| panic!("ControllerPublishVolume {} to {node}: {e:?}", v.volume_id));
}

pub async fn unpublish_from(c: &mut ControllerClient<Channel>, id: &str, node: &str) {
    c.controller_unpublish_volume(ControllerUnpublishVolumeRequest {
        volume_id: id.into(),
        node_id: node.into(),
        secrets: secrets(),
    })
    .await
    .unwrap_or_else(|e| panic!("ControllerUnpublishVolume {id} from {node}: {e:?}"));
}

/// ControllerUnpublishVolume from [`NODE`] (a no-op where it was never published),
/// then DeleteVolume: the order Kubernetes follows.
pub async fn delete(c: &mut ControllerClient<Channel>, id: &str) {
    unpublish_from(c, id, NODE).await;
    c.delete_volume(DeleteVolumeRequest {
        volume_id: id.into(),
        secrets: secrets(),
    })
    .await
    .unwrap_or_else(|e| panic!("DeleteVolume {id}: {e:?}"));
}

pub async fn snapshot(c: &mut ControllerClient<Channel>, name: &str, source: &str) -> Snapshot {
    c.create_snapshot(CreateSnapshotRequest {
        source_volume_id: source.into(),
        name: name.into(),
        secrets: secrets(),
        ..Default::default()
    })
    .await
    .unwrap_or_else(|e| panic!("CreateSnapshot {name}: {e:?}"))
    .into_inner()
    .snapshot
    .unwrap()
}

pub async fn delete_snapshot(c: &mut ControllerClient<Channel>, id: &str) {
    c.delete_snapshot(DeleteSnapshotRequest {
        snapshot_id: id.into(),
        secrets: secrets(),
    })
    .await
    .unwrap_or_else(|e| panic!("DeleteSnapshot {id}: {e:?}"));
}

pub fn from_snapshot(id: &str) -> Option<volume_content_source::Type> {
    Some(volume_content_source::Type::Snapshot(
        volume_content_source::SnapshotSource { snapshot_id: id.into() },
    ))
}

pub fn from_volume(id: &str) -> Option<volume_content_source::Type> {
    Some(volume_content_source::Type::Volume(
        volume_content_source::VolumeSource { volume_id: id.into() },
    ))
}

/// Every byte of an image, hashed through librbd (what is really in RADOS).
pub fn image_sha(pool: &TestPool, image: &str) -> String {
    let io = pool.io();
    let img = io.open_read_only(image).unwrap();
    let size = img.size().unwrap();
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 4 * MIB as usize];
    let mut off = 0;
    while off < size {
        let n = (size - off).min(buf.len() as u64) as usize;
        assert_eq!(img.read_at(off, &mut buf[..n]).unwrap(), n);
        h.update(&buf[..n]);
        off += n as u64;
    }
    format!("{:x}", h.finalize())
}

pub fn image_name(v: &Volume) -> String {
    v.volume_context["imageName"].clone()
}

pub fn cap_with_mode(mut c: VolumeCapability, mode: Mode) -> VolumeCapability {
    c.access_mode = Some(AccessMode { mode: mode as i32 });
    c
}

/// CreateVolumeGroupSnapshot of `sources` named `name`.
pub async fn group_snapshot(
    g: &mut GroupControllerClient<Channel>,
    name: &str,
    sources: &[&Volume],
) -> Result<VolumeGroupSnapshot, tonic::Status> {
    g.create_volume_group_snapshot(CreateVolumeGroupSnapshotRequest {
        name: name.into(),
        source_volume_ids: sources.iter().map(|v| v.volume_id.clone()).collect(),
        secrets: secrets(),
        ..Default::default()
    })
    .await
    .map(|r| r.into_inner().group_snapshot.unwrap())
}

pub async fn delete_group_snapshot(g: &mut GroupControllerClient<Channel>, id: &str) {
    g.delete_volume_group_snapshot(DeleteVolumeGroupSnapshotRequest {
        group_snapshot_id: id.into(),
        secrets: secrets(),
        ..Default::default()
    })
    .await
    .unwrap_or_else(|e| panic!("DeleteVolumeGroupSnapshot {id}: {e:?}"));
}

/// Every RBD snapshot of every image in the pool (any namespace), and every group:
/// what a group snapshot must not leave behind.
pub fn snapshots_and_groups(pool: &TestPool) -> (Vec<String>, Vec<String>) {
    let io = pool.io();
    let mut snaps = vec![];
    for i in io.list_images().unwrap() {
        let img = io.open_read_only(&i.name).unwrap();
        for s in img.snaps().unwrap() {
            if s.name != i.name {
                snaps.push(format!("{}@{}", i.name, s.name));
            }
        }
    }
    (snaps, io.group_list().unwrap())
}
