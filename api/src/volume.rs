//! `ThinVolume` and `ThinSnapshot`: one object per CSI name (named by
//! [`crate::object_name`]), saying which pool and thin device hold it.

// clippy reads the repeated `type_ = ...` keys of kube's `printcolumn(...)`
// entries as duplicated attributes.
#![allow(clippy::duplicated_attributes)]

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use thinpool::ThinId;

/// A volume: a thin device in one pool.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "thin.csi.io",
    version = "v1alpha1",
    kind = "ThinVolume",
    plural = "thinvolumes",
    shortname = "tvol",
    category = "thin-csi",
    status = "ObjectStatus",
    derive = "PartialEq",
    doc = "A CSI volume: a thin device in one ThinPool. Named by the CSI volume name.",
    printcolumn(name = "Pool", type_ = "string", json_path = ".spec.pool"),
    printcolumn(name = "Device", type_ = "integer", json_path = ".spec.deviceId"),
    printcolumn(name = "Size", type_ = "integer", json_path = ".spec.sizeBytes"),
    printcolumn(name = "Ready", type_ = "boolean", json_path = ".status.ready"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct ThinVolumeSpec {
    /// The CSI name the object was created for (the object's name is derived from it).
    #[schemars(length(min = 1))]
    pub csi_name: String,
    /// The ThinPool object (pool UUID) holding the device.
    #[schemars(length(min = 1))]
    pub pool: String,
    /// The uid of the pool object whose record assigned `device_id` and the
    /// create transaction: a re-created pool object is another record, whose
    /// transaction ids mean other transactions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool_uid: Option<String>,
    pub device_id: ThinId,
    /// The pool transaction that creates the device (assigned with it).
    #[schemars(range(min = 1))]
    pub create_transaction: u64,
    #[schemars(range(min = 1))]
    pub size_bytes: u64,
    /// The filesystem the node makes on first stage (and idempotency compares).
    pub fs_type: FsType,
    /// Mounted filesystem or raw block device.
    pub access: AccessKind,
    /// The StorageClass's overprovisioning ratio at creation: an expand
    /// counts room with the same ratio the create did.
    #[schemars(range(min = 1.0))]
    pub overprovisioning: f64,
    /// What the volume was made from: nothing (empty), a snapshot or a volume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<VolumeSource>,
}

/// A snapshot: a thin device in the pool of its source volume.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "thin.csi.io",
    version = "v1alpha1",
    kind = "ThinSnapshot",
    plural = "thinsnapshots",
    shortname = "tsnap",
    category = "thin-csi",
    status = "ObjectStatus",
    derive = "PartialEq",
    doc = "A CSI snapshot: a thin snapshot device in one ThinPool. Named by the CSI snapshot name.",
    printcolumn(name = "Pool", type_ = "string", json_path = ".spec.pool"),
    printcolumn(name = "Device", type_ = "integer", json_path = ".spec.deviceId"),
    printcolumn(name = "Source", type_ = "string", json_path = ".spec.source.name"),
    printcolumn(name = "Size", type_ = "integer", json_path = ".spec.sizeBytes"),
    printcolumn(name = "Ready", type_ = "boolean", json_path = ".status.ready"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct ThinSnapshotSpec {
    #[schemars(length(min = 1))]
    pub csi_name: String,
    #[schemars(length(min = 1))]
    pub pool: String,
    /// The uid of the pool object whose record assigned `device_id` and the
    /// create transaction: a re-created pool object is another record, whose
    /// transaction ids mean other transactions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool_uid: Option<String>,
    pub device_id: ThinId,
    /// The pool transaction that creates the device (assigned with it).
    #[schemars(range(min = 1))]
    pub create_transaction: u64,
    /// The source volume's size.
    #[schemars(range(min = 1))]
    pub size_bytes: u64,
    /// The volume the snapshot was taken of.
    pub source: VolumeSource,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VolumeSource {
    pub kind: VolumeSourceKind,
    /// The CSI id of the source volume or snapshot.
    #[schemars(length(min = 1))]
    pub name: String,
}

/// The filesystems the node makes.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum FsType {
    Ext4,
    Xfs,
}

impl FsType {
    pub fn as_str(self) -> &'static str {
        match self {
            FsType::Ext4 => "ext4",
            FsType::Xfs => "xfs",
        }
    }
}

impl std::str::FromStr for FsType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "ext4" => Ok(FsType::Ext4),
            "xfs" => Ok(FsType::Xfs),
            other => Err(format!("filesystem {other:?} is not supported (ext4 or xfs)")),
        }
    }
}

/// How a volume is consumed.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum AccessKind {
    Mount,
    Block,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum VolumeSourceKind {
    Volume,
    Snapshot,
}

/// Status of a volume or snapshot: ready once the transaction that created
/// its device (`spec.createTransaction`) has committed.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ObjectStatus {
    #[serde(default)]
    pub ready: bool,
}
