//! strake-csi: a CSI driver for Ceph RBD.
//!
//! * [`controller`]: volumes, snapshots, clones, expansion, listing, capacity. Every
//!   mutation is recorded in an omap [`journal`] first so a crash at any step converges
//!   when the CO retries.
//! * [`node`]: stage (attach + mkfs on first use + mount), publish (bind mount), stats,
//!   expansion. Attach paths live behind the [`attach::Attacher`] trait.
//! * [`sweep`]: finds (and with `--delete` removes) images and journal records that are
//!   provably orphaned.

pub mod attach;
pub mod call;
pub mod cephconn;
pub mod client;
pub mod controller;
pub mod crypt;
pub mod errors;
pub mod failpoint;
pub mod groupsnap;
pub mod identity;
pub mod ids;
pub mod images;
pub mod journal;
pub mod kms;
pub mod locks;
pub mod luks;
pub mod metrics;
pub mod modify;
pub mod mount;
pub mod node;
pub mod params;
pub mod publish;
mod redact;
pub mod server;
pub mod snapshots;
pub mod sweep;
pub mod topology;
pub mod validate;
pub mod volumes;

/// Generated CSI v1 types, clients and servers.
pub mod csi {
    #![allow(clippy::all, clippy::pedantic)]
    tonic::include_proto!("csi.v1");
}

/// The name this driver registers under (GetPluginInfo, CSIDriver object, StorageClass
/// provisioner).
pub const DRIVER_NAME: &str = "rbd.csi.strake.io";
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
