//! VolumeAttributesClass: what may change on a live volume (ControllerModifyVolume, and
//! CreateVolume's `mutable_parameters`).
//!
//! The parameters are librbd's QoS limits, by their option names. They are stored as
//! the image's config overrides (`rbd config image set` keeps them as image metadata
//! `conf_<option>`), so `rbd config image list` shows them, and every librbd client with
//! the image open (rbd-nbd, the fuse-loop helper) applies a change at its next IO: no
//! remount, no restart. `0` removes a limit. krbd does not implement librbd's QoS: on
//! that path the limits are recorded but not enforced (ceph-csi uses the cgroup's
//! `io.max` there).
use std::collections::HashMap;

use strake_ceph::Image;

use crate::errors::{self, Error};

/// The limits a VolumeAttributesClass may set: operations or bytes per second, in
/// total or per direction, and the bursts above the total limits.
pub const QOS_KEYS: &[&str] = &[
    "rbd_qos_iops_limit",
    "rbd_qos_bps_limit",
    "rbd_qos_read_iops_limit",
    "rbd_qos_write_iops_limit",
    "rbd_qos_read_bps_limit",
    "rbd_qos_write_bps_limit",
    "rbd_qos_iops_burst",
    "rbd_qos_bps_burst",
];

/// Validated mutable parameters: (librbd option, value; 0 = no limit), sorted.
pub fn parse(params: &HashMap<String, String>) -> Result<Vec<(&'static str, u64)>, Error> {
    let mut out = Vec::new();
    for (k, v) in params {
        let Some(key) = QOS_KEYS.iter().find(|q| **q == k.as_str()) else {
            return Err(Error::invalid_argument(format!(
                "unknown mutable parameter {k:?}; a VolumeAttributesClass for strake-csi sets {}",
                QOS_KEYS.join(", ")
            )));
        };
        let n: u64 = v.trim().parse().map_err(|_| {
            Error::invalid_argument(format!(
                "mutable parameter {k}: {v:?} is not a whole number (operations or bytes per second; 0 = no limit)"
            ))
        })?;
        out.push((*key, n));
    }
    out.sort();
    Ok(out)
}

/// Writes the limits into the image's config overrides.
pub fn apply(img: &Image, qos: &[(&str, u64)]) -> Result<(), Error> {
    for (k, v) in qos {
        let key = format!("conf_{k}");
        let r = if *v == 0 {
            img.metadata_remove(&key)
        } else {
            img.metadata_set(&key, &v.to_string())
        };
        r.map_err(|e| errors::ceph(&format!("setting {k} on {}", img.name()), e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_known_limits_with_numbers_pass() {
        let p = |k: &str, v: &str| HashMap::from([(k.to_string(), v.to_string())]);
        assert_eq!(
            parse(&p("rbd_qos_iops_limit", "200")).unwrap(),
            vec![("rbd_qos_iops_limit", 200)]
        );
        assert_eq!(
            parse(&p("rbd_qos_bps_limit", "0")).unwrap(),
            vec![("rbd_qos_bps_limit", 0)]
        );
        assert!(parse(&p("rbd_cache", "false"))
            .unwrap_err()
            .message()
            .contains("unknown mutable parameter"));
        assert!(parse(&p("rbd_qos_iops_limit", "-1")).is_err());
        assert!(parse(&p("rbd_qos_iops_limit", "100k")).is_err());
    }
}
