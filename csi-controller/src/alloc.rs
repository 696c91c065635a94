//! Allocation of thin device ids and transaction ids for one pool, recorded
//! in the pool's `ThinPool` object before any node acts.
//!
//! [`plan`] is the pure part: from the object as read, it drops the
//! transactions the node reports finished (returning the ids they freed to
//! the free list), then assigns ids for the request — free list first, then
//! the cursor — and the next transaction id, and appends the transaction to
//! `spec.pendingTransactions`. [`Allocator::allocate`] reads the object,
//! plans, and replaces the object with the `resourceVersion` it read; a 409
//! Conflict (someone else wrote in between, another allocation or the node's
//! status) re-reads and plans again. Nothing is handed out unless the write
//! that records it succeeded.
//!
//! Ids return to the free list only once the node has reported the
//! transaction finished (`status.finishedTransaction`): a committed delete
//! frees the deleted id; an aborted transaction frees the ids it would have
//! created (abort removed them) and none of its deletes (none was posted).

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use kube::api::{Api, PostParams};
use kube::Client;
use thin_csi_api::{convert, PendingTransaction, PoolHealth, ThinPool, ThinPoolSpec};
use thinpool::{Operation, ThinId, Transaction, TransactionError, TransactionId};

/// One operation the caller wants; the allocator picks the ids it creates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request {
    CreateThin,
    CreateSnapshot { origin: ThinId },
    Delete { id: ThinId },
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
    /// The ids this write returned to the free list (finished transactions pruned).
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
    // Checks order, ranges and finished <= assigned.
    let record = convert::pool_record(pool).map_err(|source| AllocError::Record { pool: name.clone(), source })?;

    let finished = record.finished.get();
    let aborted: BTreeSet<u64> = status.aborted_transactions.iter().map(|a| a.id).collect();
    let mut spec = pool.spec.clone();

    // Prune what the node finished; free the ids that finishing released.
    let mut freed = Vec::new();
    let mut still_pending = Vec::new();
    for p in std::mem::take(&mut spec.pending_transactions) {
        if p.id > finished {
            still_pending.push(p);
            continue;
        }
        let txn = Transaction::try_from(&p).map_err(|source| AllocError::Record { pool: name.clone(), source })?;
        if aborted.contains(&p.id) {
            freed.extend(txn.created_ids());
        } else {
            freed.extend(txn.deleted_ids());
        }
    }
    spec.pending_transactions = still_pending;
    let mut free: Vec<ThinId> = Vec::with_capacity(spec.free_device_ids.len() + freed.len());
    for id in spec.free_device_ids.iter() {
        free.push(*id);
    }
    for id in &freed {
        if !free.contains(id) {
            free.push(*id);
        }
    }

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
        if id.get() >= spec.next_device_id || free.contains(&id) {
            return Err(AllocError::NotAllocated { pool: name.clone(), id });
        }
        if let Some(txn) = pending(true, id) {
            return Err(AllocError::BeingDeleted { pool: name.clone(), id, txn });
        }
        Ok(())
    };
    for r in requests {
        match *r {
            Request::Delete { id } => {
                check_existing(id)?;
                if let Some(txn) = pending(false, id) {
                    return Err(AllocError::CreatePending { pool: name.clone(), id, txn });
                }
            }
            Request::CreateSnapshot { origin: id } => check_existing(id)?,
            Request::CreateThin => {}
        }
    }

    // Assign: the cursor first; freed ids (oldest first) only once all 2^24
    // have been handed out. A freed id then comes back only after ~16.7 M
    // creates, so a late retry of a DeleteVolume or DeleteSnapshot (its id
    // names pool and device, not a generation) cannot reach a new device
    // that reused the id. The record stays small either way.
    let mut free = std::collections::VecDeque::from(free);
    let mut created = Vec::new();
    let mut ops = Vec::with_capacity(requests.len());
    for r in requests {
        let op = match *r {
            Request::Delete { id } => Operation::Delete { id },
            Request::CreateThin | Request::CreateSnapshot { .. } => {
                let id = if spec.next_device_id < ThinId::LIMIT {
                    let id = ThinId::new(spec.next_device_id.into()).expect("below the limit");
                    spec.next_device_id += 1;
                    id
                } else {
                    free.pop_front().ok_or_else(|| AllocError::IdsExhausted { pool: name.clone() })?
                };
                created.push(id);
                match *r {
                    Request::CreateSnapshot { origin } => Operation::CreateSnapshot { id, origin },
                    _ => Operation::CreateThin { id },
                }
            }
        };
        ops.push(op);
    }
    spec.free_device_ids = free.into();

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
    fn deleted_ids_are_reused_only_after_the_delete_commits() {
        let mut pool = fresh();
        let top = ThinId::LIMIT;
        pool.spec.next_device_id = top - 3; // reuse starts when the cursor runs out
        apply(&mut pool, &[Request::CreateThin, Request::CreateThin]); // 1: ids top-3, top-2
        finish(&mut pool, 1, &[]);
        apply(&mut pool, &[Request::Delete { id: t(top - 3) }]); // 2
        // Not finished yet: top-3 is not free; the cursor hands out its last id.
        let c = apply(&mut pool, &[Request::CreateThin]); // 3
        assert_eq!(c.created, [t(top - 1)]);
        assert!(c.freed.is_empty());
        assert!(matches!(plan(&pool, &[Request::CreateThin]), Err(AllocError::IdsExhausted { .. })));
        // The node finished 1 and 2 (committed): top-3 comes back.
        finish(&mut pool, 2, &[]);
        let d = apply(&mut pool, &[Request::CreateThin]); // 4
        assert_eq!(d.freed, [t(top - 3)]);
        assert_eq!(d.created, [t(top - 3)]);
        assert_eq!(pool.spec.pending_transactions.iter().map(|p| p.id).collect::<Vec<_>>(), [3, 4]);
        assert!(pool.spec.free_device_ids.is_empty());
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
        assert_eq!(pool.spec.free_device_ids, [t(1)]);
        // Fresh ids first; the freed one once the cursor has run out.
        assert_eq!(apply(&mut pool, &[Request::CreateThin]).created, [t(2)]);
        pool.spec.next_device_id = ThinId::LIMIT;
        assert_eq!(apply(&mut pool, &[Request::CreateThin]).created, [t(1)]);
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
        pool.spec.free_device_ids = vec![t(7)];
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
}
