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

/// Annotations on a ThinVolume naming the PVC it was provisioned for (from
/// csi-provisioner's `--extra-create-metadata` parameters): where the node
/// raises Events when the volume's pool changes mode. Informational only:
/// nothing in the protocol reads them.
pub const ANN_PVC_NAME: &str = "thin.csi.io/pvc-name";
pub const ANN_PVC_NAMESPACE: &str = "thin.csi.io/pvc-namespace";
/// The CreateVolume parameters csi-provisioner adds with `--extra-create-metadata`.
pub const PARAM_PVC_NAME: &str = "csi.storage.k8s.io/pvc/name";
pub const PARAM_PVC_NAMESPACE: &str = "csi.storage.k8s.io/pvc/namespace";

/// The PVC annotations for a ThinVolume created with `parameters` (none
/// unless both the PVC's name and namespace are there).
pub fn pvc_annotations(parameters: &HashMap<String, String>) -> Option<std::collections::BTreeMap<String, String>> {
    let name = parameters.get(PARAM_PVC_NAME).filter(|s| !s.is_empty())?;
    let namespace = parameters.get(PARAM_PVC_NAMESPACE).filter(|s| !s.is_empty())?;
    Some([(ANN_PVC_NAME.to_string(), name.clone()), (ANN_PVC_NAMESPACE.to_string(), namespace.clone())].into())
}

/// The accessible topology of everything on `node`.
pub fn node_topology(node: &str) -> Topology {
    Topology { segments: HashMap::from([(TOPOLOGY_KEY.to_string(), node.to_string())]) }
}
