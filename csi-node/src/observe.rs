//! What the node records into its metrics (`csi_contract::metrics`): the
//! latency of each transaction phase (suspend, message, resume) from the
//! engine's boundaries, how transactions ended, and the pool's usage and mode.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use thin_csi_api::pool::ThinPoolStatus;
use thinpool::executor::Ended;
use thinpool::{Boundary, TransactionId};

/// Times the phases of each commit: Start → Suspended is `suspend`,
/// Suspended → TransactionIdSet is `message` (every operation and the
/// commit point), then → Resumed is `resume` (also on a failure path,
/// from the last boundary seen).
#[derive(Debug, Default)]
pub struct PhaseClock {
    last: Option<Instant>,
    /// Transactions this run started a commit of.
    pub started: BTreeSet<TransactionId>,
}

impl PhaseClock {
    pub fn reached(&mut self, txn: TransactionId, boundary: Boundary) {
        let now = Instant::now();
        let phase = match boundary {
            Boundary::Start => {
                self.started.insert(txn);
                None
            }
            Boundary::Suspended => Some("suspend"),
            Boundary::Posted { .. } => return,
            Boundary::TransactionIdSet => Some("message"),
            Boundary::Resumed => Some("resume"),
        };
        if let (Some(phase), Some(last)) = (phase, self.last) {
            csi_contract::metrics::get().phase(phase, now - last);
        }
        self.last = if boundary == Boundary::Resumed { None } else { Some(now) };
    }
}

/// Counts transactions that ended, each once (`counted` is the highest id
/// counted; transactions end in order): `committed` / `aborted` when this
/// run committed or aborted it, `recovered` when it was found ended in the
/// kernel after a restart (its report had been lost).
pub fn count_ended(ended: &[(TransactionId, Ended)], started: &BTreeSet<TransactionId>, counted: &AtomicU64) {
    let metrics = csi_contract::metrics::get();
    for (n, how) in ended {
        if counted.fetch_max(n.get(), Ordering::SeqCst) >= n.get() {
            continue;
        }
        let outcome = match (started.contains(n), how) {
            (false, _) => "recovered",
            (true, Ended::Committed) => "committed",
            (true, Ended::Aborted { .. }) => "aborted",
        };
        metrics.transaction(outcome);
    }
}

/// The pool's usage and mode gauges, from the status the node writes.
pub fn pool_gauges(pool: &str, status: &ThinPoolStatus) {
    let (Some(du), Some(dt), Some(mu), Some(mt), Some(mode)) =
        (status.data_used_bytes, status.data_total_bytes, status.metadata_used_bytes, status.metadata_total_bytes, status.mode.as_ref())
    else {
        return;
    };
    let mode = serde_json::to_value(mode).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default();
    csi_contract::metrics::get().pool(pool, (du, dt), (mu, mt), &mode);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(n: u64) -> TransactionId {
        TransactionId::new(n)
    }

    #[test]
    fn each_transaction_is_counted_once() {
        csi_contract::metrics::init(csi_contract::metrics::Role::Node);
        let counted = AtomicU64::new(0);
        let started: BTreeSet<_> = [t(2), t(3)].into();
        let aborted = Ended::Aborted { kind: thinpool::AbortKind::NoSpace, reason: "full".into() };
        let ended = vec![(t(1), Ended::Committed), (t(2), Ended::Committed), (t(3), aborted)];
        count_ended(&ended, &started, &counted);
        count_ended(&ended, &started, &counted); // a repeated report
        let text = csi_contract::metrics::encode();
        for want in ["outcome=\"recovered\"} 1", "outcome=\"committed\"} 1", "outcome=\"aborted\"} 1"] {
            assert!(text.contains(want), "{want} missing:\n{text}");
        }
    }
}
