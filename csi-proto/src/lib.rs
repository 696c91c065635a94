//! gRPC APIs generated at build time from their pinned upstream protos
//! (build.rs): messages and service traits, nothing else.
//!
//! - [`v1`]: CSI v1 (spec v1.14, the spec's csi.proto). What the two
//!   binaries agree on beyond the wire format is in `csi-contract`.
//! - [`pluginregistration`]: the kubelet's plugin-registration API
//!   (`pluginregistration.v1` of `k8s.io/kubelet` v0.36.3), served by csi-node.

#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod v1 {
    tonic::include_proto!("csi.v1");
}

/// The kubelet's plugin watcher calls `GetInfo` on a socket in its
/// `plugins_registry` directory, then `NotifyRegistrationStatus`.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod pluginregistration {
    tonic::include_proto!("pluginregistration");
}

pub use v1::*;
