//! `strake-csi call`: one CSI RPC from the command line, as an operator or a
//! script drives a driver without Kubernetes (what `csc` does for other
//! drivers): create, snapshot, clone, expand, stage, publish and undo them.
//! Prints the id a call creates on stdout; a failed call prints its gRPC code
//! and message and exits non-zero.

use crate::csi::controller_client::ControllerClient;
use crate::csi::node_client::NodeClient;
use crate::csi::volume_capability::access_mode::Mode;
use crate::csi::volume_capability::{AccessMode, AccessType, BlockVolume, MountVolume};
use crate::csi::*;
use anyhow::{anyhow, Context, Result};
use clap::{Args, Subcommand};
use std::collections::HashMap;
use std::path::PathBuf;

#[derive(Args, Clone)]
pub struct CallArgs {
    /// The driver's endpoint.
    #[arg(long, env = "CSI_ENDPOINT", default_value = "unix:///csi/csi.sock")]
    pub endpoint: String,
    /// A secret passed with calls that take secrets, KEY=VALUE (repeat);
    /// `userKey=@FILE` reads the value from FILE.
    #[arg(long = "secret")]
    pub secrets: Vec<String>,
    #[command(subcommand)]
    pub rpc: Rpc,
}

#[derive(Subcommand, Clone)]
pub enum Rpc {
    /// CreateVolume; prints the volume id.
    CreateVolume {
        #[arg(long)]
        name: String,
        /// Bytes, or with a K/M/G/Ki/Mi/Gi suffix.
        #[arg(long, default_value = "1Gi")]
        size: String,
        /// A StorageClass parameter, KEY=VALUE (repeat): pool, imageFeatures, ...
        #[arg(long = "param")]
        params: Vec<String>,
        /// Filesystem (ext4, xfs), or `block` for a raw block volume.
        #[arg(long, default_value = "ext4")]
        fs: String,
        /// Restore this snapshot.
        #[arg(long, conflicts_with = "from_volume")]
        from_snapshot: Option<String>,
        /// Clone this volume.
        #[arg(long)]
        from_volume: Option<String>,
    },
    /// DeleteVolume.
    DeleteVolume { id: String },
    /// CreateSnapshot; prints the snapshot id.
    CreateSnapshot {
        #[arg(long)]
        name: String,
        #[arg(long)]
        source: String,
    },
    /// DeleteSnapshot.
    DeleteSnapshot { id: String },
    /// CreateVolumeGroupSnapshot: one point in time across the volumes; prints the
    /// group snapshot id, then each member snapshot's id.
    GroupSnapshot {
        #[arg(long)]
        name: String,
        /// Volume ids.
        #[arg(required = true)]
        volumes: Vec<String>,
    },
    /// DeleteVolumeGroupSnapshot (its members go with it).
    DeleteGroupSnapshot { id: String },
    /// ControllerModifyVolume: VolumeAttributesClass parameters on a live volume,
    /// e.g. --param rbd_qos_iops_limit=500 (0 lifts a limit).
    ModifyVolume {
        id: String,
        #[arg(long = "param", required = true)]
        params: Vec<String>,
    },
    /// ControllerExpandVolume (then `node-expand` where it is mounted).
    ExpandVolume {
        id: String,
        #[arg(long)]
        size: String,
        #[arg(long, default_value = "ext4")]
        fs: String,
    },
    /// ControllerPublishVolume: make NODE the volume's holder (what Kubernetes'
    /// attach/detach controller does before the node may stage it); prints the
    /// publish context.
    ControllerPublish {
        id: String,
        #[arg(long)]
        node: String,
        #[arg(long, default_value = "ext4")]
        fs: String,
        /// CSI access mode, e.g. SINGLE_NODE_WRITER, MULTI_NODE_READER_ONLY.
        #[arg(long, default_value = "SINGLE_NODE_WRITER")]
        access_mode: String,
        #[arg(long)]
        readonly: bool,
    },
    /// ControllerUnpublishVolume: NODE lets go of the volume; a client it still has
    /// open is fenced (blocklisted).
    ControllerUnpublish {
        id: String,
        #[arg(long)]
        node: String,
    },
    /// NodeStageVolume: attach, make the filesystem on first use, mount.
    Stage {
        id: String,
        #[arg(long)]
        staging: PathBuf,
        #[arg(long, default_value = "ext4")]
        fs: String,
    },
    /// NodePublishVolume: bind-mount the staged volume at the target.
    Publish {
        id: String,
        #[arg(long)]
        staging: PathBuf,
        #[arg(long)]
        target: PathBuf,
        #[arg(long, default_value = "ext4")]
        fs: String,
        #[arg(long)]
        readonly: bool,
    },
    /// NodeExpandVolume: grow the filesystem of a published volume.
    NodeExpand {
        id: String,
        #[arg(long)]
        path: PathBuf,
        #[arg(long)]
        size: String,
    },
    /// NodeGetVolumeStats: bytes used and total.
    Stats {
        id: String,
        #[arg(long)]
        path: PathBuf,
    },
    /// NodeUnpublishVolume.
    Unpublish {
        id: String,
        #[arg(long)]
        target: PathBuf,
    },
    /// NodeUnstageVolume: unmount and detach.
    Unstage {
        id: String,
        #[arg(long)]
        staging: PathBuf,
    },
}

fn kv(items: &[String], what: &str) -> Result<HashMap<String, String>> {
    items
        .iter()
        .map(|s| {
            let (k, v) = s
                .split_once('=')
                .ok_or_else(|| anyhow!("{what} {s:?}: use KEY=VALUE"))?;
            let v = match v.strip_prefix('@') {
                Some(file) => std::fs::read_to_string(file)
                    .with_context(|| format!("reading {what} {k} from {file}"))?
                    .trim()
                    .to_string(),
                None => v.to_string(),
            };
            Ok((k.to_string(), v))
        })
        .collect()
}

fn size(s: &str) -> Result<i64> {
    let n = crate::params::parse_size(s).map_err(|e| anyhow!(e))?;
    i64::try_from(n).map_err(|_| anyhow!("size {s:?} is more than CSI's int64 of bytes"))
}

fn mode(name: &str) -> Result<Mode> {
    Mode::from_str_name(name).ok_or_else(|| anyhow!("unknown access mode {name:?}; e.g. SINGLE_NODE_WRITER"))
}

fn capability(fs: &str) -> VolumeCapability {
    VolumeCapability {
        access_type: Some(if fs == "block" {
            AccessType::Block(BlockVolume {})
        } else {
            AccessType::Mount(MountVolume {
                fs_type: fs.into(),
                ..Default::default()
            })
        }),
        access_mode: Some(AccessMode {
            mode: Mode::SingleNodeWriter as i32,
        }),
    }
}

fn status(what: &str, e: tonic::Status) -> anyhow::Error {
    anyhow!("{what}: {:?}: {}", e.code(), e.message())
}

pub async fn run(args: CallArgs) -> Result<()> {
    let path = args.endpoint.strip_prefix("unix://").unwrap_or(&args.endpoint);
    let ch = crate::client::connect(std::path::Path::new(path))
        .await
        .with_context(|| format!("connecting to the driver at {path}; is strake-csi running?"))?;
    let secrets = kv(&args.secrets, "secret")?;
    let c_channel = ch.clone();
    let mut c = ControllerClient::new(ch.clone());
    let mut n = NodeClient::new(ch);
    let p = |x: &PathBuf| x.to_string_lossy().to_string();
    match args.rpc {
        Rpc::CreateVolume {
            name,
            size: sz,
            params,
            fs,
            from_snapshot,
            from_volume,
        } => {
            let source = match (from_snapshot, from_volume) {
                (Some(s), _) => Some(volume_content_source::Type::Snapshot(
                    volume_content_source::SnapshotSource { snapshot_id: s },
                )),
                (_, Some(v)) => Some(volume_content_source::Type::Volume(
                    volume_content_source::VolumeSource { volume_id: v },
                )),
                _ => None,
            };
            let v = c
                .create_volume(CreateVolumeRequest {
                    name,
                    capacity_range: Some(CapacityRange {
                        required_bytes: size(&sz)?,
                        limit_bytes: 0,
                    }),
                    volume_capabilities: vec![capability(&fs)],
                    parameters: kv(&params, "parameter")?,
                    secrets,
                    volume_content_source: source.map(|t| VolumeContentSource { r#type: Some(t) }),
                    ..Default::default()
                })
                .await
                .map_err(|e| status("CreateVolume", e))?
                .into_inner()
                .volume
                .context("CreateVolume returned no volume")?;
            println!("{}", v.volume_id);
        }
        Rpc::DeleteVolume { id } => {
            c.delete_volume(DeleteVolumeRequest { volume_id: id, secrets })
                .await
                .map_err(|e| status("DeleteVolume", e))?;
        }
        Rpc::CreateSnapshot { name, source } => {
            let s = c
                .create_snapshot(CreateSnapshotRequest {
                    source_volume_id: source,
                    name,
                    secrets,
                    ..Default::default()
                })
                .await
                .map_err(|e| status("CreateSnapshot", e))?
                .into_inner()
                .snapshot
                .context("CreateSnapshot returned no snapshot")?;
            println!("{}", s.snapshot_id);
        }
        Rpc::DeleteSnapshot { id } => {
            c.delete_snapshot(DeleteSnapshotRequest {
                snapshot_id: id,
                secrets,
            })
            .await
            .map_err(|e| status("DeleteSnapshot", e))?;
        }
        Rpc::ExpandVolume { id, size: sz, fs } => {
            let r = c
                .controller_expand_volume(ControllerExpandVolumeRequest {
                    volume_id: id,
                    capacity_range: Some(CapacityRange {
                        required_bytes: size(&sz)?,
                        limit_bytes: 0,
                    }),
                    secrets,
                    volume_capability: Some(capability(&fs)),
                })
                .await
                .map_err(|e| status("ControllerExpandVolume", e))?
                .into_inner();
            println!(
                "{} bytes{}",
                r.capacity_bytes,
                if r.node_expansion_required {
                    "; node expansion required"
                } else {
                    ""
                }
            );
        }
        Rpc::GroupSnapshot { name, volumes } => {
            let g = crate::csi::group_controller_client::GroupControllerClient::new(c_channel.clone())
                .create_volume_group_snapshot(CreateVolumeGroupSnapshotRequest {
                    name,
                    source_volume_ids: volumes,
                    secrets,
                    ..Default::default()
                })
                .await
                .map_err(|e| status("CreateVolumeGroupSnapshot", e))?
                .into_inner()
                .group_snapshot
                .unwrap_or_default();
            println!("{}", g.group_snapshot_id);
            for s in g.snapshots {
                println!("{}", s.snapshot_id);
            }
        }
        Rpc::DeleteGroupSnapshot { id } => {
            crate::csi::group_controller_client::GroupControllerClient::new(c_channel.clone())
                .delete_volume_group_snapshot(DeleteVolumeGroupSnapshotRequest {
                    group_snapshot_id: id,
                    secrets,
                    ..Default::default()
                })
                .await
                .map_err(|e| status("DeleteVolumeGroupSnapshot", e))?;
        }
        Rpc::ModifyVolume { id, params } => {
            c.controller_modify_volume(ControllerModifyVolumeRequest {
                volume_id: id,
                secrets,
                mutable_parameters: kv(&params, "param")?,
            })
            .await
            .map_err(|e| status("ControllerModifyVolume", e))?;
        }
        Rpc::ControllerPublish {
            id,
            node,
            fs,
            access_mode,
            readonly,
        } => {
            let mut cap = capability(&fs);
            cap.access_mode = Some(AccessMode {
                mode: mode(&access_mode)? as i32,
            });
            let r = c
                .controller_publish_volume(ControllerPublishVolumeRequest {
                    volume_id: id,
                    node_id: node,
                    volume_capability: Some(cap),
                    readonly,
                    secrets,
                    ..Default::default()
                })
                .await
                .map_err(|e| status("ControllerPublishVolume", e))?
                .into_inner();
            let mut ctx: Vec<_> = r.publish_context.into_iter().collect();
            ctx.sort();
            for (k, v) in ctx {
                println!("{k}={v}");
            }
        }
        Rpc::ControllerUnpublish { id, node } => {
            c.controller_unpublish_volume(ControllerUnpublishVolumeRequest {
                volume_id: id,
                node_id: node,
                secrets,
            })
            .await
            .map_err(|e| status("ControllerUnpublishVolume", e))?;
        }
        Rpc::Stage { id, staging, fs } => {
            n.node_stage_volume(NodeStageVolumeRequest {
                volume_id: id,
                staging_target_path: p(&staging),
                volume_capability: Some(capability(&fs)),
                secrets,
                ..Default::default()
            })
            .await
            .map_err(|e| status("NodeStageVolume", e))?;
        }
        Rpc::Publish {
            id,
            staging,
            target,
            fs,
            readonly,
        } => {
            n.node_publish_volume(NodePublishVolumeRequest {
                volume_id: id,
                staging_target_path: p(&staging),
                target_path: p(&target),
                volume_capability: Some(capability(&fs)),
                readonly,
                secrets,
                ..Default::default()
            })
            .await
            .map_err(|e| status("NodePublishVolume", e))?;
        }
        Rpc::NodeExpand { id, path, size: sz } => {
            let r = n
                .node_expand_volume(NodeExpandVolumeRequest {
                    volume_id: id,
                    volume_path: p(&path),
                    capacity_range: Some(CapacityRange {
                        required_bytes: size(&sz)?,
                        limit_bytes: 0,
                    }),
                    ..Default::default()
                })
                .await
                .map_err(|e| status("NodeExpandVolume", e))?
                .into_inner();
            println!("{} bytes", r.capacity_bytes);
        }
        Rpc::Stats { id, path } => {
            let r = n
                .node_get_volume_stats(NodeGetVolumeStatsRequest {
                    volume_id: id,
                    volume_path: p(&path),
                    ..Default::default()
                })
                .await
                .map_err(|e| status("NodeGetVolumeStats", e))?
                .into_inner();
            for u in r.usage {
                let unit = if u.unit == volume_usage::Unit::Inodes as i32 {
                    "inodes"
                } else {
                    "bytes"
                };
                println!("{unit}: {} used of {} ({} available)", u.used, u.total, u.available);
            }
        }
        Rpc::Unpublish { id, target } => {
            n.node_unpublish_volume(NodeUnpublishVolumeRequest {
                volume_id: id,
                target_path: p(&target),
            })
            .await
            .map_err(|e| status("NodeUnpublishVolume", e))?;
        }
        Rpc::Unstage { id, staging } => {
            n.node_unstage_volume(NodeUnstageVolumeRequest {
                volume_id: id,
                staging_target_path: p(&staging),
            })
            .await
            .map_err(|e| status("NodeUnstageVolume", e))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_pairs_parse_or_say_what_is_wrong() {
        assert_eq!(size("1Gi").unwrap(), 1 << 30);
        assert_eq!(size("100M").unwrap(), 100_000_000);
        assert!(size("lots").unwrap_err().to_string().contains("10Gi"));
        assert!(kv(&["pool".into()], "parameter")
            .unwrap_err()
            .to_string()
            .contains("KEY=VALUE"));
        let m = kv(&["pool=rbd".into()], "parameter").unwrap();
        assert_eq!(m["pool"], "rbd");
        let e = kv(&["k=@/nonexistent".into()], "secret").unwrap_err();
        assert!(format!("{e:#}").contains("/nonexistent"));
    }
}
