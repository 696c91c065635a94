//! Behavioural cases that run unchanged against the in-memory model (unit
//! tests) and the real kernel thin pool (the VM suite, `e2e/run engine`).
//!
//! Each case returns `Err(why)` naming what differed from what was expected.

use crate::engine::{abort, commit, recover, CommitError, Outcome, PoolRecord, RecoverError};
use crate::ids::{Sectors, ThinId, TransactionId};
use crate::kernel::{Kernel, KernelError};
use crate::txn::{Operation, PoolMessage, Transaction};

/// What a case needs beyond the [`Kernel`]: data I/O on active devices and
/// a way to act behind the engine's back.
pub trait Fixture: Kernel {
    /// Writes a pattern derived from `seed` to an active device (buffered,
    /// no fsync: a snapshot must still see it).
    fn write_pattern(&mut self, id: ThinId, seed: u64) -> Result<(), String>;
    /// The seed of the pattern the device holds.
    fn read_pattern(&mut self, id: ThinId) -> Result<u64, String>;
    /// Holds an active device open (as a mount would) until `release`.
    fn hold_open(&mut self, id: ThinId) -> Result<(), String>;
    fn release(&mut self, id: ThinId) -> Result<(), String>;
    /// Posts a raw message text, as another tool would.
    fn raw_message(&mut self, text: &str) -> Result<(), KernelError>;
}

pub type CaseResult = Result<(), String>;

/// A running sequence of cases on one pool: hands out ids the way the
/// controller does (each id once, transaction ids dense).
pub struct Session<K> {
    pub kernel: K,
    next_id: u32,
    pub last_txn: TransactionId,
    pub size: Sectors,
}

impl<K: Fixture> Session<K> {
    /// Starts on a pool whose kernel transaction id is read now.
    pub fn new(kernel: K, first_id: u32) -> Result<Self, String> {
        let at = kernel.pool_status().map_err(|e| e.to_string())?.working().ok_or("pool failed")?.transaction_id;
        Ok(Session { kernel, next_id: first_id, last_txn: at, size: Sectors(2048 * 16) })
    }

    pub fn new_id(&mut self) -> ThinId {
        let id = ThinId::new(self.next_id.into()).expect("test ids stay small");
        self.next_id += 1;
        id
    }

    pub fn txn(&mut self, ops: Vec<Operation>) -> Transaction {
        self.last_txn = self.last_txn.successor();
        Transaction::new(self.last_txn, ops).expect("cases build valid transactions")
    }

    pub fn commit(&mut self, ops: Vec<Operation>) -> Result<crate::engine::CommitReport, String> {
        let txn = self.txn(ops);
        commit(&mut self.kernel, &txn, &mut ()).map_err(|e| format!("commit {}: {e}", txn.id()))
    }

    /// A new thin device, committed and active.
    pub fn active_thin(&mut self) -> Result<ThinId, String> {
        let id = self.new_id();
        self.commit(vec![Operation::CreateThin { id }])?;
        self.kernel.activate_thin(id, self.size).map_err(|e| e.to_string())?;
        Ok(id)
    }

    fn kernel_txn(&self) -> Result<TransactionId, String> {
        Ok(self.kernel.pool_status().map_err(|e| e.to_string())?.working().ok_or("pool failed")?.transaction_id)
    }

    fn expect_kernel_at(&self, want: TransactionId) -> CaseResult {
        let at = self.kernel_txn()?;
        check(at == want, format!("kernel at transaction {at}, expected {want}"))
    }

    fn expect_none_suspended(&self) -> CaseResult {
        let suspended: Vec<_> = self.kernel.active_thins().map_err(|e| e.to_string())?.into_iter().filter(|t| t.suspended).collect();
        check(suspended.is_empty(), format!("devices left suspended: {suspended:?}"))
    }

    fn expect_pattern(&mut self, id: ThinId, seed: u64, what: &str) -> CaseResult {
        let got = self.kernel.read_pattern(id)?;
        check(got == seed, format!("{what}: device {id} holds pattern {got}, expected {seed}"))
    }

    fn cleanup(&mut self, ids: &[ThinId]) -> CaseResult {
        for id in ids {
            let _ = self.kernel.deactivate_thin(*id);
        }
        self.commit(ids.iter().map(|&id| Operation::Delete { id }).collect()).map(|_| ())
    }
}

fn check(ok: bool, why: String) -> CaseResult {
    if ok {
        Ok(())
    } else {
        Err(why)
    }
}

/// A snapshot holds the origin's data at snapshot time (written without
/// fsync), while the origin keeps changing.
pub fn snapshot_is_point_in_time<K: Fixture>(s: &mut Session<K>) -> CaseResult {
    let origin = s.active_thin()?;
    s.kernel.write_pattern(origin, 11)?;
    let snap = s.new_id();
    let report = s.commit(vec![Operation::CreateSnapshot { id: snap, origin }])?;
    check(report.suspended == vec![origin], format!("suspended {:?}, expected only the origin {origin}", report.suspended))?;
    s.expect_none_suspended()?;
    s.kernel.write_pattern(origin, 12)?;
    s.kernel.activate_thin(snap, s.size).map_err(|e| e.to_string())?;
    s.expect_pattern(snap, 11, "snapshot")?;
    s.expect_pattern(origin, 12, "origin")?;
    s.cleanup(&[origin, snap])
}

/// Several origins snapshotted in one transaction: all suspended together,
/// each snapshot matching its own origin.
pub fn group_snapshot_in_one_transaction<K: Fixture>(s: &mut Session<K>) -> CaseResult {
    let origins = [s.active_thin()?, s.active_thin()?, s.active_thin()?];
    let bystander = s.active_thin()?;
    for (i, o) in origins.iter().enumerate() {
        s.kernel.write_pattern(*o, 100 + i as u64)?;
    }
    let snaps: Vec<ThinId> = origins.iter().map(|_| s.new_id()).collect();
    let ops = origins.iter().zip(&snaps).map(|(&origin, &id)| Operation::CreateSnapshot { id, origin }).collect();
    let report = s.commit(ops)?;
    check(report.suspended == origins, format!("suspended {:?}, expected exactly the origins {origins:?} (not {bystander})", report.suspended))?;
    for (i, (o, snap)) in origins.iter().zip(&snaps).enumerate() {
        s.kernel.write_pattern(*o, 200 + i as u64)?;
        s.kernel.activate_thin(*snap, s.size).map_err(|e| e.to_string())?;
        s.expect_pattern(*snap, 100 + i as u64, "group snapshot")?;
    }
    let all: Vec<ThinId> = origins.iter().chain(&snaps).copied().chain([bystander]).collect();
    s.cleanup(&all)
}

/// Recovery after a crash between `create_snap` and `set_transaction_id`:
/// the replay meets EEXIST and counts it as done.
pub fn replay_counts_eexist_as_done<K: Fixture>(s: &mut Session<K>) -> CaseResult {
    let origin = s.active_thin()?;
    let snap = s.new_id();
    let txn = s.txn(vec![Operation::CreateSnapshot { id: snap, origin }]);
    s.kernel.suspend_thin(origin).map_err(|e| e.to_string())?;
    s.kernel.raw_message(&format!("create_snap {snap} {origin}")).map_err(|e| e.to_string())?;
    // The process "dies" here: origin suspended, kernel still at n-1.
    let record = PoolRecord { finished: txn.predecessor(), pending: vec![txn.clone()] };
    let report = recover(&mut s.kernel, &record, &mut ()).map_err(|e| e.to_string())?;
    check(report.resumed == vec![origin], format!("recovery resumed {:?}, expected the origin", report.resumed))?;
    match &report.finished {
        Some((id, Outcome::Committed(c))) if *id == txn.id() && c.already_done == txn.operations() => {}
        other => return Err(format!("expected {} committed with the snapshot already done, got {other:?}", txn.id())),
    }
    s.expect_kernel_at(txn.id())?;
    s.expect_none_suspended()?;
    s.cleanup(&[origin, snap])
}

/// Recovery after a crash between `delete` and `set_transaction_id`: the
/// replay meets ENODATA and counts it as done.
pub fn replay_counts_enodata_as_done<K: Fixture>(s: &mut Session<K>) -> CaseResult {
    let doomed = s.new_id();
    s.commit(vec![Operation::CreateThin { id: doomed }])?;
    let txn = s.txn(vec![Operation::Delete { id: doomed }]);
    s.kernel.raw_message(&format!("delete {doomed}")).map_err(|e| e.to_string())?;
    let record = PoolRecord { finished: txn.predecessor(), pending: vec![txn.clone()] };
    let report = recover(&mut s.kernel, &record, &mut ()).map_err(|e| e.to_string())?;
    match &report.finished {
        Some((_, Outcome::Committed(c))) if c.already_done == txn.operations() => {}
        other => return Err(format!("expected the delete replayed as done, got {other:?}")),
    }
    s.expect_kernel_at(txn.id())
}

/// A transaction the kernel committed but whose status was never written is
/// reported, not redone.
pub fn committed_but_unreported_is_reported<K: Fixture>(s: &mut Session<K>) -> CaseResult {
    let id = s.new_id();
    let txn = s.txn(vec![Operation::CreateThin { id }]);
    commit(&mut s.kernel, &txn, &mut ()).map_err(|e| e.to_string())?;
    let record = PoolRecord { finished: txn.predecessor(), pending: vec![txn.clone()] };
    let report = recover(&mut s.kernel, &record, &mut ()).map_err(|e| e.to_string())?;
    check(
        report.committed_unreported == vec![txn.id()] && report.finished.is_none(),
        format!("expected {} reported as committed and nothing redone, got {report:?}", txn.id()),
    )?;
    s.cleanup(&[id])
}

/// Someone moved the transaction id behind our back: recovery reports
/// divergence, commit refuses, nothing is guessed.
pub fn foreign_transaction_id_is_divergence<K: Fixture>(s: &mut Session<K>) -> CaseResult {
    let at = s.kernel_txn()?;
    let moved = TransactionId::new(at.get() + 5);
    s.kernel.raw_message(&format!("set_transaction_id {at} {moved}")).map_err(|e| e.to_string())?;
    let record = PoolRecord { finished: at, pending: vec![] };
    match recover(&mut s.kernel, &record, &mut ()) {
        Err(e @ RecoverError::KernelAhead { .. }) if e.is_divergence() => {}
        other => return Err(format!("expected KernelAhead divergence, got {other:?}")),
    }
    let id = s.new_id();
    let txn = s.txn(vec![Operation::CreateThin { id }]);
    match commit(&mut s.kernel, &txn, &mut ()) {
        Err(CommitError::NotAtPredecessor { kernel, .. }) if kernel == moved => {}
        other => return Err(format!("expected commit refused (kernel at {moved}), got {other:?}")),
    }
    // A wrong current id is refused by the kernel itself (EINVAL).
    match s.kernel.raw_message(&format!("set_transaction_id {at} {}", moved.get() + 1)) {
        Err(KernelError::Invalid(_)) => {}
        other => return Err(format!("expected EINVAL for a wrong current transaction id, got {other:?}")),
    }
    // Put it back so later cases run on a consistent pool.
    s.kernel.raw_message(&format!("set_transaction_id {moved} {at}")).map_err(|e| e.to_string())?;
    s.last_txn = at;
    Ok(())
}

/// Deleting a device that is still active fails in the suspend phase, names
/// the device, and posts nothing; the pool stays where it was.
pub fn delete_of_active_device_is_refused<K: Fixture>(s: &mut Session<K>) -> CaseResult {
    let id = s.active_thin()?;
    s.kernel.hold_open(id)?;
    let txn = s.txn(vec![Operation::Delete { id }]);
    match commit(&mut s.kernel, &txn, &mut ()) {
        Err(e @ CommitError::DeleteOfActiveDevice { device, .. }) if device == id && e.to_string().contains(&id.to_string()) => {}
        other => return Err(format!("expected DeleteOfActiveDevice naming {id}, got {other:?}")),
    }
    s.expect_kernel_at(txn.predecessor())?;
    // The transaction id must still be consumed: abort it (nothing posted).
    abort(&mut s.kernel, &txn).map_err(|e| e.to_string())?;
    s.expect_kernel_at(txn.id())?;
    s.kernel.release(id)?;
    s.cleanup(&[id])
}

/// The kernel rules the engine relies on: EEXIST, ENODATA, 24-bit ids.
pub fn kernel_rules_hold<K: Fixture>(s: &mut Session<K>) -> CaseResult {
    let id = s.new_id();
    s.commit(vec![Operation::CreateThin { id }])?;
    let expect = |r: Result<(), KernelError>, want: fn(&KernelError) -> bool, what: &str| match r {
        Err(e) if want(&e) => Ok(()),
        other => Err(format!("{what}: got {other:?}")),
    };
    expect(s.kernel.message(&PoolMessage::CreateThin { id }), |e| matches!(e, KernelError::AlreadyExists(_)), "create of a used id must be EEXIST")?;
    let missing = s.new_id();
    expect(s.kernel.message(&PoolMessage::Delete { id: missing }), |e| matches!(e, KernelError::NoData(_)), "delete of a missing id must be ENODATA")?;
    expect(s.kernel.raw_message("create_thin 16777216"), |e| matches!(e, KernelError::Invalid(_)), "id 2^24 must be EINVAL")?;
    s.kernel.raw_message("create_thin 16777215").map_err(|e| format!("id 2^24-1 must be accepted: {e}"))?;
    s.kernel.raw_message("delete 16777215").map_err(|e| e.to_string())?;
    s.cleanup(&[id])
}

/// A create that fails for real (origin missing) is aborted by recovery:
/// the id is consumed, nothing of it stays.
pub fn failed_create_is_aborted<K: Fixture>(s: &mut Session<K>) -> CaseResult {
    let made = s.new_id();
    let snap = s.new_id();
    let missing = s.new_id();
    let txn = s.txn(vec![Operation::CreateThin { id: made }, Operation::CreateSnapshot { id: snap, origin: missing }]);
    match commit(&mut s.kernel, &txn, &mut ()) {
        Err(e @ CommitError::Message { .. }) if e.abortable() => {}
        other => return Err(format!("expected an abortable message failure, got {other:?}")),
    }
    let record = PoolRecord { finished: txn.predecessor(), pending: vec![txn.clone()] };
    match recover(&mut s.kernel, &record, &mut ()).map_err(|e| e.to_string())?.finished {
        Some((_, Outcome::Aborted { .. })) => {}
        other => return Err(format!("expected the transaction aborted, got {other:?}")),
    }
    s.expect_kernel_at(txn.id())?;
    match s.kernel.message(&PoolMessage::Delete { id: made }) {
        Err(KernelError::NoData(_)) => Ok(()),
        other => Err(format!("the aborted create of {made} must be undone; delete gave {other:?}")),
    }
}

pub type Case<K> = (&'static str, fn(&mut Session<K>) -> CaseResult);

/// Every case, in a fixed order; the real-kernel suite and the unit tests run this list.
pub fn all<K: Fixture>() -> Vec<Case<K>> {
    vec![
        ("kernel_rules_hold", kernel_rules_hold::<K>),
        ("snapshot_is_point_in_time", snapshot_is_point_in_time::<K>),
        ("group_snapshot_in_one_transaction", group_snapshot_in_one_transaction::<K>),
        ("replay_counts_eexist_as_done", replay_counts_eexist_as_done::<K>),
        ("replay_counts_enodata_as_done", replay_counts_enodata_as_done::<K>),
        ("committed_but_unreported_is_reported", committed_but_unreported_is_reported::<K>),
        ("delete_of_active_device_is_refused", delete_of_active_device_is_refused::<K>),
        ("failed_create_is_aborted", failed_create_is_aborted::<K>),
        ("foreign_transaction_id_is_divergence", foreign_transaction_id_is_divergence::<K>),
    ]
}

impl Fixture for crate::model::ModelKernel {
    fn write_pattern(&mut self, id: ThinId, seed: u64) -> Result<(), String> {
        self.write(id, seed).map_err(|e| e.to_string())
    }
    fn read_pattern(&mut self, id: ThinId) -> Result<u64, String> {
        if self.active_thins().map_err(|e| e.to_string())?.iter().all(|t| t.id != id) {
            return Err(format!("device {id} is not active"));
        }
        self.content(id).ok_or_else(|| format!("device {id} does not exist"))
    }
    fn hold_open(&mut self, id: ThinId) -> Result<(), String> {
        self.open(id).map_err(|e| e.to_string())
    }
    fn release(&mut self, id: ThinId) -> Result<(), String> {
        self.close(id).map_err(|e| e.to_string())
    }
    fn raw_message(&mut self, text: &str) -> Result<(), KernelError> {
        self.message_text(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ModelKernel;

    #[test]
    fn every_case_passes_on_the_model() {
        let mut s = Session::new(ModelKernel::new(), 1).unwrap();
        for (name, case) in all::<ModelKernel>() {
            case(&mut s).unwrap_or_else(|why| panic!("{name}: {why}"));
            assert_eq!(s.kernel.unsafe_snapshots, 0, "{name}: a snapshot was taken of a running origin");
        }
    }
}
