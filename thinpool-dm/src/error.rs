//! Errors: [`DmError`] for setting a pool up on a node (naming the device
//! and what was found on it), [`KernelError`] for the `Kernel` trait, and
//! the one place where an ioctl's errno becomes either.

use std::io;
use std::path::PathBuf;

use thinpool::layout::LayoutError;
use thinpool::{KernelError, PoolName, Sectors, ThinId};

/// Setting a pool up, finding it again, tearing it down.
#[derive(Debug, thiserror::Error)]
pub enum DmError {
    #[error("{device}: refusing to create a pool: the device holds {found}; only a zeroed device is laid out")]
    NotEmpty { device: PathBuf, found: String },

    #[error("{device}: no thin-csi pool header: the device holds {found}")]
    NoPoolHeader { device: PathBuf, found: String },

    #[error("{device}: refusing to use as thin-pool metadata: it holds {found}; only zeros (a new pool) or thin-pool metadata are accepted")]
    NotMetadata { device: PathBuf, found: String },

    #[error(
        "{device}: thin-pool metadata has data block size {found}, not the {expected} asked for"
    )]
    BlockSizeMismatch {
        device: PathBuf,
        found: Sectors,
        expected: Sectors,
    },

    #[error("{0}: metadata and data must be two different devices")]
    SameDevice(PathBuf),

    #[error("{device}: {source}")]
    Layout {
        device: PathBuf,
        source: LayoutError,
    },

    #[error("{device}: the pool header describes {needed} but the device has only {actual}")]
    DeviceTooSmall {
        device: PathBuf,
        needed: Sectors,
        actual: Sectors,
    },

    #[error("{device}: {action}: {source}")]
    Io {
        device: PathBuf,
        action: &'static str,
        source: io::Error,
    },

    #[error(
        "device-mapper is not available ({0}): is dm-mod loaded and is this process privileged?"
    )]
    NoDeviceMapper(String),

    #[error("device-mapper {action} {name}: {detail}")]
    Ioctl {
        action: &'static str,
        name: String,
        errno: Option<i32>,
        detail: String,
    },

    #[error("{name} is already active with a table that is not this pool's: expected {expected:?}, found {found:?}")]
    ForeignDevice {
        name: String,
        expected: String,
        found: String,
    },

    #[error("pool {pool}: thin device {id} is open ({open_count} openers); close it before tearing the pool down")]
    ThinOpen {
        pool: PoolName,
        id: ThinId,
        open_count: u32,
    },

    #[error("pool {pool}: {source}")]
    Kernel { pool: PoolName, source: KernelError },
}

pub type Result<T, E = DmError> = std::result::Result<T, E>;

/// The errno of a failed ioctl, if the failure was one.
pub(crate) fn errno_of(err: &devicemapper::DmError) -> Option<i32> {
    match err {
        // The crate keeps the ioctl's errno as a boxed `nix::Errno`, a
        // fieldless `repr(i32)` enum whose values are the errno numbers.
        devicemapper::DmError::Core(devicemapper::errors::Error::Ioctl(_, _, _, errno)) => {
            Some(**errno as i32)
        }
        _ => None,
    }
}

/// A short description: the crate's own Display of an ioctl error dumps
/// both ioctl headers, which is noise in a log line or a CSI message.
pub(crate) fn describe(err: &devicemapper::DmError) -> String {
    match errno_of(err) {
        Some(code) => format!(
            "{} ({})",
            io::Error::from_raw_os_error(code),
            errno_name(code)
        ),
        None => err.to_string(),
    }
}

pub(crate) fn ioctl_error(
    action: &'static str,
    name: &str,
    err: &devicemapper::DmError,
) -> DmError {
    DmError::Ioctl {
        action,
        name: name.to_string(),
        errno: errno_of(err),
        detail: describe(err),
    }
}

/// Maps a failed ioctl to the trait's error. `context` says what was being
/// done (for messages: the message text, as the engine reports it).
pub(crate) fn kernel_error(context: String, err: &devicemapper::DmError) -> KernelError {
    from_errno(context, errno_of(err), describe(err))
}

/// The errno → [`KernelError`] table. The errno-shaped variants carry
/// meaning to the engine (EEXIST/ENODATA identify replays in recovery).
pub fn from_errno(context: String, errno: Option<i32>, detail: String) -> KernelError {
    match errno {
        Some(libc::EEXIST) => KernelError::AlreadyExists(context),
        Some(libc::ENODATA) => KernelError::NoData(context),
        Some(libc::EINVAL) => KernelError::Invalid(context),
        Some(libc::EBUSY) => KernelError::Busy(context),
        Some(libc::ENOSPC) => KernelError::NoSpace(context),
        _ => KernelError::Other { context, detail },
    }
}

fn errno_name(code: i32) -> &'static str {
    match code {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::EIO => "EIO",
        libc::ENXIO => "ENXIO",
        libc::ENOMEM => "ENOMEM",
        libc::EACCES => "EACCES",
        libc::EBUSY => "EBUSY",
        libc::EEXIST => "EEXIST",
        libc::ENODEV => "ENODEV",
        libc::EINVAL => "EINVAL",
        libc::ENOSPC => "ENOSPC",
        libc::EROFS => "EROFS",
        libc::ENOTTY => "ENOTTY",
        libc::ENODATA => "ENODATA",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::EINTR => "EINTR",
        _ => "errno",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(code: i32) -> KernelError {
        from_errno("create_thin 1".into(), Some(code), "detail".into())
    }

    #[test]
    fn errnos_map_to_the_variants_the_engine_reads() {
        assert_eq!(
            map(libc::EEXIST),
            KernelError::AlreadyExists("create_thin 1".into())
        );
        assert_eq!(
            map(libc::ENODATA),
            KernelError::NoData("create_thin 1".into())
        );
        assert_eq!(
            map(libc::EINVAL),
            KernelError::Invalid("create_thin 1".into())
        );
        assert_eq!(map(libc::EBUSY), KernelError::Busy("create_thin 1".into()));
        assert_eq!(
            map(libc::ENOSPC),
            KernelError::NoSpace("create_thin 1".into())
        );
        assert_eq!(
            map(libc::EIO),
            KernelError::Other {
                context: "create_thin 1".into(),
                detail: "detail".into()
            }
        );
        assert!(matches!(
            from_errno("x".into(), None, "no ioctl".into()),
            KernelError::Other { .. }
        ));
    }

    #[test]
    fn reads_the_errno_out_of_the_crates_error() {
        let err = devicemapper::DmError::Core(devicemapper::errors::Error::Ioctl(
            0,
            None,
            None,
            Box::new(nix::errno::Errno::from_raw(libc::ENODATA)),
        ));
        assert_eq!(errno_of(&err), Some(libc::ENODATA));
        assert!(describe(&err).contains("ENODATA"), "{}", describe(&err));
        assert!(
            matches!(kernel_error("delete 3".into(), &err), KernelError::NoData(c) if c == "delete 3")
        );
        let other =
            devicemapper::DmError::Core(devicemapper::errors::Error::ContextInit("nope".into()));
        assert_eq!(errno_of(&other), None);
    }
}
