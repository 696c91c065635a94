//! Allocation of thin device ids and transaction ids for one pool, recorded
//! in the pool's `ThinPool` object before any node acts.
//!
//! [`plan`] is the pure part: from the object as read, it drops the
//! transactions the node reports finished (returning the ids they freed to
//! the free ranges, and keeping a tombstone of each aborted one), then
//! assigns ids for the request — the lowest free id — and the next
//! transaction id, and appends the transaction to
//! `spec.pendingTransactions`. [`Allocator::allocate`] reads the object,
//! plans, and replaces the object with the `resourceVersion` it read; a 409
//! Conflict (someone else wrote in between, another allocation or the node's
//! status) re-reads and plans again. Nothing is handed out unless the write
//! that records it succeeded.
//!
//! Ids return to the free ranges only once the node has reported the
//! transaction finished (`status.finishedTransaction`): a committed delete
//! frees the deleted id; an aborted transaction frees the ids it would have
//! created (abort removed them) and none of its deletes (none was posted).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use kube::api::{Api, PostParams};
use kube::Client;
use thin_csi_api::{convert, AbortedTransaction, DeviceRange, PendingTransaction, PoolHealth, ThinPool, ThinPoolSpec, Tombstone};
use thinpool::{Operation, ThinId, Transaction, TransactionError, TransactionId};

/// One operation the caller wants; the allocator picks the ids it creates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request {
    CreateThin,
    CreateSnapshot { origin: ThinId },
    Delete { id: ThinId },
    /// A delete of the device that create transaction `generation` made
    /// (what a CSI id names): refused as not allocated when the id has been
    /// handed to a newer create the record still holds, so a request that
    /// read its object before the id was reused cannot delete the new device.
    DeleteOf { id: ThinId, generation: u64 },
}

/// What one successful allocation recorded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Allocation {
    /// The ThinPool object's name.
    pub pool: String,
    /// The transaction as recorded (creates before deletes).
    pub transaction: Transaction,
    /// The id assigned to each create request, in request order.
    pub created: Vec<ThinId>,
    /// The ids this write returned to the free ranges (finished transactions pruned).
    pub freed: Vec<ThinId>,
    /// The object's resourceVersion after the write.
    pub resource_version: Option<String>,
    /// The pool object's uid: the record that holds the transaction.
    pub pool_uid: Option<String>,
    /// Writes that lost a conflict before this one won.
    pub conflicts: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum AllocError {
    #[error("no operations requested")]
    Empty,
    #[error("pool {pool} not found")]
    PoolNotFound { pool: String },
    #[error("pool {pool} is unhealthy ({reason}); no transaction is sent to it")]
    PoolUnhealthy { pool: String, reason: String },
    #[error("pool {pool} has no thin device id left: all 16777216 are in use or awaiting a committed delete")]
    IdsExhausted { pool: String },
    #[error("pool {pool}: thin device {id} is not allocated")]
    NotAllocated { pool: String, id: ThinId },
    #[error("pool {pool}: its record was created when the pool already had history (kernel at transaction {at}); nothing is allocated until it is adopted (docs/operations.md)")]
    RecordUnverified { pool: String, at: u64 },
    #[error("pool {pool}: thin device {id} is created by transaction {txn}, which has not finished; retry once it has")]
    CreatePending { pool: String, id: ThinId, txn: u64 },
    #[error("pool {pool}: thin device {id} is already being deleted by pending transaction {txn}")]
    BeingDeleted { pool: String, id: ThinId, txn: u64 },
    #[error("pool {pool}: the record is inconsistent: {source}")]
    Record { pool: String, source: convert::ConversionError },
    #[error("pool {pool}: {source}")]
    Transaction { pool: String, source: TransactionError },
    #[error("pool {pool}: gave up after {conflicts} write conflicts in a row")]
    Contention { pool: String, conflicts: u32 },
    #[error("Kubernetes API: {0}")]
    Api(#[source] kube::Error),
}

/// What [`plan`] decided: the new spec, the transaction, and the ids.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub spec: ThinPoolSpec,
    pub transaction: Transaction,
    pub created: Vec<ThinId>,
    pub freed: Vec<ThinId>,
}

/// The free ids of a record: merged ranges below the cursor, every id from
/// the cursor up. Freeing keeps the ranges sorted, disjoint and apart, and
/// folds a range that reaches the cursor into it; handing out takes the
/// lowest free id. So there is at most one range more than ids in use
/// below the cursor: the record is bounded by what is allocated.
struct Free<'a> {
    ranges: &'a mut Vec<DeviceRange>,
    cursor: &'a mut u32,
}

impl Free<'_> {
    /// Returns `id` (allocated until now) to the free ids.
    fn free(&mut self, id: ThinId) {
        let id = id.get();
        if id >= *self.cursor || self.ranges.iter().any(|r| r.contains(id)) {
            return; // free already
        }
        // The first range above id (the ranges are sorted and apart).
        let i = self.ranges.partition_point(|r| r.last < id);
        let joins_below = i > 0 && self.ranges[i - 1].last + 1 == id;
        let joins_above = i < self.ranges.len() && self.ranges[i].first == id + 1;
        match (joins_below, joins_above) {
            (true, true) => {
                self.ranges[i - 1].last = self.ranges[i].last;
                self.ranges.remove(i);
            }
            (true, false) => self.ranges[i - 1].last = id,
            (false, true) => self.ranges[i].first = id,
            (false, false) => self.ranges.insert(i, DeviceRange { first: id, last: id }),
        }
        if let Some(top) = self.ranges.last().copied() {
            if top.last + 1 == *self.cursor {
                *self.cursor = top.first;
                self.ranges.pop();
            }
        }
    }

    /// The lowest free id, now allocated.
    fn take(&mut self) -> Option<ThinId> {
        let id = match self.ranges.first_mut() {
            Some(r) => {
                let id = r.first;
                if r.first == r.last {
                    self.ranges.remove(0);
                } else {
                    r.first += 1;
                }
                id
            }
            None if *self.cursor < ThinId::LIMIT => {
                *self.cursor += 1;
                *self.cursor - 1
            }
            None => return None,
        };
        Some(ThinId::new(id.into()).expect("below the limit"))
    }
}

/// The record with the transactions the node reports finished dropped from
/// `spec.pendingTransactions`, and the ids that finishing freed. A committed
/// delete frees its id and ends the tombstone of earlier aborted deletes of
/// it; an aborted transaction frees the ids it would have created and
/// leaves a tombstone (`spec.abortedTransactions`), so a waiter that reads
/// it only now still learns that it aborted: once ids are reused, nothing
/// else in the record tells.
fn prune(pool: &ThinPool, name: &str) -> Result<(ThinPoolSpec, Vec<ThinId>), AllocError> {
    // Checks order, ranges and finished <= assigned.
    let record = convert::pool_record(pool).map_err(|source| AllocError::Record { pool: name.to_string(), source })?;
    let finished = record.finished.get();
    let status = pool.status.clone().unwrap_or_default();
    let mut spec = pool.spec.clone();
    let mut freed = Vec::new();
    let mut still_pending = Vec::new();
    for p in std::mem::take(&mut spec.pending_transactions) {
        if p.id > finished {
            still_pending.push(p);
            continue;
        }
        let txn = Transaction::try_from(&p).map_err(|source| AllocError::Record { pool: name.to_string(), source })?;
        let creates: Vec<ThinId> = txn.created_ids().collect();
        let deletes: Vec<ThinId> = txn.deleted_ids().collect();
        match status.aborted(p.id) {
            Some(a) => {
                freed.extend(creates.iter().copied());
                bury(&mut spec.aborted_transactions, a, creates, deletes);
            }
            None => {
                // Deleted for good: no later reader can mistake an earlier
                // aborted delete of these ids for a committed one that matters.
                spec.aborted_transactions.retain(|t| !t.creates.is_empty() || !t.deletes.iter().any(|d| deletes.contains(d)));
                freed.extend(deletes);
            }
        }
    }
    spec.pending_transactions = still_pending;
    let mut free = Free { ranges: &mut spec.free_device_ranges, cursor: &mut spec.next_device_id };
    for id in &freed {
        free.free(*id);
    }
    Ok((spec, freed))
}

/// Adds the tombstone of aborted transaction `a`: a delete of the same ids
/// as the newest tombstone's run extends that run (deletes of one device
/// are one at a time: the ones between were aborted too, or the run would
/// have ended), so retrying a delete of a busy volume adds nothing.
fn bury(tombstones: &mut Vec<Tombstone>, a: &AbortedTransaction, creates: Vec<ThinId>, deletes: Vec<ThinId>) {
    if creates.is_empty() && !deletes.is_empty() {
        if let Some(run) = tombstones.iter_mut().rev().find(|t| t.creates.is_empty() && t.deletes == deletes) {
            run.through = Some(a.id);
            run.reason = a.reason;
            run.message = a.message.clone();
            return;
        }
    }
    tombstones.push(Tombstone { id: a.id, through: None, reason: a.reason, message: a.message.clone(), creates, deletes });
}

/// The record after its waiter has settled the object that aborted create
/// transaction `txn` was for (removed it): finished transactions pruned and
/// `txn`'s tombstone gone. `None` when there is nothing to write (no
/// tombstone: never aborted, or forgotten already).
pub fn forget(pool: &ThinPool, txn: u64) -> Result<Option<ThinPoolSpec>, AllocError> {
    let name = pool.metadata.name.clone().unwrap_or_default();
    let (mut spec, _) = prune(pool, &name)?;
    let before = spec.aborted_transactions.len();
    spec.aborted_transactions.retain(|t| t.id != txn || t.creates.is_empty());
    Ok((spec.aborted_transactions.len() != before).then_some(spec))
}

/// The record with finished transactions pruned and the tombstones of
/// `drop` removed (the leak collector decided no waiter needs them).
/// `None` when that changes nothing.
pub fn tidy(pool: &ThinPool, drop: &[u64]) -> Result<Option<ThinPoolSpec>, AllocError> {
    let name = pool.metadata.name.clone().unwrap_or_default();
    let (mut spec, _) = prune(pool, &name)?;
    spec.aborted_transactions.retain(|t| !drop.contains(&t.id));
    Ok((spec != pool.spec).then_some(spec))
}

/// Plans one allocation on `pool` as read. Pure: the caller writes `spec`.
pub fn plan(pool: &ThinPool, requests: &[Request]) -> Result<Plan, AllocError> {
    let name = pool.metadata.name.clone().unwrap_or_default();
    if requests.is_empty() {
        return Err(AllocError::Empty);
    }
    let status = pool.status.clone().unwrap_or_default();
    if status.health == Some(PoolHealth::Unhealthy) {
        let reason = status.last_error.clone().unwrap_or_else(|| "no reason given".to_string());
        return Err(AllocError::PoolUnhealthy { pool: name, reason });
    }
    if let Some(at) = pool.spec.devices_unknown_at_transaction {
        return Err(AllocError::RecordUnverified { pool: name, at });
    }
    // A delete of an older generation of an id that a transaction still in
    // the record (finished or not, before pruning) creates again: that
    // device is gone.
    for r in requests {
        if let Request::DeleteOf { id, generation } = *r {
            let recreated = pool.spec.pending_transactions.iter().any(|p| p.id > generation && p.operations.iter().any(|o| o.op != thin_csi_api::OperationKind::Delete && o.id == id));
            if recreated {
                return Err(AllocError::NotAllocated { pool: name, id });
            }
        }
    }
    // Prune what the node finished; free the ids that finishing released.
    let (mut spec, freed) = prune(pool, &name)?;

    // Deletes and snapshot origins must name allocated devices that no
    // pending transaction is deleting. A device whose create has not been
    // reported finished is not deleted either: the node judges an ended
    // transaction whose report was lost by whether its creates are in the
    // pool (thinpool::engine::reconcile).
    let pending_ops: Vec<(bool, ThinId, u64)> = spec
        .pending_transactions
        .iter()
        .flat_map(|p| {
            p.operations.iter().filter_map(move |o| {
                ThinId::try_from(o.id).ok().map(|id| (o.op == thin_csi_api::OperationKind::Delete, id, p.id))
            })
        })
        .collect();
    let pending = |deletes: bool, id: ThinId| pending_ops.iter().find(|(d, i, _)| *d == deletes && *i == id).map(|(_, _, txn)| *txn);
    let check_existing = |id: ThinId| -> Result<(), AllocError> {
        if spec.is_free(id) {
            return Err(AllocError::NotAllocated { pool: name.clone(), id });
        }
        if let Some(txn) = pending(true, id) {
            return Err(AllocError::BeingDeleted { pool: name.clone(), id, txn });
        }
        Ok(())
    };
    for r in requests {
        match *r {
            Request::Delete { id } | Request::DeleteOf { id, .. } => {
                check_existing(id)?;
                if let Some(txn) = pending(false, id) {
                    return Err(AllocError::CreatePending { pool: name.clone(), id, txn });
                }
            }
            Request::CreateSnapshot { origin: id } => check_existing(id)?,
            Request::CreateThin => {}
        }
    }

    // Assign the lowest free id: one freed by a finished transaction is
    // handed out again at once. A request naming the old device cannot
    // reach the new one: the CSI id carries the create transaction, and a
    // lookup whose object has another one finds nothing.
    let mut free = Free { ranges: &mut spec.free_device_ranges, cursor: &mut spec.next_device_id };
    let mut created = Vec::new();
    let mut ops = Vec::with_capacity(requests.len());
    for r in requests {
        let op = match *r {
            Request::Delete { id } | Request::DeleteOf { id, .. } => Operation::Delete { id },
            Request::CreateThin | Request::CreateSnapshot { .. } => {
                let id = free.take().ok_or_else(|| AllocError::IdsExhausted { pool: name.clone() })?;
                created.push(id);
                match *r {
                    Request::CreateSnapshot { origin } => Operation::CreateSnapshot { id, origin },
                    _ => Operation::CreateThin { id },
                }
            }
        };
        ops.push(op);
    }

    let id = TransactionId::new(spec.last_assigned_transaction).successor();
    let transaction =
        Transaction::new(id, ops).map_err(|source| AllocError::Transaction { pool: name.clone(), source })?;
    spec.last_assigned_transaction = id.get();
    spec.pending_transactions.push(PendingTransaction::from(&transaction));
    Ok(Plan { spec, transaction, created, freed })
}

/// Allocates on ThinPool objects through the Kubernetes API.
///
/// Clones share state. Within one process, allocations on the same pool
/// take turns (a per-pool async lock), so the tasks of one controller do
/// not race each other through the apiserver; the object each write
/// returned is kept and used as the next read, so an uncontended allocation
/// is one write. Writers elsewhere (another controller process, the node's
/// status) are met by optimistic concurrency: a 409 drops the kept object,
/// re-reads and plans again.
#[derive(Clone)]
pub struct Allocator {
    api: Api<ThinPool>,
    max_conflicts: u32,
    pools: Arc<std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<Option<ThinPool>>>>>>,
}

impl Allocator {
    /// Lost write races tolerated per allocation before [`AllocError::Contention`].
    pub const DEFAULT_MAX_CONFLICTS: u32 = 1000;

    pub fn new(client: Client) -> Self {
        Allocator { api: Api::all(client), max_conflicts: Self::DEFAULT_MAX_CONFLICTS, pools: Default::default() }
    }

    pub fn with_max_conflicts(mut self, n: u32) -> Self {
        self.max_conflicts = n;
        self
    }

    fn pool_slot(&self, pool: &str) -> Arc<tokio::sync::Mutex<Option<ThinPool>>> {
        let mut pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        pools.entry(pool.to_string()).or_default().clone()
    }

    /// Records one transaction for `requests` on pool object `pool`: ids and
    /// transaction id assigned, written with optimistic concurrency. When
    /// this returns, the transaction is in the API; the node has not acted.
    pub async fn allocate(&self, pool: &str, requests: &[Request]) -> Result<Allocation, AllocError> {
        let slot = self.pool_slot(pool);
        let mut kept = slot.lock().await;
        let mut conflicts = 0u32;
        loop {
            let cached = kept.take();
            let from_cache = cached.is_some();
            let mut object = match cached {
                Some(o) => o,
                None => match self.api.get(pool).await {
                    Ok(o) => o,
                    Err(kube::Error::Api(s)) if s.code == 404 => return Err(AllocError::PoolNotFound { pool: pool.to_string() }),
                    Err(e) => return Err(AllocError::Api(e)),
                },
            };
            let plan = match plan(&object, requests) {
                Ok(p) => p,
                // The kept object may predate the node's latest status (ids it
                // freed, a health change): judge only a fresh read.
                Err(_) if from_cache => continue,
                Err(e) => return Err(e),
            };
            object.spec = plan.spec.clone();
            // `object` carries the resourceVersion it was read with: the
            // write fails with 409 if anything changed the object since.
            match self.api.replace(pool, &PostParams::default(), &object).await {
                Ok(written) => {
                    tracing::debug!(pool, txn = %plan.transaction.id(), conflicts, "transaction recorded");
                    return Ok(Allocation::recorded(pool, plan, written, conflicts, &mut kept));
                }
                Err(kube::Error::Api(s)) if s.code == 409 => {
                    conflicts += 1;
                    csi_contract::metrics::get().allocation_conflicts.inc();
                    if conflicts >= self.max_conflicts {
                        return Err(AllocError::Contention { pool: pool.to_string(), conflicts });
                    }
                    tokio::time::sleep(backoff(conflicts)).await;
                }
                Err(kube::Error::Api(s)) if s.code == 404 => return Err(AllocError::PoolNotFound { pool: pool.to_string() }),
                // The write may have taken effect with its reply lost: a fresh
                // read tells (ids are never reused while pending, so our
                // transaction in the record can only be ours).
                Err(e) => match self.api.get(pool).await {
                    Ok(now) if recorded(&now, &plan.transaction) => {
                        tracing::info!(pool, txn = %plan.transaction.id(), error = %e, "the write failed but took effect");
                        return Ok(Allocation::recorded(pool, plan, now, conflicts, &mut kept));
                    }
                    _ => return Err(AllocError::Api(e)),
                },
            }
        }
    }
}

impl Allocator {
    /// Drops the tombstone of aborted create transaction `txn` once the
    /// object it was allocated for is settled (removed): [`forget`] written
    /// with optimistic concurrency. Best effort: a tombstone this misses
    /// (a crash in between) stays until the leak collector removes it.
    pub async fn forget(&self, pool: &str, txn: u64) -> Result<(), AllocError> {
        self.rewrite(pool, |object| forget(object, txn)).await.map(|_| ())
    }

    /// Writes the spec `change` makes of the object as read (`None`: nothing
    /// to write), with optimistic concurrency: a 409 re-reads and asks
    /// again. Whether it wrote.
    pub async fn rewrite(&self, pool: &str, change: impl Fn(&ThinPool) -> Result<Option<ThinPoolSpec>, AllocError>) -> Result<bool, AllocError> {
        let slot = self.pool_slot(pool);
        let mut kept = slot.lock().await;
        *kept = None;
        for conflicts in 0..self.max_conflicts {
            let mut object = match self.api.get(pool).await {
                Ok(o) => o,
                Err(kube::Error::Api(s)) if s.code == 404 => return Err(AllocError::PoolNotFound { pool: pool.to_string() }),
                Err(e) => return Err(AllocError::Api(e)),
            };
            let Some(spec) = change(&object)? else { return Ok(false) };
            object.spec = spec;
            match self.api.replace(pool, &PostParams::default(), &object).await {
                Ok(written) => {
                    *kept = Some(written);
                    return Ok(true);
                }
                Err(kube::Error::Api(s)) if s.code == 409 => tokio::time::sleep(backoff(conflicts + 1)).await,
                Err(e) => return Err(AllocError::Api(e)),
            }
        }
        Err(AllocError::Contention { pool: pool.to_string(), conflicts: self.max_conflicts })
    }
}

impl Allocation {
    /// The allocation `plan` made, recorded in `written` (kept as the next read).
    fn recorded(pool: &str, plan: Plan, written: ThinPool, conflicts: u32, kept: &mut Option<ThinPool>) -> Allocation {
        let allocation = Allocation {
            pool: pool.to_string(),
            transaction: plan.transaction,
            created: plan.created,
            freed: plan.freed,
            resource_version: written.metadata.resource_version.clone(),
            pool_uid: written.metadata.uid.clone(),
            conflicts,
        };
        *kept = Some(written);
        allocation
    }
}

/// Whether `pool` records `txn` (the same id and operations) as assigned.
pub fn recorded(pool: &ThinPool, txn: &Transaction) -> bool {
    let mine = PendingTransaction::from(txn);
    pool.spec.pending_transactions.iter().any(|p| *p == mine)
}

/// A short randomized pause after a lost race, so contenders spread out
/// instead of colliding again in lockstep: up to 1 ms times the number of
/// conflicts so far, capped at 16 ms.
fn backoff(conflicts: u32) -> Duration {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    let mut x = u64::from(nanos) ^ (u64::from(std::process::id()) << 32) ^ u64::from(conflicts);
    // xorshift: spreads the clock's low bits.
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    let cap_us = 1000 * u64::from(conflicts.min(16));
    Duration::from_micros(x % cap_us.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use thin_csi_api::{OperationKind, ThinPoolStatus, TransactionOperation};

    fn t(n: u32) -> ThinId {
        ThinId::new(n.into()).unwrap()
    }

    fn fresh() -> ThinPool {
        ThinPool::new("uuid-1", ThinPoolSpec::new("node-a", "pool0", "uuid-1", 0))
    }

    fn apply(pool: &mut ThinPool, requests: &[Request]) -> Plan {
        let p = plan(pool, requests).unwrap();
        pool.spec = p.spec.clone();
        p
    }

    fn finish(pool: &mut ThinPool, upto: u64, aborted: &[u64]) {
        pool.status = Some(ThinPoolStatus {
            finished_transaction: Some(upto),
            kernel_transaction: Some(upto),
            aborted_transactions: aborted
                .iter()
                .map(|id| thin_csi_api::AbortedTransaction { id: *id, reason: thin_csi_api::AbortReason::Other, message: String::new() })
                .collect(),
            ..Default::default()
        });
    }

    #[test]
    fn cursor_and_transaction_ids_advance() {
        let mut pool = fresh();
        let a = apply(&mut pool, &[Request::CreateThin, Request::CreateThin]);
        assert_eq!(a.transaction.id(), TransactionId::new(1));
        assert_eq!(a.created, [t(0), t(1)]);
        let b = apply(&mut pool, &[Request::CreateSnapshot { origin: t(0) }]);
        assert_eq!(b.transaction.id(), TransactionId::new(2));
        assert_eq!(b.transaction.operations(), &[Operation::CreateSnapshot { id: t(2), origin: t(0) }]);
        assert_eq!(pool.spec.next_device_id, 3);
        assert_eq!(pool.spec.last_assigned_transaction, 2);
        assert_eq!(pool.spec.pending_transactions.iter().map(|p| p.id).collect::<Vec<_>>(), [1, 2]);
    }

    #[test]
    fn deleted_ids_are_reused_at_once_but_only_after_the_delete_commits() {
        let mut pool = fresh();
        apply(&mut pool, &[Request::CreateThin, Request::CreateThin, Request::CreateThin]); // 1: ids 0, 1, 2
        finish(&mut pool, 1, &[]);
        apply(&mut pool, &[Request::Delete { id: t(0) }]); // 2
        // Not finished yet: 0 is not free; the cursor hands out 3.
        let c = apply(&mut pool, &[Request::CreateThin]); // 3
        assert_eq!(c.created, [t(3)]);
        assert!(c.freed.is_empty());
        // The node finished 2 (committed): 0 comes back and is the lowest free id.
        finish(&mut pool, 2, &[]);
        let d = apply(&mut pool, &[Request::CreateThin]); // 4
        assert_eq!(d.freed, [t(0)]);
        assert_eq!(d.created, [t(0)]);
        assert_eq!(pool.spec.pending_transactions.iter().map(|p| p.id).collect::<Vec<_>>(), [3, 4]);
        assert!(pool.spec.free_device_ranges.is_empty());
        assert_eq!(pool.spec.next_device_id, 4);
    }

    #[test]
    fn a_delete_of_an_old_generation_cannot_reach_a_reused_id() {
        let mut pool = fresh();
        apply(&mut pool, &[Request::CreateThin]); // 1: id 0
        finish(&mut pool, 1, &[]);
        apply(&mut pool, &[Request::DeleteOf { id: t(0), generation: 1 }]); // 2
        finish(&mut pool, 2, &[]);
        assert_eq!(apply(&mut pool, &[Request::CreateThin]).created, [t(0)]); // 3: id 0 again
        finish(&mut pool, 3, &[]);
        // A retry holding the object of generation 1: the id is generation 3's now.
        assert!(matches!(plan(&pool, &[Request::DeleteOf { id: t(0), generation: 1 }]), Err(AllocError::NotAllocated { .. })));
        assert!(plan(&pool, &[Request::DeleteOf { id: t(0), generation: 3 }]).is_ok());
    }

    #[test]
    fn freed_ids_merge_into_ranges_and_the_top_folds_into_the_cursor() {
        let mut pool = fresh();
        let r = |first, last| DeviceRange { first, last };
        apply(&mut pool, &[Request::CreateThin; 8]); // 1: ids 0..=7
        finish(&mut pool, 1, &[]);
        for (n, id) in [1u32, 3, 2, 5].into_iter().enumerate() {
            apply(&mut pool, &[Request::Delete { id: t(id) }]); // 2..=5
            finish(&mut pool, 2 + n as u64, &[]);
        }
        apply(&mut pool, &[Request::Delete { id: t(7) }]); // 6: prunes 2..=5
        assert_eq!(pool.spec.free_device_ranges, [r(1, 3), r(5, 5)]);
        assert_eq!(pool.spec.next_device_id, 8);
        finish(&mut pool, 6, &[]);
        apply(&mut pool, &[Request::Delete { id: t(6) }]); // 7: prunes 6 (id 7): folds into the cursor
        assert_eq!((pool.spec.free_device_ranges.clone(), pool.spec.next_device_id), (vec![r(1, 3), r(5, 5)], 7));
        finish(&mut pool, 7, &[]);
        // Pruning 7 frees 6, which joins 5 and reaches the cursor: 5 and 6 fold.
        let p = apply(&mut pool, &[Request::CreateThin]); // 8
        assert_eq!(p.created, [t(1)], "the lowest free id");
        assert_eq!((pool.spec.free_device_ranges.clone(), pool.spec.next_device_id), (vec![r(2, 3)], 5));
        assert!(matches!(plan(&pool, &[Request::Delete { id: t(6) }]), Err(AllocError::NotAllocated { .. })));
        assert!(matches!(plan(&pool, &[Request::Delete { id: t(2) }]), Err(AllocError::NotAllocated { .. })));
        assert!(plan(&pool, &[Request::Delete { id: t(4) }]).is_ok());
    }

    #[test]
    fn aborted_transactions_free_their_creates_not_their_deletes() {
        let mut pool = fresh();
        apply(&mut pool, &[Request::CreateThin]); // 1: id 0
        finish(&mut pool, 1, &[]);
        apply(&mut pool, &[Request::CreateThin, Request::Delete { id: t(0) }]); // 2: id 1, delete 0
        finish(&mut pool, 2, &[2]);
        let p = apply(&mut pool, &[Request::Delete { id: t(0) }]); // 3: 0 still exists
        assert_eq!(p.freed, [t(1)]);
        // 1 was the top: folded into the cursor, handed out next.
        assert_eq!(pool.spec.next_device_id, 1);
        assert_eq!(apply(&mut pool, &[Request::CreateThin]).created, [t(1)]);
        // Its tombstone keeps what the pruned report said.
        let tomb = &pool.spec.aborted_transactions;
        assert_eq!(tomb.len(), 1);
        assert_eq!((tomb[0].id, tomb[0].creates.clone(), tomb[0].deletes.clone()), (2, vec![t(1)], vec![t(0)]));
    }

    #[test]
    fn tombstones_are_bounded_by_what_is_in_flight() {
        let mut pool = fresh();
        apply(&mut pool, &[Request::CreateThin]); // 1: id 0
        finish(&mut pool, 1, &[]);
        // A delete of a busy volume, retried 50 times: one tombstone for the run.
        for n in 2..52 {
            apply(&mut pool, &[Request::Delete { id: t(0) }]);
            finish(&mut pool, n, &[n]);
        }
        apply(&mut pool, &[Request::CreateThin]); // 52: prunes 51
        assert_eq!(pool.spec.aborted_transactions.len(), 1);
        let run = pool.spec.aborted_transactions[0].clone();
        assert_eq!((run.id, run.through), (2, Some(51)));
        assert!(run.covers(30) && !run.covers(52) && !run.covers(1));
        // The delete finally commits: the run ends with it.
        finish(&mut pool, 52, &[]);
        apply(&mut pool, &[Request::Delete { id: t(0) }]); // 53
        finish(&mut pool, 53, &[]);
        apply(&mut pool, &[Request::CreateThin]); // 54: prunes 53
        assert!(pool.spec.aborted_transactions.is_empty(), "{:?}", pool.spec.aborted_transactions);
        // An aborted create stays until its object is settled, then is forgotten.
        finish(&mut pool, 54, &[54]);
        apply(&mut pool, &[Request::CreateThin]); // 55: prunes 54
        assert_eq!(pool.spec.aborted_transactions.iter().map(|t| t.id).collect::<Vec<_>>(), [54]);
        assert_eq!(forget(&pool, 53).unwrap(), None, "no tombstone, nothing to write");
        pool.spec = forget(&pool, 54).unwrap().expect("a tombstone to drop");
        assert!(pool.spec.aborted_transactions.is_empty());
    }

    #[test]
    fn forgetting_prunes_a_create_reported_aborted_before_it_was_pruned() {
        let mut pool = fresh();
        apply(&mut pool, &[Request::CreateThin]); // 1
        finish(&mut pool, 1, &[1]);
        // The waiter read the abort from the status: forgetting prunes it and leaves no tombstone.
        let spec = forget(&pool, 1).unwrap().expect("pruned and forgotten");
        assert!(spec.pending_transactions.is_empty() && spec.aborted_transactions.is_empty());
        assert_eq!(spec.next_device_id, 0);
    }

    #[test]
    fn refuses_unknown_and_doubly_deleted_devices() {
        let mut pool = fresh();
        apply(&mut pool, &[Request::CreateThin]);
        // Its create has not been reported finished: no delete yet.
        assert!(matches!(plan(&pool, &[Request::Delete { id: t(0) }]), Err(AllocError::CreatePending { txn: 1, .. })));
        finish(&mut pool, 1, &[]);
        assert!(matches!(plan(&pool, &[Request::Delete { id: t(5) }]), Err(AllocError::NotAllocated { .. })));
        assert!(matches!(
            plan(&pool, &[Request::CreateSnapshot { origin: t(1) }]),
            Err(AllocError::NotAllocated { .. })
        ));
        apply(&mut pool, &[Request::Delete { id: t(0) }]);
        assert!(matches!(plan(&pool, &[Request::Delete { id: t(0) }]), Err(AllocError::BeingDeleted { txn: 2, .. })));
        assert!(matches!(plan(&pool, &[]), Err(AllocError::Empty)));
        assert!(matches!(
            plan(&pool, &[Request::CreateThin, Request::Delete { id: t(0) }]),
            Err(AllocError::BeingDeleted { .. })
        ));
    }

    #[test]
    fn a_record_that_may_not_know_the_pools_devices_allocates_nothing() {
        let mut pool = fresh();
        pool.spec.devices_unknown_at_transaction = Some(7);
        assert!(matches!(plan(&pool, &[Request::CreateThin]), Err(AllocError::RecordUnverified { at: 7, .. })));
    }

    #[test]
    fn unhealthy_pools_get_nothing() {
        let mut pool = fresh();
        pool.status = Some(ThinPoolStatus {
            health: Some(PoolHealth::Unhealthy),
            last_error: Some("kernel ahead".into()),
            ..Default::default()
        });
        let e = plan(&pool, &[Request::CreateThin]).unwrap_err();
        assert!(e.to_string().contains("kernel ahead"), "{e}");
    }

    #[test]
    fn the_id_space_runs_out_cleanly() {
        let mut pool = fresh();
        pool.spec.next_device_id = ThinId::LIMIT - 1;
        assert_eq!(apply(&mut pool, &[Request::CreateThin]).created, [ThinId::MAX]);
        assert!(matches!(plan(&pool, &[Request::CreateThin]), Err(AllocError::IdsExhausted { .. })));
        pool.spec.free_device_ranges = vec![DeviceRange { first: 7, last: 7 }];
        assert_eq!(apply(&mut pool, &[Request::CreateThin]).created, [t(7)]);
    }

    #[test]
    fn inconsistent_records_are_refused() {
        let mut pool = fresh();
        pool.spec.pending_transactions = vec![PendingTransaction {
            id: 1,
            operations: vec![TransactionOperation { op: OperationKind::CreateThin, id: t(0), origin: None }],
        }];
        // pending 1 but last assigned 0
        assert!(matches!(plan(&pool, &[Request::CreateThin]), Err(AllocError::Record { .. })));
    }

    #[test]
    fn backoff_is_bounded() {
        for c in 1..40 {
            assert!(backoff(c) <= Duration::from_millis(16));
        }
    }

    /// Random churn against a model of which ids are held (created and not
    /// yet freed): the ranges are exactly the free ids below the cursor,
    /// merged; no id is handed out while held (its delete uncommitted or
    /// unpruned); the record stays bounded by what is held and in flight.
    mod churn {
        use super::*;
        use proptest::prelude::*;
        use std::collections::BTreeSet;

        #[derive(Clone, Debug)]
        enum Step {
            Create(u8),
            Delete(usize),
            /// The node finishes everything pending; those with an odd index abort when `abort`.
            Finish { abort: bool },
            Forget,
        }

        fn step() -> impl Strategy<Value = Step> {
            prop_oneof![
                (1u8..3).prop_map(Step::Create),
                any::<usize>().prop_map(Step::Delete),
                any::<bool>().prop_map(|abort| Step::Finish { abort }),
                Just(Step::Forget),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(200))]
            #[test]
            fn ranges_stay_merged_and_bounded(steps in prop::collection::vec(step(), 1..120)) {
                let mut pool = fresh();
                let mut held: BTreeSet<u32> = BTreeSet::new();
                let mut live: BTreeSet<u32> = BTreeSet::new();
                let mut aborted: Vec<u64> = Vec::new();
                let mut pending: Vec<(u64, Vec<u32>, Vec<u32>)> = Vec::new();
                let mut max_size = 0usize;
                for s in steps {
                    match s {
                        Step::Create(n) => {
                            let p = apply(&mut pool, &vec![Request::CreateThin; n as usize]);
                            for id in &p.created {
                                prop_assert!(held.insert(id.get()), "id {} handed out while held", id);
                            }
                            pending.push((p.transaction.id().get(), p.created.iter().map(|i| i.get()).collect(), vec![]));
                        }
                        Step::Delete(k) => {
                            let deletable: Vec<u32> = live.iter().copied().filter(|d| !pending.iter().any(|p| p.2.contains(d))).collect();
                            if deletable.is_empty() { continue; }
                            let d = deletable[k % deletable.len()];
                            let p = apply(&mut pool, &[Request::Delete { id: t(d) }]);
                            pending.push((p.transaction.id().get(), vec![], vec![d]));
                        }
                        Step::Finish { abort } => {
                            let Some(last) = pending.last().map(|p| p.0) else { continue };
                            let mut ab = aborted.clone();
                            for (i, (txn, creates, deletes)) in pending.drain(..).enumerate() {
                                if abort && i % 2 == 1 {
                                    ab.push(txn);
                                    if !creates.is_empty() { aborted.push(txn); }
                                    // Freed when pruned; until then still held.
                                } else {
                                    live.extend(creates);
                                    for d in deletes { live.remove(&d); }
                                }
                            }
                            finish(&mut pool, last, &ab);
                            // Prune now (a plan of a delete that is refused prunes nothing): a no-op create then.
                            let p = apply(&mut pool, &[Request::CreateThin]);
                            for f in &p.freed { held.remove(&f.get()); }
                            for id in &p.created { prop_assert!(held.insert(id.get()), "id {} handed out while held", id); }
                            pending.push((p.transaction.id().get(), p.created.iter().map(|i| i.get()).collect(), vec![]));
                        }
                        Step::Forget => {
                            if let Some(txn) = aborted.pop() {
                                if let Some(spec) = forget(&pool, txn).unwrap() { pool.spec = spec; }
                            }
                        }
                    }
                    let spec = &pool.spec;
                    for w in spec.free_device_ranges.windows(2) {
                        prop_assert!(w[0].last + 1 < w[1].first, "ranges sorted, apart: {:?}", spec.free_device_ranges);
                    }
                    for r in &spec.free_device_ranges {
                        prop_assert!(r.first <= r.last && r.last + 1 < spec.next_device_id, "below the cursor, not reaching it: {:?} / {}", r, spec.next_device_id);
                    }
                    for id in 0..spec.next_device_id.max(1) + 2 {
                        prop_assert_eq!(spec.is_free(t(id)), !held.contains(&id), "id {}", id);
                    }
                    prop_assert!(spec.free_device_ranges.len() <= held.len() + 1);
                    prop_assert!(spec.aborted_transactions.len() <= aborted.len() + held.len());
                    let in_flight = held.len() + spec.pending_transactions.len() + spec.aborted_transactions.len();
                    let size = serde_json::to_vec(spec).unwrap().len();
                    prop_assert!(size <= 400 + 120 * in_flight, "{} bytes for {} held / in flight", size, in_flight);
                    max_size = max_size.max(size);
                }
                let _ = max_size;
            }
        }
    }
}
