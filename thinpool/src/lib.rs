//! thinpool: the pool transaction engine.
//!
//! Pure logic over the [`Kernel`] boundary: typed ids, transactions, the
//! commit sequence (suspend origins → messages → `set_transaction_id` →
//! resume), recovery after a crash, the status parser, the on-device pool
//! header, and an in-memory kernel model for tests. No I/O happens here.

pub mod cases;
pub mod engine;
pub mod executor;
pub mod ids;
pub mod kernel;
pub mod layout;
pub mod model;
pub mod status;
pub mod txn;

pub use engine::{commit, device_exists, reconcile, recover, thaw, Boundary, CommitError, CommitReport, Observer, PoolRecord, RecoverError, RecoveryReport};
pub use executor::{AbortKind, Ended, Executor, Progress};
pub use ids::{IdError, PoolName, Sectors, ThinId, TransactionId};
pub use kernel::{ActiveThin, Kernel, KernelError};
pub use status::{PoolMode, PoolStatus, Usage, WorkingStatus};
pub use txn::{Operation, PoolMessage, Transaction, TransactionError};

/// Shorthands for the unit tests of this crate.
#[cfg(test)]
pub(crate) mod test_support {
    use crate::{Operation, ThinId, Transaction, TransactionId};

    pub fn t(n: u32) -> ThinId {
        ThinId::new(n.into()).unwrap()
    }

    pub fn txn(n: u64, ops: Vec<Operation>) -> Transaction {
        Transaction::new(TransactionId::new(n), ops).unwrap()
    }
}
