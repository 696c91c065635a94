//! The node's executor loop body: bring the kernel up to date with the
//! controller's record. Pure logic over the [`Kernel`]; the node binary
//! calls it whenever its pool object changes, and writes the result back.

use crate::engine::{abort, commit, recover, Observer, Outcome, PoolRecord, RecoverError};
use crate::ids::TransactionId;
use crate::kernel::Kernel;

/// How one transaction ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ended {
    Committed,
    /// Its id was consumed without its effects.
    Aborted { reason: String },
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// Transactions that ended in this call, in order (including ones the
    /// kernel had committed before a crash, whose status was lost).
    pub ended: Vec<(TransactionId, Ended)>,
    /// The kernel's transaction id afterwards.
    pub kernel_at: TransactionId,
    /// Why the run stopped before the end of the record, if it did. A
    /// divergence ([`RecoverError::is_divergence`]) means: mark the pool
    /// unhealthy and send it nothing more.
    pub stopped: Option<RecoverError>,
}

/// Recovers, then commits every pending transaction after the kernel's, in
/// order of transaction id. A transaction that fails before any delete was
/// posted is aborted (its id is consumed, the next one can run); anything
/// else stops the run and is reported, never guessed around.
pub fn drive(kernel: &mut impl Kernel, record: &PoolRecord, observer: &mut impl Observer) -> Progress {
    let mut progress = Progress::default();
    let report = match recover(kernel, record, observer) {
        Ok(report) => report,
        Err(e) => {
            progress.kernel_at = current(kernel).unwrap_or_default();
            progress.stopped = Some(e);
            return progress;
        }
    };
    progress.ended.extend(report.committed_unreported.iter().map(|n| (*n, Ended::Committed)));
    let mut kernel_at = report.kernel_was_at;
    if let Some((n, outcome)) = report.finished {
        progress.ended.push((n, ended(outcome)));
        kernel_at = n;
    }
    for txn in record.pending.iter().filter(|t| t.id() > kernel_at) {
        match commit(kernel, txn, observer) {
            Ok(_) => progress.ended.push((txn.id(), Ended::Committed)),
            Err(e) if e.abortable() => match abort(kernel, txn) {
                Ok(()) => progress.ended.push((txn.id(), Ended::Aborted { reason: e.to_string() })),
                Err(source) => {
                    progress.stopped = Some(RecoverError::Blocked { txn: txn.id(), source });
                    break;
                }
            },
            // Divergence, a collision, a resume failure: stop and report.
            Err(source) => {
                progress.stopped = Some(RecoverError::Blocked { txn: txn.id(), source });
                break;
            }
        }
    }
    progress.kernel_at = current(kernel).unwrap_or(kernel_at);
    progress
}

/// The node's executor across reconciles of one pool.
#[derive(Clone, Debug, Default)]
pub struct Executor {}

impl Executor {
    pub fn drive(&mut self, kernel: &mut impl Kernel, record: &PoolRecord, observer: &mut impl Observer) -> Progress {
        drive(kernel, record, observer)
    }
}

fn ended(outcome: Outcome) -> Ended {
    match outcome {
        Outcome::Committed(_) => Ended::Committed,
        Outcome::Aborted { reason } => Ended::Aborted { reason },
    }
}

fn current(kernel: &impl Kernel) -> Option<TransactionId> {
    kernel.pool_status().ok()?.working().map(|w| w.transaction_id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{t, txn};
    use crate::model::ModelKernel;
    use crate::txn::Operation;

    #[test]
    fn runs_every_pending_transaction_in_order_aborting_failed_creates() {
        let mut k = ModelKernel::new();
        let record = PoolRecord {
            finished: TransactionId::ZERO,
            pending: vec![
                txn(1, vec![Operation::CreateThin { id: t(1) }]),
                txn(2, vec![Operation::CreateSnapshot { id: t(2), origin: t(9) }]), // origin missing
                txn(3, vec![Operation::CreateSnapshot { id: t(3), origin: t(1) }]),
            ],
        };
        let p = drive(&mut k, &record, &mut ());
        assert_eq!(p.stopped, None);
        assert_eq!(p.kernel_at, TransactionId::new(3));
        assert_eq!(p.ended[0], (TransactionId::new(1), Ended::Committed));
        assert!(matches!(&p.ended[1], (n, Ended::Aborted { reason }) if n.get() == 2 && reason.contains("create_snap 2 9")));
        assert_eq!(p.ended[2], (TransactionId::new(3), Ended::Committed));
        assert_eq!(k.devices().collect::<Vec<_>>(), vec![t(1), t(3)]);
        // Running again is a no-op: everything has ended.
        let again = PoolRecord { finished: TransactionId::new(3), pending: vec![] };
        assert_eq!(drive(&mut k, &again, &mut ()).ended, vec![]);
    }

    #[test]
    fn reports_committed_but_unreported_then_continues() {
        let mut k = ModelKernel::new();
        let first = txn(1, vec![Operation::CreateThin { id: t(1) }]);
        commit(&mut k, &first, &mut ()).unwrap();
        let record = PoolRecord { finished: TransactionId::ZERO, pending: vec![first, txn(2, vec![Operation::Delete { id: t(1) }])] };
        let p = drive(&mut k, &record, &mut ());
        assert_eq!(p.ended, vec![(TransactionId::new(1), Ended::Committed), (TransactionId::new(2), Ended::Committed)]);
        assert_eq!(k.devices().count(), 0);
    }

    #[test]
    fn divergence_stops_everything() {
        let mut k = ModelKernel::new();
        k.tamper_transaction_id(TransactionId::new(7));
        let record = PoolRecord { finished: TransactionId::ZERO, pending: vec![txn(1, vec![Operation::CreateThin { id: t(1) }])] };
        let p = drive(&mut k, &record, &mut ());
        assert!(p.stopped.as_ref().is_some_and(RecoverError::is_divergence), "{p:?}");
        assert!(p.ended.is_empty());
        assert_eq!(k.devices().count(), 0, "nothing sent to a diverged pool");
    }
}
