//! The node-local volume filesystem layer the CSI Node service calls:
//! probing and making filesystems, mounting (staging, bind publishing,
//! raw block publishing), unmounting, online expansion and usage figures.
//!
//! Everything here is synchronous and blocking (system calls and external
//! tools); async callers use `spawn_blocking`. Nothing panics on bad
//! input: every failure is an [`FsError`] whose message names the device
//! or path and what went wrong.
//!
//! System calls are used where there is one: mount(2), umount2(2),
//! statvfs(3), the BLKGETSIZE64 ioctl, and /proc/self/mountinfo for what
//! is mounted where. External tools only where there is no sensible
//! syscall: `mkfs.ext4`, `mkfs.xfs`, `resize2fs`, `xfs_growfs`, and
//! `blkid -p` for naming signatures this module does not know itself.
//!
//! Safety rule: a device is formatted only when it holds nothing — its
//! first MiB reads as zeros and `blkid -p` finds no signature anywhere on
//! it (a freshly created thin device reads zeros). Anything else, known or
//! not, is reported and left untouched.

mod blockdev;
mod error;
mod exec;
mod mount;
mod mountinfo;
mod paths;
mod probe;
mod resize;
mod stats;

use std::fmt;
use std::str::FromStr;

pub use error::{FsError, Result};
pub use mount::{
    bind_mount, bind_mount_block, is_mount_point, mount, mounts_of, unmount, MountOptions, MountOutcome,
    UnmountOutcome,
};
pub use mountinfo::{parse_mountinfo, read_mountinfo, unescape_mountinfo, MountInfo};
pub use paths::{remove_created_target, KubeletDir};
pub use probe::{
    classify_head, filesystem_bytes, filesystem_size, format_if_empty, parse_blkid_export, probe_filesystem, require_formatted,
    FormatOutcome, PROBE_BYTES,
};
pub use resize::{expand, grow_to_device};
pub use stats::{block_device_size, stats, VolumeStats};

/// A filesystem (or other contents) a device can hold.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum FsType {
    Ext4,
    Ext3,
    Ext2,
    Xfs,
    /// Anything else found on a device: another filesystem, a partition
    /// table, an LVM label, swap, a LUKS header, or data nobody recognises.
    /// The string names it (blkid's TYPE/PTTYPE where blkid knows it, e.g.
    /// `btrfs`, `LVM2_member`, `swap`, `dos`). Never formatted or mounted.
    Foreign(String),
}

impl FsType {
    /// The name mount(2), mkfs and the StorageClass `fsType` use.
    pub fn name(&self) -> &str {
        match self {
            FsType::Ext4 => "ext4",
            FsType::Ext3 => "ext3",
            FsType::Ext2 => "ext2",
            FsType::Xfs => "xfs",
            FsType::Foreign(name) => name,
        }
    }

    /// ext2, ext3 or ext4.
    pub fn is_ext(&self) -> bool {
        matches!(self, FsType::Ext4 | FsType::Ext3 | FsType::Ext2)
    }

    /// One this module can make, mount and grow.
    pub fn is_supported(&self) -> bool {
        !matches!(self, FsType::Foreign(_))
    }

    pub(crate) fn require_supported(&self) -> Result<()> {
        match self {
            FsType::Foreign(name) => Err(FsError::UnsupportedFsType(name.clone())),
            _ => Ok(()),
        }
    }
}

impl fmt::Display for FsType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FsType::Foreign(name) => write!(f, "foreign contents ({name})"),
            other => f.write_str(other.name()),
        }
    }
}

/// Parses a StorageClass / VolumeCapability `fsType`: `ext4`, `ext3`,
/// `ext2` or `xfs` (case-insensitive). An empty string is an error here;
/// the CSI layer picks its default before calling.
impl FromStr for FsType {
    type Err = FsError;

    fn from_str(s: &str) -> Result<FsType> {
        match s.trim().to_ascii_lowercase().as_str() {
            "ext4" => Ok(FsType::Ext4),
            "ext3" => Ok(FsType::Ext3),
            "ext2" => Ok(FsType::Ext2),
            "xfs" => Ok(FsType::Xfs),
            _ => Err(FsError::UnsupportedFsType(s.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fs_type_parses_and_names() {
        assert_eq!("ext4".parse::<FsType>().unwrap(), FsType::Ext4);
        assert_eq!("XFS".parse::<FsType>().unwrap(), FsType::Xfs);
        assert_eq!(" ext3 ".parse::<FsType>().unwrap(), FsType::Ext3);
        assert_eq!("ext2".parse::<FsType>().unwrap().name(), "ext2");
        let err = "btrfs".parse::<FsType>().unwrap_err();
        assert_eq!(err.to_string(), "unsupported filesystem type \"btrfs\": supported are ext4, ext3, ext2 and xfs");
        assert!("".parse::<FsType>().is_err());
        assert_eq!(FsType::Foreign("LVM2_member".into()).to_string(), "foreign contents (LVM2_member)");
        assert!(!FsType::Foreign("swap".into()).is_supported());
        assert!(FsType::Ext3.is_ext() && !FsType::Xfs.is_ext());
    }
}
