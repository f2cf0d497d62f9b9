//! The omap journal: CSI names ↔ image uuids, stored in one RADOS object per pool.
//!
//! Object `csi.strake.<instance>` holds, as omap keys:
//! * `vol.name.<csi name>` → JSON [`VolumeRecord`]; `vol.id.<uuid>` → csi name
//! * `snap.name.<csi name>` → JSON [`SnapRecord`]; `snap.id.<uuid>` → csi name
//!
//! Invariants that make crashes converge:
//! 1. A record is written (state `creating`, uuid chosen) *before* any image exists,
//!    with an OSD-side compare-and-set on both keys, so two processes racing for a name
//!    cannot both win and the uuid — hence the image name — is fixed for all retries.
//! 2. Images are removed *before* their record (state `deleting` marks the intent), so
//!    an image without a record is never legitimate: `sweep` may remove it.
//! 3. Every step between is idempotent (EEXIST/ENOENT are success), so a retry simply
//!    re-runs the steps from the start.
use serde::{Deserialize, Serialize};
use strake_ceph::IoCtx;
use tonic::Status;
use uuid::Uuid;

use crate::errors;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Creating,
    Ready,
    Deleting,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Source {
    /// Restored from a snapshot: clone of `<image>@<image>`.
    Snapshot { pool: String, uuid: Uuid, image: String },
    /// Cloned from a volume via a temporary snapshot on it.
    Volume { pool: String, uuid: Uuid, image: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeRecord {
    pub name: String,
    pub uuid: Uuid,
    pub image: String,
    pub size: u64,
    pub state: State,
    pub features: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_pool: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mounter: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<Source>,
    /// Unix seconds when the name was reserved.
    pub reserved_at: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapRecord {
    pub name: String,
    pub uuid: Uuid,
    /// The snapshot's own image (a clone of the source at snapshot time) and the RBD
    /// snapshot on it that restores clone from; both are named `image`.
    pub image: String,
    pub source_uuid: Uuid,
    pub source_image: String,
    pub size: u64,
    pub state: State,
    pub created_secs: i64,
    pub created_nanos: i32,
    pub reserved_at: u64,
}

pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub struct Journal<'a> {
    io: &'a IoCtx,
    oid: String,
}

fn je(what: &str, e: strake_ceph::CephError) -> Status {
    errors::ceph(&format!("journal: {what}"), e)
}

fn decode<T: for<'de> Deserialize<'de>>(key: &str, v: &[u8]) -> Result<T, Status> {
    serde_json::from_slice(v).map_err(|e| Status::internal(format!("journal entry {key} is corrupt: {e}")))
}

impl<'a> Journal<'a> {
    pub fn object_name(instance: &str) -> String {
        format!("csi.strake.{instance}")
    }

    pub fn new(io: &'a IoCtx, instance: &str) -> Self {
        Journal {
            io,
            oid: Self::object_name(instance),
        }
    }

    pub fn oid(&self) -> &str {
        &self.oid
    }

    pub fn ensure(&self) -> Result<(), Status> {
        self.io
            .ensure_object(&self.oid)
            .map_err(|e| je("creating the journal object", e))
    }

    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, Status> {
        self.io
            .omap_get(&self.oid, key)
            .map_err(|e| je(&format!("reading {key}"), e))
    }

    // ---- volumes ----

    pub fn volume_by_name(&self, name: &str) -> Result<Option<VolumeRecord>, Status> {
        let key = format!("vol.name.{name}");
        self.get(&key)?.map(|v| decode(&key, &v)).transpose()
    }

    pub fn volume_name_by_uuid(&self, uuid: &Uuid) -> Result<Option<String>, Status> {
        Ok(self
            .get(&format!("vol.id.{uuid}"))?
            .map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    pub fn volume_by_uuid(&self, uuid: &Uuid) -> Result<Option<VolumeRecord>, Status> {
        match self.volume_name_by_uuid(uuid)? {
            None => Ok(None),
            Some(n) => Ok(self.volume_by_name(&n)?.filter(|r| r.uuid == *uuid)),
        }
    }

    /// Claims `rec.name` for `rec.uuid` atomically. Ok(false): someone else holds it.
    pub fn reserve_volume(&self, rec: &VolumeRecord) -> Result<bool, Status> {
        let nk = format!("vol.name.{}", rec.name);
        let ik = format!("vol.id.{}", rec.uuid);
        let v = serde_json::to_vec(rec).expect("records serialise");
        self.io
            .omap_update(&self.oid, &[&nk, &ik], &[(&nk, &v), (&ik, rec.name.as_bytes())], &[])
            .map_err(|e| je(&format!("reserving {nk}"), e))
    }

    pub fn put_volume(&self, rec: &VolumeRecord) -> Result<(), Status> {
        let nk = format!("vol.name.{}", rec.name);
        let v = serde_json::to_vec(rec).expect("records serialise");
        self.io
            .omap_set(&self.oid, &[(&nk, &v)])
            .map_err(|e| je(&format!("updating {nk}"), e))
    }

    pub fn remove_volume(&self, rec: &VolumeRecord) -> Result<(), Status> {
        let nk = format!("vol.name.{}", rec.name);
        let ik = format!("vol.id.{}", rec.uuid);
        self.io
            .omap_remove(&self.oid, &[&nk, &ik])
            .map_err(|e| je(&format!("removing {nk}"), e))
    }

    /// Volume records in name order after `after` (exclusive), at most `max`.
    pub fn list_volumes(&self, after: &str, max: u64) -> Result<(Vec<VolumeRecord>, bool), Status> {
        let start = if after.is_empty() {
            String::new()
        } else {
            format!("vol.name.{after}")
        };
        let page = self
            .io
            .omap_list(&self.oid, "vol.name.", &start, max)
            .map_err(|e| je("listing volumes", e))?;
        let recs = page
            .entries
            .iter()
            .map(|(k, v)| decode(k, v))
            .collect::<Result<Vec<_>, _>>()?;
        Ok((recs, page.more))
    }

    pub fn all_volumes(&self) -> Result<Vec<VolumeRecord>, Status> {
        let all = self
            .io
            .omap_list_all(&self.oid, "vol.name.")
            .map_err(|e| je("listing volumes", e))?;
        all.iter().map(|(k, v)| decode(k, v)).collect()
    }

    /// Raw `vol.id.*` / `snap.id.*` index entries: (uuid text, name).
    pub fn id_index(&self, prefix: &str) -> Result<Vec<(String, String)>, Status> {
        let all = self
            .io
            .omap_list_all(&self.oid, prefix)
            .map_err(|e| je("listing ids", e))?;
        Ok(all
            .into_iter()
            .map(|(k, v)| (k[prefix.len()..].to_string(), String::from_utf8_lossy(&v).into_owned()))
            .collect())
    }

    pub fn remove_keys(&self, keys: &[&str]) -> Result<(), Status> {
        self.io.omap_remove(&self.oid, keys).map_err(|e| je("removing keys", e))
    }

    // ---- snapshots ----

    pub fn snap_by_name(&self, name: &str) -> Result<Option<SnapRecord>, Status> {
        let key = format!("snap.name.{name}");
        self.get(&key)?.map(|v| decode(&key, &v)).transpose()
    }

    pub fn snap_by_uuid(&self, uuid: &Uuid) -> Result<Option<SnapRecord>, Status> {
        match self.get(&format!("snap.id.{uuid}"))? {
            None => Ok(None),
            Some(n) => Ok(self
                .snap_by_name(&String::from_utf8_lossy(&n))?
                .filter(|r| r.uuid == *uuid)),
        }
    }

    pub fn reserve_snap(&self, rec: &SnapRecord) -> Result<bool, Status> {
        let nk = format!("snap.name.{}", rec.name);
        let ik = format!("snap.id.{}", rec.uuid);
        let v = serde_json::to_vec(rec).expect("records serialise");
        self.io
            .omap_update(&self.oid, &[&nk, &ik], &[(&nk, &v), (&ik, rec.name.as_bytes())], &[])
            .map_err(|e| je(&format!("reserving {nk}"), e))
    }

    pub fn put_snap(&self, rec: &SnapRecord) -> Result<(), Status> {
        let nk = format!("snap.name.{}", rec.name);
        let v = serde_json::to_vec(rec).expect("records serialise");
        self.io
            .omap_set(&self.oid, &[(&nk, &v)])
            .map_err(|e| je(&format!("updating {nk}"), e))
    }

    pub fn remove_snap(&self, rec: &SnapRecord) -> Result<(), Status> {
        let nk = format!("snap.name.{}", rec.name);
        let ik = format!("snap.id.{}", rec.uuid);
        self.io
            .omap_remove(&self.oid, &[&nk, &ik])
            .map_err(|e| je(&format!("removing {nk}"), e))
    }

    pub fn list_snaps(&self, after: &str, max: u64) -> Result<(Vec<SnapRecord>, bool), Status> {
        let start = if after.is_empty() {
            String::new()
        } else {
            format!("snap.name.{after}")
        };
        let page = self
            .io
            .omap_list(&self.oid, "snap.name.", &start, max)
            .map_err(|e| je("listing snapshots", e))?;
        let recs = page
            .entries
            .iter()
            .map(|(k, v)| decode(k, v))
            .collect::<Result<Vec<_>, _>>()?;
        Ok((recs, page.more))
    }

    pub fn all_snaps(&self) -> Result<Vec<SnapRecord>, Status> {
        let all = self
            .io
            .omap_list_all(&self.oid, "snap.name.")
            .map_err(|e| je("listing snapshots", e))?;
        all.iter().map(|(k, v)| decode(k, v)).collect()
    }

    /// Every key in the journal (tests and sweep use it to prove emptiness).
    pub fn all_keys(&self) -> Result<Vec<String>, Status> {
        Ok(self
            .io
            .omap_list_all(&self.oid, "")
            .map_err(|e| je("listing", e))?
            .into_iter()
            .map(|(k, _)| k)
            .collect())
    }
}
