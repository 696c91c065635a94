//! The node plugin's CSI Identity service: name and version, what it
//! offers, and readiness (the pool active in the kernel and the Kubernetes
//! API reachable).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use csi_proto::v1::identity_server::Identity;
use csi_proto::v1::*;
use kube::api::Api;
use kube::Client;
use thin_csi_api::ThinPool;
use thinpool::Kernel;
use thinpool_dm::DmPool;
use tonic::{Request, Response, Status};

pub use csi_contract::plugin::DRIVER_NAME;

#[derive(Clone)]
pub struct IdentityService {
    pool: Arc<Mutex<DmPool>>,
    pools: Api<ThinPool>,
    pool_object: String,
}

impl IdentityService {
    pub fn new(client: Client, pool: Arc<Mutex<DmPool>>, pool_object: &str) -> Self {
        IdentityService { pool, pools: Api::all(client), pool_object: pool_object.to_string() }
    }

    /// Why the node is not ready, or None when it is.
    async fn not_ready(&self) -> Option<String> {
        let pool = self.pool.clone();
        let kernel = tokio::task::spawn_blocking(move || {
            let p = pool.lock().unwrap_or_else(|p| p.into_inner());
            p.pool_status().map(|s| s.working().is_some())
        })
        .await;
        match kernel {
            Ok(Ok(true)) => {}
            Ok(Ok(false)) => return Some("the kernel reports the pool failed".into()),
            Ok(Err(e)) => return Some(format!("pool status: {e}")),
            Err(e) => return Some(format!("pool status: {e}")),
        }
        match self.pools.get_metadata_opt(&self.pool_object).await {
            Ok(Some(_)) => None,
            Ok(None) => Some(format!("the pool object {} does not exist", self.pool_object)),
            Err(e) => Some(format!("the Kubernetes API is not reachable: {e}")),
        }
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

    async fn get_plugin_capabilities(
        &self,
        _: Request<GetPluginCapabilitiesRequest>,
    ) -> Result<Response<GetPluginCapabilitiesResponse>, Status> {
        Ok(Response::new(GetPluginCapabilitiesResponse { capabilities: capabilities() }))
    }

    async fn probe(&self, _: Request<ProbeRequest>) -> Result<Response<ProbeResponse>, Status> {
        let why = self.not_ready().await;
        if let Some(why) = &why {
            tracing::warn!(reason = %why, "probe: not ready");
        }
        Ok(Response::new(ProbeResponse { ready: Some(why.is_none()) }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advertises_the_plugin_capabilities() {
        use csi_proto::v1::plugin_capability::{self, service, volume_expansion};
        let caps = capabilities();
        let has_service = |t: service::Type| caps.iter().any(|c| matches!(c.r#type, Some(plugin_capability::Type::Service(s)) if s.r#type == t as i32));
        assert!(has_service(service::Type::ControllerService), "plugin-wide: csi-sanity reads it from the node endpoint");
        assert!(has_service(service::Type::VolumeAccessibilityConstraints));
        assert!(caps.iter().any(|c| matches!(c.r#type, Some(plugin_capability::Type::VolumeExpansion(e)) if e.r#type == volume_expansion::Type::Online as i32)));
    }
}
