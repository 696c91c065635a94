//! Block device I/O the setup needs: size, device number, reading the head
//! of a device, writing the header, and device nodes for dm devices.
//!
//! Reads and writes use O_DIRECT where the device allows it, so what we
//! decide from is what is on the disk, not a stale page cache; regular
//! files (unit tests, tmpfs) fall back to buffered I/O.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::Path;

use devicemapper::Device;
use thinpool::Sectors;

/// Alignment for O_DIRECT buffers and offsets (covers 4 KiB-sector disks).
const ALIGN: usize = 4096;

/// `BLKGETSIZE64` = `_IOR(0x12, 114, size_t)`, in the generic ioctl
/// encoding (x86, arm, riscv, loongarch, s390). Other architectures fall
/// back to seeking to the end, which gives the same number.
#[cfg(any(
    target_arch = "x86_64",
    target_arch = "x86",
    target_arch = "aarch64",
    target_arch = "arm",
    target_arch = "riscv64",
    target_arch = "loongarch64",
    target_arch = "s390x"
))]
const BLKGETSIZE64: Option<u64> =
    Some((2 << 30) | ((std::mem::size_of::<usize>() as u64) << 16) | (0x12 << 8) | 114);
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

/// A zeroed buffer whose start is aligned for O_DIRECT, in safe code: a
/// larger vector and an offset into it.
struct AlignedBuf {
    storage: Vec<u8>,
    offset: usize,
    len: usize,
}

impl AlignedBuf {
    fn zeroed(len: usize) -> AlignedBuf {
        let storage = vec![0u8; len + ALIGN];
        let addr = storage.as_ptr() as usize;
        let offset = (ALIGN - addr % ALIGN) % ALIGN;
        AlignedBuf {
            storage,
            offset,
            len,
        }
    }

    fn as_slice(&self) -> &[u8] {
        &self.storage[self.offset..self.offset + self.len]
    }

    fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.storage[self.offset..self.offset + self.len]
    }
}

/// Opens for direct I/O, or buffered where the file system refuses
/// O_DIRECT (EINVAL: tmpfs files before kernel 6.6).
fn open(path: &Path, write: bool, exclusive: bool) -> io::Result<(File, bool)> {
    let attempt = |direct: bool| {
        let mut flags = 0;
        if direct {
            flags |= libc::O_DIRECT;
        }
        if exclusive {
            // On a block device, O_EXCL without O_CREAT fails with EBUSY if
            // anything (a mount, a dm table, another O_EXCL opener) holds it.
            flags |= libc::O_EXCL;
        }
        OpenOptions::new()
            .read(true)
            .write(write)
            .custom_flags(flags)
            .open(path)
    };
    match attempt(true) {
        Ok(file) => Ok((file, true)),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => attempt(false).map(|f| (f, false)),
        Err(e) => Err(e),
    }
}

/// The size of an open block device (or regular file), in bytes.
pub fn size_of(file: &File) -> io::Result<u64> {
    let meta = file.metadata()?;
    if !meta.file_type().is_block_device() {
        return Ok(meta.len());
    }
    if let Some(request) = BLKGETSIZE64 {
        let mut bytes: u64 = 0;
        // SAFETY: BLKGETSIZE64 writes one u64 through the pointer, which
        // points at a live u64.
        let rc = unsafe {
            libc::ioctl(
                std::os::fd::AsRawFd::as_raw_fd(file),
                request as _,
                &mut bytes as *mut u64,
            )
        };
        if rc == 0 {
            return Ok(bytes);
        }
        return Err(io::Error::last_os_error());
    }
    use std::io::{Seek, SeekFrom};
    let mut f = file;
    f.seek(SeekFrom::End(0))
}

/// The size of a block device (BLKGETSIZE64) or regular file, in bytes.
pub fn device_size(path: &Path) -> io::Result<u64> {
    let (file, _) = open(path, false, false)?;
    size_of(&file)
}

/// The size of a device, in whole sectors.
pub(crate) fn device_len(path: &Path) -> io::Result<Sectors> {
    Ok(Sectors(device_size(path)? / Sectors::SIZE))
}

/// `major:minor` of a block device node.
pub(crate) fn device_number(path: &Path) -> io::Result<Device> {
    let meta = std::fs::metadata(path)?;
    if !meta.file_type().is_block_device() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a block device",
        ));
    }
    Ok(Device::from(meta.rdev() as libc::dev_t))
}

/// Reads up to `max` bytes from the start of a device or file (fewer if it
/// is smaller), with O_DIRECT where the file allows it.
pub fn read_head(path: &Path, max: usize) -> io::Result<Vec<u8>> {
    let (file, direct) = open(path, false, false)?;
    let size = size_of(&file)?;
    let len = usize::try_from(size).unwrap_or(usize::MAX).min(max);
    // O_DIRECT reads whole logical blocks: read a rounded-up length and
    // keep what the device has.
    let want = if direct {
        len.div_ceil(ALIGN) * ALIGN
    } else {
        len
    };
    let mut buf = AlignedBuf::zeroed(want);
    let mut done = 0;
    while done < len {
        match file.read_at(&mut buf.as_mut_slice()[done..], done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(buf.as_slice()[..done.min(len)].to_vec())
}

/// A device opened exclusively for the writes that lay a pool out.
pub(crate) struct ExclusiveWriter {
    file: File,
}

impl ExclusiveWriter {
    pub(crate) fn open(path: &Path) -> io::Result<ExclusiveWriter> {
        open(path, true, true).map(|(file, _)| ExclusiveWriter { file })
    }

    pub(crate) fn size(&self) -> io::Result<u64> {
        size_of(&self.file)
    }

    /// Reads `len` bytes at `offset` (multiples of 4 KiB).
    pub(crate) fn read_at(&self, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let mut buf = AlignedBuf::zeroed(len);
        self.file.read_exact_at(buf.as_mut_slice(), offset)?;
        Ok(buf.as_slice().to_vec())
    }

    /// Writes `bytes` (a multiple of 4 KiB long) at `offset` (4 KiB-aligned).
    pub(crate) fn write_at(&self, offset: u64, bytes: &[u8]) -> io::Result<()> {
        let mut buf = AlignedBuf::zeroed(bytes.len());
        buf.as_mut_slice().copy_from_slice(bytes);
        self.file.write_all_at(buf.as_slice(), offset)
    }

    /// Makes what was written durable: on a block device fsync also flushes
    /// the disk's write cache, which O_DIRECT alone does not.
    pub(crate) fn sync(&self) -> io::Result<()> {
        self.file.sync_all()
    }
}

/// Makes sure `path` is a block device node for `device`, creating it (or
/// replacing a stale node of ours) when needed. Without udev nobody else
/// creates `/dev/mapper/<name>`; with udev, its symlink to `/dev/dm-N`
/// already resolves to the right device and is left alone.
pub(crate) fn ensure_node(path: &Path, device: Device) -> io::Result<()> {
    let want = libc::dev_t::from(device);
    match std::fs::metadata(path) {
        Ok(meta) if meta.file_type().is_block_device() && meta.rdev() == want => return Ok(()),
        Ok(_) => {
            let link = std::fs::symlink_metadata(path)?;
            if !link.file_type().is_block_device() {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!(
                        "{} exists and is not a device node of {device}",
                        path.display()
                    ),
                ));
            }
            // A node left by an earlier activation with another minor.
            std::fs::remove_file(path)?;
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path holds a NUL byte"))?;
    // SAFETY: c_path is a valid NUL-terminated string for the call's duration.
    let rc = unsafe { libc::mknod(c_path.as_ptr(), libc::S_IFBLK | 0o600, want) };
    if rc != 0 {
        let err = io::Error::last_os_error();
        // Lost a race with udev or another thread: fine if it is right now.
        if err.raw_os_error() == Some(libc::EEXIST) {
            if let Ok(meta) = std::fs::metadata(path) {
                if meta.file_type().is_block_device() && meta.rdev() == want {
                    return Ok(());
                }
            }
        }
        return Err(err);
    }
    Ok(())
}

/// Removes a device node this crate made for `device`, after the device is
/// gone. Symlinks (udev's) and nodes of other devices are left alone.
pub(crate) fn remove_node(path: &Path, device: Device) {
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if meta.file_type().is_block_device() && meta.rdev() == libc::dev_t::from(device) {
            if let Err(e) = std::fs::remove_file(path) {
                tracing::warn!(path = %path.display(), error = %e, "could not remove device node");
            }
        }
    }
}

/// Magic number of the thin-pool metadata superblock, at byte 32 (u64 LE).
pub const THIN_METADATA_MAGIC: u64 = 27_022_010;

/// The fields of a thin-pool metadata superblock that adoption checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ThinSuperblock {
    pub transaction_id: u64,
    /// Data block size the pool was formatted with, in sectors.
    pub data_block_size: Sectors,
}

/// Parses the kernel's `thin_disk_superblock` (drivers/md/dm-thin-metadata.c):
/// csum u32 @0, flags u32 @4, blocknr u64 @8, uuid [16] @16, magic u64 @32,
/// version u32 @40, time u32 @44, trans_id u64 @48, held_root u64 @56, two
/// 128-byte space map roots @64 and @192, data_mapping_root u64 @320,
/// device_details_root u64 @328, data_block_size u32 @336.
pub fn thin_superblock(head: &[u8]) -> Option<ThinSuperblock> {
    let u64_at = |o: usize| {
        head.get(o..o + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
    };
    let u32_at = |o: usize| {
        head.get(o..o + 4)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_le_bytes)
    };
    if u64_at(32)? != THIN_METADATA_MAGIC {
        return None;
    }
    Some(ThinSuperblock {
        transaction_id: u64_at(48)?,
        data_block_size: Sectors(u64::from(u32_at(336)?)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_buffers_are_aligned() {
        for len in [0, 1, 4096, 1 << 20] {
            let buf = AlignedBuf::zeroed(len);
            assert_eq!(buf.as_slice().as_ptr() as usize % ALIGN, 0);
            assert_eq!(buf.as_slice().len(), len);
        }
    }

    #[test]
    fn blkgetsize64_has_the_kernels_value() {
        #[cfg(target_arch = "x86_64")]
        assert_eq!(BLKGETSIZE64, Some(0x8008_1272));
    }

    #[test]
    fn reads_a_thin_superblock() {
        let mut sb = vec![0u8; 4096];
        sb[32..40].copy_from_slice(&THIN_METADATA_MAGIC.to_le_bytes());
        sb[48..56].copy_from_slice(&17u64.to_le_bytes());
        sb[336..340].copy_from_slice(&128u32.to_le_bytes());
        assert_eq!(
            thin_superblock(&sb),
            Some(ThinSuperblock {
                transaction_id: 17,
                data_block_size: Sectors(128)
            })
        );
        assert_eq!(thin_superblock(&sb[..300]), None);
        assert_eq!(thin_superblock(&[0u8; 4096]), None);
    }

    #[test]
    fn reads_the_head_of_a_file_shorter_or_longer_than_asked() {
        let dir = std::env::temp_dir().join(format!("thinpool-dm-head-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("dev");
        std::fs::write(&path, vec![7u8; 10_000]).unwrap();
        assert_eq!(read_head(&path, 1 << 20).unwrap(), vec![7u8; 10_000]);
        assert_eq!(read_head(&path, 4096).unwrap().len(), 4096);
        assert_eq!(device_len(&path).unwrap(), Sectors(19));
        assert!(device_number(&path).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
