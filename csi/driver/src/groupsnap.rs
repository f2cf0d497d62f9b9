//! Volume group snapshots (CSI GroupController): crash-consistent snapshots of several
//! volumes at once, each member then restorable as an ordinary snapshot.
//!
//! Ceph 16 takes the consistent cut with an RBD group snapshot: librbd quiesces every
//! member (it takes each image's exclusive lock, so writers flush and pause) and
//! snapshots them all at one point in time. Those per-image snapshots live in the
//! group namespace, which clone cannot start from before Ceph 18, and they die with
//! the group. So each member's snapshot image (the layout single snapshots use: an image
//! of its own with an RBD snapshot on it, outliving its source) is a sparse copy of the
//! source as the group snapshot saw it; then the group goes. The steps, each
//! idempotent, resumed from the journal after a crash at any of them:
//!
//! 1. reserve the group snapshot record and one snapshot record per member (images do
//!    not exist yet, so `sweep` never mistakes them for orphans);
//! 2. create the RBD group `<prefix>group-<uuid>` and add the sources;
//! 3. take the group snapshot (an incomplete one left by a crash is removed first);
//! 4. per member: copy the source at its group snapshot into `<prefix>snap-<uuid>`
//!    and snapshot that image; the RBD snapshot is what marks the copy complete, so
//!    a partial copy left by a crash is removed and made again;
//! 5. remove the group (its snapshot and memberships go with it);
//! 6. mark the members, then the group snapshot, ready.
//!
//! Copying costs time in proportion to the data written (zero runs are skipped): this
//! is Ceph 16's price for snapshots that outlive their sources.
use std::collections::BTreeSet;

use strake_ceph::{CephError, ImageOptions, IoCtx};
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::cephconn::credentials;
use crate::controller::ControllerService;
use crate::csi::group_controller_server::GroupController;
use crate::csi::group_controller_service_capability::rpc::Type as GroupCapType;
use crate::csi::*;
use crate::errors::{self, blocking, Error};
use crate::failpoint;
use crate::ids::{GroupSnapshotId, VolumeId};
use crate::images::{ioctx_for_id, ok_if, open, purge_trash, remove_or_trash};
use crate::journal::{now_secs, GroupMember, GroupSnapRecord, Journal, SnapRecord, State, VolumeRecord};
use crate::params::validate_name;
use crate::snapshots::csi_snapshot;

fn csi_group(g: &GroupSnapRecord, members: &[SnapRecord], pool: &str) -> VolumeGroupSnapshot {
    VolumeGroupSnapshot {
        group_snapshot_id: GroupSnapshotId {
            pool: pool.to_string(),
            uuid: g.uuid,
        }
        .to_string(),
        snapshots: members.iter().map(|m| csi_snapshot(m, pool)).collect(),
        creation_time: Some(Timestamp {
            seconds: g.created_secs,
            nanos: g.created_nanos,
        }),
        ready_to_use: g.state == State::Ready,
    }
}

impl ControllerService {
    fn member_records(&self, j: &Journal, g: &GroupSnapRecord) -> Result<Vec<SnapRecord>, Error> {
        g.members
            .iter()
            .map(|m| {
                j.by_uuid::<SnapRecord>(&m.snap_uuid)?.ok_or_else(|| {
                    Error::internal(format!(
                        "group snapshot {:?}: the record of member {} is missing; delete the group snapshot",
                        g.name, m.snap_uuid
                    ))
                })
            })
            .collect()
    }

    /// Steps 2-6 (see the module docs), from wherever a previous attempt stopped.
    fn build_group_snapshot(&self, io: &IoCtx, j: &Journal, g: &mut GroupSnapRecord) -> Result<(), Error> {
        let snap_name = g.uuid.to_string();
        let pending: Vec<&GroupMember> = {
            let mut v = vec![];
            for m in &g.members {
                let rec = j.by_uuid::<SnapRecord>(&m.snap_uuid)?;
                if rec.as_ref().is_none_or(|r| r.state != State::Ready) {
                    v.push(m);
                }
            }
            v
        };
        let copied = |m: &GroupMember| -> Result<bool, Error> {
            let img = self.cfg.naming.snapshot_image(&m.snap_uuid);
            Ok(
                match io.open_if_exists(&img).map_err(|e| errors::ceph("opening image", e))? {
                    Some(h) => h
                        .snap_exists(&img)
                        .map_err(|e| errors::ceph("checking the snapshot", e))?,
                    None => false,
                },
            )
        };
        let mut to_copy = vec![];
        for m in pending {
            if !copied(m)? {
                to_copy.push(m.clone());
            }
        }
        if !to_copy.is_empty() {
            ok_if(
                io.group_create(&g.group),
                CephError::is_exists,
                &format!("creating RBD group {}", g.group),
            )?;
            failpoint::hit("group-snapshot:after-group");
            for m in &g.members {
                match io.group_image_add(&g.group, io, &m.volume_image) {
                    Ok(()) => {}
                    Err(e) if e.is_exists() => {}
                    Err(e) if e.errno == libc::EMLINK => {
                        return Err(Error::aborted(format!(
                            "volume image {} is in another RBD group (another group snapshot of it is running); retry",
                            m.volume_image
                        )))
                    }
                    Err(e) => return Err(errors::ceph(&format!("adding {} to {}", m.volume_image, g.group), e)),
                }
            }
            let snaps = io
                .group_snap_list(&g.group)
                .map_err(|e| errors::ceph("listing group snapshots", e))?;
            if let Some(s) = snaps.iter().find(|s| s.name == snap_name) {
                if !s.complete {
                    // Interrupted inside librbd: only removal is defined on it.
                    ok_if(
                        io.group_snap_remove(&g.group, &snap_name),
                        CephError::is_not_found,
                        "removing an incomplete group snapshot",
                    )?;
                }
            }
            if !snaps.iter().any(|s| s.name == snap_name && s.complete) {
                io.group_snap_create(&g.group, &snap_name)
                    .map_err(|e| errors::ceph(&format!("taking group snapshot {}@{snap_name}", g.group), e))?;
            }
            failpoint::hit("group-snapshot:after-group-snap");
            for m in &to_copy {
                let dest = self.cfg.naming.snapshot_image(&m.snap_uuid);
                // A copy without its snapshot is partial: start it again.
                remove_or_trash(io, &dest)?;
                let src = open(io, &m.volume_image)?;
                let id = src
                    .group_snap_id(&g.group, &snap_name)
                    .map_err(|e| errors::ceph("finding the member's group snapshot", e))?
                    .ok_or_else(|| {
                        Error::internal(format!(
                            "group snapshot {}@{snap_name} has no snapshot of {}",
                            g.group, m.volume_image
                        ))
                    })?;
                src.snap_set_by_id(id)
                    .map_err(|e| errors::ceph("reading the member's group snapshot", e))?;
                let opts = ImageOptions {
                    features: Some(src.features().map_err(|e| errors::ceph("reading features", e))?),
                    ..Default::default()
                };
                src.copy_to(io, &dest, &opts)
                    .map_err(|e| errors::ceph(&format!("copying {}@{snap_name} to {dest}", m.volume_image), e))?;
                drop(src);
                {
                    let img = open(io, &dest)?;
                    ok_if(
                        img.snap_create(&dest),
                        CephError::is_exists,
                        &format!("snapshotting {dest}"),
                    )?;
                }
                failpoint::hit("group-snapshot:after-copy");
            }
        }
        // The group and its snapshot have done their job.
        ok_if(
            io.group_remove(&g.group),
            CephError::is_not_found,
            &format!("removing RBD group {}", g.group),
        )?;
        failpoint::hit("group-snapshot:after-group-removed");
        for m in &g.members {
            if let Some(mut r) = j.by_uuid::<SnapRecord>(&m.snap_uuid)? {
                if r.state != State::Ready {
                    let img = open(io, &r.image)?;
                    r.size = img.size().map_err(|e| errors::ceph("reading snapshot size", e))?;
                    r.state = State::Ready;
                    j.put(&r)?;
                }
            }
        }
        g.state = State::Ready;
        j.put(g)
    }

    fn create_group_snapshot_blocking(
        &self,
        req: CreateVolumeGroupSnapshotRequest,
        sources: Vec<VolumeId>,
        creds: strake_ceph::Credentials,
    ) -> Result<CreateVolumeGroupSnapshotResponse, Error> {
        let pool = sources[0].pool.clone();
        let cluster = self.conns.get(Some(&creds))?;
        let nf = |id: &VolumeId| Error::not_found(format!("source volume {id} does not exist"));
        let io = ioctx_for_id(&cluster, &pool)?.ok_or_else(|| nf(&sources[0]))?;
        let j = Journal::new(&io, &self.cfg.instance);
        j.ensure()?;
        let mut vols: Vec<VolumeRecord> = vec![];
        for id in &sources {
            let r = j.by_uuid::<VolumeRecord>(&id.uuid)?.ok_or_else(|| nf(id))?;
            if r.encrypted {
                return Err(Error::invalid_argument(format!(
                    "source volume {id} is encrypted: group snapshots of encrypted volumes are not supported yet"
                )));
            }
            if r.image_pool.as_deref().is_some_and(|p| p != pool) {
                return Err(Error::invalid_argument(format!(
                    "source volume {id} lives in topology pool {}, not {pool}: a group snapshot takes volumes of one pool",
                    r.image_pool.as_deref().unwrap_or_default()
                )));
            }
            if r.state != State::Ready {
                return Err(Error::aborted(format!("source volume {id} is not ready; retry")));
            }
            vols.push(r);
        }
        let wanted: BTreeSet<Uuid> = vols.iter().map(|v| v.uuid).collect();
        loop {
            if let Some(mut g) = j.by_name::<GroupSnapRecord>(&req.name)? {
                let have: BTreeSet<Uuid> = g.members.iter().map(|m| m.volume_uuid).collect();
                if have != wanted {
                    return Err(Error::already_exists(format!(
                        "volume group snapshot {:?} already exists with other source volumes",
                        req.name
                    )));
                }
                match g.state {
                    State::Deleting => {
                        return Err(Error::aborted(format!(
                            "volume group snapshot {:?} is being deleted; retry later",
                            req.name
                        )))
                    }
                    State::Creating => {
                        tracing::info!(name = req.name, "resuming an interrupted CreateVolumeGroupSnapshot");
                        self.reserve_members(&j, &g)?;
                        self.build_group_snapshot(&io, &j, &mut g)?;
                    }
                    State::Ready => {}
                }
                let members = self.member_records(&j, &g)?;
                return Ok(CreateVolumeGroupSnapshotResponse {
                    group_snapshot: Some(csi_group(&g, &members, &pool)),
                });
            }
            let uuid = Uuid::new_v4();
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            let mut g = GroupSnapRecord {
                name: req.name.clone(),
                uuid,
                group: self.cfg.naming.group(&uuid),
                members: vols
                    .iter()
                    .map(|v| GroupMember {
                        volume_uuid: v.uuid,
                        volume_image: v.image.clone(),
                        snap_uuid: Uuid::new_v4(),
                    })
                    .collect(),
                state: State::Creating,
                created_secs: now.as_secs() as i64,
                created_nanos: now.subsec_nanos() as i32,
                reserved_at: now_secs(),
            };
            if !j.reserve(&g)? {
                continue;
            }
            self.reserve_members(&j, &g)?;
            tracing::info!(
                name = req.name,
                group = g.group,
                members = g.members.len(),
                "reserved group snapshot"
            );
            failpoint::hit("group-snapshot:after-reserve");
            self.build_group_snapshot(&io, &j, &mut g)?;
            tracing::info!(
                name = req.name,
                members = g.members.len(),
                "volume group snapshot created"
            );
            let members = self.member_records(&j, &g)?;
            return Ok(CreateVolumeGroupSnapshotResponse {
                group_snapshot: Some(csi_group(&g, &members, &pool)),
            });
        }
    }

    /// One snapshot record per member, `creating`, before any image exists.
    fn reserve_members(&self, j: &Journal, g: &GroupSnapRecord) -> Result<(), Error> {
        for m in &g.members {
            if j.by_uuid::<SnapRecord>(&m.snap_uuid)?.is_some() {
                continue;
            }
            let rec = SnapRecord {
                name: g.member_name(m),
                uuid: m.snap_uuid,
                image: self.cfg.naming.snapshot_image(&m.snap_uuid),
                source_uuid: m.volume_uuid,
                source_image: m.volume_image.clone(),
                size: 0,
                state: State::Creating,
                created_secs: g.created_secs,
                created_nanos: g.created_nanos,
                reserved_at: g.reserved_at,
                group: Some(g.uuid),
                image_pool: None,
                encrypted: false,
                encryption_overhead: 0,
            };
            if !j.reserve(&rec)? {
                return Err(Error::internal(format!(
                    "snapshot name {:?} is taken; delete the group snapshot {:?} and take it again",
                    rec.name, g.name
                )));
            }
        }
        Ok(())
    }

    fn delete_group_snapshot_blocking(
        &self,
        id: GroupSnapshotId,
        creds: strake_ceph::Credentials,
    ) -> Result<(), Error> {
        let cluster = self.conns.get(Some(&creds))?;
        let Some(io) = ioctx_for_id(&cluster, &id.pool)? else {
            return Ok(());
        };
        let j = Journal::new(&io, &self.cfg.instance);
        let Some(mut g) = j.by_uuid::<GroupSnapRecord>(&id.uuid)? else {
            // Never recorded, or deleted already: at most a group of ours to remove.
            ok_if(
                io.group_remove(&self.cfg.naming.group(&id.uuid)),
                CephError::is_not_found,
                "removing RBD group",
            )?;
            return Ok(());
        };
        if g.state != State::Deleting {
            g.state = State::Deleting;
            j.put(&g)?;
        }
        failpoint::hit("delete-group-snapshot:after-mark");
        ok_if(
            io.group_remove(&g.group),
            CephError::is_not_found,
            &format!("removing RBD group {}", g.group),
        )?;
        for m in &g.members {
            remove_or_trash(&io, &self.cfg.naming.snapshot_image(&m.snap_uuid))?;
            if let Some(r) = j.by_uuid::<SnapRecord>(&m.snap_uuid)? {
                j.remove(&r)?;
            }
        }
        j.remove(&g)?;
        tracing::info!(name = g.name, "volume group snapshot deleted");
        purge_trash(&io, &self.cfg.naming);
        Ok(())
    }
}

fn parse_group_id(s: &str) -> Result<GroupSnapshotId, Error> {
    if s.is_empty() {
        return Err(Error::invalid_argument("group_snapshot_id is required"));
    }
    GroupSnapshotId::parse(s).ok_or_else(|| Error::not_found(format!("volume group snapshot {s} does not exist")))
}

#[tonic::async_trait]
impl GroupController for ControllerService {
    async fn group_controller_get_capabilities(
        &self,
        _: Request<GroupControllerGetCapabilitiesRequest>,
    ) -> Result<Response<GroupControllerGetCapabilitiesResponse>, Status> {
        crate::metrics::instrument("GroupControllerGetCapabilities", async {
            Ok(GroupControllerGetCapabilitiesResponse {
                capabilities: vec![GroupControllerServiceCapability {
                    r#type: Some(group_controller_service_capability::Type::Rpc(
                        group_controller_service_capability::Rpc {
                            r#type: GroupCapType::CreateDeleteGetVolumeGroupSnapshot as i32,
                        },
                    )),
                }],
            })
        })
        .await
    }

    async fn create_volume_group_snapshot(
        &self,
        request: Request<CreateVolumeGroupSnapshotRequest>,
    ) -> Result<Response<CreateVolumeGroupSnapshotResponse>, Status> {
        crate::metrics::instrument("CreateVolumeGroupSnapshot", async {
            let req = request.into_inner();
            validate_name("name", &req.name)?;
            if req.source_volume_ids.is_empty() {
                return Err(Status::invalid_argument("source_volume_ids is required: name the volumes to snapshot"));
            }
            for k in req.parameters.keys() {
                if !k.starts_with("csi.storage.k8s.io/") {
                    return Err(Status::invalid_argument(format!(
                        "unknown VolumeGroupSnapshotClass parameter {k:?}; strake-csi takes none besides the csi.storage.k8s.io/group-snapshotter-secret-* references"
                    )));
                }
            }
            let creds = credentials(&req.secrets, "CreateVolumeGroupSnapshot", "group-snapshotter")?;
            let mut sources = vec![];
            for s in &req.source_volume_ids {
                let id = VolumeId::parse(s)
                    .ok_or_else(|| Status::not_found(format!("source volume {s:?} does not exist")))?;
                if sources.contains(&id) {
                    return Err(Status::invalid_argument(format!("source volume {s} is listed twice")));
                }
                sources.push(id);
            }
            if sources.iter().any(|s| s.pool != sources[0].pool) {
                return Err(Status::invalid_argument(
                    "the source volumes of a group snapshot must be in one pool (an RBD group lives in one pool)",
                ));
            }
            tracing::info!(name = req.name, sources = sources.len(), "CreateVolumeGroupSnapshot");
            let _g = self.lock(format!("group-snapshot-name/{}/{}", sources[0].pool, req.name)).await?;
            let this = self.clone();
            Ok(blocking(move || this.create_group_snapshot_blocking(req, sources, creds)).await?)
        })
        .await
    }

    async fn delete_volume_group_snapshot(
        &self,
        request: Request<DeleteVolumeGroupSnapshotRequest>,
    ) -> Result<Response<DeleteVolumeGroupSnapshotResponse>, Status> {
        crate::metrics::instrument("DeleteVolumeGroupSnapshot", async {
            let req = request.into_inner();
            if req.group_snapshot_id.is_empty() {
                return Err(Status::invalid_argument("group_snapshot_id is required"));
            }
            let creds = credentials(&req.secrets, "DeleteVolumeGroupSnapshot", "group-snapshotter")?;
            let Some(id) = GroupSnapshotId::parse(&req.group_snapshot_id) else {
                return Ok(DeleteVolumeGroupSnapshotResponse {});
            };
            tracing::info!(group_snapshot_id = req.group_snapshot_id, "DeleteVolumeGroupSnapshot");
            let _g = self.lock(format!("group-snapshot-id/{}", id.uuid)).await?;
            let this = self.clone();
            blocking(move || this.delete_group_snapshot_blocking(id, creds)).await?;
            Ok(DeleteVolumeGroupSnapshotResponse {})
        })
        .await
    }

    async fn get_volume_group_snapshot(
        &self,
        request: Request<GetVolumeGroupSnapshotRequest>,
    ) -> Result<Response<GetVolumeGroupSnapshotResponse>, Status> {
        crate::metrics::instrument("GetVolumeGroupSnapshot", async {
            let req = request.into_inner();
            let id = parse_group_id(&req.group_snapshot_id)?;
            let creds = if req.secrets.is_empty() {
                None
            } else {
                Some(credentials(
                    &req.secrets,
                    "GetVolumeGroupSnapshot",
                    "group-snapshotter",
                )?)
            };
            let this = self.clone();
            blocking(move || {
                let cluster = this.conns.get(creds.as_ref())?;
                let nf = || Status::not_found(format!("volume group snapshot {id} does not exist"));
                let io = ioctx_for_id(&cluster, &id.pool)?.ok_or_else(nf)?;
                let j = Journal::new(&io, &this.cfg.instance);
                let g = j
                    .by_uuid::<GroupSnapRecord>(&id.uuid)?
                    .filter(|g| g.state != State::Deleting)
                    .ok_or_else(nf)?;
                let members = this.member_records(&j, &g)?;
                let mut ids: Vec<String> = members.iter().map(|m| csi_snapshot(m, &id.pool).snapshot_id).collect();
                let mut asked = req.snapshot_ids.clone();
                ids.sort();
                asked.sort();
                if !asked.is_empty() && asked != ids {
                    return Err(Status::invalid_argument(format!(
                        "snapshot_ids do not match the members of group snapshot {id}"
                    )));
                }
                Ok(GetVolumeGroupSnapshotResponse {
                    group_snapshot: Some(csi_group(&g, &members, &id.pool)),
                })
            })
            .await
        })
        .await
    }
}
