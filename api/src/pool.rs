//! `ThinPool`: one per pool. `spec` is the controller's allocation record,
//! `status` is what the node reports.
//!
//! The protocol, in short (ARCHITECTURE.md has the long form):
//! - the controller assigns device ids (the lowest free range first, then
//!   the cursor) and the next transaction id, appends the transaction to
//!   `spec.pendingTransactions` and writes the object with its
//!   `resourceVersion` (a 409 Conflict re-reads and retries), all before any
//!   node acts;
//! - the node runs pending transactions in id order and reports
//!   `status.finishedTransaction` (every transaction up to it has ended) and,
//!   among those, the ones it aborted in `status.abortedTransactions`;
//! - the controller, on its next write, drops finished transactions from
//!   `spec.pendingTransactions`, and only then returns the ids they freed to
//!   `spec.freeDeviceRanges` (merged; a range reaching the cursor folds into
//!   it): a committed delete frees its id, an aborted transaction frees the
//!   ids it would have created (abort deleted them). Freed ids are handed
//!   out again at once: the CSI id carries the create transaction
//!   (csi-contract `DeviceRef`), so a stale request cannot reach a reused id;
//! - an aborted transaction dropped from the pending list leaves a
//!   tombstone in `spec.abortedTransactions`, so a waiter that reads it late
//!   still learns it aborted (the free list says nothing once ids are
//!   reused). A create's tombstone stays until the object it was for is
//!   settled or gone; a delete's until its device is deleted, and repeated
//!   aborted deletes of one device share one. So the record is bounded by
//!   live devices and in-flight work, never by history.

// clippy reads the repeated `type_ = ...` keys of kube's `printcolumn(...)`
// entries as duplicated attributes.
#![allow(clippy::duplicated_attributes)]


use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use thinpool::ThinId;

/// The controller's allocation record for one pool. The object's name is the
/// pool UUID (the pool's identity; device paths can change across reboots).
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "thin.csi.io",
    version = "v1alpha1",
    kind = "ThinPool",
    plural = "thinpools",
    shortname = "tpool",
    category = "thin-csi",
    status = "ThinPoolStatus",
    derive = "PartialEq",
    doc = "A device-mapper thin pool on one node: the controller's allocation record (spec) and the node's report (status).",
    printcolumn(name = "Node", type_ = "string", json_path = ".spec.node"),
    printcolumn(name = "Pool", type_ = "string", json_path = ".spec.poolName"),
    printcolumn(name = "Assigned", type_ = "integer", json_path = ".spec.lastAssignedTransaction", description = "last assigned transaction id"),
    printcolumn(name = "Finished", type_ = "integer", json_path = ".status.finishedTransaction", description = "last transaction the node finished"),
    printcolumn(name = "Mode", type_ = "string", json_path = ".status.mode"),
    printcolumn(name = "Health", type_ = "string", json_path = ".status.health"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct ThinPoolSpec {
    /// The node the pool lives on (its Node object's name).
    #[schemars(length(min = 1))]
    pub node: String,
    /// The pool's name on its node (device-mapper name part).
    #[schemars(length(min = 1, max = 48), regex(pattern = r"^[a-z0-9][a-z0-9-]*$"))]
    pub pool_name: String,
    /// The UUID in the pool's on-device header.
    #[schemars(length(min = 1))]
    pub pool_uuid: String,
    /// Every id from here up is free; 16777216 means none above is (the
    /// free ranges may still have ids).
    #[schemars(range(min = 0, max = 16777216))]
    pub next_device_id: u32,
    /// Ids below the cursor whose delete has committed in the kernel (or
    /// whose create aborted), free to hand out again: sorted, disjoint, not
    /// adjacent, none reaching the cursor. At most one more range than
    /// there are allocated ids.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub free_device_ranges: Vec<DeviceRange>,
    /// Tombstones: aborted transactions dropped from the pending list whose
    /// waiters may not have read the outcome yet (see the module docs).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aborted_transactions: Vec<Tombstone>,
    /// The last transaction id the controller assigned (the kernel's id when
    /// the pool was created, if none yet).
    #[schemars(range(min = 0))]
    pub last_assigned_transaction: u64,
    /// Assigned transactions not yet known finished, in id order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pending_transactions: Vec<PendingTransaction>,
    /// Set when this record was created for a pool that already had history
    /// (its kernel at this transaction id) that no record knew: the pool may
    /// hold devices whose ids the cursor does not cover. Nothing is allocated
    /// while it is set; an operator who has moved `nextDeviceId` past every
    /// device in the pool (thin_ls) removes it (docs/operations.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub devices_unknown_at_transaction: Option<u64>,
}

impl ThinPool {
    /// The last transaction known finished: what the node reported, or more
    /// when the status is missing or behind (a lost write, a node that
    /// crashed after creating the object) and the spec alone knows more.
    pub fn finished_transaction(&self) -> u64 {
        let reported = self.status.as_ref().and_then(|s| s.finished_transaction).unwrap_or(0);
        reported.max(self.spec.finished_at_least())
    }
}

impl ThinPoolSpec {
    /// The last transaction known finished from the spec alone: everything
    /// assigned before the first pending one (the controller prunes only
    /// what the node reported finished). The status may know more.
    pub fn finished_at_least(&self) -> u64 {
        self.pending_transactions.first().map_or(self.last_assigned_transaction, |p| p.id.saturating_sub(1))
    }

    /// Whether device id `id` is free: at or past the cursor, or in a free range.
    pub fn is_free(&self, id: ThinId) -> bool {
        let id = id.get();
        id >= self.next_device_id || self.free_device_ranges.iter().any(|r| r.contains(id))
    }
}

/// Free device ids `first..=last`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub struct DeviceRange {
    #[schemars(range(min = 0, max = 16777215))]
    pub first: u32,
    #[schemars(range(min = 0, max = 16777215))]
    pub last: u32,
}

impl DeviceRange {
    pub fn contains(&self, id: u32) -> bool {
        self.first <= id && id <= self.last
    }
}

/// An aborted transaction kept after it left the pending list: its id,
/// why, and what it would have done. For deletes of the same devices
/// aborted one after another, one tombstone stands for all of them:
/// `id..=through` (no delete of those devices committed in between, or the
/// tombstone would be gone).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Tombstone {
    #[schemars(range(min = 1))]
    pub id: u64,
    /// The last aborted delete of `deletes` this tombstone stands for (when
    /// more than `id`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub through: Option<u64>,
    pub reason: AbortReason,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// Ids it would have created (abort removed them; they are free).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub creates: Vec<ThinId>,
    /// Ids it would have deleted (they still exist).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deletes: Vec<ThinId>,
}

impl Tombstone {
    /// Whether this stands for transaction `txn`.
    pub fn covers(&self, txn: u64) -> bool {
        self.id <= txn && txn <= self.through.unwrap_or(self.id)
    }

    /// The report of transaction `txn` this tombstone keeps.
    pub fn report(&self, txn: u64) -> AbortedTransaction {
        AbortedTransaction { id: txn, reason: self.reason, message: self.message.clone() }
    }
}

/// One assigned transaction: its id and operations, in order.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PendingTransaction {
    #[schemars(range(min = 1))]
    pub id: u64,
    #[schemars(length(min = 1))]
    pub operations: Vec<TransactionOperation>,
}

/// One operation: `createThin {id}`, `createSnapshot {id, origin}` or `delete {id}`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TransactionOperation {
    pub op: OperationKind,
    pub id: ThinId,
    /// The origin of a `createSnapshot`; absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<ThinId>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum OperationKind {
    CreateThin,
    CreateSnapshot,
    Delete,
}

/// What the node reports about its pool.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ThinPoolStatus {
    /// The kernel's transaction id as last read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_transaction: Option<u64>,
    /// Every transaction up to this one has ended (committed or aborted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_transaction: Option<u64>,
    /// Finished transactions that were aborted (their creates undone, none of
    /// their deletes posted), each with why. Only ids still in
    /// `spec.pendingTransactions` are kept here.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aborted_transactions: Vec<AbortedTransaction>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_used_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_total_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata_used_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata_total_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<PoolMode>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<PoolHealth>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// The thin ids in the pool's metadata as merged ranges (sorted,
    /// disjoint, apart): bounded by the live devices, not by history. Valid
    /// as of kernel transaction `devicesTransaction`; meaningless without it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<DeviceRange>,
    /// The kernel's transaction id when `devices` was true; absent: the node
    /// has not listed its devices (the leak collector then waits).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub devices_transaction: Option<u64>,
}

/// Thin ids as merged ranges: sorted, disjoint, not adjacent.
pub fn to_ranges(ids: impl IntoIterator<Item = ThinId>) -> Vec<DeviceRange> {
    let mut ids: Vec<u32> = ids.into_iter().map(ThinId::get).collect();
    ids.sort_unstable();
    ids.dedup();
    let mut ranges: Vec<DeviceRange> = Vec::new();
    for id in ids {
        match ranges.last_mut() {
            Some(r) if r.last + 1 == id => r.last = id,
            _ => ranges.push(DeviceRange { first: id, last: id }),
        }
    }
    ranges
}

/// Whether merged `ranges` hold `id`.
pub fn ranges_contain(ranges: &[DeviceRange], id: ThinId) -> bool {
    let id = id.get();
    let i = ranges.partition_point(|r| r.last < id);
    ranges.get(i).is_some_and(|r| r.contains(id))
}

/// The ids of merged `ranges`, in order.
pub fn range_ids(ranges: &[DeviceRange]) -> impl Iterator<Item = ThinId> + '_ {
    ranges.iter().flat_map(|r| (r.first..=r.last).filter_map(|id| ThinId::new(id.into()).ok()))
}

/// One aborted transaction and why, as the node reports it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AbortedTransaction {
    #[schemars(range(min = 1))]
    pub id: u64,
    pub reason: AbortReason,
    #[serde(default)]
    pub message: String,
}

/// Why a transaction was aborted (the controller maps it to a gRPC code).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum AbortReason {
    /// Pool metadata had no room for another device.
    NoSpace,
    /// A device to delete is open (mounted or held) on the node.
    DeviceBusy,
    /// A snapshot's origin is not in the pool.
    OriginMissing,
    /// An origin would not suspend (its filesystem did not freeze).
    SuspendFailed,
    /// Found aborted after a node restart; the reason was not recorded.
    ReasonLost,
    Other,
}

impl From<thinpool::AbortKind> for AbortReason {
    fn from(k: thinpool::AbortKind) -> Self {
        match k {
            thinpool::AbortKind::NoSpace => AbortReason::NoSpace,
            thinpool::AbortKind::DeviceBusy => AbortReason::DeviceBusy,
            thinpool::AbortKind::OriginMissing => AbortReason::OriginMissing,
            thinpool::AbortKind::SuspendFailed => AbortReason::SuspendFailed,
            thinpool::AbortKind::ReasonLost => AbortReason::ReasonLost,
            thinpool::AbortKind::Other => AbortReason::Other,
        }
    }
}

impl ThinPoolStatus {
    pub fn aborted(&self, txn: u64) -> Option<&AbortedTransaction> {
        self.aborted_transactions.iter().find(|a| a.id == txn)
    }

    /// The JSON merge patch that turns `old` into `self`: a field set in
    /// `old` and absent here is sent as `null`, so it is cleared (a plain
    /// serialization skips it and the old value would stay).
    pub fn merge_patch_from(&self, old: &ThinPoolStatus) -> serde_json::Value {
        let mut patch = serde_json::to_value(self).expect("a status serializes");
        let old = serde_json::to_value(old).expect("a status serializes");
        if let (Some(patch), Some(old)) = (patch.as_object_mut(), old.as_object()) {
            for key in old.keys() {
                patch.entry(key.clone()).or_insert(serde_json::Value::Null);
            }
        }
        serde_json::json!({ "status": patch })
    }
}

/// The pool's mode as the kernel reports it.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum PoolMode {
    #[serde(rename = "rw")]
    ReadWrite,
    #[serde(rename = "out_of_data_space")]
    OutOfDataSpace,
    #[serde(rename = "read-only")]
    ReadOnly,
    #[serde(rename = "needs_check")]
    NeedsCheck,
}

impl PoolMode {
    /// The mode to report for a working pool: `needs_check` (a flag in the
    /// kernel's status line) wins over the read/write mode.
    pub fn of(status: &thinpool::WorkingStatus) -> Self {
        if status.needs_check {
            return PoolMode::NeedsCheck;
        }
        match status.mode {
            thinpool::PoolMode::ReadWrite => PoolMode::ReadWrite,
            thinpool::PoolMode::OutOfDataSpace => PoolMode::OutOfDataSpace,
            thinpool::PoolMode::ReadOnly => PoolMode::ReadOnly,
        }
    }
}

/// Unhealthy: the node stopped using the pool (divergence, a failed check);
/// `lastError` says why. No transaction is sent to an unhealthy pool.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum PoolHealth {
    Healthy,
    Unhealthy,
}

impl ThinPoolSpec {
    /// A new pool's record: nothing allocated, the kernel at `kernel_transaction`.
    pub fn new(node: &str, pool_name: &str, pool_uuid: &str, kernel_transaction: u64) -> Self {
        ThinPoolSpec {
            node: node.to_string(),
            pool_name: pool_name.to_string(),
            pool_uuid: pool_uuid.to_string(),
            next_device_id: 0,
            free_device_ranges: Vec::new(),
            aborted_transactions: Vec::new(),
            last_assigned_transaction: kernel_transaction,
            pending_transactions: Vec::new(),
            devices_unknown_at_transaction: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Defect 3 of issue 9: a status write must clear what the new status
    /// no longer has (a merge patch of the plain serialization skips it).
    #[test]
    fn a_status_patch_clears_dropped_fields() {
        let old = ThinPoolStatus {
            finished_transaction: Some(4),
            last_error: Some("transaction 5 blocked".into()),
            aborted_transactions: vec![AbortedTransaction { id: 4, reason: AbortReason::NoSpace, message: "ENOSPC".into() }],
            ..Default::default()
        };
        let new = ThinPoolStatus { finished_transaction: Some(5), ..Default::default() };
        let patch = new.merge_patch_from(&old);
        assert_eq!(patch["status"]["lastError"], serde_json::Value::Null);
        assert_eq!(patch["status"]["abortedTransactions"], serde_json::Value::Null);
        assert!(patch["status"].as_object().unwrap().contains_key("lastError"), "sent as an explicit null: {patch}");
        assert_eq!(patch["status"]["finishedTransaction"], 5);
    }

    #[test]
    fn device_ranges_merge_and_answer_membership() {
        let ids = [7u32, 1, 2, 3, 9, 8, 2, 20].map(|i| ThinId::new(i.into()).unwrap());
        let ranges = to_ranges(ids);
        assert_eq!(ranges, vec![DeviceRange { first: 1, last: 3 }, DeviceRange { first: 7, last: 9 }, DeviceRange { first: 20, last: 20 }]);
        for i in 0..25u32 {
            let id = ThinId::new(i.into()).unwrap();
            assert_eq!(ranges_contain(&ranges, id), ids.contains(&id), "{i}");
        }
        assert_eq!(range_ids(&ranges).map(ThinId::get).collect::<Vec<_>>(), vec![1, 2, 3, 7, 8, 9, 20]);
        assert!(to_ranges([]).is_empty());
    }
}
