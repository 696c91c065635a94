//! csi-node: the CSI Identity and Node services and the only process that
//! touches the pool. For now it only starts, logs and exits: the executor
//! comes with the cluster issue.

fn main() {
    tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::from_default_env()).init();
    tracing::info!(version = env!("CARGO_PKG_VERSION"), "csi-node starting; no services yet");
}
