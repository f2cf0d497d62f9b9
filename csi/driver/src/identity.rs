//! The CSI Identity service.
use tonic::{Request, Response, Status};

use crate::csi::identity_server::Identity;
use crate::csi::plugin_capability::{service, volume_expansion, Service, Type, VolumeExpansion};
use crate::csi::*;
use crate::metrics::instrument;

#[derive(Clone)]
pub struct IdentityService {
    /// Whether this process serves the Controller service (`--mode controller|all`).
    pub controller: bool,
}

#[tonic::async_trait]
impl Identity for IdentityService {
    async fn get_plugin_info(
        &self,
        _: Request<GetPluginInfoRequest>,
    ) -> Result<Response<GetPluginInfoResponse>, Status> {
        instrument("GetPluginInfo", async {
            Ok(GetPluginInfoResponse {
                name: crate::DRIVER_NAME.to_string(),
                vendor_version: crate::VERSION.to_string(),
                manifest: [("librbd".to_string(), {
                    let (a, b, c) = strake_ceph::librbd_version();
                    format!("{a}.{b}.{c}")
                })]
                .into(),
            })
        })
        .await
    }

    async fn get_plugin_capabilities(
        &self,
        _: Request<GetPluginCapabilitiesRequest>,
    ) -> Result<Response<GetPluginCapabilitiesResponse>, Status> {
        instrument("GetPluginCapabilities", async {
            let mut caps = vec![
                // Volumes of a StorageClass with topologyConstrainedPools are reachable
                // from their pool's domain only (see `topology`).
                PluginCapability {
                    r#type: Some(Type::Service(Service {
                        r#type: service::Type::VolumeAccessibilityConstraints as i32,
                    })),
                },
                PluginCapability {
                    // RBD images grow while attached; the filesystem grows online (xfs, or
                    // ext4 with CAP_SYS_RESOURCE).
                    r#type: Some(Type::VolumeExpansion(VolumeExpansion {
                        r#type: volume_expansion::Type::Online as i32,
                    })),
                },
            ];
            if self.controller {
                for t in [service::Type::ControllerService, service::Type::GroupControllerService] {
                    caps.push(PluginCapability {
                        r#type: Some(Type::Service(Service { r#type: t as i32 })),
                    });
                }
            }
            Ok(GetPluginCapabilitiesResponse { capabilities: caps })
        })
        .await
    }

    async fn probe(&self, _: Request<ProbeRequest>) -> Result<Response<ProbeResponse>, Status> {
        // Liveness only: a Ceph outage must not make the kubelet restart the plugin
        // (restarts cannot fix the cluster and only add churn).
        instrument("Probe", async {
            Ok(ProbeResponse {
                ready: Some(BoolValue { value: true }),
            })
        })
        .await
    }
}
