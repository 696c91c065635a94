//! The one place where the node's errors become gRPC statuses.
//!
//! Every RPC of the Node and Identity services returns [`Error`]. The
//! variants say what went wrong in CSI terms; the lower layers' typed
//! errors ([`FsError`], [`KernelError`], `kube::Error`) are mapped to codes
//! here and nowhere else.

use csi_contract::IdError;
use thinpool::KernelError;
use tonic::{Code, Status};

use crate::fs::FsError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A request field is missing or wrong: names the field and why.
    #[error("{field}: {why}")]
    InvalidArgument { field: String, why: String },
    /// The volume (or the path given for it) does not exist here.
    #[error("{0}")]
    NotFound(String),
    /// Something is already there that is incompatible with the request.
    #[error("{0}")]
    AlreadyExists(String),
    /// The request comes out of order (publish before stage, unstage while
    /// published) or the device holds something we must not touch.
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    OutOfRange(String),
    /// Another operation on the same volume is in progress.
    #[error("{0}")]
    Aborted(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Internal(String),
    #[error(transparent)]
    Fs(#[from] FsError),
    #[error("thin device: {0}")]
    Kernel(#[from] KernelError),
    #[error("Kubernetes API: {0}")]
    Api(#[from] kube::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn invalid(field: impl Into<String>, why: impl Into<String>) -> Self {
        Error::InvalidArgument { field: field.into(), why: why.into() }
    }

    /// A volume id the node cannot use: none at all is INVALID_ARGUMENT;
    /// one with a malformed generation too; one this driver never issued
    /// names nothing here, NOT_FOUND.
    pub fn volume_id(e: IdError) -> Self {
        match e {
            IdError::Missing => Error::invalid("volume_id", "missing"),
            IdError::BadGeneration(_) => Error::invalid("volume_id", e.to_string()),
            IdError::NotOurs(_) => Error::NotFound(format!("volume {e}")),
        }
    }

    /// The gRPC code of this error.
    pub fn code(&self) -> Code {
        match self {
            Error::InvalidArgument { .. } => Code::InvalidArgument,
            Error::NotFound(_) => Code::NotFound,
            Error::AlreadyExists(_) => Code::AlreadyExists,
            Error::FailedPrecondition(_) => Code::FailedPrecondition,
            Error::OutOfRange(_) => Code::OutOfRange,
            Error::Aborted(_) => Code::Aborted,
            Error::Unavailable(_) => Code::Unavailable,
            Error::Internal(_) => Code::Internal,
            Error::Fs(e) => fs_code(e),
            Error::Kernel(e) => match e {
                // The id is not in the pool: the volume does not exist (any more).
                KernelError::NoData(_) | KernelError::NotActive(_) => Code::NotFound,
                // Open (mounted, bound, held): unstage while still in use.
                KernelError::Busy(_) => Code::FailedPrecondition,
                KernelError::NoSpace(_) => Code::ResourceExhausted,
                KernelError::Invalid(_) => Code::FailedPrecondition,
                KernelError::AlreadyExists(_) | KernelError::AlreadyActive(_) | KernelError::Other { .. } => Code::Internal,
            },
            Error::Api(e) => csi_contract::codes::api_error_code(e),
        }
    }
}

fn fs_code(e: &FsError) -> Code {
    match e {
        FsError::InvalidArgument(_) | FsError::UnsupportedFsType(_) => Code::InvalidArgument,
        FsError::NotFound { .. } => Code::NotFound,
        // Never format over something: the device holds another filesystem.
        FsError::FormatMismatch { .. } | FsError::Unformatted { .. } => Code::FailedPrecondition,
        // The volume is there with other options (read-only-ness, flags, fs type).
        FsError::IncompatibleMount { .. } => Code::AlreadyExists,
        // Something else is mounted at the path, or the path is the wrong kind of file.
        FsError::MountConflict { .. } | FsError::WrongFileType { .. } => Code::FailedPrecondition,
        FsError::Busy { .. } => Code::FailedPrecondition,
        FsError::NotMounted { .. } => Code::NotFound,
        FsError::NotABlockDevice { .. }
        | FsError::FormatNotVisible { .. }
        | FsError::Sys { .. }
        | FsError::Mount { .. }
        | FsError::ToolUnavailable { .. }
        | FsError::ToolFailed { .. }
        | FsError::MountInfo { .. } => Code::Internal,
    }
}

impl From<Error> for Status {
    fn from(e: Error) -> Status {
        let code = e.code();
        if matches!(code, Code::Internal | Code::Unavailable) {
            tracing::warn!(error = %e, ?code, "rpc failed");
        } else {
            tracing::debug!(error = %e, ?code, "rpc refused");
        }
        Status::new(code, e.to_string())
    }
}

/// A handler's result as a tonic reply.
pub fn reply<T>(r: Result<T>) -> std::result::Result<tonic::Response<T>, Status> {
    r.map(tonic::Response::new).map_err(Status::from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;
    use thinpool::ThinId;

    #[test]
    fn codes() {
        let s = Status::from(Error::invalid("staging_target_path", "missing"));
        assert_eq!(s.code(), Code::InvalidArgument);
        assert_eq!(s.message(), "staging_target_path: missing");
        assert_eq!(Error::NotFound("x".into()).code(), Code::NotFound);
        let id = ThinId::new(3).unwrap();
        assert_eq!(Error::from(KernelError::NotActive(id)).code(), Code::NotFound);
        assert_eq!(Error::from(KernelError::NoData("activate".into())).code(), Code::NotFound);
        assert_eq!(Error::from(KernelError::Busy("deactivate".into())).code(), Code::FailedPrecondition);
        let mismatch = FsError::FormatMismatch { device: PathBuf::from("/dev/x"), found: crate::fs::FsType::Xfs, wanted: crate::fs::FsType::Ext4 };
        assert_eq!(Error::from(mismatch).code(), Code::FailedPrecondition);
        let incompatible = FsError::IncompatibleMount { target: "/t".into(), source_desc: "d".into(), why: "ro".into() };
        assert_eq!(Error::from(incompatible).code(), Code::AlreadyExists);
        assert_eq!(Error::from(FsError::NotFound { path: "/p".into() }).code(), Code::NotFound);
        assert_eq!(Error::from(FsError::UnsupportedFsType("btrfs".into())).code(), Code::InvalidArgument);
    }
}
