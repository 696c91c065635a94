//! The CSI v1 gRPC API (spec v1.12), generated from the spec's csi.proto at
//! build time: messages and service traits, nothing else. What the two
//! binaries agree on beyond the wire format is in `csi-contract`.

#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod v1 {
    tonic::include_proto!("csi.v1");
}

pub use v1::*;
