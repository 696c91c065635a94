//! The crash suite's disk half (e2e/run crash): a run of transactions on a
//! pool whose whole device sits on dm-log-writes, then every state a disk
//! that loses unflushed writes could have been left in, replayed and
//! checked.
//!
//! During the run, [`Journal`] keeps each version of the controller's
//! record (in a directory) and puts a mark `rec-<seq>` into the log right
//! after the version is stored. A mark enters the log behind every write
//! already durable and ahead of everything the node does next, so at any
//! replay point the record the controller held is the one of the last mark
//! before it.
//!
//! `replay-log` then replays the log up to every FLUSH/FUA entry (and the
//! end) onto a zeroed file, and at each point: puts a non-persistent
//! dm-snapshot over it (so the checks' own writes never reach the replay),
//! activates the pool from its header (no message), runs `recover` against
//! that record version, and checks that it converges (kernel at the last
//! assigned transaction, nothing pending, no device suspended, the pool's
//! devices those the record expects), that the newest snapshots hold the
//! data their origin held, and that thin_check passes after teardown.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::time::Instant;

use devicemapper::{DevId, DmName, DmOptions, DM};
use thinpool::engine::Outcome;
use thinpool::layout::Contents;
use thinpool::{recover, Kernel};
use thinpool_dm::DmPool;

use crate::logwrites;
use crate::record::Record;
use crate::{check_snapshot_data, kernel_txn, Args, Report};

/// Where each stored record version goes besides the record itself.
pub struct Journal {
    target: Option<(DM, String, PathBuf)>,
    seq: u64,
}

impl Journal {
    pub fn none() -> Journal {
        Journal { target: None, seq: 0 }
    }

    pub fn new(mark_device: &str, history: &Path) -> Result<Journal, String> {
        std::fs::create_dir_all(history).map_err(|e| format!("mkdir {}: {e}", history.display()))?;
        let dm = DM::new().map_err(|e| format!("device-mapper: {e}"))?;
        Ok(Journal { target: Some((dm, mark_device.to_string(), history.to_path_buf())), seq: 0 })
    }

    /// Stores the record, then keeps this version and marks the log.
    pub fn store(&mut self, record: &Record, path: &Path) -> Result<(), String> {
        record.store(path)?;
        if let Some((dm, device, dir)) = &self.target {
            self.seq += 1;
            std::fs::write(dir.join(self.seq.to_string()), record.text()).map_err(|e| format!("keep record version {}: {e}", self.seq))?;
            let name = DmName::new(device).map_err(|e| e.to_string())?;
            dm.target_msg(&DevId::Name(name), Some(0), &format!("mark rec-{}", self.seq))
                .map_err(|e| format!("mark the log of {device}: {e}"))?;
        }
        Ok(())
    }
}

/// The non-persistent snapshot the checks of one point write to.
struct Scratch<'a> {
    dm: &'a DM,
    name: &'static str,
    node: PathBuf,
}

impl<'a> Scratch<'a> {
    fn create(dm: &'a DM, origin: &Path, cow: &Path, sectors: u64) -> Result<Scratch<'a>, String> {
        let name = "crashreplay-scratch";
        let id = DmName::new(name).map_err(|e| e.to_string())?;
        dm.device_create(id, None, DmOptions::default()).map_err(|e| format!("create {name}: {e}"))?;
        // From here on, dropping `scratch` removes the device again.
        let mut scratch = Scratch { dm, name, node: PathBuf::from(format!("/tmp/{name}")) };
        let table = [(0, sectors, "snapshot".to_string(), format!("{} {} N 8", origin.display(), cow.display()))];
        dm.table_load(&DevId::Name(id), &table, DmOptions::default()).map_err(|e| format!("load {name}: {e}"))?;
        let info = dm.device_suspend(&DevId::Name(id), DmOptions::default()).map_err(|e| format!("resume {name}: {e}"))?;
        // Our own node: devtmpfs adds and removes /dev/dm-N asynchronously,
        // and minors are reused from one point to the next.
        let dev = info.device();
        let _ = std::fs::remove_file(&scratch.node);
        let path = std::ffi::CString::new(scratch.node.as_os_str().as_encoded_bytes()).map_err(|e| e.to_string())?;
        // SAFETY: plain syscall on a NUL-terminated path.
        let rc = unsafe { libc::mknod(path.as_ptr(), libc::S_IFBLK | 0o600, libc::makedev(dev.major, dev.minor)) };
        if rc != 0 {
            return Err(format!("mknod {}: {}", scratch.node.display(), std::io::Error::last_os_error()));
        }
        scratch.node = PathBuf::from(&scratch.node);
        Ok(scratch)
    }
}

impl Drop for Scratch<'_> {
    fn drop(&mut self) {
        if let Ok(id) = DmName::new(self.name) {
            if let Err(e) = self.dm.device_remove(&DevId::Name(id), DmOptions::default()) {
                println!("warning: removing {}: {e}", self.name);
            }
        }
    }
}

#[derive(Default)]
struct Counts {
    blank: usize,
    at_finished: usize,
    finished_by_recovery: usize,
    committed_unreported: usize,
    aborted: usize,
}

/// `replay-log --log DEV --history DIR --replay FILE --replay-device LOOP --cow DEV [--every N]`
/// FILE is the (zeroed, sparse) file the log is replayed into, LOOP a loop
/// device over it, DEV a scratch device for the snapshot's exceptions.
pub fn replay_log(args: &Args, tally: &mut Report) -> Result<(), String> {
    let log_path = args.path("log")?;
    let history = args.path("history")?;
    let replay_file = args.path("replay")?;
    let replay_dev = args.path("replay-device")?;
    let cow = args.path("cow")?;
    let started = Instant::now();
    let src = File::open(&log_path).map_err(|e| format!("open {}: {e}", log_path.display()))?;
    let log = logwrites::parse(&src).map_err(|e| format!("{}: {e}", log_path.display()));
    let log = match log {
        Ok(log) => log,
        Err(e) => {
            tally.result("replay: the log parses", Err(e));
            return Ok(());
        }
    };
    let points = log.points();
    let marks = log.entries.iter().filter(|e| e.mark.as_deref().is_some_and(|m| m.starts_with("rec-"))).count();
    let versions = std::fs::read_dir(&history).map_err(|e| format!("{}: {e}", history.display()))?.count();
    let writes = log.entries.iter().filter(|e| e.is_write()).count();
    let flushes = log.entries.iter().filter(|e| e.flags & logwrites::FLUSH != 0).count();
    let fuas = log.entries.iter().filter(|e| e.flags & logwrites::FUA != 0).count();
    println!(
        "replay: {} entries ({writes} writes, {flushes} flushes, {fuas} FUA, {marks} record marks), sector size {}, {} points",
        log.entries.len(),
        log.sector_size,
        points.len()
    );
    tally.result(
        "replay: the log parses and names every record version",
        if marks == versions && marks > 0 { Ok(()) } else { Err(format!("{marks} record marks in the log, {versions} versions kept")) },
    );
    // Only a subset, for a quick run: every Nth point and always the last.
    let every = args.num("every", 1)?.max(1) as usize;
    let chosen: Vec<usize> = points.iter().enumerate().filter(|(k, _)| k % every == 0 || *k == points.len() - 1).map(|(_, p)| *p).collect();
    // With --unflushed K, each point (but the last) is also checked K times
    // with a random half of the writes that completed after it but were not
    // yet flushed (those logged before the next point): a disk's volatile
    // cache may have written back any of them.
    let unflushed = args.num("unflushed", 0)? as usize;
    let next_point = |p: usize| points.iter().copied().find(|q| *q > p);
    let candidates_after = |p: usize| -> Vec<usize> {
        next_point(p).map_or_else(Vec::new, |q| (p + 1..=q).filter(|i| log.entries[*i].is_write() || log.entries[*i].flags & logwrites::DISCARD != 0).collect())
    };
    let variants = chosen.iter().filter(|p| !candidates_after(**p).is_empty()).count() * unflushed;
    println!("REPLAY POINTS {}", chosen.len() + variants);

    let dm = DM::new().map_err(|e| format!("device-mapper: {e}"))?;
    let sectors = thinpool_dm::device_size(&replay_dev).map_err(|e| format!("{}: {e}", replay_dev.display()))? / 512;
    let mut target = OpenOptions::new().write(true).open(&replay_file).map_err(|e| format!("open {}: {e}", replay_file.display()))?;
    let mut applied = 0usize; // entries [0, applied) are on the replay file
    let mut counts = Counts::default();
    let record_at = |mark: Option<&str>| match mark {
        None => Ok(Record { next_id: 1, ..Record::default() }),
        Some(m) => {
            let seq = &m["rec-".len()..];
            std::fs::read_to_string(history.join(seq)).map_err(|e| format!("record version {seq}: {e}")).and_then(|t| Record::parse(&t))
        }
    };
    let mut checked = 0usize;
    for (k, &point) in chosen.iter().enumerate() {
        while applied <= point {
            log.apply(applied, &src, &mut target).map_err(|e| format!("replay entry {applied}: {e}"))?;
            applied += 1;
        }
        let entry = &log.entries[point];
        let mark = log.last_mark_before(point + 1, "rec-");
        let name = format!("replay point {}/{} (entry {point}, {}, record {})", k + 1, chosen.len(), entry.kind(), mark.unwrap_or("none"));
        let result = record_at(mark).and_then(|record| {
            let scratch = Scratch::create(&dm, &replay_dev, &cow, sectors)?;
            check_point(&scratch.node, &record, &mut counts, point + 1 == log.entries.len())
        });
        checked += 1;
        tally.check(&name, result);
        let candidates = candidates_after(point);
        let Some(next) = next_point(point).filter(|_| !candidates.is_empty()) else { continue };
        // The record of any moment before the next flush completed.
        let mark = log.last_mark_before(next, "rec-");
        for v in 0..unflushed {
            let mut rng = (point as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ (v as u64 + 1);
            let mut pick = || {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                rng & 1 == 1
            };
            let kept: Vec<usize> = candidates.iter().copied().filter(|_| pick()).collect();
            let name = format!(
                "replay point {}/{} + unflushed variant {} ({} of the {} writes before entry {next}: {:?}, record {})",
                k + 1,
                chosen.len(),
                v + 1,
                kept.len(),
                candidates.len(),
                kept,
                mark.unwrap_or("none")
            );
            let result = record_at(mark).and_then(|record| {
                let scratch = Scratch::create(&dm, &replay_dev, &cow, sectors)?;
                {
                    let mut dev = OpenOptions::new().write(true).open(&scratch.node).map_err(|e| format!("open {}: {e}", scratch.node.display()))?;
                    for i in &kept {
                        log.apply(*i, &src, &mut dev).map_err(|e| format!("apply entry {i}: {e}"))?;
                    }
                    dev.sync_all().map_err(|e| format!("sync {}: {e}", scratch.node.display()))?;
                }
                check_point(&scratch.node, &record, &mut counts, false)
            });
            checked += 1;
            tally.check(&name, result);
        }
    }
    println!(
        "replay: {} states checked ({} points, {} with unflushed writes) in {:.1} s: {} before the pool existed, {} with the kernel at the record, {} finished by recovery, {} committed but unreported, {} aborted",
        checked,
        chosen.len(),
        checked - chosen.len(),
        started.elapsed().as_secs_f64(),
        counts.blank,
        counts.at_finished,
        counts.finished_by_recovery,
        counts.committed_unreported,
        counts.aborted
    );
    Ok(())
}

/// One replayed state on the scratch device: activate, recover against the
/// record of the time, check, tear down, thin_check.
fn check_point(device: &Path, record: &Record, counts: &mut Counts, last: bool) -> Result<String, String> {
    match thinpool_dm::probe(device).map_err(|e| e.to_string())? {
        Contents::Zeros => {
            // Only before the pool was laid out, when nothing was recorded.
            if record.pool.finished.get() == 0 && record.pool.pending.is_empty() && !last {
                counts.blank += 1;
                return Ok("no pool laid out yet, nothing recorded".into());
            }
            return Err(format!("the device is blank but the record says {:?}", record.pool));
        }
        Contents::Foreign(what) => return Err(format!("the device holds {what}")),
        Contents::Pool(_) => {}
    }
    let mut pool = DmPool::open_on_device(device).map_err(|e| format!("activate: {e}"))?;
    let result = check_open_pool(&mut pool, record, counts, last);
    for t in pool.active_thins().unwrap_or_default() {
        let _ = pool.resume_thin(t.id);
        let _ = pool.deactivate_thin(t.id);
    }
    let name = pool.name().clone();
    let area = pool.teardown().map_err(|e| format!("teardown: {e}"))?;
    let summary = result?;
    crate::thin_check(&area, &name).map_err(|e| format!("thin_check: {e}"))?;
    Ok(format!("{summary}; thin_check clean"))
}

fn check_open_pool(pool: &mut DmPool, record: &Record, counts: &mut Counts, last: bool) -> Result<String, String> {
    let before = kernel_txn(pool)?;
    let mut record = record.clone();
    let report = recover(pool, &record.pool, &mut ()).map_err(|e| format!("kernel at {before}: recovery: {e}"))?;
    let mut did = Vec::new();
    for n in &report.committed_unreported {
        record.committed(*n);
        counts.committed_unreported += 1;
        did.push(format!("{n} committed unreported"));
    }
    match report.finished {
        Some((n, Outcome::Committed(_))) => {
            record.committed(n);
            counts.finished_by_recovery += 1;
            did.push(format!("{n} finished"));
        }
        Some((n, Outcome::Aborted { reason, .. })) => {
            record.aborted(n);
            counts.aborted += 1;
            did.push(format!("{n} aborted ({reason})"));
        }
        None => {}
    }
    if did.is_empty() {
        counts.at_finished += 1;
    }
    if last && !did.is_empty() {
        return Err(format!("at the clean end of the log recovery still had work: {}", did.join(", ")));
    }
    let at = kernel_txn(pool)?;
    if at != record.pool.finished || !record.pool.pending.is_empty() {
        return Err(format!("kernel at {at} after recovery, record {:?}", record.pool));
    }
    let suspended: Vec<_> = pool.active_thins().map_err(|e| e.to_string())?.into_iter().filter(|t| t.suspended).collect();
    if !suspended.is_empty() {
        return Err(format!("left suspended: {suspended:?}"));
    }
    let devices = pool.list_thin_ids().map_err(|e| e.to_string())?;
    if devices != record.live {
        return Err(format!("pool has {devices:?}, record says {:?}", record.live));
    }
    let data = check_snapshot_data(pool, &record, 2)?;
    Ok(format!(
        "kernel at {before}, recovery: {}, now at {at} with {} devices as recorded, snapshot data {data}",
        if did.is_empty() { "nothing to do".to_string() } else { did.join(", ") },
        devices.len()
    ))
}
