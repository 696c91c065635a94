//! The errors of the filesystem layer. Every message names the device or
//! path concerned and what went wrong, so the CSI layer can pass it on as
//! the status message unchanged.

use std::io;
use std::path::PathBuf;

use super::FsType;

pub type Result<T, E = FsError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum FsError {
    /// The caller passed something unusable: an empty path, a mount option
    /// that is not allowed or contradicts another, a NUL byte. CSI:
    /// INVALID_ARGUMENT.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    /// A filesystem type this layer does not create or mount (only ext2,
    /// ext3, ext4 and xfs). CSI: INVALID_ARGUMENT.
    #[error("unsupported filesystem type {0:?}: supported are ext4, ext3, ext2 and xfs")]
    UnsupportedFsType(String),

    /// The path does not exist. CSI: NOT_FOUND for a device, otherwise
    /// usually INTERNAL.
    #[error("{path}: no such file or directory")]
    NotFound { path: PathBuf },

    /// The path exists but is not a block device.
    #[error("{path} is not a block device")]
    NotABlockDevice { path: PathBuf },

    /// The device already holds something other than what was asked for:
    /// it is left untouched. CSI: ALREADY_EXISTS or FAILED_PRECONDITION.
    #[error("{device} already holds {found}, not the requested {wanted}: refusing to format it")]
    FormatMismatch { device: PathBuf, found: FsType, wanted: FsType },

    /// A read-only stage found no filesystem: it never makes one (the
    /// volume is left untouched). CSI: FAILED_PRECONDITION.
    #[error("{device} holds no filesystem and the volume is staged read-only: a read-only stage never formats")]
    Unformatted { device: PathBuf },

    /// mkfs ran and succeeded, yet the device does not read back as the
    /// filesystem it was asked to make.
    #[error("{device}: after making {wanted} the device reads back as {found}")]
    FormatNotVisible { device: PathBuf, wanted: FsType, found: String },

    /// Something else is mounted on the target. CSI: FAILED_PRECONDITION
    /// or ALREADY_EXISTS.
    #[error("{target} already has {found} mounted on it, not {wanted}")]
    MountConflict { target: PathBuf, found: String, wanted: String },

    /// The wanted source is mounted on the target, but with other options
    /// (read-only versus read-write, missing flags, another filesystem
    /// type). CSI: ALREADY_EXISTS.
    #[error("{target} already has {source_desc} mounted on it, but {why}")]
    IncompatibleMount { target: PathBuf, source_desc: String, why: String },

    /// The target exists but is the wrong kind of file (a directory mount
    /// needs a directory, a raw block bind a non-directory).
    #[error("{path} is {found}, expected {expected}")]
    WrongFileType { path: PathBuf, found: &'static str, expected: &'static str },

    /// umount2(2) said EBUSY: something still has files open there.
    #[error("cannot unmount {target}: it is busy (files still open or a mount below it)")]
    Busy { target: PathBuf },

    /// The path is not a mount point where one is required (online
    /// expansion needs the mounted filesystem).
    #[error("{path} is not a mount point of {device}")]
    NotMounted { path: PathBuf, device: PathBuf },

    /// A system call failed.
    #[error("{op} {path}: {source}")]
    Sys {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// A system call involving two paths (mount) failed.
    #[error("{op} {from} on {to}{detail}: {source}")]
    Mount {
        op: &'static str,
        from: PathBuf,
        to: PathBuf,
        /// Extra context such as " (ext4, options noatime)"; may be empty.
        detail: String,
        #[source]
        source: io::Error,
    },

    /// An external tool could not be started (usually: not installed).
    #[error("cannot run {tool} for {path}: {source}")]
    ToolUnavailable {
        tool: String,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// An external tool ran and failed.
    #[error("{tool} on {path} failed ({status}): {stderr}")]
    ToolFailed { tool: String, path: PathBuf, status: String, stderr: String },

    /// /proc/self/mountinfo had a line this parser does not understand.
    #[error("cannot parse line {line} of /proc/self/mountinfo ({why}): {text:?}")]
    MountInfo { line: usize, why: &'static str, text: String },
}

impl FsError {
    pub(crate) fn sys(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> FsError {
        let path = path.into();
        if source.kind() == io::ErrorKind::NotFound {
            return FsError::NotFound { path };
        }
        FsError::Sys { op, path, source }
    }

    /// The errno behind this error, if it came from a system call.
    pub fn raw_os_error(&self) -> Option<i32> {
        match self {
            FsError::Sys { source, .. } | FsError::Mount { source, .. } | FsError::ToolUnavailable { source, .. } => {
                source.raw_os_error()
            }
            FsError::Busy { .. } => Some(libc::EBUSY),
            FsError::NotFound { .. } => Some(libc::ENOENT),
            _ => None,
        }
    }
}
