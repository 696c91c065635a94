//! The one place where the controller's errors become gRPC statuses.
//!
//! Every RPC returns [`Error`]; the variants say what went wrong in CSI
//! terms (the codes csi-sanity and the sidecars act on), and the lower
//! layers' typed errors ([`AllocError`], [`WaitError`], `kube::Error`) are
//! mapped here and nowhere else.

use csi_contract::codes::api_error_code;
use tonic::{Code, Status};

use thin_csi_api::AbortReason;

use crate::alloc::AllocError;
use crate::wait::WaitError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A request field is missing or wrong: names the field and why.
    #[error("{field}: {why}")]
    InvalidArgument { field: String, why: String },
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    ResourceExhausted(String),
    #[error("{0}")]
    OutOfRange(String),
    #[error("{0}")]
    FailedPrecondition(String),
    /// Another operation on the same object is in flight, or a paging token is not ours.
    #[error("{0}")]
    Aborted(String),
    /// This replica is not the leader, or the pool/API cannot be used right now.
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Internal(String),
    /// The node aborted the transaction of a create or a delete.
    #[error("pool {pool}: the node aborted the {what} (transaction {txn}, {reason:?}): {message}")]
    TransactionAborted { pool: String, what: &'static str, txn: u64, reason: AbortReason, message: String },
    #[error(transparent)]
    Alloc(#[from] AllocError),
    #[error(transparent)]
    Wait(#[from] WaitError),
    #[error("Kubernetes API: {0}")]
    Api(#[from] kube::Error),
}

impl Error {
    pub fn invalid(field: impl Into<String>, why: impl Into<String>) -> Self {
        Error::InvalidArgument { field: field.into(), why: why.into() }
    }

    /// The gRPC code of this error.
    pub fn code(&self) -> Code {
        match self {
            Error::InvalidArgument { .. } => Code::InvalidArgument,
            Error::NotFound(_) => Code::NotFound,
            Error::AlreadyExists(_) => Code::AlreadyExists,
            Error::ResourceExhausted(_) => Code::ResourceExhausted,
            Error::OutOfRange(_) => Code::OutOfRange,
            Error::FailedPrecondition(_) => Code::FailedPrecondition,
            Error::Aborted(_) => Code::Aborted,
            Error::Unavailable(_) => Code::Unavailable,
            Error::Internal(_) => Code::Internal,
            Error::TransactionAborted { reason, .. } => match reason {
                AbortReason::NoSpace => Code::ResourceExhausted,
                AbortReason::DeviceBusy => Code::FailedPrecondition,
                AbortReason::OriginMissing => Code::NotFound,
                // Nothing is wrong with the request: the CO retries.
                AbortReason::SuspendFailed | AbortReason::ReasonLost => Code::Unavailable,
                AbortReason::Other => Code::Internal,
            },
            Error::Alloc(e) => match e {
                AllocError::Empty | AllocError::Record { .. } | AllocError::Transaction { .. } => Code::Internal,
                AllocError::PoolNotFound { .. } | AllocError::NotAllocated { .. } => Code::NotFound,
                AllocError::PoolUnhealthy { .. } | AllocError::RecordUnverified { .. } => Code::Unavailable,
                AllocError::IdsExhausted { .. } => Code::ResourceExhausted,
                // Another operation is deleting it, or lost races: retry later.
                AllocError::BeingDeleted { .. } | AllocError::CreatePending { .. } | AllocError::Contention { .. } => Code::Aborted,
                AllocError::Api(e) => api_error_code(e),
            },
            Error::Wait(e) => match e {
                WaitError::Timeout { .. } => Code::DeadlineExceeded,
                WaitError::PoolUnhealthy { .. } | WaitError::Watch { .. } | WaitError::TransactionUnknown { .. } => Code::Unavailable,
                WaitError::PoolDeleted { .. } => Code::NotFound,
                WaitError::Read { source, .. } => api_error_code(source),
                WaitError::PoolReadOnly { mode: thin_csi_api::PoolMode::NeedsCheck, .. } => Code::Unavailable,
                WaitError::PoolReadOnly { .. } => Code::ResourceExhausted,
            },
            Error::Api(e) => api_error_code(e),
        }
    }
}

impl From<Error> for Status {
    fn from(e: Error) -> Status {
        let code = e.code();
        if matches!(code, Code::Internal | Code::Unavailable | Code::DeadlineExceeded) {
            tracing::warn!(error = %e, ?code, "rpc failed");
        } else {
            tracing::debug!(error = %e, ?code, "rpc refused");
        }
        Status::new(code, e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use thinpool::ThinId;

    #[test]
    fn codes() {
        assert_eq!(Status::from(Error::invalid("name", "missing")).code(), Code::InvalidArgument);
        assert_eq!(Status::from(Error::invalid("name", "missing")).message(), "name: missing");
        assert_eq!(Error::NotFound("x".into()).code(), Code::NotFound);
        assert_eq!(Error::AlreadyExists("x".into()).code(), Code::AlreadyExists);
        assert_eq!(Error::OutOfRange("x".into()).code(), Code::OutOfRange);
        assert_eq!(Error::Aborted("x".into()).code(), Code::Aborted);
        let id = ThinId::new(3).unwrap();
        assert_eq!(Error::from(AllocError::IdsExhausted { pool: "p".into() }).code(), Code::ResourceExhausted);
        assert_eq!(Error::from(AllocError::NotAllocated { pool: "p".into(), id }).code(), Code::NotFound);
        assert_eq!(Error::from(AllocError::BeingDeleted { pool: "p".into(), id, txn: 4 }).code(), Code::Aborted);
        assert_eq!(Error::from(AllocError::PoolUnhealthy { pool: "p".into(), reason: "r".into() }).code(), Code::Unavailable);
        let t = WaitError::Timeout { pool: "p".into(), txn: 1, waited: std::time::Duration::from_secs(1) };
        assert_eq!(Error::from(t).code(), Code::DeadlineExceeded);
        let aborted = |reason| Error::TransactionAborted { pool: "p".into(), what: "create", txn: 3, reason, message: "m".into() }.code();
        assert_eq!(aborted(AbortReason::NoSpace), Code::ResourceExhausted);
        assert_eq!(aborted(AbortReason::DeviceBusy), Code::FailedPrecondition);
        assert_eq!(aborted(AbortReason::ReasonLost), Code::Unavailable);
        let ro = WaitError::PoolReadOnly { pool: "p".into(), txn: 2, mode: thin_csi_api::PoolMode::ReadOnly, reason: "metadata full".into() };
        assert_eq!(Error::from(ro).code(), Code::ResourceExhausted);
        let status = Status::from(Error::from(AllocError::PoolNotFound { pool: "p".into() }));
        assert_eq!(status.code(), Code::NotFound);
        assert!(status.message().contains("pool p not found"));
    }
}
