//! Waiting for the node to finish a transaction: one shared watch of the
//! pool objects ([`PoolWatch`]), no polling, no request per wait. The node
//! writes `status.finishedTransaction` (every transaction up to it has
//! ended) and lists aborted ones.

use std::time::Duration;

use futures::StreamExt;
use kube::api::Api;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{watcher, WatchStreamExt};
use thin_csi_api::{AbortedTransaction, PoolHealth, PoolMode, ThinPool, Tombstone};
use thinpool::ThinId;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Finished {
    /// The kernel committed the transaction.
    Committed,
    /// The node consumed the transaction id without its effects, and why.
    Aborted(AbortedTransaction),
}

#[derive(Debug, thiserror::Error)]
pub enum WaitError {
    #[error("pool {pool}: transaction {txn} not finished after {waited:?}")]
    Timeout { pool: String, txn: u64, waited: Duration },
    #[error("pool {pool} is unhealthy: {reason}")]
    PoolUnhealthy { pool: String, reason: String },
    /// The kernel stopped taking changes: metadata full (read-only) or
    /// damaged (needs_check). The transaction stays pending until repaired.
    #[error("pool {pool} is {mode:?} and takes no transaction; transaction {txn} is pending until the pool is repaired: {reason}")]
    PoolReadOnly { pool: String, txn: u64, mode: PoolMode, reason: String },
    /// The record does not hold the transaction: the pool object was
    /// deleted and re-created since it was assigned.
    #[error("pool {pool}: transaction {txn} is not in the pool's record (last assigned {last_assigned}); the pool object was re-created since")]
    TransactionUnknown { pool: String, txn: u64, last_assigned: u64 },
    #[error("pool {pool} was deleted")]
    PoolDeleted { pool: String },
    #[error("watching pool {pool}: {source}")]
    Watch { pool: String, source: watcher::Error },
    #[error("reading pool {pool}: {source}")]
    Read { pool: String, source: kube::Error },
}

/// What `pool`'s status says about transaction `txn`, if it has ended.
pub fn outcome(pool: &ThinPool, txn: u64) -> Result<Option<Finished>, WaitError> {
    outcome_in(pool, txn, None, Subject::Unknown)
}

/// What the awaited transaction does to which device. Once the controller
/// has pruned a finished transaction from the record, the node no longer
/// lists it as aborted; its tombstone (`spec.abortedTransactions`) tells
/// instead, and a pruned transaction without one committed. (Not the free
/// ranges: ids are reused at once, so an aborted create's id may already
/// belong to a newer device.)
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Subject {
    /// A create (or snapshot) by this transaction.
    Create,
    /// A delete of this device by this transaction.
    Delete(ThinId),
    Unknown,
}

/// The tombstone that says pruned transaction `txn` aborted, if any.
fn tombstone(pool: &ThinPool, txn: u64, subject: Subject) -> Option<&Tombstone> {
    pool.spec.aborted_transactions.iter().find(|t| match subject {
        Subject::Create => t.id == txn && !t.creates.is_empty(),
        Subject::Delete(d) => t.covers(txn) && t.deletes.contains(&d),
        Subject::Unknown => t.covers(txn),
    })
}

/// [`outcome`] for a transaction assigned by the record of pool object
/// `uid` (when known): another uid is a re-created object, whose record
/// does not hold it.
pub fn outcome_in(pool: &ThinPool, txn: u64, uid: Option<&str>, subject: Subject) -> Result<Option<Finished>, WaitError> {
    let name = pool.metadata.name.clone().unwrap_or_default();
    if uid.is_some() && pool.metadata.uid.as_deref() != uid {
        return Err(WaitError::TransactionUnknown { pool: name, txn, last_assigned: pool.spec.last_assigned_transaction });
    }
    if txn > pool.spec.last_assigned_transaction {
        return Err(WaitError::TransactionUnknown { pool: name, txn, last_assigned: pool.spec.last_assigned_transaction });
    }
    let status = pool.status.clone().unwrap_or_default();
    if pool.finished_transaction() >= txn {
        let pruned = !pool.spec.pending_transactions.iter().any(|p| p.id == txn);
        return Ok(Some(match (status.aborted(txn), pruned) {
            (Some(a), _) => Finished::Aborted(a.clone()),
            (None, true) => match tombstone(pool, txn, subject) {
                Some(t) => Finished::Aborted(t.report(txn)),
                None => Finished::Committed,
            },
            (None, false) => Finished::Committed,
        }));
    }
    if status.health == Some(PoolHealth::Unhealthy) {
        return Err(WaitError::PoolUnhealthy { pool: name, reason: status.last_error.clone().unwrap_or_default() });
    }
    if let Some(mode @ (PoolMode::ReadOnly | PoolMode::NeedsCheck)) = status.mode {
        return Err(WaitError::PoolReadOnly { pool: name, txn, mode, reason: status.last_error.clone().unwrap_or_default() });
    }
    Ok(None)
}

/// Waits until the node reports transaction `txn` of `pool` finished, on a
/// watch of its own (for test programs; the controller shares one
/// [`PoolWatch`]).
pub async fn wait_finished(pools: &Api<ThinPool>, pool: &str, txn: u64, timeout: Duration) -> Result<Finished, WaitError> {
    PoolWatch::start(pools.clone()).wait_finished_in(pool, txn, None, Subject::Unknown, timeout).await
}

/// One watch of every pool object, shared by all the waits of a process:
/// a wait opens no watch and sends no request of its own (issue 10, item 2)
/// — only a GET when the shared view is behind what the waiter knows (the
/// object missing, or not yet holding the transaction the waiter's own
/// write assigned), so a lagging view is never taken for a deleted or
/// re-created pool.
#[derive(Clone)]
pub struct PoolWatch {
    pools: Api<ThinPool>,
    store: Store<ThinPool>,
    changed: tokio::sync::watch::Receiver<u64>,
}

impl PoolWatch {
    /// Starts the watch (a task of the current runtime).
    pub fn start(pools: Api<ThinPool>) -> PoolWatch {
        let (store, writer) = reflector::store();
        let (tell, changed) = tokio::sync::watch::channel(0u64);
        let events = reflector::reflector(writer, watcher(pools.clone(), watcher::Config::default())).default_backoff();
        tokio::spawn(async move {
            let mut events = std::pin::pin!(events);
            while let Some(event) = events.next().await {
                if let Err(e) = event {
                    tracing::warn!(error = %e, "watching the pool objects (retrying with backoff)");
                }
                if tell.is_closed() {
                    return; // every PoolWatch is gone
                }
                tell.send_modify(|n| *n = n.wrapping_add(1));
            }
        });
        PoolWatch { pools, store, changed }
    }

    /// Waits until the node reports transaction `txn` of `pool` (assigned
    /// by the record of pool object `uid`, when known) finished.
    pub async fn wait_finished_in(&self, pool: &str, txn: u64, uid: Option<&str>, subject: Subject, timeout: Duration) -> Result<Finished, WaitError> {
        let mut changed = self.changed.clone();
        let key = ObjectRef::new(pool);
        let wait = async {
            loop {
                changed.borrow_and_update();
                let seen = self.store.get(&key);
                match seen.as_deref().map(|p| outcome_in(p, txn, uid, subject)) {
                    Some(Ok(Some(done))) => return Ok(done),
                    Some(Ok(None)) => {}
                    None | Some(Err(WaitError::TransactionUnknown { .. })) => match self.pools.get_opt(pool).await {
                        Ok(None) => return Err(WaitError::PoolDeleted { pool: pool.to_string() }),
                        Ok(Some(fresh)) => {
                            if let Some(done) = outcome_in(&fresh, txn, uid, subject)? {
                                return Ok(done);
                            }
                        }
                        Err(source) => return Err(WaitError::Read { pool: pool.to_string(), source }),
                    },
                    Some(Err(e)) => return Err(e),
                }
                if changed.changed().await.is_err() {
                    return Err(WaitError::PoolDeleted { pool: pool.to_string() });
                }
            }
        };
        tokio::time::timeout(timeout, wait).await.unwrap_or(Err(WaitError::Timeout { pool: pool.to_string(), txn, waited: timeout }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use thin_csi_api::{AbortReason, PendingTransaction, ThinPoolSpec, ThinPoolStatus, TransactionOperation};

    fn t(n: u32) -> ThinId {
        ThinId::new(n.into()).unwrap()
    }

    /// A pool at transaction 9 (all finished, none pending) with these tombstones.
    fn pool(tombstones: Vec<Tombstone>) -> ThinPool {
        let mut spec = ThinPoolSpec::new("n", "p", "u", 0);
        spec.last_assigned_transaction = 9;
        spec.next_device_id = 5;
        spec.aborted_transactions = tombstones;
        let mut p = ThinPool::new("u", spec);
        p.status = Some(ThinPoolStatus { finished_transaction: Some(9), ..Default::default() });
        p
    }

    fn tomb(id: u64, through: Option<u64>, creates: &[u32], deletes: &[u32]) -> Tombstone {
        Tombstone { id, through, reason: AbortReason::SuspendFailed, message: "x".into(), creates: creates.iter().map(|i| t(*i)).collect(), deletes: deletes.iter().map(|i| t(*i)).collect() }
    }

    fn aborted(r: Result<Option<Finished>, WaitError>) -> bool {
        matches!(r, Ok(Some(Finished::Aborted(_))))
    }

    #[test]
    fn a_pruned_transaction_is_judged_by_its_tombstone_not_by_the_free_ids() {
        // Create 4 aborted and was pruned; its id 3 is in use again (below
        // the cursor, not free): still aborted, by its tombstone.
        let p = pool(vec![tomb(4, None, &[3], &[]), tomb(5, Some(7), &[], &[1])]);
        assert!(aborted(outcome_in(&p, 4, None, Subject::Create)));
        // No tombstone: committed, whatever the free ids say.
        assert_eq!(outcome_in(&p, 8, None, Subject::Create).unwrap(), Some(Finished::Committed));
        // A run of aborted deletes of device 1 (5..=7) covers each of them, for that device only.
        for txn in 5..=7 {
            assert!(aborted(outcome_in(&p, txn, None, Subject::Delete(t(1)))), "{txn}");
        }
        assert_eq!(outcome_in(&p, 6, None, Subject::Delete(t(2))).unwrap(), Some(Finished::Committed));
        // A create in the middle of the run is not the run's.
        assert_eq!(outcome_in(&p, 6, None, Subject::Create).unwrap(), Some(Finished::Committed));
        let Ok(Some(Finished::Aborted(a))) = outcome_in(&p, 4, None, Subject::Create) else { unreachable!() };
        assert_eq!((a.id, a.reason), (4, AbortReason::SuspendFailed));
    }

    #[test]
    fn a_pending_transaction_is_judged_by_the_status() {
        let mut p = pool(vec![]);
        p.spec.pending_transactions = vec![PendingTransaction { id: 9, operations: vec![TransactionOperation { op: thin_csi_api::OperationKind::CreateThin, id: t(4), origin: None }] }];
        assert_eq!(outcome_in(&p, 9, None, Subject::Create).unwrap(), Some(Finished::Committed));
        p.status.as_mut().unwrap().aborted_transactions = vec![AbortedTransaction { id: 9, reason: AbortReason::NoSpace, message: String::new() }];
        assert!(aborted(outcome_in(&p, 9, None, Subject::Create)));
        assert!(matches!(outcome_in(&p, 10, None, Subject::Create), Err(WaitError::TransactionUnknown { .. })));
    }
}
