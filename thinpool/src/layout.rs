//! A pool laid out on one block device: our header, then the metadata area,
//! then the data area (both mapped with dm-linear by the node).
//!
//! Pure logic: encoding and decoding the header, sizing the areas, and
//! recognising what a device already holds from its first bytes. The node
//! reads the bytes; this module decides.

use crate::ids::{PoolName, Sectors};

/// How many leading bytes [`identify`] needs to see (covers btrfs's
/// superblock at 64 KiB and our own header).
pub const PROBE_BYTES: usize = 1 << 20;

/// Where the metadata area starts: the header gets the first MiB, which
/// also keeps both areas 1 MiB-aligned.
pub const HEADER_AREA: Sectors = Sectors(2048);

const MAGIC: &[u8; 16] = b"thin-csi-pool\0\0\x01";
const VERSION: u32 = 1;
const ENCODED_LEN: usize = 16 + 4 + 16 + 48 + 8 * 4 + 4 + 4;

/// The pool's identity and layout, written at the start of the device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolHeader {
    /// The pool's identity: stable across reboots, unlike device paths.
    pub uuid: [u8; 16],
    pub name: PoolName,
    pub metadata_start: Sectors,
    pub metadata_len: Sectors,
    pub data_start: Sectors,
    pub data_len: Sectors,
    /// The pool's data block size, in sectors.
    pub block_size: Sectors,
}

impl PoolHeader {
    /// Lays a pool out on a device of `device_len`.
    pub fn plan(uuid: [u8; 16], name: PoolName, device_len: Sectors, block_size: Sectors) -> Result<PoolHeader, LayoutError> {
        if block_size.0 < 128 || block_size.0 > 2_097_152 || block_size.0 % 128 != 0 {
            return Err(LayoutError::BadBlockSize(block_size));
        }
        let usable = device_len.0.saturating_sub(HEADER_AREA.0);
        let metadata_len = metadata_size_for(Sectors(usable), block_size);
        let data_len = usable.saturating_sub(metadata_len.0) / block_size.0 * block_size.0;
        if data_len < 16 * block_size.0 {
            return Err(LayoutError::DeviceTooSmall(device_len));
        }
        Ok(PoolHeader {
            uuid,
            name,
            metadata_start: HEADER_AREA,
            metadata_len,
            data_start: Sectors(HEADER_AREA.0 + metadata_len.0),
            data_len: Sectors(data_len),
            block_size,
        })
    }

    pub fn uuid_string(&self) -> String {
        self.uuid.iter().map(|b| format!("{b:02x}")).collect()
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(4096);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&self.uuid);
        let mut name = [0u8; PoolName::MAX_LEN];
        name[..self.name.as_str().len()].copy_from_slice(self.name.as_str().as_bytes());
        out.extend_from_slice(&name);
        for v in [self.metadata_start, self.metadata_len, self.data_start, self.data_len] {
            out.extend_from_slice(&v.0.to_le_bytes());
        }
        out.extend_from_slice(&(self.block_size.0 as u32).to_le_bytes());
        let crc = crc32(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        debug_assert_eq!(out.len(), ENCODED_LEN);
        out.resize(4096, 0);
        out
    }

    fn decode(bytes: &[u8]) -> Result<PoolHeader, String> {
        if bytes.len() < ENCODED_LEN {
            return Err("header truncated".into());
        }
        let body = &bytes[..ENCODED_LEN - 4];
        let stored = u32::from_le_bytes(bytes[ENCODED_LEN - 4..ENCODED_LEN].try_into().unwrap());
        if crc32(body) != stored {
            return Err("thin-csi header with a bad checksum".into());
        }
        let u32_at = |o: usize| u32::from_le_bytes(bytes[o..o + 4].try_into().unwrap());
        let u64_at = |o: usize| u64::from_le_bytes(bytes[o..o + 8].try_into().unwrap());
        let version = u32_at(16);
        if version != VERSION {
            return Err(format!("thin-csi header of unknown version {version}"));
        }
        let name_bytes = &bytes[36..36 + PoolName::MAX_LEN];
        let name_len = name_bytes.iter().position(|b| *b == 0).unwrap_or(PoolName::MAX_LEN);
        let name = std::str::from_utf8(&name_bytes[..name_len])
            .ok()
            .and_then(|s| PoolName::new(s).ok())
            .ok_or("thin-csi header with an invalid pool name")?;
        let o = 36 + PoolName::MAX_LEN;
        let header = PoolHeader {
            uuid: bytes[20..36].try_into().unwrap(),
            name,
            metadata_start: Sectors(u64_at(o)),
            metadata_len: Sectors(u64_at(o + 8)),
            data_start: Sectors(u64_at(o + 16)),
            data_len: Sectors(u64_at(o + 24)),
            block_size: Sectors(u64::from(u32_at(o + 32))),
        };
        header.check_layout().map_err(|why| format!("thin-csi header with an impossible layout: {why}"))?;
        Ok(header)
    }

    /// The layout rules [`PoolHeader::plan`] follows, checked on a header
    /// read back: a checksum proves the bytes are as written, not that
    /// whoever wrote them laid out areas that are safe to map (after our
    /// header, not overlapping, whole blocks).
    fn check_layout(&self) -> Result<(), String> {
        let b = self.block_size.0;
        if b < 128 || b > 2_097_152 || b % 128 != 0 {
            return Err(format!("data block size {b} sectors"));
        }
        if self.metadata_start.0 < HEADER_AREA.0 || self.metadata_len.0 == 0 {
            return Err(format!("metadata area {}+{} overlaps the header", self.metadata_start.0, self.metadata_len.0));
        }
        let metadata_end = self.metadata_start.0.checked_add(self.metadata_len.0).ok_or("metadata area past 2^64 sectors")?;
        if self.data_start.0 < metadata_end {
            return Err(format!("data area at {} starts inside the metadata area (ends at {metadata_end})", self.data_start.0));
        }
        self.data_start.0.checked_add(self.data_len.0).ok_or("data area past 2^64 sectors")?;
        if self.data_len.0 < 16 * b || self.data_len.0 % b != 0 {
            return Err(format!("data area of {} sectors is not at least 16 whole blocks of {b}", self.data_len.0));
        }
        Ok(())
    }
}

/// Metadata area size for a data area: 128 bytes per data block (mappings,
/// with room for snapshot sharing) plus 8 KiB per thin device the pool may
/// hold (each device's mapping tree needs its own blocks; without this term
/// a small pool runs out of metadata after ~1000 devices and the kernel
/// turns it read-only). Planned devices: a quarter of the data blocks,
/// between 1024 and 65536. At least 4 MiB, at most the kernel's ~16 GiB,
/// rounded up to 1 MiB. This follows `thin_metadata_size` (block size, pool
/// size, max thins) with headroom.
pub fn metadata_size_for(data: Sectors, block_size: Sectors) -> Sectors {
    const MIB: u64 = 2048;
    let blocks = data.0 / block_size.0.max(1);
    let thins = (blocks / 4).clamp(1024, 65536);
    let bytes = blocks.saturating_mul(128).saturating_add(thins * 8192);
    let sectors = Sectors::from_bytes_ceil(bytes).0.clamp(4 * MIB, 16 * 1024 * MIB - MIB);
    Sectors(sectors.div_ceil(MIB) * MIB)
}

/// What the start of a device holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Contents {
    /// Only zeros: free to lay a pool out.
    Zeros,
    /// A pool of ours.
    Pool(PoolHeader),
    /// Anything else, named as well as we can. Never written to.
    Foreign(String),
}

/// Recognises a device's contents from its first bytes (ideally
/// [`PROBE_BYTES`]; a shorter device gives fewer).
pub fn identify(head: &[u8]) -> Contents {
    let at = |offset: usize, magic: &[u8]| head.get(offset..offset + magic.len()) == Some(magic);
    if at(0, MAGIC) {
        return match PoolHeader::decode(head) {
            Ok(h) => Contents::Pool(h),
            Err(why) => Contents::Foreign(why),
        };
    }
    let known: &[(usize, &[u8], &str)] = &[
        (1080, &[0x53, 0xef], "an ext2/ext3/ext4 filesystem"),
        (0, b"XFSB", "an XFS filesystem"),
        (65536 + 64, b"_BHRfS_M", "a btrfs filesystem"),
        (0, b"LUKS\xba\xbe", "a LUKS encrypted volume"),
        (512, b"EFI PART", "a GPT partition table"),
        (4086, b"SWAPSPACE2", "a swap area"),
        (0, &[0x52, 0x56, 0xBE, 0x1B], "a bcachefs or other filesystem"),
    ];
    for (offset, magic, what) in known {
        if at(*offset, magic) {
            return Contents::Foreign(what.to_string());
        }
    }
    for sector in 0..4 {
        if at(sector * 512, b"LABELONE") {
            return Contents::Foreign("an LVM physical volume label".into());
        }
    }
    if at(510, &[0x55, 0xaa]) {
        return Contents::Foreign("a DOS/MBR partition table".into());
    }
    if at(32, &27022010u32.to_le_bytes()) {
        return Contents::Foreign("thin-pool metadata".into());
    }
    match head.iter().position(|b| *b != 0) {
        None => Contents::Zeros,
        Some(offset) => Contents::Foreign(format!("unrecognised data (a non-zero byte at offset {offset})")),
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    #[error("data block size {0} must be a multiple of 128 sectors (64 KiB) between 64 KiB and 1 GiB")]
    BadBlockSize(Sectors),
    #[error("device of {0} is too small for a pool")]
    DeviceTooSmall(Sectors),
}

/// CRC-32 (IEEE), bitwise: the header is tiny and read once per start.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> PoolHeader {
        PoolHeader::plan([7; 16], PoolName::new("p0").unwrap(), Sectors(2 * 1024 * 1024 * 10), Sectors(128)).unwrap()
    }

    #[test]
    fn header_round_trips_and_areas_do_not_overlap() {
        let h = header();
        assert_eq!(h.metadata_start, HEADER_AREA);
        assert!(h.metadata_start.0 + h.metadata_len.0 <= h.data_start.0);
        assert!(h.data_start.0 + h.data_len.0 <= 2 * 1024 * 1024 * 10);
        assert_eq!(h.data_len.0 % 128, 0);
        let mut disk = h.encode();
        disk.resize(PROBE_BYTES, 0);
        assert_eq!(identify(&disk), Contents::Pool(h));
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn a_damaged_header_is_foreign_not_ours() {
        let mut disk = header().encode();
        disk[40] ^= 1;
        assert!(matches!(identify(&disk), Contents::Foreign(why) if why.contains("checksum")));
    }

    #[test]
    fn recognises_what_a_device_holds() {
        let mut disk = vec![0u8; PROBE_BYTES];
        assert_eq!(identify(&disk), Contents::Zeros);
        let cases: &[(usize, &[u8], &str)] = &[
            (1080, &[0x53, 0xef], "ext"),
            (0, b"XFSB", "XFS"),
            (512 + 24, b"LABELONE", "LVM"),
            (510, &[0x55, 0xaa], "MBR"),
            (512, b"EFI PART", "GPT"),
            (65536 + 64, b"_BHRfS_M", "btrfs"),
            (300_000, &[1], "offset 300000"),
        ];
        for (offset, magic, word) in cases {
            disk.iter_mut().for_each(|b| *b = 0);
            let offset = if *word == "LVM" { 512 } else { *offset };
            disk[offset..offset + magic.len()].copy_from_slice(magic);
            match identify(&disk) {
                Contents::Foreign(what) => assert!(what.contains(word), "{what} should name {word}"),
                other => panic!("{word}: {other:?}"),
            }
        }
    }

    #[test]
    fn metadata_size_follows_guidance() {
        // A tiny pool still plans for 1024 devices: 8 MiB + 2 KiB → 9 MiB.
        assert_eq!(metadata_size_for(Sectors(2048), Sectors(128)), Sectors(9 * 2048));
        // 4 GiB of 64 KiB blocks: 65536 blocks × 128 B + 16384 devices × 8 KiB = 8 + 128 MiB.
        assert_eq!(metadata_size_for(Sectors(8 * 1024 * 1024), Sectors(128)), Sectors(136 * 2048));
        // 1 TiB: 16 Mi blocks × 128 B = 2 GiB, plus 65536 devices × 8 KiB = 512 MiB.
        assert_eq!(metadata_size_for(Sectors(2 * 1024 * 1024 * 1024), Sectors(128)), Sectors((2048 + 512) * 2048));
        assert!(metadata_size_for(Sectors(u64::MAX / 2), Sectors(128)).0 < 16 * 1024 * 2048);
        assert!(PoolHeader::plan([0; 16], PoolName::new("x").unwrap(), Sectors(4096), Sectors(128)).is_err());
        assert!(PoolHeader::plan([0; 16], PoolName::new("x").unwrap(), Sectors(1 << 30), Sectors(100)).is_err());
    }
}
