//! thin-csi-api: the custom resources csi-controller and csi-node coordinate
//! through, group `thin.csi.io`, version `v1alpha1`.
//!
//! - [`ThinPool`] (cluster-scoped, one per pool, named by the pool's UUID):
//!   the controller's allocation record in `spec` (device-id cursor and free
//!   ranges, last assigned transaction id, pending transactions, tombstones
//!   of aborted ones) and what the
//!   node reports in `status` (kernel transaction id, usage, mode, health,
//!   the last finished transaction and which of them were aborted).
//! - [`ThinVolume`] and [`ThinSnapshot`] (cluster-scoped, named by
//!   [`object_name`] of the CSI name): which pool and thin device hold a
//!   volume or snapshot. One object per CSI name makes CreateVolume and
//!   CreateSnapshot idempotent by name.
//!
//! The schema the apiserver validates comes from these types (schemars): ids
//! are 24-bit, sizes are at least one byte, the fields the protocol needs are
//! required. [`convert`] maps the pool spec/status to the engine's
//! [`thinpool::Transaction`] and [`thinpool::PoolRecord`].

pub mod client;
pub mod hooks;
pub mod convert;
pub mod name;
pub mod pool;
pub mod volume;

pub use convert::ConversionError;
pub use name::object_name;
pub use pool::{
    AbortReason, AbortedTransaction, DeviceRange, OperationKind, PendingTransaction, PoolHealth, PoolMode, ThinPool, ThinPoolSpec, ThinPoolStatus,
    Tombstone, TransactionOperation,
};
pub use volume::{AccessKind, FsType, ObjectStatus, ThinSnapshot, ThinSnapshotSpec, ThinVolume, ThinVolumeSpec, VolumeSource, VolumeSourceKind};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

/// The API group of every thin-csi custom resource.
pub const GROUP: &str = "thin.csi.io";

/// The label naming the pool object (UUID) of a ThinVolume or ThinSnapshot.
pub const LABEL_POOL: &str = "thin.csi.io/pool";
/// The label naming the thin device id of a ThinVolume or ThinSnapshot.
pub const LABEL_DEVICE: &str = "thin.csi.io/device-id";
/// The one served (and stored) version.
pub const VERSION: &str = "v1alpha1";

/// The CRDs of this crate, in the order they are applied.
pub fn crds() -> Vec<CustomResourceDefinition> {
    vec![ThinPool::crd(), ThinVolume::crd(), ThinSnapshot::crd()]
}

/// All CRDs as one multi-document YAML stream (what `crdgen` prints).
pub fn crds_yaml() -> Result<String, serde_yaml::Error> {
    let mut out = String::new();
    for crd in crds() {
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(&crd)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn schema_of(crd: &CustomResourceDefinition) -> Value {
        let v = serde_json::to_value(crd).unwrap();
        v["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone()
    }

    #[test]
    fn crds_are_cluster_scoped_in_our_group() {
        for crd in crds() {
            assert_eq!(crd.spec.group, GROUP);
            assert_eq!(crd.spec.scope, "Cluster");
            assert_eq!(crd.spec.versions.len(), 1);
            assert_eq!(crd.spec.versions[0].name, VERSION);
            assert!(crd.spec.versions[0].subresources.as_ref().and_then(|s| s.status.as_ref()).is_some());
            assert!(!crd.spec.versions[0].additional_printer_columns.as_deref().unwrap_or_default().is_empty());
        }
        let names: Vec<String> = crds().iter().map(|c| c.metadata.name.clone().unwrap()).collect();
        assert_eq!(names, ["thinpools.thin.csi.io", "thinvolumes.thin.csi.io", "thinsnapshots.thin.csi.io"]);
    }

    fn num(v: &Value) -> f64 {
        v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
    }

    #[test]
    fn schema_bounds_ids_and_sizes() {
        let pool = schema_of(&ThinPool::crd());
        let spec = &pool["properties"]["spec"];
        let required: Vec<&str> = spec["required"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
        for f in ["node", "poolName", "poolUuid", "nextDeviceId", "lastAssignedTransaction"] {
            assert!(required.contains(&f), "{f} is required: {required:?}");
        }
        let range = &spec["properties"]["freeDeviceRanges"]["items"]["properties"];
        assert_eq!(num(&range["first"]["maximum"]), 16777215.0);
        assert_eq!(num(&range["last"]["maximum"]), 16777215.0);
        assert_eq!(num(&spec["properties"]["abortedTransactions"]["items"]["properties"]["id"]["minimum"]), 1.0);
        assert_eq!(num(&spec["properties"]["nextDeviceId"]["maximum"]), 16777216.0);
        let op = &spec["properties"]["pendingTransactions"]["items"]["properties"]["operations"]["items"];
        assert_eq!(num(&op["properties"]["id"]["maximum"]), 16777215.0);
        assert_eq!(num(&op["properties"]["id"]["minimum"]), 0.0);
        assert_eq!(num(&op["properties"]["origin"]["maximum"]), 16777215.0);
        assert_eq!(num(&spec["properties"]["pendingTransactions"]["items"]["properties"]["id"]["minimum"]), 1.0);

        let vol = schema_of(&ThinVolume::crd());
        let spec = &vol["properties"]["spec"];
        assert_eq!(num(&spec["properties"]["sizeBytes"]["minimum"]), 1.0);
        assert_eq!(num(&spec["properties"]["deviceId"]["maximum"]), 16777215.0);
        let required: Vec<&str> = spec["required"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
        assert_eq!(num(&spec["properties"]["createTransaction"]["minimum"]), 1.0);
        assert_eq!(spec["properties"]["fsType"]["enum"], serde_json::json!(["ext4", "xfs"]));
        assert_eq!(spec["properties"]["access"]["enum"], serde_json::json!(["mount", "block"]));
        for f in ["csiName", "pool", "deviceId", "createTransaction", "sizeBytes", "fsType", "access"] {
            assert!(required.contains(&f), "{f} is required: {required:?}");
        }
    }

    #[test]
    fn yaml_has_three_documents() {
        let y = crds_yaml().unwrap();
        assert_eq!(y.matches("\n---\n").count() + usize::from(y.starts_with("---\n")), 3);
        assert!(y.contains("kind: CustomResourceDefinition"));
    }
}
