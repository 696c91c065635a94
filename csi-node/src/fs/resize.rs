//! Online growth of a mounted filesystem after its device grew.

use std::path::Path;

use super::blockdev::{device_number, require_path};
use super::error::{FsError, Result};
use super::exec;
use super::mountinfo::{read_mountinfo, top_mount_at};
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

#[cfg(test)]
mod tests {
    use super::*;

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
