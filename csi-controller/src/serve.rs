//! Serving Identity and Controller on `unix:///path` or `tcp://host:port`.

use csi_proto::v1::controller_server::ControllerServer;
use csi_proto::v1::identity_server::IdentityServer;

use crate::controller::ControllerService;
use crate::identity::IdentityService;

pub use csi_contract::endpoint::Endpoint;

/// Serves Identity and Controller until `shutdown` completes.
pub async fn serve(
    endpoint: &Endpoint,
    identity: IdentityService,
    controller: ControllerService,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), String> {
    let router = csi_contract::endpoint::server()
        .add_service(IdentityServer::new(identity))
        .add_service(ControllerServer::new(controller));
    csi_contract::endpoint::serve(endpoint, router, shutdown).await
}
