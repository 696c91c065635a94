//! `pool_executor::next_status` is the node's half of the protocol: the
//! status it writes after a run of the executor. Pure: the old status, the
//! record and the run's progress in, the new status out.

use csi_node::pool_executor::next_status;
use thin_csi_api::pool::{OperationKind, PendingTransaction, ThinPoolSpec, ThinPoolStatus, TransactionOperation};
use thin_csi_api::{AbortReason, AbortedTransaction, PoolHealth, ThinPool};
use thinpool::executor::{AbortKind, Ended, Progress};
use thinpool::{RecoverError, ThinId, TransactionId};

fn t(n: u64) -> TransactionId {
    TransactionId::new(n)
}

fn pool(pending: &[u64]) -> ThinPool {
    let mut spec = ThinPoolSpec::new("n1", "p", "uuid-1", 0);
    spec.last_assigned_transaction = pending.last().copied().unwrap_or(0);
    spec.pending_transactions = pending
        .iter()
        .map(|&n| PendingTransaction { id: n, operations: vec![TransactionOperation { op: OperationKind::CreateThin, id: ThinId::new(n).unwrap(), origin: None }] })
        .collect();
    ThinPool::new("p", spec)
}

fn aborted(n: u64, reason: AbortReason, message: &str) -> AbortedTransaction {
    AbortedTransaction { id: n, reason, message: message.into() }
}

#[test]
fn a_completed_run_reports_the_last_ended_and_clears_the_error() {
    let old = ThinPoolStatus { finished_transaction: Some(1), last_error: Some("earlier".into()), data_used_bytes: Some(7), ..Default::default() };
    let progress = Progress { ended: vec![(t(2), Ended::Committed), (t(3), Ended::Committed)], kernel_at: t(3), stopped: None };
    let s = next_status(&old, &pool(&[2, 3]), &t(1), &progress);
    assert_eq!((s.finished_transaction, s.kernel_transaction), (Some(3), Some(3)));
    assert_eq!(s.last_error, None);
    assert_eq!(s.health, Some(PoolHealth::Healthy));
    assert_eq!(s.data_used_bytes, Some(7), "fields the run does not own are kept");
}

#[test]
fn nothing_ended_keeps_the_finished_transaction_given() {
    let progress = Progress { ended: vec![], kernel_at: t(4), stopped: None };
    let s = next_status(&ThinPoolStatus::default(), &pool(&[5]), &t(4), &progress);
    assert_eq!((s.finished_transaction, s.kernel_transaction), (Some(4), Some(4)));
}

#[test]
fn aborts_are_listed_with_their_kind_in_order() {
    let progress = Progress {
        ended: vec![
            (t(3), Ended::Aborted { kind: AbortKind::DeviceBusy, reason: "busy".into() }),
            (t(2), Ended::Aborted { kind: AbortKind::NoSpace, reason: "full".into() }),
        ],
        kernel_at: t(3),
        stopped: None,
    };
    let s = next_status(&ThinPoolStatus::default(), &pool(&[2, 3]), &t(1), &progress);
    assert_eq!(s.aborted_transactions, vec![aborted(2, AbortReason::NoSpace, "full"), aborted(3, AbortReason::DeviceBusy, "busy")]);
}

#[test]
fn an_earlier_reason_beats_one_found_again_and_pruned_ones_are_dropped() {
    // 1 was pruned from the record: its abort is no longer listed. 2 is
    // still pending: the reason written before (NoSpace) stays, though
    // the new run found it again only as "reason lost".
    let old = ThinPoolStatus { aborted_transactions: vec![aborted(1, AbortReason::DeviceBusy, "old"), aborted(2, AbortReason::NoSpace, "full")], ..Default::default() };
    let progress = Progress { ended: vec![(t(2), Ended::Aborted { kind: AbortKind::ReasonLost, reason: "lost".into() })], kernel_at: t(2), stopped: None };
    let s = next_status(&old, &pool(&[2]), &t(1), &progress);
    assert_eq!(s.aborted_transactions, vec![aborted(2, AbortReason::NoSpace, "full")]);
}

#[test]
fn a_stopped_run_says_why_and_keeps_the_health() {
    let old = ThinPoolStatus { health: Some(PoolHealth::Unhealthy), ..Default::default() };
    let stopped = RecoverError::KernelAhead { kernel: t(9), last_assigned: t(3) };
    let why = stopped.to_string();
    let progress = Progress { ended: vec![], kernel_at: t(9), stopped: Some(stopped) };
    let s = next_status(&old, &pool(&[3]), &t(2), &progress);
    assert_eq!(s.last_error, Some(why));
    assert_eq!(s.health, Some(PoolHealth::Unhealthy));
    assert_eq!((s.finished_transaction, s.kernel_transaction), (Some(2), Some(9)));
}
