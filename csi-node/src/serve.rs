//! Serving Identity and Node on `unix:///path` and/or `tcp://host:port`.

use csi_proto::v1::identity_server::IdentityServer;
use csi_proto::v1::node_server::NodeServer;
use tokio_stream::wrappers::{TcpListenerStream, UnixListenerStream};

use crate::identity::IdentityService;
use crate::node::NodeService;

pub use csi_proto::endpoint::Endpoint;

/// Serves Identity and Node on one endpoint until the server fails.
pub async fn serve(endpoint: &Endpoint, identity: IdentityService, node: NodeService) -> Result<(), String> {
    let router = tonic::transport::Server::builder().add_service(IdentityServer::new(identity)).add_service(NodeServer::new(node));
    match endpoint {
        Endpoint::Unix(path) => {
            csi_proto::endpoint::prepare_unix_socket(path)?;
            let listener = tokio::net::UnixListener::bind(path).map_err(|e| format!("binding {}: {e}", path.display()))?;
            tracing::info!(socket = %path.display(), "serving CSI Identity and Node");
            router.serve_with_incoming(UnixListenerStream::new(listener)).await.map_err(|e| e.to_string())
        }
        Endpoint::Tcp(addr) => {
            let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| format!("binding {addr}: {e}"))?;
            tracing::info!(%addr, "serving CSI Identity and Node");
            router.serve_with_incoming(TcpListenerStream::new(listener)).await.map_err(|e| e.to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        assert_eq!(Endpoint::parse("unix:///run/csi/csi.sock").unwrap(), Endpoint::Unix("/run/csi/csi.sock".into()));
        assert_eq!(
            Endpoint::parse_list("unix:///a.sock,tcp://0.0.0.0:10000").unwrap(),
            vec![Endpoint::Unix("/a.sock".into()), Endpoint::Tcp("0.0.0.0:10000".into())]
        );
        assert!(Endpoint::parse("unix://").is_err());
        assert!(Endpoint::parse("/run/csi.sock").is_err());
    }
}
