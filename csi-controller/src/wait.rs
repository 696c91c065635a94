//! Waiting for the node to finish a transaction: a watch on the one pool
//! object, no polling. The node writes `status.finishedTransaction` (every
//! transaction up to it has ended) and lists aborted ones.

use std::time::Duration;

use futures::StreamExt;
use kube::api::Api;
use kube::runtime::{watcher, WatchStreamExt};
use thin_csi_api::{PoolHealth, ThinPool};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Finished {
    /// The kernel committed the transaction.
    Committed,
    /// The node consumed the transaction id without its effects.
    Aborted { reason: Option<String> },
}

#[derive(Debug, thiserror::Error)]
pub enum WaitError {
    #[error("pool {pool}: transaction {txn} not finished after {waited:?}")]
    Timeout { pool: String, txn: u64, waited: Duration },
    #[error("pool {pool} is unhealthy: {reason}")]
    PoolUnhealthy { pool: String, reason: String },
    #[error("pool {pool} was deleted")]
    PoolDeleted { pool: String },
    #[error("watching pool {pool}: {source}")]
    Watch { pool: String, source: watcher::Error },
}

/// What `pool`'s status says about transaction `txn`, if it has ended.
pub fn outcome(pool: &ThinPool, txn: u64) -> Result<Option<Finished>, WaitError> {
    let name = pool.metadata.name.clone().unwrap_or_default();
    let Some(status) = &pool.status else { return Ok(None) };
    if status.finished_transaction.is_some_and(|f| f >= txn) {
        return Ok(Some(if status.aborted_transactions.contains(&txn) {
            Finished::Aborted { reason: status.last_error.clone() }
        } else {
            Finished::Committed
        }));
    }
    if status.health == Some(PoolHealth::Unhealthy) {
        return Err(WaitError::PoolUnhealthy { pool: name, reason: status.last_error.clone().unwrap_or_default() });
    }
    Ok(None)
}

/// Waits until the node reports transaction `txn` of `pool` finished.
pub async fn wait_finished(pools: &Api<ThinPool>, pool: &str, txn: u64, timeout: Duration) -> Result<Finished, WaitError> {
    let config = watcher::Config::default().fields(&format!("metadata.name={pool}"));
    let mut stream = watcher(pools.clone(), config).default_backoff().boxed();
    let watch = async {
        while let Some(event) = stream.next().await {
            match event {
                Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p)) => {
                    if let Some(done) = outcome(&p, txn)? {
                        return Ok(done);
                    }
                }
                Ok(watcher::Event::Delete(_)) => return Err(WaitError::PoolDeleted { pool: pool.to_string() }),
                Ok(_) => {}
                Err(source) => return Err(WaitError::Watch { pool: pool.to_string(), source }),
            }
        }
        Err(WaitError::PoolDeleted { pool: pool.to_string() })
    };
    tokio::time::timeout(timeout, watch).await.unwrap_or(Err(WaitError::Timeout { pool: pool.to_string(), txn, waited: timeout }))
}
