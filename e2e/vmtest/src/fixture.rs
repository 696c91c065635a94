//! The real kernel behind the shared behavioural cases: data I/O on the
//! thin devices of a `DmPool`.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

use thinpool::cases::Fixture;
use thinpool::{ActiveThin, Kernel, KernelError, PoolMessage, PoolStatus, Sectors, ThinId};
use thinpool_dm::DmPool;

/// Offsets the pattern is written at: the first block and one well inside.
const OFFSETS: [u64; 2] = [0, 1 << 20];
const BLOCK: usize = 64 * 1024;

pub struct DmFixture {
    pub pool: DmPool,
    held: BTreeMap<ThinId, File>,
}

impl DmFixture {
    pub fn new(pool: DmPool) -> Self {
        DmFixture { pool, held: BTreeMap::new() }
    }
}

fn pattern(seed: u64) -> Vec<u8> {
    seed.to_le_bytes().iter().copied().cycle().take(BLOCK).collect()
}

/// A 4 KiB-aligned buffer for O_DIRECT reads.
pub struct Aligned {
    ptr: *mut u8,
    layout: std::alloc::Layout,
}

impl Aligned {
    pub fn new(len: usize) -> Aligned {
        let layout = std::alloc::Layout::from_size_align(len, 4096).expect("valid layout");
        // SAFETY: layout has non-zero size.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        assert!(!ptr.is_null(), "allocation failed");
        Aligned { ptr, layout }
    }
    pub fn as_mut(&mut self) -> &mut [u8] {
        // SAFETY: ptr is a live allocation of layout.size() bytes owned by self.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.layout.size()) }
    }
}

impl Drop for Aligned {
    fn drop(&mut self) {
        // SAFETY: allocated with this layout in `new`.
        unsafe { std::alloc::dealloc(self.ptr, self.layout) }
    }
}

/// Writes the pattern of `seed` at every offset of the device at `path`;
/// with `sync`, waits until it is durable (fdatasync).
pub fn write_pattern_at(path: &Path, seed: u64, sync: bool) -> Result<(), String> {
    let f = OpenOptions::new().write(true).open(path).map_err(|e| format!("open {}: {e}", path.display()))?;
    for off in OFFSETS {
        f.write_all_at(&pattern(seed), off).map_err(|e| format!("write {}: {e}", path.display()))?;
    }
    if sync {
        f.sync_data().map_err(|e| format!("fdatasync {}: {e}", path.display()))?;
    }
    Ok(())
}

/// Reads the pattern back (O_DIRECT) and returns its seed; an error
/// (starting with " at offset" or ":") when it is torn or unwritten.
pub fn read_pattern_at(path: &Path) -> Result<u64, String> {
    let f = OpenOptions::new().read(true).custom_flags(libc::O_DIRECT).open(path).map_err(|e| format!(": open {}: {e}", path.display()))?;
    let mut seeds = Vec::new();
    for off in OFFSETS {
        let mut buf = Aligned::new(BLOCK);
        f.read_exact_at(buf.as_mut(), off).map_err(|e| format!(": read {}: {e}", path.display()))?;
        let seed = u64::from_le_bytes(buf.as_mut()[..8].try_into().unwrap());
        if buf.as_mut() != pattern(seed).as_slice() {
            return Err(format!(" at offset {off}: not a whole pattern (torn or unwritten)"));
        }
        seeds.push(seed);
    }
    if seeds[0] != seeds[1] {
        return Err(format!(": offsets disagree ({seeds:?})"));
    }
    Ok(seeds[0])
}

impl Fixture for DmFixture {
    fn write_pattern(&mut self, id: ThinId, seed: u64) -> Result<(), String> {
        let path = self.pool.thin_device_path(id).map_err(|e| e.to_string())?;
        // Buffered and not synced on purpose: the suspend must flush it.
        write_pattern_at(&path, seed, false)
    }

    fn read_pattern(&mut self, id: ThinId) -> Result<u64, String> {
        let path = self.pool.thin_device_path(id).map_err(|e| e.to_string())?;
        read_pattern_at(&path).map_err(|e| format!("device {id}{e}"))
    }

    fn hold_open(&mut self, id: ThinId) -> Result<(), String> {
        let path = self.pool.thin_device_path(id).map_err(|e| e.to_string())?;
        let f = File::open(&path).map_err(|e| format!("open {}: {e}", path.display()))?;
        self.held.insert(id, f);
        Ok(())
    }

    fn release(&mut self, id: ThinId) -> Result<(), String> {
        self.held.remove(&id).map(drop).ok_or_else(|| format!("device {id} was not held"))
    }

    fn raw_message(&mut self, text: &str) -> Result<(), KernelError> {
        self.pool.raw_message(text)
    }
}

impl Kernel for DmFixture {
    fn pool_status(&self) -> Result<PoolStatus, KernelError> {
        self.pool.pool_status()
    }
    fn message(&mut self, message: &PoolMessage) -> Result<(), KernelError> {
        self.pool.message(message)
    }
    fn active_thins(&self) -> Result<Vec<ActiveThin>, KernelError> {
        self.pool.active_thins()
    }
    fn active_thin(&self, id: ThinId) -> Result<Option<ActiveThin>, KernelError> {
        self.pool.active_thin(id)
    }
    fn suspend_thin(&mut self, id: ThinId) -> Result<(), KernelError> {
        self.pool.suspend_thin(id)
    }
    fn resume_thin(&mut self, id: ThinId) -> Result<(), KernelError> {
        self.pool.resume_thin(id)
    }
    fn activate_thin(&mut self, id: ThinId, size: Sectors) -> Result<(), KernelError> {
        self.pool.activate_thin(id, size)
    }
    fn deactivate_thin(&mut self, id: ThinId) -> Result<(), KernelError> {
        self.pool.deactivate_thin(id)
    }
}
