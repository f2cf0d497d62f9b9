//! `Debug` for the CSI requests that carry secrets: every field but `secrets`, which
//! shows only its key names. The generated code skips Debug for these types (see
//! build.rs), so this is the only Debug they have.
use std::collections::HashMap;
use std::fmt;

use crate::csi::*;

struct Redacted<'a>(&'a HashMap<String, String>);

impl fmt::Debug for Redacted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut keys: Vec<&String> = self.0.keys().collect();
        keys.sort();
        f.debug_map()
            .entries(keys.into_iter().map(|k| (k, "<redacted>")))
            .finish()
    }
}

macro_rules! redact_debug {
    ($($t:ident { $($f:ident),* $(,)? })*) => {$(
        impl fmt::Debug for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_struct(stringify!($t))
                    $(.field(stringify!($f), &self.$f))*
                    .field("secrets", &Redacted(&self.secrets))
                    .finish()
            }
        }
    )*};
}

redact_debug! {
    CreateVolumeRequest { name, capacity_range, volume_capabilities, parameters, volume_content_source, accessibility_requirements, mutable_parameters }
    DeleteVolumeRequest { volume_id }
    ControllerPublishVolumeRequest { volume_id, node_id, volume_capability, readonly, volume_context }
    ControllerUnpublishVolumeRequest { volume_id, node_id }
    ValidateVolumeCapabilitiesRequest { volume_id, volume_context, volume_capabilities, parameters, mutable_parameters }
    CreateSnapshotRequest { source_volume_id, name, parameters }
    DeleteSnapshotRequest { snapshot_id }
    ListSnapshotsRequest { max_entries, starting_token, source_volume_id, snapshot_id }
    ControllerExpandVolumeRequest { volume_id, capacity_range, volume_capability }
    NodeStageVolumeRequest { volume_id, publish_context, staging_target_path, volume_capability, volume_context }
    NodePublishVolumeRequest { volume_id, publish_context, staging_target_path, target_path, volume_capability, readonly, volume_context }
    NodeExpandVolumeRequest { volume_id, volume_path, capacity_range, staging_target_path, volume_capability }
    ControllerModifyVolumeRequest { volume_id, mutable_parameters }
    CreateVolumeGroupSnapshotRequest { name, source_volume_ids, parameters }
    DeleteVolumeGroupSnapshotRequest { group_snapshot_id, snapshot_ids }
    GetVolumeGroupSnapshotRequest { group_snapshot_id, snapshot_ids }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_of_a_request_never_shows_the_key() {
        let secrets = HashMap::from([
            ("userID".to_string(), "u".to_string()),
            ("userKey".to_string(), "AQDsecretsecret==".to_string()),
        ]);
        let texts = [
            format!(
                "{:?}",
                CreateVolumeRequest {
                    name: "pvc-1".into(),
                    secrets: secrets.clone(),
                    ..Default::default()
                }
            ),
            format!(
                "{:?}",
                NodeStageVolumeRequest {
                    volume_id: "v".into(),
                    secrets: secrets.clone(),
                    ..Default::default()
                }
            ),
            format!(
                "{:#?}",
                DeleteSnapshotRequest {
                    snapshot_id: "s".into(),
                    secrets
                }
            ),
        ];
        for t in texts {
            assert!(!t.contains("AQDsecretsecret"), "{t}");
            assert!(t.contains("userKey") && t.contains("<redacted>"), "{t}");
        }
        assert!(format!(
            "{:?}",
            CreateVolumeRequest {
                name: "pvc-1".into(),
                ..Default::default()
            }
        )
        .contains("pvc-1"));
    }
}
