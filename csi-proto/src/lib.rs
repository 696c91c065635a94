//! The CSI v1 gRPC API (spec v1.12), generated from the spec's csi.proto at
//! build time. Messages and service traits, and the plugin's name and
//! capabilities (`plugin`), shared by both binaries.

#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod v1 {
    tonic::include_proto!("csi.v1");
}

pub mod endpoint;
pub mod plugin;

pub use v1::*;
