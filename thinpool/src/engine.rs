//! Commit and recovery of pool transactions.
//!
//! A transaction `n` commits as: suspend the active origins of its snapshots
//! (the only phase allowed to fail) → post its operations in order →
//! `set_transaction_id n-1 n` (the commit point) → resume every suspended
//! origin, on every path. The kernel's transaction id is the truth about
//! what committed; [`recover`] reconciles it with the controller's record.

use std::collections::BTreeMap;

use tracing::{debug, error, info, warn};

use crate::ids::{ThinId, TransactionId};
use crate::kernel::{Kernel, KernelError};
use crate::status::{PoolMode, PoolStatus};
use crate::txn::{Operation, PoolMessage, Transaction};

/// The phase boundaries of a commit, reported to an [`Observer`] (metrics,
/// logs, and crash tests that kill the process exactly there).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Boundary {
    /// Preconditions checked, nothing done yet.
    Start,
    /// Every origin is suspended; no message posted yet.
    Suspended,
    /// Operation `index` (0-based, in posting order) has been posted.
    Posted { index: usize },
    /// `set_transaction_id n-1 n` succeeded: the transaction committed.
    TransactionIdSet,
    /// Every suspended origin is resumed.
    Resumed,
}

pub trait Observer {
    fn reached(&mut self, txn: TransactionId, boundary: Boundary);
}

/// No observation.
impl Observer for () {
    fn reached(&mut self, _: TransactionId, _: Boundary) {}
}

impl<F: FnMut(TransactionId, Boundary)> Observer for F {
    fn reached(&mut self, txn: TransactionId, boundary: Boundary) {
        self(txn, boundary)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommitReport {
    pub id: TransactionId,
    /// Origins suspended (and resumed) around the messages.
    pub suspended: Vec<ThinId>,
    /// Operations a replay found already done (EEXIST / ENODATA).
    pub already_done: Vec<Operation>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommitError {
    #[error("pool cannot take transactions: {0}")]
    PoolUnavailable(String),
    #[error("transaction {txn} needs the pool at {}, but the kernel is at {kernel}", txn.predecessor().map_or(0, |p| p.get()))]
    NotAtPredecessor { txn: TransactionId, kernel: TransactionId },
    #[error("transaction {txn} deletes thin device {device}, which is still active on this node (open count {open_count}); deactivate it first")]
    DeleteOfActiveDevice { txn: TransactionId, device: ThinId, open_count: u32 },
    #[error("transaction {txn}: suspending or deactivating device {device} failed, nothing was posted: {source}")]
    Suspend { txn: TransactionId, device: ThinId, source: KernelError },
    #[error("transaction {txn}: `{op}` failed after {posted} operation(s) had been posted: {source}")]
    Message { txn: TransactionId, op: Operation, posted: usize, source: KernelError },
    #[error("transaction {txn}: `{op}` found device id {id} already in the pool: the pool and the allocation record disagree")]
    IdCollision { txn: TransactionId, op: Operation, id: ThinId },
    #[error("transaction {txn}: the kernel refused set_transaction_id {} {txn}; its transaction id moved behind our back: {source}", txn.predecessor().map_or(0, |p| p.get()))]
    Diverged { txn: TransactionId, source: KernelError },
    #[error("transaction {txn}: set_transaction_id {} {txn} failed and the kernel stayed at {}; the transaction stays open: {source}", txn.predecessor().map_or(0, |p| p.get()), txn.predecessor().map_or(0, |p| p.get()))]
    CommitPointFailed { txn: TransactionId, source: KernelError },
    #[error("transaction {txn} ({}): resuming {devices:?} failed: {source}", if *committed { "committed" } else { "not committed" })]
    ResumeFailed { txn: TransactionId, committed: bool, devices: Vec<ThinId>, source: KernelError },
    #[error("reading pool state: {0}")]
    Kernel(#[from] KernelError),
}

impl CommitError {
    /// True when the failure left no delete of the transaction posted, so
    /// [`abort`] can undo its partial effects and consume its id cleanly.
    pub fn abortable(&self) -> bool {
        match self {
            CommitError::DeleteOfActiveDevice { .. } | CommitError::Suspend { .. } => true,
            CommitError::Message { op, .. } => op.created().is_some(),
            _ => false,
        }
    }
}

/// How a replay treats the kernel's "already" errors.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    /// First attempt: EEXIST means the allocation is wrong.
    Fresh,
    /// Re-running a transaction the kernel may have partly applied: EEXIST on
    /// a create and ENODATA on a delete of this transaction's ids mean done.
    Replay,
}

/// Commits `txn` on a pool the kernel reports at `txn.id() - 1`.
pub fn commit(kernel: &mut impl Kernel, txn: &Transaction, observer: &mut impl Observer) -> Result<CommitReport, CommitError> {
    run(kernel, txn, Mode::Fresh, observer)
}

fn usable_status(kernel: &impl Kernel) -> Result<TransactionId, CommitError> {
    let status = kernel.pool_status()?;
    match unusable(&status) {
        Some(why) => Err(CommitError::PoolUnavailable(why.into())),
        None => Ok(status.working().expect("a failed pool is unusable").transaction_id),
    }
}

/// Why a pool with this status takes no message, if it takes none.
fn unusable(status: &PoolStatus) -> Option<&'static str> {
    match status {
        PoolStatus::Failed => Some("the kernel reports the pool failed"),
        PoolStatus::Working(w) if w.needs_check => Some("pool metadata needs_check is set"),
        PoolStatus::Working(w) if w.mode == PoolMode::ReadOnly => Some("pool is read-only"),
        // Out of data space still takes metadata changes: deletes free space.
        PoolStatus::Working(_) => None,
    }
}

/// A message failed: if the pool is unusable now, that is the error (an
/// earlier message's metadata commit may have run out of space, which the
/// kernel acknowledged and then rolled back, dropping the pool read-only).
fn pool_went_unusable(kernel: &impl Kernel, txn: TransactionId, what: &str, source: &KernelError) -> Option<CommitError> {
    let why = unusable(&kernel.pool_status().ok()?)?;
    warn!(%txn, %what, error = %source, why, "the pool became unusable during the transaction");
    Some(CommitError::PoolUnavailable(format!("transaction {txn}: `{what}` failed ({source}): {why}; the transaction stays open")))
}

fn run(kernel: &mut impl Kernel, txn: &Transaction, mode: Mode, observer: &mut impl Observer) -> Result<CommitReport, CommitError> {
    let n = txn.id();
    let kernel_at = usable_status(kernel)?;
    if kernel_at != txn.predecessor() {
        return Err(CommitError::NotAtPredecessor { txn: n, kernel: kernel_at });
    }
    // Each device the transaction names is looked up by itself: the work
    // grows with the transaction, not with the devices active on the node.
    // A device to delete must be inactive. One still active but not open
    // (nothing mounts or holds it) is deactivated here; an open one fails.
    for id in txn.deleted_ids() {
        if let Some(a) = kernel.active_thin(id)? {
            if a.open_count > 0 {
                return Err(CommitError::DeleteOfActiveDevice { txn: n, device: id, open_count: a.open_count });
            }
            kernel.deactivate_thin(id).map_err(|source| CommitError::Suspend { txn: n, device: id, source })?;
            info!(txn = %n, device = %id, "deactivated a device to be deleted");
        }
    }
    let mut active_origins = Vec::new();
    for origin in txn.origins() {
        if kernel.active_thin(origin)?.is_some() {
            active_origins.push(origin);
        }
    }
    observer.reached(n, Boundary::Start);

    let mut suspended = Vec::new();
    for origin in active_origins {
        if let Err(source) = kernel.suspend_thin(origin) {
            resume_all(kernel, n, &suspended, false)?;
            return Err(CommitError::Suspend { txn: n, device: origin, source });
        }
        suspended.push(origin);
    }
    observer.reached(n, Boundary::Suspended);

    let outcome = post(kernel, txn, mode, observer);
    let committed = outcome.is_ok();
    resume_all(kernel, n, &suspended, committed)?;
    let already_done = outcome?;
    observer.reached(n, Boundary::Resumed);
    Ok(CommitReport { id: n, suspended, already_done })
}

/// The message phase: operations in order, then the commit point.
fn post(kernel: &mut impl Kernel, txn: &Transaction, mode: Mode, observer: &mut impl Observer) -> Result<Vec<Operation>, CommitError> {
    let n = txn.id();
    let mut already_done = Vec::new();
    for (index, op) in txn.operations().iter().enumerate() {
        match (kernel.message(&op.message()), mode, op) {
            (Ok(()), _, _) => {}
            (Err(KernelError::AlreadyExists(_)), Mode::Replay, op) if op.created().is_some() => already_done.push(*op),
            (Err(KernelError::NoData(_)), Mode::Replay, Operation::Delete { .. }) => already_done.push(*op),
            (Err(KernelError::AlreadyExists(_)), Mode::Fresh, op) if op.created().is_some() => {
                return Err(CommitError::IdCollision { txn: n, op: *op, id: op.created().unwrap() });
            }
            (Err(source), _, op) => {
                return Err(pool_went_unusable(kernel, n, &op.to_string(), &source).unwrap_or(CommitError::Message { txn: n, op: *op, posted: index, source }))
            }
        }
        observer.reached(n, Boundary::Posted { index });
    }
    set_transaction_id(kernel, txn)?;
    observer.reached(n, Boundary::TransactionIdSet);
    Ok(already_done)
}

/// The commit point, `set_transaction_id n-1 n`, judged by the pool's
/// status read afterwards, success or failure. Measured on the real kernel
/// (`e2e/run engine`, `commit-rollback`): the kernel acknowledges a message
/// before committing metadata; when that commit runs out of space it aborts
/// the metadata transaction (the message is undone), sets needs_check and
/// drops the pool read-only, yet its status keeps the transaction id the
/// message set until the pool is reloaded. So with needs_check set nothing
/// can be concluded: the transaction stays open (`PoolUnavailable`) and
/// recovery decides once the pool is repaired and reopened. Otherwise: at
/// `n` it took effect (a lost reply is still a commit); still at `n-1`,
/// transient (replayed later), or not taken if the pool went read-only;
/// anywhere else the id moved behind our back, which is divergence.
fn set_transaction_id(kernel: &mut impl Kernel, txn: &Transaction) -> Result<(), CommitError> {
    let n = txn.id();
    let set = PoolMessage::SetTransactionId { current: txn.predecessor(), new: n };
    let sent = kernel.message(&set);
    let status = kernel.pool_status().ok();
    let at = status.as_ref().and_then(|s| s.working().map(|w| w.transaction_id));
    let aborted = status.as_ref().is_some_and(|s| s.working().is_none_or(|w| w.needs_check));
    let source = match sent {
        _ if at == Some(n) && !aborted => return Ok(()),
        Ok(()) => KernelError::Other { context: set.to_string(), detail: format!("acknowledged, but the pool reports transaction {at:?} afterwards") },
        Err(e) => e,
    };
    if let Some(why) = status.as_ref().and_then(unusable) {
        if aborted || at == Some(txn.predecessor()) {
            warn!(txn = %n, error = %source, why, "the commit point is not known to have taken effect: the pool became unusable");
            return Err(CommitError::PoolUnavailable(format!(
                "transaction {n}: `{set}` is not known to have taken effect ({source}): {why}; the transaction stays open until the pool is repaired and reopened"
            )));
        }
    }
    match at {
        Some(at) if at == txn.predecessor() => Err(CommitError::CommitPointFailed { txn: n, source }),
        None => Err(CommitError::CommitPointFailed { txn: n, source }),
        Some(_) => Err(CommitError::Diverged { txn: n, source }),
    }
}

/// Resumes every device in `devices`, retrying each a few times: a device
/// left suspended stalls every writer on it.
fn resume_all(kernel: &mut impl Kernel, txn: TransactionId, devices: &[ThinId], committed: bool) -> Result<(), CommitError> {
    const ATTEMPTS: usize = 3;
    let mut failed = Vec::new();
    let mut last_error = None;
    for &id in devices {
        let mut result = kernel.resume_thin(id);
        for _ in 1..ATTEMPTS {
            if result.is_ok() {
                break;
            }
            result = kernel.resume_thin(id);
        }
        if let Err(e) = result {
            error!(%txn, device = %id, error = %e, "resume failed; the device stays suspended");
            failed.push(id);
            last_error = Some(e);
        }
    }
    match last_error {
        None => Ok(()),
        Some(source) => Err(CommitError::ResumeFailed { txn, committed, devices: failed, source }),
    }
}

/// Consumes transaction id `txn` without its effects: deletes whatever of its
/// creates reached the pool, then moves the pool to `txn`.
///
/// Precondition: none of `txn`'s deletes was posted (see
/// [`CommitError::abortable`]); deletes cannot be undone.
pub fn abort(kernel: &mut impl Kernel, txn: &Transaction) -> Result<(), CommitError> {
    let n = txn.id();
    let kernel_at = usable_status(kernel)?;
    if kernel_at != txn.predecessor() {
        return Err(CommitError::NotAtPredecessor { txn: n, kernel: kernel_at });
    }
    for (posted, id) in txn.created_ids().enumerate() {
        if let Some(a) = kernel.active_thin(id)? {
            return Err(CommitError::DeleteOfActiveDevice { txn: n, device: id, open_count: a.open_count });
        }
        let op = Operation::Delete { id };
        match kernel.message(&op.message()) {
            Ok(()) | Err(KernelError::NoData(_)) => {}
            Err(source) => return Err(CommitError::Message { txn: n, op, posted, source }),
        }
    }
    set_transaction_id(kernel, txn)?;
    warn!(txn = %n, "transaction aborted");
    Ok(())
}

/// What the controller has recorded for a pool: the last transaction id it
/// knows finished (committed or aborted), and the transactions assigned
/// after it, in order, ids dense from `finished + 1`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PoolRecord {
    pub finished: TransactionId,
    pub pending: Vec<Transaction>,
}

impl PoolRecord {
    pub fn last_assigned(&self) -> TransactionId {
        self.pending.last().map_or(self.finished, Transaction::id)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Committed(CommitReport),
    Aborted { kind: crate::executor::AbortKind, reason: String },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecoveryReport {
    /// The kernel's transaction id when recovery started.
    pub kernel_was_at: TransactionId,
    /// Devices found suspended (a crash between suspend and resume) and resumed.
    pub resumed: Vec<ThinId>,
    /// Pending transactions the kernel had already committed: only their
    /// status write was lost.
    pub committed_unreported: Vec<TransactionId>,
    /// Pending transactions the kernel had aborted (their creates absent,
    /// their deletes not done): the status write was lost, and with it the
    /// reason.
    pub aborted_unreported: Vec<TransactionId>,
    /// The transaction that was in flight at the crash, finished now.
    pub finished: Option<(TransactionId, Outcome)>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecoverError {
    #[error("the record is malformed: {0}")]
    BadRecord(String),
    #[error("pool diverged: the kernel is at transaction {kernel}, ahead of every recorded transaction (last assigned {last_assigned}); not guessing")]
    KernelAhead { kernel: TransactionId, last_assigned: TransactionId },
    #[error("pool diverged: the kernel is at transaction {kernel}, behind the finished transaction {finished}; not guessing")]
    KernelBehind { kernel: TransactionId, finished: TransactionId },
    #[error("transaction {txn} cannot be finished now, the pool stays at {}: {source}", txn.predecessor().map_or(0, |p| p.get()))]
    Blocked { txn: TransactionId, source: CommitError },
    #[error("pool diverged: transaction {txn} is behind the kernel ({kernel}) but its effects are neither all there nor all absent ({detail}); not guessing")]
    Undecidable { txn: TransactionId, kernel: TransactionId, detail: String },
    #[error("resuming suspended device {device} failed: {source}")]
    Resume { device: ThinId, source: KernelError },
    #[error(transparent)]
    Commit(#[from] CommitError),
    #[error("reading pool state: {0}")]
    Kernel(#[from] KernelError),
}

impl RecoverError {
    /// Divergence means the pool must be marked unhealthy and left alone.
    pub fn is_divergence(&self) -> bool {
        matches!(self, RecoverError::KernelAhead { .. } | RecoverError::KernelBehind { .. } | RecoverError::Undecidable { .. })
            || matches!(self, RecoverError::Blocked { source: CommitError::Diverged { .. } | CommitError::IdCollision { .. }, .. })
    }
}

/// Reconciles the kernel with the controller's record after a start or a
/// crash: the transaction after the kernel's may have been partly applied
/// and is finished by replay. Sends no message unless a transaction was in
/// flight; never guesses.
pub fn recover(kernel: &mut impl Kernel, record: &PoolRecord, observer: &mut impl Observer) -> Result<RecoveryReport, RecoverError> {
    reconcile(kernel, record, true, &BTreeMap::new(), observer)
}

/// Resumes every device of the pool left suspended (a crash between suspend
/// and resume). Run when the node opens its pool, before anything else: a
/// frozen origin stalls its writers whether or not a record exists.
pub fn thaw(kernel: &mut impl Kernel) -> Result<Vec<ThinId>, RecoverError> {
    let mut resumed = Vec::new();
    for thin in kernel.active_thins()?.into_iter().filter(|t| t.suspended) {
        kernel.resume_thin(thin.id).map_err(|source| RecoverError::Resume { device: thin.id, source })?;
        info!(device = %thin.id, "resumed a device left suspended");
        resumed.push(thin.id);
    }
    Ok(resumed)
}

/// Reconciles the kernel with the record. Pending transactions at or below
/// the kernel's id ended before and only their report was lost: each is
/// judged committed or aborted from the kernel's devices against its
/// operations (never from the id alone). With `replay`, the transaction
/// after the kernel's may have been started by an earlier process and is
/// finished by replay; without it, it has never been attempted and is left
/// to a first attempt ([`commit`]), where EEXIST is a collision.
///
/// `known` holds outcomes this process saw itself (true = committed): those
/// need no probe of the kernel's devices.
pub fn reconcile(
    kernel: &mut impl Kernel,
    record: &PoolRecord,
    replay: bool,
    known: &BTreeMap<TransactionId, bool>,
    observer: &mut impl Observer,
) -> Result<RecoveryReport, RecoverError> {
    check_record(record)?;
    // A process that completed its last run left nothing suspended (every
    // run resumes what it suspended, or stops, and a stopped run replays
    // next): only a run that may follow a crash or a stop thaws, which
    // lists every active device.
    let resumed = if replay { thaw(kernel)? } else { Vec::new() };
    let kernel_at = usable_status(kernel)?;
    let last_assigned = record.last_assigned();
    if kernel_at > last_assigned {
        return Err(RecoverError::KernelAhead { kernel: kernel_at, last_assigned });
    }
    if kernel_at < record.finished {
        return Err(RecoverError::KernelBehind { kernel: kernel_at, finished: record.finished });
    }
    let mut committed_unreported = Vec::new();
    let mut aborted_unreported = Vec::new();
    for txn in record.pending.iter().filter(|t| t.id() <= kernel_at) {
        let committed = match known.get(&txn.id()) {
            Some(c) => *c,
            None => decide(kernel, txn, kernel_at)?,
        };
        if committed {
            committed_unreported.push(txn.id());
        } else {
            aborted_unreported.push(txn.id());
        }
    }
    let finished = match record.pending.iter().find(|t| t.id() == kernel_at.successor()) {
        Some(txn) if replay => Some((txn.id(), finish(kernel, txn, observer)?)),
        _ => None,
    };
    debug!(kernel_was_at = %kernel_at, ?committed_unreported, ?aborted_unreported, ?finished, "reconciled");
    Ok(RecoveryReport { kernel_was_at: kernel_at, resumed, committed_unreported, aborted_unreported, finished })
}

/// Whether ended transaction `txn` committed (true) or was aborted (false),
/// from the kernel's devices: committed = every create there and every
/// delete done; aborted = no create there and no delete done. Sound because
/// ids are never reused while a transaction naming them is pending, and the
/// controller plans no delete of a device whose create has not been
/// reported finished. Anything in between is divergence.
fn decide(kernel: &mut impl Kernel, txn: &Transaction, kernel_at: TransactionId) -> Result<bool, RecoverError> {
    let probe = |kernel: &mut _, id| exists(kernel, id).map_err(RecoverError::Kernel);
    let mut created = Vec::new();
    for id in txn.created_ids() {
        created.push((id, probe(kernel, id)?));
    }
    let mut deleted = Vec::new();
    for id in txn.deleted_ids() {
        deleted.push((id, probe(kernel, id)?));
    }
    let committed = created.iter().all(|(_, there)| *there) && deleted.iter().all(|(_, there)| !*there);
    let aborted = created.iter().all(|(_, there)| !*there) && deleted.iter().all(|(_, there)| *there);
    match (committed, aborted) {
        (true, _) => Ok(true),
        (false, true) => {
            warn!(txn = %txn.id(), "transaction found aborted; its report was lost");
            Ok(false)
        }
        (false, false) => Err(RecoverError::Undecidable {
            txn: txn.id(),
            kernel: kernel_at,
            detail: format!("created {created:?}, deleted {deleted:?} (id, present)"),
        }),
    }
}

fn check_record(record: &PoolRecord) -> Result<(), RecoverError> {
    let mut expected = record.finished.successor();
    for txn in &record.pending {
        if txn.id() != expected {
            return Err(RecoverError::BadRecord(format!("pending transaction {} where {expected} was expected", txn.id())));
        }
        expected = expected.successor();
    }
    Ok(())
}

/// Finishes the transaction after the kernel's: it may have been partly
/// applied. Roll forward by replay; if a create cannot be done (a real
/// failure, not a replay), no delete has run yet, so abort cleanly.
fn finish(kernel: &mut impl Kernel, txn: &Transaction, observer: &mut impl Observer) -> Result<Outcome, RecoverError> {
    undo_partial_group(kernel, txn)?;
    match run(kernel, txn, Mode::Replay, observer) {
        Ok(report) => Ok(Outcome::Committed(report)),
        // A create failed for real: no delete can have run (creates go first).
        Err(e @ CommitError::Message { .. }) if e.abortable() => {
            abort(kernel, txn).map_err(|source| RecoverError::Blocked { txn: txn.id(), source })?;
            Ok(Outcome::Aborted { kind: crate::executor::AbortKind::of(&e), reason: e.to_string() })
        }
        // Refused before any message (a device to delete is open, an origin
        // will not suspend). An earlier attempt may have got further; if every
        // device to delete still exists, none of its deletes ran and abort is
        // clean. Otherwise the pool must wait: a half-done delete cannot be undone.
        Err(e @ (CommitError::DeleteOfActiveDevice { .. } | CommitError::Suspend { .. })) => {
            if all_exist(kernel, txn.deleted_ids()).map_err(|source| RecoverError::Blocked { txn: txn.id(), source: source.into() })? {
                abort(kernel, txn).map_err(|source| RecoverError::Blocked { txn: txn.id(), source })?;
                Ok(Outcome::Aborted { kind: crate::executor::AbortKind::of(&e), reason: e.to_string() })
            } else {
                Err(RecoverError::Blocked { txn: txn.id(), source: e })
            }
        }
        Err(source) => Err(RecoverError::Blocked { txn: txn.id(), source }),
    }
}

/// Keeps a group snapshot one instant across a crash. A transaction takes
/// all its snapshots inside one suspend window of all their origins; if an
/// earlier attempt made some of them but not all, the window has closed
/// since (the node resumes what a crash left suspended when it opens the
/// pool, a power cut deactivates everything and the volumes are staged
/// again) and the origins may have taken writes. A replay that made only
/// the missing ones would mix two moments, so the ones made are deleted
/// first and the replay takes every snapshot again, in one window. Safe:
/// the ids are this transaction's own (allocated for it and reported to no
/// one before it commits), and no delete of the transaction has run (creates
/// are posted first, and not all of them were done). All made, or none: the
/// replay keeps them or makes them together.
fn undo_partial_group(kernel: &mut impl Kernel, txn: &Transaction) -> Result<(), RecoverError> {
    let n = txn.id();
    let blocked = |source: KernelError| RecoverError::Blocked { txn: n, source: source.into() };
    let snapshots: Vec<ThinId> = txn.operations().iter().filter(|op| matches!(op, Operation::CreateSnapshot { .. })).filter_map(Operation::created).collect();
    if snapshots.len() < 2 {
        return Ok(());
    }
    let mut made = Vec::new();
    for &id in &snapshots {
        if exists(kernel, id).map_err(blocked)? {
            made.push(id);
        }
    }
    if made.is_empty() || made.len() == snapshots.len() {
        return Ok(());
    }
    warn!(txn = %n, made = ?made, of = ?snapshots, "an earlier attempt made only some snapshots of the group; deleting them to take all again at one instant");
    for (posted, &id) in made.iter().enumerate() {
        // A crash during an existence probe can leave a snapshot active; nothing opens it.
        if kernel.active_thin(id).map_err(blocked)?.is_some() {
            kernel.deactivate_thin(id).map_err(blocked)?;
        }
        let op = Operation::Delete { id };
        match kernel.message(&op.message()) {
            Ok(()) | Err(KernelError::NoData(_)) => {}
            Err(source) => return Err(RecoverError::Blocked { txn: n, source: CommitError::Message { txn: n, op, posted, source } }),
        }
    }
    Ok(())
}

/// Whether every id is in the pool: an active device is; an inactive one is
/// probed by activating it (ENODATA: absent) and deactivating it again.
fn all_exist(kernel: &mut impl Kernel, ids: impl Iterator<Item = ThinId>) -> Result<bool, KernelError> {
    for id in ids {
        if !exists(kernel, id)? {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Whether thin id `id` is in the pool (an inactive one is probed as in
/// recovery: activated, then deactivated again).
pub fn device_exists(kernel: &mut impl Kernel, id: ThinId) -> Result<bool, KernelError> {
    exists(kernel, id)
}

/// Whether thin id `id` is in the pool: an active device is; an inactive
/// one is probed by activating it (ENODATA: absent) and deactivating it,
/// which leaves the active set as it was.
fn exists(kernel: &mut impl Kernel, id: ThinId) -> Result<bool, KernelError> {
    if kernel.active_thin(id)?.is_some() {
        return Ok(true);
    }
    match kernel.activate_thin(id, crate::ids::Sectors(8)) {
        Ok(()) => kernel.deactivate_thin(id).map(|()| true),
        Err(KernelError::NoData(_)) => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{t, txn};
    use crate::model::ModelKernel;
    use crate::ids::Sectors;

    /// Two active origins; the second refuses to suspend.
    #[test]
    fn a_failed_suspend_resumes_what_was_suspended_and_posts_nothing() {
        let mut k = ModelKernel::new();
        commit(&mut k, &txn(1, vec![Operation::CreateThin { id: t(1) }, Operation::CreateThin { id: t(2) }]), &mut ()).unwrap();
        k.activate_thin(t(1), Sectors(8)).unwrap();
        k.activate_thin(t(2), Sectors(8)).unwrap();
        k.refuse_suspend(Some(t(2)));
        let group = txn(2, vec![Operation::CreateSnapshot { id: t(3), origin: t(1) }, Operation::CreateSnapshot { id: t(4), origin: t(2) }]);
        let err = commit(&mut k, &group, &mut ()).unwrap_err();
        assert!(matches!(err, CommitError::Suspend { device, .. } if device == t(2)), "{err}");
        assert!(err.abortable());
        assert!(k.active_thins().unwrap().iter().all(|a| !a.suspended), "origin 1 must be resumed");
        assert_eq!(k.transaction_id(), TransactionId::new(1));
        assert_eq!(k.devices().count(), 2, "nothing posted");
        abort(&mut k, &group).unwrap();
        assert_eq!(k.transaction_id(), TransactionId::new(2));
    }

    #[test]
    fn an_unusable_pool_takes_no_transaction() {
        for (mode, needs_check) in [(PoolMode::ReadOnly, false), (PoolMode::ReadWrite, true)] {
            let mut k = ModelKernel::new();
            k.set_mode(mode, needs_check);
            let err = commit(&mut k, &txn(1, vec![Operation::CreateThin { id: t(1) }]), &mut ()).unwrap_err();
            assert!(matches!(err, CommitError::PoolUnavailable(_)), "{err}");
        }
        let mut k = ModelKernel::new();
        k.set_mode(PoolMode::OutOfDataSpace, false);
        commit(&mut k, &txn(1, vec![Operation::CreateThin { id: t(1) }]), &mut ()).expect("metadata changes still work when data is full");
    }

    #[test]
    fn kernel_behind_a_finished_transaction_is_divergence() {
        let mut k = ModelKernel::new();
        let record = PoolRecord { finished: TransactionId::new(3), pending: vec![] };
        let err = recover(&mut k, &record, &mut ()).unwrap_err();
        assert!(matches!(err, RecoverError::KernelBehind { .. }) && err.is_divergence(), "{err}");
    }

    #[test]
    fn a_first_attempt_eexist_is_a_collision_not_a_replay() {
        let mut k = ModelKernel::new();
        commit(&mut k, &txn(1, vec![Operation::CreateThin { id: t(1) }]), &mut ()).unwrap();
        let err = commit(&mut k, &txn(2, vec![Operation::CreateThin { id: t(1) }]), &mut ()).unwrap_err();
        assert!(matches!(err, CommitError::IdCollision { id, .. } if id == t(1)), "{err}");
        assert!(!err.abortable());
    }

    #[test]
    fn a_delete_of_an_active_unopened_device_deactivates_it_first() {
        let mut k = ModelKernel::new();
        commit(&mut k, &txn(1, vec![Operation::CreateThin { id: t(1) }]), &mut ()).unwrap();
        k.activate_thin(t(1), Sectors(8)).unwrap();
        commit(&mut k, &txn(2, vec![Operation::Delete { id: t(1) }]), &mut ()).unwrap();
        assert_eq!(k.devices().count(), 0);
    }

    /// Recovery must never call a transaction aborted when one of its deletes
    /// already ran; it must never block the pool when none did.
    #[test]
    fn a_refused_delete_in_recovery_aborts_only_when_nothing_was_deleted() {
        let record = |n: u64, ops| PoolRecord { finished: TransactionId::new(n - 1), pending: vec![txn(n, ops)] };
        // Nothing deleted yet, the device is open: abort, the pool moves on.
        let mut k = ModelKernel::new();
        commit(&mut k, &txn(1, vec![Operation::CreateThin { id: t(1) }, Operation::CreateThin { id: t(2) }]), &mut ()).unwrap();
        k.activate_thin(t(2), Sectors(8)).unwrap();
        k.open(t(2)).unwrap();
        let report = recover(&mut k, &record(2, vec![Operation::Delete { id: t(1) }, Operation::Delete { id: t(2) }]), &mut ()).unwrap();
        assert!(matches!(report.finished, Some((_, Outcome::Aborted { .. }))), "{report:?}");
        assert_eq!(k.transaction_id(), TransactionId::new(2));
        assert_eq!(k.devices().count(), 2, "an aborted transaction deletes nothing");
        assert!(k.active_thins().unwrap().iter().all(|a| a.id != t(1)), "the existence probe leaves nothing active");
        // A crash after `delete 1`: now 1 is gone and 2 is open: blocked, not aborted.
        k.message(&PoolMessage::Delete { id: t(1) }).unwrap();
        let err = recover(&mut k, &record(3, vec![Operation::Delete { id: t(1) }, Operation::Delete { id: t(2) }]), &mut ()).unwrap_err();
        assert!(matches!(err, RecoverError::Blocked { .. }), "{err}");
        assert_eq!(k.transaction_id(), TransactionId::new(2));
    }

    /// Measured on the real kernel: a message is acknowledged before its
    /// metadata commit, and a commit that runs out of space rolls the message
    /// back and drops the pool to read-only. An acknowledged
    /// `set_transaction_id` alone does not prove the transaction committed.
    #[test]
    fn an_acknowledged_commit_point_that_the_kernel_rolled_back_is_not_committed() {
        let mut k = ModelKernel::new();
        let one = txn(1, vec![Operation::CreateThin { id: t(1) }]);
        k.out_of_metadata_at_message(2); // the create commits; set_transaction_id runs out
        let err = commit(&mut k, &one, &mut ()).expect_err("the metadata stayed at 0: not committed");
        assert!(matches!(err, CommitError::PoolUnavailable(_)), "{err}");
        assert_eq!(k.transaction_id(), TransactionId::ZERO);
        let record = PoolRecord { finished: TransactionId::ZERO, pending: vec![one] };
        let err = recover(&mut k, &record, &mut ()).unwrap_err();
        assert!(!err.is_divergence(), "{err}");
        // Reloaded (and repaired), the pool is at 0: recovery replays 1.
        k.power_cycle();
        k.set_mode(PoolMode::ReadWrite, false);
        let report = recover(&mut k, &record, &mut ()).unwrap();
        assert!(matches!(report.finished, Some((n, Outcome::Committed(_))) if n.get() == 1), "{report:?}");
        assert_eq!(k.transaction_id(), TransactionId::new(1));
    }

    /// A message refused because the pool went read-only is typed as such.
    #[test]
    fn a_create_the_kernel_rolled_back_leaves_the_transaction_open_on_a_read_only_pool() {
        let mut k = ModelKernel::new().with_metadata_capacity(1);
        let two = txn(1, vec![Operation::CreateThin { id: t(1) }, Operation::CreateThin { id: t(2) }]);
        let err = commit(&mut k, &two, &mut ()).unwrap_err();
        assert!(matches!(err, CommitError::PoolUnavailable(_)) && !err.abortable(), "{err}");
        assert_eq!(k.devices().collect::<Vec<_>>(), vec![t(1)], "the first create committed on its own message");
        assert_eq!(k.transaction_id(), TransactionId::ZERO);
    }

    #[test]
    fn a_malformed_record_is_refused() {
        let mut k = ModelKernel::new();
        let record = PoolRecord { finished: TransactionId::ZERO, pending: vec![txn(2, vec![Operation::CreateThin { id: t(1) }])] };
        assert!(matches!(recover(&mut k, &record, &mut ()), Err(RecoverError::BadRecord(_))));
    }
}
