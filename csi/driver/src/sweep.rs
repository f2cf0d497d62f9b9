//! `strake-csi sweep`: finds what a crash or a CO that gave up left behind, and with
//! `--delete` removes what it can *prove* is orphaned (never a live volume).
//!
//! Proofs rest on the journal's ordering (see `journal`): a record is written before
//! its image and removed after it.
//! * image with our prefix and no record (any state) → orphan image
//! * record `deleting` → interrupted DeleteVolume/DeleteSnapshot: finish it
//! * record `ready` whose image is gone → record without image
//! * record `creating` older than `--grace` whose image never appeared → abandoned reservation
//! * `vol.id.*`/`snap.id.*` index entry without its name entry → dangling index
//! * temporary clone/snapshot RBD snapshots whose operation is not in progress
//! * our images in the RBD trash that nothing depends on any more
//! * RBD groups of ours that no group snapshot in progress needs
//!
//! A record `creating` whose image exists is reported but kept: the CO may still retry
//! and finish it.
use std::collections::{HashMap, HashSet};
use std::time::Duration;

use serde::Serialize;
use strake_ceph::IoCtx;
use uuid::Uuid;

use crate::errors::{self, Error};
use crate::ids::Naming;
use crate::images::{purge_trash, remove_or_trash};
use crate::journal::{now_secs, GroupSnapRecord, Journal, SnapRecord, State, VolumeRecord};

/// Image metadata naming the pool whose journal holds the image's record (an image in
/// a topology pool has its record in the StorageClass's pool).
pub const JOURNAL_POOL_KEY: &str = "strake.csi/journal-pool";

/// Whether the journal of another pool, named by the image's metadata, records it.
fn recorded_elsewhere(io: &IoCtx, image: &str, uuid: &Uuid, is_snap: bool, instance: &str) -> Result<bool, Error> {
    let Some(img) = io.open_if_exists(image).map_err(|e| errors::ceph("opening image", e))? else {
        return Ok(false);
    };
    let Some(jp) = img
        .metadata_get(JOURNAL_POOL_KEY)
        .map_err(|e| errors::ceph("reading image metadata", e))?
        .filter(|p| p != io.pool())
    else {
        return Ok(false);
    };
    let jio = match io.cluster().ioctx(&jp) {
        Ok(j) => j,
        Err(e) if e.is_not_found() => return Ok(false),
        Err(e) => return Err(errors::ceph(&format!("opening journal pool {jp}"), e)),
    };
    let j = Journal::new(&jio, instance);
    Ok(if is_snap {
        j.by_uuid::<SnapRecord>(uuid)?.is_some()
    } else {
        j.by_uuid::<VolumeRecord>(uuid)?.is_some()
    })
}

#[derive(Debug, Clone)]
pub struct SweepConfig {
    pub instance: String,
    pub naming: Naming,
    pub grace: Duration,
    pub delete: bool,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Finding {
    pub pool: String,
    pub kind: &'static str,
    pub object: String,
    pub reason: String,
    /// Whether it was removed (only with --delete, and only for proven orphans).
    pub removed: bool,
    /// Proven orphan (removable) vs. reported for a human to judge.
    pub proven: bool,
    /// Why removing it failed (it stays for the next sweep).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

fn why<E: std::fmt::Display>(e: E) -> String {
    e.to_string()
}

/// Runs a removal when `delete` is set: Ok(true) removed, Ok(false) not attempted,
/// Err(cause) failed.
fn attempt(delete: bool, f: impl FnOnce() -> Result<(), String>) -> Result<bool, String> {
    if delete {
        f().map(|_| true)
    } else {
        Ok(false)
    }
}

pub fn sweep(io: &IoCtx, cfg: &SweepConfig) -> Result<Vec<Finding>, Error> {
    let pool = io.pool().to_string();
    let mut out = Vec::new();
    let mut push = |kind: &'static str, object: String, reason: String, proven: bool, removed: Result<bool, String>| {
        if let Err(e) = &removed {
            tracing::warn!(
                kind,
                object,
                error = e,
                "sweep could not remove an orphan; the next sweep retries"
            );
        }
        out.push(Finding {
            pool: pool.clone(),
            kind,
            object,
            reason,
            removed: removed == Ok(true),
            proven,
            error: removed.err(),
        });
    };
    // Images first, journal second: see the module docs for why this order is safe.
    let images = io.list_images().map_err(|e| errors::ceph("listing images", e))?;
    let j = Journal::new(io, &cfg.instance);
    let vols = j.all::<VolumeRecord>()?;
    let snaps = j.all::<SnapRecord>()?;
    let vol_by_uuid: HashMap<Uuid, State> = vols.iter().map(|r| (r.uuid, r.state)).collect();
    let snap_by_uuid: HashMap<Uuid, State> = snaps.iter().map(|r| (r.uuid, r.state)).collect();
    let image_names: HashSet<&str> = images.iter().map(|i| i.name.as_str()).collect();
    let now = now_secs();

    for img in &images {
        let Some((is_snap, uuid)) = cfg.naming.parse_image(&img.name) else {
            continue;
        };
        let known = if is_snap {
            snap_by_uuid.contains_key(&uuid)
        } else {
            vol_by_uuid.contains_key(&uuid)
        };
        // A topology pool's images have their records in another pool's journal.
        if !known && !recorded_elsewhere(io, &img.name, &uuid, is_snap, &cfg.instance)? {
            let removed = attempt(cfg.delete, || {
                remove_or_trash(io, &img.name).map_err(why)?;
                Ok(())
            });
            push(
                "image",
                img.name.clone(),
                "image has no journal record (crash between steps, or a record removed by hand)".into(),
                true,
                removed,
            );
        }
    }

    for r in &vols {
        let has_image = image_names.contains(r.image.as_str());
        match r.state {
            State::Deleting => {
                let removed = attempt(cfg.delete, || {
                    remove_or_trash(io, &r.image).map_err(why)?;
                    j.remove(r).map_err(why)?;
                    Ok(())
                });
                push(
                    "volume-record",
                    r.name.clone(),
                    format!("DeleteVolume of {} was interrupted", r.image),
                    true,
                    removed,
                );
            }
            State::Ready if !has_image => {
                let removed = attempt(cfg.delete, || {
                    j.remove(r).map_err(why)?;
                    Ok(())
                });
                push(
                    "volume-record",
                    r.name.clone(),
                    format!("record is ready but image {} does not exist", r.image),
                    true,
                    removed,
                );
            }
            State::Creating if now.saturating_sub(r.reserved_at) >= cfg.grace.as_secs() => {
                if has_image {
                    push(
                        "volume-record",
                        r.name.clone(),
                        format!(
                            "CreateVolume has not finished for {}s; the CO may still retry it",
                            now - r.reserved_at
                        ),
                        false,
                        Ok(false),
                    );
                } else {
                    let removed = attempt(cfg.delete, || {
                        j.remove(r).map_err(why)?;
                        Ok(())
                    });
                    push(
                        "volume-record",
                        r.name.clone(),
                        format!(
                            "reservation older than {}s whose image never appeared",
                            cfg.grace.as_secs()
                        ),
                        true,
                        removed,
                    );
                }
            }
            _ => {}
        }
    }
    for r in &snaps {
        let has_image = image_names.contains(r.image.as_str());
        match r.state {
            State::Deleting => {
                let removed = attempt(cfg.delete, || {
                    remove_or_trash(io, &r.image).map_err(why)?;
                    j.remove(r).map_err(why)?;
                    Ok(())
                });
                push(
                    "snapshot-record",
                    r.name.clone(),
                    format!("DeleteSnapshot of {} was interrupted", r.image),
                    true,
                    removed,
                );
            }
            State::Ready if !has_image => {
                let removed = attempt(cfg.delete, || {
                    j.remove(r).map_err(why)?;
                    Ok(())
                });
                push(
                    "snapshot-record",
                    r.name.clone(),
                    format!("record is ready but image {} does not exist", r.image),
                    true,
                    removed,
                );
            }
            State::Creating if now.saturating_sub(r.reserved_at) >= cfg.grace.as_secs() && !has_image => {
                let removed = attempt(cfg.delete, || {
                    j.remove(r).map_err(why)?;
                    Ok(())
                });
                push(
                    "snapshot-record",
                    r.name.clone(),
                    format!(
                        "reservation older than {}s whose image never appeared",
                        cfg.grace.as_secs()
                    ),
                    true,
                    removed,
                );
            }
            _ => {}
        }
    }

    // Index entries whose name entry is missing or points elsewhere.
    let vol_names: HashMap<&str, Uuid> = vols.iter().map(|r| (r.name.as_str(), r.uuid)).collect();
    for (uuid, name) in j.id_index::<VolumeRecord>()? {
        if vol_names.get(name.as_str()).map(|u| u.to_string()) != Some(uuid.clone()) {
            let key = format!("vol.id.{uuid}");
            let removed = attempt(cfg.delete, || {
                j.remove_keys(&[&key]).map_err(why)?;
                Ok(())
            });
            push(
                "journal-index",
                key,
                format!("points at {name:?}, which has no matching record"),
                true,
                removed,
            );
        }
    }
    let snap_names: HashMap<&str, Uuid> = snaps.iter().map(|r| (r.name.as_str(), r.uuid)).collect();
    for (uuid, name) in j.id_index::<SnapRecord>()? {
        if snap_names.get(name.as_str()).map(|u| u.to_string()) != Some(uuid.clone()) {
            let key = format!("snap.id.{uuid}");
            let removed = attempt(cfg.delete, || {
                j.remove_keys(&[&key]).map_err(why)?;
                Ok(())
            });
            push(
                "journal-index",
                key,
                format!("points at {name:?}, which has no matching record"),
                true,
                removed,
            );
        }
    }

    // Publish records and node claims of volumes that no longer exist.
    for prefix in ["pub.", "claim."] {
        for (key, _) in j.entries(prefix)? {
            let uuid = key[prefix.len()..]
                .split('.')
                .next()
                .and_then(|u| Uuid::parse_str(u).ok());
            if uuid.is_some_and(|u| !vol_by_uuid.contains_key(&u)) {
                let removed = attempt(cfg.delete, || {
                    j.remove_keys(&[&key]).map_err(why)?;
                    Ok(())
                });
                push(
                    "journal-publish",
                    key,
                    "publish record or node claim of a volume that no longer exists".into(),
                    true,
                    removed,
                );
            }
        }
    }

    // RBD groups exist only while a group snapshot is taken or deleted.
    let gsnaps = j.all::<GroupSnapRecord>()?;
    for name in io.group_list().map_err(|e| errors::ceph("listing RBD groups", e))? {
        let Some(uuid) = cfg.naming.parse_group(&name) else {
            continue;
        };
        let busy = gsnaps.iter().any(|g| {
            g.uuid == uuid && g.state == State::Creating && now.saturating_sub(g.reserved_at) < cfg.grace.as_secs()
        });
        if !busy {
            let removed = attempt(cfg.delete, || {
                io.group_remove(&name).map_err(why)?;
                Ok(())
            });
            push(
                "group",
                name,
                "RBD group left by an interrupted or abandoned group snapshot".into(),
                true,
                removed,
            );
        }
    }
    for g in gsnaps.iter().filter(|g| g.state == State::Deleting) {
        push(
            "group-snapshot-record",
            g.name.clone(),
            "DeleteVolumeGroupSnapshot was interrupted; the CO retries it".into(),
            false,
            Ok(false),
        );
    }

    // Temporary RBD snapshots on our volume images.
    for img in images
        .iter()
        .filter(|i| cfg.naming.parse_image(&i.name).is_some_and(|(s, _)| !s))
    {
        let Ok(Some(h)) = io.open_if_exists(&img.name) else {
            continue;
        };
        let Ok(list) = h.snaps() else { continue };
        for s in list.iter().filter(|s| !s.trashed) {
            let in_progress = if let Some(u) = cfg.naming.parse_temp_snap(&s.name) {
                vol_by_uuid.get(&u) == Some(&State::Creating)
            } else if let Some((true, u)) = cfg.naming.parse_image(&s.name) {
                snap_by_uuid.get(&u) == Some(&State::Creating)
            } else {
                continue;
            };
            if !in_progress {
                let removed = attempt(cfg.delete, || {
                    h.snap_remove(&s.name).map_err(why)?;
                    Ok(())
                });
                push(
                    "temporary-snapshot",
                    format!("{}@{}", img.name, s.name),
                    "left by an interrupted clone or snapshot".into(),
                    true,
                    removed,
                );
            }
        }
    }

    if cfg.delete {
        let n = purge_trash(io, &cfg.naming);
        if n > 0 {
            push(
                "trash",
                format!("{n} image(s)"),
                "purged from the RBD trash (no clones left)".into(),
                true,
                Ok(true),
            );
        }
    }
    Ok(out)
}
