//! `wait::outcome_in` is the controller's half of the protocol: what a
//! pool object says about one transaction it assigned. Pure: objects in,
//! verdict out; here without an apiserver.

use csi_controller::wait::{outcome, outcome_in, Finished, Subject, WaitError};
use thin_csi_api::pool::{OperationKind, PendingTransaction, ThinPoolSpec, ThinPoolStatus, TransactionOperation};
use thin_csi_api::{AbortReason, AbortedTransaction, PoolHealth, PoolMode, ThinPool};
use thinpool::ThinId;

fn id(n: u32) -> ThinId {
    ThinId::new(n.into()).expect("small ids are valid")
}

/// A pool whose record assigned 1..=`assigned`, with `pending` still
/// listed, and the node's status at `finished`.
fn pool(assigned: u64, pending: &[u64], finished: Option<u64>) -> ThinPool {
    let mut spec = ThinPoolSpec::new("n1", "p", "uuid-1", 0);
    spec.last_assigned_transaction = assigned;
    spec.next_device_id = 10;
    spec.pending_transactions = pending
        .iter()
        .map(|&t| PendingTransaction { id: t, operations: vec![TransactionOperation { op: OperationKind::CreateThin, id: id(t as u32), origin: None }] })
        .collect();
    let mut p = ThinPool::new("p", spec);
    p.metadata.uid = Some("uid-1".into());
    p.status = finished.map(|f| ThinPoolStatus { finished_transaction: Some(f), ..Default::default() });
    p
}

fn aborted(txn: u64, reason: AbortReason) -> AbortedTransaction {
    AbortedTransaction { id: txn, reason, message: "why".into() }
}

#[test]
fn not_finished_yet_is_none() {
    assert_eq!(outcome(&pool(3, &[2, 3], Some(1)), 2).unwrap(), None);
    assert_eq!(outcome(&pool(3, &[1, 2, 3], None), 1).unwrap(), None);
}

#[test]
fn finished_without_an_abort_is_committed() {
    assert_eq!(outcome(&pool(3, &[2, 3], Some(2)), 2).unwrap(), Some(Finished::Committed));
    // Finished from the spec alone: everything before the first pending one.
    assert_eq!(outcome(&pool(3, &[3], None), 1).unwrap(), Some(Finished::Committed));
}

#[test]
fn a_listed_abort_is_reported_with_its_reason() {
    let mut p = pool(2, &[1, 2], Some(2));
    p.status.as_mut().unwrap().aborted_transactions = vec![aborted(2, AbortReason::NoSpace)];
    assert_eq!(outcome(&p, 2).unwrap(), Some(Finished::Aborted(aborted(2, AbortReason::NoSpace))));
    assert_eq!(outcome(&p, 1).unwrap(), Some(Finished::Committed));
}

// A pruned transaction is judged by its tombstone: wait.rs's own tests.

#[test]
fn a_transaction_the_record_does_not_hold_is_unknown() {
    assert!(matches!(outcome(&pool(3, &[], Some(3)), 4), Err(WaitError::TransactionUnknown { txn: 4, last_assigned: 3, .. })));
    // Another uid: a re-created object, whose record never assigned it.
    assert!(matches!(outcome_in(&pool(3, &[3], Some(2)), 3, Some("uid-0"), Subject::Unknown), Err(WaitError::TransactionUnknown { .. })));
    assert_eq!(outcome_in(&pool(3, &[3], Some(2)), 3, Some("uid-1"), Subject::Unknown).unwrap(), None);
}

#[test]
fn an_unhealthy_or_read_only_pool_ends_the_wait() {
    let mut p = pool(2, &[2], Some(1));
    p.status.as_mut().unwrap().health = Some(PoolHealth::Unhealthy);
    p.status.as_mut().unwrap().last_error = Some("diverged".into());
    assert!(matches!(outcome(&p, 2), Err(WaitError::PoolUnhealthy { reason, .. }) if reason == "diverged"));
    let mut p = pool(2, &[2], Some(1));
    p.status.as_mut().unwrap().mode = Some(PoolMode::ReadOnly);
    assert!(matches!(outcome(&p, 2), Err(WaitError::PoolReadOnly { txn: 2, mode: PoolMode::ReadOnly, .. })));
    // A finished transaction is still answered on an unhealthy pool.
    let mut p = pool(2, &[2], Some(2));
    p.status.as_mut().unwrap().health = Some(PoolHealth::Unhealthy);
    assert_eq!(outcome(&p, 2).unwrap(), Some(Finished::Committed));
}
