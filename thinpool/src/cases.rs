//! Behavioural cases that run unchanged against the in-memory model (unit
//! tests) and the real kernel thin pool (the VM suite, `e2e/run engine`).
//!
//! Each case returns `Err(why)` naming what differed from what was expected.

use std::collections::{BTreeMap, BTreeSet};

use crate::engine::{abort, commit, recover, CommitError, Outcome, PoolRecord, RecoverError};
use crate::executor::{AbortKind, Ended, Executor, Progress};
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

/// Which thin ids of `ids` are in the pool: an active device is; an inactive
/// one is probed by activating it (ENODATA: absent) and deactivating it. Works
/// on a read-only pool, where listing through a metadata snapshot cannot.
pub fn present<K: Fixture>(s: &mut Session<K>, ids: impl IntoIterator<Item = ThinId>) -> Result<BTreeSet<ThinId>, String> {
    let active: BTreeSet<ThinId> = s.kernel.active_thins().map_err(|e| e.to_string())?.iter().map(|a| a.id).collect();
    let mut found = BTreeSet::new();
    for id in ids {
        if active.contains(&id) {
            found.insert(id);
            continue;
        }
        match s.kernel.activate_thin(id, s.size) {
            Ok(()) => {
                s.kernel.deactivate_thin(id).map_err(|e| format!("deactivate {id} after probing it: {e}"))?;
                found.insert(id);
            }
            Err(KernelError::NoData(_)) => {}
            Err(e) => return Err(format!("probing device {id}: {e}")),
        }
    }
    Ok(found)
}

/// A refusal because the pool cannot take messages (read-only, needs_check,
/// failed), as the executor reports it: typed, not divergence.
fn is_pool_unavailable(stop: &RecoverError) -> bool {
    matches!(stop, RecoverError::Commit(CommitError::PoolUnavailable(_)) | RecoverError::Blocked { source: CommitError::PoolUnavailable(_), .. })
}

/// Most transactions [`metadata_exhaustion_leaves_the_pool_read_only`] tries
/// before it calls the metadata inexhaustible.
pub const EXHAUSTION_MAX_TRANSACTIONS: u64 = 200;

/// What the exhaustion case leaves for the caller's own checks (the VM
/// tears the pool down, runs thin_check and reopens it).
#[derive(Clone, Debug, Default)]
pub struct Exhausted {
    /// The record as the node would hold it: finished up to the kernel, the
    /// transaction that ran out still pending (and the refused one after it).
    pub record: PoolRecord,
    /// Devices of committed transactions: all must be in the pool.
    pub committed: BTreeSet<ThinId>,
    /// Snapshots and the pattern seed each must hold.
    pub seeds: BTreeMap<ThinId, u64>,
    /// How the run that ran out stopped, as text (for the report).
    pub stop: String,
}

/// A pool whose metadata runs out, driven through the node's [`Executor`]:
/// transactions that each snapshot a written origin and create a thin
/// device, with a write to the origin before each (breaking sharing with the
/// earlier snapshots, so metadata grows on the I/O path too), until the pool
/// stops taking them. Expected, as the kernel does it (measured, 6.1): the
/// message whose metadata commit runs out is acknowledged but rolled back,
/// the pool drops to read-only with needs_check and refuses every message
/// after, so the transaction can be neither finished nor aborted. Checks:
/// that transaction is not reported committed (nor aborted unless the abort
/// really ran), the stop is typed (pool unavailable, not divergence), a
/// later transaction is refused the same way and changes nothing, nothing
/// is left suspended, the kernel's transaction id is the last committed
/// one, its devices are the committed ones (plus only creates of the open
/// transaction that committed on their own message), and every snapshot and
/// an untouched device hold their data.
pub fn metadata_exhaustion_leaves_the_pool_read_only<K: Fixture>(s: &mut Session<K>) -> Result<Exhausted, String> {
    let mut node = Executor::fresh_record();
    let mut out = Exhausted { record: PoolRecord { finished: s.last_txn, pending: vec![] }, ..Exhausted::default() };
    let origin = s.new_id();
    let bystander = s.new_id();
    let first = s.txn(vec![Operation::CreateThin { id: origin }, Operation::CreateThin { id: bystander }]);
    out.record.pending.push(first.clone());
    match node.drive(&mut s.kernel, &out.record, &mut ()) {
        Progress { stopped: None, .. } => {}
        p => return Err(format!("the first transaction must commit on a fresh pool (make the metadata larger): {p:?}")),
    }
    finish(&mut out.record, first.id());
    out.committed.extend([origin, bystander]);
    for id in [origin, bystander] {
        s.kernel.activate_thin(id, s.size).map_err(|e| e.to_string())?;
    }
    s.kernel.write_pattern(bystander, 7)?;
    let mut open: Option<Transaction> = None;
    for k in 1..=EXHAUSTION_MAX_TRANSACTIONS {
        let seed = 1000 + k;
        if let Err(e) = s.kernel.write_pattern(origin, seed) {
            // A write can be what runs out first (the kernel then fails it
            // and drops the pool read-only); acceptable only then.
            if usable(s)? {
                return Err(format!("write to origin {origin} failed on a usable pool: {e}"));
            }
        }
        let (snap, thin) = (s.new_id(), s.new_id());
        let txn = s.txn(vec![Operation::CreateSnapshot { id: snap, origin }, Operation::CreateThin { id: thin }]);
        out.record.pending.push(txn.clone());
        let p = node.drive(&mut s.kernel, &out.record, &mut ());
        match (p.ended.as_slice(), &p.stopped) {
            ([(n, Ended::Committed)], None) if *n == txn.id() => {
                finish(&mut out.record, txn.id());
                out.committed.extend([snap, thin]);
                out.seeds.insert(snap, seed);
            }
            // A real ENOSPC on a message of a pool that stays writable is
            // aborted cleanly: that is right too, and ends the fill.
            ([(n, Ended::Aborted { kind: AbortKind::NoSpace, .. })], None) if *n == txn.id() => {
                finish(&mut out.record, txn.id());
                out.stop = format!("transaction {n} aborted for lack of metadata space");
                break;
            }
            ([], Some(stop)) if is_pool_unavailable(stop) => {
                out.stop = stop.to_string();
                open = Some(txn);
                break;
            }
            _ => return Err(format!("transaction {} (fill step {k}): expected committed, aborted for space or refused as pool unavailable, got {p:?}", txn.id())),
        }
    }
    if out.stop.is_empty() {
        return Err(format!("metadata never ran out in {EXHAUSTION_MAX_TRANSACTIONS} transactions"));
    }
    // Nothing more is taken, and the refusal is typed.
    let later = s.new_id();
    let refused = s.txn(vec![Operation::CreateThin { id: later }]);
    out.record.pending.push(refused.clone());
    let p = node.drive(&mut s.kernel, &out.record, &mut ());
    match &p.stopped {
        Some(stop) if open.is_some() && is_pool_unavailable(stop) && p.ended.is_empty() => {}
        // Aborted for space on a writable pool: later transactions may run.
        None if open.is_none() && p.ended.iter().all(|(n, _)| *n == refused.id()) => {
            finish(&mut out.record, refused.id());
            if matches!(p.ended.as_slice(), [(_, Ended::Committed)]) {
                out.committed.insert(later);
            }
        }
        _ => return Err(format!("after the pool ran out ({}), a later transaction gave {p:?}", out.stop)),
    }
    s.expect_kernel_at(out.record.finished)?;
    s.expect_none_suspended()?;
    // Devices: every committed one, and of the rest only creates of the open
    // transaction (each create commits on its own message).
    let mut candidates: BTreeSet<ThinId> = out.committed.clone();
    for t in &out.record.pending {
        candidates.extend(t.created_ids());
    }
    let found = present(s, candidates)?;
    let may: BTreeSet<ThinId> = open.iter().flat_map(|t| t.created_ids()).collect();
    let missing: Vec<_> = out.committed.difference(&found).collect();
    let extra: Vec<_> = found.difference(&out.committed).filter(|id| !may.contains(id)).collect();
    check(missing.is_empty() && extra.is_empty(), format!("pool devices {found:?}: committed ones missing {missing:?}, unexpected {extra:?}"))?;
    // Data: the untouched device and every snapshot.
    s.expect_pattern(bystander, 7, "untouched device")?;
    for (snap, seed) in out.seeds.clone() {
        s.kernel.activate_thin(snap, s.size).map_err(|e| format!("activate snapshot {snap}: {e}"))?;
        let got = s.kernel.read_pattern(snap);
        s.kernel.deactivate_thin(snap).map_err(|e| e.to_string())?;
        check(got.as_ref() == Ok(&seed), format!("snapshot {snap}: read {got:?}, its origin held {seed} when it was taken"))?;
    }
    Ok(out)
}

fn finish(record: &mut PoolRecord, n: TransactionId) {
    record.finished = n;
    record.pending.retain(|t| t.id() > n);
}

fn usable<K: Fixture>(s: &Session<K>) -> Result<bool, String> {
    Ok(s.kernel.pool_status().map_err(|e| e.to_string())?.working().is_some_and(|w| !w.needs_check && w.mode != crate::status::PoolMode::ReadOnly))
}

/// A kernel whose next `set_transaction_id` can be made to fail once, for
/// the commit-point cases (test wrappers implement it; no product code does).
pub trait CommitPointFaults {
    /// The next `set_transaction_id` returns an error. `after_send`: the
    /// message reached the kernel (it moved to `n`) and only the reply was
    /// lost; otherwise it was never sent.
    fn fail_next_commit_point(&mut self, after_send: bool);
}

/// Defect 6 of issue 9: a transient `set_transaction_id` failure is not
/// divergence. Never sent: the run stops (the commit point failed, the
/// transaction stays open), the next run replays it and reports it
/// committed. Sent but the reply lost: the kernel's id read afterwards says
/// it committed, reported at once. Either way: exactly one report, the
/// kernel at `n`, the device there, nothing suspended.
fn transient_commit_point_failure<K: Fixture + CommitPointFaults>(s: &mut Session<K>, after_send: bool) -> CaseResult {
    let origin = s.active_thin()?;
    s.kernel.write_pattern(origin, 31)?;
    let mut node = Executor::fresh_record();
    let (snap, thin) = (s.new_id(), s.new_id());
    let txn = s.txn(vec![Operation::CreateSnapshot { id: snap, origin }, Operation::CreateThin { id: thin }]);
    let n = txn.id();
    let mut record = PoolRecord { finished: txn.predecessor(), pending: vec![txn.clone()] };
    s.kernel.fail_next_commit_point(after_send);
    let mut reports = Vec::new();
    let first = node.drive(&mut s.kernel, &record, &mut ());
    reports.extend(first.ended.clone());
    if after_send {
        check(first.stopped.is_none(), format!("the kernel moved to {n}: expected committed, got {first:?}"))?;
    } else {
        match &first.stopped {
            Some(stop @ RecoverError::Blocked { source: CommitError::CommitPointFailed { .. }, .. }) if !stop.is_divergence() => {}
            other => return Err(format!("expected the run stopped with the commit point failed (not divergence), got {other:?}")),
        }
        s.expect_kernel_at(txn.predecessor())?;
        s.expect_none_suspended()?;
        let retry = node.drive(&mut s.kernel, &record, &mut ());
        check(retry.stopped.is_none(), format!("the retry must finish {n}: {retry:?}"))?;
        reports.extend(retry.ended);
    }
    check(reports == vec![(n, Ended::Committed)], format!("expected {n} reported committed exactly once, got {reports:?}"))?;
    finish(&mut record, n);
    let again = node.drive(&mut s.kernel, &record, &mut ());
    check(again.ended.is_empty() && again.stopped.is_none(), format!("nothing is left to report once {n} is recorded finished, got {again:?}"))?;
    s.expect_kernel_at(n)?;
    s.expect_none_suspended()?;
    let found = present(s, [snap, thin])?;
    check(found == BTreeSet::from([snap, thin]), format!("devices of {n} in the pool: {found:?}, expected {snap} and {thin}"))?;
    s.kernel.activate_thin(snap, s.size).map_err(|e| e.to_string())?;
    s.expect_pattern(snap, 31, "snapshot")?;
    s.cleanup(&[origin, snap, thin])
}

pub fn commit_point_not_sent_is_retried<K: Fixture + CommitPointFaults>(s: &mut Session<K>) -> CaseResult {
    transient_commit_point_failure(s, false)
}

pub fn commit_point_reply_lost_is_committed<K: Fixture + CommitPointFaults>(s: &mut Session<K>) -> CaseResult {
    transient_commit_point_failure(s, true)
}

/// The commit-point cases: they need a kernel wrapped to fail
/// `set_transaction_id` once ([`CommitPointFaults`]).
pub fn commit_point_cases<K: Fixture + CommitPointFaults>() -> Vec<Case<K>> {
    vec![
        ("commit_point_not_sent_is_retried", commit_point_not_sent_is_retried::<K>),
        ("commit_point_reply_lost_is_committed", commit_point_reply_lost_is_committed::<K>),
    ]
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

    /// The model with this many devices' worth of metadata runs out a few
    /// transactions in, as a 128 KiB metadata device does in the VM.
    #[test]
    fn metadata_exhaustion_on_the_model() {
        let mut s = Session::new(ModelKernel::new().with_metadata_capacity(7), 1).unwrap();
        let out = metadata_exhaustion_leaves_the_pool_read_only(&mut s).unwrap_or_else(|why| panic!("{why}"));
        assert!(!out.seeds.is_empty(), "some snapshots committed before the pool ran out");
        assert!(s.kernel.pool_status().unwrap().working().is_some_and(|w| w.needs_check), "as the kernel does");
    }

    #[test]
    fn every_case_passes_on_the_model() {
        let mut s = Session::new(ModelKernel::new(), 1).unwrap();
        for (name, case) in all::<ModelKernel>() {
            case(&mut s).unwrap_or_else(|why| panic!("{name}: {why}"));
            assert_eq!(s.kernel.unsafe_snapshots, 0, "{name}: a snapshot was taken of a running origin");
        }
    }
}
