//! csi-controller: the CSI Identity and Controller services (allocation of
//! thin ids and transaction ids, recorded in the Kubernetes API). For now it
//! only starts, logs and exits; the allocation and CRD registration it will
//! serve with live in the library (`csi_controller::alloc`, `::crds`).

fn main() {
    tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::from_default_env()).init();
    tracing::info!(version = env!("CARGO_PKG_VERSION"), "csi-controller starting; no services yet");
}
