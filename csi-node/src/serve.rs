//! Serving Identity and Node on `unix:///path` and/or `tcp://host:port`.

use csi_proto::v1::identity_server::IdentityServer;
use csi_proto::v1::node_server::NodeServer;

use crate::identity::IdentityService;
use crate::node::NodeService;

pub use csi_contract::endpoint::Endpoint;

/// Serves Identity and Node on one endpoint until the server fails.
pub async fn serve(endpoint: &Endpoint, identity: IdentityService, node: NodeService) -> Result<(), String> {
    let router = csi_contract::endpoint::server().add_service(IdentityServer::new(identity)).add_service(NodeServer::new(node));
    csi_contract::endpoint::serve(endpoint, router, std::future::pending()).await
}
