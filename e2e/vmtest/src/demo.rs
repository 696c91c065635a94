//! The engine at work, narrated: a filesystem on a thin volume, a snapshot
//! taken while it is mounted and being written, read back.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use thinpool::{commit, Kernel, Operation, PoolName, Sectors, ThinId, Transaction, TransactionId};
use thinpool_dm::DmPool;

fn sh(cmd: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(cmd).args(args).output().map_err(|e| format!("{cmd}: {e}"))?;
    if !out.status.success() {
        return Err(format!("{cmd} {args:?}: {}", String::from_utf8_lossy(&out.stderr).trim()));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn step(what: &str) {
    println!("demo: {what}");
}

pub fn run(device: &Path) -> Result<(), String> {
    let err = |e: &dyn std::fmt::Display| e.to_string();
    step(&format!("laying a pool out on {}", device.display()));
    let mut pool = DmPool::create_on_device(device, &PoolName::new("demo").unwrap(), [0x5a; 16], Sectors(128)).map_err(|e| err(&e))?;
    let mut txn = TransactionId::ZERO;
    let mut run_txn = |pool: &mut DmPool, ops: Vec<Operation>| -> Result<u64, String> {
        txn = txn.successor();
        let t = Transaction::new(txn, ops).map_err(|e| err(&e))?;
        let start = Instant::now();
        commit(pool, &t, &mut ()).map_err(|e| err(&e))?;
        Ok(start.elapsed().as_micros() as u64)
    };
    let volume = ThinId::new(1).unwrap();
    let snapshot = ThinId::new(2).unwrap();
    run_txn(&mut pool, vec![Operation::CreateThin { id: volume }])?;
    pool.activate_thin(volume, Sectors(2048 * 256)).map_err(|e| err(&e))?;
    let vol_path = pool.thin_device_path(volume).map_err(|e| err(&e))?;
    let vol = vol_path.to_str().unwrap();
    step(&format!("thin volume {volume} is {vol}; mkfs.ext4 and mount at /mnt/vol"));
    sh("mkfs.ext4", &["-q", vol])?;
    std::fs::create_dir_all("/mnt/vol").map_err(|e| err(&e))?;
    std::fs::create_dir_all("/mnt/snap").map_err(|e| err(&e))?;
    sh("mount", &[vol, "/mnt/vol"])?;
    std::fs::write("/mnt/vol/greeting", "written before the snapshot, never fsynced\n").map_err(|e| err(&e))?;
    step("wrote /mnt/vol/greeting (no fsync); taking a snapshot in one transaction (suspend with freeze → create_snap → set_transaction_id → resume)");
    let us = run_txn(&mut pool, vec![Operation::CreateSnapshot { id: snapshot, origin: volume }])?;
    step(&format!("snapshot {snapshot} committed in {us} µs; the pool is at transaction {}", pool.pool_status().map_err(|e| err(&e))?.working().map_or(0, |w| w.transaction_id.get())));
    std::fs::write("/mnt/vol/greeting", "changed after the snapshot\n").map_err(|e| err(&e))?;
    pool.activate_thin(snapshot, Sectors(2048 * 256)).map_err(|e| err(&e))?;
    let snap_path = pool.thin_device_path(snapshot).map_err(|e| err(&e))?;
    sh("mount", &["-o", "ro", snap_path.to_str().unwrap(), "/mnt/snap"])?;
    let now = std::fs::read_to_string("/mnt/vol/greeting").map_err(|e| err(&e))?;
    let then = std::fs::read_to_string("/mnt/snap/greeting").map_err(|e| err(&e))?;
    step(&format!("volume   says: {}", now.trim()));
    step(&format!("snapshot says: {}", then.trim()));
    sh("umount", &["/mnt/snap"])?;
    sh("umount", &["/mnt/vol"])?;
    for id in [snapshot, volume] {
        pool.deactivate_thin(id).map_err(|e| err(&e))?;
    }
    run_txn(&mut pool, vec![Operation::Delete { id: snapshot }, Operation::Delete { id: volume }])?;
    pool.teardown().map_err(|e| err(&e))?;
    if then.trim() != "written before the snapshot, never fsynced" || now.trim() != "changed after the snapshot" {
        return Err("the snapshot does not hold the data at snapshot time".into());
    }
    println!("PASS demo: the snapshot holds the data at snapshot time");
    Ok(())
}
