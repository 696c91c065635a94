//! The Kubernetes client both binaries use: kube's own TLS and auth layers
//! over a connector with TCP_NODELAY. kube's default connector leaves Nagle
//! on, and a small request written as several TLS records then waits for the
//! server's delayed ACK: ~40 ms added to every write (measured: 53 ms per
//! allocation on loopback, ~5 ms without Nagle).
//!
//! Every connection has connect, write and read timeouts (kube's own
//! builder sets them; a connector of our own must too): without a read
//! timeout, a reply that never arrives (seen with the fault proxy holding
//! one) blocks its caller for good — for the node, the executor loop of the
//! whole pool. The read timeout outlasts the apiserver's own watch timeout
//! (kube's watcher asks for 290 s), so a quiet watch is never cut by it.

use std::time::Duration;

use hyper_timeout::TimeoutConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use kube::client::ConfigExt;
use kube::{Client, Config};
use tower::{BoxError, ServiceBuilder};

/// A read that waits longer than this for any byte fails (unless the config sets its own).
pub const READ_TIMEOUT: Duration = Duration::from_secs(295);

pub fn connect(config: Config) -> Result<Client, kube::Error> {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    let mut https = TimeoutConnector::new(config.rustls_https_connector_with_connector(http)?);
    https.set_connect_timeout(config.connect_timeout);
    https.set_write_timeout(config.write_timeout);
    https.set_read_timeout(config.read_timeout.or(Some(READ_TIMEOUT)));
    let service = ServiceBuilder::new()
        .layer(config.base_uri_layer())
        .option_layer(config.auth_layer()?)
        .map_err(BoxError::from)
        .service(hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build(https));
    Ok(Client::new(service, config.default_namespace))
}

/// Like `Client::try_default`: in-cluster config or KUBECONFIG, with NODELAY.
pub async fn connect_default() -> Result<Client, kube::Error> {
    let config = Config::infer().await.map_err(kube::Error::InferConfig)?;
    connect(config)
}
