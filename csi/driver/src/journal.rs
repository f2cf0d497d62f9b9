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
use uuid::Uuid;

use crate::errors::{self, Error};

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
    /// Restored from a snapshot: clone of `<image>@<image>`. `pool` is the source's
    /// journal pool, `image_pool` where its image is when that differs.
    Snapshot {
        pool: String,
        uuid: Uuid,
        image: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        image_pool: Option<String>,
    },
    /// Cloned from a volume via a temporary snapshot on it.
    Volume {
        pool: String,
        uuid: Uuid,
        image: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        image_pool: Option<String>,
    },
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
    /// The pool holding the image, when not the journal's (topologyConstrainedPools).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pool: Option<String>,
    /// The topology segments the volume is reachable from.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub topology: std::collections::BTreeMap<String, String>,
    /// LUKS2 on the image (see `kms`); the image is `encryption_overhead` bytes larger
    /// than `size`, which is what the volume holds.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub encrypted: bool,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub encryption_overhead: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
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
    /// Member of this volume group snapshot (deleted only with it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<Uuid>,
    /// The pool of the snapshot's image (its source's image pool), when not the journal's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pool: Option<String>,
    /// LUKS2 on the image (see `kms`); the image is `encryption_overhead` bytes larger
    /// than `size`, which is what the volume holds.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub encrypted: bool,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub encryption_overhead: u64,
}

/// One source volume of a group snapshot and the snapshot it becomes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupMember {
    pub volume_uuid: Uuid,
    pub volume_image: String,
    /// The member's [`SnapRecord`] (named `<group snapshot name>/<volume uuid>`).
    pub snap_uuid: Uuid,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupSnapRecord {
    pub name: String,
    pub uuid: Uuid,
    /// The RBD group that exists only while the snapshot is taken.
    pub group: String,
    pub members: Vec<GroupMember>,
    pub state: State,
    pub created_secs: i64,
    pub created_nanos: i32,
    pub reserved_at: u64,
}

impl GroupSnapRecord {
    pub fn member_name(&self, m: &GroupMember) -> String {
        format!("{}/{}", self.name, m.volume_uuid)
    }
}

/// A kind of journal record: stored as `<KIND>.name.<name>` → JSON, with the index
/// `<KIND>.id.<uuid>` → name, both written in one transaction at reservation.
pub trait Record: Serialize + for<'de> Deserialize<'de> {
    const KIND: &'static str;
    fn name(&self) -> &str;
    fn uuid(&self) -> Uuid;
    fn name_key(name: &str) -> String {
        format!("{}.name.{name}", Self::KIND)
    }
    fn id_key(uuid: &Uuid) -> String {
        format!("{}.id.{uuid}", Self::KIND)
    }
}

impl Record for VolumeRecord {
    const KIND: &'static str = "vol";
    fn name(&self) -> &str {
        &self.name
    }
    fn uuid(&self) -> Uuid {
        self.uuid
    }
}

impl Record for GroupSnapRecord {
    const KIND: &'static str = "gsnap";
    fn name(&self) -> &str {
        &self.name
    }
    fn uuid(&self) -> Uuid {
        self.uuid
    }
}

impl Record for SnapRecord {
    const KIND: &'static str = "snap";
    fn name(&self) -> &str {
        &self.name
    }
    fn uuid(&self) -> Uuid {
        self.uuid
    }
}

/// The pool an image lives in: its own when recorded, else the journal's.
pub fn image_pool<'a>(own: &'a Option<String>, journal_pool: &'a str) -> &'a str {
    own.as_deref().unwrap_or(journal_pool)
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

fn je(what: &str, e: strake_ceph::CephError) -> Error {
    errors::ceph(&format!("journal: {what}"), e)
}

fn decode<T: for<'de> Deserialize<'de>>(key: &str, v: &[u8]) -> Result<T, Error> {
    serde_json::from_slice(v).map_err(|e| Error::internal(format!("journal entry {key} is corrupt: {e}")))
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

    pub fn ensure(&self) -> Result<(), Error> {
        self.io
            .ensure_object(&self.oid)
            .map_err(|e| je("creating the journal object", e))
    }

    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, Error> {
        self.io
            .omap_get(&self.oid, key)
            .map_err(|e| je(&format!("reading {key}"), e))
    }

    /// The record named `name`, if any.
    pub fn by_name<R: Record>(&self, name: &str) -> Result<Option<R>, Error> {
        let key = R::name_key(name);
        self.get(&key)?.map(|v| decode(&key, &v)).transpose()
    }

    /// The record whose uuid is `uuid`, through the id index.
    pub fn by_uuid<R: Record>(&self, uuid: &Uuid) -> Result<Option<R>, Error> {
        match self.get(&R::id_key(uuid))? {
            None => Ok(None),
            Some(n) => Ok(self
                .by_name::<R>(&String::from_utf8_lossy(&n))?
                .filter(|r| r.uuid() == *uuid)),
        }
    }

    /// Claims `rec`'s name for its uuid atomically. Ok(false): someone else holds it.
    pub fn reserve<R: Record>(&self, rec: &R) -> Result<bool, Error> {
        let nk = R::name_key(rec.name());
        let ik = R::id_key(&rec.uuid());
        let v = serde_json::to_vec(rec).expect("records serialise");
        self.io
            .omap_update(&self.oid, &[&nk, &ik], &[(&nk, &v), (&ik, rec.name().as_bytes())], &[])
            .map_err(|e| je(&format!("reserving {nk}"), e))
    }

    pub fn put<R: Record>(&self, rec: &R) -> Result<(), Error> {
        let nk = R::name_key(rec.name());
        let v = serde_json::to_vec(rec).expect("records serialise");
        self.io
            .omap_set(&self.oid, &[(&nk, &v)])
            .map_err(|e| je(&format!("updating {nk}"), e))
    }

    pub fn remove<R: Record>(&self, rec: &R) -> Result<(), Error> {
        let nk = R::name_key(rec.name());
        let ik = R::id_key(&rec.uuid());
        self.io
            .omap_remove(&self.oid, &[&nk, &ik])
            .map_err(|e| je(&format!("removing {nk}"), e))
    }

    /// Records in name order after `after` (exclusive), at most `max`; and whether
    /// more follow.
    pub fn list<R: Record>(&self, after: &str, max: u64) -> Result<(Vec<R>, bool), Error> {
        let start = if after.is_empty() {
            String::new()
        } else {
            R::name_key(after)
        };
        let page = self
            .io
            .omap_list(&self.oid, &R::name_key(""), &start, max)
            .map_err(|e| je(&format!("listing {} records", R::KIND), e))?;
        let recs = page
            .entries
            .iter()
            .map(|(k, v)| decode(k, v))
            .collect::<Result<Vec<_>, _>>()?;
        Ok((recs, page.more))
    }

    pub fn all<R: Record>(&self) -> Result<Vec<R>, Error> {
        let all = self
            .io
            .omap_list_all(&self.oid, &R::name_key(""))
            .map_err(|e| je(&format!("listing {} records", R::KIND), e))?;
        all.iter().map(|(k, v)| decode(k, v)).collect()
    }

    /// Raw `<kind>.id.*` index entries: (uuid text, name).
    pub fn id_index<R: Record>(&self) -> Result<Vec<(String, String)>, Error> {
        let prefix = format!("{}.id.", R::KIND);
        let all = self
            .io
            .omap_list_all(&self.oid, &prefix)
            .map_err(|e| je("listing ids", e))?;
        Ok(all
            .into_iter()
            .map(|(k, v)| (k[prefix.len()..].to_string(), String::from_utf8_lossy(&v).into_owned()))
            .collect())
    }

    pub fn remove_keys(&self, keys: &[&str]) -> Result<(), Error> {
        self.io.omap_remove(&self.oid, keys).map_err(|e| je("removing keys", e))
    }

    /// A value by key with its raw bytes (the compare half of [`Journal::swap`]).
    pub fn get_raw(&self, key: &str) -> Result<Option<Vec<u8>>, Error> {
        self.get(key)
    }

    /// Replaces `key`'s value only if it still is `expected` (None: absent); `new` None
    /// removes it. Ok(false): someone else changed it first; read again and retry.
    pub fn swap(&self, key: &str, expected: Option<&[u8]>, new: Option<&[u8]>) -> Result<bool, Error> {
        let expect = [(key, expected.unwrap_or(&[]))];
        let set: Vec<(&str, &[u8])> = new.map(|v| (key, v)).into_iter().collect();
        let remove: Vec<&str> = if new.is_none() { vec![key] } else { vec![] };
        self.io
            .omap_update_if(&self.oid, &expect, &set, &remove)
            .map_err(|e| je(&format!("updating {key}"), e))
    }

    /// Every (key, value) whose key starts with `prefix`.
    pub fn entries(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, Error> {
        self.io
            .omap_list_all(&self.oid, prefix)
            .map_err(|e| je(&format!("listing {prefix}*"), e))
    }

    /// Every key in the journal (tests and sweep use it to prove emptiness).
    pub fn all_keys(&self) -> Result<Vec<String>, Error> {
        Ok(self
            .io
            .omap_list_all(&self.oid, "")
            .map_err(|e| je("listing", e))?
            .into_iter()
            .map(|(k, _)| k)
            .collect())
    }
}
