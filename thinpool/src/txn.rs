//! Operations, transactions and the messages the kernel's thin-pool target takes.

use std::collections::BTreeSet;
use std::fmt;

use crate::ids::{ThinId, TransactionId};

/// One change to the pool's set of thin devices.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Operation {
    CreateThin { id: ThinId },
    CreateSnapshot { id: ThinId, origin: ThinId },
    Delete { id: ThinId },
}

impl Operation {
    /// The id this operation brings into existence, if any.
    pub fn created(&self) -> Option<ThinId> {
        match *self {
            Operation::CreateThin { id } | Operation::CreateSnapshot { id, .. } => Some(id),
            Operation::Delete { .. } => None,
        }
    }

    pub fn deleted(&self) -> Option<ThinId> {
        match *self {
            Operation::Delete { id } => Some(id),
            _ => None,
        }
    }

    pub fn message(&self) -> PoolMessage {
        match *self {
            Operation::CreateThin { id } => PoolMessage::CreateThin { id },
            Operation::CreateSnapshot { id, origin } => PoolMessage::CreateSnap { id, origin },
            Operation::Delete { id } => PoolMessage::Delete { id },
        }
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.message().fmt(f)
    }
}

/// A transaction: id `n` and its operations, in the order they are posted.
///
/// Creates always come before deletes. Ids are unique, so the two never
/// touch the same device except a snapshot of an origin deleted in the same
/// transaction, which this order makes correct. It also makes abort clean: a
/// transaction that has to be aborted failed while creating, before any
/// delete (the one change that cannot be undone) was posted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transaction {
    id: TransactionId,
    ops: Vec<Operation>,
}

impl Transaction {
    pub fn new(id: TransactionId, ops: Vec<Operation>) -> Result<Self, TransactionError> {
        if id == TransactionId::ZERO {
            return Err(TransactionError::ZeroId);
        }
        if ops.is_empty() {
            return Err(TransactionError::Empty(id));
        }
        let mut touched = BTreeSet::new();
        for op in &ops {
            let target = op.created().or(op.deleted()).expect("every operation has a target");
            if !touched.insert(target) {
                return Err(TransactionError::DeviceTwice { txn: id, device: target });
            }
        }
        let created: BTreeSet<ThinId> = ops.iter().filter_map(Operation::created).collect();
        for op in &ops {
            if let Operation::CreateSnapshot { id: snap, origin } = *op {
                if created.contains(&origin) {
                    return Err(TransactionError::SnapshotOfNewDevice { txn: id, snapshot: snap, origin });
                }
            }
        }
        let (creates, deletes): (Vec<_>, Vec<_>) = ops.into_iter().partition(|op| op.created().is_some());
        let ops = creates.into_iter().chain(deletes).collect();
        Ok(Transaction { id, ops })
    }

    pub fn id(&self) -> TransactionId {
        self.id
    }

    pub fn operations(&self) -> &[Operation] {
        &self.ops
    }

    /// The kernel transaction id this transaction must start from.
    pub fn predecessor(&self) -> TransactionId {
        self.id.predecessor().expect("transaction ids start at 1")
    }

    pub fn created_ids(&self) -> impl Iterator<Item = ThinId> + '_ {
        self.ops.iter().filter_map(Operation::created)
    }

    pub fn deleted_ids(&self) -> impl Iterator<Item = ThinId> + '_ {
        self.ops.iter().filter_map(Operation::deleted)
    }

    /// Origins of this transaction's snapshots, each once, in order.
    pub fn origins(&self) -> Vec<ThinId> {
        let mut seen = BTreeSet::new();
        self.ops
            .iter()
            .filter_map(|op| match *op {
                Operation::CreateSnapshot { origin, .. } => Some(origin),
                _ => None,
            })
            .filter(|o| seen.insert(*o))
            .collect()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransactionError {
    #[error("transaction id 0 is the state of a fresh pool; transactions start at 1")]
    ZeroId,
    #[error("transaction {0} has no operations")]
    Empty(TransactionId),
    #[error("transaction {txn} touches thin device {device} more than once")]
    DeviceTwice { txn: TransactionId, device: ThinId },
    #[error("transaction {txn} snapshots device {origin} into {snapshot}, but {origin} is created by the same transaction")]
    SnapshotOfNewDevice { txn: TransactionId, snapshot: ThinId, origin: ThinId },
}

/// A message to the thin-pool target, as `dmsetup message <pool> 0 ...` would send it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PoolMessage {
    CreateThin { id: ThinId },
    CreateSnap { id: ThinId, origin: ThinId },
    Delete { id: ThinId },
    SetTransactionId { current: TransactionId, new: TransactionId },
    ReserveMetadataSnap,
    ReleaseMetadataSnap,
}

impl fmt::Display for PoolMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PoolMessage::CreateThin { id } => write!(f, "create_thin {id}"),
            PoolMessage::CreateSnap { id, origin } => write!(f, "create_snap {id} {origin}"),
            PoolMessage::Delete { id } => write!(f, "delete {id}"),
            PoolMessage::SetTransactionId { current, new } => write!(f, "set_transaction_id {current} {new}"),
            PoolMessage::ReserveMetadataSnap => f.write_str("reserve_metadata_snap"),
            PoolMessage::ReleaseMetadataSnap => f.write_str("release_metadata_snap"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::t;

    #[test]
    fn creates_go_before_deletes_keeping_their_order() {
        let txn = Transaction::new(
            TransactionId::new(3),
            vec![
                Operation::Delete { id: t(1) },
                Operation::CreateSnapshot { id: t(5), origin: t(2) },
                Operation::CreateThin { id: t(4) },
            ],
        )
        .unwrap();
        assert_eq!(
            txn.operations(),
            &[
                Operation::CreateSnapshot { id: t(5), origin: t(2) },
                Operation::CreateThin { id: t(4) },
                Operation::Delete { id: t(1) },
            ]
        );
        assert_eq!(txn.predecessor(), TransactionId::new(2));
    }

    #[test]
    fn rejects_bad_transactions() {
        let n = TransactionId::new(1);
        assert_eq!(Transaction::new(TransactionId::ZERO, vec![Operation::CreateThin { id: t(1) }]), Err(TransactionError::ZeroId));
        assert_eq!(Transaction::new(n, vec![]), Err(TransactionError::Empty(n)));
        assert!(matches!(
            Transaction::new(n, vec![Operation::CreateThin { id: t(1) }, Operation::Delete { id: t(1) }]),
            Err(TransactionError::DeviceTwice { .. })
        ));
        assert!(matches!(
            Transaction::new(n, vec![Operation::CreateThin { id: t(1) }, Operation::CreateSnapshot { id: t(2), origin: t(1) }]),
            Err(TransactionError::SnapshotOfNewDevice { .. })
        ));
    }

    #[test]
    fn messages_render_as_the_kernel_expects() {
        assert_eq!(PoolMessage::CreateSnap { id: t(7), origin: t(3) }.to_string(), "create_snap 7 3");
        assert_eq!(
            PoolMessage::SetTransactionId { current: TransactionId::new(4), new: TransactionId::new(5) }.to_string(),
            "set_transaction_id 4 5"
        );
    }
}
