//! Reading the head of a device and its size.
//!
//! Reads use O_DIRECT where the device allows it, so a probe sees what is
//! on the disk, not a stale page cache; regular files on filesystems that
//! refuse O_DIRECT (tmpfs before Linux 6.6) fall back to buffered reads.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::Path;

use super::error::{FsError, Result};

const ALIGN: usize = 4096;

/// `BLKGETSIZE64` = `_IOR(0x12, 114, size_t)` in the generic ioctl
/// encoding (x86, arm, riscv, loongarch, s390); elsewhere the size comes
/// from seeking to the end, which gives the same number.
#[cfg(any(
    target_arch = "x86_64",
    target_arch = "x86",
    target_arch = "aarch64",
    target_arch = "arm",
    target_arch = "riscv64",
    target_arch = "loongarch64",
    target_arch = "s390x"
))]
const BLKGETSIZE64: Option<u64> = Some((2 << 30) | ((std::mem::size_of::<usize>() as u64) << 16) | (0x12 << 8) | 114);
#[cfg(not(any(
    target_arch = "x86_64",
    target_arch = "x86",
    target_arch = "aarch64",
    target_arch = "arm",
    target_arch = "riscv64",
    target_arch = "loongarch64",
    target_arch = "s390x"
)))]
const BLKGETSIZE64: Option<u64> = None;

/// Opens read-only, with O_DIRECT when the file allows it.
fn open_read(path: &Path) -> io::Result<(File, bool)> {
    let attempt = |flags| OpenOptions::new().read(true).custom_flags(flags | libc::O_CLOEXEC).open(path);
    match attempt(libc::O_DIRECT) {
        Ok(file) => Ok((file, true)),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => attempt(0).map(|f| (f, false)),
        Err(e) => Err(e),
    }
}

/// Size in bytes of an open block device (BLKGETSIZE64) or regular file.
fn size_of(file: &File) -> io::Result<u64> {
    let meta = file.metadata()?;
    if !meta.file_type().is_block_device() {
        return Ok(meta.len());
    }
    if let Some(request) = BLKGETSIZE64 {
        let mut bytes: u64 = 0;
        // SAFETY: BLKGETSIZE64 writes one u64 through the pointer, which
        // points at a live, writable u64.
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), request as _, &mut bytes as *mut u64) };
        return if rc == 0 { Ok(bytes) } else { Err(io::Error::last_os_error()) };
    }
    use std::io::{Seek, SeekFrom};
    let mut f = file;
    f.seek(SeekFrom::End(0))
}

/// The size in bytes of a block device, by BLKGETSIZE64. For a raw block
/// volume's NodeGetVolumeStats.
pub fn block_device_size(device: &Path) -> Result<u64> {
    require_path(device, "device path")?;
    let meta = std::fs::metadata(device).map_err(|e| FsError::sys("stat", device, e))?;
    if !meta.file_type().is_block_device() {
        return Err(FsError::NotABlockDevice { path: device.to_path_buf() });
    }
    let (file, _) = open_read(device).map_err(|e| FsError::sys("opening", device, e))?;
    size_of(&file).map_err(|e| FsError::sys("BLKGETSIZE64 on", device, e))
}

/// Reads up to `max` bytes from the start of a device or file (fewer if it
/// is smaller).
pub(crate) fn read_head(path: &Path, max: usize) -> Result<Vec<u8>> {
    let (file, direct) = open_read(path).map_err(|e| FsError::sys("opening", path, e))?;
    let size = size_of(&file).map_err(|e| FsError::sys("reading the size of", path, e))?;
    let len = usize::try_from(size).unwrap_or(usize::MAX).min(max);
    // O_DIRECT reads whole logical blocks into an aligned buffer: read a
    // rounded-up length and keep what the device has.
    let want = if direct { len.div_ceil(ALIGN) * ALIGN } else { len };
    let storage = vec![0u8; want + ALIGN];
    let mut storage = storage;
    let offset = (ALIGN - storage.as_ptr() as usize % ALIGN) % ALIGN;
    let buf = &mut storage[offset..offset + want];
    let mut done = 0;
    while done < len {
        match file.read_at(&mut buf[done..], done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(FsError::sys("reading", path, e)),
        }
    }
    Ok(buf[..done.min(len)].to_vec())
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
