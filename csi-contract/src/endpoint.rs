//! Where a CSI server listens, `unix:///path` or `tcp://host:port`, and
//! serving a set of gRPC services there. Every gRPC server of the project
//! starts from [`server`], which counts and times its requests
//! ([`crate::metrics::GrpcMetricsLayer`]).

use std::future::Future;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use tokio_stream::wrappers::{TcpListenerStream, UnixListenerStream};
use tonic::transport::server::Router;
use tower::layer::util::{Identity, Stack};

use crate::metrics::GrpcMetricsLayer;

/// A tonic server builder with the request metrics layer.
pub fn server() -> tonic::transport::Server<Stack<GrpcMetricsLayer, Identity>> {
    tonic::transport::Server::builder().layer(GrpcMetricsLayer)
}

/// The services of a [`server`], ready to serve.
pub type MeteredRouter = Router<Stack<GrpcMetricsLayer, Identity>>;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Unix(PathBuf),
    Tcp(String),
}

impl Endpoint {
    pub fn parse(s: &str) -> Result<Self, String> {
        if let Some(path) = s.strip_prefix("unix://") {
            if path.is_empty() {
                return Err(format!("{s}: no socket path"));
            }
            Ok(Endpoint::Unix(PathBuf::from(path)))
        } else if let Some(addr) = s.strip_prefix("tcp://") {
            if addr.is_empty() {
                return Err(format!("{s}: no address"));
            }
            Ok(Endpoint::Tcp(addr.to_string()))
        } else {
            Err(format!("{s}: expected unix:///path or tcp://host:port"))
        }
    }

    /// A comma-separated list: `unix:///run/csi/csi.sock,tcp://0.0.0.0:10000`.
    pub fn parse_list(s: &str) -> Result<Vec<Self>, String> {
        s.split(',').filter(|e| !e.trim().is_empty()).map(|e| Endpoint::parse(e.trim())).collect()
    }

    /// The readiness condition that [`serve`] sets once it listens here
    /// (register it before serving, [`crate::health::condition`]).
    pub fn readiness(&self) -> crate::health::Condition {
        crate::health::condition(&match self {
            Endpoint::Unix(path) => format!("serving unix://{}", path.display()),
            Endpoint::Tcp(addr) => format!("serving tcp://{addr}"),
        })
    }
}

/// Makes a unix socket path ready to bind: its directory exists and a socket
/// left by an earlier run of the server is gone. Anything else at the path
/// is not ours to remove: refused.
pub fn prepare_unix_socket(path: &Path) -> Result<(), String> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            std::fs::remove_file(path).map_err(|e| format!("removing stale socket {}: {e}", path.display()))?;
        }
        Ok(m) => return Err(format!("{} exists and is not a socket ({:?}); refusing to replace it", path.display(), m.file_type())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("{}: {e}", path.display())),
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    }
    Ok(())
}

/// Serves `router` (the services a binary registered) on `endpoint` until
/// `shutdown` completes or the server fails; the endpoint's readiness
/// condition holds while it listens.
pub async fn serve(endpoint: &Endpoint, router: MeteredRouter, shutdown: impl Future<Output = ()> + Send) -> Result<(), String> {
    let ready = endpoint.readiness();
    let result = match endpoint {
        Endpoint::Unix(path) => {
            prepare_unix_socket(path)?;
            let listener = tokio::net::UnixListener::bind(path).map_err(|e| format!("binding {}: {e}", path.display()))?;
            tracing::info!(socket = %path.display(), "serving gRPC");
            ready.set(true);
            router.serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown).await.map_err(|e| e.to_string())
        }
        Endpoint::Tcp(addr) => {
            let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| format!("binding {addr}: {e}"))?;
            tracing::info!(%addr, "serving gRPC");
            ready.set(true);
            router.serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown).await.map_err(|e| e.to_string())
        }
    };
    ready.set(false);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        assert_eq!(Endpoint::parse("unix:///run/csi/csi.sock").unwrap(), Endpoint::Unix("/run/csi/csi.sock".into()));
        assert_eq!(Endpoint::parse("tcp://127.0.0.1:10000").unwrap(), Endpoint::Tcp("127.0.0.1:10000".into()));
        assert_eq!(
            Endpoint::parse_list("unix:///a.sock,tcp://0.0.0.0:10000").unwrap(),
            vec![Endpoint::Unix("/a.sock".into()), Endpoint::Tcp("0.0.0.0:10000".into())]
        );
        assert!(Endpoint::parse("unix://").is_err());
        assert!(Endpoint::parse("/run/csi.sock").is_err());
    }

    #[test]
    fn only_a_socket_is_replaced() {
        let dir = std::env::temp_dir().join(format!("csi-contract-endpoint-{}", std::process::id()));
        let file = dir.join("not-a-socket");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(&file, b"keep me").unwrap();
        assert!(prepare_unix_socket(&file).unwrap_err().contains("not a socket"));
        assert_eq!(std::fs::read(&file).unwrap(), b"keep me");
        let sock = dir.join("old.sock");
        drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
        prepare_unix_socket(&sock).unwrap();
        assert!(!sock.exists());
        prepare_unix_socket(&dir.join("sub/new.sock")).unwrap();
        assert!(dir.join("sub").is_dir());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
