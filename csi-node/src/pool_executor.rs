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

/// The longest the node goes without reading the pool's status (no-flush)
/// when no device-mapper event comes: usage raises no event.
pub const HEALTH_INTERVAL: Duration = Duration::from_secs(10);

/// A usage change written without a mode change: one part in this many of
/// the total (data or metadata), so I/O does not turn into status writes.
const USAGE_STEP: u64 = 100;
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

    /// Watches the pool object and reconciles on every spec change; between
    /// them, refreshes the pool's mode and usage on every device-mapper
    /// event of the pool and at least every [`HEALTH_INTERVAL`]
    /// ([`Self::refresh_health`]). One loop: the status has one writer.
    pub async fn run(self) -> Result<(), NodeError> {
        let config = watcher::Config::default().fields(&format!("metadata.name={}", self.object));
        let mut changes = watcher(self.pools.clone(), config).default_backoff().applied_objects().boxed();
        let mut health = self.watch_events()?;
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
                Some(()) = health.recv() => {
                    if let Err(e) = self.refresh_health().await {
                        warn!(error = %e, "pool health refresh failed; next event or interval retries");
                    }
                    continue;
                }
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
                let usage = read_usage(&k);
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
            if let Some(usage) = usage {
                apply_usage(&mut status, &usage);
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
    /// A new pool mode is announced once written (Events on the pool and
    /// on the PVCs of its volumes).
    async fn write_status(&self, pool: &ThinPool, old: &ThinPoolStatus, status: ThinPoolStatus) -> Result<(), NodeError> {
        if &status == old {
            return Ok(());
        }
        let name = pool.metadata.name.as_deref().unwrap_or(&self.object);
        self.pools.patch_status(name, &PatchParams::default(), &Patch::Merge(status.merge_patch_from(old))).await?;
        if let Some((type_, reason, note)) = mode_change(old.mode, status.mode) {
            warn!(pool = %self.object, from = ?old.mode, to = ?status.mode, "pool mode changed");
            self.event(pool, type_, reason, &note).await;
            self.pvc_events(type_, reason, &note).await;
        }
        Ok(())
    }

    /// Starts the thread that waits for the pool's device-mapper events
    /// (thinpool-dm `PoolEvents`: its own control handle, never the pool
    /// lock) and sends a tick on each, and at least every [`HEALTH_INTERVAL`].
    fn watch_events(&self) -> Result<tokio::sync::mpsc::Receiver<()>, NodeError> {
        let mut events = self.kernel.lock().unwrap_or_else(|p| p.into_inner()).events().map_err(|e| kernel_err(&self.object, e))?;
        info!(pool = %self.object, events = events.uses_events(), "watching the pool's device-mapper events");
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let object = self.object.clone();
        std::thread::Builder::new()
            .name("pool-events".into())
            .spawn(move || loop {
                if let Err(e) = events.wait(HEALTH_INTERVAL) {
                    warn!(pool = %object, error = %e, "waiting for pool events");
                    std::thread::sleep(HEALTH_INTERVAL);
                }
                // Full: a refresh is already due, which reads the latest.
                if let Err(tokio::sync::mpsc::error::TrySendError::Closed(())) = tx.try_send(()) {
                    return;
                }
            })
            .map_err(|e| kernel_err(&self.object, e))?;
        Ok(rx)
    }

    /// Reads the pool's mode and usage (status with no-flush) and writes
    /// them when the mode changed or usage moved by a step ([`USAGE_STEP`]).
    async fn refresh_health(&self) -> Result<(), NodeError> {
        let kernel = self.kernel.clone();
        let usage = tokio::task::spawn_blocking(move || read_usage(&kernel.lock().unwrap_or_else(|p| p.into_inner())))
            .await
            .map_err(|e| kernel_err(&self.object, e))?;
        let Some(usage) = usage else { return Err(kernel_err(&self.object, "the kernel reports the pool failed")) };
        let Some(pool) = self.pools.get_opt(&self.object).await? else { return Ok(()) };
        let old = pool.status.clone().unwrap_or_default();
        let mut status = old.clone();
        apply_usage(&mut status, &usage);
        crate::observe::pool_gauges(&self.object, &status);
        if worth_writing(&old, &status) {
            self.write_status(&pool, &old, status).await?;
        }
        Ok(())
    }

    /// Events on the PVCs whose volumes are on this pool (the ThinVolume
    /// annotations the controller records from csi-provisioner's
    /// `--extra-create-metadata` parameters).
    async fn pvc_events(&self, type_: EventType, reason: &str, note: &str) {
        use csi_contract::keys::{ANN_PVC_NAME, ANN_PVC_NAMESPACE};
        let volumes: Api<ThinVolume> = Api::all(self.pools.clone().into_client());
        let on_pool = ListParams::default().labels(&format!("{}={}", thin_csi_api::LABEL_POOL, self.object));
        let list = match volumes.list(&on_pool).await {
            Ok(l) => l,
            Err(e) => return warn!(error = %e, "listing the pool's volumes for PVC events"),
        };
        for v in list.items {
            let ann = v.metadata.annotations.unwrap_or_default();
            let (Some(name), Some(namespace)) = (ann.get(ANN_PVC_NAME), ann.get(ANN_PVC_NAMESPACE)) else { continue };
            let reference = ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("PersistentVolumeClaim".into()),
                name: Some(name.clone()),
                namespace: Some(namespace.clone()),
                ..Default::default()
            };
            let note = format!("volume {} on pool {}: {note}", v.spec.csi_name, self.object);
            let event = Event { type_, reason: reason.into(), note: Some(note), action: "PoolModeChanged".into(), secondary: None };
            if let Err(e) = self.recorder.publish(&event, &reference).await {
                warn!(error = %e, pvc = %name, namespace = %namespace, "could not publish a PVC event");
            }
        }
    }

    async fn event(&self, pool: &ThinPool, type_: EventType, reason: &str, note: &str) {
        let reference: ObjectReference = pool.object_ref(&());
        let event = Event { type_, reason: reason.into(), note: Some(note.chars().take(1000).collect()), action: "Reconcile".into(), secondary: None };
        if let Err(e) = self.recorder.publish(&event, &reference).await {
            warn!(error = %e, reason, "could not publish event");
        }
    }
}

/// The pool's working status with the sizes to turn it into bytes: block
/// size and the metadata area's length. None when the pool has failed.
type Usage = (thinpool::WorkingStatus, thinpool::Sectors, thinpool::Sectors);

fn read_usage(k: &DmPool) -> Option<Usage> {
    k.pool_status().ok().and_then(|s| s.working().cloned()).map(|w| (w, k.block_size(), k.metadata_area().len))
}

/// Mode and usage in bytes into `status`.
fn apply_usage(status: &mut ThinPoolStatus, (w, block, meta_len): &Usage) {
    status.data_used_bytes = Some(w.data.used * block.bytes());
    status.data_total_bytes = Some(w.data.total * block.bytes());
    status.metadata_used_bytes = Some(w.metadata.used * 4096);
    status.metadata_total_bytes = Some(w.metadata.total.max(meta_len.bytes() / 4096) * 4096);
    status.mode = Some(PoolMode::of(w));
}

/// Whether a health refresh writes: the mode changed, a total changed (a
/// resize), or a usage moved by at least one [`USAGE_STEP`]th of its total.
pub fn worth_writing(old: &ThinPoolStatus, new: &ThinPoolStatus) -> bool {
    let moved = |used: (Option<u64>, Option<u64>), total: Option<u64>| match (used, total) {
        ((Some(a), Some(b)), Some(t)) => a.abs_diff(b) >= (t / USAGE_STEP).max(1),
        _ => used.0 != used.1,
    };
    old.mode != new.mode
        || old.data_total_bytes != new.data_total_bytes
        || old.metadata_total_bytes != new.metadata_total_bytes
        || moved((old.data_used_bytes, new.data_used_bytes), new.data_total_bytes)
        || moved((old.metadata_used_bytes, new.metadata_used_bytes), new.metadata_total_bytes)
}

/// The Event a mode change raises: a Warning naming the new adverse mode,
/// or Normal `PoolReadWrite` when the pool is back to read/write. Nothing
/// on the first report of a read/write pool.
pub fn mode_change(old: Option<PoolMode>, new: Option<PoolMode>) -> Option<(EventType, &'static str, String)> {
    let new = new?;
    if old == Some(new) || (old.is_none() && new == PoolMode::ReadWrite) {
        return None;
    }
    let condition = csi_contract::volume_health::PoolCondition::of_mode(new);
    Some(match condition {
        Some(c) => {
            let (_, reason, message) = c.parts();
            (EventType::Warning, reason, message)
        }
        None => (EventType::Normal, "PoolReadWrite", format!("the thin pool is read/write again (was {})", old.map(mode_name).unwrap_or("unknown"))),
    })
}

fn mode_name(m: PoolMode) -> &'static str {
    match m {
        PoolMode::ReadWrite => "rw",
        PoolMode::OutOfDataSpace => "out_of_data_space",
        PoolMode::ReadOnly => "read-only",
        PoolMode::NeedsCheck => "needs_check",
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

    #[test]
    fn a_mode_change_raises_one_event_and_the_first_rw_report_none() {
        assert!(mode_change(None, Some(PoolMode::ReadWrite)).is_none());
        assert!(mode_change(Some(PoolMode::ReadWrite), Some(PoolMode::ReadWrite)).is_none());
        assert!(mode_change(Some(PoolMode::ReadWrite), None).is_none());
        let (t, reason, note) = mode_change(Some(PoolMode::ReadWrite), Some(PoolMode::OutOfDataSpace)).unwrap();
        assert_eq!((t, reason), (EventType::Warning, "PoolOutOfDataSpace"));
        assert!(note.contains("out of data space"), "{note}");
        assert_eq!(mode_change(None, Some(PoolMode::NeedsCheck)).unwrap().1, "PoolNeedsCheck");
        let (t, reason, note) = mode_change(Some(PoolMode::OutOfDataSpace), Some(PoolMode::ReadWrite)).unwrap();
        assert_eq!((t, reason), (EventType::Normal, "PoolReadWrite"));
        assert!(note.contains("was out_of_data_space"), "{note}");
    }

    #[test]
    fn usage_is_written_by_steps_and_mode_or_size_at_once() {
        let s = |used: u64, total: u64, mode: PoolMode| ThinPoolStatus {
            data_used_bytes: Some(used),
            data_total_bytes: Some(total),
            metadata_used_bytes: Some(1),
            metadata_total_bytes: Some(100),
            mode: Some(mode),
            ..Default::default()
        };
        let rw = PoolMode::ReadWrite;
        assert!(!worth_writing(&s(100, 10_000, rw), &s(199, 10_000, rw)));
        assert!(worth_writing(&s(100, 10_000, rw), &s(200, 10_000, rw)));
        assert!(worth_writing(&s(100, 10_000, rw), &s(100, 20_000, rw)), "a resize");
        assert!(worth_writing(&s(100, 10_000, rw), &s(101, 10_000, PoolMode::OutOfDataSpace)));
        assert!(worth_writing(&ThinPoolStatus::default(), &s(0, 10_000, rw)), "the first report");
    }

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
