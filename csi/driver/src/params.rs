//! StorageClass / VolumeSnapshotClass parameters and CSI argument validation.
//!
//! Parameters (StorageClass `parameters:`):
//! * `pool` (required): RBD pool for the image and its journal.
//! * `imageFeatures` (optional, default `layering,exclusive-lock,object-map,fast-diff,deep-flatten`):
//!   comma-separated RBD features. krbd supports layering, exclusive-lock, object-map,
//!   fast-diff, deep-flatten on kernels >= 5.3; journaling needs rbd-nbd.
//! * `dataPool` (optional): data pool for erasure-coded setups.
//! * `mounter` (optional): `krbd`, `rbd-nbd` or `fuse-loop`; default: the node's
//!   best available (`--attacher auto`).
//! * `csi.storage.k8s.io/*` keys are the CO's (fstype, secret references) and ignored
//!   here; the filesystem type arrives in the volume capability.
use std::collections::HashMap;

use crate::errors::Error;
use strake_ceph::features;

use crate::attach::AttacherKind;
use crate::csi::volume_capability::access_mode::Mode;
use crate::csi::volume_capability::AccessType;
use crate::csi::{CapacityRange, VolumeCapability};

pub const DEFAULT_FEATURES: &str = "layering,exclusive-lock,object-map,fast-diff,deep-flatten";
pub const MIB: u64 = 1 << 20;
pub const GIB: u64 = 1 << 30;
pub const SUPPORTED_FS: &[&str] = &["ext4", "xfs"];

/// A size as flags and `strake-csi call` take it: bytes, or with a decimal
/// (K, M, G, T) or binary (Ki, Mi, Gi, Ti) suffix. The one parser of both.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = [
        ("Ki", 1u64 << 10),
        ("Mi", 1 << 20),
        ("Gi", 1 << 30),
        ("Ti", 1 << 40),
        ("K", 1000),
        ("M", 1_000_000),
        ("G", 1_000_000_000),
        ("T", 1_000_000_000_000),
    ]
    .iter()
    .find_map(|(suf, m)| s.strip_suffix(suf).map(|n| (n, *m)))
    .unwrap_or((s, 1));
    let n = num
        .trim()
        .parse::<u64>()
        .map_err(|e| format!("bad size {s:?}: {e}; a number of bytes, or e.g. 10Gi"))?;
    n.checked_mul(mult)
        .ok_or_else(|| format!("size {s:?} does not fit in 64 bits"))
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeParams {
    pub pool: String,
    pub features: u64,
    pub data_pool: Option<String>,
    pub mounter: Option<AttacherKind>,
    /// `topologyConstrainedPools`: where images go, per failure domain.
    pub topology_pools: Vec<crate::topology::TopologyPool>,
    /// `encrypted: "true"`: LUKS2 at rest, the passphrase kept by the KMS (`kms`).
    pub encrypted: bool,
}

const KNOWN: &[&str] = &[
    "pool",
    "imageFeatures",
    "dataPool",
    "mounter",
    "topologyConstrainedPools",
    "encrypted",
    "encryptionKMS",
];

pub fn parse_volume_params(p: &HashMap<String, String>) -> Result<VolumeParams, Error> {
    for k in p.keys() {
        if !KNOWN.contains(&k.as_str()) && !k.starts_with("csi.storage.k8s.io/") {
            return Err(Error::invalid_argument(format!(
                "unknown StorageClass parameter {k:?}; strake-csi accepts {} (see deploy/csi/storageclass.yaml)",
                KNOWN.join(", ")
            )));
        }
    }
    if let Some(k) = p
        .get("encryptionKMS")
        .map(|s| s.trim())
        .filter(|s| !s.is_empty() && *s != "secret")
    {
        return Err(Error::invalid_argument(format!(
            "StorageClass parameter encryptionKMS: {k:?} is not implemented; strake-csi keeps passphrases with \"secret\" \
             (the key-encryption key in the StorageClass's Secret, see csi/README.md)"
        )));
    }
    let pool = p
        .get("pool")
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
        .ok_or_else(|| {
            Error::invalid_argument(
                "StorageClass parameter \"pool\" is required: set it to the RBD pool for the volumes",
            )
        })?;
    crate::validate::pool(pool).map_err(|e| Error::invalid_argument(format!("StorageClass parameter pool: {e}")))?;
    let data_pool = p.get("dataPool").map(|s| s.trim()).filter(|s| !s.is_empty());
    if let Some(dp) = data_pool {
        crate::validate::pool(dp)
            .map_err(|e| Error::invalid_argument(format!("StorageClass parameter dataPool: {e}")))?;
    }
    let feats = p.get("imageFeatures").map(String::as_str).unwrap_or(DEFAULT_FEATURES);
    let features = features::parse(feats)
        .map_err(|e| Error::invalid_argument(format!("StorageClass parameter imageFeatures: {e}")))?;
    if features & features::LAYERING == 0 {
        return Err(Error::invalid_argument(
            "StorageClass parameter imageFeatures must include layering: snapshots and clones need it",
        ));
    }
    let mounter = match p.get("mounter").map(|s| s.trim()).filter(|s| !s.is_empty()) {
        None => None,
        Some(m) => Some(
            m.parse::<AttacherKind>()
                .map_err(|e| Error::invalid_argument(format!("StorageClass parameter mounter: {e}")))?,
        ),
    };
    Ok(VolumeParams {
        pool: pool.to_string(),
        features,
        data_pool: data_pool.map(str::to_string),
        mounter,
        encrypted: match p.get("encrypted").map(|s| s.trim()) {
            None | Some("") | Some("false") => false,
            Some("true") => true,
            Some(other) => {
                return Err(Error::invalid_argument(format!(
                    "StorageClass parameter encrypted: {other:?}; use \"true\" or \"false\""
                )))
            }
        },
        topology_pools: match p
            .get("topologyConstrainedPools")
            .map(|s| s.trim())
            .filter(|s| !s.is_empty())
        {
            None => vec![],
            Some(j) => crate::topology::parse_pools(j)
                .map_err(|e| Error::invalid_argument(format!("StorageClass parameter {e}")))?,
        },
    })
}

/// The name rules of the CSI spec: non-empty, no control characters other than
/// common whitespace.
pub fn validate_name(what: &str, name: &str) -> Result<(), Error> {
    if name.is_empty() {
        return Err(Error::invalid_argument(format!("{what} is required")));
    }
    if name.len() > 1024 {
        return Err(Error::invalid_argument(format!("{what} is longer than 1024 bytes")));
    }
    if let Some(c) = name.chars().find(|c| {
        let u = *c as u32;
        u <= 0x08 || u == 0x0B || u == 0x0C || (0x0E..=0x1F).contains(&u) || (0x7F..=0x9F).contains(&u)
    }) {
        return Err(Error::invalid_argument(format!(
            "{what} contains the control character U+{:04X}",
            c as u32
        )));
    }
    Ok(())
}

/// Picks the image size for a capacity range: the required size rounded up to MiB
/// (RBD objects are 4 MiB, but MiB keeps small test volumes exact), or `default`.
pub fn size_for_range(range: Option<&CapacityRange>, default: u64, max: u64) -> Result<u64, Error> {
    let Some(r) = range else { return Ok(default) };
    if r.required_bytes < 0 || r.limit_bytes < 0 {
        return Err(Error::invalid_argument("capacity_range bytes must not be negative"));
    }
    if r.required_bytes == 0 && r.limit_bytes == 0 {
        return Err(Error::invalid_argument(
            "capacity_range sets neither required_bytes nor limit_bytes; set at least one (or omit capacity_range)",
        ));
    }
    let (req, lim) = (r.required_bytes as u64, r.limit_bytes as u64);
    if lim != 0 && req > lim {
        return Err(Error::invalid_argument(format!(
            "capacity_range required_bytes {req} is larger than limit_bytes {lim}"
        )));
    }
    let want = if req == 0 { default.min(lim) } else { req };
    let size = want.div_ceil(MIB).max(1) * MIB;
    if lim != 0 && size > lim {
        return Err(Error::out_of_range(format!(
            "no size in [{req}, {lim}] is a whole number of MiB; widen the range"
        )));
    }
    if size > max {
        return Err(Error::out_of_range(format!(
            "requested {size} bytes exceeds this driver's maximum volume size {max} bytes (--max-volume-size)"
        )));
    }
    Ok(size)
}

/// Whether an existing volume of `size` bytes satisfies `range` (idempotent retries).
pub fn size_satisfies(size: u64, range: Option<&CapacityRange>) -> bool {
    match range {
        None => true,
        Some(r) => size >= r.required_bytes.max(0) as u64 && (r.limit_bytes == 0 || size <= r.limit_bytes as u64),
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessKind {
    Block,
    Mount { fs_type: String, flags: Vec<String> },
}

/// Validates one capability: access type present, fs type supported, access mode
/// supported for that type. Returns what it asks for.
pub fn check_capability(c: &VolumeCapability, default_fs: &str) -> Result<(AccessKind, Mode), String> {
    let mode = c
        .access_mode
        .as_ref()
        .map(|m| Mode::try_from(m.mode).unwrap_or(Mode::Unknown))
        .ok_or("volume capability has no access_mode")?;
    let kind = match &c.access_type {
        None => return Err("volume capability sets neither block nor mount".into()),
        Some(AccessType::Block(_)) => AccessKind::Block,
        Some(AccessType::Mount(m)) => {
            let fs = if m.fs_type.is_empty() {
                default_fs.to_string()
            } else {
                m.fs_type.to_lowercase()
            };
            if !SUPPORTED_FS.contains(&fs.as_str()) {
                return Err(format!(
                    "filesystem type {:?} is not supported; use one of {} (csi.storage.k8s.io/fstype)",
                    m.fs_type,
                    SUPPORTED_FS.join(", ")
                ));
            }
            for f in &m.mount_flags {
                crate::validate::mount_flag(f)?;
            }
            AccessKind::Mount {
                fs_type: fs,
                flags: m.mount_flags.clone(),
            }
        }
    };
    let ok = match mode {
        Mode::SingleNodeWriter
        | Mode::SingleNodeReaderOnly
        | Mode::SingleNodeSingleWriter
        | Mode::SingleNodeMultiWriter
        | Mode::MultiNodeReaderOnly => true,
        // Shared writable raw block (e.g. VM live migration) is the caller's to
        // coordinate; a shared writable filesystem would corrupt ext4/xfs.
        Mode::MultiNodeMultiWriter => kind == AccessKind::Block,
        Mode::MultiNodeSingleWriter | Mode::Unknown => false,
    };
    if !ok {
        return Err(format!(
            "access mode {} is not supported for {} volumes; RBD supports single-node modes, MULTI_NODE_READER_ONLY, and MULTI_NODE_MULTI_WRITER for raw block only",
            mode.as_str_name(),
            if kind == AccessKind::Block { "block" } else { "filesystem" }
        ));
    }
    Ok((kind, mode))
}

/// mkfs.xfs refuses devices under 300 MB; refuse such volumes at CreateVolume rather
/// than fail every NodeStageVolume later.
pub const XFS_MIN_BYTES: u64 = 300 * 1_000_000;

pub fn check_min_size(caps: &[VolumeCapability], size: u64, default_fs: &str) -> Result<(), Error> {
    for c in caps {
        if let Ok((AccessKind::Mount { fs_type, .. }, _)) = check_capability(c, default_fs) {
            if fs_type == "xfs" && size < XFS_MIN_BYTES {
                return Err(Error::out_of_range(format!(
                    "an xfs volume must be at least 300 MB (mkfs.xfs refuses smaller devices); asked for {size} bytes"
                )));
            }
        }
    }
    Ok(())
}

pub fn check_capabilities(caps: &[VolumeCapability], default_fs: &str) -> Result<(), Error> {
    if caps.is_empty() {
        return Err(Error::invalid_argument(
            "volume_capabilities is required: give at least one capability",
        ));
    }
    for c in caps {
        check_capability(c, default_fs).map_err(Error::invalid_argument)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::csi::volume_capability::{AccessMode, BlockVolume, MountVolume};

    fn cap(block: bool, fs: &str, mode: Mode) -> VolumeCapability {
        VolumeCapability {
            access_type: Some(if block {
                AccessType::Block(BlockVolume {})
            } else {
                AccessType::Mount(MountVolume {
                    fs_type: fs.into(),
                    ..Default::default()
                })
            }),
            access_mode: Some(AccessMode { mode: mode as i32 }),
        }
    }

    #[test]
    fn params_are_validated_with_messages_that_name_the_fix() {
        let mut p = HashMap::new();
        assert!(parse_volume_params(&p)
            .unwrap_err()
            .message()
            .contains("\"pool\" is required"));
        p.insert("pool".into(), "rbd".into());
        let v = parse_volume_params(&p).unwrap();
        assert_eq!(v.features, features::parse(DEFAULT_FEATURES).unwrap());
        p.insert("imageFeatures".into(), "layering,fast-diff".into());
        assert!(parse_volume_params(&p)
            .unwrap_err()
            .message()
            .contains("fast-diff requires object-map"));
        p.insert("imageFeatures".into(), "exclusive-lock".into());
        assert!(parse_volume_params(&p)
            .unwrap_err()
            .message()
            .contains("must include layering"));
        p.insert("imageFeatures".into(), "layering".into());
        p.insert("mounter".into(), "nfs".into());
        assert!(parse_volume_params(&p).unwrap_err().message().contains("mounter"));
        p.insert("mounter".into(), "fuse-loop".into());
        p.insert("csi.storage.k8s.io/fstype".into(), "xfs".into());
        assert_eq!(parse_volume_params(&p).unwrap().mounter, Some(AttacherKind::FuseLoop));
        p.insert("dataPool".into(), "-x".into());
        assert!(parse_volume_params(&p).unwrap_err().message().contains("dataPool"));
        p.remove("dataPool");
        p.insert("pool".into(), "rbd --id admin".into());
        assert!(parse_volume_params(&p)
            .unwrap_err()
            .message()
            .contains("parameter pool"));
        p.insert("pool".into(), "rbd".into());
        p.insert("poool".into(), "typo".into());
        assert!(parse_volume_params(&p)
            .unwrap_err()
            .message()
            .contains("unknown StorageClass parameter \"poool\""));
    }

    #[test]
    fn capacity_ranges() {
        let r = |req, lim| {
            Some(CapacityRange {
                required_bytes: req,
                limit_bytes: lim,
            })
        };
        let max = 1 << 40;
        assert_eq!(size_for_range(None, GIB, max).unwrap(), GIB);
        assert_eq!(size_for_range(r(1, 0).as_ref(), GIB, max).unwrap(), MIB);
        assert_eq!(size_for_range(r(0, 512 << 20).as_ref(), GIB, max).unwrap(), 512 << 20);
        assert_eq!(
            size_for_range(r(0, 0).as_ref(), GIB, max).unwrap_err().kind(),
            crate::errors::Kind::InvalidArgument
        );
        assert_eq!(
            size_for_range(r(-1, 0).as_ref(), GIB, max).unwrap_err().kind(),
            crate::errors::Kind::InvalidArgument
        );
        assert_eq!(
            size_for_range(r(10, 5).as_ref(), GIB, max).unwrap_err().kind(),
            crate::errors::Kind::InvalidArgument
        );
        assert_eq!(
            size_for_range(r(2, 1000).as_ref(), GIB, max).unwrap_err().kind(),
            crate::errors::Kind::OutOfRange
        );
        assert_eq!(
            size_for_range(r(max as i64 + 1, 0).as_ref(), GIB, max)
                .unwrap_err()
                .kind(),
            crate::errors::Kind::OutOfRange
        );
        assert!(size_satisfies(GIB, r(GIB as i64, 0).as_ref()));
        assert!(!size_satisfies(GIB, r(2 * GIB as i64, 0).as_ref()));
    }

    #[test]
    fn capabilities() {
        assert!(check_capability(&cap(false, "", Mode::SingleNodeWriter), "ext4").is_ok());
        assert!(check_capability(&cap(false, "XFS", Mode::SingleNodeWriter), "ext4").is_ok());
        assert!(check_capability(&cap(false, "btrfs", Mode::SingleNodeWriter), "ext4")
            .unwrap_err()
            .contains("btrfs"));
        assert!(check_capability(&cap(false, "ext4", Mode::MultiNodeMultiWriter), "ext4").is_err());
        assert!(check_capability(&cap(true, "", Mode::MultiNodeMultiWriter), "ext4").is_ok());
        assert!(check_capability(&cap(true, "", Mode::Unknown), "ext4").is_err());
        assert!(check_capabilities(&[], "ext4").is_err());
    }

    #[test]
    fn names() {
        assert!(validate_name("name", "pvc-1234").is_ok());
        assert!(validate_name("name", "").is_err());
        assert!(validate_name("name", "bad\u{1}").is_err());
        assert!(validate_name("name", "tab\tok").is_ok());
    }
}
