//! The controller's record, kept where a crash of the node process (or of
//! the whole VM) cannot lose it: a small file or a raw block device, written
//! and synced *before* the node acts, as the controller writes the API.
//!
//! Text format, one line each:
//!   finished <n>
//!   pending <n> <op>;<op>;...      (ops as kernel message text)
//!   live <id> <id> ...             (devices that should exist after <finished>)
//!   seed <id> <seed>               (a snapshot's data: the pattern its origin
//!                                   held, durably, when its transaction was recorded)

use std::collections::{BTreeMap, BTreeSet};
use std::fs::OpenOptions;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use thinpool::{Operation, PoolRecord, ThinId, Transaction, TransactionId};

#[derive(Clone, Debug, Default)]
pub struct Record {
    pub pool: PoolRecord,
    pub live: BTreeSet<ThinId>,
    pub next_id: u32,
    /// Snapshots (pending or live) and the pattern seed they must hold.
    pub seeds: BTreeMap<ThinId, u64>,
}

const AREA: usize = 1 << 20;

impl Record {
    pub fn load(path: &Path) -> Result<Record, String> {
        let mut text = String::new();
        match OpenOptions::new().read(true).open(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Record { next_id: 1, ..Record::default() }),
            Err(e) => return Err(format!("open {}: {e}", path.display())),
            Ok(mut f) => {
                let mut buf = vec![0u8; AREA];
                let n = f.read(&mut buf).map_err(|e| format!("read {}: {e}", path.display()))?;
                text.push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        }
        Record::parse(&text)
    }

    /// Parses the text `store` writes (trailing zero padding allowed).
    pub fn parse(text: &str) -> Result<Record, String> {
        let text = text.trim_end_matches('\0');
        let mut record = Record { next_id: 1, ..Record::default() };
        for line in text.lines() {
            let (key, rest) = line.split_once(' ').unwrap_or((line, ""));
            match key {
                "finished" => record.pool.finished = TransactionId::new(rest.trim().parse().map_err(|_| format!("bad line {line:?}"))?),
                "next_id" => record.next_id = rest.trim().parse().map_err(|_| format!("bad line {line:?}"))?,
                "live" => {
                    for id in rest.split_whitespace() {
                        record.live.insert(id.parse().map_err(|e| format!("{line:?}: {e}"))?);
                    }
                }
                "seed" => {
                    let (id, seed) = rest.split_once(' ').ok_or_else(|| format!("bad line {line:?}"))?;
                    let id = id.parse().map_err(|e| format!("{line:?}: {e}"))?;
                    record.seeds.insert(id, seed.trim().parse().map_err(|_| format!("bad line {line:?}"))?);
                }
                "pending" => {
                    let (n, ops) = rest.split_once(' ').ok_or_else(|| format!("bad line {line:?}"))?;
                    let ops = ops.split(';').map(parse_op).collect::<Result<Vec<_>, _>>()?;
                    let n = TransactionId::new(n.parse().map_err(|_| format!("bad line {line:?}"))?);
                    record.pool.pending.push(Transaction::new(n, ops).map_err(|e| e.to_string())?);
                }
                "" => {}
                other => return Err(format!("unknown record line {other:?}")),
            }
        }
        Ok(record)
    }

    /// Writes the whole record and syncs it.
    pub fn store(&self, path: &Path) -> Result<(), String> {
        let mut bytes = self.text().into_bytes();
        if bytes.len() >= AREA {
            return Err("record too large".into());
        }
        bytes.resize(bytes.len().div_ceil(4096) * 4096 + 4096, 0);
        let mut f = OpenOptions::new().write(true).create(true).truncate(!is_block_device(path)).open(path).map_err(|e| format!("open {}: {e}", path.display()))?;
        f.seek(SeekFrom::Start(0)).map_err(|e| e.to_string())?;
        f.write_all(&bytes).map_err(|e| format!("write {}: {e}", path.display()))?;
        f.sync_all().map_err(|e| format!("sync {}: {e}", path.display()))
    }

    /// The record as text (what `store` writes, before padding).
    pub fn text(&self) -> String {
        let mut text = format!("finished {}\nnext_id {}\nlive", self.pool.finished, self.next_id);
        for id in &self.live {
            text.push_str(&format!(" {id}"));
        }
        text.push('\n');
        for txn in &self.pool.pending {
            let ops: Vec<String> = txn.operations().iter().map(|op| op.to_string()).collect();
            text.push_str(&format!("pending {} {}\n", txn.id(), ops.join(";")));
        }
        for (id, seed) in &self.seeds {
            text.push_str(&format!("seed {id} {seed}\n"));
        }
        text
    }

    pub fn allocate(&mut self) -> ThinId {
        let id = ThinId::new(self.next_id.into()).expect("test ids stay below 2^24");
        self.next_id += 1;
        id
    }

    /// Applies a transaction the kernel committed to the expected device set
    /// and moves `finished` past it.
    pub fn committed(&mut self, n: TransactionId) {
        let pos = self.pool.pending.iter().position(|t| t.id() == n).expect("committed transaction is pending");
        let txn = self.pool.pending.remove(pos);
        for id in txn.created_ids() {
            self.live.insert(id);
        }
        for id in txn.deleted_ids() {
            self.live.remove(&id);
            self.seeds.remove(&id);
        }
        self.pool.finished = n;
    }

    pub fn aborted(&mut self, n: TransactionId) {
        if let Some(txn) = self.pool.pending.iter().find(|t| t.id() == n) {
            for id in txn.created_ids() {
                self.seeds.remove(&id);
            }
        }
        self.pool.pending.retain(|t| t.id() != n);
        self.pool.finished = n;
    }
}

fn is_block_device(path: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::metadata(path).map(|m| m.file_type().is_block_device()).unwrap_or(false)
}

fn parse_op(text: &str) -> Result<Operation, String> {
    let words: Vec<&str> = text.split_whitespace().collect();
    let id = |s: &str| s.parse::<ThinId>().map_err(|e| e.to_string());
    Ok(match words.as_slice() {
        ["create_thin", a] => Operation::CreateThin { id: id(a)? },
        ["create_snap", a, b] => Operation::CreateSnapshot { id: id(a)?, origin: id(b)? },
        ["delete", a] => Operation::Delete { id: id(a)? },
        _ => return Err(format!("unknown operation {text:?}")),
    })
}
