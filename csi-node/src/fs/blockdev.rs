//! Reading the head of a device and its size (thinpool-dm's readers, with
//! this layer's errors).
//!
//! Reads use O_DIRECT where the device allows it, so a probe sees what is
//! on the disk, not a stale page cache; regular files on filesystems that
//! refuse O_DIRECT (tmpfs before Linux 6.6) fall back to buffered reads.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use super::error::{FsError, Result};

/// The size in bytes of a block device, by BLKGETSIZE64. For a raw block
/// volume's NodeGetVolumeStats.
pub fn block_device_size(device: &Path) -> Result<u64> {
    require_path(device, "device path")?;
    let meta = std::fs::metadata(device).map_err(|e| FsError::sys("stat", device, e))?;
    if !meta.file_type().is_block_device() {
        return Err(FsError::NotABlockDevice { path: device.to_path_buf() });
    }
    thinpool_dm::device_size(device).map_err(|e| FsError::sys("BLKGETSIZE64 on", device, e))
}

/// Reads up to `max` bytes from the start of a device or file (fewer if it
/// is smaller).
pub(crate) fn read_head(path: &Path, max: usize) -> Result<Vec<u8>> {
    thinpool_dm::read_head(path, max).map_err(|e| FsError::sys("reading", path, e))
}

/// The device number of a block device node (`st_rdev`).
pub(crate) fn device_number(device: &Path) -> Result<(u32, u32)> {
    require_path(device, "device path")?;
    let meta = std::fs::metadata(device).map_err(|e| FsError::sys("stat", device, e))?;
    if !meta.file_type().is_block_device() {
        return Err(FsError::NotABlockDevice { path: device.to_path_buf() });
    }
    let rdev = meta.rdev();
    Ok((libc::major(rdev), libc::minor(rdev)))
}

/// Rejects an empty path (callers pass CSI request fields straight in).
pub(crate) fn require_path(path: &Path, what: &str) -> Result<()> {
    if path.as_os_str().is_empty() {
        return Err(FsError::InvalidArgument(format!("the {what} is empty")));
    }
    if path.as_os_str().as_encoded_bytes().contains(&0) {
        return Err(FsError::InvalidArgument(format!("the {what} {path:?} contains a NUL byte")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_of_a_small_file_is_all_of_it() {
        let dir = std::env::temp_dir().join(format!("thin-csi-fs-head-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("small");
        std::fs::write(&f, b"hello").unwrap();
        assert_eq!(read_head(&f, 1 << 20).unwrap(), b"hello");
        assert_eq!(read_head(&f, 2).unwrap(), b"he");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn errors_name_the_path() {
        let err = block_device_size(Path::new("/nonexistent/dev")).unwrap_err();
        assert_eq!(err.to_string(), "/nonexistent/dev: no such file or directory");
        let err = block_device_size(Path::new("/proc/self/status")).unwrap_err();
        assert_eq!(err.to_string(), "/proc/self/status is not a block device");
        let err = block_device_size(Path::new("")).unwrap_err();
        assert_eq!(err.to_string(), "invalid argument: the device path is empty");
        let err = device_number(Path::new("/")).unwrap_err();
        assert_eq!(err.to_string(), "/ is not a block device");
    }
}
