//! Smoke test of thinpool-dm against the real kernel (run it in the test
//! VM: e2e/vm/boot). Needs root, dm-thin-pool, and loop devices:
//!
//!   dm_smoke /dev/loop0 [/dev/loop1 /dev/loop2 [/dev/loop3]]
//!
//! loop0: a zeroed device for a pool laid out by us; loop1 + loop2 (zeroed)
//! for an explicit metadata + data pair; loop3: a device holding an ext4
//! filesystem, which must be refused. Prints `PASS <check>` / `FAIL <check>`
//! lines, `STATUS <raw line>` and `TIME <what> ...` lines; exits with the
//! number of failures.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use devicemapper::{DevId, DmFlags, DmName, DmOptions, DM};
use thinpool::layout::Contents;
use thinpool::{
    Kernel, KernelError, PoolMessage, PoolName, PoolStatus, Sectors, ThinId, TransactionId,
};
use thinpool_dm::{find_pools, probe, DmError, DmPool};

const MIB: u64 = 1 << 20;
const THIN_SIZE: Sectors = Sectors(64 * MIB / 512);
const SNAPSHOT_ROUNDS: u32 = 20;

struct Report {
    failures: u32,
}

impl Report {
    fn check<T, E: std::fmt::Debug>(&mut self, name: &str, result: Result<T, E>) -> Option<T> {
        match result {
            Ok(v) => {
                println!("PASS {name}");
                Some(v)
            }
            Err(e) => {
                println!("FAIL {name}: {e:?}");
                self.failures += 1;
                None
            }
        }
    }

    fn expect(&mut self, name: &str, ok: bool, detail: impl std::fmt::Display) {
        if ok {
            println!("PASS {name}");
        } else {
            println!("FAIL {name}: {detail}");
            self.failures += 1;
        }
    }
}

fn t(n: u32) -> ThinId {
    ThinId::new(n.into()).expect("small ids are valid")
}

fn txn(n: u64) -> TransactionId {
    TransactionId::new(n)
}

fn ms(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64() * 1000.0)
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

/// `TIME <what> median .. min .. max .. ms (n=..)`, then the samples.
fn summary(what: &str, samples: &[Duration]) -> Duration {
    let mut sorted = samples.to_vec();
    let med = median(&mut sorted);
    let (min, max) = (
        sorted.first().copied().unwrap_or_default(),
        sorted.last().copied().unwrap_or_default(),
    );
    println!(
        "TIME {what} median {} ms, min {} ms, max {} ms (n={})",
        ms(med),
        ms(min),
        ms(max),
        samples.len()
    );
    println!(
        "SAMPLES {what} {}",
        samples.iter().map(|d| ms(*d)).collect::<Vec<_>>().join(" ")
    );
    med
}

/// The raw status line, as the kernel prints it (for the report).
fn raw_status(pool: &DmPool) -> String {
    let name = pool.names().pool();
    let run = || -> Result<String, devicemapper::DmError> {
        let dm = DM::new()?;
        let (_, lines) = dm.table_status(
            &DevId::Name(DmName::new(&name)?),
            DmOptions::default().set_flags(DmFlags::DM_NOFLUSH),
        )?;
        Ok(lines
            .iter()
            .map(|(s, l, t, p)| format!("{s} {l} {t} {}", p.trim_end()))
            .collect::<Vec<_>>()
            .join(" | "))
    };
    run().unwrap_or_else(|e| format!("(status unreadable: {e})"))
}

fn transaction_id(pool: &DmPool) -> Option<TransactionId> {
    pool.pool_status()
        .ok()
        .and_then(|s| s.working().map(|w| w.transaction_id))
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// Writes through the page cache and does not sync: the suspend before a
/// snapshot must flush it.
fn write_buffered(path: &Path, offset: u64, bytes: &[u8]) -> std::io::Result<()> {
    let f = OpenOptions::new().write(true).open(path)?;
    f.write_all_at(bytes, offset)
}

/// Reads from the disk, not the page cache.
fn read_direct(path: &Path, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)?;
    let mut storage = vec![0u8; len + 4096];
    let start = (4096 - storage.as_ptr() as usize % 4096) % 4096;
    f.read_exact_at(&mut storage[start..start + len], offset)?;
    Ok(storage[start..start + len].to_vec())
}

fn main() -> ExitCode {
    let args: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    let Some(device) = args.first().cloned() else {
        eprintln!("usage: dm_smoke DEVICE [META DATA [EXT4_DEVICE]]");
        return ExitCode::from(2);
    };
    // RUST_LOG=thinpool_dm=debug shows every device-mapper step.
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let mut r = Report { failures: 0 };
    one_device(&mut r, &device);
    if let [_, meta, data, rest @ ..] = args.as_slice() {
        pair(&mut r, meta, data);
        if let [ext4] = rest {
            refusals(&mut r, ext4, &device);
        }
    }
    println!("RESULT {} failures", r.failures);
    ExitCode::from(r.failures.min(255) as u8)
}

fn one_device(r: &mut Report, device: &Path) {
    r.check(
        "probe a zeroed device",
        probe(device).map(|c| c == Contents::Zeros).and_then(|z| {
            if z {
                Ok(())
            } else {
                Err(DmError::NotEmpty {
                    device: device.into(),
                    found: "not zeros".into(),
                })
            }
        }),
    );

    let name = PoolName::new("smoke").expect("valid name");
    let started = Instant::now();
    let Some(mut pool) = r.check(
        "create_on_device",
        DmPool::create_on_device(device, &name, [0x5a; 16], Sectors(128)),
    ) else {
        return;
    };
    println!("TIME create_on_device {} ms", ms(started.elapsed()));
    println!("INFO pool {:?}", pool);
    println!("STATUS fresh: {}", raw_status(&pool));
    r.expect(
        "fresh pool at transaction 0",
        transaction_id(&pool) == Some(TransactionId::ZERO),
        format!("{:?}", pool.pool_status()),
    );

    // A thin device, committed as transaction 1.
    let started = Instant::now();
    r.check(
        "message create_thin 1",
        pool.message(&PoolMessage::CreateThin { id: t(1) }),
    );
    let create = started.elapsed();
    r.check(
        "message set_transaction_id 0 1",
        pool.message(&PoolMessage::SetTransactionId {
            current: txn(0),
            new: txn(1),
        }),
    );
    println!("TIME message create_thin {} ms", ms(create));
    r.expect(
        "pool at transaction 1",
        transaction_id(&pool) == Some(txn(1)),
        format!("{:?}", pool.pool_status()),
    );

    // Errors the engine relies on.
    let e = pool.message(&PoolMessage::CreateThin { id: t(1) });
    r.expect(
        "create_thin of an existing id is AlreadyExists (EEXIST)",
        matches!(e, Err(KernelError::AlreadyExists(_))),
        format!("{e:?}"),
    );
    let e = pool.message(&PoolMessage::Delete { id: t(999) });
    r.expect(
        "delete of a missing id is NoData (ENODATA)",
        matches!(e, Err(KernelError::NoData(_))),
        format!("{e:?}"),
    );
    let e = pool.message(&PoolMessage::SetTransactionId {
        current: txn(7),
        new: txn(8),
    });
    r.expect(
        "set_transaction_id with a wrong current is Invalid (EINVAL)",
        matches!(e, Err(KernelError::Invalid(_))),
        format!("{e:?}"),
    );
    let e = pool.message(&PoolMessage::CreateSnap {
        id: t(998),
        origin: t(999),
    });
    r.expect(
        "create_snap of a missing origin is NoData (ENODATA)",
        matches!(e, Err(KernelError::NoData(_))),
        format!("{e:?}"),
    );
    let e = pool.activate_thin(t(999), THIN_SIZE);
    r.expect(
        "activating a missing id is NoData (ENODATA)",
        matches!(e, Err(KernelError::NoData(_))),
        format!("{e:?}"),
    );
    r.expect(
        "a failed activation leaves no device",
        pool.active_thins().map(|a| a.is_empty()).unwrap_or(false),
        format!("{:?}", pool.active_thins()),
    );
    let e = pool.suspend_thin(t(1));
    r.expect(
        "suspend of an inactive thin is NotActive",
        matches!(e, Err(KernelError::NotActive(_))),
        format!("{e:?}"),
    );

    // Activate and do I/O.
    let started = Instant::now();
    r.check("activate thin 1", pool.activate_thin(t(1), THIN_SIZE));
    println!("TIME activate_thin {} ms", ms(started.elapsed()));
    let e = pool.activate_thin(t(1), THIN_SIZE);
    r.expect(
        "activating twice is AlreadyActive",
        matches!(e, Err(KernelError::AlreadyActive(_))),
        format!("{e:?}"),
    );
    let Some(path) = r.check("thin_device_path 1", pool.thin_device_path(t(1))) else {
        return;
    };
    println!("INFO thin 1 at {}", path.display());
    let a = pattern(1, MIB as usize);
    r.check(
        "write thin 1",
        OpenOptions::new().write(true).open(&path).and_then(|f| {
            f.write_all_at(&a, 0)
                .and_then(|_| f.write_all_at(&a, 32 * MIB))
                .and_then(|_| f.sync_all())
        }),
    );
    r.expect(
        "read back thin 1",
        read_direct(&path, 32 * MIB, MIB as usize)
            .map(|b| b == a)
            .unwrap_or(false),
        "data differs",
    );
    let listed = pool.active_thins();
    r.expect(
        "active_thins reports thin 1",
        matches!(listed.as_deref(), Ok([x]) if x.id == t(1) && x.size == THIN_SIZE && !x.suspended && x.open_count == 0),
        format!("{listed:?}"),
    );
    let e = pool.message(&PoolMessage::Delete { id: t(1) });
    r.expect(
        "delete of an active thin is Busy (EBUSY)",
        matches!(e, Err(KernelError::Busy(_))),
        format!("{e:?}"),
    );
    {
        let _held = File::open(&path);
        let listed = pool.active_thins();
        r.expect(
            "active_thins counts an opener",
            matches!(listed.as_deref(), Ok([x]) if x.open_count == 1),
            format!("{listed:?}"),
        );
        let e = pool.deactivate_thin(t(1));
        r.expect(
            "deactivate of an open thin is Busy",
            matches!(e, Err(KernelError::Busy(_))),
            format!("{e:?}"),
        );
    }

    // Suspend / resume on their own.
    let (mut sus, mut res) = (Vec::new(), Vec::new());
    for _ in 0..SNAPSHOT_ROUNDS {
        let s = Instant::now();
        if let Err(e) = pool.suspend_thin(t(1)) {
            r.check::<(), _>("suspend thin 1", Err(e));
            break;
        }
        sus.push(s.elapsed());
        let suspended = pool
            .active_thins()
            .map(|a| a.first().is_some_and(|x| x.suspended))
            .unwrap_or(false);
        let s = Instant::now();
        if let Err(e) = pool.resume_thin(t(1)) {
            r.check::<(), _>("resume thin 1", Err(e));
            break;
        }
        res.push(s.elapsed());
        if !suspended {
            r.expect("active_thins shows the suspension", false, "not suspended");
            break;
        }
    }
    if sus.len() == SNAPSHOT_ROUNDS as usize {
        println!("PASS suspend/resume thin 1 x{SNAPSHOT_ROUNDS}");
        summary("suspend (flush+freeze) of an idle thin", &sus);
        summary("resume of a thin", &res);
    }
    // Suspend right after a resume vs after 20 ms idle: under emulation an
    // idle vCPU is slow to wake, which shows up in suspend's cross-CPU waits.
    {
        let mut back_to_back = Vec::new();
        let mut after_idle = Vec::new();
        for _ in 0..SNAPSHOT_ROUNDS {
            let s = Instant::now();
            let _ = pool.suspend_thin(t(1));
            back_to_back.push(s.elapsed());
            let _ = pool.resume_thin(t(1));
        }
        for _ in 0..SNAPSHOT_ROUNDS {
            std::thread::sleep(Duration::from_millis(20));
            let s = Instant::now();
            let _ = pool.suspend_thin(t(1));
            after_idle.push(s.elapsed());
            let _ = pool.resume_thin(t(1));
        }
        summary("suspend back-to-back", &back_to_back);
        summary("suspend after 20 ms idle", &after_idle);
    }

    // Unsynced writes must reach the snapshot: suspend flushes them.
    let b = pattern(2, MIB as usize);
    r.check(
        "buffered write to thin 1, no fsync",
        write_buffered(&path, 0, &b),
    );

    // Snapshots: suspend origin → create_snap → set_transaction_id → resume.
    let (mut s_sus, mut s_snap, mut s_txn, mut s_res, mut s_all) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut ok = true;
    for i in 0..SNAPSHOT_ROUNDS {
        let snap = t(2 + i);
        let n = 2 + u64::from(i);
        let t0 = Instant::now();
        let step = (|| -> Result<[Duration; 3], KernelError> {
            pool.suspend_thin(t(1))?;
            let t1 = Instant::now();
            let posted = pool
                .message(&PoolMessage::CreateSnap {
                    id: snap,
                    origin: t(1),
                })
                .map(|_| Instant::now())
                .and_then(|t2| {
                    pool.message(&PoolMessage::SetTransactionId {
                        current: txn(n - 1),
                        new: txn(n),
                    })
                    .map(|_| (t2, Instant::now()))
                });
            // Resume on every path.
            let resumed = pool.resume_thin(t(1));
            let (t2, t3) = posted?;
            resumed?;
            Ok([t1 - t0, t2 - t1, t3 - t2])
        })();
        match step {
            Ok([a, b2, c]) => {
                let total = t0.elapsed();
                s_sus.push(a);
                s_snap.push(b2);
                s_txn.push(c);
                s_res.push(total - a - b2 - c);
                s_all.push(total);
            }
            Err(e) => {
                r.check::<(), _>(&format!("snapshot {snap}"), Err(e));
                ok = false;
                break;
            }
        }
    }
    if ok {
        println!(
            "PASS snapshot x{SNAPSHOT_ROUNDS} (suspend, create_snap, set_transaction_id, resume)"
        );
        let total = summary("snapshot sequence (suspend, create_snap, set_transaction_id, resume), in-process ioctls", &s_all);
        summary("  step suspend", &s_sus);
        summary("  step message create_snap", &s_snap);
        summary("  step message set_transaction_id", &s_txn);
        summary("  step resume", &s_res);
        compare_with_dmsetup(
            r,
            &pool,
            2 + SNAPSHOT_ROUNDS,
            1 + u64::from(SNAPSHOT_ROUNDS),
            total,
        );
    }
    let last = transaction_id(&pool).unwrap_or_default();
    r.expect(
        "pool at the last snapshot's transaction",
        last == txn(1 + u64::from(SNAPSHOT_ROUNDS))
            || last == txn(1 + 2 * u64::from(SNAPSHOT_ROUNDS)),
        format!("{last}"),
    );
    println!("STATUS after snapshots: {}", raw_status(&pool));

    // The first snapshot holds the unsynced write; later origin writes don't reach it.
    r.check("activate snapshot 2", pool.activate_thin(t(2), THIN_SIZE));
    let c = pattern(3, MIB as usize);
    r.check(
        "write thin 1 after the snapshots",
        OpenOptions::new()
            .write(true)
            .open(&path)
            .and_then(|f| f.write_all_at(&c, 0).and_then(|_| f.sync_all())),
    );
    if let Some(snap_path) = r.check("thin_device_path 2", pool.thin_device_path(t(2))) {
        r.expect(
            "snapshot holds the write made before it, unsynced",
            read_direct(&snap_path, 0, MIB as usize)
                .map(|x| x == b)
                .unwrap_or(false),
            "data differs",
        );
        r.expect(
            "snapshot holds the origin's older data",
            read_direct(&snap_path, 32 * MIB, MIB as usize)
                .map(|x| x == a)
                .unwrap_or(false),
            "data differs",
        );
    }
    r.expect(
        "origin holds its new data",
        read_direct(&path, 0, MIB as usize)
            .map(|x| x == c)
            .unwrap_or(false),
        "data differs",
    );

    // Delete a snapshot (deactivate first) as transaction last+1.
    r.check("deactivate snapshot 2", pool.deactivate_thin(t(2)));
    let started = Instant::now();
    r.check(
        "message delete 2",
        pool.message(&PoolMessage::Delete { id: t(2) }),
    );
    println!("TIME message delete {} ms", ms(started.elapsed()));
    r.check(
        "set_transaction_id after delete",
        pool.message(&PoolMessage::SetTransactionId {
            current: last,
            new: last.successor(),
        }),
    );
    let last = last.successor();
    let status = pool.pool_status();
    r.expect("pool status parses, rw, no needs_check", matches!(&status, Ok(PoolStatus::Working(w)) if w.transaction_id == last && !w.needs_check && w.error_if_no_space), format!("{status:?}"));
    println!("STATUS before teardown: {}", raw_status(&pool));

    // Refusals while the pool is live.
    let e = DmPool::create_on_device(
        device,
        &PoolName::new("other").expect("valid"),
        [1; 16],
        Sectors(128),
    );
    r.expect(
        "create_on_device refuses a device holding our pool",
        matches!(&e, Err(DmError::NotEmpty { found, .. }) if found.contains("smoke")),
        format!("{e:?}"),
    );
    if let Err(e) = &e {
        println!("INFO refusal reads: {e}");
    }
    let adopted = DmPool::open_on_device(device);
    r.expect(
        "open_on_device adopts the active pool",
        matches!(&adopted, Ok(p) if p.pool_device() == pool.pool_device()),
        format!("{adopted:?}"),
    );
    drop(adopted);

    // Teardown: refused while a thin is open, then done.
    let held = File::open(&path);
    let pool = match pool.teardown() {
        Err(DmError::ThinOpen { id, .. }) if id == t(1) => {
            println!("PASS teardown refuses an open thin");
            drop(held);
            match DmPool::open_on_device(device) {
                Ok(p) => p,
                Err(e) => {
                    r.check::<(), _>("reopen after a refused teardown", Err(e));
                    return;
                }
            }
        }
        other => {
            r.expect("teardown refuses an open thin", false, format!("{other:?}"));
            return;
        }
    };
    let started = Instant::now();
    let Some(area) = r.check("teardown", pool.teardown()) else {
        return;
    };
    println!("TIME teardown {} ms", ms(started.elapsed()));
    println!("INFO metadata area {area:?}");
    r.expect(
        "no dm devices left after teardown",
        DM::new()
            .and_then(|dm| dm.list_devices())
            .map(|l| l.is_empty())
            .unwrap_or(false),
        "devices remain",
    );
    if let Some(exposed) = r.check("expose metadata", area.expose(&name)) {
        run_thin_check(r, exposed.path());
        r.check("close exposed metadata", exposed.close());
    }

    // Find it again by its header, as after a reboot.
    let found = find_pools(&[device.to_path_buf(), PathBuf::from("/dev/nonexistent")]);
    r.expect(
        "find_pools finds the pool by header",
        matches!(found.as_slice(), [(p, h)] if p == device && h.name == name),
        format!("{found:?}"),
    );
    let started = Instant::now();
    let Some(mut pool) = r.check("open_on_device", DmPool::open_on_device(device)) else {
        return;
    };
    println!("TIME open_on_device {} ms", ms(started.elapsed()));
    r.expect(
        "reopened pool kept its transaction id",
        transaction_id(&pool) == Some(last),
        format!("{:?}", pool.pool_status()),
    );
    r.expect(
        "reopened pool has no active thins",
        pool.active_thins().map(|a| a.is_empty()).unwrap_or(false),
        format!("{:?}", pool.active_thins()),
    );
    r.check("activate thin 1 again", pool.activate_thin(t(1), THIN_SIZE));
    if let Some(p) = r.check("thin_device_path 1 again", pool.thin_device_path(t(1))) {
        r.expect(
            "thin 1 kept its data across teardown",
            read_direct(&p, 0, MIB as usize)
                .map(|x| x == c)
                .unwrap_or(false),
            "data differs",
        );
    }
    let e = pool.message(&PoolMessage::CreateThin { id: t(2) });
    r.expect("deleted id 2 is free again", e.is_ok(), format!("{e:?}"));
    r.check("deactivate thin 1", pool.deactivate_thin(t(1)));
    r.check("final teardown", pool.teardown().map(|_| ()));
}

fn run_thin_check(r: &mut Report, metadata: &Path) {
    let out = std::process::Command::new("thin_check")
        .arg(metadata)
        .output();
    match out {
        Ok(o) => r.expect(
            "thin_check on the torn-down metadata",
            o.status.success(),
            format!(
                "{} {}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ),
        ),
        Err(e) => println!("SKIP thin_check: {e}"),
    }
}

fn pair(r: &mut Report, meta: &Path, data: &Path) {
    let name = PoolName::new("pair").expect("valid");
    let e = DmPool::adopt(&name, meta, meta, Sectors(128));
    r.expect(
        "adopt refuses the same device twice",
        matches!(e, Err(DmError::SameDevice(_))),
        format!("{e:?}"),
    );
    let Some(mut pool) = r.check(
        "adopt a zeroed metadata device (kernel formats it)",
        DmPool::adopt(&name, meta, data, Sectors(256)),
    ) else {
        return;
    };
    println!("STATUS pair fresh: {}", raw_status(&pool));
    r.check(
        "pair: create_thin 5",
        pool.message(&PoolMessage::CreateThin { id: t(5) }),
    );
    r.check(
        "pair: set_transaction_id 0 1",
        pool.message(&PoolMessage::SetTransactionId {
            current: txn(0),
            new: txn(1),
        }),
    );
    let Some(area) = r.check("pair: teardown", pool.teardown()) else {
        return;
    };
    r.expect(
        "pair: metadata area is the whole device",
        area.device == meta && area.start == Sectors(0),
        format!("{area:?}"),
    );
    run_thin_check(r, &area.device);
    let e = DmPool::adopt(&name, meta, data, Sectors(128));
    r.expect(
        "adopt refuses a block size other than the metadata's",
        matches!(
            e,
            Err(DmError::BlockSizeMismatch {
                found: Sectors(256),
                ..
            })
        ),
        format!("{e:?}"),
    );
    let Some(pool) = r.check(
        "adopt existing metadata",
        DmPool::adopt(&name, meta, data, Sectors(256)),
    ) else {
        return;
    };
    r.expect(
        "pair: transaction id survived",
        transaction_id(&pool) == Some(txn(1)),
        format!("{:?}", pool.pool_status()),
    );
    r.check("pair: final teardown", pool.teardown().map(|_| ()));
}

fn refusals(r: &mut Report, ext4: &Path, pool_device: &Path) {
    let e = DmPool::create_on_device(
        ext4,
        &PoolName::new("nope").expect("valid"),
        [2; 16],
        Sectors(128),
    );
    r.expect(
        "create_on_device refuses an ext4 device, naming it",
        matches!(&e, Err(DmError::NotEmpty { found, .. }) if found.contains("ext")),
        format!("{e:?}"),
    );
    if let Err(e) = &e {
        println!("INFO refusal reads: {e}");
    }
    let e = DmPool::open_on_device(ext4);
    r.expect(
        "open_on_device refuses a device without our header",
        matches!(e, Err(DmError::NoPoolHeader { .. })),
        format!("{e:?}"),
    );
    let e = DmPool::adopt(
        &PoolName::new("nope").expect("valid"),
        ext4,
        pool_device,
        Sectors(128),
    );
    r.expect(
        "adopt refuses an ext4 metadata device",
        matches!(e, Err(DmError::NotMetadata { .. })),
        format!("{e:?}"),
    );
}

/// The same four steps as separate `dmsetup` processes (how a shell or
/// lvm-less script would do it), on the same pool in the same VM run: the
/// ratio is what matters, absolute numbers move with the host's load.
fn compare_with_dmsetup(
    r: &mut Report,
    pool: &DmPool,
    first_id: u32,
    current: u64,
    ioctl_median: Duration,
) {
    let origin = pool.names().thin(t(1));
    let pool_name = pool.names().pool();
    let run = |args: &[&str]| -> Result<(), String> {
        let out = std::process::Command::new("dmsetup")
            .args(args)
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    };
    if run(&["version"]).is_err() {
        println!("SKIP dmsetup comparison: no dmsetup");
        return;
    }
    let mut samples = Vec::new();
    for i in 0..SNAPSHOT_ROUNDS {
        let (id, n) = (first_id + i, current + u64::from(i));
        let started = Instant::now();
        let step = run(&["suspend", &origin])
            .and_then(|_| run(&["message", &pool_name, "0", &format!("create_snap {id} 1")]))
            .and_then(|_| {
                run(&[
                    "message",
                    &pool_name,
                    "0",
                    &format!("set_transaction_id {n} {}", n + 1),
                ])
            });
        let resumed = run(&["resume", &origin]);
        if let Err(e) = step.and(resumed) {
            r.expect("dmsetup snapshot sequence", false, e);
            return;
        }
        samples.push(started.elapsed());
    }
    let med = summary("snapshot sequence as 4 dmsetup processes", &samples);
    println!(
        "RATIO dmsetup / in-process ioctls = {:.1}",
        med.as_secs_f64() / ioctl_median.as_secs_f64().max(1e-9)
    );
}
