//! thin-vmtest: runs inside the qemu VM against the real thin-pool target.
//! Each subcommand prints `PASS <name>` / `FAIL <name>: <why>` lines that
//! the host-side suite counts (e2e/run engine), or `BENCH ...` lines.

mod bench;
mod crash;
mod demo;
mod faulty;
mod fixture;
mod logwrites;
mod record;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use thinpool::cases::{self, Fixture, Session};
use thinpool::engine::Outcome;
use thinpool::{commit, recover, Boundary, CommitError, Kernel, Operation, PoolName, Sectors, ThinId, Transaction, TransactionId};
use report::Report;
use thinpool_dm::DmPool;

use fixture::DmFixture;
use crash::Journal;
use record::Record;

const THIN_SIZE: Sectors = Sectors(2048 * 16);

struct Args(BTreeMap<String, String>);

impl Args {
    fn parse(raw: &[String]) -> Result<Args, String> {
        let mut map = BTreeMap::new();
        let mut it = raw.iter();
        while let Some(key) = it.next() {
            let key = key.strip_prefix("--").ok_or_else(|| format!("expected --option, got {key:?}"))?;
            let value = it.next().ok_or_else(|| format!("--{key} needs a value"))?;
            map.insert(key.to_string(), value.clone());
        }
        Ok(Args(map))
    }
    fn get(&self, key: &str) -> Result<&str, String> {
        self.0.get(key).map(String::as_str).ok_or_else(|| format!("--{key} is required"))
    }
    fn path(&self, key: &str) -> Result<PathBuf, String> {
        self.get(key).map(PathBuf::from)
    }
    fn num(&self, key: &str, default: u64) -> Result<u64, String> {
        self.0.get(key).map_or(Ok(default), |v| v.parse().map_err(|_| format!("--{key} {v:?} is not a number")))
    }
}


fn pool_name() -> PoolName {
    PoolName::new("vmtest").expect("valid name")
}

fn uuid() -> [u8; 16] {
    let mut u = [0u8; 16];
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
    u[..16].copy_from_slice(&t.to_le_bytes());
    u[15] ^= std::process::id() as u8;
    u
}

/// Opens the pool on `device`, laying it out first if the device is blank.
fn open_or_create(device: &Path) -> Result<DmPool, String> {
    match thinpool_dm::probe(device).map_err(|e| e.to_string())? {
        thinpool::layout::Contents::Zeros => DmPool::create_on_device(device, &pool_name(), uuid(), Sectors(128)).map_err(|e| e.to_string()),
        thinpool::layout::Contents::Pool(_) => DmPool::open_on_device(device).map_err(|e| e.to_string()),
        thinpool::layout::Contents::Foreign(what) => Err(format!("{} holds {what}", device.display())),
    }
}

fn kernel_txn(pool: &impl Kernel) -> Result<TransactionId, String> {
    Ok(pool.pool_status().map_err(|e| e.to_string())?.working().ok_or("pool failed")?.transaction_id)
}

fn run_cases(pool: DmPool, tally: &mut Report) -> Result<DmPool, String> {
    let mut session = Session::new(DmFixture::new(pool), 1)?;
    session.size = THIN_SIZE;
    for (name, case) in cases::all::<DmFixture>() {
        let result = case(&mut session);
        tally.result(name, result);
        // Leave nothing active between cases, whatever happened.
        for t in session.kernel.active_thins().unwrap_or_default() {
            let _ = session.kernel.resume_thin(t.id);
            let _ = session.kernel.deactivate_thin(t.id);
        }
    }
    Ok(session.kernel.pool)
}

/// Tears the pool down and runs thin_check on its metadata.
fn teardown_and_check(pool: DmPool, tally: &mut Report) {
    let name = pool.name().clone();
    match pool.teardown() {
        Err(e) => {
            tally.result("teardown", Err(e.to_string()));
        }
        Ok(area) => {
            tally.result("teardown", Ok(()));
            tally.result("thin_check clean after teardown", thin_check(&area, &name));
        }
    }
}

fn thin_check(area: &thinpool_dm::MetadataArea, pool: &PoolName) -> Result<(), String> {
    let exposed = area.expose(pool).map_err(|e| e.to_string())?;
    let result = run("thin_check", &[exposed.path().to_str().unwrap()]);
    exposed.close().map_err(|e| e.to_string())?;
    result
}

fn run(cmd: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new(cmd).args(args).output().map_err(|e| format!("{cmd}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("{cmd} {args:?} failed: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
    }
}

fn cmd_cases(args: &Args, tally: &mut Report) -> Result<(), String> {
    let pool = match args.0.get("device") {
        Some(device) => {
            let device = Path::new(device);
            let pool = DmPool::create_on_device(device, &pool_name(), uuid(), Sectors(128)).map_err(|e| e.to_string())?;
            tally.result("pool laid out on one device", Ok(()));
            pool
        }
        None => DmPool::adopt(&pool_name(), &args.path("meta")?, &args.path("data")?, Sectors(128)).map_err(|e| e.to_string())?,
    };
    let pool = run_cases(pool, tally)?;
    let txn_before = kernel_txn(&pool)?;
    teardown_and_check(pool, tally);
    if let Some(device) = args.0.get("device") {
        let device = Path::new(device);
        let found = thinpool_dm::find_pools(&[device.to_path_buf()]);
        tally.result("pool found again by its header", if found.len() == 1 { Ok(()) } else { Err(format!("found {found:?}")) });
        let mut pool = DmPool::open_on_device(device).map_err(|e| e.to_string())?;
        let txn = kernel_txn(&pool)?;
        tally.result(
            "reopening sends no message: same transaction id",
            if txn == txn_before && txn.get() > 0 { Ok(()) } else { Err(format!("{txn_before} before, {txn} after")) },
        );
        // An existing thin device activates again, with its data.
        let mut fixture = DmFixture::new(pool);
        let id = ThinId::new(1_000).expect("small id");
        let n = txn.successor();
        let result = (|| {
            commit(&mut fixture, &Transaction::new(n, vec![Operation::CreateThin { id }]).map_err(|e| e.to_string())?, &mut ()).map_err(|e| e.to_string())?;
            fixture.activate_thin(id, THIN_SIZE).map_err(|e| e.to_string())?;
            fixture.write_pattern(id, 77)?;
            fixture.deactivate_thin(id).map_err(|e| e.to_string())?;
            fixture.activate_thin(id, THIN_SIZE).map_err(|e| e.to_string())?;
            let seed = fixture.read_pattern(id)?;
            fixture.deactivate_thin(id).map_err(|e| e.to_string())?;
            if seed == 77 { Ok(()) } else { Err(format!("read pattern {seed} after reactivation")) }
        })();
        tally.result("thin device reactivates with its data after reopen", result);
        pool = fixture.pool;
        tally.result("teardown after reopen", pool.teardown().map(drop).map_err(|e| e.to_string()));
    }
    Ok(())
}

/// Defect 6 on the real kernel: `set_transaction_id` failing once, before
/// and after it reached the kernel (a test-only wrapper over the real pool).
fn cmd_commit_point(args: &Args, tally: &mut Report) -> Result<(), String> {
    let pool = DmPool::create_on_device(&args.path("device")?, &pool_name(), uuid(), Sectors(128)).map_err(|e| e.to_string())?;
    let mut session = Session::new(faulty::FlakyCommitPoint::new(DmFixture::new(pool)), 1)?;
    session.size = THIN_SIZE;
    for (name, case) in cases::commit_point_cases::<faulty::FlakyCommitPoint<DmFixture>>() {
        let result = case(&mut session);
        tally.result(name, result);
        for t in session.kernel.active_thins().unwrap_or_default() {
            let _ = session.kernel.resume_thin(t.id);
            let _ = session.kernel.deactivate_thin(t.id);
        }
    }
    teardown_and_check(session.kernel.inner.pool, tally);
    Ok(())
}

/// The pool status line's fields that matter here, for the log.
fn describe_status(pool: &impl Kernel) -> String {
    match pool.pool_status() {
        Ok(thinpool::PoolStatus::Working(w)) => format!(
            "transaction {}, metadata {}/{} blocks, data {}/{}, mode {:?}, needs_check {}",
            w.transaction_id, w.metadata.used, w.metadata.total, w.data.used, w.data.total, w.mode, w.needs_check
        ),
        Ok(thinpool::PoolStatus::Failed) => "failed".into(),
        Err(e) => format!("status unreadable: {e}"),
    }
}

/// Defect 7 on the real kernel: a pool on a tiny metadata device driven until
/// its metadata runs out (the shared case), then torn down, checked and
/// reopened: what the kernel leaves behind.
fn cmd_exhaust(args: &Args, tally: &mut Report) -> Result<(), String> {
    let (meta, data) = (args.path("meta")?, args.path("data")?);
    let pool = DmPool::adopt(&pool_name(), &meta, &data, Sectors(128)).map_err(|e| e.to_string())?;
    println!("--- exhaustion pool at start: {}", describe_status(&pool));
    let mut session = Session::new(DmFixture::new(pool), 1)?;
    session.size = THIN_SIZE;
    let result = cases::metadata_exhaustion_leaves_the_pool_read_only(&mut session);
    println!("--- exhaustion pool at the end: {}", describe_status(&session.kernel));
    match &result {
        Ok(out) => println!(
            "--- ran out: {}; committed up to transaction {}, {} snapshots; still open: {:?}",
            out.stop,
            out.record.finished,
            out.seeds.len(),
            out.record.pending.iter().map(|t| t.id().get()).collect::<Vec<_>>()
        ),
        Err(_) => {}
    }
    tally.result("metadata exhaustion leaves the pool read-only, the transaction open, devices and data intact", result.map(drop));
    for t in session.kernel.active_thins().unwrap_or_default() {
        let _ = session.kernel.resume_thin(t.id);
        let _ = session.kernel.deactivate_thin(t.id);
    }
    let pool = session.kernel.pool;
    tally.result("exhausted pool: teardown", pool.teardown().map(drop).map_err(|e| e.to_string()));
    // Measured: the abort rolled the metadata back to its last commit, so
    // thin_check finds it consistent; only the needs_check flag is left.
    tally.result("exhausted pool: thin_check clean after teardown", run("thin_check", &[meta.to_str().unwrap()]));
    let ro = |pool: &DmPool, want_ro: bool| match pool.pool_status() {
        Ok(thinpool::PoolStatus::Working(w)) if want_ro == (w.mode == thinpool::PoolMode::ReadOnly && w.needs_check) => Ok(()),
        other => Err(format!("expected {}, got {other:?}", if want_ro { "read-only with needs_check" } else { "writable without needs_check" })),
    };
    let reopened = DmPool::adopt(&pool_name(), &meta, &data, Sectors(128)).map_err(|e| e.to_string())?;
    println!("--- reopened: {}", describe_status(&reopened));
    tally.result("exhausted pool reopened stays read-only (needs_check) until repaired", ro(&reopened, true));
    reopened.teardown().map_err(|e| e.to_string())?;
    // The repair for metadata thin_check finds clean: clear the flag.
    run("thin_check", &["--clear-needs-check-flag", meta.to_str().unwrap()])?;
    let repaired = DmPool::adopt(&pool_name(), &meta, &data, Sectors(128)).map_err(|e| e.to_string())?;
    println!("--- after thin_check --clear-needs-check-flag: {}", describe_status(&repaired));
    tally.result("exhausted pool writable again after thin_check --clear-needs-check-flag", ro(&repaired, false));
    tally.result("exhausted pool: teardown after repair", repaired.teardown().map(drop).map_err(|e| e.to_string()));
    Ok(())
}

/// Zeroes a whole (small) device: a fresh pool's metadata.
fn zero_device(path: &Path) -> Result<(), String> {
    use std::io::{Seek, SeekFrom, Write};
    let mut f = std::fs::OpenOptions::new().write(true).open(path).map_err(|e| format!("open {}: {e}", path.display()))?;
    let len = f.seek(SeekFrom::End(0)).and_then(|len| f.seek(SeekFrom::Start(0)).map(|_| len)).map_err(|e| e.to_string())?;
    f.write_all(&vec![0u8; len as usize]).and_then(|()| f.sync_all()).map_err(|e| format!("zero {}: {e}", path.display()))
}

/// Metadata exhausted by I/O in the middle of a transaction: `k` blocks
/// written to an active thin device between the last operation and
/// `set_transaction_id` (on a fresh pool per attempt), so the commit point's
/// own metadata commit, or the I/O before it, runs out. The check: reported
/// committed only if the metadata holds `n`, read from the pool reopened
/// after teardown (the live status line is not enough: measured, after the
/// kernel aborts a metadata transaction it keeps reporting the rolled-back
/// transaction id until the pool is reloaded). Measured (64 KiB metadata): 0
/// blocks commit; 1 block: `set_transaction_id` acknowledged, its commit runs
/// out and is rolled back (metadata at n-1, status still n, read-only with
/// needs_check); 2 or more: the write fails (EIO) and the pool is read-only
/// before `set_transaction_id` (EOPNOTSUPP).
fn cmd_commit_rollback(args: &Args, tally: &mut Report) -> Result<(), String> {
    use std::os::unix::fs::{FileExt, OpenOptionsExt};
    let (meta, data) = (args.path("meta")?, args.path("data")?);
    let step = args.num("step", 1)? as usize;
    let min = args.num("min", 0)? as usize;
    let max = args.num("max", 3)? as usize;
    let big = Sectors(4096 * 128);
    let (one, two_id) = (TransactionId::new(1), TransactionId::new(2));
    let mut rolled_back = 0;
    for k in (min..=max).step_by(step.max(1)) {
        zero_device(&meta)?;
        let pool = DmPool::adopt(&pool_name(), &meta, &data, Sectors(128)).map_err(|e| e.to_string())?;
        let mut kp = faulty::FlakyCommitPoint::new(DmFixture::new(pool));
        let (a, b) = (ThinId::new(1).unwrap(), ThinId::new(2).unwrap());
        commit(&mut kp, &Transaction::new(one, vec![Operation::CreateThin { id: a }]).unwrap(), &mut ()).map_err(|e| e.to_string())?;
        kp.activate_thin(a, big).map_err(|e| e.to_string())?;
        let path = kp.inner.pool.thin_device_path(a).map_err(|e| e.to_string())?;
        let f = std::fs::OpenOptions::new().write(true).custom_flags(libc::O_DIRECT).open(&path).map_err(|e| e.to_string())?;
        let mut buf = fixture::Aligned::new(64 * 1024);
        buf.as_mut().fill(0x5a);
        let mut write_error = None;
        let mut io = |_: TransactionId, b: Boundary| {
            if b == (Boundary::Posted { index: 0 }) {
                for block in 0..k {
                    if let Err(e) = f.write_all_at(buf.as_mut(), (block as u64) << 16) {
                        write_error = Some(e.to_string());
                        break;
                    }
                }
            }
        };
        let two = Transaction::new(two_id, vec![Operation::CreateThin { id: b }]).unwrap();
        let result = commit(&mut kp, &two, &mut io);
        drop(f);
        let live = describe_status(&kp);
        let acked = matches!(kp.last_commit_point, Some(Ok(())));
        let _ = kp.deactivate_thin(a);
        kp.inner.pool.teardown().map_err(|e| e.to_string())?;
        let reopened = DmPool::adopt(&pool_name(), &meta, &data, Sectors(128)).map_err(|e| e.to_string())?;
        let durable = kernel_txn(&reopened).ok();
        reopened.teardown().map_err(|e| e.to_string())?;
        rolled_back += (acked && durable == Some(one)) as usize;
        println!(
            "--- commit point after {k} blocks written: write error {write_error:?}; set_transaction_id answered {:?}; live status: {live}; reopened at {durable:?}; engine: {}",
            kp.last_commit_point.as_ref().map(|r| r.as_ref().map_err(|e| e.to_string())),
            match &result { Ok(_) => "committed".to_string(), Err(e) => e.to_string() }
        );
        let verdict = match (&result, durable) {
            (Ok(_), Some(at)) if at == two_id => Ok(()),
            (Ok(_), at) => Err(format!("reported committed, but the metadata holds transaction {at:?}")),
            (Err(CommitError::PoolUnavailable(_)), _) => Ok(()),
            (Err(e), _) => Err(format!("expected committed or pool unavailable, got {e}")),
        };
        tally.result(&format!("commit point after {k} blocks written: reported committed only if the metadata holds it"), verdict);
        if result.is_err() {
            // The repair: thin_check clean, clear the flag, reopen; a new
            // process's executor then finishes 2 from the durable state.
            let finished = (|| {
                run("thin_check", &["--clear-needs-check-flag", meta.to_str().unwrap()])?;
                let mut pool = DmPool::adopt(&pool_name(), &meta, &data, Sectors(128)).map_err(|e| e.to_string())?;
                let record = thinpool::PoolRecord { finished: one, pending: vec![two.clone()] };
                let p = thinpool::Executor::default().drive(&mut pool, &record, &mut ());
                let at = kernel_txn(&pool);
                let devices = pool.list_thin_ids().map_err(|e| e.to_string());
                pool.teardown().map_err(|e| e.to_string())?;
                println!("--- repaired and reopened: {p:?}; kernel at {at:?}; devices {devices:?}");
                match (p.ended.as_slice(), &p.stopped, at, devices) {
                    ([(n, thinpool::Ended::Committed)], None, Ok(at), Ok(d)) if *n == two_id && at == two_id && d == std::collections::BTreeSet::from([a, b]) => Ok(()),
                    _ => Err("expected transaction 2 committed once, the kernel at 2 and devices 1 and 2".to_string()),
                }
            })();
            tally.result(&format!("commit point after {k} blocks written: repaired and reopened, recovery commits 2 exactly once"), finished);
        }
    }
    println!("--- acknowledged set_transaction_id rolled back by the kernel in {rolled_back} attempt(s)");
    Ok(())
}

fn cmd_refuse(args: &Args, tally: &mut Report) -> Result<(), String> {
    let device = args.path("device")?;
    let expect = args.get("expect")?;
    let before = std::fs::read(&device).map_err(|e| e.to_string())?;
    match DmPool::create_on_device(&device, &pool_name(), uuid(), Sectors(128)) {
        Ok(pool) => {
            let _ = pool.teardown();
            tally.result(&format!("device with {expect} refused"), Err(format!("a pool was created on {}", device.display())));
        }
        Err(e) => {
            let msg = e.to_string();
            let ok = msg.contains(expect) && msg.contains(device.to_str().unwrap());
            tally.result(&format!("device with {expect} refused"), if ok { Ok(()) } else { Err(format!("error does not name {expect:?} and the device: {msg}")) });
        }
    }
    let after = std::fs::read(&device).map_err(|e| e.to_string())?;
    tally.result(&format!("device with {expect} left untouched"), if before == after { Ok(()) } else { Err("device bytes changed".into()) });
    Ok(())
}

/// Parses `start`, `suspended`, `posted-N`, `txn-set`, `resumed`.
fn parse_boundary(s: &str) -> Result<Boundary, String> {
    Ok(match s {
        "start" => Boundary::Start,
        "suspended" => Boundary::Suspended,
        "txn-set" => Boundary::TransactionIdSet,
        "resumed" => Boundary::Resumed,
        other => match other.strip_prefix("posted-").and_then(|n| n.parse().ok()) {
            Some(index) => Boundary::Posted { index },
            None => return Err(format!("unknown boundary {other:?}")),
        },
    })
}

/// Makes sure the pool holds an active origin to snapshot and a spare to
/// delete, committing normally; returns (origin, spare).
fn ensure_devices(pool: &mut DmPool, record: &mut Record, record_path: &Path, journal: &mut Journal) -> Result<(ThinId, ThinId), String> {
    while record.live.len() < 2 {
        let id = record.allocate();
        let n = record.pool.last_assigned().successor();
        let txn = Transaction::new(n, vec![Operation::CreateThin { id }]).map_err(|e| e.to_string())?;
        record.pool.pending.push(txn.clone());
        journal.store(record, record_path)?;
        commit(pool, &txn, &mut ()).map_err(|e| e.to_string())?;
        record.committed(n);
        journal.store(record, record_path)?;
    }
    let mut ids = record.live.iter().copied();
    let (origin, spare) = (ids.next().unwrap(), ids.last().unwrap());
    if !pool.active_thins().map_err(|e| e.to_string())?.iter().any(|t| t.id == origin) {
        pool.activate_thin(origin, THIN_SIZE).map_err(|e| e.to_string())?;
    }
    Ok((origin, spare))
}

/// Snapshots kept live by `mixed_transaction`: older ones are deleted.
const KEEP_SNAPSHOTS: usize = 6;

/// A transaction with a snapshot of an active origin, a create and a delete
/// (two once enough snapshots are live: the oldest goes too). The origin is
/// first given a pattern (seed: the transaction id), written and synced
/// before the record names the snapshot, so the snapshot must hold exactly
/// that pattern however the transaction ends up being finished.
fn mixed_transaction(pool: &mut DmPool, record: &mut Record, record_path: &Path, journal: &mut Journal) -> Result<Transaction, String> {
    let (origin, spare) = ensure_devices(pool, record, record_path, journal)?;
    let n = record.pool.last_assigned().successor();
    let origin_path = pool.thin_device_path(origin).map_err(|e| e.to_string())?;
    fixture::write_pattern_at(&origin_path, n.get(), true)?;
    let snap = record.allocate();
    let thin = record.allocate();
    let mut ops = vec![Operation::CreateSnapshot { id: snap, origin }, Operation::CreateThin { id: thin }, Operation::Delete { id: spare }];
    let live_snaps: Vec<ThinId> = record.seeds.keys().copied().filter(|id| record.live.contains(id) && *id != spare).collect();
    if live_snaps.len() >= KEEP_SNAPSHOTS {
        ops.push(Operation::Delete { id: live_snaps[0] });
    }
    let txn = Transaction::new(n, ops).map_err(|e| e.to_string())?;
    record.seeds.insert(snap, n.get());
    record.pool.pending.push(txn.clone());
    journal.store(record, record_path)?; // the record is written before the node acts
    Ok(txn)
}

fn cmd_crash(args: &Args) -> Result<(), String> {
    let device = args.path("device")?;
    let record_path = args.path("record")?;
    let at = parse_boundary(args.get("at")?)?;
    let mut pool = open_or_create(&device)?;
    let mut record = Record::load(&record_path)?;
    let txn = mixed_transaction(&mut pool, &mut record, &record_path, &mut Journal::none())?;
    println!("committing transaction {} and dying at {at:?}", txn.id());
    let result = commit(&mut pool, &txn, &mut die_at(at));
    Err(format!("still alive after commit ({result:?}); boundary {at:?} never reached"))
}

/// Origins in each group round: three, so a kill can fall between the first
/// and second snapshot and between the second and third.
const GROUP_ORIGINS: usize = 3;

/// The start of a group round: three new origins, committed, active and each
/// given a pattern (written and synced), then ONE transaction that
/// snapshots all three, recorded before the node acts; returns it uncommitted.
fn group_transaction(pool: &mut DmPool, record: &mut Record, record_path: &Path) -> Result<Transaction, String> {
    let origins: Vec<ThinId> = (0..GROUP_ORIGINS).map(|_| record.allocate()).collect();
    let n = record.pool.last_assigned().successor();
    let create = Transaction::new(n, origins.iter().map(|&id| Operation::CreateThin { id }).collect()).map_err(|e| e.to_string())?;
    record.pool.pending.push(create.clone());
    record.store(record_path)?;
    commit(pool, &create, &mut ()).map_err(|e| e.to_string())?;
    record.committed(n);
    let n = n.successor();
    let mut ops = Vec::new();
    for (i, &origin) in origins.iter().enumerate() {
        pool.activate_thin(origin, THIN_SIZE).map_err(|e| e.to_string())?;
        let seed = n.get() * 10 + i as u64;
        fixture::write_pattern_at(&pool.thin_device_path(origin).map_err(|e| e.to_string())?, seed, true)?;
        let snap = record.allocate();
        record.seeds.insert(snap, seed);
        ops.push(Operation::CreateSnapshot { id: snap, origin });
    }
    let txn = Transaction::new(n, ops).map_err(|e| e.to_string())?;
    record.pool.pending.push(txn.clone());
    record.store(record_path)?; // the record is written before the node acts
    Ok(txn)
}

/// Commits a group snapshot and SIGKILLs the process at `--at`.
fn cmd_group_crash(args: &Args) -> Result<(), String> {
    let record_path = args.path("record")?;
    let at = parse_boundary(args.get("at")?)?;
    let mut pool = open_or_create(&args.path("device")?)?;
    let mut record = Record::load(&record_path)?;
    let txn = group_transaction(&mut pool, &mut record, &record_path)?;
    println!("committing group transaction {} and dying at {at:?}", txn.id());
    commit(&mut pool, &txn, &mut die_at(at)).map(drop).map_err(|e| e.to_string())?;
    Err(format!("still alive after the group commit; boundary {at:?} never reached"))
}

/// After a kill inside a group transaction: the node opens the pool (which
/// resumes what the crash left suspended), the origins take new data (each
/// written and synced: the moment after the crash), and then recovery runs.
/// Every snapshot of the group must hold its origin's data of ONE moment:
/// all as recorded, or all as after the crash.
fn cmd_group_recover(args: &Args, tally: &mut Report) -> Result<(), String> {
    let label = args.get("label").unwrap_or("group");
    let record_path = args.path("record")?;
    let mut pool = DmPool::open_on_device(&args.path("device")?).map_err(|e| e.to_string())?;
    let record = Record::load(&record_path)?;
    let group = record.pool.pending.last().cloned().ok_or("no group transaction pending")?;
    let thawed = thinpool::thaw(&mut pool).map_err(|e| e.to_string())?;
    println!("{label}: resumed {thawed:?} on open; writing new data to the origins");
    let mut members = Vec::new();
    for op in group.operations() {
        if let Operation::CreateSnapshot { id, origin } = *op {
            let after = record.seeds[&id] + 1_000_000;
            fixture::write_pattern_at(&pool.thin_device_path(origin).map_err(|e| e.to_string())?, after, true)?;
            members.push((id, record.seeds[&id], after));
        }
    }
    recover_and_check(&mut pool, &record_path, tally, label)?;
    let mut held = Vec::new();
    for &(id, _, _) in &members {
        pool.activate_thin(id, THIN_SIZE).map_err(|e| format!("activate snapshot {id}: {e}"))?;
        let read = pool.thin_device_path(id).map_err(|e| e.to_string()).and_then(|p| fixture::read_pattern_at(&p));
        pool.deactivate_thin(id).map_err(|e| format!("deactivate snapshot {id}: {e}"))?;
        held.push(read?);
    }
    let before: Vec<u64> = members.iter().map(|m| m.1).collect();
    let after: Vec<u64> = members.iter().map(|m| m.2).collect();
    println!("{label}: snapshots hold {held:?}; recorded {before:?}, after the crash {after:?}");
    tally.result(
        &format!("{label}: the group's snapshots are one instant"),
        if held == before || held == after { Ok(()) } else { Err(format!("snapshots hold {held:?}: neither all {before:?} (recorded) nor all {after:?} (after the crash)")) },
    );
    Ok(())
}

/// An observer that SIGKILLs the process at `at`, as a crash would.
fn die_at(at: Boundary) -> impl FnMut(TransactionId, Boundary) {
    move |_, b| {
        if b == at {
            // SAFETY: plain syscall; the process dies here, as in a crash.
            unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
        }
    }
}

/// Recovers after a crash and checks every invariant against the record.
fn recover_and_check(pool: &mut DmPool, record_path: &Path, tally: &mut Report, label: &str) -> Result<(), String> {
    let mut record = Record::load(record_path)?;
    let report = recover(pool, &record.pool, &mut ());
    let report = match report {
        Ok(r) => r,
        Err(e) => {
            tally.result(&format!("{label}: recovery"), Err(e.to_string()));
            return Ok(());
        }
    };
    println!("recovery: {}", describe_recovery(&report));
    for n in &report.committed_unreported {
        record.committed(*n);
    }
    match report.finished {
        Some((n, Outcome::Committed(_))) => record.committed(n),
        Some((n, Outcome::Aborted { .. })) => record.aborted(n),
        None => {}
    }
    record.store(record_path)?;
    tally.result(&format!("{label}: recovery"), Ok(()));
    let at = kernel_txn(pool)?;
    tally.result(
        &format!("{label}: every transaction ended, kernel at the last one"),
        if at == record.pool.finished && record.pool.pending.is_empty() { Ok(()) } else { Err(format!("kernel at {at}, record {:?}", record.pool)) },
    );
    let suspended: Vec<_> = pool.active_thins().map_err(|e| e.to_string())?.into_iter().filter(|t| t.suspended).collect();
    tally.result(&format!("{label}: no device left suspended"), if suspended.is_empty() { Ok(()) } else { Err(format!("{suspended:?}")) });
    let devices = pool.list_thin_ids().map_err(|e| e.to_string())?;
    tally.result(
        &format!("{label}: pool devices match the record"),
        if devices == record.live { Ok(()) } else { Err(format!("pool has {devices:?}, record says {:?}", record.live)) },
    );
    Ok(())
}

/// One line: what recovery found and did.
fn describe_recovery(report: &thinpool::engine::RecoveryReport) -> String {
    let mut words = vec![format!("kernel was at {}", report.kernel_was_at)];
    if !report.resumed.is_empty() {
        words.push(format!("resumed {:?}", report.resumed.iter().map(|t| t.to_string()).collect::<Vec<_>>()));
    }
    if !report.committed_unreported.is_empty() {
        words.push(format!("committed but unreported {:?}", report.committed_unreported.iter().map(|t| t.get()).collect::<Vec<_>>()));
    }
    match &report.finished {
        Some((n, Outcome::Committed(c))) if c.already_done.is_empty() => words.push(format!("finished {n} (committed)")),
        Some((n, Outcome::Committed(c))) => words.push(format!(
            "finished {n} (committed; already in the kernel: {})",
            c.already_done.iter().map(|op| op.to_string()).collect::<Vec<_>>().join(", ")
        )),
        Some((n, Outcome::Aborted { reason, .. })) => words.push(format!("finished {n} (aborted: {reason})")),
        None => words.push("nothing in flight".into()),
    }
    words.join("; ")
}

fn cmd_recover(args: &Args, tally: &mut Report) -> Result<(), String> {
    let mut pool = DmPool::open_on_device(&args.path("device")?).map_err(|e| e.to_string())?;
    recover_and_check(&mut pool, &args.path("record")?, tally, args.get("label").unwrap_or("recover"))
}

/// Commits transactions until the VM is powered off under it (or `--count`
/// of them). Prints `TXN <n> begin #<k>` before and `TXN <n> committed #<k>`
/// after each (k counts from 1 in this run), for the host to cut the power
/// at. With `--mark-device NAME --history DIR`, every record version is
/// kept in DIR and named in the dm-log-writes log of NAME by a mark.
fn cmd_powerrun(args: &Args) -> Result<(), String> {
    let device = args.path("device")?;
    let record_path = args.path("record")?;
    let mut journal = match (args.0.get("mark-device"), args.0.get("history")) {
        (Some(dev), Some(dir)) => Journal::new(dev, Path::new(dir))?,
        (None, None) => Journal::none(),
        _ => return Err("--mark-device and --history go together".into()),
    };
    let mut pool = open_or_create(&device)?;
    let mut record = Record::load(&record_path)?;
    journal.store(&record, &record_path)?;
    for k in 1..=args.num("count", 1_000_000)? {
        let txn = mixed_transaction(&mut pool, &mut record, &record_path, &mut journal)?;
        println!("TXN {} begin #{k}", txn.id());
        commit(&mut pool, &txn, &mut ()).map_err(|e| e.to_string())?;
        record.committed(txn.id());
        journal.store(&record, &record_path)?;
        println!("TXN {} committed #{k}", txn.id());
    }
    if args.0.contains_key("finish") {
        for t in pool.active_thins().map_err(|e| e.to_string())? {
            pool.deactivate_thin(t.id).map_err(|e| e.to_string())?;
        }
        pool.teardown().map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Checks the data of the newest live snapshots against their seeds.
fn check_snapshot_data(pool: &mut DmPool, record: &Record, newest: usize) -> Result<String, String> {
    let snaps: Vec<(ThinId, u64)> = record.seeds.iter().rev().filter(|(id, _)| record.live.contains(id)).take(newest).map(|(id, seed)| (*id, *seed)).collect();
    let mut seen = Vec::new();
    for (id, seed) in &snaps {
        pool.activate_thin(*id, THIN_SIZE).map_err(|e| format!("activate snapshot {id}: {e}"))?;
        let read = pool.thin_device_path(*id).map_err(|e| e.to_string()).and_then(|p| fixture::read_pattern_at(&p).map_err(|e| format!("snapshot {id}{e}")));
        pool.deactivate_thin(*id).map_err(|e| format!("deactivate snapshot {id}: {e}"))?;
        match read {
            Ok(got) if got == *seed => seen.push(format!("{id}={seed}")),
            Ok(got) => return Err(format!("snapshot {id} holds pattern {got}, its origin held {seed} when it was taken")),
            Err(e) => return Err(e),
        }
    }
    Ok(if seen.is_empty() { "no snapshot yet".into() } else { seen.join(" ") })
}

fn cmd_powercheck(args: &Args, tally: &mut Report) -> Result<(), String> {
    let candidates: Vec<PathBuf> = args.get("candidates")?.split(',').map(PathBuf::from).collect();
    let found = thinpool_dm::find_pools(&candidates);
    tally.result("after power-off: pool found by its header", if found.len() == 1 { Ok(()) } else { Err(format!("found {found:?}")) });
    let Some((device, _)) = found.into_iter().next() else { return Ok(()) };
    let mut pool = DmPool::open_on_device(&device).map_err(|e| e.to_string())?;
    println!("after power-off: kernel at {}", kernel_txn(&pool)?);
    let record_path = args.path("record")?;
    recover_and_check(&mut pool, &record_path, tally, "after power-off")?;
    for t in pool.active_thins().map_err(|e| e.to_string())? {
        let _ = pool.deactivate_thin(t.id);
    }
    let record = Record::load(&record_path)?;
    let data = check_snapshot_data(&mut pool, &record, 2);
    if let Ok(seen) = &data {
        println!("after power-off: snapshot data {seen}");
    }
    tally.result("after power-off: snapshot data as at snapshot time", data.map(drop));
    teardown_and_check(pool, tally);
    Ok(())
}

/// Deactivates everything, tears the pool down and checks its metadata.
fn cmd_finish(args: &Args, tally: &mut Report) -> Result<(), String> {
    let mut pool = DmPool::open_on_device(&args.path("device")?).map_err(|e| e.to_string())?;
    for t in pool.active_thins().map_err(|e| e.to_string())? {
        pool.deactivate_thin(t.id).map_err(|e| e.to_string())?;
    }
    teardown_and_check(pool, tally);
    Ok(())
}

fn main() -> ExitCode {
    report::install_panic_hook();
    tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::from_default_env()).with_writer(std::io::stderr).init();
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let Some((command, rest)) = argv.split_first() else {
        eprintln!("usage: thin-vmtest cases|refuse|commit-point|exhaust|crash|recover|group-crash|group-recover|finish|powerrun|powercheck|replay-log|demo|bench [--option value]...");
        return ExitCode::from(2);
    };
    let mut tally = Report::default();
    let result = Args::parse(rest).and_then(|args| match command.as_str() {
        "cases" => cmd_cases(&args, &mut tally),
        "refuse" => cmd_refuse(&args, &mut tally),
        "commit-point" => cmd_commit_point(&args, &mut tally),
        "exhaust" => cmd_exhaust(&args, &mut tally),
        "commit-rollback" => cmd_commit_rollback(&args, &mut tally),
        "crash" => cmd_crash(&args),
        "recover" => cmd_recover(&args, &mut tally),
        "group-crash" => cmd_group_crash(&args),
        "group-recover" => cmd_group_recover(&args, &mut tally),
        "powerrun" => cmd_powerrun(&args),
        "finish" => cmd_finish(&args, &mut tally),
        "powercheck" => cmd_powercheck(&args, &mut tally),
        "replay-log" => crash::replay_log(&args, &mut tally),
        "demo" => demo::run(&args.path("device")?),
        "bench" => bench::run(&args.path("device")?, &args.0),
        other => Err(format!("unknown command {other:?}")),
    });
    if let Err(why) = result {
        tally.fail(command, why);
        return ExitCode::FAILURE;
    }
    tally.exit_code()
}
