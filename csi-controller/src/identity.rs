//! The CSI Identity service: the driver's name and version, what the plugin
//! offers, and readiness (the Kubernetes API reachable and this replica
//! leading).

use std::collections::HashMap;

use csi_proto::v1::identity_server::Identity;
use csi_proto::v1::*;
use kube::api::{Api, ListParams};
use kube::Client;
use thin_csi_api::ThinPool;
use tokio::sync::watch;
use tonic::{Request, Response, Status};

use crate::params::DRIVER_NAME;

#[derive(Clone)]
pub struct IdentityService {
    pools: Api<ThinPool>,
    leading: watch::Receiver<bool>,
}

impl IdentityService {
    pub fn new(client: Client, leading: watch::Receiver<bool>) -> Self {
        IdentityService { pools: Api::all(client), leading }
    }
}

pub use csi_contract::plugin::capabilities;

#[tonic::async_trait]
impl Identity for IdentityService {
    async fn get_plugin_info(&self, _: Request<GetPluginInfoRequest>) -> Result<Response<GetPluginInfoResponse>, Status> {
        Ok(Response::new(GetPluginInfoResponse {
            name: DRIVER_NAME.to_string(),
            vendor_version: env!("CARGO_PKG_VERSION").to_string(),
            manifest: HashMap::new(),
        }))
    }

    async fn get_plugin_capabilities(&self, _: Request<GetPluginCapabilitiesRequest>) -> Result<Response<GetPluginCapabilitiesResponse>, Status> {
        Ok(Response::new(GetPluginCapabilitiesResponse { capabilities: capabilities() }))
    }

    async fn probe(&self, _: Request<ProbeRequest>) -> Result<Response<ProbeResponse>, Status> {
        let leading = *self.leading.borrow();
        let reachable = match self.pools.list_metadata(&ListParams::default().limit(1)).await {
            Ok(_) => true,
            Err(e) => {
                tracing::warn!(error = %e, "probe: the Kubernetes API is not reachable");
                false
            }
        };
        Ok(Response::new(ProbeResponse { ready: Some(leading && reachable) }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use csi_proto::v1::plugin_capability::{self, service, volume_expansion};

    #[test]
    fn advertises_controller_topology_and_online_expansion() {
        let caps = capabilities();
        assert_eq!(caps.len(), 3);
        assert!(caps.iter().any(|c| matches!(c.r#type, Some(plugin_capability::Type::VolumeExpansion(e)) if e.r#type == volume_expansion::Type::Online as i32)));
        assert!(caps.iter().any(|c| matches!(c.r#type, Some(plugin_capability::Type::Service(s)) if s.r#type == service::Type::VolumeAccessibilityConstraints as i32)));
    }
}
