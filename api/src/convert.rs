//! The pool object's transactions ↔ the engine's [`Transaction`] and
//! [`PoolRecord`].

use thinpool::{Operation, PoolRecord, ThinId, Transaction, TransactionError, TransactionId};

use crate::pool::{OperationKind, PendingTransaction, ThinPool, TransactionOperation};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConversionError {
    #[error("transaction {txn}: createSnapshot of device {id} has no origin")]
    MissingOrigin { txn: u64, id: ThinId },
    #[error("transaction {txn}: {op:?} of device {id} has an origin ({origin}); only createSnapshot takes one")]
    UnexpectedOrigin { txn: u64, op: OperationKind, id: ThinId, origin: ThinId },
    #[error(transparent)]
    Transaction(#[from] TransactionError),
    #[error("pending transactions are not in strictly increasing id order: {previous} then {next}")]
    Order { previous: u64, next: u64 },
    #[error("pool {pool}: finished transaction {finished} is beyond the last assigned one ({assigned})")]
    FinishedBeyondAssigned { pool: String, finished: u64, assigned: u64 },
    #[error("pool {pool}: pending transaction {txn} is beyond the last assigned one ({assigned})")]
    PendingBeyondAssigned { pool: String, txn: u64, assigned: u64 },
}

impl From<Operation> for TransactionOperation {
    fn from(op: Operation) -> Self {
        match op {
            Operation::CreateThin { id } => TransactionOperation { op: OperationKind::CreateThin, id: id.into(), origin: None },
            Operation::CreateSnapshot { id, origin } => {
                TransactionOperation { op: OperationKind::CreateSnapshot, id: id.into(), origin: Some(origin.into()) }
            }
            Operation::Delete { id } => TransactionOperation { op: OperationKind::Delete, id: id.into(), origin: None },
        }
    }
}

impl From<&Transaction> for PendingTransaction {
    fn from(t: &Transaction) -> Self {
        PendingTransaction { id: t.id().get(), operations: t.operations().iter().copied().map(Into::into).collect() }
    }
}

/// One operation of transaction `txn` as the engine's [`Operation`].
pub fn operation(txn: u64, op: &TransactionOperation) -> Result<Operation, ConversionError> {
    let id = op.id;
    match (op.op, op.origin) {
        (OperationKind::CreateSnapshot, Some(origin)) => Ok(Operation::CreateSnapshot { id, origin }),
        (OperationKind::CreateSnapshot, None) => Err(ConversionError::MissingOrigin { txn, id }),
        (kind, Some(origin)) => Err(ConversionError::UnexpectedOrigin { txn, op: kind, id, origin }),
        (OperationKind::CreateThin, None) => Ok(Operation::CreateThin { id }),
        (OperationKind::Delete, None) => Ok(Operation::Delete { id }),
    }
}

impl TryFrom<&PendingTransaction> for Transaction {
    type Error = ConversionError;
    fn try_from(p: &PendingTransaction) -> Result<Self, ConversionError> {
        let ops = p.operations.iter().map(|op| operation(p.id, op)).collect::<Result<Vec<_>, _>>()?;
        Ok(Transaction::new(TransactionId::new(p.id), ops)?)
    }
}

/// The engine's view of a pool: the last finished transaction the node
/// reported (0 if none yet) and the pending transactions after it, in order.
/// Transactions at or below `finished` that the controller has not pruned yet
/// are left out.
pub fn pool_record(pool: &ThinPool) -> Result<PoolRecord, ConversionError> {
    let name = pool.metadata.name.clone().unwrap_or_default();
    let finished = pool.finished_transaction();
    let assigned = pool.spec.last_assigned_transaction;
    if finished > assigned {
        return Err(ConversionError::FinishedBeyondAssigned { pool: name, finished, assigned });
    }
    let mut previous: Option<u64> = None;
    let mut pending = Vec::new();
    for p in &pool.spec.pending_transactions {
        if let Some(prev) = previous {
            if p.id <= prev {
                return Err(ConversionError::Order { previous: prev, next: p.id });
            }
        }
        previous = Some(p.id);
        if p.id > assigned {
            return Err(ConversionError::PendingBeyondAssigned { pool: name, txn: p.id, assigned });
        }
        if p.id > finished {
            pending.push(Transaction::try_from(p)?);
        }
    }
    Ok(PoolRecord { finished: TransactionId::new(finished), pending })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::{ThinPoolSpec, ThinPoolStatus};

    fn t(n: u32) -> ThinId {
        ThinId::new(n.into()).unwrap()
    }

    fn op(kind: OperationKind, id: u32, origin: Option<u32>) -> TransactionOperation {
        TransactionOperation { op: kind, id: t(id), origin: origin.map(t) }
    }

    #[test]
    fn transaction_round_trip() {
        let txn = Transaction::new(
            TransactionId::new(7),
            vec![
                Operation::CreateThin { id: t(1) },
                Operation::CreateSnapshot { id: t(2), origin: t(0) },
                Operation::Delete { id: t(16_777_215) },
            ],
        )
        .unwrap();
        let wire = PendingTransaction::from(&txn);
        assert_eq!(wire.id, 7);
        assert_eq!(
            wire.operations,
            vec![
                op(OperationKind::CreateThin, 1, None),
                op(OperationKind::CreateSnapshot, 2, Some(0)),
                op(OperationKind::Delete, 16_777_215, None)
            ]
        );
        assert_eq!(Transaction::try_from(&wire).unwrap(), txn);
        let json = serde_json::to_value(&wire).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"id": 7, "operations": [
                {"op": "createThin", "id": 1},
                {"op": "createSnapshot", "id": 2, "origin": 0},
                {"op": "delete", "id": 16777215}
            ]})
        );
        let back: PendingTransaction = serde_json::from_value(json).unwrap();
        assert_eq!(back, wire);
    }

    #[test]
    fn bad_wire_transactions_are_refused() {
        let p = |ops| PendingTransaction { id: 3, operations: ops };
        // An id past 24 bits never gets this far: the wire type refuses it.
        let too_big = serde_json::json!({"id": 3, "operations": [{"op": "createThin", "id": 1 << 24}]});
        assert!(serde_json::from_value::<PendingTransaction>(too_big).is_err());
        assert_eq!(
            Transaction::try_from(&p(vec![op(OperationKind::CreateSnapshot, 2, None)])),
            Err(ConversionError::MissingOrigin { txn: 3, id: t(2) })
        );
        assert!(matches!(
            Transaction::try_from(&p(vec![op(OperationKind::Delete, 2, Some(1))])),
            Err(ConversionError::UnexpectedOrigin { .. })
        ));
        assert!(matches!(Transaction::try_from(&p(vec![])), Err(ConversionError::Transaction(TransactionError::Empty(_)))));
        let zero = PendingTransaction { id: 0, operations: vec![op(OperationKind::CreateThin, 1, None)] };
        assert_eq!(Transaction::try_from(&zero), Err(ConversionError::Transaction(TransactionError::ZeroId)));
    }

    fn pool(assigned: u64, pending: &[u64], finished: Option<u64>) -> ThinPool {
        let mut spec = ThinPoolSpec::new("node-a", "pool0", "uuid-1", 0);
        spec.last_assigned_transaction = assigned;
        spec.pending_transactions = pending
            .iter()
            .map(|&id| PendingTransaction { id, operations: vec![op(OperationKind::CreateThin, id as u32, None)] })
            .collect();
        let mut p = ThinPool::new("uuid-1", spec);
        p.status = finished.map(|f| ThinPoolStatus { finished_transaction: Some(f), ..Default::default() });
        p
    }

    #[test]
    fn pool_record_skips_finished_and_checks_order() {
        let r = pool_record(&pool(5, &[3, 4, 5], Some(3))).unwrap();
        assert_eq!(r.finished, TransactionId::new(3));
        assert_eq!(r.pending.iter().map(|t| t.id().get()).collect::<Vec<_>>(), [4, 5]);
        assert_eq!(r.last_assigned(), TransactionId::new(5));

        let fresh = pool_record(&pool(0, &[], None)).unwrap();
        assert_eq!(fresh, PoolRecord { finished: TransactionId::ZERO, pending: vec![] });

        assert!(matches!(pool_record(&pool(5, &[4, 4], None)), Err(ConversionError::Order { .. })));
        assert!(matches!(pool_record(&pool(4, &[5], None)), Err(ConversionError::PendingBeyondAssigned { .. })));
        assert!(matches!(pool_record(&pool(2, &[], Some(3))), Err(ConversionError::FinishedBeyondAssigned { .. })));
    }

    /// Defect 4 of issue 9: a node that created its object and crashed
    /// before any status write leaves a record whose finished transaction
    /// the spec alone gives (the kernel's id at creation), not 0.
    #[test]
    fn finished_is_known_from_the_spec_without_a_status() {
        assert_eq!(pool_record(&pool(7, &[], None)).unwrap().finished, TransactionId::new(7));
        assert_eq!(pool_record(&pool(9, &[8, 9], None)).unwrap().finished, TransactionId::new(7));
        assert_eq!(pool_record(&pool(9, &[8, 9], Some(8))).unwrap().finished, TransactionId::new(8));
    }
}
