//! The engine benchmark, side by side with dmsetup processes and lvm2, in
//! one VM run on the same kernel. Prints
//! `BENCH <op> <tool> median_us=<n> p90_us=<n> n=<k>` lines.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use thinpool::{commit, Kernel, Operation, PoolName, Sectors, ThinId, Transaction, TransactionId};
use thinpool_dm::DmPool;

struct Bench {
    pool: DmPool,
    name: PoolName,
    next_id: u32,
    txn: TransactionId,
}

fn print(op: &str, tool: &str, mut micros: Vec<u64>) {
    micros.sort_unstable();
    let n = micros.len();
    if n == 0 {
        println!("BENCH {op} {tool} failed: no samples");
        return;
    }
    let median = micros[n / 2];
    let p90 = micros[((n * 9) / 10).min(n - 1)];
    println!("BENCH {op} {tool} median_us={median} p90_us={p90} n={n}");
}

fn timed<T>(f: impl FnOnce() -> Result<T, String>) -> Result<(T, u64), String> {
    let start = Instant::now();
    let v = f()?;
    Ok((v, start.elapsed().as_micros() as u64))
}

fn sh(cmd: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new(cmd).args(args).output().map_err(|e| format!("{cmd}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("{cmd} {args:?}: {}", String::from_utf8_lossy(&out.stderr).trim()))
    }
}

impl Bench {
    fn id(&mut self) -> ThinId {
        self.next_id += 1;
        ThinId::new(self.next_id.into()).expect("small ids")
    }

    fn commit(&mut self, ops: Vec<Operation>) -> Result<(), String> {
        self.txn = self.txn.successor();
        let txn = Transaction::new(self.txn, ops).map_err(|e| e.to_string())?;
        commit(&mut self.pool, &txn, &mut ()).map(|_| ()).map_err(|e| e.to_string())
    }

    fn active_origin(&mut self) -> Result<ThinId, String> {
        let origin = self.id();
        self.commit(vec![Operation::CreateThin { id: origin }])?;
        self.pool.activate_thin(origin, Sectors(2048 * 64)).map_err(|e| e.to_string())?;
        Ok(origin)
    }

    /// Our engine: one snapshot per transaction, then one delete per transaction.
    fn engine(&mut self, origin: ThinId, reps: usize, label: &str) -> Result<(), String> {
        let (mut snap_us, mut del_us, mut snaps) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..reps {
            let id = self.id();
            snap_us.push(timed(|| self.commit(vec![Operation::CreateSnapshot { id, origin }]))?.1);
            snaps.push(id);
        }
        for id in snaps {
            del_us.push(timed(|| self.commit(vec![Operation::Delete { id }]))?.1);
        }
        print(&format!("snapshot{label}"), "thin-csi", snap_us);
        print(&format!("delete{label}"), "thin-csi", del_us);
        Ok(())
    }

    /// The same four steps as separate dmsetup processes (two for a delete).
    fn dmsetup(&mut self, origin: ThinId, reps: usize) -> Result<(), String> {
        let names = thinpool_dm::names::DeviceNames::new(&self.name);
        let (pool, origin_dev) = (names.pool(), names.thin(origin));
        let (mut snap_us, mut del_us, mut snaps) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..reps {
            let id = self.id();
            let (a, b) = (self.txn, self.txn.successor());
            let create = format!("create_snap {id} {origin}");
            let set = format!("set_transaction_id {a} {b}");
            snap_us.push(
                timed(|| {
                    sh("dmsetup", &["suspend", &origin_dev])?;
                    sh("dmsetup", &["message", &pool, "0", &create])?;
                    sh("dmsetup", &["message", &pool, "0", &set])?;
                    sh("dmsetup", &["resume", &origin_dev])
                })?
                .1,
            );
            self.txn = b;
            snaps.push(id);
        }
        for id in snaps {
            let (a, b) = (self.txn, self.txn.successor());
            let delete = format!("delete {id}");
            let set = format!("set_transaction_id {a} {b}");
            del_us.push(timed(|| sh("dmsetup", &["message", &pool, "0", &delete]).and_then(|_| sh("dmsetup", &["message", &pool, "0", &set])))?.1);
            self.txn = b;
        }
        print("snapshot", "dmsetup", snap_us);
        print("delete", "dmsetup", del_us);
        Ok(())
    }

    /// The floor: the same four kernel calls with no engine around them
    /// (no status read, no device listing, no checks).
    fn raw_ioctls(&mut self, origin: ThinId, reps: usize) -> Result<(), String> {
        let mut us = Vec::new();
        let mut snaps = Vec::new();
        for _ in 0..reps {
            let id = self.id();
            let (a, b) = (self.txn, self.txn.successor());
            let create = format!("create_snap {id} {origin}");
            let set = format!("set_transaction_id {a} {b}");
            let pool = &mut self.pool;
            us.push(
                timed(|| {
                    pool.suspend_thin(origin).map_err(|e| e.to_string())?;
                    pool.raw_message(&create).map_err(|e| e.to_string())?;
                    pool.raw_message(&set).map_err(|e| e.to_string())?;
                    pool.resume_thin(origin).map_err(|e| e.to_string())
                })?
                .1,
            );
            self.txn = b;
            snaps.push(id);
        }
        print("snapshot", "raw-ioctl", us);
        self.commit(snaps.into_iter().map(|id| Operation::Delete { id }).collect())
    }

    /// One transaction snapshotting 16 active origins at once.
    fn group(&mut self, reps: usize) -> Result<(), String> {
        let origins = (0..16).map(|_| self.active_origin()).collect::<Result<Vec<_>, _>>()?;
        let mut us = Vec::new();
        for _ in 0..reps {
            let ops: Vec<Operation> = origins.iter().map(|&origin| Operation::CreateSnapshot { id: self.id(), origin }).collect();
            let snaps: Vec<ThinId> = ops.iter().filter_map(Operation::created).collect();
            us.push(timed(|| self.commit(ops))?.1);
            self.commit(snaps.into_iter().map(|id| Operation::Delete { id }).collect())?;
        }
        print("group-16", "thin-csi", us);
        for id in origins {
            self.pool.deactivate_thin(id).map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// Fills the pool with `count` thin devices, 1000 per transaction.
    fn fill(&mut self, count: usize) -> Result<(), String> {
        let start = Instant::now();
        for chunk in 0..count.div_ceil(1000) {
            let n = (count - chunk * 1000).min(1000);
            let ops = (0..n).map(|_| Operation::CreateThin { id: self.id() }).collect();
            self.commit(ops)?;
        }
        println!("filled the pool with {count} thin devices in {:.1} s", start.elapsed().as_secs_f64());
        Ok(())
    }
}

/// lvm2 on its own thin pool in a volume group on `device`, same VM.
fn lvm2(device: &str, reps: usize, scale: usize) -> Result<(), String> {
    sh("pvcreate", &["-ff", "-y", device])?;
    sh("vgcreate", &["vgbench", device])?;
    sh("lvcreate", &["-y", "--type", "thin-pool", "-L", "256M", "-n", "tpool", "vgbench"])?;
    sh("lvcreate", &["-y", "-V", "128M", "-T", "vgbench/tpool", "-n", "origin"])?;
    let round = |label: &str, tag: &str| -> Result<(), String> {
        let (mut snap_us, mut del_us) = (Vec::new(), Vec::new());
        for i in 0..reps {
            let name = format!("s{tag}{i}");
            snap_us.push(timed(|| sh("lvcreate", &["-y", "-s", "-n", &name, "vgbench/origin"]))?.1);
        }
        for i in 0..reps {
            let lv = format!("vgbench/s{tag}{i}");
            del_us.push(timed(|| sh("lvremove", &["-f", &lv]))?.1);
        }
        print(&format!("snapshot{label}"), "lvm2", snap_us);
        print(&format!("delete{label}"), "lvm2", del_us);
        Ok(())
    };
    round("", "a")?;
    let start = Instant::now();
    for i in 0..scale {
        let name = format!("lv{i}");
        sh("lvcreate", &["-y", "-an", "-V", "4M", "-T", "vgbench/tpool", "-n", &name])?;
    }
    println!("filled the VG with {scale} thin LVs in {:.1} s", start.elapsed().as_secs_f64());
    round(&format!("@{scale}"), "b")
}

pub fn run(device: &Path, opts: &BTreeMap<String, String>) -> Result<(), String> {
    let num = |k: &str, d: usize| opts.get(k).map_or(Ok(d), |v| v.parse().map_err(|_| format!("--{k} {v:?}")));
    let reps = num("reps", 30)?;
    let scale = num("scale", 10_000)?;
    let lvm_scale = num("lvm-scale", 600)?;
    let name = PoolName::new("bench").expect("valid");
    let pool = DmPool::create_on_device(device, &name, [0x42; 16], Sectors(128)).map_err(|e| e.to_string())?;
    let txn = pool.pool_status().map_err(|e| e.to_string())?.working().ok_or("pool failed")?.transaction_id;
    let mut b = Bench { pool, name, next_id: 0, txn };
    let origin = b.active_origin()?;
    // Warm up both paths once so the first sample is not an outlier.
    b.engine(origin, 2, "-warmup")?;
    b.raw_ioctls(origin, reps)?;
    b.engine(origin, reps, "")?;
    b.dmsetup(origin, reps)?;
    b.group(reps.min(20))?;
    let first_filled = b.next_id + 1;
    b.fill(scale)?;
    b.engine(origin, reps, &format!("@{scale}"))?;
    // The same with many of them active: per-transaction kernel work must
    // not grow with the devices active on the node (issue 10, item 2).
    let active = num("active", 1000)?.min(scale);
    let start = Instant::now();
    let ids: Vec<ThinId> = (first_filled..first_filled + active as u32).map(|i| ThinId::new(i.into()).expect("small ids")).collect();
    for &id in &ids {
        b.pool.activate_thin(id, Sectors(8)).map_err(|e| e.to_string())?;
    }
    println!("activated {active} of them in {:.1} s", start.elapsed().as_secs_f64());
    b.engine(origin, reps, &format!("@{scale}-active"))?;
    for id in ids {
        b.pool.deactivate_thin(id).map_err(|e| e.to_string())?;
    }
    b.pool.deactivate_thin(origin).map_err(|e| e.to_string())?;
    if let Some(lvm_device) = opts.get("lvm-device") {
        lvm2(lvm_device, reps, lvm_scale)?;
    }
    Ok(())
}
