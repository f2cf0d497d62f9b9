//! Volume and snapshot ids as the CO sees them.
//!
//! `strake:vol:<pool>:<uuid>` and `strake:snap:<pool>:<uuid>`: the pool says where the
//! journal and image live, the uuid is the journal key. The CO stores ids opaquely;
//! everything else (image name, CSI name) is found through the journal, so an id stays
//! valid whatever naming changes later.
use std::fmt;

use uuid::Uuid;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct VolumeId {
    pub pool: String,
    pub uuid: Uuid,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SnapshotId {
    pub pool: String,
    pub uuid: Uuid,
}

fn parse(s: &str, kind: &str) -> Option<(String, Uuid)> {
    let rest = s.strip_prefix("strake:")?.strip_prefix(kind)?.strip_prefix(':')?;
    // The uuid is last and has no ':'.
    let (pool, uuid) = rest.rsplit_once(':')?;
    // An id names a pool we would have created volumes in; anything else is not ours
    // (and must never reach librados or a command line).
    crate::validate::pool(pool).ok()?;
    Some((pool.to_string(), Uuid::parse_str(uuid).ok()?))
}

/// `strake:gsnap:<pool>:<uuid>`: a volume group snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct GroupSnapshotId {
    pub pool: String,
    pub uuid: Uuid,
}

impl GroupSnapshotId {
    pub fn parse(s: &str) -> Option<Self> {
        parse(s, "gsnap").map(|(pool, uuid)| GroupSnapshotId { pool, uuid })
    }
}

impl fmt::Display for GroupSnapshotId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "strake:gsnap:{}:{}", self.pool, self.uuid)
    }
}

impl VolumeId {
    pub fn parse(s: &str) -> Option<Self> {
        parse(s, "vol").map(|(pool, uuid)| VolumeId { pool, uuid })
    }
}

impl SnapshotId {
    pub fn parse(s: &str) -> Option<Self> {
        parse(s, "snap").map(|(pool, uuid)| SnapshotId { pool, uuid })
    }
}

impl fmt::Display for VolumeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "strake:vol:{}:{}", self.pool, self.uuid)
    }
}

impl fmt::Display for SnapshotId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "strake:snap:{}:{}", self.pool, self.uuid)
    }
}

/// Image names derived from uuids. The prefix (`--image-prefix`) separates drivers
/// sharing a pool, and is what `sweep` uses to recognise images that are ours.
#[derive(Debug, Clone)]
pub struct Naming {
    pub prefix: String,
}

impl Naming {
    pub fn volume_image(&self, uuid: &Uuid) -> String {
        format!("{}vol-{uuid}", self.prefix)
    }
    pub fn snapshot_image(&self, uuid: &Uuid) -> String {
        format!("{}snap-{uuid}", self.prefix)
    }
    /// The RBD group a volume group snapshot gathers its sources in while it runs.
    pub fn group(&self, uuid: &Uuid) -> String {
        format!("{}group-{uuid}", self.prefix)
    }
    pub fn parse_group(&self, name: &str) -> Option<Uuid> {
        Uuid::parse_str(name.strip_prefix(&self.prefix)?.strip_prefix("group-")?).ok()
    }
    /// The temporary snapshot a volume clone takes on its source.
    pub fn clone_temp_snap(&self, uuid: &Uuid) -> String {
        format!("{}tmp-{uuid}", self.prefix)
    }
    /// Parses an image name we generated: (is_snapshot_image, uuid).
    pub fn parse_image(&self, name: &str) -> Option<(bool, Uuid)> {
        let rest = name.strip_prefix(&self.prefix)?;
        if let Some(u) = rest.strip_prefix("vol-") {
            return Uuid::parse_str(u).ok().map(|u| (false, u));
        }
        if let Some(u) = rest.strip_prefix("snap-") {
            return Uuid::parse_str(u).ok().map(|u| (true, u));
        }
        None
    }
    pub fn parse_temp_snap(&self, name: &str) -> Option<Uuid> {
        Uuid::parse_str(name.strip_prefix(&self.prefix)?.strip_prefix("tmp-")?).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_reject_each_other() {
        let v = VolumeId {
            pool: "my.pool".into(),
            uuid: Uuid::new_v4(),
        };
        assert_eq!(VolumeId::parse(&v.to_string()), Some(v.clone()));
        assert_eq!(SnapshotId::parse(&v.to_string()), None);
        let s = SnapshotId {
            pool: "rbd".into(),
            uuid: Uuid::new_v4(),
        };
        assert_eq!(SnapshotId::parse(&s.to_string()), Some(s.clone()));
        assert_eq!(VolumeId::parse(&s.to_string()), None);
        for bad in [
            "",
            "strake:vol::x",
            "strake:vol:rbd:not-a-uuid",
            "csi-vol-123",
            "strake:vol:rbd",
            "strake:vol:-p:0f2c3d1e-0000-4000-8000-000000000000",
            "strake:vol:a b:0f2c3d1e-0000-4000-8000-000000000000",
        ] {
            assert_eq!(VolumeId::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn naming_parses_only_its_own_prefix() {
        let n = Naming {
            prefix: "csi-strake-".into(),
        };
        let u = Uuid::new_v4();
        assert_eq!(n.parse_image(&n.volume_image(&u)), Some((false, u)));
        assert_eq!(n.parse_image(&n.snapshot_image(&u)), Some((true, u)));
        assert_eq!(n.parse_temp_snap(&n.clone_temp_snap(&u)), Some(u));
        assert_eq!(
            n.parse_image(&format!("csi-vol-{u}")),
            None,
            "ceph-csi's images are not ours"
        );
    }
}
