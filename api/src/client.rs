//! The Kubernetes client both binaries use: kube's own TLS and auth layers
//! over a connector with TCP_NODELAY. kube's default connector leaves Nagle
//! on, and a small request written as several TLS records then waits for the
//! server's delayed ACK: ~40 ms added to every write (measured: 53 ms per
//! allocation on loopback, ~5 ms without Nagle).

use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use kube::client::ConfigExt;
use kube::{Client, Config};
use tower::{BoxError, ServiceBuilder};

pub fn connect(config: Config) -> Result<Client, kube::Error> {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    let https = config.rustls_https_connector_with_connector(http)?;
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
