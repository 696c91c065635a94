//! What a device holds, and making a filesystem only where it holds
//! nothing.

use std::path::Path;

use super::blockdev::{read_head, require_path};
use super::error::{FsError, Result};
use super::exec;
use super::FsType;

/// How much of a device's start is read: a device is empty only when all
/// of it is zeros (and blkid finds no signature further on).
pub const PROBE_BYTES: usize = 1 << 20;

/// What `format_if_empty` did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FormatOutcome {
    /// The device was empty and now holds the requested filesystem.
    Formatted,
    /// The device already held the requested filesystem; nothing written.
    AlreadyFormatted(FsType),
}

/// What the head of a device says, before blkid is asked anything.
#[derive(Debug, PartialEq, Eq)]
enum Head {
    Zeros,
    Known(FsType),
    /// Non-zero bytes no signature here matches; the first at this offset.
    Unrecognised(usize),
}

// ext2/3/4 superblock at 1024: magic 0xEF53 at +56, feature words at
// +92 (compat), +96 (incompat), +100 (ro_compat). Classification as
// libblkid does it.
const EXT_SB: usize = 1024;
const EXT_COMPAT_HAS_JOURNAL: u32 = 0x4;
const EXT_INCOMPAT_JOURNAL_DEV: u32 = 0x8;
const EXT_INCOMPAT_64BIT: u32 = 0x80;
const EXT2_INCOMPAT_SUPP: u32 = 0x02 | 0x10; // filetype, meta_bg
const EXT3_INCOMPAT_SUPP: u32 = 0x02 | 0x04 | 0x10; // + recover
const EXT23_RO_COMPAT_SUPP: u32 = 0x1 | 0x2 | 0x4; // sparse_super, large_file, btree_dir

/// Signatures other than ext and xfs, with the name blkid gives them.
const FOREIGN: &[(usize, &[u8], &str)] = &[
    (0, b"LUKS\xba\xbe", "crypto_LUKS"),
    (0x4000, b"SKUL\xba\xbe", "crypto_LUKS"),
    (65536 + 64, b"_BHRfS_M", "btrfs"),
    (512, b"EFI PART", "gpt"),
    (4096 - 10, b"SWAPSPACE2", "swap"),
    (4096 - 10, b"SWAP-SPACE", "swap"),
    (16384 - 10, b"SWAPSPACE2", "swap"),
    (65536 - 10, b"SWAPSPACE2", "swap"),
    (0, b"hsqs", "squashfs"),
    (32769, b"CD001", "iso9660"),
    (3, b"NTFS    ", "ntfs"),
    (0x52, b"FAT32   ", "vfat"),
    (0x36, b"FAT1", "vfat"),
    (1024, &[0x10, 0x20, 0xf5, 0xf2], "f2fs"),
    (0, &[0xfc, 0x4e, 0x2b, 0xa9], "linux_raid_member"),
    (4096, &[0xfc, 0x4e, 0x2b, 0xa9], "linux_raid_member"),
    (
        4096 + 24,
        &[0xc6, 0x85, 0x73, 0xf6, 0x4e, 0x1a, 0x45, 0xca, 0x82, 0x65, 0xf5, 0x7f, 0x48, 0xba, 0x6d, 0x81],
        "bcache",
    ),
    // dm-thin pool metadata superblock (thin-provisioning-tools' magic).
    (32, &27022010u32.to_le_bytes(), "thin_pool_metadata"),
];

fn classify(head: &[u8]) -> Head {
    let at = |offset: usize, magic: &[u8]| head.get(offset..offset + magic.len()) == Some(magic);
    let le32 = |offset: usize| {
        head.get(offset..offset + 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]])).unwrap_or(0)
    };
    if at(0, b"XFSB") {
        return Head::Known(FsType::Xfs);
    }
    if at(EXT_SB + 56, &[0x53, 0xef]) {
        let compat = le32(EXT_SB + 92);
        let incompat = le32(EXT_SB + 96);
        let ro_compat = le32(EXT_SB + 100);
        if incompat & EXT_INCOMPAT_JOURNAL_DEV != 0 {
            return Head::Known(FsType::Foreign("jbd".into()));
        }
        let fs = if compat & EXT_COMPAT_HAS_JOURNAL != 0 {
            if incompat & !EXT3_INCOMPAT_SUPP != 0 || ro_compat & !EXT23_RO_COMPAT_SUPP != 0 {
                FsType::Ext4
            } else {
                FsType::Ext3
            }
        } else if incompat & !EXT2_INCOMPAT_SUPP != 0 || ro_compat & !EXT23_RO_COMPAT_SUPP != 0 {
            FsType::Ext4
        } else {
            FsType::Ext2
        };
        return Head::Known(fs);
    }
    for (offset, magic, name) in FOREIGN {
        if at(*offset, magic) {
            return Head::Known(FsType::Foreign((*name).into()));
        }
    }
    if (0..4).any(|sector| at(sector * 512, b"LABELONE")) {
        return Head::Known(FsType::Foreign("LVM2_member".into()));
    }
    if at(510, &[0x55, 0xaa]) {
        return Head::Known(FsType::Foreign("dos".into()));
    }
    match head.iter().position(|b| *b != 0) {
        None => Head::Zeros,
        Some(offset) => Head::Unrecognised(offset),
    }
}

fn unrecognised(offset: usize) -> FsType {
    FsType::Foreign(format!("unrecognised data, a non-zero byte at offset {offset}"))
}

/// Classifies a device's first bytes by magic numbers alone (no blkid):
/// `None` when they are all zeros; unknown non-zero data is a
/// [`FsType::Foreign`] saying so.
pub fn classify_head(head: &[u8]) -> Option<FsType> {
    match classify(head) {
        Head::Zeros => None,
        Head::Known(fs) => Some(fs),
        Head::Unrecognised(offset) => Some(unrecognised(offset)),
    }
}

/// The size in bytes a filesystem's superblock says it spans, for ext2/3/4
/// and xfs (`None` for anything else, or a superblock that does not hold
/// together). What the stage compares with the device to know whether a
/// restored or cloned filesystem must grow into a larger volume.
pub fn filesystem_bytes(head: &[u8]) -> Option<u64> {
    let le32 = |offset: usize| head.get(offset..offset + 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
    let be32 = |offset: usize| head.get(offset..offset + 4).map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
    let be64 = |offset: usize| head.get(offset..offset + 8).map(|b| u64::from_be_bytes(b.try_into().expect("8 bytes")));
    match classify(head) {
        Head::Known(FsType::Xfs) => {
            // sb_blocksize at +4 (a power of two, 512..64 KiB), sb_dblocks at +8.
            let block = u64::from(be32(4)?);
            (block.is_power_of_two() && (512..=65536).contains(&block)).then_some(())?;
            be64(8)?.checked_mul(block)
        }
        Head::Known(FsType::Ext2 | FsType::Ext3 | FsType::Ext4) => {
            // s_blocks_count_lo at +4, s_log_block_size at +24 (block = 1 KiB << n,
            // at most 64 KiB), s_blocks_count_hi at +0x150 when INCOMPAT_64BIT.
            let log = le32(EXT_SB + 24)?;
            (log <= 6).then_some(())?;
            let block = 1024u64 << log;
            let mut blocks = u64::from(le32(EXT_SB + 4)?);
            if le32(EXT_SB + 96)? & EXT_INCOMPAT_64BIT != 0 {
                blocks |= u64::from(le32(EXT_SB + 0x150)?) << 32;
            }
            blocks.checked_mul(block)
        }
        _ => None,
    }
}

/// What [`filesystem_bytes`] says of the filesystem on `device`.
pub fn filesystem_size(device: &Path) -> Result<Option<u64>> {
    require_path(device, "device path")?;
    Ok(filesystem_bytes(&read_head(device, 4096)?))
}

/// The filesystem `fs` already on `device`, for a read-only stage, which
/// never formats: an empty device is [`FsError::Unformatted`], another
/// filesystem [`FsError::FormatMismatch`]; nothing is written either way.
pub fn require_formatted(device: &Path, fs: &FsType) -> Result<FsType> {
    fs.require_supported()?;
    match probe_filesystem(device)? {
        Some(found) if &found == fs => Ok(found),
        Some(found) => Err(FsError::FormatMismatch { device: device.to_path_buf(), found, wanted: fs.clone() }),
        None => Err(FsError::Unformatted { device: device.to_path_buf() }),
    }
}

/// The `TYPE` (else `PTTYPE`) of `blkid -o export` output.
pub fn parse_blkid_export(output: &str) -> Option<String> {
    let value = |key: &str| {
        output.lines().find_map(|l| l.trim().strip_prefix(key)?.strip_prefix('=').map(str::to_string)).filter(|v| !v.is_empty())
    };
    value("TYPE").or_else(|| value("PTTYPE"))
}

/// A name blkid reports, as an FsType.
fn from_blkid_name(name: &str) -> FsType {
    match name {
        "ext4" => FsType::Ext4,
        "ext3" => FsType::Ext3,
        "ext2" => FsType::Ext2,
        "xfs" => FsType::Xfs,
        other => FsType::Foreign(other.to_string()),
    }
}

/// Asks `blkid -p` (low-level probing, no cache) for a signature anywhere
/// on the device. Ok(None): blkid found nothing or is not installed.
fn blkid(device: &Path) -> Result<Option<FsType>> {
    let args = [std::ffi::OsStr::new("-p"), "-o".as_ref(), "export".as_ref(), device.as_os_str()];
    let out = match exec::run_raw("blkid", args, device) {
        Ok(out) => out,
        Err(FsError::ToolUnavailable { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            tracing::warn!(device = %device.display(), "blkid is not installed; probing by magic numbers only");
            return Ok(None);
        }
        Err(e) => return Err(e),
    };
    match out.status.code() {
        Some(0) => {
            let text = String::from_utf8_lossy(&out.stdout);
            Ok(Some(match parse_blkid_export(&text) {
                Some(name) => from_blkid_name(&name),
                None => FsType::Foreign(format!("a signature blkid reports without a type: {}", exec::tail(&text, 200))),
            }))
        }
        // Nothing found.
        Some(2) => Ok(None),
        // Ambivalent: several signatures.
        Some(8) => Ok(Some(FsType::Foreign("several signatures (blkid: ambivalent result)".into()))),
        _ => Err(exec::failed("blkid -p", device, &out)),
    }
}

/// What filesystem `device` holds: `None` only when its first MiB is zeros
/// and `blkid -p` finds no signature elsewhere on it (a freshly created
/// thin device); ext2/3/4 and xfs by name; anything else — another
/// filesystem, a partition table, an LVM label, unrecognised data — as
/// [`FsType::Foreign`] naming it.
pub fn probe_filesystem(device: &Path) -> Result<Option<FsType>> {
    require_path(device, "device path")?;
    let head = read_head(device, PROBE_BYTES)?;
    match classify(&head) {
        Head::Known(fs) => Ok(Some(fs)),
        Head::Unrecognised(offset) => Ok(Some(blkid(device)?.unwrap_or_else(|| unrecognised(offset)))),
        Head::Zeros => blkid(device),
    }
}

/// Makes `fs` on `device` if, and only if, the device holds nothing (see
/// [`probe_filesystem`]). If it already holds `fs`: `AlreadyFormatted`,
/// nothing written. If it holds anything else: [`FsError::FormatMismatch`]
/// and the device is untouched.
///
/// ext2/3/4 are made with `mkfs.ext4 -t <type> -F -q -m 0` (no reserved
/// blocks, as kubelet does), xfs with `mkfs.xfs -q` (without `-f`, so
/// mkfs.xfs itself refuses a device with a signature too). `mkfs_options`
/// are appended before the device (e.g. `-E nodiscard`, `-K`).
pub fn format_if_empty(device: &Path, fs: &FsType, mkfs_options: &[String]) -> Result<FormatOutcome> {
    require_path(device, "device path")?;
    fs.require_supported()?;
    for opt in mkfs_options {
        if opt.contains('\0') {
            return Err(FsError::InvalidArgument(format!("mkfs option {opt:?} contains a NUL byte")));
        }
    }
    match probe_filesystem(device)? {
        Some(found) if &found == fs => return Ok(FormatOutcome::AlreadyFormatted(found)),
        Some(found) => {
            return Err(FsError::FormatMismatch { device: device.to_path_buf(), found, wanted: fs.clone() });
        }
        None => {}
    }
    let extra = mkfs_options.iter().filter(|o| !o.is_empty()).map(String::as_str);
    let (tool, mut args): (&str, Vec<&str>) = match fs {
        FsType::Xfs => ("mkfs.xfs", vec!["-q"]),
        _ => ("mkfs.ext4", vec!["-t", fs.name(), "-F", "-q", "-m", "0"]),
    };
    args.extend(extra);
    let mut all: Vec<&std::ffi::OsStr> = args.iter().map(std::ffi::OsStr::new).collect();
    all.push(device.as_os_str());
    tracing::info!(device = %device.display(), fs = fs.name(), "making a filesystem on an empty device");
    exec::run(tool, all, device)?;
    match probe_filesystem(device)? {
        Some(found) if &found == fs => Ok(FormatOutcome::Formatted),
        found => Err(FsError::FormatNotVisible {
            device: device.to_path_buf(),
            wanted: fs.clone(),
            found: found.map(|f| f.to_string()).unwrap_or_else(|| "empty".into()),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ext_head(compat: u32, incompat: u32, ro_compat: u32) -> Vec<u8> {
        let mut head = vec![0u8; 4096];
        head[1080..1082].copy_from_slice(&[0x53, 0xef]);
        head[EXT_SB + 92..EXT_SB + 96].copy_from_slice(&compat.to_le_bytes());
        head[EXT_SB + 96..EXT_SB + 100].copy_from_slice(&incompat.to_le_bytes());
        head[EXT_SB + 100..EXT_SB + 104].copy_from_slice(&ro_compat.to_le_bytes());
        head
    }

    #[test]
    fn ext_variants_as_blkid_names_them() {
        // mke2fs defaults: ext4 has extents (0x40), 64bit (0x80), flex_bg (0x200)...
        assert_eq!(classify_head(&ext_head(0x3c, 0x2c2, 0x46b)), Some(FsType::Ext4));
        // A journal and only ext3 features.
        assert_eq!(classify_head(&ext_head(0x3c, 0x2, 0x3)), Some(FsType::Ext3));
        // Neither journal nor newer features.
        assert_eq!(classify_head(&ext_head(0x38, 0x2, 0x3)), Some(FsType::Ext2));
        // No journal but extents: still ext4.
        assert_eq!(classify_head(&ext_head(0x38, 0x42, 0x3)), Some(FsType::Ext4));
        // External journal device.
        assert_eq!(classify_head(&ext_head(0, 0x8, 0)), Some(FsType::Foreign("jbd".into())));
    }

    #[test]
    fn known_signatures() {
        let mut head = vec![0u8; PROBE_BYTES];
        head[0..4].copy_from_slice(b"XFSB");
        assert_eq!(classify_head(&head), Some(FsType::Xfs));

        let with = |offset: usize, magic: &[u8]| {
            let mut h = vec![0u8; PROBE_BYTES];
            h[offset..offset + magic.len()].copy_from_slice(magic);
            classify_head(&h).unwrap().name().to_string()
        };
        assert_eq!(with(512 + 512, b"LABELONE"), "LVM2_member");
        assert_eq!(with(65600, b"_BHRfS_M"), "btrfs");
        assert_eq!(with(4086, b"SWAPSPACE2"), "swap");
        assert_eq!(with(510, &[0x55, 0xaa]), "dos");
        assert_eq!(with(512, b"EFI PART"), "gpt");
        assert_eq!(with(0, b"LUKS\xba\xbe"), "crypto_LUKS");
        assert_eq!(with(32, &27022010u32.to_le_bytes()), "thin_pool_metadata");
    }

    #[test]
    fn zeros_and_unknown_data() {
        assert_eq!(classify_head(&vec![0u8; PROBE_BYTES]), None);
        assert_eq!(classify_head(&[]), None);
        let mut head = vec![0u8; PROBE_BYTES];
        head[PROBE_BYTES - 1] = 1;
        assert_eq!(
            classify_head(&head),
            Some(FsType::Foreign(format!("unrecognised data, a non-zero byte at offset {}", PROBE_BYTES - 1)))
        );
        // A short head (small device) is classified without panicking.
        assert_eq!(classify_head(&[0x53, 0xef]), Some(unrecognised(0)));
    }

    #[test]
    fn blkid_export_output() {
        let out = "DEVNAME=/dev/loop0\nUUID=1234\nBLOCK_SIZE=4096\nTYPE=xfs\nUSAGE=filesystem\n";
        assert_eq!(parse_blkid_export(out).as_deref(), Some("xfs"));
        assert_eq!(parse_blkid_export("DEVNAME=/dev/vda\nPTUUID=ab\nPTTYPE=gpt\n").as_deref(), Some("gpt"));
        assert_eq!(parse_blkid_export("DEVNAME=/dev/x\nSEC_TYPE=msdos\nTYPE=vfat\n").as_deref(), Some("vfat"));
        assert_eq!(parse_blkid_export("DEVNAME=/dev/x\n"), None);
        assert_eq!(from_blkid_name("LVM2_member"), FsType::Foreign("LVM2_member".into()));
        assert_eq!(from_blkid_name("ext4"), FsType::Ext4);
    }

    /// A sparse image file standing in for a device, removed when dropped.
    struct Scratch(std::path::PathBuf);

    impl std::ops::Deref for Scratch {
        type Target = Path;
        fn deref(&self) -> &Path {
            &self.0
        }
    }

    impl AsRef<Path> for Scratch {
        fn as_ref(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn scratch(name: &str, len: u64) -> Scratch {
        let path = std::env::temp_dir().join(format!("thin-csi-fs-probe-{}-{name}", std::process::id()));
        let f = std::fs::File::create(&path).unwrap();
        f.set_len(len).unwrap();
        Scratch(path)
    }

    #[test]
    fn refuses_and_names_what_is_there() {
        // A regular file stands in for a device: no root needed.
        let path = scratch("xfs-magic", 2 << 20);
        let mut bytes = std::fs::read(&*path).unwrap();
        bytes[0..4].copy_from_slice(b"XFSB");
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(probe_filesystem(&path).unwrap(), Some(FsType::Xfs));
        let err = format_if_empty(&path, &FsType::Ext4, &[]).unwrap_err();
        assert_eq!(err.to_string(), format!("{} already holds xfs, not the requested ext4: refusing to format it", path.display()));
        assert!(matches!(format_if_empty(&path, &FsType::Xfs, &[]).unwrap(), FormatOutcome::AlreadyFormatted(FsType::Xfs)));
        // Untouched.
        assert_eq!(std::fs::read(&*path).unwrap(), bytes);

        let err = format_if_empty(&path, &FsType::Foreign("btrfs".into()), &[]).unwrap_err();
        assert!(matches!(err, FsError::UnsupportedFsType(_)), "{err}");
        let err = probe_filesystem(Path::new("/nonexistent/dev/x")).unwrap_err();
        assert_eq!(err.to_string(), "/nonexistent/dev/x: no such file or directory");
    }

    #[test]
    fn blkid_names_what_the_magic_table_does_not_know() {
        if std::process::Command::new("blkid").arg("-V").output().is_err() {
            eprintln!("blkid not installed: skipped");
            return;
        }
        // An erofs superblock: magic at 1024, 4 KiB blocks (blkszbits 12).
        let path = scratch("erofs", 4 << 20);
        let mut bytes = std::fs::read(&*path).unwrap();
        bytes[1024..1028].copy_from_slice(&[0xe2, 0xe1, 0xf5, 0xe0]);
        bytes[1036] = 12;
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(probe_filesystem(&path).unwrap(), Some(FsType::Foreign("erofs".into())));
        let err = format_if_empty(&path, &FsType::Ext4, &[]).unwrap_err();
        assert!(err.to_string().contains("already holds foreign contents (erofs)"), "{err}");
        // Not erofs any more (broken magic): unrecognised data, named by its offset.
        bytes[1024] = 0x11;
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(probe_filesystem(&path).unwrap(), Some(unrecognised(1024)));
    }

    #[test]
    fn formats_an_empty_image_once() {
        // Needs mkfs.ext4 on the machine running the tests; skipped if absent.
        if std::process::Command::new("mkfs.ext4").arg("-V").output().is_err() {
            eprintln!("mkfs.ext4 not installed: skipped");
            return;
        }
        let path = scratch("empty-ext4", 32 << 20);
        assert_eq!(probe_filesystem(&path).unwrap(), None);
        assert_eq!(format_if_empty(&path, &FsType::Ext4, &[]).unwrap(), FormatOutcome::Formatted);
        assert_eq!(probe_filesystem(&path).unwrap(), Some(FsType::Ext4));
        assert_eq!(format_if_empty(&path, &FsType::Ext4, &[]).unwrap(), FormatOutcome::AlreadyFormatted(FsType::Ext4));
        let err = format_if_empty(&path, &FsType::Xfs, &[]).unwrap_err();
        assert!(matches!(err, FsError::FormatMismatch { found: FsType::Ext4, .. }), "{err}");
        let err = format_if_empty(&path, &FsType::Ext3, &[]).unwrap_err();
        assert!(matches!(err, FsError::FormatMismatch { .. }), "{err}");

        // ext3 and ext2 are made by the same tool and told apart the way blkid does.
        for fs in [FsType::Ext3, FsType::Ext2] {
            let image = scratch(fs.name(), 32 << 20);
            assert_eq!(format_if_empty(&image, &fs, &[]).unwrap(), FormatOutcome::Formatted);
            assert_eq!(probe_filesystem(&image).unwrap(), Some(fs.clone()));
        }

        // The superblock's size is the image's; a larger device leaves it as it was.
        assert_eq!(filesystem_size(&path).unwrap(), Some(32 << 20));
        std::fs::OpenOptions::new().write(true).open(&*path).unwrap().set_len(64 << 20).unwrap();
        assert_eq!(filesystem_size(&path).unwrap(), Some(32 << 20));
        assert_eq!(require_formatted(&path, &FsType::Ext4).unwrap(), FsType::Ext4);
        assert!(matches!(require_formatted(&path, &FsType::Xfs), Err(FsError::FormatMismatch { .. })));

        // A bad mkfs option: the tool's own complaint comes back.
        let other = scratch("bad-option", 32 << 20);
        let err = format_if_empty(&other, &FsType::Ext4, &["--no-such-option".into()]).unwrap_err();
        assert!(err.to_string().starts_with(&format!("mkfs.ext4 on {} failed (exit status", other.display())), "{err}");
    }

    #[test]
    fn filesystem_bytes_from_the_superblocks() {
        // ext4, 4 KiB blocks (log 2), 64bit with a high word.
        let mut head = ext_head(0x3c, 0x2c2, 0x46b);
        head[EXT_SB + 4..EXT_SB + 8].copy_from_slice(&16384u32.to_le_bytes());
        head[EXT_SB + 24..EXT_SB + 28].copy_from_slice(&2u32.to_le_bytes());
        assert_eq!(filesystem_bytes(&head), Some(64 << 20));
        head[EXT_SB + 0x150..EXT_SB + 0x154].copy_from_slice(&1u32.to_le_bytes());
        assert_eq!(filesystem_bytes(&head), Some(((1u64 << 32) + 16384) * 4096));
        // Without INCOMPAT_64BIT the high word is not read.
        let mut small = ext_head(0x3c, 0x2, 0x3);
        small[EXT_SB + 4..EXT_SB + 8].copy_from_slice(&1000u32.to_le_bytes());
        small[EXT_SB + 0x150] = 9;
        assert_eq!(filesystem_bytes(&small), Some(1000 * 1024));
        // A block size past 64 KiB does not hold together.
        small[EXT_SB + 24] = 7;
        assert_eq!(filesystem_bytes(&small), None);
        // xfs: big-endian block size and block count.
        let mut xfs = vec![0u8; 512];
        xfs[..4].copy_from_slice(b"XFSB");
        xfs[4..8].copy_from_slice(&4096u32.to_be_bytes());
        xfs[8..16].copy_from_slice(&131072u64.to_be_bytes());
        assert_eq!(filesystem_bytes(&xfs), Some(512 << 20));
        xfs[4..8].copy_from_slice(&3000u32.to_be_bytes());
        assert_eq!(filesystem_bytes(&xfs), None);
        // Nothing, or something else: no size.
        assert_eq!(filesystem_bytes(&[0u8; 4096]), None);
        assert_eq!(filesystem_bytes(b"LUKS\xba\xbe"), None);
        // A head cut short of the fields never reads past it.
        assert_eq!(filesystem_bytes(&xfs[..6]), None);
    }

    #[test]
    fn a_read_only_stage_never_formats_an_empty_device() {
        let path = scratch("empty-ro", 8 << 20);
        assert!(matches!(require_formatted(&path, &FsType::Ext4), Err(FsError::Unformatted { .. })));
        assert!(std::fs::read(&*path).unwrap().iter().all(|b| *b == 0), "the device was written");
    }
}
