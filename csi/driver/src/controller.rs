//! The CSI Controller service's gRPC edge: argument checks, locks, and the calls into
//! the workflows, which live by job in `volumes` (create, clone, restore, delete),
//! `snapshots`, `groupsnap` (GroupController), `publish` (attach records and fencing)
//! and `modify` (VolumeAttributesClass). Listing, capacity and expansion are small
//! enough to stay here.
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use strake_ceph::IoCtx;
use tonic::{Request, Response, Status};

use crate::cephconn::{credentials, Connections};
use crate::csi::controller_server::Controller;
use crate::csi::controller_service_capability::rpc::Type as CapType;
use crate::csi::volume_content_source::Type as SourceType;
use crate::csi::*;
use crate::errors::{self, blocking, Error};
use crate::ids::{Naming, SnapshotId, VolumeId};
use crate::images::{ioctx_for_id, open, other_pool};
use crate::journal::{Journal, SnapRecord, State, VolumeRecord};
use crate::locks::KeyLocks;
use crate::metrics::instrument;
use crate::params::{self, check_capabilities, parse_volume_params, size_for_range, validate_name};
use crate::snapshots::csi_snapshot;
use crate::volumes::csi_volume;

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
    /// How ControllerUnpublishVolume fences a node that left without unstaging.
    pub fence: crate::publish::FenceOptions,
}

#[derive(Clone)]
pub struct ControllerService {
    pub(crate) cfg: Arc<ControllerConfig>,
    pub(crate) conns: Arc<Connections>,
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

    /// Connects, opens the id's pool and journal, and reads its volume record, which
    /// must exist and be ready. Blocking.
    pub(crate) fn ready_volume(
        &self,
        id: &VolumeId,
        volume_id: &str,
        creds: Option<&strake_ceph::Credentials>,
    ) -> Result<(IoCtx, VolumeRecord), Error> {
        let cluster = self.conns.get(creds)?;
        let nf = || Error::not_found(format!("volume {volume_id} does not exist"));
        let io = ioctx_for_id(&cluster, &id.pool)?.ok_or_else(nf)?;
        let rec = Journal::new(&io, &self.cfg.instance)
            .by_uuid::<VolumeRecord>(&id.uuid)?
            .ok_or_else(nf)?;
        if rec.state != State::Ready {
            return Err(Error::aborted(format!(
                "volume {volume_id} is being created or deleted; retry"
            )));
        }
        Ok((io, rec))
    }

    pub(crate) async fn lock(&self, key: String) -> Result<crate::locks::KeyGuard, Error> {
        self.locks.lock(&key, self.cfg.lock_timeout).await.ok_or_else(|| {
            Error::aborted(format!(
                "another operation on {key} has been running for over {:?}; retry later",
                self.cfg.lock_timeout
            ))
        })
    }
}

fn page_token(pool_idx: usize, name: &str) -> String {
    format!("{pool_idx}:{name}")
}

fn parse_token(t: &str, pools: usize) -> Result<(usize, String), Error> {
    if t.is_empty() {
        return Ok((0, String::new()));
    }
    let (i, n) = t
        .split_once(':')
        .ok_or_else(|| Error::aborted(format!("starting_token {t:?} is not one this driver issued")))?;
    let i: usize = i
        .parse()
        .map_err(|_| Error::aborted(format!("starting_token {t:?} is not one this driver issued")))?;
    if i >= pools {
        return Err(Error::aborted(format!("starting_token {t:?} is out of range")));
    }
    Ok((i, n.to_string()))
}

fn max_entries(n: i32) -> Result<u64, Error> {
    if n < 0 {
        return Err(Error::invalid_argument("max_entries must not be negative"));
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
            let qos = crate::modify::parse(&req.mutable_parameters)?;
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
            blocking(move || {
                let r = this.create_volume_blocking(req, p, size, creds.clone(), source)?;
                if !qos.is_empty() {
                    // VolumeAttributesClass at creation: the same limits ModifyVolume sets.
                    let v = r.volume.as_ref().expect("a created volume");
                    let id = VolumeId::parse(&v.volume_id).expect("our own id");
                    let (io, rec) = this.ready_volume(&id, &v.volume_id, Some(&creds))?;
                    let iio = other_pool(&io, &rec.image_pool)?;
                    crate::modify::apply(&open(iio.as_ref().unwrap_or(&io), &rec.image)?, &qos)?;
                }
                Ok(r)
            })
            .await
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
        request: Request<ControllerPublishVolumeRequest>,
    ) -> Result<Response<ControllerPublishVolumeResponse>, Status> {
        instrument("ControllerPublishVolume", async {
            let req = request.into_inner();
            if req.volume_id.is_empty() {
                return Err(Status::invalid_argument("volume_id is required"));
            }
            crate::publish::validate_node_id(&req.node_id)?;
            let cap = req
                .volume_capability
                .as_ref()
                .ok_or_else(|| Status::invalid_argument("volume_capability is required"))?;
            let (kind, mode) = params::check_capability(cap, &self.cfg.default_fs).map_err(Status::invalid_argument)?;
            let creds = credentials(&req.secrets, "ControllerPublishVolume", "controller-publish")?;
            let id = VolumeId::parse(&req.volume_id)
                .ok_or_else(|| Status::not_found(format!("volume {} does not exist", req.volume_id)))?;
            let want = crate::publish::Holder::new(&req.node_id, mode, req.readonly, kind == params::AccessKind::Block);
            let _g = self.lock(format!("volume-id/{}", id.uuid)).await?;
            let this = self.clone();
            blocking(move || {
                let (io, _) = this.ready_volume(&id, &req.volume_id, Some(&creds))?;
                let j = Journal::new(&io, &this.cfg.instance);
                let h = crate::publish::publish(&j, &id.uuid, &req.volume_id, want)?;
                tracing::info!(
                    volume_id = req.volume_id,
                    node = h.node,
                    mode = h.mode,
                    readonly = h.readonly,
                    "published"
                );
                Ok(ControllerPublishVolumeResponse {
                    publish_context: crate::publish::publish_context(&h),
                })
            })
            .await
        })
        .await
    }

    async fn controller_unpublish_volume(
        &self,
        request: Request<ControllerUnpublishVolumeRequest>,
    ) -> Result<Response<ControllerUnpublishVolumeResponse>, Status> {
        instrument("ControllerUnpublishVolume", async {
            let req = request.into_inner();
            if req.volume_id.is_empty() {
                return Err(Status::invalid_argument("volume_id is required"));
            }
            crate::publish::validate_node_id(&req.node_id)?;
            let creds = credentials(&req.secrets, "ControllerUnpublishVolume", "controller-publish")?;
            let Some(id) = VolumeId::parse(&req.volume_id) else {
                return Ok(ControllerUnpublishVolumeResponse {});
            };
            let _g = self.lock(format!("volume-id/{}", id.uuid)).await?;
            let this = self.clone();
            blocking(move || {
                let cluster = this.conns.get(Some(&creds))?;
                let Some(io) = ioctx_for_id(&cluster, &id.pool)? else {
                    return Ok(ControllerUnpublishVolumeResponse {});
                };
                let j = Journal::new(&io, &this.cfg.instance);
                let (image, own_pool) = match j.by_uuid::<VolumeRecord>(&id.uuid)? {
                    Some(r) => (r.image, r.image_pool),
                    None => (this.cfg.naming.volume_image(&id.uuid), None),
                };
                let iio = other_pool(&io, &own_pool)?;
                let ours = crate::publish::own_addrs(&this.conns.all());
                let fenced = crate::publish::unpublish(
                    iio.as_ref().unwrap_or(&io),
                    &j,
                    &id.uuid,
                    &image,
                    &req.node_id,
                    &ours,
                    this.cfg.fence,
                )?;
                tracing::info!(volume_id = req.volume_id, node = req.node_id, fenced = ?fenced, "unpublished");
                Ok(ControllerUnpublishVolumeResponse {})
            })
            .await
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
                    .by_uuid::<VolumeRecord>(&id.uuid)?
                    .ok_or_else(|| Status::not_found(format!("volume {vid} does not exist")))?;
                Ok::<_, Status>(())
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
                    // LIST_VOLUMES_PUBLISHED_NODES: the holders of every volume in this pool.
                    let mut published: HashMap<String, Vec<String>> = HashMap::new();
                    for (k, v) in j.entries("pub.")? {
                        let hs: crate::publish::Holders = serde_json::from_slice(&v)
                            .map_err(|e| Status::internal(format!("journal entry {k} is corrupt: {e}")))?;
                        published.insert(
                            k["pub.".len()..].to_string(),
                            hs.holders.into_iter().map(|h| h.node).collect(),
                        );
                    }
                    loop {
                        let want = max - entries.len() as u64;
                        let (recs, more) = j.list::<VolumeRecord>(&after, want)?;
                        for r in &recs {
                            after = r.name.clone();
                            if r.state == State::Ready {
                                entries.push(list_volumes_response::Entry {
                                    volume: Some(csi_volume(r, &pools[pi])),
                                    status: Some(list_volumes_response::VolumeStatus {
                                        published_node_ids: published
                                            .get(&r.uuid.to_string())
                                            .cloned()
                                            .unwrap_or_default(),
                                        volume_condition: None,
                                    }),
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
                CapType::PublishUnpublishVolume,
                CapType::PublishReadonly,
                CapType::ListVolumesPublishedNodes,
                CapType::ModifyVolume,
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
            Ok(blocking(move || this.create_snapshot_blocking(req, src, creds)).await?)
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
                            if let Some(r) = Journal::new(&io, &instance).by_uuid::<SnapRecord>(&id.uuid)? {
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
                        let (recs, more) = j.list::<SnapRecord>(&after, 256)?;
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
                let mut rec = j.by_uuid::<VolumeRecord>(&id.uuid)?.ok_or_else(nf)?;
                if rec.state != State::Ready {
                    return Err(Status::aborted(format!(
                        "volume {vid} is being created or deleted; retry"
                    )));
                }
                let iio = other_pool(&io, &rec.image_pool)?;
                let img = open(iio.as_ref().unwrap_or(&io), &rec.image)?;
                // An encrypted image is larger than its volume by the LUKS header; the
                // payload (what the node's mapping shows) grows with the image.
                let oh = rec.encryption_overhead;
                let cur = img.size().map_err(|e| errors::ceph("reading size", e))? - oh;
                if size > cur {
                    img.resize(size + oh)
                        .map_err(|e| errors::ceph(&format!("growing {} to {size} bytes", rec.image), e))?;
                }
                let new = cur.max(size);
                if rec.size != new {
                    rec.size = new;
                    j.put(&rec)?;
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

    async fn controller_modify_volume(
        &self,
        request: Request<ControllerModifyVolumeRequest>,
    ) -> Result<Response<ControllerModifyVolumeResponse>, Status> {
        instrument("ControllerModifyVolume", async {
            let req = request.into_inner();
            if req.volume_id.is_empty() {
                return Err(Status::invalid_argument("volume_id is required"));
            }
            let qos = crate::modify::parse(&req.mutable_parameters)?;
            // csi-resizer may send no secrets for ModifyVolume: the driver's own identity then.
            let creds = if req.secrets.is_empty() {
                None
            } else {
                Some(credentials(
                    &req.secrets,
                    "ControllerModifyVolume",
                    "controller-modify",
                )?)
            };
            let id = VolumeId::parse(&req.volume_id)
                .ok_or_else(|| Status::not_found(format!("volume {} does not exist", req.volume_id)))?;
            tracing::info!(volume_id = req.volume_id, parameters = ?qos, "ControllerModifyVolume");
            let _g = self.lock(format!("volume-id/{}", id.uuid)).await?;
            let this = self.clone();
            blocking(move || {
                let (io, rec) = this.ready_volume(&id, &req.volume_id, creds.as_ref())?;
                let iio = other_pool(&io, &rec.image_pool)?;
                crate::modify::apply(&open(iio.as_ref().unwrap_or(&io), &rec.image)?, &qos)?;
                Ok(ControllerModifyVolumeResponse {})
            })
            .await
        })
        .await
    }
}
