//! The node's transaction executor: watches this pool's `ThinPool` object,
//! runs its pending transactions against the kernel in order of transaction
//! id ([`thinpool::executor::drive`]), and writes what the kernel committed
//! into the object's status. It is the only writer of that status.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::ObjectReference;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Client, Resource};
use thin_csi_api::{ThinSnapshot, ThinVolume};
use thin_csi_api::pool::{AbortedTransaction, PoolHealth, PoolMode, ThinPool, ThinPoolSpec, ThinPoolStatus};
use thinpool::executor::{Ended, Executor, Progress};
use thinpool::{Kernel, TransactionId};
use thinpool_dm::{DmPool, PoolLayout};
use tracing::{error, info, warn};

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("Kubernetes API: {0}")]
    Api(#[from] kube::Error),
    #[error("pool {pool}: {why}")]
    Pool { pool: String, why: String },
    #[error("pool object {object} belongs to node {owner}, not {node}")]
    WrongNode { object: String, owner: String, node: String },
}

/// What the node's gate compares: the object's uid, its spec generation and
/// (with test hooks on) the hook annotations.
type Seen = (Option<String>, Option<i64>, String);

/// How long to wait before retrying a transaction that is blocked (for
/// example a device to delete is still open); new events retry at once.
const BLOCKED_RETRY: Duration = Duration::from_secs(5);

/// The default of `--device-rescan`: a device removed behind the engine's
/// back shows within this (the leak collector's grace is longer).
pub const DEFAULT_DEVICE_RESCAN: Duration = Duration::from_secs(300);

pub struct PoolExecutor {
    pools: Api<ThinPool>,
    object: String,
    kernel: Arc<Mutex<DmPool>>,
    /// Whether the next run replays or runs first attempts (see [`Executor`]).
    executor: Mutex<Executor>,
    recorder: Recorder,
    test_hooks: bool,
    /// The highest transaction id counted in the metrics ([`crate::observe::count_ended`]).
    counted: Arc<std::sync::atomic::AtomicU64>,
    /// The pool's thin ids as last known (reported in the status for the
    /// leak collector); changed only under the kernel lock.
    devices: Arc<Mutex<DeviceSet>>,
    /// How often the device list is read again from the kernel's metadata,
    /// to see what changed behind the engine's back.
    rescan: Duration,
}

/// The pool's thin ids: one full listing (a metadata snapshot read with
/// `thin_dump --skip-mappings`: O(devices)) at start and every rescan, and
/// in between what each transaction ended after it did, so a commit costs
/// no listing. `at`: the kernel's transaction id the set is true for.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DeviceSet {
    ids: std::collections::BTreeSet<thinpool::ThinId>,
    at: Option<TransactionId>,
}

impl DeviceSet {
    pub fn listed(ids: std::collections::BTreeSet<thinpool::ThinId>, at: TransactionId) -> DeviceSet {
        DeviceSet { ids, at: Some(at) }
    }

    /// Applies what `ended` did (in order; transactions the listing already
    /// saw are skipped): a commit made its creates and did its deletes; an
    /// abort undid its creates and posted none of its deletes.
    pub fn apply(&mut self, record: &thinpool::PoolRecord, ended: &[(TransactionId, Ended)], kernel_at: TransactionId) {
        let Some(at) = self.at else { return };
        for (n, how) in ended {
            if *n <= at {
                continue;
            }
            let Some(txn) = record.pending.iter().find(|t| t.id() == *n) else { continue };
            match how {
                Ended::Committed => {
                    self.ids.extend(txn.created_ids());
                    for id in txn.deleted_ids() {
                        self.ids.remove(&id);
                    }
                }
                Ended::Aborted { .. } => {
                    for id in txn.created_ids() {
                        self.ids.remove(&id);
                    }
                }
            }
        }
        self.at = Some(at.max(kernel_at));
    }

    /// The status fields: merged ranges and the transaction they are true at.
    pub fn report(&self, status: &mut ThinPoolStatus) {
        status.devices = thin_csi_api::pool::to_ranges(self.ids.iter().copied());
        status.devices_transaction = self.at.map(TransactionId::get);
    }
}

/// Lists the pool's thin ids with the kernel's transaction id. A metadata
/// snapshot a killed listing left held is released and the listing tried again.
fn list_devices(k: &mut DmPool) -> Result<DeviceSet, thinpool::KernelError> {
    let ids = match k.list_thin_ids() {
        Ok(ids) => ids,
        Err(first) => {
            warn!(error = %first, "listing the pool's devices failed; releasing a held metadata snapshot and trying again");
            let _ = k.message(&thinpool::PoolMessage::ReleaseMetadataSnap);
            k.list_thin_ids()?
        }
    };
    let status = k.pool_status()?;
    let at = status.working().map(|w| w.transaction_id);
    let at = at.ok_or_else(|| thinpool::KernelError::Other { context: "pool status".into(), detail: "the pool has failed".into() })?;
    Ok(DeviceSet::listed(ids, at))
}

pub use thin_csi_api::hooks;

/// The pool's identity: the UUID in its header (device paths change across
/// reboots), or for an adopted metadata/data pair, node and pool name.
pub fn pool_identity(pool: &DmPool, node: &str) -> String {
    match pool.layout() {
        PoolLayout::OneDevice { header, .. } => header.uuid_string(),
        PoolLayout::Pair { .. } => format!("{node}-{}", pool.name()),
    }
}

fn kernel_err(pool: &str, e: impl std::fmt::Display) -> NodeError {
    NodeError::Pool { pool: pool.to_string(), why: e.to_string() }
}

impl PoolExecutor {
    /// Resumes any device of the pool left suspended by a crash, then
    /// creates this pool's object if it does not exist yet, or checks it is
    /// ours. A new object on a pool with history (kernel past transaction 0)
    /// is marked `devicesUnknownAtTransaction`: the pool may hold devices
    /// the new record's cursor does not cover, so nothing is allocated on it
    /// until an operator has made the record know them.
    pub async fn register(client: Client, node: &str, mut pool: DmPool) -> Result<PoolExecutor, NodeError> {
        let object = pool_identity(&pool, node);
        let pools: Api<ThinPool> = Api::all(client.clone());
        let thawed = thinpool::thaw(&mut pool).map_err(|e| kernel_err(&object, e))?;
        if !thawed.is_empty() {
            warn!(pool = %object, devices = ?thawed, "resumed devices left suspended by a crash");
        }
        let kernel_at = pool.pool_status().map_err(|e| kernel_err(&object, e))?.working().map(|w| w.transaction_id.get());
        let kernel_at = kernel_at.ok_or_else(|| kernel_err(&object, "the kernel reports the pool failed"))?;
        let devices = list_devices(&mut pool).unwrap_or_else(|e| {
            warn!(pool = %object, error = %e, "could not list the pool's devices; not reported until a rescan succeeds");
            DeviceSet::default()
        });
        let executor = match pools.get_opt(&object).await? {
            Some(existing) if existing.spec.node != node => {
                return Err(NodeError::WrongNode { object, owner: existing.spec.node, node: node.to_string() })
            }
            Some(_) => {
                info!(pool = %object, "pool object found");
                // An earlier process may have died mid-transaction: replay.
                Executor::default()
            }
            None => {
                let mut spec = ThinPoolSpec::new(node, pool.name().as_str(), &object, kernel_at);
                // History the new record would not know: committed
                // transactions, or volume objects naming this pool (a record
                // lost mid-way through its first transaction).
                let named = ListParams::default().labels(&format!("{}={object}", thin_csi_api::LABEL_POOL)).limit(1);
                let referenced = !Api::<ThinVolume>::all(client.clone()).list(&named).await?.items.is_empty()
                    || !Api::<ThinSnapshot>::all(client.clone()).list(&named).await?.items.is_empty();
                if kernel_at > 0 || referenced {
                    spec.devices_unknown_at_transaction = Some(kernel_at);
                    error!(pool = %object, kernel_at, "no pool object, but the pool has history: recorded with devicesUnknownAtTransaction; nothing is allocated on it until an operator adopts it (docs/operations.md)");
                }
                let mut fresh = ThinPool::new(&object, spec);
                fresh.status = None;
                pools.create(&PostParams::default(), &fresh).await?;
                info!(pool = %object, kernel_at, "pool object created");
                // Everything up to the kernel's id is finished: the spec says so
                // (no pending transactions), so no status write is needed here.
                // Nothing of this record was ever attempted.
                Executor::fresh_record()
            }
        };
        let recorder = Recorder::new(client, Reporter { controller: "thin-csi-node".into(), instance: Some(node.to_string()) });
        Ok(PoolExecutor {
            pools,
            object,
            kernel: Arc::new(Mutex::new(pool)),
            executor: Mutex::new(executor),
            recorder,
            test_hooks: false,
            counted: Default::default(),
            devices: Arc::new(Mutex::new(devices)),
            rescan: DEFAULT_DEVICE_RESCAN,
        })
    }

    /// How often the device list is read again from the kernel ([`DeviceSet`]).
    pub fn with_device_rescan(mut self, every: Duration) -> Self {
        self.rescan = every.max(Duration::from_secs(1));
        self
    }

    /// Reads the device list again (under the kernel lock, so never in the
    /// middle of a transaction) and reports it when it changed: a patch of
    /// the two device fields only, so a stale copy of the rest of the
    /// status is never written back.
    async fn rescan_devices(&self) -> Result<(), NodeError> {
        let (kernel, devices) = (self.kernel.clone(), self.devices.clone());
        let changed = tokio::task::spawn_blocking(move || {
            let mut k = kernel.lock().unwrap_or_else(|p| p.into_inner());
            let fresh = list_devices(&mut k)?;
            let mut known = devices.lock().unwrap_or_else(|p| p.into_inner());
            if fresh.ids != known.ids {
                warn!(before = known.ids.len(), now = fresh.ids.len(), "the pool's device list changed outside the transactions");
            }
            // What the last status write reported already: nothing to write.
            let changed = (fresh != *known).then(|| fresh.clone());
            *known = fresh;
            Ok::<_, thinpool::KernelError>(changed)
        })
        .await
        .map_err(|e| kernel_err(&self.object, e))?
        .map_err(|e| kernel_err(&self.object, e))?;
        let Some(changed) = changed else { return Ok(()) };
        let mut status = ThinPoolStatus::default();
        changed.report(&mut status);
        let patch = serde_json::json!({ "status": { "devices": status.devices, "devicesTransaction": status.devices_transaction } });
        self.pools.patch_status(&self.object, &PatchParams::default(), &Patch::Merge(patch)).await?;
        Ok(())
    }

    /// Honour the fault-injection annotations in [`hooks`] (tests only).
    pub fn with_test_hooks(mut self, enabled: bool) -> Self {
        self.test_hooks = enabled;
        self
    }

    pub fn object_name(&self) -> &str {
        &self.object
    }

    /// The pool, shared with the CSI Node service: every device-mapper call
    /// on it takes this lock, so node operations and transactions never
    /// interleave.
    pub fn kernel(&self) -> Arc<Mutex<DmPool>> {
        self.kernel.clone()
    }

    /// Watches the pool object and reconciles on every change; never polls.
    pub async fn run(self) -> Result<(), NodeError> {
        let config = watcher::Config::default().fields(&format!("metadata.name={}", self.object));
        let mut changes = watcher(self.pools.clone(), config).default_backoff().applied_objects().boxed();
        let mut retry_at: Option<tokio::time::Instant> = None;
        let mut latest: Option<ThinPool> = None;
        // The last spec fully reconciled.
        let mut done: Option<Seen> = None;
        let mut rescan = tokio::time::interval_at(tokio::time::Instant::now() + self.rescan, self.rescan);
        rescan.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let retry = async {
                match retry_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                next = changes.next() => match next {
                    Some(Ok(pool)) => latest = Some(pool),
                    Some(Err(e)) => { warn!(error = %e, "watch error; the watcher backs off and resumes"); continue; }
                    None => return Ok(()),
                },
                _ = retry => {}
                _ = rescan.tick() => {
                    if let Err(e) = self.rescan_devices().await {
                        warn!(error = %e, "device rescan failed; the next one retries");
                    }
                    continue;
                }
            }
            let retrying = retry_at.take().is_some_and(|at| at <= tokio::time::Instant::now());
            let Some(pool) = latest.clone() else { continue };
            if self.test_hooks && annotation(&pool, hooks::STOP).is_some() {
                info!("stop requested through the test hook");
                return Ok(());
            }
            // React to spec changes only: the node's own status writes come
            // back through this watch and must not trigger another run; an
            // older generation is a re-delivered event. Test hooks ride in
            // annotations, which do not change the generation.
            let hooks_set = if self.test_hooks { format!("{:?}", [hooks::KILL_AT, hooks::TAMPER, hooks::DELETE_BEHIND].map(|k| annotation(&pool, k))) } else { String::new() };
            let seen: Seen = (pool.metadata.uid.clone(), pool.metadata.generation, hooks_set);
            if !retrying && done.as_ref().is_some_and(|d| d.0 == seen.0 && d.1 >= seen.1 && d.2 == seen.2) {
                continue;
            }
            match self.reconcile(&pool).await {
                Ok(true) => retry_at = Some(tokio::time::Instant::now() + BLOCKED_RETRY),
                Ok(false) => done = Some(seen),
                Err(e) => {
                    error!(error = %e, "reconcile failed; retrying");
                    retry_at = Some(tokio::time::Instant::now() + BLOCKED_RETRY);
                }
            }
        }
    }

    /// Runs what is pending and reports it. Returns true when a transaction
    /// is blocked and should be retried later. A divergence is believed only
    /// on a fresh read: an event may be old, and an old record can look like
    /// a kernel that ran ahead of it.
    async fn reconcile(&self, event: &ThinPool) -> Result<bool, NodeError> {
        let mut pool = event.clone();
        let mut confirmed = false;
        loop {
            let old = pool.status.clone().unwrap_or_default();
            if old.health == Some(PoolHealth::Unhealthy) {
                return Ok(false); // divergence: send it nothing more, never guess
            }
            if let Some(at) = pool.spec.devices_unknown_at_transaction {
                let why = format!("the pool had history (kernel at transaction {at}) when this record was created: it may hold devices the record does not know; adopt it (docs/operations.md) before use");
                let status = ThinPoolStatus { health: Some(PoolHealth::Unhealthy), last_error: Some(why.clone()), ..old.clone() };
                self.event(&pool, EventType::Warning, "PoolRecordUnverified", &why).await;
                self.write_status(&pool, &old, status).await?;
                return Ok(false);
            }
            let record = match thin_csi_api::convert::pool_record(&pool) {
                Ok(r) => r,
                Err(e) => {
                    self.write_status(&pool, &old, ThinPoolStatus { last_error: Some(format!("bad record: {e}")), ..old.clone() }).await?;
                    return Ok(false);
                }
            };
            let kernel = self.kernel.clone();
            let job_record = record.clone();
            let kill_at = if self.test_hooks { annotation(&pool, hooks::KILL_AT) } else { None };
            let job_kill_at = kill_at.clone();
            let tamper = self.test_hooks && annotation(&pool, hooks::TAMPER).is_some();
            let delete_behind = if self.test_hooks { annotation(&pool, hooks::DELETE_BEHIND) } else { None };
            let devices = self.devices.clone();
            let mut executor = self.executor.lock().unwrap_or_else(|p| p.into_inner()).clone();
            let counted = self.counted.clone();
            let (progress, usage, executor) = tokio::task::spawn_blocking(move || {
                let mut k = kernel.lock().unwrap_or_else(|p| p.into_inner());
                if tamper && fire_once("tamper") {
                    if let Some(w) = k.pool_status().ok().and_then(|s| s.working().cloned()) {
                        let at = w.transaction_id.get();
                        let _ = k.raw_message(&format!("set_transaction_id {at} {}", at + 5));
                        warn!(from = at, to = at + 5, "test hook: moved the kernel's transaction id");
                    }
                }
                if let Some(id) = delete_behind.filter(|id| fire_once(&format!("delete-behind-{id}"))) {
                    // As `dmsetup message <pool> 0 "delete <id>"` would: the
                    // device set is not told; the next rescan sees it.
                    let sent = k.raw_message(&format!("delete {id}"));
                    warn!(%id, ?sent, "test hook: deleted a thin device behind the engine's back");
                }
                let mut observer = KillAt::parse(job_kill_at.as_deref());
                let progress = executor.drive(&mut *k, &job_record, &mut observer);
                devices.lock().unwrap_or_else(|p| p.into_inner()).apply(&job_record, &progress.ended, progress.kernel_at);
                let usage = k.pool_status().ok().and_then(|s| s.working().cloned()).map(|w| (w, k.block_size(), k.metadata_area().len));
                crate::observe::count_ended(&progress.ended, &observer.2.started, &counted);
                (progress, usage, executor)
            })
            .await
            .map_err(|e| kernel_err(&self.object, e))?;
            *self.executor.lock().unwrap_or_else(|p| p.into_inner()) = executor;
            // Test hook: die after the kernel work, before the status says so.
            if let Some(n) = kill_at.as_deref().and_then(|s| s.strip_prefix(hooks::UNREPORTED)?.strip_prefix('@')?.parse::<u64>().ok()) {
                if progress.ended.iter().any(|(t, _)| t.get() == n) && fire_once(&format!("kill-{n}")) {
                    error!(txn = n, ended = ?progress.ended.iter().find(|(t, _)| t.get() == n), "test hook: killing the node process before the status write");
                    die();
                }
            }
            if progress.stopped.as_ref().is_some_and(|s| s.is_divergence()) && !confirmed {
                confirmed = true;
                if let Some(fresh) = self.pools.get_opt(&self.object).await? {
                    if fresh.metadata.resource_version != pool.metadata.resource_version {
                        info!(pool = %self.object, "divergence seen on an old copy of the record; checking the current one");
                        pool = fresh;
                        continue;
                    }
                }
            }
            let mut status = next_status(&old, &pool, &record.finished, &progress);
            self.devices.lock().unwrap_or_else(|p| p.into_inner()).report(&mut status);
            if let Some((w, block, meta_len)) = usage {
                status.data_used_bytes = Some(w.data.used * block.bytes());
                status.data_total_bytes = Some(w.data.total * block.bytes());
                status.metadata_used_bytes = Some(w.metadata.used * 4096);
                status.metadata_total_bytes = Some(w.metadata.total.max(meta_len.bytes() / 4096) * 4096);
                status.mode = Some(PoolMode::of(&w));
                crate::observe::pool_gauges(&self.object, &status);
            }
            let mut blocked = false;
            if let Some(stop) = &progress.stopped {
                if stop.is_divergence() {
                    status.health = Some(PoolHealth::Unhealthy);
                    self.event(&pool, EventType::Warning, "PoolDiverged", &stop.to_string()).await;
                    error!(pool = %self.object, error = %stop, "pool diverged; marked unhealthy");
                } else {
                    blocked = true;
                    if old.last_error.as_deref() != Some(&stop.to_string()) {
                        self.event(&pool, EventType::Warning, "TransactionBlocked", &stop.to_string()).await;
                    }
                }
            }
            for (n, ended) in &progress.ended {
                if let Ended::Aborted { reason, .. } = ended {
                    self.event(&pool, EventType::Warning, "TransactionAborted", &format!("transaction {n}: {reason}")).await;
                }
            }
            self.write_status(&pool, &old, status).await?;
            return Ok(blocked);
        }
    }

    /// Writes `status` over `old` (the status the run started from), only
    /// when it changed; fields `old` had and `status` lacks are cleared.
    async fn write_status(&self, pool: &ThinPool, old: &ThinPoolStatus, status: ThinPoolStatus) -> Result<(), NodeError> {
        if &status == old {
            return Ok(());
        }
        let name = pool.metadata.name.as_deref().unwrap_or(&self.object);
        self.pools.patch_status(name, &PatchParams::default(), &Patch::Merge(status.merge_patch_from(old))).await?;
        Ok(())
    }

    async fn event(&self, pool: &ThinPool, type_: EventType, reason: &str, note: &str) {
        let reference: ObjectReference = pool.object_ref(&());
        let event = Event { type_, reason: reason.into(), note: Some(note.chars().take(1000).collect()), action: "Reconcile".into(), secondary: None };
        if let Err(e) = self.recorder.publish(&event, &reference).await {
            warn!(error = %e, reason, "could not publish event");
        }
    }
}

/// The test hooks' crash: SIGKILL to ourselves, no cleanup, as in a crash.
pub(crate) fn die() {
    // SAFETY: a plain syscall; the process dies here.
    unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
}

fn annotation(pool: &ThinPool, key: &str) -> Option<String> {
    pool.metadata.annotations.as_ref()?.get(key).cloned()
}

/// True the first time `what` is asked for in this boot of the machine.
pub(crate) fn fire_once(what: &str) -> bool {
    let marker = std::path::Path::new("/run").join(format!("thin-csi-test-hook-{what}"));
    std::fs::OpenOptions::new().write(true).create_new(true).open(marker).is_ok()
}

/// The node's engine observer: times each commit (Start → Resumed) and its
/// phases (the metrics) and carries the kill-at test hook.
struct KillAt(Option<(thinpool::Boundary, u64)>, Option<std::time::Instant>, crate::observe::PhaseClock);

impl KillAt {
    fn parse(spec: Option<&str>) -> KillAt {
        let parsed = spec.and_then(|s| {
            let (boundary, txn) = s.split_once('@')?;
            let boundary = match boundary {
                "start" => thinpool::Boundary::Start,
                "suspended" => thinpool::Boundary::Suspended,
                "txn-set" => thinpool::Boundary::TransactionIdSet,
                "resumed" => thinpool::Boundary::Resumed,
                other => thinpool::Boundary::Posted { index: other.strip_prefix("posted-")?.parse().ok()? },
            };
            Some((boundary, txn.parse().ok()?))
        });
        KillAt(parsed, None, Default::default())
    }
}

impl thinpool::Observer for KillAt {
    fn reached(&mut self, txn: TransactionId, boundary: thinpool::Boundary) {
        self.2.reached(txn, boundary);
        match boundary {
            thinpool::Boundary::Start => self.1 = Some(std::time::Instant::now()),
            thinpool::Boundary::Resumed => {
                if let Some(start) = self.1.take() {
                    info!(%txn, micros = start.elapsed().as_micros() as u64, "transaction committed");
                }
            }
            _ => {}
        }
        if self.0 == Some((boundary, txn.get())) && fire_once(&format!("kill-{}", txn.get())) {
            error!(%txn, ?boundary, "test hook: killing the node process");
            die();
        }
    }
}

/// The status after a run: the last transaction that ended in order, the
/// aborted ones (with why) still listed in the spec, the kernel's id, and
/// the error that stopped the run (none when it completed: cleared).
pub fn next_status(old: &ThinPoolStatus, pool: &ThinPool, finished: &TransactionId, progress: &Progress) -> ThinPoolStatus {
    let finished = progress.ended.last().map_or(*finished, |(n, _)| *n);
    let still_pending: Vec<u64> = pool.spec.pending_transactions.iter().map(|p| p.id).collect();
    let mut aborted: Vec<AbortedTransaction> = old.aborted_transactions.iter().filter(|a| still_pending.contains(&a.id)).cloned().collect();
    for (n, ended) in &progress.ended {
        if let Ended::Aborted { kind, reason } = ended {
            // A reason recorded earlier beats one found again after a lost report.
            if aborted.iter().all(|a| a.id != n.get()) {
                aborted.push(AbortedTransaction { id: n.get(), reason: (*kind).into(), message: reason.clone() });
            }
        }
    }
    aborted.sort_by_key(|a| a.id);
    ThinPoolStatus {
        kernel_transaction: Some(progress.kernel_at.get()),
        finished_transaction: Some(finished.get()),
        aborted_transactions: aborted,
        health: Some(old.health.unwrap_or(PoolHealth::Healthy)),
        last_error: progress.stopped.as_ref().map(ToString::to_string),
        ..old.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use thinpool::{AbortKind, Operation, PoolRecord, ThinId, Transaction};

    fn t(i: u32) -> ThinId {
        ThinId::new(i.into()).unwrap()
    }

    fn txn(n: u64, ops: Vec<Operation>) -> Transaction {
        Transaction::new(TransactionId::new(n), ops).unwrap()
    }

    /// The set follows commits and aborts after its listing, skips what
    /// the listing already saw, and reports merged ranges at the kernel's id.
    #[test]
    fn the_device_set_follows_ended_transactions() {
        let mut set = DeviceSet::listed([t(0), t(1), t(5)].into(), TransactionId::new(3));
        let record = PoolRecord {
            finished: TransactionId::new(2),
            pending: vec![
                txn(3, vec![Operation::Delete { id: t(0) }]),
                txn(4, vec![Operation::CreateThin { id: t(2) }]),
                txn(5, vec![Operation::CreateSnapshot { id: t(3), origin: t(2) }, Operation::Delete { id: t(1) }]),
                txn(6, vec![Operation::CreateThin { id: t(4) }]),
            ],
        };
        let aborted = Ended::Aborted { kind: AbortKind::NoSpace, reason: "ENOSPC".into() };
        let ended = [
            (TransactionId::new(3), Ended::Committed), // seen by the listing: 0 stays as listed
            (TransactionId::new(4), Ended::Committed),
            (TransactionId::new(5), Ended::Committed),
            (TransactionId::new(6), aborted),
        ];
        set.apply(&record, &ended, TransactionId::new(6));
        let mut status = ThinPoolStatus::default();
        set.report(&mut status);
        assert_eq!(thin_csi_api::pool::range_ids(&status.devices).map(ThinId::get).collect::<Vec<_>>(), vec![0, 2, 3, 5]);
        assert_eq!(status.devices_transaction, Some(6));
        // Never listed: nothing is reported, whatever ends.
        let mut unknown = DeviceSet::default();
        unknown.apply(&record, &ended, TransactionId::new(6));
        let mut status = ThinPoolStatus::default();
        unknown.report(&mut status);
        assert_eq!((status.devices.len(), status.devices_transaction), (0, None));
    }
}
