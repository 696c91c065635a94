//! Our reader and replayer of dm-log-writes logs (the kernel target that
//! copies every write to a device onto a log device, in the order the
//! writes became durable). Written from the format the kernel documents
//! (Documentation/admin-guide/device-mapper/log-writes.rst and the
//! structure comments of drivers/md/dm-log-writes.c):
//!
//! - Byte 0: the super: `magic: le64` (0x6a736677736872), `version: le64`
//!   (1), `nr_entries: le64`, `sectorsize: le32` (the logged device's
//!   logical block size). The kernel rewrites it after FUA writes and marks
//!   (and when the target is removed), so `nr_entries` counts what is safe
//!   to read.
//! - From byte `sectorsize` on, `nr_entries` entries, each one sector of
//!   header — `sector: le64`, `nr_sectors: le64` (both in units of
//!   `sectorsize`), `flags: le64`, `data_len: le64` — followed, for a mark,
//!   by `data_len` bytes of label in the same sector, and for a write by
//!   `nr_sectors` sectors of the data written. Discards carry no data.
//! - Flags: FLUSH 1, FUA 2, DISCARD 4, MARK 8, METADATA 16.
//!
//! Writes are logged when they are known durable: plain writes only when a
//! later flush completes (just before that flush's own entry), FUA writes
//! when they complete. So the device as it was at a power cut right after
//! a FLUSH or FUA entry completed is: every entry up to that one applied in
//! order to a zeroed device. Those are the replay points.

use std::io;

pub const MAGIC: u64 = 0x006a_7366_7773_6872;
pub const VERSION: u64 = 1;
pub const FLUSH: u64 = 1;
pub const FUA: u64 = 1 << 1;
pub const DISCARD: u64 = 1 << 2;
pub const MARK: u64 = 1 << 3;
pub const METADATA: u64 = 1 << 4;
const HEADER: usize = 32;
const SUPER: usize = 28;

/// Where the log is read from (a file or block device; a byte vector in tests).
pub trait Source {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()>;
    fn len(&self) -> io::Result<u64>;
}

impl Source for std::fs::File {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        std::os::unix::fs::FileExt::read_exact_at(self, buf, offset)
    }
    fn len(&self) -> io::Result<u64> {
        thinpool_dm::size_of(self)
    }
}

impl Source for Vec<u8> {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let start = usize::try_from(offset).map_err(|_| io::ErrorKind::UnexpectedEof)?;
        let src = start.checked_add(buf.len()).and_then(|end| self.get(start..end)).ok_or(io::ErrorKind::UnexpectedEof)?;
        buf.copy_from_slice(src);
        Ok(())
    }
    fn len(&self) -> io::Result<u64> {
        Ok(self.len() as u64)
    }
}

/// Where the log is replayed to.
pub trait Target {
    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()>;
}

impl Target for std::fs::File {
    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        std::os::unix::fs::FileExt::write_all_at(self, data, offset)
    }
}

impl Target for Vec<u8> {
    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        let start = offset as usize;
        if self.len() < start + data.len() {
            self.resize(start + data.len(), 0);
        }
        self[start..start + data.len()].copy_from_slice(data);
        Ok(())
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Position in the log, from 0.
    pub index: u64,
    /// First sector written, in units of the log's sector size.
    pub sector: u64,
    pub nr_sectors: u64,
    pub flags: u64,
    /// A mark's label.
    pub mark: Option<String>,
    /// Byte offset of the data in the log (writes only).
    pub data_offset: u64,
}

impl Entry {
    pub fn is_write(&self) -> bool {
        self.flags & (MARK | DISCARD) == 0 && self.nr_sectors > 0
    }
    /// A point where what came before is durable: a completed FLUSH or FUA.
    pub fn is_durability_point(&self) -> bool {
        self.flags & (FLUSH | FUA) != 0
    }
    pub fn kind(&self) -> String {
        let mut words = Vec::new();
        for (bit, name) in [(FLUSH, "flush"), (FUA, "fua"), (DISCARD, "discard"), (MARK, "mark"), (METADATA, "meta")] {
            if self.flags & bit != 0 {
                words.push(name);
            }
        }
        if self.is_write() {
            words.push("write");
        }
        words.join("+")
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Log {
    pub sector_size: u32,
    pub entries: Vec<Entry>,
}

fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

fn bad(why: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why)
}

/// Reads the super and every entry header it counts; checks that each
/// entry's data lies within the log.
pub fn parse(src: &impl Source) -> io::Result<Log> {
    let len = src.len()?;
    let mut sup = [0u8; SUPER];
    src.read_at(0, &mut sup).map_err(|e| bad(format!("log too short for its super block: {e}")))?;
    let magic = le64(&sup, 0);
    if magic != MAGIC {
        return Err(bad(format!("not a dm-log-writes log (magic {magic:#x})")));
    }
    let version = le64(&sup, 8);
    if version != VERSION {
        return Err(bad(format!("log version {version}, this reader knows {VERSION}")));
    }
    let nr_entries = le64(&sup, 16);
    let sector_size = u32::from_le_bytes(sup[24..28].try_into().expect("4 bytes"));
    if !sector_size.is_power_of_two() || !(512..=65536).contains(&sector_size) {
        return Err(bad(format!("bad sector size {sector_size}")));
    }
    let ss = u64::from(sector_size);
    let mut entries = Vec::with_capacity(nr_entries.min(1 << 20) as usize);
    let mut offset = ss;
    let mut header = vec![0u8; sector_size as usize];
    for index in 0..nr_entries {
        if offset + ss > len {
            return Err(bad(format!("entry {index} at byte {offset}: past the end of the log ({len} bytes)")));
        }
        src.read_at(offset, &mut header)?;
        let sector = le64(&header, 0);
        let nr_sectors = le64(&header, 8);
        let flags = le64(&header, 16);
        let data_len = le64(&header, 24);
        let mut mark = None;
        if flags & MARK != 0 {
            if data_len > ss - HEADER as u64 {
                return Err(bad(format!("entry {index}: mark of {data_len} bytes does not fit its sector")));
            }
            let label = &header[HEADER..HEADER + data_len as usize];
            mark = Some(String::from_utf8_lossy(label).into_owned());
        } else if data_len != 0 {
            return Err(bad(format!("entry {index}: {data_len} bytes of inline data on a non-mark entry (unsupported)")));
        }
        let data_offset = offset + ss;
        let data_bytes = if flags & (DISCARD | MARK) != 0 { 0 } else { nr_sectors.checked_mul(ss).ok_or_else(|| bad(format!("entry {index}: size overflows")))? };
        if data_offset + data_bytes > len {
            return Err(bad(format!("entry {index}: {data_bytes} bytes of data past the end of the log")));
        }
        entries.push(Entry { index, sector, nr_sectors, flags, mark, data_offset });
        offset = data_offset + data_bytes;
    }
    Ok(Log { sector_size, entries })
}

impl Log {
    /// Indexes of the entries after which the replayed device is a state
    /// the real one could have been left in by a power cut: each FLUSH or
    /// FUA entry, and the last entry (the clean end).
    pub fn points(&self) -> Vec<usize> {
        let mut points: Vec<usize> = self.entries.iter().enumerate().filter(|(_, e)| e.is_durability_point()).map(|(i, _)| i).collect();
        if let Some(last) = self.entries.len().checked_sub(1) {
            if points.last() != Some(&last) {
                points.push(last);
            }
        }
        points
    }

    /// The label of the last mark before entry `index` whose label starts
    /// with `prefix`.
    pub fn last_mark_before(&self, index: usize, prefix: &str) -> Option<&str> {
        self.entries[..index].iter().rev().filter_map(|e| e.mark.as_deref()).find(|m| m.starts_with(prefix))
    }

    /// Applies entry `index` to `target`: a write copies its data, a discard
    /// zeroes its range (as a device that discards would read back), a
    /// mark or an empty flush changes nothing.
    pub fn apply(&self, index: usize, src: &impl Source, target: &mut impl Target) -> io::Result<()> {
        let e = &self.entries[index];
        let ss = u64::from(self.sector_size);
        const CHUNK: u64 = 1 << 20;
        if e.flags & MARK != 0 || e.nr_sectors == 0 {
            return Ok(());
        }
        let total = e.nr_sectors * ss;
        let mut done = 0;
        let mut buf = Vec::new();
        while done < total {
            let n = (total - done).min(CHUNK) as usize;
            buf.resize(n, 0);
            if e.flags & DISCARD != 0 {
                buf.fill(0);
            } else {
                src.read_at(e.data_offset + done, &mut buf)?;
            }
            target.write_at(e.sector * ss + done, &buf)?;
            done += n as u64;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    //! Logs built by hand in the documented format.
    use super::*;

    const SS: usize = 512;

    struct Builder {
        bytes: Vec<u8>,
        count: u64,
    }

    impl Builder {
        fn new() -> Self {
            Builder { bytes: vec![0; SS], count: 0 }
        }
        fn entry(&mut self, sector: u64, nr_sectors: u64, flags: u64, label: &[u8], data: &[u8]) -> &mut Self {
            let mut h = vec![0u8; SS];
            h[0..8].copy_from_slice(&sector.to_le_bytes());
            h[8..16].copy_from_slice(&nr_sectors.to_le_bytes());
            h[16..24].copy_from_slice(&flags.to_le_bytes());
            h[24..32].copy_from_slice(&(label.len() as u64).to_le_bytes());
            h[32..32 + label.len()].copy_from_slice(label);
            self.bytes.extend_from_slice(&h);
            self.bytes.extend_from_slice(data);
            self.count += 1;
            self
        }
        fn write(&mut self, sector: u64, fill: u8, sectors: usize, flags: u64) -> &mut Self {
            self.entry(sector, sectors as u64, flags, b"", &vec![fill; sectors * SS])
        }
        fn finish(&mut self, counted: u64) -> Vec<u8> {
            let mut b = self.bytes.clone();
            b[0..8].copy_from_slice(&MAGIC.to_le_bytes());
            b[8..16].copy_from_slice(&VERSION.to_le_bytes());
            b[16..24].copy_from_slice(&counted.to_le_bytes());
            b[24..28].copy_from_slice(&(SS as u32).to_le_bytes());
            b
        }
        fn done(&mut self) -> Vec<u8> {
            let n = self.count;
            self.finish(n)
        }
    }

    fn replay_to(log: &Log, src: &Vec<u8>, last: usize) -> Vec<u8> {
        let mut dev = vec![0u8; 16 * SS];
        for i in 0..=last {
            log.apply(i, src, &mut dev).unwrap();
        }
        dev
    }

    #[test]
    fn parses_writes_marks_flushes_and_discards() {
        let src = Builder::new()
            .write(2, 0xaa, 2, 0)
            .entry(0, 0, FLUSH, b"", b"")
            .entry(0, 0, MARK, b"rec-1", b"")
            .write(3, 0xbb, 1, FUA | METADATA)
            .entry(2, 1, DISCARD, b"", b"")
            .done();
        let log = parse(&src).unwrap();
        assert_eq!(log.sector_size, 512);
        assert_eq!(log.entries.len(), 5);
        let e = &log.entries;
        assert_eq!((e[0].sector, e[0].nr_sectors, e[0].kind().as_str()), (2, 2, "write"));
        assert_eq!(e[0].data_offset, 1024);
        assert_eq!(e[1].kind(), "flush");
        assert_eq!(e[2].mark.as_deref(), Some("rec-1"));
        assert_eq!(e[2].data_offset, 512 + 512 + 1024 + 512 + 512, "a mark is one sector");
        assert_eq!(e[3].kind(), "fua+meta+write");
        assert_eq!(e[4].kind(), "discard");
        assert!(!e[4].is_write());
        assert_eq!(log.points(), vec![1, 3, 4]);
        assert_eq!(log.last_mark_before(3, "rec-"), Some("rec-1"));
        assert_eq!(log.last_mark_before(2, "rec-"), None);
    }

    #[test]
    fn replays_in_order_up_to_a_point() {
        let src = Builder::new()
            .write(1, 0x11, 2, 0) // sectors 1, 2
            .write(2, 0x22, 1, 0) // overwrites sector 2
            .entry(0, 0, FLUSH, b"", b"")
            .entry(1, 1, DISCARD, b"", b"")
            .write(5, 0x55, 1, FUA)
            .done();
        let log = parse(&src).unwrap();
        let dev = replay_to(&log, &src, 2);
        assert!(dev[SS..2 * SS].iter().all(|b| *b == 0x11));
        assert!(dev[2 * SS..3 * SS].iter().all(|b| *b == 0x22), "later writes win");
        assert!(dev[5 * SS..6 * SS].iter().all(|b| *b == 0), "nothing past the point");
        let dev = replay_to(&log, &src, 4);
        assert!(dev[SS..2 * SS].iter().all(|b| *b == 0), "a discard reads back as zeros");
        assert!(dev[2 * SS..3 * SS].iter().all(|b| *b == 0x22));
        assert!(dev[5 * SS..6 * SS].iter().all(|b| *b == 0x55));
    }

    #[test]
    fn reads_only_the_entries_the_super_counts() {
        let src = Builder::new().write(0, 1, 1, FUA).write(1, 2, 1, 0).finish(1);
        let log = parse(&src).unwrap();
        assert_eq!(log.entries.len(), 1);
        assert_eq!(log.points(), vec![0]);
    }

    #[test]
    fn an_unflushed_tail_is_still_a_point() {
        let src = Builder::new().write(0, 1, 1, FUA).write(1, 2, 1, 0).done();
        assert_eq!(parse(&src).unwrap().points(), vec![0, 1]);
    }

    #[test]
    fn refuses_what_is_not_a_whole_log() {
        let mut bad_magic = Builder::new().write(0, 1, 1, 0).done();
        bad_magic[0] ^= 1;
        assert!(parse(&bad_magic).unwrap_err().to_string().contains("not a dm-log-writes log"));

        let mut bad_version = Builder::new().done();
        bad_version[8] = 2;
        assert!(parse(&bad_version).unwrap_err().to_string().contains("version 2"));

        let mut bad_size = Builder::new().done();
        bad_size[24..28].copy_from_slice(&1000u32.to_le_bytes());
        assert!(parse(&bad_size).unwrap_err().to_string().contains("sector size"));

        // The super counts more entries than the log holds.
        let short = Builder::new().write(0, 1, 1, 0).finish(2);
        assert!(parse(&short).unwrap_err().to_string().contains("entry 1"));

        // An entry whose data runs past the end.
        let mut cut = Builder::new().write(0, 1, 4, 0).done();
        cut.truncate(cut.len() - 1);
        assert!(parse(&cut).unwrap_err().to_string().contains("past the end"));

        // A mark longer than its sector.
        let mut long_mark = Builder::new().entry(0, 0, MARK, b"x", b"").done();
        long_mark[SS + 24..SS + 32].copy_from_slice(&600u64.to_le_bytes());
        assert!(parse(&long_mark).unwrap_err().to_string().contains("does not fit"));

        assert!(parse(&vec![0u8; 10]).is_err(), "shorter than the super");
    }

    #[test]
    fn an_empty_log_has_no_points() {
        let log = parse(&Builder::new().done()).unwrap();
        assert!(log.entries.is_empty());
        assert!(log.points().is_empty());
    }
}
