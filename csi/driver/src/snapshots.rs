//! Snapshot workflows. Snapshots follow the layout ceph-csi uses, for the same reason: a
//! CSI snapshot must outlive its source volume, and an RBD snapshot cannot.
//! CreateSnapshot takes a temporary RBD snapshot of the source, clones it (clone v2)
//! into the snapshot's own image, takes the snapshot's RBD snapshot on that image, and
//! drops the temporary one. Restores are clone-v2 children of that snapshot. Deleting
//! an image that still has clones parks it in the RBD trash; it is purged when its last
//! clone goes.
use strake_ceph::{CephError, ImageOptions, IoCtx};
use uuid::Uuid;

use crate::controller::ControllerService;
use crate::csi::*;
use crate::errors::{self, Error};
use crate::failpoint;
use crate::ids::{SnapshotId, VolumeId};
use crate::images::{clone_hint, flatten_if_deep, ioctx_for_id, ok_if, open, other_pool, purge_trash, remove_or_trash};
use crate::journal::{now_secs, Journal, SnapRecord, State, VolumeRecord};
use crate::kms::{Kms, SecretKms};

pub(crate) fn csi_snapshot(rec: &SnapRecord, pool: &str) -> Snapshot {
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
        group_snapshot_id: rec
            .group
            .map(|uuid| {
                crate::ids::GroupSnapshotId {
                    pool: pool.to_string(),
                    uuid,
                }
                .to_string()
            })
            .unwrap_or_default(),
    }
}

impl ControllerService {
    fn build_snapshot(
        &self,
        io: &IoCtx,
        j: &Journal,
        rec: &mut SnapRecord,
        kms: Option<&SecretKms>,
    ) -> Result<(), Error> {
        // The snapshot image lives next to its source's image.
        let journal_pool = io.pool().to_string();
        let iio = other_pool(io, &rec.image_pool)?;
        let io = iio.as_ref().unwrap_or(io);
        let snap = rec.image.clone();
        let exists = io
            .open_if_exists(&rec.image)
            .map_err(|e| errors::ceph("opening image", e))?
            .is_some();
        if !exists {
            let src = io.open(&rec.source_image).map_err(|e| match e.is_not_found() {
                true => Error::not_found(format!("source volume image {} no longer exists", rec.source_image)),
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
        ok_if(
            img.metadata_set(crate::sweep::JOURNAL_POOL_KEY, &journal_pool),
            |_| true,
            "",
        )?;
        if rec.encrypted {
            // The snapshot image holds its source's LUKS header: its passphrase too,
            // wrapped for the snapshot, so restores find it after the source is gone.
            let kms = kms.ok_or_else(|| Error::internal("an encrypted snapshot without a KMS"))?;
            // The clone copied its source's metadata: that wraps for the source's uuid.
            if kms.fetch(&img, &rec.uuid).is_err() {
                let p = kms.fetch(&open(io, &rec.source_image)?, &rec.source_uuid)?;
                kms.store(&img, &rec.uuid, &p)?;
            }
        }
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
        rec.size = img.size().map_err(|e| errors::ceph("reading snapshot size", e))? - rec.encryption_overhead;
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
        j.put(rec)
    }

    pub(crate) fn create_snapshot_blocking(
        &self,
        req: CreateSnapshotRequest,
        src_id: VolumeId,
        creds: strake_ceph::Credentials,
    ) -> Result<CreateSnapshotResponse, Error> {
        let cluster = self.conns.get(Some(&creds))?;
        let not_found = || Error::not_found(format!("source volume {} does not exist", req.source_volume_id));
        let io = ioctx_for_id(&cluster, &src_id.pool)?.ok_or_else(not_found)?;
        let j = Journal::new(&io, &self.cfg.instance);
        let src = j.by_uuid::<VolumeRecord>(&src_id.uuid)?.ok_or_else(not_found)?;
        if src.state != State::Ready {
            return Err(Error::aborted(format!(
                "source volume {} is not ready; retry",
                req.source_volume_id
            )));
        }
        let kms = if src.encrypted {
            Some(SecretKms::from_secrets(&req.secrets, "CreateSnapshot", "snapshotter")?)
        } else {
            None
        };
        loop {
            if let Some(mut rec) = j.by_name::<SnapRecord>(&req.name)? {
                if rec.source_uuid != src.uuid {
                    return Err(Error::already_exists(format!(
                        "snapshot {:?} already exists for a different source volume",
                        req.name
                    )));
                }
                match rec.state {
                    State::Ready => {
                        let iio = other_pool(&io, &rec.image_pool)?;
                        if iio
                            .as_ref()
                            .unwrap_or(&io)
                            .open_if_exists(&rec.image)
                            .map_err(|e| errors::ceph("opening image", e))?
                            .is_some()
                        {
                            return Ok(CreateSnapshotResponse {
                                snapshot: Some(csi_snapshot(&rec, &src_id.pool)),
                            });
                        }
                        return Err(Error::internal(format!(
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
                        self.build_snapshot(&io, &j, &mut rec, kms.as_ref())?;
                        return Ok(CreateSnapshotResponse {
                            snapshot: Some(csi_snapshot(&rec, &src_id.pool)),
                        });
                    }
                    State::Deleting => {
                        return Err(Error::aborted(format!(
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
                group: None,
                image_pool: src.image_pool.clone(),
                encrypted: src.encrypted,
                encryption_overhead: src.encryption_overhead,
            };
            if !j.reserve(&rec)? {
                continue;
            }
            failpoint::hit("snapshot:after-reserve");
            self.build_snapshot(&io, &j, &mut rec, kms.as_ref())?;
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

    pub(crate) fn delete_snapshot_blocking(
        &self,
        id: SnapshotId,
        creds: strake_ceph::Credentials,
    ) -> Result<(), Error> {
        let cluster = self.conns.get(Some(&creds))?;
        let Some(io) = ioctx_for_id(&cluster, &id.pool)? else {
            return Ok(());
        };
        let j = Journal::new(&io, &self.cfg.instance);
        match j.by_uuid::<SnapRecord>(&id.uuid)? {
            None => remove_or_trash(&io, &self.cfg.naming.snapshot_image(&id.uuid))?,
            Some(mut rec) => {
                if let Some(g) = rec.group {
                    return Err(Error::failed_precondition(format!(
                        "snapshot {id} belongs to volume group snapshot {}: delete the group snapshot instead",
                        crate::ids::GroupSnapshotId {
                            pool: id.pool.clone(),
                            uuid: g
                        }
                    )));
                }
                if rec.state != State::Deleting {
                    rec.state = State::Deleting;
                    j.put(&rec)?;
                }
                failpoint::hit("delete-snapshot:after-mark");
                let iio = other_pool(&io, &rec.image_pool)?;
                let io = iio.as_ref().unwrap_or(&io);
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
                remove_or_trash(io, &rec.image)?;
                failpoint::hit("delete-snapshot:after-image");
                j.remove(&rec)?;
                tracing::info!(name = rec.name, image = rec.image, "snapshot deleted");
                purge_trash(io, &self.cfg.naming);
            }
        }
        purge_trash(&io, &self.cfg.naming);
        Ok(())
    }
}
