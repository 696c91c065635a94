//! The controller ↔ node protocol end to end, against a real kube-apiserver
//! (KUBECONFIG) and csi-node running in qemu VMs (e2e/suites/cluster-nodes.sh).
//! Each subcommand prints `PASS name` / `FAIL name (why)` lines.
//!
//!   node_e2e pools NODE...                 wait for each node's ThinPool object; prints `POOL node name`
//!   node_e2e lifecycle POOL OTHER LEDGER   create, snapshot, delete through the API; OTHER untouched
//!   node_e2e crash POOL BOUNDARY LEDGER    node SIGKILLed at BOUNDARY of the next transaction; it converges
//!   node_e2e crash-abort POOL              node SIGKILLed after aborting a snapshot of a missing origin, before its
//!                                          status; after the restart the transaction is reported aborted
//!   node_e2e record-only POOL LEDGER       record a transaction and exit at once (a controller killed before the status)
//!   node_e2e converge POOL                 every recorded transaction ends
//!   node_e2e concurrent POOL N LEDGER      N allocations from 4 tasks; all end; the kernel at the last one
//!   node_e2e diverge POOL                  kernel id moved behind our back → Unhealthy, an Event, no more transactions
//!   node_e2e bench POOL N                  BENCH snapshot-api (record → node → kernel → status → watch)
//!   node_e2e cross-node PORT A B           restore/clone placement with two node VMs, through csi-controller's gRPC
//!   node_e2e ctl-steps                     print csi-controller's failpoint steps (failpoint::STEPS), one line
//!   node_e2e ctl-request PORT NODE_PORT STEP NAME NODE IDS
//!                                          a CreateVolume / CreateSnapshot / DeleteVolume / DeleteSnapshot /
//!                                          ControllerExpandVolume (by STEP's prefix) to a csi-controller that SIGKILLs
//!                                          itself at STEP (failpoints build); the call must fail. NODE_PORT: NODE's
//!                                          csi-node gRPC (an expanded volume is staged there as raw block)
//!   node_e2e ctl-retry PORT NODE_PORT STEP NAME NODE POOL IDS
//!                                          the same request to the restarted controller: succeeds with the same device
//!                                          (expand: the new size answered, in the API and, after what the CO does
//!                                          next, in the kernel's active device)
//!   node_e2e node-expand-crash PORT NODE_PORT NAME NODE IDS
//!                                          csi-node killed in NodeExpandVolume of a mounted volume between the
//!                                          device resize and the filesystem grow; the retry grows the filesystem
//!   node_e2e ctl-cleanup PORT POOL IDS     delete what the runs made; no device in two objects
//!   node_e2e stop POOL...                  ask the nodes to exit (test hook)
//!   node_e2e unstop POOL                   remove the stop hook, for a node booted again on the same object
//!   node_e2e compare LEDGER DEVICES_LINE   the kernel's devices equal the ledger's
//!   node_e2e forget POOL FILE              save the pool object to FILE, then delete it (a record lost by hand)
//!   node_e2e unverified POOL FILE          the node re-created the object: devicesUnknownAtTransaction, Unhealthy,
//!                                          a PoolRecordUnverified Event, allocations refused, nothing recorded
//!   node_e2e adopt POOL FILE LEDGER DEVICES_LINE
//!                                          adopt per docs/operations.md from the saved spec; a new volume gets a fresh id
//!
//! The LEDGER file tracks what committed: `+id` for a create, `-id` for a delete.

use std::collections::BTreeSet;
use std::io::Write;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use csi_controller::wait::{wait_finished, Finished};
use csi_controller::{AllocError, Allocator, Request};
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::Client;
use report::Report;
use serde_json::json;
use thin_csi_api::{hooks, PoolHealth, ThinPool, ThinPoolSpec};
use thinpool::{ThinId, Transaction};

type Result<T> = std::result::Result<T, String>;
const WAIT: Duration = Duration::from_secs(90);

struct Ctx {
    client: Client,
    pools: Api<ThinPool>,
    alloc: Allocator,
}

impl Ctx {
    /// Records `requests` and waits for the node to finish the transaction.
    async fn run(&self, pool: &str, requests: &[Request]) -> Result<(Transaction, Finished)> {
        let a = self.alloc.allocate(pool, requests).await.map_err(|e| e.to_string())?;
        let n = a.transaction.id().get();
        let done = wait_finished(&self.pools, pool, n, WAIT).await.map_err(|e| e.to_string())?;
        Ok((a.transaction, done))
    }

    async fn committed(&self, pool: &str, requests: &[Request], ledger: &str) -> Result<Transaction> {
        match self.run(pool, requests).await? {
            (txn, Finished::Committed) => {
                write_ledger(ledger, &txn)?;
                Ok(txn)
            }
            (txn, Finished::Aborted(a)) => Err(format!("transaction {} aborted: {a:?}", txn.id())),
        }
    }

    async fn status(&self, pool: &str) -> Result<thin_csi_api::ThinPoolStatus> {
        let p = self.pools.get(pool).await.map_err(|e| e.to_string())?;
        Ok(p.status.unwrap_or_default())
    }

    async fn annotate(&self, pool: &str, key: &str, value: &str) -> Result<()> {
        let patch = json!({ "metadata": { "annotations": { key: value } } });
        self.pools.patch(pool, &PatchParams::default(), &Patch::Merge(patch)).await.map_err(|e| e.to_string())?;
        Ok(())
    }
}

fn write_ledger(path: &str, txn: &Transaction) -> Result<()> {
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path).map_err(|e| e.to_string())?;
    for id in txn.created_ids() {
        writeln!(f, "+{id}").map_err(|e| e.to_string())?;
    }
    for id in txn.deleted_ids() {
        writeln!(f, "-{id}").map_err(|e| e.to_string())?;
    }
    Ok(())
}

fn read_ledger(path: &str) -> Result<BTreeSet<u32>> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut live = BTreeSet::new();
    for line in text.lines() {
        let (sign, id) = line.split_at(1);
        let id: u32 = id.parse().map_err(|_| format!("bad ledger line {line:?}"))?;
        if sign == "+" {
            live.insert(id);
        } else {
            live.remove(&id);
        }
    }
    Ok(live)
}

fn any_live(ledger: &str) -> Result<ThinId> {
    let live = read_ledger(ledger)?;
    let id = live.iter().next().ok_or("no live device in the ledger")?;
    ThinId::new((*id).into()).map_err(|e| e.to_string())
}

async fn pools(ctx: &Ctx, nodes: &[&str]) -> Result<String> {
    let start = Instant::now();
    let mut found = Vec::new();
    for node in nodes {
        loop {
            let list = ctx.pools.list(&ListParams::default()).await.map_err(|e| e.to_string())?;
            // A pool the node registered (it wrote a kernel transaction id),
            // not a record some other test made up for this node name.
            let registered = |p: &&ThinPool| p.spec.node == *node && p.status.as_ref().is_some_and(|s| s.kernel_transaction.is_some());
            if let Some(p) = list.items.iter().filter(registered).max_by_key(|p| p.metadata.creation_timestamp.clone()) {
                let name = p.metadata.name.clone().unwrap_or_default();
                println!("POOL {node} {name}");
                found.push(name);
                break;
            }
            if start.elapsed() > WAIT {
                return Err(format!("no ThinPool for node {node} after {WAIT:?}"));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    Ok(format!("{} pools registered by their nodes", found.len()))
}

async fn lifecycle(ctx: &Ctx, pool: &str, other: &str, ledger: &str) -> Result<String> {
    let other_before = ctx.status(other).await?.finished_transaction;
    let thin = ctx.committed(pool, &[Request::CreateThin], ledger).await?;
    let origin = thin.created_ids().next().ok_or("no id created")?;
    let snap = ctx.committed(pool, &[Request::CreateSnapshot { origin }], ledger).await?;
    let snap_id = snap.created_ids().next().ok_or("no snapshot id")?;
    let group = ctx.committed(pool, &[Request::CreateSnapshot { origin }, Request::CreateSnapshot { origin: snap_id }, Request::CreateThin], ledger).await?;
    let del = ctx.committed(pool, &[Request::Delete { id: snap_id }], ledger).await?;
    let status = ctx.status(pool).await?;
    if status.kernel_transaction != Some(del.id().get()) {
        return Err(format!("kernel at {:?}, expected {}", status.kernel_transaction, del.id()));
    }
    let other_after = ctx.status(other).await?.finished_transaction;
    if other_before != other_after {
        return Err(format!("the other node's pool moved: {other_before:?} → {other_after:?}"));
    }
    Ok(format!("transactions {}..={} committed on {pool}; {other} untouched", thin.id(), group.id().get().max(del.id().get())))
}

async fn crash(ctx: &Ctx, pool: &str, boundary: &str, ledger: &str) -> Result<String> {
    let next = ctx.pools.get(pool).await.map_err(|e| e.to_string())?.spec.last_assigned_transaction + 1;
    ctx.annotate(pool, hooks::KILL_AT, &format!("{boundary}@{next}")).await?;
    let origin = any_live(ledger)?;
    let txn = ctx.committed(pool, &[Request::CreateSnapshot { origin }, Request::CreateThin], ledger).await?;
    if txn.id().get() != next {
        return Err(format!("expected transaction {next}, got {}", txn.id()));
    }
    let status = ctx.status(pool).await?;
    if status.kernel_transaction != Some(next) || status.health == Some(PoolHealth::Unhealthy) {
        return Err(format!("after the restart: {status:?}"));
    }
    Ok(format!("node killed at {boundary} of transaction {next}, restarted, committed"))
}

/// A transaction the kernel aborts (a snapshot of a device the pool does
/// not hold: ENODATA), the node SIGKILLed after the abort and before its
/// status write (KILL_AT `unreported`). The record is written by hand, as
/// the allocator would never name a missing origin.
async fn crash_abort(ctx: &Ctx, pool: &str) -> Result<String> {
    const MISSING: u32 = thinpool::ThinId::MAX.get(); // never allocated in these tests
    let next = ctx.pools.get(pool).await.map_err(|e| e.to_string())?.spec.last_assigned_transaction + 1;
    ctx.annotate(pool, hooks::KILL_AT, &format!("{}@{next}", hooks::UNREPORTED)).await?;
    let mut conflicts = 0;
    let created = loop {
        let mut obj = ctx.pools.get(pool).await.map_err(|e| e.to_string())?;
        if obj.spec.last_assigned_transaction + 1 != next {
            return Err(format!("someone else assigned transaction {next}"));
        }
        // Plan a create, then make it a snapshot of the missing device.
        let plan = csi_controller::plan(&obj, &[Request::CreateThin]).map_err(|e| e.to_string())?;
        obj.spec = plan.spec;
        let op = &mut obj.spec.pending_transactions.last_mut().ok_or("nothing planned")?.operations[0];
        op.op = thin_csi_api::OperationKind::CreateSnapshot;
        op.origin = Some(thinpool::ThinId::MAX);
        match ctx.pools.replace(pool, &PostParams::default(), &obj).await {
            Ok(_) => break plan.created,
            Err(kube::Error::Api(e)) if e.code == 409 && conflicts < 20 => conflicts += 1,
            Err(e) => return Err(e.to_string()),
        }
    };
    let done = wait_finished(&ctx.pools, pool, next, WAIT).await.map_err(|e| e.to_string())?;
    let aborted = match done {
        Finished::Aborted(a) => a,
        Finished::Committed => return Err(format!("transaction {next} (snapshot {created:?} of missing device {MISSING}) reported committed")),
    };
    use thin_csi_api::AbortReason;
    if !matches!(aborted.reason, AbortReason::OriginMissing | AbortReason::ReasonLost) {
        return Err(format!("transaction {next} aborted with reason {:?}: {}", aborted.reason, aborted.message));
    }
    // What CreateSnapshot would answer: an error, never a snapshot.
    let answer = csi_controller::status::Error::TransactionAborted { pool: pool.into(), what: "snapshot", txn: next, reason: aborted.reason, message: aborted.message.clone() };
    if answer.code() == tonic::Code::Ok {
        return Err("an aborted create maps to OK".into());
    }
    let status = ctx.status(pool).await?;
    if status.kernel_transaction != Some(next) || status.health == Some(PoolHealth::Unhealthy) || status.aborted(next).is_none() {
        return Err(format!("after the restart: {status:?}"));
    }
    Ok(format!("transaction {next} aborted ({:?}), reported after the restart; CreateSnapshot would answer {:?}", aborted.reason, answer.code()))
}

async fn record_only(ctx: &Ctx, pool: &str, ledger: &str) -> Result<String> {
    let a = ctx.alloc.allocate(pool, &[Request::CreateThin]).await.map_err(|e| e.to_string())?;
    // The ledger learns it only if it commits; `converge` checks that.
    std::fs::write(format!("{ledger}.unconfirmed"), format!("{}\n", a.transaction.id())).map_err(|e| e.to_string())?;
    write_ledger(&format!("{ledger}.pending"), &a.transaction)?;
    println!("RECORDED {}", a.transaction.id());
    // Linger, to be killed (SIGKILL) by the harness before it sees any status.
    tokio::time::sleep(Duration::from_secs(60)).await;
    Err("not killed".into())
}

async fn converge(ctx: &Ctx, pool: &str, ledger: &str) -> Result<String> {
    let n: u64 = std::fs::read_to_string(format!("{ledger}.unconfirmed")).map_err(|e| e.to_string())?.trim().parse().map_err(|_| "bad txn")?;
    match wait_finished(&ctx.pools, pool, n, WAIT).await.map_err(|e| e.to_string())? {
        Finished::Committed => {
            let pending = std::fs::read_to_string(format!("{ledger}.pending")).map_err(|e| e.to_string())?;
            let mut f = std::fs::OpenOptions::new().append(true).create(true).open(ledger).map_err(|e| e.to_string())?;
            f.write_all(pending.as_bytes()).map_err(|e| e.to_string())?;
            Ok(format!("transaction {n}, recorded by a controller that died, committed"))
        }
        Finished::Aborted(a) => Err(format!("aborted: {a:?}")),
    }
}

async fn concurrent(ctx: &Ctx, pool: &str, count: usize, ledger: &str) -> Result<String> {
    let per_task = count.div_ceil(4);
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let alloc = ctx.alloc.clone();
        let pool = pool.to_string();
        tasks.push(tokio::spawn(async move {
            let mut txns = Vec::new();
            for _ in 0..per_task {
                txns.push(alloc.allocate(&pool, &[Request::CreateThin]).await.map_err(|e| e.to_string())?.transaction);
            }
            Ok::<_, String>(txns)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.map_err(|e| e.to_string())??);
    }
    all.sort_by_key(Transaction::id);
    let last = all.last().ok_or("nothing allocated")?.id().get();
    let ids: BTreeSet<ThinId> = all.iter().flat_map(|t| t.created_ids().collect::<Vec<_>>()).collect();
    if ids.len() != all.len() {
        return Err(format!("{} transactions but {} distinct device ids", all.len(), ids.len()));
    }
    let dense = all.windows(2).all(|w| w[1].id().get() == w[0].id().get() + 1);
    if !dense {
        return Err("transaction ids are not dense".into());
    }
    match wait_finished(&ctx.pools, pool, last, WAIT).await.map_err(|e| e.to_string())? {
        Finished::Committed => {}
        other => return Err(format!("last transaction {last}: {other:?}")),
    }
    let status = ctx.status(pool).await?;
    if status.kernel_transaction != Some(last) || !status.aborted_transactions.is_empty() {
        return Err(format!("kernel at {:?}, aborted {:?}; expected {last}", status.kernel_transaction, status.aborted_transactions));
    }
    for t in &all {
        write_ledger(ledger, t)?;
    }
    Ok(format!("{} allocations, ids unique, transactions {}..={last} dense, kernel at {last}", all.len(), all[0].id()))
}

async fn diverge(ctx: &Ctx, pool: &str) -> Result<String> {
    ctx.annotate(pool, hooks::TAMPER, "true").await?;
    let start = Instant::now();
    loop {
        let status = ctx.status(pool).await?;
        if status.health == Some(PoolHealth::Unhealthy) {
            let events: Api<Event> = Api::default_namespaced(ctx.client.clone());
            let list = events.list(&ListParams::default()).await.map_err(|e| e.to_string())?;
            let raised = list.items.iter().any(|e| e.reason.as_deref() == Some("PoolDiverged") && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(pool));
            if !raised {
                return Err("pool unhealthy but no PoolDiverged event".into());
            }
            return match ctx.alloc.allocate(pool, &[Request::CreateThin]).await {
                Err(e) if e.to_string().contains("unhealthy") => Ok(format!("unhealthy ({}), event raised, allocation refused", status.last_error.unwrap_or_default())),
                other => Err(format!("allocation on an unhealthy pool: {other:?}")),
            };
        }
        if start.elapsed() > WAIT {
            return Err(format!("pool not marked unhealthy: {status:?}"));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn bench(ctx: &Ctx, pool: &str, reps: usize) -> Result<String> {
    let ledger = "/dev/null";
    let origin = ctx.committed(pool, &[Request::CreateThin], ledger).await?.created_ids().next().ok_or("no id")?;
    let (mut us, mut record_us) = (Vec::new(), Vec::new());
    for _ in 0..reps {
        let start = Instant::now();
        let a = ctx.alloc.allocate(pool, &[Request::CreateSnapshot { origin }]).await.map_err(|e| e.to_string())?;
        record_us.push(start.elapsed().as_micros() as u64);
        match wait_finished(&ctx.pools, pool, a.transaction.id().get(), WAIT).await.map_err(|e| e.to_string())? {
            Finished::Committed => {}
            other => return Err(format!("snapshot transaction {}: {other:?}", a.transaction.id())),
        }
        us.push(start.elapsed().as_micros() as u64);
        let snap = a.transaction;
        let id = snap.created_ids().next().ok_or("no id")?;
        ctx.committed(pool, &[Request::Delete { id }], ledger).await?;
    }
    ctx.committed(pool, &[Request::Delete { id: origin }], ledger).await?;
    print_bench("snapshot-api", us);
    print_bench("snapshot-api-record", record_us);
    Ok(String::new())
}

/// Restore and clone stay on the source's node: a requisite topology that
/// excludes it is refused (RESOURCE_EXHAUSTED naming the node); one that
/// includes it places the volume there even when another node is preferred.
async fn cross_node(port: &str, a: &str, b: &str) -> Result<String> {
    use csi_proto::v1::controller_client::ControllerClient;
    use csi_proto::v1::volume_capability::{access_mode::Mode, AccessMode, AccessType, MountVolume};
    use csi_proto::v1::volume_content_source::{SnapshotSource, Type as Source, VolumeSource};
    use csi_proto::v1::*;
    const KEY: &str = "topology.thin.csi.io/node";
    let topo = |n: &str| Topology { segments: [(KEY.to_string(), n.to_string())].into() };
    let req = |name: &str, requisite: &[&str], preferred: &[&str], source: Option<Source>| CreateVolumeRequest {
        name: name.into(),
        capacity_range: Some(CapacityRange { required_bytes: 64 << 20, limit_bytes: 0 }),
        volume_capabilities: vec![VolumeCapability {
            access_type: Some(AccessType::Mount(MountVolume::default())),
            access_mode: Some(AccessMode { mode: Mode::SingleNodeWriter as i32 }),
        }],
        accessibility_requirements: Some(TopologyRequirement {
            requisite: requisite.iter().map(|n| topo(n)).collect(),
            preferred: preferred.iter().map(|n| topo(n)).collect(),
        }),
        volume_content_source: source.map(|t| VolumeContentSource { r#type: Some(t) }),
        ..Default::default()
    };
    let node_of = |v: &Volume| v.accessible_topology.first().and_then(|t| t.segments.get(KEY).cloned()).unwrap_or_default();
    let mut c = ControllerClient::connect(format!("http://127.0.0.1:{port}")).await.map_err(|e| e.to_string())?;
    let src = c.create_volume(req("x-src", &[a], &[], None)).await.map_err(|e| e.to_string())?.into_inner().volume.ok_or("no volume")?;
    if node_of(&src) != a {
        return Err(format!("source placed on {:?}, asked for {a}", node_of(&src)));
    }
    let on_b = c.create_volume(req("x-on-b", &[b], &[], None)).await.map_err(|e| format!("a volume on {b}: {e}"))?.into_inner().volume.ok_or("no volume")?;
    if node_of(&on_b) != b {
        return Err(format!("volume for {b} placed on {:?}", node_of(&on_b)));
    }
    let snap = c
        .create_snapshot(CreateSnapshotRequest { source_volume_id: src.volume_id.clone(), name: "x-snap".into(), ..Default::default() })
        .await
        .map_err(|e| e.to_string())?
        .into_inner()
        .snapshot
        .ok_or("no snapshot")?;
    let from_snap = || Some(Source::Snapshot(SnapshotSource { snapshot_id: snap.snapshot_id.clone() }));
    let from_vol = || Some(Source::Volume(VolumeSource { volume_id: src.volume_id.clone() }));
    for (name, source) in [("x-restore-b", from_snap()), ("x-clone-b", from_vol())] {
        match c.create_volume(req(name, &[b], &[], source)).await {
            Err(s) if s.code() == tonic::Code::ResourceExhausted && s.message().contains(a) => {}
            other => return Err(format!("{name} with requisite {b} only: expected RESOURCE_EXHAUSTED naming {a}, got {other:?}")),
        }
    }
    let restored = c.create_volume(req("x-restore", &[a, b], &[b], from_snap())).await.map_err(|e| e.to_string())?.into_inner().volume.ok_or("no volume")?;
    if node_of(&restored) != a {
        return Err(format!("restore preferred on {b} but placed on {:?}; it must stay with its source on {a}", node_of(&restored)));
    }
    for id in [&restored.volume_id, &on_b.volume_id, &src.volume_id] {
        c.delete_volume(DeleteVolumeRequest { volume_id: id.clone(), ..Default::default() }).await.map_err(|e| e.to_string())?;
    }
    c.delete_snapshot(DeleteSnapshotRequest { snapshot_id: snap.snapshot_id.clone(), ..Default::default() }).await.map_err(|e| e.to_string())?;
    Ok(format!("restore and clone refused for {b} (source on {a}), placed on {a} when {b} is only preferred; {b} takes its own volumes"))
}

/// Saves the pool object (as the operator's backup) and deletes it.
async fn forget(ctx: &Ctx, pool: &str, file: &str) -> Result<String> {
    let p = ctx.pools.get(pool).await.map_err(|e| e.to_string())?;
    let json = serde_json::to_string_pretty(&p).map_err(|e| e.to_string())?;
    std::fs::write(file, json).map_err(|e| e.to_string())?;
    ctx.pools.delete(pool, &DeleteParams::default()).await.map_err(|e| e.to_string())?;
    let start = Instant::now();
    while ctx.pools.get_opt(pool).await.map_err(|e| e.to_string())?.is_some() {
        if start.elapsed() > WAIT {
            return Err("the pool object is still there after its delete".into());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!(
        "--- pool object {pool} saved to {file} (uid {:?}, nextDeviceId {}, lastAssignedTransaction {}, {} pending, kernel at {:?}) and deleted",
        p.metadata.uid,
        p.spec.next_device_id,
        p.spec.last_assigned_transaction,
        p.spec.pending_transactions.len(),
        p.status.as_ref().and_then(|s| s.kernel_transaction)
    );
    Ok(String::new())
}

fn read_saved(file: &str) -> Result<ThinPool> {
    serde_json::from_str(&std::fs::read_to_string(file).map_err(|e| e.to_string())?).map_err(|e| e.to_string())
}

/// Prints one check's PASS/FAIL line; returns whether it passed.
fn check(name: &str, result: Result<String>) -> bool {
    let ok = result.is_ok();
    let _ = finish(name, result);
    ok
}

/// The node re-created the object of a pool with history: the record must
/// refuse to hand out ids (before the fixes, it started again at id 0 and
/// gave new volumes the ids of existing ones).
async fn unverified(ctx: &Ctx, pool: &str, file: &str) -> Result<String> {
    let saved = read_saved(file)?;
    let kernel_at = saved.status.as_ref().and_then(|s| s.kernel_transaction).ok_or("the saved object has no kernel transaction")?;
    // The node's new object (another uid), once it has written its verdict.
    let start = Instant::now();
    let obj = loop {
        if let Some(p) = ctx.pools.get_opt(pool).await.map_err(|e| e.to_string())? {
            if p.metadata.uid != saved.metadata.uid && p.status.as_ref().is_some_and(|s| s.health.is_some()) {
                break p;
            }
        }
        if start.elapsed() > Duration::from_secs(240) {
            return Err(format!("no re-created pool object {pool} with a health verdict after 240 s"));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let mut ok = check(
        "re-created pool object records devicesUnknownAtTransaction at the kernel's transaction",
        match obj.spec.devices_unknown_at_transaction {
            Some(at) if at == kernel_at && obj.spec.last_assigned_transaction == kernel_at => {
                Ok(format!("devicesUnknownAtTransaction {at}, nextDeviceId {}", obj.spec.next_device_id))
            }
            other => Err(format!("devicesUnknownAtTransaction {other:?}, lastAssignedTransaction {}, kernel at {kernel_at}", obj.spec.last_assigned_transaction)),
        },
    );
    let status = obj.status.clone().unwrap_or_default();
    let events: Api<Event> = Api::default_namespaced(ctx.client.clone());
    let mut raised = false;
    while !raised && start.elapsed() < Duration::from_secs(240) {
        let list = events.list(&ListParams::default()).await.map_err(|e| e.to_string())?;
        raised = list.items.iter().any(|e| {
            e.reason.as_deref() == Some("PoolRecordUnverified") && e.regarding.as_ref().and_then(|r| r.uid.as_deref()) == obj.metadata.uid.as_deref()
        });
        if !raised {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    ok &= check(
        "re-created pool marked Unhealthy with a PoolRecordUnverified event",
        if status.health == Some(PoolHealth::Unhealthy) && raised {
            Ok(status.last_error.clone().unwrap_or_default().chars().take(80).collect())
        } else {
            Err(format!("health {:?}, event raised {raised}", status.health))
        },
    );
    // The spec alone refuses, whatever the status says (a controller may
    // read the object before the node's verdict).
    let mut bare = obj.clone();
    bare.status = None;
    ok &= check(
        "alloc::plan refuses the unverified record",
        match (csi_controller::plan(&bare, &[Request::CreateThin]), csi_controller::plan(&obj, &[Request::CreateThin])) {
            (Err(AllocError::RecordUnverified { at, .. }), Err(e)) if at == kernel_at => Ok(format!("RecordUnverified at {at}; with the node's status: {e}")),
            (Ok(p), _) | (_, Ok(p)) => Err(format!("planned transaction {} creating {:?}", p.transaction.id(), p.created)),
            (a, b) => Err(format!("unexpected: {a:?} / {b:?}")),
        },
    );
    let refused = ctx.alloc.allocate(pool, &[Request::CreateThin]).await;
    let after = ctx.pools.get(pool).await.map_err(|e| e.to_string())?;
    ok &= check(
        "an allocation on the unverified record is refused and records nothing",
        match refused {
            Err(e) if after.spec == obj.spec && after.metadata.uid == obj.metadata.uid => Ok(format!("{e}")),
            Err(e) => Err(format!("refused ({e}) but the spec changed: {:?} → {:?}", obj.spec, after.spec)),
            Ok(a) => Err(format!("allocated transaction {} creating {:?}: ids the pool may already use", a.transaction.id(), a.created)),
        },
    );
    if ok {
        Ok(String::new())
    } else {
        Err("see the checks above".into())
    }
}

/// Adopts the pool as docs/operations.md says, from the saved object: its
/// spec back without devicesUnknownAtTransaction, status.health cleared;
/// then a new volume must get an id beyond every device the kernel holds.
async fn adopt(ctx: &Ctx, pool: &str, file: &str, ledger: &str, devices: &str) -> Result<String> {
    let saved = read_saved(file)?;
    let kernel: BTreeSet<u32> = devices.split_whitespace().skip(1).map(|s| s.parse().map_err(|_| format!("bad id {s:?}"))).collect::<Result<_>>()?;
    let live = read_ledger(ledger)?;
    // The order of docs/operations.md: the spec first (a node that sees it
    // while the status still says Unhealthy does nothing), then the health.
    let mut obj = ctx.pools.get(pool).await.map_err(|e| e.to_string())?;
    obj.spec = ThinPoolSpec { devices_unknown_at_transaction: None, ..saved.spec.clone() };
    ctx.pools.replace(pool, &PostParams::default(), &obj).await.map_err(|e| e.to_string())?;
    let clear = json!({ "status": { "health": null, "lastError": null } });
    ctx.pools.patch_status(pool, &PatchParams::default(), &Patch::Merge(clear)).await.map_err(|e| e.to_string())?;
    let txn = ctx.committed(pool, &[Request::CreateThin], ledger).await?;
    let id = txn.created_ids().next().ok_or("no id created")?.get();
    let highest = kernel.iter().chain(live.iter()).max().copied();
    if kernel.contains(&id) || live.contains(&id) {
        return Err(format!("transaction {} created device {id}, which the pool already holds (kernel {kernel:?})", txn.id()));
    }
    if highest.is_some_and(|h| id <= h) {
        return Err(format!("transaction {} created device {id}, not beyond the highest existing device {highest:?}", txn.id()));
    }
    let status = ctx.status(pool).await?;
    if status.health == Some(PoolHealth::Unhealthy) {
        return Err(format!("pool unhealthy after adoption: {:?}", status.last_error));
    }
    Ok(format!("transaction {} committed device {id}, beyond the highest existing device {highest:?}", txn.id()))
}

mod ctl {
    use super::*;
    use csi_proto::v1::controller_client::ControllerClient;
    use csi_proto::v1::node_client::NodeClient;
    use csi_proto::v1::volume_capability::{access_mode::Mode, AccessMode, AccessType, BlockVolume, MountVolume};
    use csi_proto::v1::*;
    use thin_csi_api::{ThinSnapshot, ThinVolume};
    use tonic::transport::Channel;

    const KEY: &str = "topology.thin.csi.io/node";
    /// An expand step's volume: created at SMALL, expanded to LARGE.
    const SMALL: i64 = 16 << 20;
    const LARGE: i64 = 32 << 20;

    fn capability(block: bool) -> VolumeCapability {
        VolumeCapability {
            access_type: Some(if block { AccessType::Block(BlockVolume {}) } else { AccessType::Mount(MountVolume::default()) }),
            access_mode: Some(AccessMode { mode: Mode::SingleNodeWriter as i32 }),
        }
    }

    fn volume_req(name: &str, node: &str, block: bool) -> CreateVolumeRequest {
        let topo = Topology { segments: [(KEY.to_string(), node.to_string())].into() };
        CreateVolumeRequest {
            name: name.into(),
            capacity_range: Some(CapacityRange { required_bytes: SMALL, limit_bytes: 0 }),
            volume_capabilities: vec![capability(block)],
            accessibility_requirements: Some(TopologyRequirement { requisite: vec![topo.clone()], preferred: vec![topo] }),
            ..Default::default()
        }
    }

    async fn client(port: &str) -> Result<ControllerClient<Channel>> {
        ControllerClient::connect(format!("http://127.0.0.1:{port}")).await.map_err(|e| e.to_string())
    }

    async fn create_volume(c: &mut ControllerClient<Channel>, name: &str, node: &str) -> std::result::Result<Volume, tonic::Status> {
        c.create_volume(volume_req(name, node, false)).await?.into_inner().volume.ok_or_else(|| tonic::Status::internal("no volume"))
    }

    async fn create_snapshot(c: &mut ControllerClient<Channel>, name: &str, source: &str) -> std::result::Result<Snapshot, tonic::Status> {
        let req = CreateSnapshotRequest { source_volume_id: source.into(), name: name.into(), ..Default::default() };
        c.create_snapshot(req).await?.into_inner().snapshot.ok_or_else(|| tonic::Status::internal("no snapshot"))
    }

    fn expand_req(id: &str) -> ControllerExpandVolumeRequest {
        ControllerExpandVolumeRequest {
            volume_id: id.into(),
            capacity_range: Some(CapacityRange { required_bytes: LARGE, limit_bytes: 0 }),
            volume_capability: Some(capability(true)),
            ..Default::default()
        }
    }

    fn remember(ids: &str, kind: &str, id: &str) -> Result<()> {
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(ids).map_err(|e| e.to_string())?;
        writeln!(f, "{kind} {id}").map_err(|e| e.to_string())
    }

    /// The CSI id the killed call of run `name` worked on.
    fn killed_id(ids: &str, name: &str) -> Result<String> {
        std::fs::read_to_string(format!("{ids}.{name}")).map_err(|e| format!("the killed call's id: {e}"))
    }

    /// The device the API's object for CSI name `name` holds, if any.
    async fn device_of(ctx: &Ctx, snapshot: bool, name: &str) -> Result<Option<u32>> {
        let obj = thin_csi_api::object_name(name);
        Ok(if snapshot {
            Api::<ThinSnapshot>::all(ctx.client.clone()).get_opt(&obj).await.map_err(|e| e.to_string())?.map(|s| s.spec.device_id.get())
        } else {
            Api::<ThinVolume>::all(ctx.client.clone()).get_opt(&obj).await.map_err(|e| e.to_string())?.map(|v| v.spec.device_id.get())
        })
    }

    async fn api_size(ctx: &Ctx, name: &str) -> Result<u64> {
        let obj = thin_csi_api::object_name(name);
        let v = Api::<ThinVolume>::all(ctx.client.clone()).get_opt(&obj).await.map_err(|e| e.to_string())?;
        Ok(v.ok_or_else(|| format!("no ThinVolume {obj}"))?.spec.size_bytes)
    }

    /// csi-node's Node service in the node VM (forwarded to the host's
    /// loopback), for one volume staged as raw block or as a mount.
    struct Node {
        c: NodeClient<Channel>,
        block: bool,
        staging: String,
        target: String,
    }

    impl Node {
        async fn connect(port: &str, name: &str, block: bool) -> Result<Node> {
            let c = NodeClient::connect(format!("http://127.0.0.1:{port}")).await.map_err(|e| format!("csi-node at port {port}: {e}"))?;
            let target = format!("/var/lib/kubelet/e2e/{name}/{}", if block { "dev" } else { "mnt" });
            Ok(Node { c, block, staging: format!("/var/lib/kubelet/e2e/{name}/staging"), target })
        }

        /// NodeStage + NodePublish: the thin device is active at the
        /// ThinVolume's size (a mount: with a filesystem, mounted).
        async fn stage_publish(&mut self, id: &str) -> Result<()> {
            let stage = NodeStageVolumeRequest { volume_id: id.into(), staging_target_path: self.staging.clone(), volume_capability: Some(capability(self.block)), ..Default::default() };
            self.c.node_stage_volume(stage).await.map_err(|e| format!("NodeStageVolume: {e}"))?;
            let publish = NodePublishVolumeRequest {
                volume_id: id.into(),
                staging_target_path: self.staging.clone(),
                target_path: self.target.clone(),
                volume_capability: Some(capability(self.block)),
                ..Default::default()
            };
            self.c.node_publish_volume(publish).await.map_err(|e| format!("NodePublishVolume: {e}"))?;
            Ok(())
        }

        /// Raw block: the length of the active thin device, as the kernel
        /// has it; a mount: the size of its filesystem.
        async fn kernel_size(&mut self, id: &str) -> Result<i64> {
            let req = NodeGetVolumeStatsRequest { volume_id: id.into(), volume_path: self.target.clone(), ..Default::default() };
            let usage = self.c.node_get_volume_stats(req).await.map_err(|e| format!("NodeGetVolumeStats: {e}"))?.into_inner().usage;
            usage.first().map(|u| u.total).ok_or_else(|| "NodeGetVolumeStats: no usage".to_string())
        }

        async fn expand(&mut self, id: &str, bytes: i64) -> Result<i64> {
            self.try_expand(id, bytes).await.map_err(|e| format!("NodeExpandVolume: {e}"))
        }

        async fn try_expand(&mut self, id: &str, bytes: i64) -> std::result::Result<i64, tonic::Status> {
            let req = NodeExpandVolumeRequest {
                volume_id: id.into(),
                volume_path: self.target.clone(),
                capacity_range: Some(CapacityRange { required_bytes: bytes, limit_bytes: 0 }),
                volume_capability: Some(capability(self.block)),
                ..Default::default()
            };
            Ok(self.c.node_expand_volume(req).await?.into_inner().capacity_bytes)
        }

        async fn unpublish_unstage(&mut self, id: &str) -> Result<()> {
            let unpublish = NodeUnpublishVolumeRequest { volume_id: id.into(), target_path: self.target.clone() };
            self.c.node_unpublish_volume(unpublish).await.map_err(|e| format!("NodeUnpublishVolume: {e}"))?;
            let unstage = NodeUnstageVolumeRequest { volume_id: id.into(), staging_target_path: self.staging.clone() };
            self.c.node_unstage_volume(unstage).await.map_err(|e| format!("NodeUnstageVolume: {e}"))?;
            Ok(())
        }
    }

    /// Every device named by an object of `pool`; Err if one is named twice.
    pub async fn named_devices(ctx: &Ctx, pool: &str) -> Result<BTreeSet<u32>> {
        let lp = ListParams::default().labels(&format!("{}={pool}", thin_csi_api::LABEL_POOL));
        let mut seen: Vec<(u32, String)> = Vec::new();
        for v in Api::<ThinVolume>::all(ctx.client.clone()).list(&lp).await.map_err(|e| e.to_string())?.items {
            seen.push((v.spec.device_id.get(), v.metadata.name.unwrap_or_default()));
        }
        for s in Api::<ThinSnapshot>::all(ctx.client.clone()).list(&lp).await.map_err(|e| e.to_string())?.items {
            seen.push((s.spec.device_id.get(), s.metadata.name.unwrap_or_default()));
        }
        let mut set = BTreeSet::new();
        for (id, _) in &seen {
            if !set.insert(*id) {
                let both: Vec<_> = seen.iter().filter(|(d, _)| d == id).map(|(_, n)| n.as_str()).collect();
                return Err(format!("device {id} of pool {pool} named by two objects: {both:?}"));
            }
        }
        Ok(set)
    }

    /// The request for `step` (by its prefix), sent to a controller that
    /// dies at `step`; what it needs first (a source volume, the volume to
    /// delete or expand) is made by the same controller before.
    pub async fn request(port: &str, node_port: &str, step: &str, name: &str, node: &str, ids: &str) -> Result<String> {
        let mut c = client(port).await?;
        let keep = |id: &str| std::fs::write(format!("{ids}.{name}"), id).map_err(|e| e.to_string());
        let cut = if step.starts_with("volume-") {
            create_volume(&mut c, name, node).await.map(|v| v.volume_id)
        } else if step.starts_with("snapshot-") {
            let src = create_volume(&mut c, &format!("{name}-src"), node).await.map_err(|e| format!("source volume: {e}"))?;
            remember(ids, "volume", &src.volume_id)?;
            create_snapshot(&mut c, name, &src.volume_id).await.map(|s| s.snapshot_id)
        } else if step.starts_with("delete-volume-") {
            let v = create_volume(&mut c, name, node).await.map_err(|e| format!("volume to delete: {e}"))?;
            remember(ids, "volume", &v.volume_id)?;
            keep(&v.volume_id)?;
            c.delete_volume(DeleteVolumeRequest { volume_id: v.volume_id.clone(), ..Default::default() }).await.map(|_| v.volume_id)
        } else if step.starts_with("delete-snapshot-") {
            let src = create_volume(&mut c, &format!("{name}-src"), node).await.map_err(|e| format!("source volume: {e}"))?;
            remember(ids, "volume", &src.volume_id)?;
            let s = create_snapshot(&mut c, name, &src.volume_id).await.map_err(|e| format!("snapshot to delete: {e}"))?;
            remember(ids, "snapshot", &s.snapshot_id)?;
            keep(&s.snapshot_id)?;
            c.delete_snapshot(DeleteSnapshotRequest { snapshot_id: s.snapshot_id.clone(), ..Default::default() }).await.map(|_| s.snapshot_id)
        } else if step.starts_with("expand-") {
            // A raw block volume in use on the node: its thin device active
            // at the old size when the controller dies.
            let v = c.create_volume(volume_req(name, node, true)).await.map_err(|e| format!("volume to expand: {e}"))?.into_inner().volume.ok_or("no volume")?;
            remember(ids, "volume", &v.volume_id)?;
            keep(&v.volume_id)?;
            let mut n = Node::connect(node_port, name, true).await?;
            n.stage_publish(&v.volume_id).await?;
            let k = n.kernel_size(&v.volume_id).await?;
            if k != SMALL {
                return Err(format!("staged at {k} bytes, the volume has {SMALL}"));
            }
            c.controller_expand_volume(expand_req(&v.volume_id)).await.map(|r| format!("{} ({} bytes)", v.volume_id, r.into_inner().capacity_bytes))
        } else {
            return Err(format!("no request for step {step}"));
        };
        match cut {
            Ok(id) => Err(format!("the request at failpoint {step} succeeded ({id}): the controller did not die there")),
            Err(e) => {
                println!("--- {step}: the call was cut by the kill ({:?})", e.code());
                Ok(String::new())
            }
        }
    }

    /// The same request to the restarted controller.
    pub async fn retry(ctx: &Ctx, port: &str, node_port: &str, step: &str, name: &str, node: &str, pool: &str, ids: &str) -> Result<String> {
        let mut c = client(port).await?;
        let snapshot = step.starts_with("snapshot-");
        let detail = if let Some(rest) = step.strip_prefix("delete-") {
            let of_snapshot = rest.starts_with("snapshot-");
            let before = device_of(ctx, of_snapshot, name).await?;
            let id = killed_id(ids, name)?;
            let what = if of_snapshot {
                c.delete_snapshot(DeleteSnapshotRequest { snapshot_id: id.clone(), ..Default::default() }).await.map_err(|e| format!("retried DeleteSnapshot: {e}"))?;
                "DeleteSnapshot"
            } else {
                c.delete_volume(DeleteVolumeRequest { volume_id: id.clone(), ..Default::default() }).await.map_err(|e| format!("retried DeleteVolume: {e}"))?;
                "DeleteVolume"
            };
            if device_of(ctx, of_snapshot, name).await?.is_some() {
                return Err(format!("the object is still there after the retried {what}"));
            }
            format!("{what} {id} (device {before:?}) succeeded on retry; object gone")
        } else if step.starts_with("expand-") {
            expand_retry(ctx, &mut c, node_port, name, ids).await?
        } else {
            let before = device_of(ctx, snapshot, name).await?;
            let id = if snapshot {
                let src = create_volume(&mut c, &format!("{name}-src"), node).await.map_err(|e| format!("source volume: {e}"))?;
                create_snapshot(&mut c, name, &src.volume_id).await.map_err(|e| format!("retried CreateSnapshot: {e}"))?.snapshot_id
            } else {
                create_volume(&mut c, name, node).await.map_err(|e| format!("retried CreateVolume: {e}"))?.volume_id
            };
            remember(ids, if snapshot { "snapshot" } else { "volume" }, &id)?;
            let after = device_of(ctx, snapshot, name).await?.ok_or("no object after a successful retry")?;
            if csi_controller::params::DeviceRef::parse(&id).ok().map(|r| r.device.get()) != Some(after) {
                return Err(format!("the answer {id} does not name the object's device {after}"));
            }
            match before {
                Some(b) if b != after => return Err(format!("the object named device {b} before the retry, {after} after")),
                Some(_) => format!("{id}: the same device {after} as the object the killed call made"),
                None => format!("{id}: device {after} (no object before the retry: the killed call's allocation, if any, is a leak)"),
            }
        };
        let named = named_devices(ctx, pool).await?;
        Ok(format!("{detail}; {} devices named, none twice", named.len()))
    }

    /// The retried ControllerExpandVolume answers the new size, the API
    /// holds it, and after what the CO does next (NodeExpandVolume when the
    /// answer asks for it) the kernel's device has it too; then the volume
    /// is unpublished and unstaged for the cleanup to delete.
    async fn expand_retry(ctx: &Ctx, c: &mut ControllerClient<Channel>, node_port: &str, name: &str, ids: &str) -> Result<String> {
        let id = killed_id(ids, name)?;
        let mut n = Node::connect(node_port, name, true).await?;
        let checked = expand_checks(ctx, c, &mut n, &id, name).await;
        // Unstaged on every path: the cleanup cannot delete an active device.
        let unstaged = n.unpublish_unstage(&id).await;
        let detail = checked?;
        unstaged?;
        Ok(detail)
    }

    async fn expand_checks(ctx: &Ctx, c: &mut ControllerClient<Channel>, n: &mut Node, id: &str, name: &str) -> Result<String> {
        let api_before = api_size(ctx, name).await?;
        let kernel_before = n.kernel_size(id).await?;
        if kernel_before != SMALL {
            return Err(format!("the device is {kernel_before} bytes before the retry; only the node resizes it, and it was not asked"));
        }
        let r = c.controller_expand_volume(expand_req(id)).await.map_err(|e| format!("retried ControllerExpandVolume: {e}"))?.into_inner();
        if r.capacity_bytes != LARGE {
            return Err(format!("retried ControllerExpandVolume answered {} bytes, asked for {LARGE}", r.capacity_bytes));
        }
        let api = api_size(ctx, name).await?;
        if api != LARGE as u64 {
            return Err(format!("the ThinVolume holds {api} bytes after the retry answered {LARGE}"));
        }
        // What a CO does next: NodeExpandVolume only when the answer asks.
        if r.node_expansion_required {
            let grown = n.expand(id, LARGE).await?;
            if grown != LARGE {
                return Err(format!("NodeExpandVolume answered {grown} bytes, the volume has {LARGE}"));
            }
        }
        let kernel = n.kernel_size(id).await?;
        if kernel != LARGE {
            return Err(format!(
                "the API says {api} bytes, the kernel's active device {kernel} (node_expansion_required {}: a CO calls NodeExpandVolume only when asked)",
                r.node_expansion_required
            ));
        }
        Ok(format!("{id}: {api_before} bytes recorded before the retry, {LARGE} answered, in the API and in the kernel's active device"))
    }

    /// csi-node SIGKILLed in NodeExpandVolume of a mounted volume after its
    /// thin device grew and before its filesystem did (the ThinVolume's
    /// kill hook, `hooks::EXPAND_RESIZED`), restarted by its supervisor: the
    /// filesystem is still the old size, and the CO's retried
    /// NodeExpandVolume grows it past the old device's size.
    pub async fn node_expand_crash(ctx: &Ctx, port: &str, node_port: &str, name: &str, node: &str, ids: &str) -> Result<String> {
        let mut c = client(port).await?;
        let v = create_volume(&mut c, name, node).await.map_err(|e| format!("volume to expand: {e}"))?;
        let id = v.volume_id;
        remember(ids, "volume", &id)?;
        let mut n = Node::connect(node_port, name, false).await?;
        n.stage_publish(&id).await?;
        let checked = node_expand_checks(ctx, &mut c, &mut n, node_port, &id, name).await;
        // A new channel: the old one's node died.
        let unstaged = match Node::connect(node_port, name, false).await {
            Ok(mut n) => n.unpublish_unstage(&id).await,
            Err(e) => Err(e),
        };
        let detail = checked?;
        unstaged?;
        Ok(detail)
    }

    async fn node_expand_checks(ctx: &Ctx, c: &mut ControllerClient<Channel>, n: &mut Node, node_port: &str, id: &str, name: &str) -> Result<String> {
        let fs_before = n.kernel_size(id).await?;
        let mut req = expand_req(id);
        req.volume_capability = Some(capability(false));
        let r = c.controller_expand_volume(req).await.map_err(|e| format!("ControllerExpandVolume: {e}"))?.into_inner();
        if r.capacity_bytes != LARGE || !r.node_expansion_required {
            return Err(format!("ControllerExpandVolume of a mount volume answered {r:?}"));
        }
        let patch = json!({ "metadata": { "annotations": { hooks::KILL_AT: hooks::EXPAND_RESIZED } } });
        let volumes = Api::<ThinVolume>::all(ctx.client.clone());
        volumes.patch(&thin_csi_api::object_name(name), &PatchParams::default(), &Patch::Merge(patch)).await.map_err(|e| e.to_string())?;
        if let Ok(b) = n.try_expand(id, LARGE).await {
            return Err(format!("NodeExpandVolume answered {b} bytes: the node did not die between the resize and the filesystem grow"));
        }
        println!("--- {name}: NodeExpandVolume cut by the node's kill");
        // Back once its supervisor restarted it (the filesystem stays mounted: the kernel holds it).
        let start = Instant::now();
        let mut n = loop {
            if let Ok(mut n) = Node::connect(node_port, name, false).await {
                if n.c.node_get_capabilities(NodeGetCapabilitiesRequest {}).await.is_ok() {
                    break n;
                }
            }
            if start.elapsed() > WAIT {
                return Err(format!("csi-node did not come back within {WAIT:?}"));
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        };
        let fs_mid = n.kernel_size(id).await?;
        if fs_mid != fs_before {
            return Err(format!("the filesystem is {fs_mid} bytes after the kill, {fs_before} before: the node did not die between the resize and the grow"));
        }
        let grown = n.expand(id, LARGE).await?;
        let fs_after = n.kernel_size(id).await?;
        if grown != LARGE || fs_after <= SMALL || fs_after > LARGE {
            return Err(format!("retried NodeExpandVolume answered {grown} bytes; the filesystem is {fs_after} bytes (before {fs_before}; the device {LARGE})"));
        }
        Ok(format!("{id}: filesystem {fs_before} bytes before, still {fs_mid} after the kill, {fs_after} after the retried NodeExpandVolume ({LARGE}-byte device)"))
    }

    /// Deletes what the runs made (snapshots first); no object names a device twice.
    pub async fn cleanup(ctx: &Ctx, port: &str, pool: &str, ids: &str) -> Result<String> {
        let named = named_devices(ctx, pool).await?;
        let mut c = client(port).await?;
        let text = std::fs::read_to_string(ids).unwrap_or_default();
        let mut list: Vec<(&str, &str)> = text.lines().filter_map(|l| l.split_once(' ')).collect();
        list.sort_by_key(|(k, _)| *k != "snapshot");
        list.dedup();
        for (kind, id) in &list {
            let r = if *kind == "snapshot" {
                c.delete_snapshot(DeleteSnapshotRequest { snapshot_id: id.to_string(), ..Default::default() }).await.map(|_| ())
            } else {
                c.delete_volume(DeleteVolumeRequest { volume_id: id.to_string(), ..Default::default() }).await.map(|_| ())
            };
            r.map_err(|e| format!("deleting {kind} {id}: {e}"))?;
        }
        let left = named_devices(ctx, pool).await?;
        if !left.is_empty() {
            return Err(format!("objects still name devices {left:?} after the cleanup"));
        }
        Ok(format!("{} objects (devices {named:?}, none named twice) deleted through the controller", list.len()))
    }
}

/// The kernel's devices after the controller crash runs and their cleanup:
/// no object is left, so any device is a leak of a kill between an
/// allocation and its object; at most one per such kill.
fn leaks(devices: &str, budget: usize) -> Result<String> {
    let got: Vec<&str> = devices.split_whitespace().skip(1).collect();
    if got.len() <= budget {
        Ok(format!("LEAKS {} (devices {got:?}; at most {budget}, one per kill between an allocation and its object)", got.len()))
    } else {
        Err(format!("{} devices left ({got:?}), more than the {budget} kills between an allocation and its object can leak", got.len()))
    }
}

fn print_bench(op: &str, mut us: Vec<u64>) {
    us.sort_unstable();
    let n = us.len();
    println!("BENCH {op} thin-csi median_us={} p90_us={} n={n}", us[n / 2], us[((n * 9) / 10).min(n - 1)]);
}

fn compare(ledger: &str, devices: &str) -> Result<String> {
    let expected = read_ledger(ledger)?;
    let got: BTreeSet<u32> = devices.split_whitespace().skip(1).map(|s| s.parse().map_err(|_| format!("bad id {s:?}"))).collect::<Result<_>>()?;
    if expected == got {
        Ok(format!("{} devices, exactly the committed ones", got.len()))
    } else {
        let missing: Vec<_> = expected.difference(&got).collect();
        let extra: Vec<_> = got.difference(&expected).collect();
        Err(format!("missing from the kernel {missing:?}, not in the record {extra:?}"))
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    report::install_panic_hook();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    if let ["leaks", devices, budget] = argv.as_slice() {
        return finish("the pool holds only what controller kills leaked", leaks(devices, budget.parse().unwrap_or(0)));
    }
    if let ["ctl-steps"] = argv.as_slice() {
        println!("{}", csi_controller::failpoint::STEPS.join(" "));
        return ExitCode::SUCCESS;
    }
    if let ["compare", ledger, devices] = argv.as_slice() {
        return finish("kernel devices match the API record", compare(ledger, devices));
    }
    let client = match thin_csi_api::client::connect_default().await {
        Ok(c) => c,
        Err(e) => return finish("kube client", Err(e.to_string())),
    };
    let ctx = Ctx { pools: Api::all(client.clone()), alloc: Allocator::new(client.clone()), client };
    let (name, result) = match argv.as_slice() {
        ["pools", nodes @ ..] => ("nodes registered their pools".to_string(), pools(&ctx, nodes).await),
        ["lifecycle", pool, other, ledger] => ("create, snapshot, delete end to end".into(), lifecycle(&ctx, pool, other, ledger).await),
        ["crash", pool, boundary, ledger] => (format!("node killed at {boundary}"), crash(&ctx, pool, boundary, ledger).await),
        ["crash-abort", pool] => ("node killed after an abort, before its status".into(), crash_abort(&ctx, pool).await),
        ["record-only", pool, ledger] => ("controller records a transaction".into(), record_only(&ctx, pool, ledger).await),
        ["converge", pool, ledger] => ("controller killed before the status: the pool converges".into(), converge(&ctx, pool, ledger).await),
        ["concurrent", pool, n, ledger] => ("concurrent allocations through the node".into(), concurrent(&ctx, pool, n.parse().unwrap_or(200), ledger).await),
        ["diverge", pool] => ("divergence marks the pool unhealthy".into(), diverge(&ctx, pool).await),
        ["cross-node", port, a, b] => ("restore and clone across two node VMs".into(), cross_node(port, a, b).await),
        ["forget", pool, file] => ("pool object saved and deleted".into(), forget(&ctx, pool, file).await),
        ["unverified", pool, file] => ("re-created record refuses allocations".into(), unverified(&ctx, pool, file).await),
        ["adopt", pool, file, ledger, devices] => ("adopted pool allocates a fresh id".into(), adopt(&ctx, pool, file, ledger, devices).await),
        ["ctl-request", port, node_port, step, name, node, ids] => (format!("controller killed at {step}"), ctl::request(port, node_port, step, name, node, ids).await),
        ["ctl-retry", port, node_port, step, name, node, pool, ids] => {
            (format!("controller killed at {step}: the retry is idempotent"), ctl::retry(&ctx, port, node_port, step, name, node, pool, ids).await)
        }
        ["node-expand-crash", port, node_port, name, node, ids] => {
            ("node killed at expand-resized".into(), ctl::node_expand_crash(&ctx, port, node_port, name, node, ids).await)
        }
        ["ctl-cleanup", port, pool, ids] => ("controller crash runs cleaned up".into(), ctl::cleanup(&ctx, port, pool, ids).await),
        ["bench", pool, n] => ("snapshot-api benchmark".into(), bench(&ctx, pool, n.parse().unwrap_or(50)).await),
        ["unstop", pool] => {
            let patch = json!({ "metadata": { "annotations": { hooks::STOP: null } } });
            let r = ctx.pools.patch(pool, &PatchParams::default(), &Patch::Merge(patch)).await.map(|_| String::new()).map_err(|e| e.to_string());
            ("stop hook removed".into(), r)
        }
        ["stop", pools @ ..] => {
            let mut r = Ok(String::new());
            for p in pools {
                if let Err(e) = ctx.annotate(p, hooks::STOP, "true").await {
                    r = Err(e);
                }
            }
            ("nodes asked to stop".into(), r)
        }
        _ => {
            eprintln!("usage: see the header of e2e/suites/src/bin/node_e2e.rs");
            return ExitCode::from(2);
        }
    };
    finish(&name, result)
}

/// A step that answers `Ok("")` did harness work, not a check: no line.
fn finish(name: &str, result: Result<String>) -> ExitCode {
    match result {
        Ok(detail) if detail.is_empty() => ExitCode::SUCCESS,
        result => {
            let mut report = Report::default();
            report.check(name, result);
            report.exit_code()
        }
    }
}
