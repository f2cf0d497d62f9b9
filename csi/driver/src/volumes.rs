//! Volume workflows: create (empty, restored from a snapshot, cloned from a volume) and
//! delete, each resumed from its journal record after a crash (see `journal`).
//!
//! Shape of every mutating RPC: validate → take the in-process lock for the CSI name
//! (or id) → on the blocking pool: connect with the request's secrets, read the
//! journal, reserve or resume, run idempotent steps, mark the record ready (or remove
//! it). A crash anywhere leaves a record that the retry resumes from.
use std::collections::HashMap;

use strake_ceph::{features, CephError, Image, ImageOptions, IoCtx};
use uuid::Uuid;

use crate::controller::ControllerService;
use crate::csi::volume_content_source::{SnapshotSource, Type as SourceType, VolumeSource};
use crate::csi::*;
use crate::errors::{self, Error};
use crate::failpoint;
use crate::ids::{SnapshotId, VolumeId};
use crate::images::{
    clone_hint, flatten_if_deep, ioctx, ioctx_for_id, ok_if, open, other_pool, purge_trash, refuse_if_open,
    remove_or_trash,
};
use crate::journal::{image_pool, now_secs, Journal, SnapRecord, Source, State, VolumeRecord};
use crate::kms::{Kms, Passphrase, SecretKms};
use crate::luks;
use crate::params::{self, size_satisfies};

pub(crate) fn volume_context(rec: &VolumeRecord, pool: &str) -> HashMap<String, String> {
    let mut m = HashMap::from([
        ("pool".to_string(), image_pool(&rec.image_pool, pool).to_string()),
        ("imageName".to_string(), rec.image.clone()),
        ("imageFeatures".to_string(), features::names(rec.features)),
    ]);
    if let Some(mt) = &rec.mounter {
        m.insert("mounter".into(), mt.clone());
    }
    if rec.encrypted {
        m.insert("encrypted".into(), "true".into());
    }
    m
}

pub(crate) fn csi_volume(rec: &VolumeRecord, pool: &str) -> Volume {
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
        accessible_topology: if rec.topology.is_empty() {
            vec![]
        } else {
            vec![Topology {
                segments: rec.topology.clone().into_iter().collect(),
            }]
        },
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
                image_pool: r.image_pool.clone(),
            },
            ResolvedSource::Volume(r, pool) => Source::Volume {
                pool: pool.clone(),
                uuid: r.uuid,
                image: r.image.clone(),
                image_pool: r.image_pool.clone(),
            },
        }
    }
    fn encrypted(&self) -> bool {
        match self {
            ResolvedSource::Snapshot(r, _) => r.encrypted,
            ResolvedSource::Volume(r, _) => r.encrypted,
        }
    }
    fn encryption_overhead(&self) -> u64 {
        match self {
            ResolvedSource::Snapshot(r, _) => r.encryption_overhead,
            ResolvedSource::Volume(r, _) => r.encryption_overhead,
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
    /// Makes `img` (the raw image of `rec`) LUKS2 with a passphrase the KMS keeps: a new
    /// volume gets a fresh passphrase (stored before the header is written, so a retry
    /// formats with the same one), a clone or restore inherits its source's header and
    /// so its passphrase, wrapped again for its own uuid. Measures the header's size.
    fn encrypt(&self, io: &IoCtx, img: &Image, rec: &mut VolumeRecord, kms: &SecretKms) -> Result<(), Error> {
        let cfg = &self.cfg;
        // Metadata copied from a clone's parent holds the parent's wrapped passphrase,
        // which does not open for this uuid: then take the source's and wrap it anew. A
        // volume that already has a header keeps its key, whatever happens.
        let p = match kms.fetch(img, &rec.uuid) {
            Ok(p) => p,
            Err(e) => {
                let p = match &rec.source {
                    None if luks::has_header(img)? => return Err(e),
                    None => Passphrase::generate()?,
                    Some(Source::Snapshot {
                        pool,
                        uuid,
                        image_pool: sp,
                        ..
                    }) => {
                        let sio = ioctx(io.cluster(), image_pool(sp, pool))?;
                        kms.fetch(&open(&sio, &cfg.naming.snapshot_image(uuid))?, uuid)?
                    }
                    Some(Source::Volume {
                        pool,
                        uuid,
                        image,
                        image_pool: sp,
                    }) => {
                        let sio = ioctx(io.cluster(), image_pool(sp, pool))?;
                        kms.fetch(&open(&sio, image)?, uuid)?
                    }
                };
                kms.store(img, &rec.uuid, &p)?;
                p
            }
        };
        if !luks::has_header(img)? {
            if rec.source.is_some() {
                return Err(Error::internal(format!(
                    "{} should have inherited its encrypted source's LUKS header and has none",
                    rec.image
                )));
            }
            rec.encryption_overhead = luks::format(img, &p)?;
            tracing::info!(image = rec.image, "LUKS2 header written");
        }
        if rec.encryption_overhead == 0 {
            rec.encryption_overhead = luks::payload_offset(img)?;
        }
        Ok(())
    }

    fn build_volume(
        &self,
        io: &IoCtx,
        j: &Journal,
        rec: &mut VolumeRecord,
        kms: Option<&SecretKms>,
    ) -> Result<(), Error> {
        let cfg = &self.cfg;
        let journal_pool = io.pool().to_string();
        let iio = other_pool(io, &rec.image_pool)?;
        let io = iio.as_ref().unwrap_or(io);
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
            Some(Source::Snapshot {
                pool,
                image: simg,
                image_pool: sp,
                ..
            }) => {
                if !exists {
                    let sio = ioctx(io.cluster(), image_pool(&sp, &pool))?;
                    ok_if(
                        sio.clone_image(&simg, &simg, io, &rec.image, &clone_opts),
                        CephError::is_exists,
                        &format!("cloning {simg}@{simg} into {}", rec.image),
                    )
                    .map_err(clone_hint)?;
                }
            }
            Some(Source::Volume {
                pool,
                image: vimg,
                image_pool: sp,
                ..
            }) => {
                let sio = ioctx(io.cluster(), image_pool(&sp, &pool))?;
                let tmp = cfg.naming.clone_temp_snap(&rec.uuid);
                if !exists {
                    let src = sio.open(&vimg).map_err(|e| match e.is_not_found() {
                        true => Error::not_found(format!("source volume image {vimg} no longer exists")),
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
        if rec.encrypted {
            let kms = kms.ok_or_else(|| Error::internal("an encrypted volume without a KMS"))?;
            self.encrypt(io, &img, rec, kms)?;
        }
        // An encrypted image is larger than its volume by the LUKS header.
        let want = rec.size + rec.encryption_overhead;
        let size = img.size().map_err(|e| errors::ceph("reading image size", e))?;
        if size < want {
            img.resize(want)
                .map_err(|e| errors::ceph(&format!("growing {} to the requested size", rec.image), e))?;
        }
        if rec.source.is_some() {
            flatten_if_deep(io, &img, cfg.max_clone_depth)?;
        }
        // For people reading `rbd info`: which CSI name this image belongs to.
        ok_if(img.metadata_set("strake.csi/name", &rec.name), |_| true, "")?;
        // Where its journal record is, for `sweep` of a pool other than the journal's.
        ok_if(
            img.metadata_set(crate::sweep::JOURNAL_POOL_KEY, &journal_pool),
            |_| true,
            "",
        )?;
        rec.size = img.size().map_err(|e| errors::ceph("reading image size", e))? - rec.encryption_overhead;
        rec.state = State::Ready;
        j.put(rec)
    }

    pub(crate) fn create_volume_blocking(
        &self,
        req: CreateVolumeRequest,
        p: params::VolumeParams,
        size: u64,
        creds: strake_ceph::Credentials,
        source: Option<SourceType>,
    ) -> Result<CreateVolumeResponse, Error> {
        let cluster = self.conns.get(Some(&creds))?;
        let io = ioctx(&cluster, &p.pool)?;
        let j = Journal::new(&io, &self.cfg.instance);
        j.ensure()?;
        // Resolve the content source through its pool's journal.
        let resolved = match source {
            None => None,
            Some(SourceType::Snapshot(s)) => {
                let id = SnapshotId::parse(&s.snapshot_id)
                    .ok_or_else(|| Error::not_found(format!("source snapshot {:?} does not exist", s.snapshot_id)))?;
                let sio = ioctx_for_id(&cluster, &id.pool)?
                    .ok_or_else(|| Error::not_found(format!("source snapshot {} does not exist", s.snapshot_id)))?;
                let rec = Journal::new(&sio, &self.cfg.instance)
                    .by_uuid::<SnapRecord>(&id.uuid)?
                    .ok_or_else(|| Error::not_found(format!("source snapshot {} does not exist", s.snapshot_id)))?;
                if rec.state != State::Ready {
                    return Err(Error::aborted(format!(
                        "source snapshot {} is not ready yet; retry",
                        s.snapshot_id
                    )));
                }
                Some(ResolvedSource::Snapshot(rec, id.pool))
            }
            Some(SourceType::Volume(v)) => {
                let id = VolumeId::parse(&v.volume_id)
                    .ok_or_else(|| Error::not_found(format!("source volume {:?} does not exist", v.volume_id)))?;
                let sio = ioctx_for_id(&cluster, &id.pool)?
                    .ok_or_else(|| Error::not_found(format!("source volume {} does not exist", v.volume_id)))?;
                let rec = Journal::new(&sio, &self.cfg.instance)
                    .by_uuid::<VolumeRecord>(&id.uuid)?
                    .ok_or_else(|| Error::not_found(format!("source volume {} does not exist", v.volume_id)))?;
                if rec.state != State::Ready {
                    return Err(Error::aborted(format!(
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
                return Err(Error::out_of_range(format!(
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
        // A copy of an encrypted volume is encrypted with its key; a plaintext one cannot
        // be encrypted in place.
        let src_encrypted = resolved.as_ref().is_some_and(ResolvedSource::encrypted);
        if p.encrypted && resolved.is_some() && !src_encrypted {
            return Err(Error::invalid_argument(
                "the StorageClass says encrypted but the source is not: a copy of plaintext data cannot be encrypted in place",
            ));
        }
        let encrypted = p.encrypted || src_encrypted;
        let kms = if encrypted {
            Some(SecretKms::from_secrets(&req.secrets, "CreateVolume", "provisioner")?)
        } else {
            None
        };
        loop {
            if let Some(mut rec) = j.by_name::<VolumeRecord>(&req.name)? {
                if !same_source(&rec.source, &source) {
                    return Err(Error::already_exists(format!(
                        "volume {:?} already exists with a different content source",
                        req.name
                    )));
                }
                if !size_satisfies(rec.size, req.capacity_range.as_ref()) && rec.state == State::Ready {
                    return Err(Error::already_exists(format!(
                        "volume {:?} already exists with {} bytes, outside the requested capacity range",
                        req.name, rec.size
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
                        self.build_volume(&io, &j, &mut rec, kms.as_ref())?;
                    }
                    State::Creating => {
                        tracing::info!(
                            name = req.name,
                            image = rec.image,
                            "resuming an interrupted CreateVolume"
                        );
                        self.build_volume(&io, &j, &mut rec, kms.as_ref())?;
                    }
                    State::Deleting => {
                        return Err(Error::aborted(format!(
                            "volume {:?} is being deleted; retry CreateVolume after DeleteVolume finishes",
                            req.name
                        )))
                    }
                }
                return Ok(CreateVolumeResponse {
                    volume: Some(csi_volume(&rec, &p.pool)),
                });
            }
            // The image's pool: the StorageClass's, or the topology pool for the
            // requested domain (the record stays in the StorageClass's pool).
            let (image_pool, data_pool, topology) = if p.topology_pools.is_empty() {
                (None, p.data_pool.clone(), Default::default())
            } else {
                let tp = crate::topology::choose(&p.topology_pools, req.accessibility_requirements.as_ref())?;
                (
                    Some(tp.pool_name.clone()).filter(|x| *x != p.pool),
                    tp.data_pool.clone().or(p.data_pool.clone()),
                    crate::topology::segments(tp),
                )
            };
            let uuid = Uuid::new_v4();
            let mut rec = VolumeRecord {
                name: req.name.clone(),
                uuid,
                image: self.cfg.naming.volume_image(&uuid),
                size,
                state: State::Creating,
                features: p.features,
                data_pool,
                mounter: p.mounter.map(|m| m.to_string()),
                source: source.clone(),
                reserved_at: now_secs(),
                image_pool,
                topology,
                encrypted,
                encryption_overhead: resolved.as_ref().map(ResolvedSource::encryption_overhead).unwrap_or(0),
            };
            failpoint::delay("create:before-reserve");
            if !j.reserve(&rec)? {
                // Another process reserved the name between our read and write: use theirs.
                continue;
            }
            tracing::info!(name = req.name, image = rec.image, size, "reserved volume name");
            failpoint::hit("create:after-reserve");
            self.build_volume(&io, &j, &mut rec, kms.as_ref())?;
            tracing::info!(name = req.name, image = rec.image, "volume created");
            return Ok(CreateVolumeResponse {
                volume: Some(csi_volume(&rec, &p.pool)),
            });
        }
    }

    pub(crate) fn delete_volume_blocking(&self, id: VolumeId, creds: strake_ceph::Credentials) -> Result<(), Error> {
        let cluster = self.conns.get(Some(&creds))?;
        let Some(io) = ioctx_for_id(&cluster, &id.pool)? else {
            return Ok(());
        };
        let j = Journal::new(&io, &self.cfg.instance);
        let image = self.cfg.naming.volume_image(&id.uuid);
        match j.by_uuid::<VolumeRecord>(&id.uuid)? {
            None => {
                // No record: the id names an image we would have created; remove it if
                // it exists (an image without a record is an orphan anyway).
                remove_or_trash(&io, &image)?;
            }
            Some(mut rec) => {
                // Fail fast, before marking, if a node still holds it or has it open.
                let hs = crate::publish::holders(&j, &id.uuid)?;
                if !hs.holders.is_empty() {
                    let nodes: Vec<&str> = hs.holders.iter().map(|h| h.node.as_str()).collect();
                    return Err(Error::failed_precondition(format!(
                        "volume {} is published to {}: ControllerUnpublishVolume it first",
                        id,
                        nodes.join(", ")
                    )));
                }
                let iio = other_pool(&io, &rec.image_pool)?;
                let image_io = iio.as_ref().unwrap_or(&io);
                refuse_if_open(image_io, &rec.image)?;
                if rec.state != State::Deleting {
                    rec.state = State::Deleting;
                    j.put(&rec)?;
                }
                failpoint::hit("delete:after-mark");
                if let Err(e) = remove_or_trash(image_io, &rec.image) {
                    if e.kind() == errors::Kind::FailedPrecondition {
                        // Opened by a node between the check and the removal: the volume
                        // is untouched, so it is ready again (ListVolumes shows it).
                        rec.state = State::Ready;
                        j.put(&rec)?;
                    }
                    return Err(e);
                }
                failpoint::hit("delete:after-image");
                j.remove(&rec)?;
                tracing::info!(name = rec.name, image = rec.image, "volume deleted");
                if let Some(other) = iio.as_ref() {
                    purge_trash(other, &self.cfg.naming);
                }
            }
        }
        purge_trash(&io, &self.cfg.naming);
        Ok(())
    }
}
