//! The names both binaries must spell the same: the topology key, the
//! volume-context keys the controller publishes and the node reads, and the
//! labels on ThinVolume/ThinSnapshot objects.

use std::collections::HashMap;

use csi_proto::v1::Topology;

pub use thin_csi_api::{LABEL_DEVICE, LABEL_POOL};

/// The one topology segment: volumes are node-local.
pub const TOPOLOGY_KEY: &str = "topology.thin.csi.io/node";

/// Volume context (CreateVolume's answer, passed back by the CO to the node).
pub const CTX_POOL: &str = "thin.csi.io/pool";
pub const CTX_DEVICE: &str = "thin.csi.io/device-id";
pub const CTX_VOLUME: &str = "thin.csi.io/volume";
pub const CTX_FS_TYPE: &str = "thin.csi.io/fs-type";

/// The accessible topology of everything on `node`.
pub fn node_topology(node: &str) -> Topology {
    Topology { segments: HashMap::from([(TOPOLOGY_KEY.to_string(), node.to_string())]) }
}
