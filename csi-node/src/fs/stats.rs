//! Usage figures of a mounted volume (statvfs), for NodeGetVolumeStats.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use super::blockdev::require_path;
use super::error::{FsError, Result};

pub use super::blockdev::block_device_size;

/// Bytes and inodes of a filesystem, as NodeGetVolumeStats reports them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VolumeStats {
    pub bytes_total: u64,
    pub bytes_used: u64,
    /// Available to unprivileged users (excludes reserved blocks).
    pub bytes_available: u64,
    pub inodes_total: u64,
    pub inodes_used: u64,
    pub inodes_free: u64,
}

impl VolumeStats {
    /// From raw statvfs numbers: sizes in units of `fragment_size`.
    pub fn from_statvfs(
        fragment_size: u64,
        blocks: u64,
        blocks_free: u64,
        blocks_available: u64,
        files: u64,
        files_free: u64,
    ) -> VolumeStats {
        VolumeStats {
            bytes_total: blocks.saturating_mul(fragment_size),
            bytes_used: blocks.saturating_sub(blocks_free).saturating_mul(fragment_size),
            bytes_available: blocks_available.saturating_mul(fragment_size),
            inodes_total: files,
            inodes_used: files.saturating_sub(files_free),
            inodes_free: files_free,
        }
    }
}

fn sys_statvfs(path: &Path) -> Result<libc::statvfs> {
    require_path(path, "path")?;
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| FsError::InvalidArgument(format!("the path {path:?} contains a NUL byte")))?;
    // SAFETY: an all-zero statvfs is a valid value of that plain C struct.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is NUL-terminated and `st` is a live, writable statvfs.
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    if rc != 0 {
        return Err(FsError::sys("statvfs", path, io::Error::last_os_error()));
    }
    Ok(st)
}

/// The mount flags (`ST_RDONLY`, `ST_NOSUID`, ...) of the mount `path` is on.
pub(crate) fn statvfs_flags(path: &Path) -> Result<libc::c_ulong> {
    Ok(sys_statvfs(path)?.f_flag as libc::c_ulong)
}

/// Bytes and inodes of the filesystem mounted at (or containing) `path`.
pub fn stats(path: &Path) -> Result<VolumeStats> {
    let st = sys_statvfs(path)?;
    let frsize = if st.f_frsize != 0 { st.f_frsize as u64 } else { st.f_bsize as u64 };
    Ok(VolumeStats::from_statvfs(
        frsize,
        st.f_blocks as u64,
        st.f_bfree as u64,
        st.f_bavail as u64,
        st.f_files as u64,
        st.f_ffree as u64,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic() {
        let s = VolumeStats::from_statvfs(4096, 1000, 400, 350, 128, 100);
        assert_eq!(s.bytes_total, 4_096_000);
        assert_eq!(s.bytes_used, 600 * 4096);
        assert_eq!(s.bytes_available, 350 * 4096);
        assert_eq!((s.inodes_total, s.inodes_used, s.inodes_free), (128, 28, 100));
        // Nonsense from a broken filesystem does not panic.
        let s = VolumeStats::from_statvfs(u64::MAX, 2, 5, 5, 1, 3);
        assert_eq!((s.bytes_total, s.bytes_used, s.inodes_used), (u64::MAX, 0, 0));
    }

    #[test]
    fn stats_of_root_and_errors() {
        let s = stats(Path::new("/")).unwrap();
        assert!(s.bytes_total > 0 && s.bytes_used <= s.bytes_total && s.bytes_available <= s.bytes_total);
        assert_eq!(stats(Path::new("/nonexistent/x")).unwrap_err().to_string(), "/nonexistent/x: no such file or directory");
        assert_eq!(stats(Path::new("")).unwrap_err().to_string(), "invalid argument: the path is empty");
    }
}
