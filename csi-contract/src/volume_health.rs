//! What a pool's state means for the volumes on it, as CSI health entries
//! (spec v1.13+: ControllerGetVolumeHealth, NodeGetVolumeHealth,
//! NodeGetStorageHealth). One rule for both binaries: the controller reads
//! the pool's mode from the ThinPool status, the node from the kernel's
//! status line (no-flush), and both answer the same way (docs/decisions.md,
//! "Pool health").
//!
//! - `out_of_data_space`: DEGRADED `PoolOutOfDataSpace` (reads work; writes
//!   to unallocated blocks queue or fail until the pool grows);
//! - `read-only`: DEGRADED `PoolReadOnly` (reads work, writes fail);
//! - `needs_check`: DEGRADED `PoolNeedsCheck` (the kernel flagged metadata
//!   damage: writes fail until an operator repairs it);
//! - the pool target failed (status `Fail`): INACCESSIBLE `PoolFailed`;
//! - the pool object gone: INACCESSIBLE `PoolGone`;
//! - the record marked unhealthy: DEGRADED `PoolUnhealthy` (data is there,
//!   but no transaction runs: no snapshot, no delete, no new volume).

use csi_proto::v1::node_get_storage_health_response::StorageBackendHealth;
use csi_proto::v1::volume_health::VolumeHealthEntry;
use csi_proto::v1::{StorageHealthErrorType, VolumeHealth, VolumeHealthErrorType};
use thin_csi_api::pool::PoolMode;

/// One adverse condition of a pool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PoolCondition {
    Mode(PoolMode),
    Failed,
    Gone,
    Unhealthy(String),
}

impl PoolCondition {
    /// The condition a pool in `mode` is in (none when read/write).
    pub fn of_mode(mode: PoolMode) -> Option<PoolCondition> {
        (mode != PoolMode::ReadWrite).then_some(PoolCondition::Mode(mode))
    }

    /// The CSI entry: status, CamelCase reason (also the Event reason), message.
    pub fn entry(&self) -> VolumeHealthEntry {
        let (status, reason, message) = self.parts();
        VolumeHealthEntry { status: status as i32, reason: reason.into(), message }
    }

    pub fn parts(&self) -> (VolumeHealthErrorType, &'static str, String) {
        match self {
            PoolCondition::Mode(PoolMode::ReadWrite) => (VolumeHealthErrorType::UnknownVolumeHealthType, "PoolReadWrite", "the thin pool is read/write".to_string()),
            PoolCondition::Mode(PoolMode::OutOfDataSpace) => (
                VolumeHealthErrorType::Degraded,
                "PoolOutOfDataSpace",
                "the thin pool is out of data space: writes to unallocated blocks queue or fail until the pool grows".into(),
            ),
            PoolCondition::Mode(PoolMode::ReadOnly) => (VolumeHealthErrorType::Degraded, "PoolReadOnly", "the thin pool is read-only: writes fail".into()),
            PoolCondition::Mode(PoolMode::NeedsCheck) => (
                VolumeHealthErrorType::Degraded,
                "PoolNeedsCheck",
                "the thin pool needs a metadata check (needs_check): writes fail until it is repaired".into(),
            ),
            PoolCondition::Failed => (VolumeHealthErrorType::Inaccessible, "PoolFailed", "the thin pool target has failed".into()),
            PoolCondition::Gone => (VolumeHealthErrorType::Inaccessible, "PoolGone", "the pool of this volume is gone".into()),
            PoolCondition::Unhealthy(why) => (VolumeHealthErrorType::Degraded, "PoolUnhealthy", format!("the pool is marked unhealthy: {why}")),
        }
    }

    /// The same condition for NodeGetStorageHealth (the pool is the backend).
    pub fn backend(&self) -> StorageBackendHealth {
        let e = self.entry();
        let status = if e.status == VolumeHealthErrorType::Inaccessible as i32 { StorageHealthErrorType::StorageUnreachable } else { StorageHealthErrorType::StorageDegraded };
        StorageBackendHealth { status: status as i32, reason: e.reason, message: e.message, volume_capability: None }
    }
}

/// A volume's health: one entry per condition; none means healthy.
pub fn volume_health(volume_id: &str, conditions: &[PoolCondition]) -> VolumeHealth {
    VolumeHealth { volume_id: volume_id.to_string(), health_statuses: conditions.iter().map(PoolCondition::entry).collect() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_mode_has_its_reason_and_rw_none() {
        assert_eq!(PoolCondition::of_mode(PoolMode::ReadWrite), None);
        let reason = |m| PoolCondition::of_mode(m).unwrap().entry().reason;
        assert_eq!(reason(PoolMode::OutOfDataSpace), "PoolOutOfDataSpace");
        assert_eq!(reason(PoolMode::ReadOnly), "PoolReadOnly");
        assert_eq!(reason(PoolMode::NeedsCheck), "PoolNeedsCheck");
        let h = volume_health("v", &[]);
        assert!(h.health_statuses.is_empty() && h.volume_id == "v");
        assert_eq!(PoolCondition::Failed.entry().status, VolumeHealthErrorType::Inaccessible as i32);
        assert_eq!(PoolCondition::Failed.backend().status, StorageHealthErrorType::StorageUnreachable as i32);
        assert_eq!(PoolCondition::Mode(PoolMode::ReadOnly).backend().status, StorageHealthErrorType::StorageDegraded as i32);
    }
}
