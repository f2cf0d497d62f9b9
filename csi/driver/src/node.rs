//! The CSI Node service: stage (attach, mkfs on first use, mount), publish (bind
//! mount), stats, expansion, and re-adoption of attachments after a plugin restart.
//!
//! State lives in `<state-dir>/volumes/<volume key>/state.json`, written right after
//! the attach (before mkfs and mount) so a plugin killed mid-stage finds and finishes
//! or tears down what it started. The state dir must survive plugin restarts (a
//! hostPath in the DaemonSet).
use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tonic::{Request, Response, Status};

use crate::attach::{attacher, AttachOptions, AttachRequest, Attacher, AttacherKind, Attachment};
use crate::cephconn::{credentials, Connections};
use crate::csi::node_server::Node;
use crate::csi::node_service_capability::rpc::Type as CapType;
use crate::csi::volume_capability::access_mode::Mode;
use crate::csi::*;
use crate::errors::{self, blocking, Error};
use crate::ids::{Naming, VolumeId};
use crate::journal::Journal;
use crate::locks::KeyLocks;
use crate::metrics::{self, instrument};
use crate::mount::{self, GrowError};
use crate::params::{check_capability, AccessKind};

#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub node_id: String,
    /// Journal instance (`--instance-id`): where ControllerPublishVolume's records are.
    pub instance: String,
    /// This node's topology segments (NodeGetInfo), see `topology`.
    pub topology: std::collections::BTreeMap<String, String>,
    pub state_dir: PathBuf,
    /// Attach path when the volume does not name one (`mounter` parameter).
    pub default_attacher: Option<AttacherKind>,
    pub max_volumes: i64,
    pub lock_timeout: Duration,
    pub default_fs: String,
    pub naming: Naming,
    pub attach: AttachOptions,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "lowercase")]
pub enum StagedKind {
    Block,
    Mount { fs_type: String, flags: Vec<String> },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StagedVolume {
    pub volume_id: String,
    pub staging_path: PathBuf,
    pub kind: StagedKind,
    pub attachment: Attachment,
    /// An online ext4 grow was refused; grow offline at the next stage.
    #[serde(default)]
    pub pending_offline_grow: bool,
    /// Attached read-only and mounted `ro` (reader-only access modes).
    #[serde(default)]
    pub read_only: bool,
    /// The dm-crypt mapping over the device (encrypted volumes on krbd/rbd-nbd).
    #[serde(default)]
    pub crypt: Option<String>,
}

impl StagedVolume {
    /// The block device the filesystem or the pod sees: the decrypted mapping when
    /// there is one.
    pub fn dev(&self) -> PathBuf {
        match &self.crypt {
            Some(name) => crate::crypt::mapped(name),
            None => self.attachment.device.clone(),
        }
    }
}

#[derive(Clone)]
pub struct NodeService {
    cfg: Arc<NodeConfig>,
    conns: Arc<Connections>,
    locks: Arc<KeyLocks>,
}

fn internal(ctx: &str, e: anyhow::Error) -> Error {
    Error::internal(format!("{ctx}: {e:#}"))
}

impl NodeService {
    pub fn new(cfg: NodeConfig, conns: Arc<Connections>) -> Self {
        NodeService {
            cfg: Arc::new(cfg),
            conns,
            locks: KeyLocks::new(),
        }
    }

    fn attacher(&self, kind: AttacherKind) -> Box<dyn Attacher> {
        attacher(kind, &self.cfg.attach)
    }

    fn volume_dir(&self, volume_id: &str) -> PathBuf {
        let key: String = volume_id
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' })
            .collect();
        self.cfg.state_dir.join("volumes").join(key)
    }

    fn load(&self, volume_id: &str) -> Result<Option<StagedVolume>, Error> {
        let p = self.volume_dir(volume_id).join("state.json");
        match fs::read(&p) {
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| Error::internal(format!("node state {} is corrupt: {e}; unstage by hand", p.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::internal(format!("reading {}: {e}", p.display()))),
        }
    }

    fn save(&self, st: &StagedVolume) -> Result<(), Error> {
        let dir = self.volume_dir(&st.volume_id);
        fs::create_dir_all(&dir).map_err(|e| Error::internal(format!("creating {}: {e}", dir.display())))?;
        let tmp = dir.join("state.json.tmp");
        let data = serde_json::to_vec_pretty(st).expect("state serialises");
        fs::write(&tmp, data)
            .and_then(|_| fs::File::open(&tmp)?.sync_all())
            .and_then(|_| fs::rename(&tmp, dir.join("state.json")))
            .map_err(|e| Error::internal(format!("writing node state in {}: {e}", dir.display())))
    }

    fn all_staged(&self) -> Vec<StagedVolume> {
        let Ok(rd) = fs::read_dir(self.cfg.state_dir.join("volumes")) else {
            return vec![];
        };
        rd.flatten()
            .filter_map(|e| fs::read(e.path().join("state.json")).ok())
            .filter_map(|b| serde_json::from_slice::<StagedVolume>(&b).ok())
            .collect()
    }

    /// Refreshes the attached-volumes gauges from the state dir.
    fn update_gauges(&self) {
        let staged = self.all_staged();
        for k in AttacherKind::ALL {
            metrics::set_attached(
                &k.to_string(),
                staged.iter().filter(|s| s.attachment.kind == k).count() as i64,
            );
        }
        let dead = staged
            .iter()
            .filter(|s| self.attacher(s.attachment.kind).check(&s.attachment).is_some())
            .count();
        metrics::global().helpers_dead.set(dead as i64);
    }

    /// Called at start: finds the attachments a previous plugin process made and takes
    /// them over. Their helpers never depended on that process, so published volumes
    /// kept working across the restart; this only restores our bookkeeping (and
    /// reports what did not survive, e.g. after a node reboot).
    pub fn adopt(&self) -> (usize, usize) {
        let (mut ok, mut broken) = (0, 0);
        for mut st in self.all_staged() {
            let a = self.attacher(st.attachment.kind);
            // The helper PID may have been unknown when the state was written.
            if st.attachment.kind == AttacherKind::FuseLoop
                && st.attachment.helper_pid.is_none_or(|p| !crate::attach::pid_alive(p))
            {
                if let Some(pid) = st.attachment.fuse_dir.as_deref().and_then(crate::attach::fuse_pid) {
                    st.attachment.helper_pid = Some(pid);
                    let _ = self.save(&st);
                }
            }
            match a.check(&st.attachment) {
                None => {
                    ok += 1;
                    tracing::info!(volume_id = st.volume_id, device = %st.attachment.device.display(), helper_pid = ?st.attachment.helper_pid, attacher = %st.attachment.kind, "re-adopted attachment");
                }
                Some(why) => {
                    broken += 1;
                    tracing::error!(volume_id = st.volume_id, problem = why, "attachment did not survive; the volume needs NodeUnstageVolume + NodeStageVolume (restart its pod)");
                }
            }
        }
        self.update_gauges();
        (ok, broken)
    }

    async fn lock(&self, volume_id: &str) -> Result<crate::locks::KeyGuard, Error> {
        self.locks
            .lock(&format!("node/{volume_id}"), self.cfg.lock_timeout)
            .await
            .ok_or_else(|| Error::aborted(format!("another operation on volume {volume_id} is in progress; retry")))
    }

    fn stage_blocking(
        &self,
        req: NodeStageVolumeRequest,
        kind: StagedKind,
        read_only: bool,
        creds: strake_ceph::Credentials,
    ) -> Result<(), Error> {
        let staging = PathBuf::from(&req.staging_target_path);
        let id = VolumeId::parse(&req.volume_id)
            .ok_or_else(|| Error::not_found(format!("volume {} does not exist", req.volume_id)))?;
        let pool = req
            .volume_context
            .get("pool")
            .cloned()
            .unwrap_or_else(|| id.pool.clone());
        let image = req
            .volume_context
            .get("imageName")
            .cloned()
            .unwrap_or_else(|| self.cfg.naming.volume_image(&id.uuid));
        // Both reach librbd and a helper's command line.
        crate::validate::pool(&pool)
            .and_then(|_| crate::validate::image(&image))
            .map_err(|e| Error::invalid_argument(format!("volume_context of {}: {e}", req.volume_id)))?;
        let kind_attacher = match req.volume_context.get("mounter") {
            Some(m) => m.parse::<AttacherKind>().map_err(Error::invalid_argument)?,
            None => self.cfg.default_attacher.ok_or_else(|| {
                Error::failed_precondition(
                    "this node has no way to attach RBD images: no krbd, no nbd, no FUSE helper (see --attacher)",
                )
            })?,
        };
        kind_attacher.available().map_err(|why| {
            Error::failed_precondition(format!(
                "attach path {kind_attacher} is not usable on node {}: {why}",
                self.cfg.node_id
            ))
        })?;

        // Check credentials and that the image exists before starting helpers (the
        // errors are much clearer from librbd than from a dying helper), and that the
        // journal says this node holds the volume.
        let cluster = self.conns.get(Some(&creds))?;
        let open_pool = |p: &str| {
            cluster.ioctx(p).map_err(|e| match e.is_not_found() {
                true => Error::not_found(format!("volume {}: pool {p} does not exist", req.volume_id)),
                false => errors::ceph("opening pool", e),
            })
        };
        let io = open_pool(&pool)?;
        let jio = if id.pool == pool {
            None
        } else {
            Some(open_pool(&id.pool)?)
        };
        let j = Journal::new(jio.as_ref().unwrap_or(&io), &self.cfg.instance);
        io.open_read_only(&image).map_err(|e| match e.is_not_found() {
            true => Error::not_found(format!(
                "volume {} does not exist (no image {pool}/{image})",
                req.volume_id
            )),
            false => errors::ceph(&format!("opening {pool}/{image}"), e),
        })?;
        let attached = self
            .load(&req.volume_id)?
            .filter(|st| self.attacher(st.attachment.kind).check(&st.attachment).is_none());
        let (holder, before) = if attached.is_some() {
            let me = crate::publish::holders(&j, &id.uuid)?
                .holders
                .into_iter()
                .find(|h| h.node == self.cfg.node_id)
                .ok_or_else(|| {
                    Error::failed_precondition(format!(
                        "volume {} is attached here but no longer published to node {} (unpublished, or fenced \
                         after this node was declared lost): unstage it",
                        req.volume_id, self.cfg.node_id
                    ))
                })?;
            (me, vec![])
        } else {
            crate::publish::claim_for_stage(&io, &j, &id.uuid, &image, &req.volume_id, &self.cfg.node_id)?
        };
        let read_only = read_only || holder.readonly;
        if let Some(st) = self.load(&req.volume_id)? {
            if st.read_only != read_only {
                return Err(Error::already_exists(format!(
                    "volume {} is already staged {} on this node; the capability asks for it {}",
                    req.volume_id,
                    if st.read_only { "read-only" } else { "read-write" },
                    if read_only { "read-only" } else { "read-write" },
                )));
            }
            if st.staging_path != staging {
                return Err(Error::already_exists(format!(
                    "volume {} is already staged at {}, not {}",
                    req.volume_id,
                    st.staging_path.display(),
                    staging.display()
                )));
            }
            if st.kind != kind {
                return Err(Error::already_exists(format!(
                    "volume {} is already staged with a different capability",
                    req.volume_id
                )));
            }
        }

        // An encrypted volume: its passphrase, unwrapped with the node-stage Secret's KEK.
        let passphrase = if req.volume_context.get("encrypted").is_some_and(|v| v == "true") {
            let kms = crate::kms::SecretKms::from_secrets(&req.secrets, "NodeStageVolume", "node-stage")?;
            let img = io
                .open_read_only(&image)
                .map_err(|e| errors::ceph(&format!("opening {pool}/{image}"), e))?;
            Some(crate::kms::Kms::fetch(&kms, &img, &id.uuid)?)
        } else {
            None
        };
        let in_kernel = matches!(kind_attacher, AttacherKind::Krbd | AttacherKind::RbdNbd);
        if passphrase.is_some() && in_kernel {
            crate::crypt::available()
                .map_err(|why| Error::failed_precondition(format!("volume {} is encrypted: {why}", req.volume_id)))?;
        }
        let mut st = match attached {
            Some(st) => st,
            None => {
                if let Some(old) = self.load(&req.volume_id)? {
                    // A dead attachment (e.g. the helper died): clean it before re-attaching.
                    let _ = mount::umount(&old.staging_path);
                    let _ = self.attacher(old.attachment.kind).detach(&old.attachment);
                }
                let dir = self.volume_dir(&req.volume_id);
                let att = self
                    .attacher(kind_attacher)
                    .attach(&AttachRequest {
                        pool: &pool,
                        image: &image,
                        creds: &creds,
                        conf: self.conns.conf(),
                        dir: &dir,
                        read_only,
                        passphrase: passphrase.as_ref().filter(|_| !in_kernel).map(|p| p.bytes()),
                    })
                    .map_err(|e| internal(&format!("attaching {pool}/{image} with {kind_attacher}"), e))?;
                tracing::info!(volume_id = req.volume_id, device = %att.device.display(), attacher = %kind_attacher, "attached");
                let claim = crate::publish::record_claim(&io, &j, &id.uuid, &image, &self.cfg.node_id, &before)?;
                tracing::info!(volume_id = req.volume_id, clients = ?claim.clients, "claim recorded");
                let mut st = StagedVolume {
                    volume_id: req.volume_id.clone(),
                    staging_path: staging.clone(),
                    kind: kind.clone(),
                    attachment: att,
                    pending_offline_grow: false,
                    read_only,
                    crypt: None,
                };
                // Recorded before the mapping exists, so an unstage after a crash closes it.
                if let (Some(p), true) = (&passphrase, in_kernel) {
                    let name = crate::crypt::name(&image);
                    st.crypt = Some(name.clone());
                    self.save(&st)?;
                    crate::crypt::open(&st.attachment.device, &name, p.bytes(), read_only)
                        .map_err(|e| internal("opening the LUKS2 mapping", e))?;
                }
                self.save(&st)?;
                st
            }
        };
        if let StagedKind::Mount { fs_type, flags } = &kind {
            if !mount::is_mountpoint(&staging) {
                fs::create_dir_all(&staging)
                    .map_err(|e| Error::internal(format!("creating {}: {e}", staging.display())))?;
                let dev = st.dev();
                // Never format a device that holds anything: only when low-level
                // probing finds neither a filesystem, nor any other signature, nor a
                // partition table (as kubelet's safe formatting does).
                let found = mount::probe(&dev).map_err(|e| {
                    Error::failed_precondition(format!(
                        "volume {}: cannot tell what {} holds, so it is not formatted: {e:#}",
                        req.volume_id,
                        dev.display()
                    ))
                })?;
                match (&found.content, &found.partition_table) {
                    (None, None) if read_only => {
                        return Err(Error::failed_precondition(format!(
                            "volume {} holds no filesystem and is staged read-only, so it cannot be formatted; \
                             stage it once read-write (or restore it from a snapshot) first",
                            req.volume_id
                        )));
                    }
                    (None, None) => {
                        tracing::info!(
                            volume_id = req.volume_id,
                            fs = fs_type,
                            "first use: creating filesystem"
                        );
                        mount::mkfs(&dev, fs_type).map_err(|e| internal("mkfs", e))?;
                    }
                    (None, Some(pt)) => {
                        return Err(Error::failed_precondition(format!(
                            "volume {} holds a {pt} partition table and no {fs_type} filesystem; strake-csi never \
                             formats a device that holds something. Use it as a raw block volume, or wipe it \
                             yourself (wipefs -a) if its content is not needed",
                            req.volume_id
                        )));
                    }
                    (Some(found), _) if found != fs_type => {
                        return Err(Error::failed_precondition(format!(
                            "volume {} already holds {found} but the capability asks for {fs_type}; \
                             use fsType {found} or a new volume (data is never reformatted)",
                            req.volume_id
                        )));
                    }
                    (Some(_), _) if fs_type == "ext4" && !read_only => {
                        // Grow offline if the device outgrew the filesystem (a restore into
                        // a bigger volume, or an online grow that lacked CAP_SYS_RESOURCE).
                        let devsize = mount::device_size(&dev).map_err(|e| internal("sizing the device", e))?;
                        let fssize = mount::ext4_size(&dev).map_err(|e| internal("sizing ext4", e))?;
                        if fssize + (1 << 20) < devsize {
                            tracing::info!(
                                volume_id = req.volume_id,
                                fssize,
                                devsize,
                                "growing ext4 offline before mounting"
                            );
                            mount::grow_ext4_offline(&dev).map_err(|e| internal("growing ext4 offline", e))?;
                        }
                    }
                    (Some(_), _) => {}
                }
                mount::mount_fs(&dev, &staging, fs_type, flags, read_only).map_err(|e| internal("mounting", e))?;
                if fs_type == "xfs" && !read_only {
                    // No-op unless the device outgrew the filesystem (e.g. a restore into
                    // a bigger volume).
                    if let Err(GrowError::Other(e)) = mount::grow_online("xfs", &dev, &staging) {
                        tracing::warn!(volume_id = req.volume_id, error = %e, "xfs_growfs after mount failed");
                    }
                }
            }
        }
        if st.pending_offline_grow {
            st.pending_offline_grow = false;
            self.save(&st)?;
        }
        Ok(())
    }

    fn unstage_blocking(&self, req: NodeUnstageVolumeRequest) -> Result<(), Error> {
        let staging = PathBuf::from(&req.staging_target_path);
        let Some(st) = self.load(&req.volume_id)? else {
            // Nothing recorded: at most a stale mount to clear.
            mount::umount(&staging).map_err(|e| internal("unmounting", e))?;
            return Ok(());
        };
        mount::umount(&st.staging_path).map_err(|e| internal("unmounting the staging path", e))?;
        if let Some(name) = &st.crypt {
            crate::crypt::close(name).map_err(|e| internal("closing the LUKS2 mapping", e))?;
        }
        self.attacher(st.attachment.kind)
            .detach(&st.attachment)
            .map_err(|e| internal("detaching", e))?;
        let dir = self.volume_dir(&req.volume_id);
        fs::remove_dir_all(&dir).map_err(|e| Error::internal(format!("removing {}: {e}", dir.display())))?;
        tracing::info!(volume_id = req.volume_id, "unstaged");
        Ok(())
    }
}

fn mode_readonly(m: Mode) -> bool {
    matches!(m, Mode::SingleNodeReaderOnly | Mode::MultiNodeReaderOnly)
}

fn staged_kind(kind: AccessKind) -> StagedKind {
    match kind {
        AccessKind::Block => StagedKind::Block,
        AccessKind::Mount { fs_type, flags } => StagedKind::Mount { fs_type, flags },
    }
}

#[tonic::async_trait]
impl Node for NodeService {
    async fn node_stage_volume(
        &self,
        request: Request<NodeStageVolumeRequest>,
    ) -> Result<Response<NodeStageVolumeResponse>, Status> {
        instrument("NodeStageVolume", async {
            let req = request.into_inner();
            if req.volume_id.is_empty() {
                return Err(Status::invalid_argument("volume_id is required"));
            }
            if req.staging_target_path.is_empty() {
                return Err(Status::invalid_argument("staging_target_path is required"));
            }
            let cap = req
                .volume_capability
                .as_ref()
                .ok_or_else(|| Status::invalid_argument("volume_capability is required"))?;
            crate::validate::co_path("staging_target_path", &req.staging_target_path)
                .map_err(Status::invalid_argument)?;
            let (kind, mode) = check_capability(cap, &self.cfg.default_fs).map_err(Status::invalid_argument)?;
            let creds = credentials(&req.secrets, "NodeStageVolume", "node-stage")?;
            let _g = self.lock(&req.volume_id).await?;
            let this = self.clone();
            let read_only = mode_readonly(mode);
            let r = blocking(move || this.stage_blocking(req, staged_kind(kind), read_only, creds)).await;
            self.update_gauges();
            r.map(|_| NodeStageVolumeResponse {}).map_err(Status::from)
        })
        .await
    }

    async fn node_unstage_volume(
        &self,
        request: Request<NodeUnstageVolumeRequest>,
    ) -> Result<Response<NodeUnstageVolumeResponse>, Status> {
        instrument("NodeUnstageVolume", async {
            let req = request.into_inner();
            if req.volume_id.is_empty() {
                return Err(Status::invalid_argument("volume_id is required"));
            }
            if req.staging_target_path.is_empty() {
                return Err(Status::invalid_argument("staging_target_path is required"));
            }
            let _g = self.lock(&req.volume_id).await?;
            let this = self.clone();
            let r = blocking(move || this.unstage_blocking(req)).await;
            self.update_gauges();
            r.map(|_| NodeUnstageVolumeResponse {}).map_err(Status::from)
        })
        .await
    }

    async fn node_publish_volume(
        &self,
        request: Request<NodePublishVolumeRequest>,
    ) -> Result<Response<NodePublishVolumeResponse>, Status> {
        instrument("NodePublishVolume", async {
            let req = request.into_inner();
            if req.volume_id.is_empty() {
                return Err(Status::invalid_argument("volume_id is required"));
            }
            if req.target_path.is_empty() {
                return Err(Status::invalid_argument("target_path is required"));
            }
            if req.staging_target_path.is_empty() {
                return Err(Status::invalid_argument(
                    "staging_target_path is required (this driver stages volumes)",
                ));
            }
            let cap = req
                .volume_capability
                .as_ref()
                .ok_or_else(|| Status::invalid_argument("volume_capability is required"))?;
            let (kind, mode) = check_capability(cap, &self.cfg.default_fs).map_err(Status::invalid_argument)?;
            crate::validate::co_path("target_path", &req.target_path).map_err(Status::invalid_argument)?;
            let _g = self.lock(&req.volume_id).await?;
            let this = self.clone();
            blocking(move || {
                let st = this.load(&req.volume_id)?.ok_or_else(|| {
                    Status::failed_precondition(format!(
                        "volume {} is not staged on this node: call NodeStageVolume first",
                        req.volume_id
                    ))
                })?;
                let target = PathBuf::from(&req.target_path);
                let readonly = req.readonly || mode_readonly(mode) || st.read_only;
                if mount::is_mountpoint(&target) {
                    return Ok(NodePublishVolumeResponse {});
                }
                match (&kind, &st.kind) {
                    (AccessKind::Block, StagedKind::Block) => {
                        if let Some(parent) = target.parent() {
                            fs::create_dir_all(parent)
                                .map_err(|e| Status::internal(format!("creating {}: {e}", parent.display())))?;
                        }
                        if !target.exists() {
                            fs::File::create(&target)
                                .map_err(|e| Status::internal(format!("creating {}: {e}", target.display())))?;
                        }
                        mount::bind(&st.dev(), &target, readonly).map_err(|e| internal("publishing", e))?;
                    }
                    (AccessKind::Mount { .. }, StagedKind::Mount { .. }) => {
                        fs::create_dir_all(&target)
                            .map_err(|e| Status::internal(format!("creating {}: {e}", target.display())))?;
                        mount::bind(&st.staging_path, &target, readonly).map_err(|e| internal("publishing", e))?;
                    }
                    _ => {
                        return Err(Status::invalid_argument(format!(
                            "volume {} was staged as {:?} but publish asks for a different access type",
                            req.volume_id, st.kind
                        )))
                    }
                }
                tracing::info!(
                    volume_id = req.volume_id,
                    target = req.target_path,
                    readonly,
                    "published"
                );
                Ok(NodePublishVolumeResponse {})
            })
            .await
        })
        .await
    }

    async fn node_unpublish_volume(
        &self,
        request: Request<NodeUnpublishVolumeRequest>,
    ) -> Result<Response<NodeUnpublishVolumeResponse>, Status> {
        instrument("NodeUnpublishVolume", async {
            let req = request.into_inner();
            if req.volume_id.is_empty() {
                return Err(Status::invalid_argument("volume_id is required"));
            }
            if req.target_path.is_empty() {
                return Err(Status::invalid_argument("target_path is required"));
            }
            let _g = self.lock(&req.volume_id).await?;
            blocking(move || {
                let target = PathBuf::from(&req.target_path);
                mount::umount(&target).map_err(|e| internal("unpublishing", e))?;
                if target.is_dir() {
                    let _ = fs::remove_dir(&target);
                } else if target.exists() {
                    let _ = fs::remove_file(&target);
                }
                tracing::info!(volume_id = req.volume_id, target = req.target_path, "unpublished");
                Ok(NodeUnpublishVolumeResponse {})
            })
            .await
        })
        .await
    }

    async fn node_get_volume_stats(
        &self,
        request: Request<NodeGetVolumeStatsRequest>,
    ) -> Result<Response<NodeGetVolumeStatsResponse>, Status> {
        instrument("NodeGetVolumeStats", async {
            let req = request.into_inner();
            if req.volume_id.is_empty() || req.volume_path.is_empty() {
                return Err(Status::invalid_argument("volume_id and volume_path are required"));
            }
            let this = self.clone();
            blocking(move || {
                let path = PathBuf::from(&req.volume_path);
                if !path.exists() {
                    return Err(Status::not_found(format!(
                        "volume path {} does not exist",
                        req.volume_path
                    )));
                }
                let condition = match this.load(&req.volume_id)? {
                    Some(st) => match this.attacher(st.attachment.kind).check(&st.attachment) {
                        Some(why) => VolumeCondition {
                            abnormal: true,
                            message: why,
                        },
                        None => VolumeCondition {
                            abnormal: false,
                            message: "attached and healthy".into(),
                        },
                    },
                    None => VolumeCondition {
                        abnormal: true,
                        message: "volume is not staged on this node".into(),
                    },
                };
                let usage = if mount::is_block_device(&path) {
                    let size = mount::device_size(&path).map_err(|e| internal("sizing", e))? as i64;
                    vec![VolumeUsage {
                        total: size,
                        unit: volume_usage::Unit::Bytes as i32,
                        ..Default::default()
                    }]
                } else {
                    let s = nix::sys::statvfs::statvfs(&path)
                        .map_err(|e| Status::internal(format!("statvfs {}: {e}", path.display())))?;
                    let bs = s.fragment_size() as i64;
                    vec![
                        VolumeUsage {
                            total: s.blocks() as i64 * bs,
                            available: s.blocks_available() as i64 * bs,
                            used: (s.blocks() as i64 - s.blocks_free() as i64) * bs,
                            unit: volume_usage::Unit::Bytes as i32,
                        },
                        VolumeUsage {
                            total: s.files() as i64,
                            available: s.files_available() as i64,
                            used: s.files() as i64 - s.files_free() as i64,
                            unit: volume_usage::Unit::Inodes as i32,
                        },
                    ]
                };
                Ok(NodeGetVolumeStatsResponse {
                    usage,
                    volume_condition: Some(condition),
                })
            })
            .await
        })
        .await
    }

    async fn node_expand_volume(
        &self,
        request: Request<NodeExpandVolumeRequest>,
    ) -> Result<Response<NodeExpandVolumeResponse>, Status> {
        instrument("NodeExpandVolume", async {
            let req = request.into_inner();
            if req.volume_id.is_empty() || req.volume_path.is_empty() {
                return Err(Status::invalid_argument("volume_id and volume_path are required"));
            }
            let _g = self.lock(&req.volume_id).await?;
            let this = self.clone();
            blocking(move || {
                let mut st = this.load(&req.volume_id)?.ok_or_else(|| {
                    Status::not_found(format!("volume {} is not staged on this node", req.volume_id))
                })?;
                if !Path::new(&req.volume_path).exists() {
                    return Err(Status::not_found(format!("volume path {} does not exist", req.volume_path)));
                }
                let a = this.attacher(st.attachment.kind);
                a.refresh_size(&st.attachment).map_err(|e| internal("refreshing the device size", e))?;
                if let Some(name) = &st.crypt {
                    crate::crypt::resize(name, None).map_err(|e| internal("growing the LUKS2 mapping", e))?;
                }
                let dev = st.dev();
                let size = mount::device_size(&dev).map_err(|e| internal("sizing", e))? as i64;
                if let Some(want) = req.capacity_range.as_ref().map(|r| r.required_bytes) {
                    if want > size {
                        return Err(Status::out_of_range(format!(
                            "the device is {size} bytes, less than the {want} requested: was ControllerExpandVolume called?"
                        )));
                    }
                }
                if let (StagedKind::Mount { fs_type, .. }, false) = (&st.kind, st.read_only) {
                    match mount::grow_online(fs_type, &dev, &st.staging_path) {
                        Ok(()) => tracing::info!(volume_id = req.volume_id, size, "filesystem grown online"),
                        Err(GrowError::NeedsOffline(e)) => {
                            st.pending_offline_grow = true;
                            this.save(&st)?;
                            return Err(Status::failed_precondition(format!(
                                "growing ext4 online needs CAP_SYS_RESOURCE, which this node plugin lacks ({e}). \
                                 The device is already {size} bytes; the filesystem grows offline at the next \
                                 NodeStageVolume (restart the pod using it), or give the plugin CAP_SYS_RESOURCE, or use xfs"
                            )));
                        }
                        Err(GrowError::Other(e)) => return Err(internal("growing the filesystem", e).into()),
                    }
                }
                Ok(NodeExpandVolumeResponse { capacity_bytes: size })
            })
            .await
        })
        .await
    }

    async fn node_get_capabilities(
        &self,
        _: Request<NodeGetCapabilitiesRequest>,
    ) -> Result<Response<NodeGetCapabilitiesResponse>, Status> {
        instrument("NodeGetCapabilities", async {
            let caps = [
                CapType::StageUnstageVolume,
                CapType::GetVolumeStats,
                CapType::ExpandVolume,
                CapType::VolumeCondition,
                CapType::SingleNodeMultiWriter,
            ];
            Ok(NodeGetCapabilitiesResponse {
                capabilities: caps
                    .iter()
                    .map(|t| NodeServiceCapability {
                        r#type: Some(node_service_capability::Type::Rpc(node_service_capability::Rpc {
                            r#type: *t as i32,
                        })),
                    })
                    .collect(),
            })
        })
        .await
    }

    async fn node_get_info(&self, _: Request<NodeGetInfoRequest>) -> Result<Response<NodeGetInfoResponse>, Status> {
        instrument("NodeGetInfo", async {
            Ok(NodeGetInfoResponse {
                node_id: self.cfg.node_id.clone(),
                max_volumes_per_node: self.cfg.max_volumes,
                accessible_topology: (!self.cfg.topology.is_empty()).then(|| Topology {
                    segments: self.cfg.topology.clone().into_iter().collect(),
                }),
            })
        })
        .await
    }
}

/// Volume ids currently staged (for tests and `strake-csi` diagnostics).
pub fn staged_ids(state_dir: &Path) -> HashMap<String, PathBuf> {
    let Ok(rd) = fs::read_dir(state_dir.join("volumes")) else {
        return HashMap::new();
    };
    rd.flatten()
        .filter_map(|e| fs::read(e.path().join("state.json")).ok())
        .filter_map(|b| serde_json::from_slice::<StagedVolume>(&b).ok())
        .map(|s| (s.volume_id.clone(), s.dev()))
        .collect()
}
