//! The CSI Controller service: volumes, snapshots, clones, expansion, listing.
//!
//! Shape of every mutating RPC: validate → take the in-process lock for the CSI name
//! (or id) → on the blocking pool: connect with the request's secrets, read the
//! journal, reserve or resume, run idempotent steps, mark the record ready (or remove
//! it). A crash anywhere leaves a record that the retry resumes from; see `journal`.
//!
//! Snapshots follow the layout ceph-csi uses, for the same reason: a CSI snapshot must
//! outlive its source volume, and an RBD snapshot cannot. CreateSnapshot takes a
//! temporary RBD snapshot of the source, clones it (clone v2) into the snapshot's own
//! image, takes the snapshot's RBD snapshot on that image, and drops the temporary
//! one. Restores are clone-v2 children of that snapshot. Deleting an image that still
//! has clones parks it in the RBD trash; it is purged when its last clone goes.
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use strake_ceph::{features, CephError, ImageOptions, IoCtx};
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::cephconn::{credentials, Connections};
use crate::csi::controller_server::Controller;
use crate::csi::controller_service_capability::rpc::Type as CapType;
use crate::csi::volume_content_source::{SnapshotSource, Type as SourceType, VolumeSource};
use crate::csi::*;
use crate::errors::{self, blocking};
use crate::failpoint;
use crate::ids::{Naming, SnapshotId, VolumeId};
use crate::images::{
    clone_hint, flatten_if_deep, ioctx, ioctx_for_id, ok_if, open, purge_trash, refuse_if_open, remove_or_trash,
};
use crate::journal::{now_secs, Journal, SnapRecord, Source, State, VolumeRecord};
use crate::locks::KeyLocks;
use crate::metrics::instrument;
use crate::params::{self, check_capabilities, parse_volume_params, size_for_range, size_satisfies, validate_name};

#[derive(Debug, Clone)]
pub struct ControllerConfig {
    /// Journal object suffix; separates drivers that share a pool.
    pub instance: String,
    pub naming: Naming,
    pub default_size: u64,
    pub max_size: u64,
    /// A new clone deeper than this in its parent chain is flattened before the RPC returns.
    pub max_clone_depth: u32,
    /// Pools ListVolumes/ListSnapshots/GetCapacity look at when a request names none.
    pub list_pools: Vec<String>,
    /// How long an RPC waits for another RPC on the same name before ABORTED.
    pub lock_timeout: Duration,
    pub default_fs: String,
}

#[derive(Clone)]
pub struct ControllerService {
    cfg: Arc<ControllerConfig>,
    conns: Arc<Connections>,
    locks: Arc<KeyLocks>,
}

impl ControllerService {
    pub fn new(cfg: ControllerConfig, conns: Arc<Connections>) -> Self {
        ControllerService {
            cfg: Arc::new(cfg),
            conns,
            locks: KeyLocks::new(),
        }
    }

    async fn lock(&self, key: String) -> Result<crate::locks::KeyGuard, Status> {
        self.locks.lock(&key, self.cfg.lock_timeout).await.ok_or_else(|| {
            Status::aborted(format!(
                "another operation on {key} has been running for over {:?}; retry later",
                self.cfg.lock_timeout
            ))
        })
    }
}

fn volume_context(rec: &VolumeRecord, pool: &str) -> HashMap<String, String> {
    let mut m = HashMap::from([
        ("pool".to_string(), pool.to_string()),
        ("imageName".to_string(), rec.image.clone()),
        ("imageFeatures".to_string(), features::names(rec.features)),
    ]);
    if let Some(mt) = &rec.mounter {
        m.insert("mounter".into(), mt.clone());
    }
    m
}

fn csi_volume(rec: &VolumeRecord, pool: &str) -> Volume {
    let content_source = rec.source.as_ref().map(|s| VolumeContentSource {
        r#type: Some(match s {
            Source::Snapshot { pool, uuid, .. } => SourceType::Snapshot(SnapshotSource {
                snapshot_id: SnapshotId {
                    pool: pool.clone(),
                    uuid: *uuid,
                }
                .to_string(),
            }),
            Source::Volume { pool, uuid, .. } => SourceType::Volume(VolumeSource {
                volume_id: VolumeId {
                    pool: pool.clone(),
                    uuid: *uuid,
                }
                .to_string(),
            }),
        }),
    });
    Volume {
        capacity_bytes: rec.size as i64,
        volume_id: VolumeId {
            pool: pool.to_string(),
            uuid: rec.uuid,
        }
        .to_string(),
        volume_context: volume_context(rec, pool),
        content_source,
        accessible_topology: vec![],
    }
}

fn csi_snapshot(rec: &SnapRecord, pool: &str) -> Snapshot {
    Snapshot {
        size_bytes: rec.size as i64,
        snapshot_id: SnapshotId {
            pool: pool.to_string(),
            uuid: rec.uuid,
        }
        .to_string(),
        source_volume_id: VolumeId {
            pool: pool.to_string(),
            uuid: rec.source_uuid,
        }
        .to_string(),
        creation_time: Some(Timestamp {
            seconds: rec.created_secs,
            nanos: rec.created_nanos,
        }),
        ready_to_use: rec.state == State::Ready,
        group_snapshot_id: String::new(),
    }
}

/// What CreateVolume was asked to copy from, resolved through the journal.
enum ResolvedSource {
    Snapshot(SnapRecord, String),
    Volume(VolumeRecord, String),
}

impl ResolvedSource {
    fn as_source(&self) -> Source {
        match self {
            ResolvedSource::Snapshot(r, pool) => Source::Snapshot {
                pool: pool.clone(),
                uuid: r.uuid,
                image: r.image.clone(),
            },
            ResolvedSource::Volume(r, pool) => Source::Volume {
                pool: pool.clone(),
                uuid: r.uuid,
                image: r.image.clone(),
            },
        }
    }
    fn size(&self) -> u64 {
        match self {
            ResolvedSource::Snapshot(r, _) => r.size,
            ResolvedSource::Volume(r, _) => r.size,
        }
    }
}

/// Same source = same kind and uuid (the CO may not switch the source on a retry).
fn same_source(a: &Option<Source>, b: &Option<Source>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(Source::Snapshot { uuid: x, .. }), Some(Source::Snapshot { uuid: y, .. })) => x == y,
        (Some(Source::Volume { uuid: x, .. }), Some(Source::Volume { uuid: y, .. })) => x == y,
        _ => false,
    }
}

impl ControllerService {
    /// Runs (or resumes) the steps that make `rec`'s image exist, then marks it ready.
    fn build_volume(&self, io: &IoCtx, j: &Journal, rec: &mut VolumeRecord) -> Result<(), Status> {
        let cfg = &self.cfg;
        let clone_opts = ImageOptions {
            features: Some(rec.features),
            clone_format: Some(2),
            data_pool: rec.data_pool.clone(),
            ..Default::default()
        };
        let exists = io
            .open_if_exists(&rec.image)
            .map_err(|e| errors::ceph("opening image", e))?
            .is_some();
        match rec.source.clone() {
            None => {
                if !exists {
                    let opts = ImageOptions {
                        features: Some(rec.features),
                        data_pool: rec.data_pool.clone(),
                        ..Default::default()
                    };
                    ok_if(
                        io.create_image(&rec.image, rec.size, &opts),
                        CephError::is_exists,
                        &format!("creating image {}", rec.image),
                    )?;
                }
            }
            Some(Source::Snapshot { pool, image: simg, .. }) => {
                if !exists {
                    let sio = ioctx(io.cluster(), &pool)?;
                    ok_if(
                        sio.clone_image(&simg, &simg, io, &rec.image, &clone_opts),
                        CephError::is_exists,
                        &format!("cloning {simg}@{simg} into {}", rec.image),
                    )
                    .map_err(clone_hint)?;
                }
            }
            Some(Source::Volume { pool, image: vimg, .. }) => {
                let sio = ioctx(io.cluster(), &pool)?;
                let tmp = cfg.naming.clone_temp_snap(&rec.uuid);
                if !exists {
                    let src = sio.open(&vimg).map_err(|e| match e.is_not_found() {
                        true => Status::not_found(format!("source volume image {vimg} no longer exists")),
                        false => errors::ceph("opening the source volume", e),
                    })?;
                    if !src
                        .snap_exists(&tmp)
                        .map_err(|e| errors::ceph("checking the clone's temporary snapshot", e))?
                    {
                        ok_if(
                            src.snap_create(&tmp),
                            CephError::is_exists,
                            &format!("snapshotting {vimg}@{tmp}"),
                        )?;
                    }
                    failpoint::hit("clone:after-temp-snap");
                    ok_if(
                        sio.clone_image(&vimg, &tmp, io, &rec.image, &clone_opts),
                        CephError::is_exists,
                        &format!("cloning {vimg}@{tmp} into {}", rec.image),
                    )
                    .map_err(clone_hint)?;
                    failpoint::hit("clone:after-clone");
                }
                // Always: a crash may have left the temporary snapshot behind.
                if let Some(src) = sio
                    .open_if_exists(&vimg)
                    .map_err(|e| errors::ceph("opening the source volume", e))?
                {
                    if src.snap_exists(&tmp).unwrap_or(false) {
                        ok_if(
                            src.snap_remove(&tmp),
                            CephError::is_not_found,
                            &format!("removing {vimg}@{tmp}"),
                        )?;
                    }
                }
            }
        }
        failpoint::hit("create:after-image");
        let img = open(io, &rec.image)?;
        let size = img.size().map_err(|e| errors::ceph("reading image size", e))?;
        if size < rec.size {
            img.resize(rec.size)
                .map_err(|e| errors::ceph(&format!("growing {} to the requested size", rec.image), e))?;
        }
        if rec.source.is_some() {
            flatten_if_deep(io, &img, cfg.max_clone_depth)?;
        }
        // For people reading `rbd info`: which CSI name this image belongs to.
        ok_if(img.metadata_set("strake.csi/name", &rec.name), |_| true, "")?;
        rec.size = img.size().map_err(|e| errors::ceph("reading image size", e))?;
        rec.state = State::Ready;
        j.put_volume(rec)
    }

    fn create_volume_blocking(
        &self,
        req: CreateVolumeRequest,
        p: params::VolumeParams,
        size: u64,
        creds: strake_ceph::Credentials,
        source: Option<SourceType>,
    ) -> Result<CreateVolumeResponse, Status> {
        let cluster = self.conns.get(Some(&creds))?;
        let io = ioctx(&cluster, &p.pool)?;
        let j = Journal::new(&io, &self.cfg.instance);
        j.ensure()?;
        // Resolve the content source through its pool's journal.
        let resolved = match source {
            None => None,
            Some(SourceType::Snapshot(s)) => {
                let id = SnapshotId::parse(&s.snapshot_id)
                    .ok_or_else(|| Status::not_found(format!("source snapshot {:?} does not exist", s.snapshot_id)))?;
                let sio = ioctx_for_id(&cluster, &id.pool)?
                    .ok_or_else(|| Status::not_found(format!("source snapshot {} does not exist", s.snapshot_id)))?;
                let rec = Journal::new(&sio, &self.cfg.instance)
                    .snap_by_uuid(&id.uuid)?
                    .ok_or_else(|| Status::not_found(format!("source snapshot {} does not exist", s.snapshot_id)))?;
                if rec.state != State::Ready {
                    return Err(Status::aborted(format!(
                        "source snapshot {} is not ready yet; retry",
                        s.snapshot_id
                    )));
                }
                Some(ResolvedSource::Snapshot(rec, id.pool))
            }
            Some(SourceType::Volume(v)) => {
                let id = VolumeId::parse(&v.volume_id)
                    .ok_or_else(|| Status::not_found(format!("source volume {:?} does not exist", v.volume_id)))?;
                let sio = ioctx_for_id(&cluster, &id.pool)?
                    .ok_or_else(|| Status::not_found(format!("source volume {} does not exist", v.volume_id)))?;
                let rec = Journal::new(&sio, &self.cfg.instance)
                    .volume_by_uuid(&id.uuid)?
                    .ok_or_else(|| Status::not_found(format!("source volume {} does not exist", v.volume_id)))?;
                if rec.state != State::Ready {
                    return Err(Status::aborted(format!(
                        "source volume {} is not ready yet; retry",
                        v.volume_id
                    )));
                }
                Some(ResolvedSource::Volume(rec, id.pool))
            }
        };
        let mut size = size;
        if let Some(src) = &resolved {
            let limit = req.capacity_range.as_ref().map(|r| r.limit_bytes).unwrap_or(0);
            if limit > 0 && src.size() > limit as u64 {
                return Err(Status::out_of_range(format!(
                    "the source is {} bytes, larger than limit_bytes {limit}; a volume cannot be smaller than its source",
                    src.size()
                )));
            }
            let required = req.capacity_range.as_ref().map(|r| r.required_bytes).unwrap_or(0);
            if required <= 0 {
                size = src.size();
            }
            size = size.max(src.size());
        }
        let source = resolved.as_ref().map(ResolvedSource::as_source);
        loop {
            if let Some(mut rec) = j.volume_by_name(&req.name)? {
                if !same_source(&rec.source, &source) {
                    return Err(Status::already_exists(format!(
                        "volume {:?} already exists with a different content source",
                        req.name
                    )));
                }
                if !size_satisfies(rec.size, req.capacity_range.as_ref()) && rec.state == State::Ready {
                    return Err(Status::already_exists(format!(
                        "volume {:?} already exists with {} bytes, outside the requested capacity range",
                        req.name, rec.size
                    )));
                }
                match rec.state {
                    State::Ready => {
                        if io
                            .open_if_exists(&rec.image)
                            .map_err(|e| errors::ceph("opening image", e))?
                            .is_some()
                        {
                            return Ok(CreateVolumeResponse {
                                volume: Some(csi_volume(&rec, &p.pool)),
                            });
                        }
                        // The record outlived its image (removed behind our back): rebuild it.
                        tracing::warn!(
                            name = req.name,
                            image = rec.image,
                            "journal says ready but the image is gone: recreating"
                        );
                        rec.state = State::Creating;
                        self.build_volume(&io, &j, &mut rec)?;
                    }
                    State::Creating => {
                        tracing::info!(
                            name = req.name,
                            image = rec.image,
                            "resuming an interrupted CreateVolume"
                        );
                        self.build_volume(&io, &j, &mut rec)?;
                    }
                    State::Deleting => {
                        return Err(Status::aborted(format!(
                            "volume {:?} is being deleted; retry CreateVolume after DeleteVolume finishes",
                            req.name
                        )))
                    }
                }
                return Ok(CreateVolumeResponse {
                    volume: Some(csi_volume(&rec, &p.pool)),
                });
            }
            let uuid = Uuid::new_v4();
            let mut rec = VolumeRecord {
                name: req.name.clone(),
                uuid,
                image: self.cfg.naming.volume_image(&uuid),
                size,
                state: State::Creating,
                features: p.features,
                data_pool: p.data_pool.clone(),
                mounter: p.mounter.map(|m| m.to_string()),
                source: source.clone(),
                reserved_at: now_secs(),
            };
            failpoint::delay("create:before-reserve");
            if !j.reserve_volume(&rec)? {
                // Another process reserved the name between our read and write: use theirs.
                continue;
            }
            tracing::info!(name = req.name, image = rec.image, size, "reserved volume name");
            failpoint::hit("create:after-reserve");
            self.build_volume(&io, &j, &mut rec)?;
            tracing::info!(name = req.name, image = rec.image, "volume created");
            return Ok(CreateVolumeResponse {
                volume: Some(csi_volume(&rec, &p.pool)),
            });
        }
    }

    fn delete_volume_blocking(&self, id: VolumeId, creds: strake_ceph::Credentials) -> Result<(), Status> {
        let cluster = self.conns.get(Some(&creds))?;
        let Some(io) = ioctx_for_id(&cluster, &id.pool)? else {
            return Ok(());
        };
        let j = Journal::new(&io, &self.cfg.instance);
        let image = self.cfg.naming.volume_image(&id.uuid);
        match j.volume_by_uuid(&id.uuid)? {
            None => {
                // No record: the id names an image we would have created; remove it if
                // it exists (an image without a record is an orphan anyway).
                remove_or_trash(&io, &image)?;
            }
            Some(mut rec) => {
                // Fail fast, before marking, if a node still has it attached.
                refuse_if_open(&io, &rec.image)?;
                if rec.state != State::Deleting {
                    rec.state = State::Deleting;
                    j.put_volume(&rec)?;
                }
                failpoint::hit("delete:after-mark");
                if let Err(e) = remove_or_trash(&io, &rec.image) {
                    if e.code() == tonic::Code::FailedPrecondition {
                        // Opened by a node between the check and the removal: the volume
                        // is untouched, so it is ready again (ListVolumes shows it).
                        rec.state = State::Ready;
                        j.put_volume(&rec)?;
                    }
                    return Err(e);
                }
                failpoint::hit("delete:after-image");
                j.remove_volume(&rec)?;
                tracing::info!(name = rec.name, image = rec.image, "volume deleted");
            }
        }
        purge_trash(&io, &self.cfg.naming);
        Ok(())
    }

    fn build_snapshot(&self, io: &IoCtx, j: &Journal, rec: &mut SnapRecord) -> Result<(), Status> {
        let snap = rec.image.clone();
        let exists = io
            .open_if_exists(&rec.image)
            .map_err(|e| errors::ceph("opening image", e))?
            .is_some();
        if !exists {
            let src = io.open(&rec.source_image).map_err(|e| match e.is_not_found() {
                true => Status::not_found(format!("source volume image {} no longer exists", rec.source_image)),
                false => errors::ceph("opening the source volume", e),
            })?;
            if !src
                .snap_exists(&snap)
                .map_err(|e| errors::ceph("checking the source snapshot", e))?
            {
                ok_if(
                    src.snap_create(&snap),
                    CephError::is_exists,
                    &format!("snapshotting {}@{snap}", rec.source_image),
                )?;
            }
            failpoint::hit("snapshot:after-source-snap");
            let feats = src.features().map_err(|e| errors::ceph("reading source features", e))?;
            let opts = ImageOptions {
                features: Some(feats),
                clone_format: Some(2),
                ..Default::default()
            };
            ok_if(
                io.clone_image(&rec.source_image, &snap, io, &rec.image, &opts),
                CephError::is_exists,
                &format!("cloning {}@{snap} into {}", rec.source_image, rec.image),
            )
            .map_err(clone_hint)?;
            failpoint::hit("snapshot:after-clone");
        }
        let img = open(io, &rec.image)?;
        if !img
            .snap_exists(&snap)
            .map_err(|e| errors::ceph("checking the snapshot", e))?
        {
            ok_if(
                img.snap_create(&snap),
                CephError::is_exists,
                &format!("snapshotting {}@{snap}", rec.image),
            )?;
        }
        flatten_if_deep(io, &img, self.cfg.max_clone_depth)?;
        rec.size = img.size().map_err(|e| errors::ceph("reading snapshot size", e))?;
        drop(img);
        // The temporary snapshot on the source: with clone v2 it moves to the trash
        // namespace and goes away when our image no longer needs it.
        if let Some(src) = io
            .open_if_exists(&rec.source_image)
            .map_err(|e| errors::ceph("opening source", e))?
        {
            if src.snap_exists(&snap).unwrap_or(false) {
                ok_if(
                    src.snap_remove(&snap),
                    CephError::is_not_found,
                    &format!("removing {}@{snap}", rec.source_image),
                )?;
            }
        }
        failpoint::hit("snapshot:after-snap");
        rec.state = State::Ready;
        j.put_snap(rec)
    }

    fn create_snapshot_blocking(
        &self,
        req: CreateSnapshotRequest,
        src_id: VolumeId,
        creds: strake_ceph::Credentials,
    ) -> Result<CreateSnapshotResponse, Status> {
        let cluster = self.conns.get(Some(&creds))?;
        let not_found = || Status::not_found(format!("source volume {} does not exist", req.source_volume_id));
        let io = ioctx_for_id(&cluster, &src_id.pool)?.ok_or_else(not_found)?;
        let j = Journal::new(&io, &self.cfg.instance);
        let src = j.volume_by_uuid(&src_id.uuid)?.ok_or_else(not_found)?;
        if src.state != State::Ready {
            return Err(Status::aborted(format!(
                "source volume {} is not ready; retry",
                req.source_volume_id
            )));
        }
        loop {
            if let Some(mut rec) = j.snap_by_name(&req.name)? {
                if rec.source_uuid != src.uuid {
                    return Err(Status::already_exists(format!(
                        "snapshot {:?} already exists for a different source volume",
                        req.name
                    )));
                }
                match rec.state {
                    State::Ready => {
                        if io
                            .open_if_exists(&rec.image)
                            .map_err(|e| errors::ceph("opening image", e))?
                            .is_some()
                        {
                            return Ok(CreateSnapshotResponse {
                                snapshot: Some(csi_snapshot(&rec, &src_id.pool)),
                            });
                        }
                        return Err(Status::internal(format!(
                            "snapshot {:?} is recorded but its image {} is gone; delete the snapshot and take it again",
                            req.name, rec.image
                        )));
                    }
                    State::Creating => {
                        tracing::info!(
                            name = req.name,
                            image = rec.image,
                            "resuming an interrupted CreateSnapshot"
                        );
                        self.build_snapshot(&io, &j, &mut rec)?;
                        return Ok(CreateSnapshotResponse {
                            snapshot: Some(csi_snapshot(&rec, &src_id.pool)),
                        });
                    }
                    State::Deleting => {
                        return Err(Status::aborted(format!(
                            "snapshot {:?} is being deleted; retry later",
                            req.name
                        )))
                    }
                }
            }
            let uuid = Uuid::new_v4();
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            let mut rec = SnapRecord {
                name: req.name.clone(),
                uuid,
                image: self.cfg.naming.snapshot_image(&uuid),
                source_uuid: src.uuid,
                source_image: src.image.clone(),
                size: src.size,
                state: State::Creating,
                created_secs: now.as_secs() as i64,
                created_nanos: now.subsec_nanos() as i32,
                reserved_at: now_secs(),
            };
            if !j.reserve_snap(&rec)? {
                continue;
            }
            failpoint::hit("snapshot:after-reserve");
            self.build_snapshot(&io, &j, &mut rec)?;
            tracing::info!(
                name = req.name,
                image = rec.image,
                source = src.image,
                "snapshot created"
            );
            return Ok(CreateSnapshotResponse {
                snapshot: Some(csi_snapshot(&rec, &src_id.pool)),
            });
        }
    }

    fn delete_snapshot_blocking(&self, id: SnapshotId, creds: strake_ceph::Credentials) -> Result<(), Status> {
        let cluster = self.conns.get(Some(&creds))?;
        let Some(io) = ioctx_for_id(&cluster, &id.pool)? else {
            return Ok(());
        };
        let j = Journal::new(&io, &self.cfg.instance);
        match j.snap_by_uuid(&id.uuid)? {
            None => remove_or_trash(&io, &self.cfg.naming.snapshot_image(&id.uuid))?,
            Some(mut rec) => {
                if rec.state != State::Deleting {
                    rec.state = State::Deleting;
                    j.put_snap(&rec)?;
                }
                failpoint::hit("delete-snapshot:after-mark");
                // A CreateSnapshot that crashed before its last step may have left the
                // temporary snapshot on the source volume.
                if let Some(src) = io
                    .open_if_exists(&rec.source_image)
                    .map_err(|e| errors::ceph("opening source", e))?
                {
                    if src.snap_exists(&rec.image).unwrap_or(false) {
                        ok_if(
                            src.snap_remove(&rec.image),
                            CephError::is_not_found,
                            "removing the source snapshot",
                        )?;
                    }
                }
                remove_or_trash(&io, &rec.image)?;
                failpoint::hit("delete-snapshot:after-image");
                j.remove_snap(&rec)?;
                tracing::info!(name = rec.name, image = rec.image, "snapshot deleted");
            }
        }
        purge_trash(&io, &self.cfg.naming);
        Ok(())
    }
}

fn page_token(pool_idx: usize, name: &str) -> String {
    format!("{pool_idx}:{name}")
}

fn parse_token(t: &str, pools: usize) -> Result<(usize, String), Status> {
    if t.is_empty() {
        return Ok((0, String::new()));
    }
    let (i, n) = t
        .split_once(':')
        .ok_or_else(|| Status::aborted(format!("starting_token {t:?} is not one this driver issued")))?;
    let i: usize = i
        .parse()
        .map_err(|_| Status::aborted(format!("starting_token {t:?} is not one this driver issued")))?;
    if i >= pools {
        return Err(Status::aborted(format!("starting_token {t:?} is out of range")));
    }
    Ok((i, n.to_string()))
}

fn max_entries(n: i32) -> Result<u64, Status> {
    if n < 0 {
        return Err(Status::invalid_argument("max_entries must not be negative"));
    }
    Ok(if n == 0 { 1000 } else { n as u64 })
}

#[tonic::async_trait]
impl Controller for ControllerService {
    async fn create_volume(
        &self,
        request: Request<CreateVolumeRequest>,
    ) -> Result<Response<CreateVolumeResponse>, Status> {
        instrument("CreateVolume", async {
            let req = request.into_inner();
            validate_name("name", &req.name)?;
            check_capabilities(&req.volume_capabilities, &self.cfg.default_fs)?;
            let p = parse_volume_params(&req.parameters)?;
            let size = size_for_range(req.capacity_range.as_ref(), self.cfg.default_size, self.cfg.max_size)?;
            params::check_min_size(&req.volume_capabilities, size, &self.cfg.default_fs)?;
            let creds = credentials(&req.secrets, "CreateVolume", "provisioner")?;
            let source = req.volume_content_source.as_ref().and_then(|s| s.r#type.clone());
            if let Some(SourceType::Snapshot(s)) = &source {
                if s.snapshot_id.is_empty() {
                    return Err(Status::invalid_argument(
                        "volume_content_source.snapshot.snapshot_id is empty",
                    ));
                }
            }
            if let Some(SourceType::Volume(v)) = &source {
                if v.volume_id.is_empty() {
                    return Err(Status::invalid_argument(
                        "volume_content_source.volume.volume_id is empty",
                    ));
                }
            }
            tracing::info!(name = req.name, pool = p.pool, size, "CreateVolume");
            let _g = self.lock(format!("volume-name/{}/{}", p.pool, req.name)).await?;
            let this = self.clone();
            blocking(move || this.create_volume_blocking(req, p, size, creds, source)).await
        })
        .await
    }

    async fn delete_volume(
        &self,
        request: Request<DeleteVolumeRequest>,
    ) -> Result<Response<DeleteVolumeResponse>, Status> {
        instrument("DeleteVolume", async {
            let req = request.into_inner();
            if req.volume_id.is_empty() {
                return Err(Status::invalid_argument("volume_id is required"));
            }
            let creds = credentials(&req.secrets, "DeleteVolume", "provisioner")?;
            let Some(id) = VolumeId::parse(&req.volume_id) else {
                // Not an id we could have issued, so there is nothing of ours to delete.
                tracing::info!(
                    volume_id = req.volume_id,
                    "DeleteVolume of an id this driver never issued: nothing to do"
                );
                return Ok(DeleteVolumeResponse {});
            };
            tracing::info!(volume_id = req.volume_id, "DeleteVolume");
            let _g = self.lock(format!("volume-id/{}", id.uuid)).await?;
            let this = self.clone();
            blocking(move || this.delete_volume_blocking(id, creds)).await?;
            Ok(DeleteVolumeResponse {})
        })
        .await
    }

    async fn controller_publish_volume(
        &self,
        _: Request<ControllerPublishVolumeRequest>,
    ) -> Result<Response<ControllerPublishVolumeResponse>, Status> {
        instrument("ControllerPublishVolume", async {
            Err(Status::unimplemented(
                "strake-csi attaches on the node (NodeStageVolume); PUBLISH_UNPUBLISH_VOLUME is not offered",
            ))
        })
        .await
    }

    async fn controller_unpublish_volume(
        &self,
        _: Request<ControllerUnpublishVolumeRequest>,
    ) -> Result<Response<ControllerUnpublishVolumeResponse>, Status> {
        instrument("ControllerUnpublishVolume", async {
            Err(Status::unimplemented(
                "strake-csi attaches on the node (NodeStageVolume); PUBLISH_UNPUBLISH_VOLUME is not offered",
            ))
        })
        .await
    }

    async fn validate_volume_capabilities(
        &self,
        request: Request<ValidateVolumeCapabilitiesRequest>,
    ) -> Result<Response<ValidateVolumeCapabilitiesResponse>, Status> {
        instrument("ValidateVolumeCapabilities", async {
            let req = request.into_inner();
            if req.volume_id.is_empty() {
                return Err(Status::invalid_argument("volume_id is required"));
            }
            if req.volume_capabilities.is_empty() {
                return Err(Status::invalid_argument("volume_capabilities is required"));
            }
            let id = VolumeId::parse(&req.volume_id)
                .ok_or_else(|| Status::not_found(format!("volume {} does not exist", req.volume_id)))?;
            let creds = if req.secrets.is_empty() {
                None
            } else {
                Some(credentials(
                    &req.secrets,
                    "ValidateVolumeCapabilities",
                    "controller-publish",
                )?)
            };
            let conns = self.conns.clone();
            let instance = self.cfg.instance.clone();
            let vid = req.volume_id.clone();
            blocking(move || {
                let cluster = conns.get(creds.as_ref())?;
                let io = ioctx_for_id(&cluster, &id.pool)?
                    .ok_or_else(|| Status::not_found(format!("volume {vid} does not exist")))?;
                Journal::new(&io, &instance)
                    .volume_by_uuid(&id.uuid)?
                    .ok_or_else(|| Status::not_found(format!("volume {vid} does not exist")))?;
                Ok(())
            })
            .await?;
            for c in &req.volume_capabilities {
                if let Err(msg) = params::check_capability(c, &self.cfg.default_fs) {
                    return Ok(ValidateVolumeCapabilitiesResponse {
                        confirmed: None,
                        message: msg,
                    });
                }
            }
            Ok(ValidateVolumeCapabilitiesResponse {
                confirmed: Some(validate_volume_capabilities_response::Confirmed {
                    volume_context: req.volume_context,
                    volume_capabilities: req.volume_capabilities,
                    parameters: req.parameters,
                    mutable_parameters: req.mutable_parameters,
                }),
                message: String::new(),
            })
        })
        .await
    }

    async fn list_volumes(
        &self,
        request: Request<ListVolumesRequest>,
    ) -> Result<Response<ListVolumesResponse>, Status> {
        instrument("ListVolumes", async {
            let req = request.into_inner();
            let max = max_entries(req.max_entries)?;
            let pools = self.cfg.list_pools.clone();
            let (mut pi, mut after) = parse_token(&req.starting_token, pools.len())?;
            let conns = self.conns.clone();
            let instance = self.cfg.instance.clone();
            blocking(move || {
                let cluster = conns.get(None)?;
                let mut entries = Vec::new();
                while pi < pools.len() {
                    let Some(io) = ioctx_for_id(&cluster, &pools[pi])? else {
                        pi += 1;
                        after.clear();
                        continue;
                    };
                    let j = Journal::new(&io, &instance);
                    loop {
                        let want = max - entries.len() as u64;
                        let (recs, more) = j.list_volumes(&after, want)?;
                        for r in &recs {
                            after = r.name.clone();
                            if r.state == State::Ready {
                                entries.push(list_volumes_response::Entry {
                                    volume: Some(csi_volume(r, &pools[pi])),
                                    status: None,
                                });
                            }
                        }
                        if entries.len() as u64 >= max {
                            let next = if more || pi + 1 < pools.len() {
                                page_token(pi, &after)
                            } else {
                                String::new()
                            };
                            return Ok(ListVolumesResponse {
                                entries,
                                next_token: next,
                            });
                        }
                        if !more {
                            break;
                        }
                    }
                    pi += 1;
                    after.clear();
                }
                Ok(ListVolumesResponse {
                    entries,
                    next_token: String::new(),
                })
            })
            .await
        })
        .await
    }

    async fn get_capacity(
        &self,
        request: Request<GetCapacityRequest>,
    ) -> Result<Response<GetCapacityResponse>, Status> {
        instrument("GetCapacity", async {
            let req = request.into_inner();
            if !req.volume_capabilities.is_empty() {
                for c in &req.volume_capabilities {
                    if params::check_capability(c, &self.cfg.default_fs).is_err() {
                        // Spec: capacity for volumes we cannot create is zero.
                        return Ok(GetCapacityResponse {
                            available_capacity: 0,
                            ..Default::default()
                        });
                    }
                }
            }
            let pool = if req.parameters.contains_key("pool") {
                parse_volume_params(&req.parameters)?.pool
            } else {
                self.cfg.list_pools.first().cloned().ok_or_else(|| {
                    Status::invalid_argument("parameters.pool is required (no --list-pools default configured)")
                })?
            };
            let conns = self.conns.clone();
            let max_size = self.cfg.max_size as i64;
            blocking(move || {
                let cluster = conns.get(None)?;
                let out = cluster
                    .mon_command(r#"{"prefix":"df","format":"json"}"#)
                    .map_err(|e| errors::ceph("reading pool usage (ceph df)", e))?;
                let v: serde_json::Value = serde_json::from_slice(&out)
                    .map_err(|e| Status::internal(format!("parsing `ceph df` output: {e}")))?;
                let from_df = v["pools"]
                    .as_array()
                    .and_then(|ps| ps.iter().find(|p| p["name"] == pool.as_str()))
                    .and_then(|p| p["stats"]["max_avail"].as_i64());
                let avail = match from_df {
                    Some(a) => a,
                    None => {
                        if !cluster
                            .pool_exists(&pool)
                            .map_err(|e| errors::ceph("looking up the pool", e))?
                        {
                            return Err(Status::invalid_argument(format!("pool {pool:?} does not exist")));
                        }
                        // A pool created moments ago is not in the mgr's statistics yet:
                        // answer with the cluster's raw free space until it is.
                        cluster
                            .cluster_stat()
                            .map_err(|e| errors::ceph("reading cluster capacity", e))?
                            .1 as i64
                    }
                };
                Ok(GetCapacityResponse {
                    available_capacity: avail,
                    maximum_volume_size: Some(Int64Value { value: max_size }),
                    minimum_volume_size: Some(Int64Value {
                        value: params::MIB as i64,
                    }),
                })
            })
            .await
        })
        .await
    }

    async fn controller_get_capabilities(
        &self,
        _: Request<ControllerGetCapabilitiesRequest>,
    ) -> Result<Response<ControllerGetCapabilitiesResponse>, Status> {
        instrument("ControllerGetCapabilities", async {
            let caps = [
                CapType::CreateDeleteVolume,
                CapType::CreateDeleteSnapshot,
                CapType::ListSnapshots,
                CapType::CloneVolume,
                CapType::ExpandVolume,
                CapType::ListVolumes,
                CapType::GetCapacity,
                CapType::SingleNodeMultiWriter,
            ];
            Ok(ControllerGetCapabilitiesResponse {
                capabilities: caps
                    .iter()
                    .map(|t| ControllerServiceCapability {
                        r#type: Some(controller_service_capability::Type::Rpc(
                            controller_service_capability::Rpc { r#type: *t as i32 },
                        )),
                    })
                    .collect(),
            })
        })
        .await
    }

    async fn create_snapshot(
        &self,
        request: Request<CreateSnapshotRequest>,
    ) -> Result<Response<CreateSnapshotResponse>, Status> {
        instrument("CreateSnapshot", async {
            let req = request.into_inner();
            validate_name("name", &req.name)?;
            if req.source_volume_id.is_empty() {
                return Err(Status::invalid_argument("source_volume_id is required"));
            }
            for k in req.parameters.keys() {
                if !k.starts_with("csi.storage.k8s.io/") {
                    return Err(Status::invalid_argument(format!(
                        "unknown VolumeSnapshotClass parameter {k:?}; strake-csi takes none besides the csi.storage.k8s.io/snapshotter-secret-* references"
                    )));
                }
            }
            let creds = credentials(&req.secrets, "CreateSnapshot", "snapshotter")?;
            let src = VolumeId::parse(&req.source_volume_id)
                .ok_or_else(|| Status::not_found(format!("source volume {:?} does not exist", req.source_volume_id)))?;
            tracing::info!(name = req.name, source = req.source_volume_id, "CreateSnapshot");
            let _g = self.lock(format!("snapshot-name/{}/{}", src.pool, req.name)).await?;
            let this = self.clone();
            blocking(move || this.create_snapshot_blocking(req, src, creds)).await
        })
        .await
    }

    async fn delete_snapshot(
        &self,
        request: Request<DeleteSnapshotRequest>,
    ) -> Result<Response<DeleteSnapshotResponse>, Status> {
        instrument("DeleteSnapshot", async {
            let req = request.into_inner();
            if req.snapshot_id.is_empty() {
                return Err(Status::invalid_argument("snapshot_id is required"));
            }
            let creds = credentials(&req.secrets, "DeleteSnapshot", "snapshotter")?;
            let Some(id) = SnapshotId::parse(&req.snapshot_id) else {
                return Ok(DeleteSnapshotResponse {});
            };
            tracing::info!(snapshot_id = req.snapshot_id, "DeleteSnapshot");
            let _g = self.lock(format!("snapshot-id/{}", id.uuid)).await?;
            let this = self.clone();
            blocking(move || this.delete_snapshot_blocking(id, creds)).await?;
            Ok(DeleteSnapshotResponse {})
        })
        .await
    }

    async fn list_snapshots(
        &self,
        request: Request<ListSnapshotsRequest>,
    ) -> Result<Response<ListSnapshotsResponse>, Status> {
        instrument("ListSnapshots", async {
            let req = request.into_inner();
            let max = max_entries(req.max_entries)?;
            let creds = if req.secrets.is_empty() {
                None
            } else {
                Some(credentials(&req.secrets, "ListSnapshots", "snapshotter-list")?)
            };
            let conns = self.conns.clone();
            let instance = self.cfg.instance.clone();
            let list_pools = self.cfg.list_pools.clone();
            blocking(move || {
                let cluster = conns.get(creds.as_ref())?;
                // One snapshot by id: a filter, never an error.
                if !req.snapshot_id.is_empty() {
                    let mut entries = vec![];
                    if let Some(id) = SnapshotId::parse(&req.snapshot_id) {
                        if let Some(io) = ioctx_for_id(&cluster, &id.pool)? {
                            if let Some(r) = Journal::new(&io, &instance).snap_by_uuid(&id.uuid)? {
                                if r.state == State::Ready {
                                    entries.push(list_snapshots_response::Entry {
                                        snapshot: Some(csi_snapshot(&r, &id.pool)),
                                    });
                                }
                            }
                        }
                    }
                    return Ok(ListSnapshotsResponse {
                        entries,
                        next_token: String::new(),
                    });
                }
                let (pools, source) = if req.source_volume_id.is_empty() {
                    (list_pools, None)
                } else {
                    match VolumeId::parse(&req.source_volume_id) {
                        Some(v) => (vec![v.pool.clone()], Some(v.uuid)),
                        None => return Ok(ListSnapshotsResponse::default()),
                    }
                };
                let (mut pi, mut after) = parse_token(&req.starting_token, pools.len())?;
                let mut entries = Vec::new();
                while pi < pools.len() {
                    let Some(io) = ioctx_for_id(&cluster, &pools[pi])? else {
                        pi += 1;
                        after.clear();
                        continue;
                    };
                    let j = Journal::new(&io, &instance);
                    loop {
                        let (recs, more) = j.list_snaps(&after, 256)?;
                        for r in &recs {
                            after = r.name.clone();
                            if r.state == State::Ready && source.is_none_or(|s| s == r.source_uuid) {
                                entries.push(list_snapshots_response::Entry {
                                    snapshot: Some(csi_snapshot(r, &pools[pi])),
                                });
                                if entries.len() as u64 >= max {
                                    return Ok(ListSnapshotsResponse {
                                        entries,
                                        next_token: page_token(pi, &after),
                                    });
                                }
                            }
                        }
                        if !more {
                            break;
                        }
                    }
                    pi += 1;
                    after.clear();
                }
                Ok(ListSnapshotsResponse {
                    entries,
                    next_token: String::new(),
                })
            })
            .await
        })
        .await
    }

    async fn controller_expand_volume(
        &self,
        request: Request<ControllerExpandVolumeRequest>,
    ) -> Result<Response<ControllerExpandVolumeResponse>, Status> {
        instrument("ControllerExpandVolume", async {
            let req = request.into_inner();
            if req.volume_id.is_empty() {
                return Err(Status::invalid_argument("volume_id is required"));
            }
            let range = req
                .capacity_range
                .ok_or_else(|| Status::invalid_argument("capacity_range is required"))?;
            let size = size_for_range(Some(&range), self.cfg.default_size, self.cfg.max_size)?;
            let creds = credentials(&req.secrets, "ControllerExpandVolume", "controller-expand")?;
            let id = VolumeId::parse(&req.volume_id)
                .ok_or_else(|| Status::not_found(format!("volume {} does not exist", req.volume_id)))?;
            tracing::info!(volume_id = req.volume_id, size, "ControllerExpandVolume");
            let _g = self.lock(format!("volume-id/{}", id.uuid)).await?;
            let conns = self.conns.clone();
            let instance = self.cfg.instance.clone();
            let vid = req.volume_id.clone();
            blocking(move || {
                let cluster = conns.get(Some(&creds))?;
                let nf = || Status::not_found(format!("volume {vid} does not exist"));
                let io = ioctx_for_id(&cluster, &id.pool)?.ok_or_else(nf)?;
                let j = Journal::new(&io, &instance);
                let mut rec = j.volume_by_uuid(&id.uuid)?.ok_or_else(nf)?;
                if rec.state != State::Ready {
                    return Err(Status::aborted(format!(
                        "volume {vid} is being created or deleted; retry"
                    )));
                }
                let img = open(&io, &rec.image)?;
                let cur = img.size().map_err(|e| errors::ceph("reading size", e))?;
                if size > cur {
                    img.resize(size)
                        .map_err(|e| errors::ceph(&format!("growing {} to {size} bytes", rec.image), e))?;
                }
                let new = cur.max(size);
                if rec.size != new {
                    rec.size = new;
                    j.put_volume(&rec)?;
                }
                // The node must grow the filesystem, and (fuse-loop) refresh the loop
                // device's size even for raw block.
                Ok(ControllerExpandVolumeResponse {
                    capacity_bytes: new as i64,
                    node_expansion_required: true,
                })
            })
            .await
        })
        .await
    }
}
