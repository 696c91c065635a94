//! The node's executor loop body: bring the kernel up to date with the
//! controller's record. Pure logic over the [`Kernel`]; the node binary
//! calls it whenever its pool object changes, and writes the result back.

use std::collections::BTreeMap;

use crate::engine::{abort, commit, reconcile, CommitError, Observer, Outcome, PoolRecord, RecoverError};
use crate::ids::TransactionId;
use crate::kernel::{Kernel, KernelError};

/// Why a transaction was aborted, as a kind the controller maps to a gRPC
/// code (the text says the rest).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AbortKind {
    /// Pool metadata has no room for another device (ENOSPC).
    NoSpace,
    /// A device to delete is open (mounted or held).
    DeviceBusy,
    /// A snapshot's origin is not in the pool (ENODATA).
    OriginMissing,
    /// An origin would not suspend (its filesystem did not freeze).
    SuspendFailed,
    /// Found aborted after a crash: the report, and its reason, were lost.
    ReasonLost,
    Other,
}

impl AbortKind {
    pub fn of(e: &CommitError) -> AbortKind {
        match e {
            CommitError::DeleteOfActiveDevice { .. } => AbortKind::DeviceBusy,
            CommitError::Suspend { .. } => AbortKind::SuspendFailed,
            CommitError::Message { source: KernelError::NoSpace(_), .. } => AbortKind::NoSpace,
            CommitError::Message { source: KernelError::NoData(_), .. } => AbortKind::OriginMissing,
            CommitError::Message { source: KernelError::Busy(_), .. } => AbortKind::DeviceBusy,
            _ => AbortKind::Other,
        }
    }
}

/// How one transaction ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ended {
    Committed,
    /// Its id was consumed without its effects.
    Aborted { kind: AbortKind, reason: String },
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// Transactions that ended in this call, in order (including ones the
    /// kernel had ended before a crash, whose status was lost).
    pub ended: Vec<(TransactionId, Ended)>,
    /// The kernel's transaction id afterwards.
    pub kernel_at: TransactionId,
    /// Why the run stopped before the end of the record, if it did. A
    /// divergence ([`RecoverError::is_divergence`]) means: mark the pool
    /// unhealthy and send it nothing more.
    pub stopped: Option<RecoverError>,
}

/// The node's executor for one pool, kept across reconciles by one process.
///
/// It remembers whether the transaction after the kernel's may have been
/// started before: true for a new process (an earlier one may have died
/// mid-transaction) and after any run that stopped; false once a run
/// completed. Only then does a transaction run as a replay (EEXIST =
/// done); otherwise it is a first attempt, where EEXIST is a collision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Executor {
    replay_next: bool,
    /// How the transactions this process ended ended, until the record
    /// says they are finished: a report that was lost is then repeated
    /// (with its real reason) without probing the kernel's devices.
    ended: BTreeMap<TransactionId, Ended>,
}

impl Default for Executor {
    /// The executor of a process that just started.
    fn default() -> Self {
        Executor { replay_next: true, ended: BTreeMap::new() }
    }
}

impl Executor {
    /// The executor of a process that knows nothing of this record was ever
    /// attempted (it created the record itself).
    pub fn fresh_record() -> Self {
        Executor { replay_next: false, ended: BTreeMap::new() }
    }

    /// Whether the next run replays the transaction after the kernel's.
    pub fn replays_next(&self) -> bool {
        self.replay_next
    }

    /// Reconciles, then commits every pending transaction after the
    /// kernel's, in order. A transaction that fails before any delete was
    /// posted is aborted (its id is consumed, the next one can run);
    /// anything else stops the run and is reported, never guessed around.
    pub fn drive(&mut self, kernel: &mut impl Kernel, record: &PoolRecord, observer: &mut impl Observer) -> Progress {
        self.ended.retain(|n, _| *n > record.finished);
        let known: BTreeMap<TransactionId, bool> = self.ended.iter().map(|(n, e)| (*n, *e == Ended::Committed)).collect();
        let mut progress = run(kernel, record, self.replay_next, &known, observer);
        self.replay_next = progress.stopped.is_some();
        if progress.ended.is_empty() && progress.stopped.as_ref().is_some_and(|s| !s.is_divergence()) {
            // The run stopped before it could judge anything (a read-only
            // pool): what this process saw end, in order from the record's
            // finished one and no further than the kernel, is still true and
            // its report may have been lost.
            let mut n = record.finished;
            while let Some(e) = self.ended.get(&TransactionId::new(n.get() + 1)).filter(|_| n.get() < progress.kernel_at.get()) {
                n = TransactionId::new(n.get() + 1);
                progress.ended.push((n, e.clone()));
            }
        }
        for (n, e) in progress.ended.iter_mut() {
            match self.ended.get(n) {
                // Reported again after a lost status write: say what we saw.
                Some(seen) => *e = seen.clone(),
                None => {
                    self.ended.insert(*n, e.clone());
                }
            }
        }
        progress
    }
}

/// One run of a process that just started (replays the transaction after
/// the kernel's).
pub fn drive(kernel: &mut impl Kernel, record: &PoolRecord, observer: &mut impl Observer) -> Progress {
    Executor::default().drive(kernel, record, observer)
}

fn run(kernel: &mut impl Kernel, record: &PoolRecord, replay: bool, known: &BTreeMap<TransactionId, bool>, observer: &mut impl Observer) -> Progress {
    let mut progress = Progress::default();
    let report = match reconcile(kernel, record, replay, known, observer) {
        Ok(report) => report,
        Err(e) => {
            progress.kernel_at = current(kernel).unwrap_or_default();
            progress.stopped = Some(e);
            return progress;
        }
    };
    let mut unreported: Vec<(TransactionId, Ended)> = report.committed_unreported.iter().map(|n| (*n, Ended::Committed)).collect();
    unreported.extend(report.aborted_unreported.iter().map(|n| {
        (*n, Ended::Aborted { kind: AbortKind::ReasonLost, reason: format!("transaction {n} was found aborted after a restart; its reason was not recorded") })
    }));
    unreported.sort_by_key(|(n, _)| *n);
    progress.ended.extend(unreported);
    let mut kernel_at = report.kernel_was_at;
    if let Some((n, outcome)) = report.finished {
        progress.ended.push((n, ended(outcome)));
        kernel_at = n;
    }
    for txn in record.pending.iter().filter(|t| t.id() > kernel_at) {
        match commit(kernel, txn, observer) {
            Ok(_) => progress.ended.push((txn.id(), Ended::Committed)),
            Err(e) if e.abortable() => match abort(kernel, txn) {
                Ok(()) => progress.ended.push((txn.id(), Ended::Aborted { kind: AbortKind::of(&e), reason: e.to_string() })),
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

fn ended(outcome: Outcome) -> Ended {
    match outcome {
        Outcome::Committed(_) => Ended::Committed,
        Outcome::Aborted { kind, reason } => Ended::Aborted { kind, reason },
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
    use crate::txn::{Operation, PoolMessage};

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
        assert!(matches!(&p.ended[1], (n, Ended::Aborted { kind: AbortKind::OriginMissing, reason }) if n.get() == 2 && reason.contains("create_snap 2 9")));
        assert_eq!(p.ended[2], (TransactionId::new(3), Ended::Committed));
        assert_eq!(k.devices().collect::<Vec<_>>(), vec![t(1), t(3)]);
        // Running again is a no-op: everything has ended.
        let again = PoolRecord { finished: TransactionId::new(3), pending: vec![] };
        assert_eq!(drive(&mut k, &again, &mut ()).ended, vec![]);
    }

    /// Issue 10, item 2: in steady state a transaction asks the kernel only
    /// about the devices it names, never lists every active device.
    #[test]
    fn steady_state_transactions_never_list_every_active_device() {
        let mut k = ModelKernel::new();
        let mut node = Executor::default();
        let creates: Vec<crate::Transaction> = (1..=50u32).map(|i| txn(u64::from(i), vec![Operation::CreateThin { id: t(i) }])).collect();
        let record = PoolRecord { finished: TransactionId::ZERO, pending: creates };
        assert_eq!(node.drive(&mut k, &record, &mut ()).stopped, None);
        for i in 1..=50 {
            k.activate_thin(t(i), crate::ids::Sectors(8)).unwrap();
        }
        let before = k.full_listings();
        let mut finished = TransactionId::new(50);
        for (n, op) in [
            (51, Operation::CreateSnapshot { id: t(51), origin: t(7) }),
            (52, Operation::Delete { id: t(51) }),
            (53, Operation::CreateThin { id: t(53) }),
            (54, Operation::CreateSnapshot { id: t(54), origin: t(99) }), // origin missing: aborted
        ] {
            let record = PoolRecord { finished, pending: vec![txn(n, vec![op])] };
            let p = node.drive(&mut k, &record, &mut ());
            assert_eq!(p.stopped, None, "{p:?}");
            finished = TransactionId::new(n);
        }
        assert_eq!(k.full_listings(), before, "a steady-state transaction listed every active device");
        assert_eq!(k.unsafe_snapshots, 0, "the active origin was suspended for its snapshot");
        // A new process (a replay may follow a crash) does list them once, to thaw.
        let mut restarted = Executor::default();
        restarted.drive(&mut k, &PoolRecord { finished, pending: vec![] }, &mut ());
        assert!(k.full_listings() > before);
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

    /// Defect 1 of issue 9: an abort whose status write was lost must be
    /// reported aborted on the next run, not committed because the kernel
    /// moved past it.
    #[test]
    fn an_abort_whose_report_was_lost_is_reported_aborted() {
        let mut k = ModelKernel::new();
        let record = PoolRecord {
            finished: TransactionId::ZERO,
            pending: vec![txn(1, vec![Operation::CreateThin { id: t(1) }]), txn(2, vec![Operation::CreateSnapshot { id: t(2), origin: t(9) }])],
        };
        let mut node = Executor::default();
        let first = node.drive(&mut k, &record, &mut ());
        assert!(matches!(first.ended[1], (_, Ended::Aborted { .. })));
        // The status write was lost: the same record again. This process
        // remembers why; a new one finds it aborted from the kernel's devices.
        for (mut executor, kind) in [(node, AbortKind::OriginMissing), (Executor::default(), AbortKind::ReasonLost)] {
            let again = executor.drive(&mut k, &record, &mut ());
            assert_eq!(again.stopped, None);
            assert_eq!(again.ended[0], (TransactionId::new(1), Ended::Committed));
            assert!(matches!(&again.ended[1], (n, Ended::Aborted { kind: k, .. }) if n.get() == 2 && *k == kind), "{again:?}");
        }
        // A delete refused (device open), its report lost: aborted, device kept.
        k.activate_thin(t(1), crate::ids::Sectors(8)).unwrap();
        k.open(t(1)).unwrap();
        let record = PoolRecord { finished: TransactionId::new(2), pending: vec![txn(3, vec![Operation::Delete { id: t(1) }])] };
        assert!(matches!(Executor::default().drive(&mut k, &record, &mut ()).ended[0], (_, Ended::Aborted { kind: AbortKind::DeviceBusy, .. })));
        assert!(matches!(Executor::default().drive(&mut k, &record, &mut ()).ended[0], (_, Ended::Aborted { kind: AbortKind::ReasonLost, .. })));
        assert_eq!(k.devices().collect::<Vec<_>>(), vec![t(1)]);
    }

    /// Found by the fault search (three requests, no fault): the pool went
    /// read-only (metadata full) in the run that aborted a transaction, and
    /// the node's next run, on the same record (its status write not yet
    /// seen), reported nothing: its status said the abort had not happened
    /// and patched the object back. What this process saw end is reported
    /// again on a pool that can take no transaction, as on any other.
    #[test]
    fn a_read_only_pool_still_reports_what_ended() {
        let mut k = ModelKernel::new().with_metadata_capacity(0);
        let record = PoolRecord {
            finished: TransactionId::ZERO,
            pending: vec![txn(1, vec![Operation::CreateSnapshot { id: t(2), origin: t(9) }]), txn(2, vec![Operation::CreateThin { id: t(1) }])],
        };
        let mut node = Executor::default();
        let first = node.drive(&mut k, &record, &mut ());
        assert!(matches!(&first.ended[..], [(n, Ended::Aborted { kind: AbortKind::OriginMissing, .. })] if n.get() == 1), "{first:?}");
        assert!(first.stopped.is_some(), "metadata full: the pool is read-only");
        let again = node.drive(&mut k, &record, &mut ());
        assert_eq!(again.ended, first.ended);
        assert_eq!(again.kernel_at, TransactionId::new(1));
        assert!(again.stopped.is_some());
    }

    /// Defect 2 of issue 9: in steady state a transaction runs as a first
    /// attempt, so a device the record does not know is a collision (the
    /// pool diverged), never "already done".
    #[test]
    fn a_steady_state_transaction_is_a_first_attempt() {
        let mut k = ModelKernel::new();
        let mut node = Executor::default();
        let one = PoolRecord { finished: TransactionId::ZERO, pending: vec![txn(1, vec![Operation::CreateThin { id: t(1) }])] };
        assert_eq!(node.drive(&mut k, &one, &mut ()).stopped, None);
        assert!(!node.replays_next());
        k.message(&PoolMessage::CreateThin { id: t(5) }).unwrap(); // a device the record does not know
        let two = PoolRecord { finished: TransactionId::new(1), pending: vec![txn(2, vec![Operation::CreateThin { id: t(5) }])] };
        let p = node.drive(&mut k, &two, &mut ());
        assert!(p.stopped.as_ref().is_some_and(RecoverError::is_divergence), "{p:?}");
        assert_eq!(k.transaction_id(), TransactionId::new(1));
    }

    /// Defect 6 of issue 9: a transient failure of the commit point is not
    /// divergence; the transaction is replayed and commits.
    #[test]
    fn a_transient_commit_point_failure_is_retried_not_divergence() {
        let mut k = ModelKernel::new();
        let mut node = Executor::default();
        let record = PoolRecord { finished: TransactionId::ZERO, pending: vec![txn(1, vec![Operation::CreateThin { id: t(1) }])] };
        k.fail_next_set_transaction_id();
        let p = node.drive(&mut k, &record, &mut ());
        let stop = p.stopped.expect("the run stops");
        assert!(!stop.is_divergence(), "{stop}");
        assert!(node.replays_next());
        let p = node.drive(&mut k, &record, &mut ());
        assert_eq!(p.ended, vec![(TransactionId::new(1), Ended::Committed)]);
    }

    /// Defect 7 of issue 9: metadata exhaustion makes the pool read-only, as
    /// in the kernel: the transaction cannot be aborted and is reported
    /// blocked (not divergence, not aborted, not committed).
    #[test]
    fn metadata_exhaustion_blocks_the_pool() {
        let mut k = ModelKernel::new().with_metadata_capacity(1);
        let record = PoolRecord {
            finished: TransactionId::ZERO,
            pending: vec![txn(1, vec![Operation::CreateThin { id: t(1) }]), txn(2, vec![Operation::CreateThin { id: t(2) }])],
        };
        let p = Executor::default().drive(&mut k, &record, &mut ());
        assert_eq!(p.ended, vec![(TransactionId::new(1), Ended::Committed)]);
        let stop = p.stopped.expect("blocked");
        assert!(!stop.is_divergence(), "{stop}");
        assert_eq!(k.transaction_id(), TransactionId::new(1));
        assert!(k.pool_status().unwrap().working().is_some_and(|w| w.mode == crate::status::PoolMode::ReadOnly));
    }
}
