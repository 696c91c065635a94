//! Serving the CSI services on `unix:///path` or `tcp://host:port`.

use csi_proto::v1::controller_server::ControllerServer;
use csi_proto::v1::identity_server::IdentityServer;
use tokio_stream::wrappers::{TcpListenerStream, UnixListenerStream};

use crate::controller::ControllerService;
use crate::identity::IdentityService;

pub use csi_proto::endpoint::Endpoint;

/// Serves Identity and Controller until `shutdown` completes.
pub async fn serve(
    endpoint: &Endpoint,
    identity: IdentityService,
    controller: ControllerService,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), String> {
    let router = tonic::transport::Server::builder()
        .add_service(IdentityServer::new(identity))
        .add_service(ControllerServer::new(controller));
    match endpoint {
        Endpoint::Unix(path) => {
            csi_proto::endpoint::prepare_unix_socket(path)?;
            let listener = tokio::net::UnixListener::bind(path).map_err(|e| format!("binding {}: {e}", path.display()))?;
            tracing::info!(socket = %path.display(), "serving CSI");
            router.serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown).await.map_err(|e| e.to_string())
        }
        Endpoint::Tcp(addr) => {
            let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| format!("binding {addr}: {e}"))?;
            tracing::info!(%addr, "serving CSI");
            let incoming = TcpListenerStream::new(listener);
            router.serve_with_incoming_shutdown(incoming, shutdown).await.map_err(|e| e.to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        assert_eq!(Endpoint::parse("unix:///run/csi/csi.sock").unwrap(), Endpoint::Unix("/run/csi/csi.sock".into()));
        assert_eq!(Endpoint::parse("tcp://127.0.0.1:10000").unwrap(), Endpoint::Tcp("127.0.0.1:10000".into()));
        assert!(Endpoint::parse("unix://").is_err());
        assert!(Endpoint::parse("/run/csi.sock").is_err());
    }
}
