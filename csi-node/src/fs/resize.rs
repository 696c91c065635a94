//! Online growth of a mounted filesystem after its device grew.

use std::path::Path;

use super::blockdev::{block_device_size, device_number, require_path};
use super::error::{FsError, Result};
use super::exec;
use super::mountinfo::{read_mountinfo, top_mount_at};
use super::probe::filesystem_size;
use super::FsType;

/// Grows the filesystem `fs` on `device`, mounted at `mount_path`, to fill
/// the device (which must already have its new size: thin device table
/// reloaded, loop capacity re-read). Online: `mount_path` must have the
/// device mounted (a staging or bind mount). ext2/3/4: `resize2fs DEVICE`;
/// xfs: `xfs_growfs -d MOUNT_PATH`. Growing to the size it already has
/// succeeds and changes nothing.
pub fn expand(device: &Path, mount_path: &Path, fs: &FsType) -> Result<()> {
    require_path(device, "device path")?;
    require_path(mount_path, "mount path")?;
    fs.require_supported()?;
    let (major, minor) = device_number(device)?;
    let not_mounted = || FsError::NotMounted { path: mount_path.to_path_buf(), device: device.to_path_buf() };
    let mount_c = match std::fs::canonicalize(mount_path) {
        Ok(p) => p,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(not_mounted()),
        Err(e) => return Err(FsError::sys("resolving", mount_path, e)),
    };
    let mounts = read_mountinfo()?;
    let existing = top_mount_at(&mounts, &mount_c).filter(|m| (m.major, m.minor) == (major, minor)).ok_or_else(not_mounted)?;
    let same_family = existing.fs_type == fs.name() || (fs.is_ext() && existing.fs_type.starts_with("ext"));
    if !same_family {
        return Err(FsError::InvalidArgument(format!(
            "{} has {} mounted as {}, not {}",
            mount_path.display(),
            device.display(),
            existing.fs_type,
            fs.name()
        )));
    }
    tracing::info!(device = %device.display(), mount = %mount_c.display(), fs = fs.name(), "growing the filesystem online");
    if fs.is_ext() {
        exec::run("resize2fs", [device.as_os_str()], device)?;
    } else {
        exec::run("xfs_growfs", [std::ffi::OsStr::new("-d"), mount_c.as_os_str()], mount_path)?;
    }
    Ok(())
}

/// Grows the filesystem `fs` on `device`, mounted read-write at
/// `mount_path`, when its superblock spans less than the device: a volume
/// restored from a snapshot or cloned into a larger size holds the
/// source's smaller filesystem until this runs (at stage, as kubelet's
/// mount utilities do). Returns whether it grew anything.
pub fn grow_to_device(device: &Path, mount_path: &Path, fs: &FsType) -> Result<bool> {
    let device_bytes = block_device_size(device)?;
    match filesystem_size(device)? {
        Some(fs_bytes) if needs_growth(fs_bytes, device_bytes) => {
            tracing::info!(device = %device.display(), fs_bytes, device_bytes, "the filesystem is smaller than its volume");
            expand(device, mount_path, fs)?;
            Ok(true)
        }
        _ => Ok(false),
    }
}

/// Whether a filesystem of `fs_bytes` should grow onto a device of
/// `device_bytes`: by at least 1 MiB, so a tail no filesystem can use (a
/// partial block group, a partial xfs allocation group) does not run the
/// grow tool at every stage.
fn needs_growth(fs_bytes: u64, device_bytes: u64) -> bool {
    device_bytes.saturating_sub(fs_bytes) >= 1 << 20
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_only_by_a_mebibyte_or_more() {
        assert!(!needs_growth(64 << 20, 64 << 20));
        assert!(!needs_growth(64 << 20, (64 << 20) + 4096 * 10));
        assert!(needs_growth(64 << 20, 65 << 20));
        assert!(needs_growth(64 << 20, 256 << 20));
        // A filesystem bigger than its device (a corrupt superblock) is never grown.
        assert!(!needs_growth(256 << 20, 64 << 20));
    }

    #[test]
    fn refuses_what_cannot_be_grown() {
        assert!(matches!(
            expand(Path::new("/dev/null"), Path::new("/"), &FsType::Foreign("swap".into())),
            Err(FsError::UnsupportedFsType(_))
        ));
        assert_eq!(
            expand(Path::new("/dev/null"), Path::new("/"), &FsType::Ext4).unwrap_err().to_string(),
            "/dev/null is not a block device"
        );
        assert_eq!(
            expand(Path::new("/dev/x"), Path::new(""), &FsType::Xfs).unwrap_err().to_string(),
            "invalid argument: the mount path is empty"
        );
    }
}
