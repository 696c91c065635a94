//! The leak collector and the load test, end to end: over gRPC against a
//! running csi-controller (a real apiserver, KUBECONFIG) whose pool
//! transactions csi-node executes in a VM (e2e/suites/leak.sh). Prints
//! `PASS name` / `FAIL name (why)` lines.
//!
//!   leak_e2e load PORT POOL N          N tasks at once, each CreateVolume → CreateSnapshot → DeleteSnapshot →
//!                                      DeleteVolume; every answer OK or a clean code; ids unique; transactions
//!                                      dense; nothing left (devices, pending); `BENCH load-N thin-csi total_ms=…`
//!   leak_e2e live PORT                 a volume and a snapshot that must survive the collector
//!   leak_e2e killed PORT KIND NAME     a CreateVolume (KIND volume) or CreateSnapshot of `live` (snapshot) to a
//!                                      controller that SIGKILLs itself after recording it: the call fails
//!   leak_e2e gave-up PORT POOL         a CreateVolume whose caller gives up while its ThinVolume is deleted (the
//!                                      node held back by a kill at the transaction's start)
//!   leak_e2e behind PORT POOL          a volume whose device the node deletes behind the engine's back (test hook)
//!   leak_e2e collected POOL SECONDS    the collector deleted every leak and touched nothing named; the victim's
//!                                      Event; no pending transaction or tombstone left
//!   leak_e2e cleanup PORT POOL         delete the live volume, its snapshot and the victim; the pool is empty

use std::collections::{BTreeMap, BTreeSet};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use csi_contract::id::DeviceRef;
use csi_proto::v1::controller_client::ControllerClient;
use csi_proto::v1::volume_capability::access_mode::Mode;
use csi_proto::v1::volume_capability::{AccessMode, AccessType, MountVolume};
use csi_proto::v1::*;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::Client;
use report::Report;
use thin_csi_api::pool::range_ids;
use thin_csi_api::{object_name, ThinPool, ThinSnapshot, ThinVolume};
use tonic::transport::Channel;
use tonic::Code;

const MIB: i64 = 1 << 20;
const LIVE: &str = "leak-live";
const LIVE_SNAP: &str = "leak-live-snap";
const VICTIM: &str = "leak-victim";

type R<T> = Result<T, String>;

fn e(x: impl std::fmt::Display) -> String {
    x.to_string()
}

fn vol_req(name: &str) -> CreateVolumeRequest {
    CreateVolumeRequest {
        name: name.into(),
        capacity_range: Some(CapacityRange {
            required_bytes: 16 * MIB,
            limit_bytes: 0,
        }),
        volume_capabilities: vec![VolumeCapability {
            access_type: Some(AccessType::Mount(MountVolume::default())),
            access_mode: Some(AccessMode {
                mode: Mode::SingleNodeWriter as i32,
            }),
        }],
        ..Default::default()
    }
}

async fn connect(port: &str) -> R<ControllerClient<Channel>> {
    ControllerClient::connect(format!("http://127.0.0.1:{port}"))
        .await
        .map_err(e)
}

async fn pool(client: &Client, name: &str) -> R<ThinPool> {
    Api::<ThinPool>::all(client.clone())
        .get(name)
        .await
        .map_err(e)
}

fn devices(p: &ThinPool) -> BTreeSet<u32> {
    p.status
        .as_ref()
        .map(|s| range_ids(&s.devices).map(|i| i.get()).collect())
        .unwrap_or_default()
}

/// Codes a request of the load test may end with besides OK: the pool full
/// (data or metadata), or the node slower than the controller's wait.
fn clean(code: Code) -> bool {
    matches!(
        code,
        Code::ResourceExhausted | Code::DeadlineExceeded | Code::Unavailable | Code::Aborted
    )
}

async fn load(rep: &mut Report, client: &Client, port: &str, pool_name: &str, n: usize) -> R<()> {
    let c = connect(port).await?;
    let before = pool(client, pool_name).await?;
    let t0 = before.spec.last_assigned_transaction;
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        let mut c = c.clone();
        tasks.spawn(async move {
            // (operation, Ok(id) or Err(code, message)) in order.
            let mut ops: Vec<(&'static str, Result<String, (Code, String)>)> = Vec::new();
            let name = format!("load-{i}");
            let v = c.create_volume(vol_req(&name)).await.map(|r| {
                r.into_inner()
                    .volume
                    .map(|v| v.volume_id)
                    .unwrap_or_default()
            });
            let v = v.map_err(|s| (s.code(), s.message().to_string()));
            ops.push(("CreateVolume", v.clone()));
            let Ok(vid) = v else { return ops };
            let sreq = CreateSnapshotRequest {
                source_volume_id: vid.clone(),
                name: format!("{name}-snap"),
                ..Default::default()
            };
            let s = c.create_snapshot(sreq).await.map(|r| {
                r.into_inner()
                    .snapshot
                    .map(|s| s.snapshot_id)
                    .unwrap_or_default()
            });
            let s = s.map_err(|s| (s.code(), s.message().to_string()));
            ops.push(("CreateSnapshot", s.clone()));
            if let Ok(sid) = s {
                let d = c
                    .delete_snapshot(DeleteSnapshotRequest {
                        snapshot_id: sid.clone(),
                        ..Default::default()
                    })
                    .await;
                ops.push((
                    "DeleteSnapshot",
                    d.map(|_| sid)
                        .map_err(|s| (s.code(), s.message().to_string())),
                ));
            }
            let d = c
                .delete_volume(DeleteVolumeRequest {
                    volume_id: vid.clone(),
                    ..Default::default()
                })
                .await;
            ops.push((
                "DeleteVolume",
                d.map(|_| vid)
                    .map_err(|s| (s.code(), s.message().to_string())),
            ));
            ops
        });
    }
    let mut results = Vec::new();
    while let Some(r) = tasks.join_next().await {
        results.push(r.map_err(e)?);
    }
    let total = start.elapsed();
    let mut by_op: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    let mut unclean = Vec::new();
    let mut ids = Vec::new();
    for ops in &results {
        for (op, r) in ops {
            let slot = by_op.entry(op).or_default();
            match r {
                Ok(id) => {
                    slot.0 += 1;
                    if op.starts_with("Create") {
                        ids.push(id.clone());
                    }
                }
                Err((code, msg)) => {
                    slot.1 += 1;
                    if !clean(*code) {
                        unclean.push(format!("{op}: {code:?} {msg}"));
                    }
                }
            }
        }
    }
    println!(
        "BENCH load-{n} thin-csi total_ms={} ops={}",
        total.as_millis(),
        by_op.values().map(|(a, b)| a + b).sum::<usize>()
    );
    rep.expect(
        &format!("load-{n}: every answer OK or a clean code"),
        unclean.is_empty(),
        format!(
            "{} unclean: {:?}",
            unclean.len(),
            &unclean[..unclean.len().min(5)]
        ),
    );
    eprintln!("load-{n}: {by_op:?}");
    let ok_all = by_op.values().map(|(a, _)| a).sum::<usize>();
    rep.expect(
        &format!("load-{n}: every request succeeded"),
        by_op.values().all(|(_, f)| *f == 0) && ok_all == 4 * n,
        format!("{by_op:?}"),
    );
    let unique: BTreeSet<&String> = ids.iter().collect();
    rep.expect(
        &format!("load-{n}: CSI ids unique"),
        unique.len() == ids.len(),
        format!("{} ids, {} distinct", ids.len(), unique.len()),
    );
    // Dense: the generations the creates got, and what the record and the
    // kernel say once the collector has pruned.
    let mut last = None;
    for _ in 0..600 {
        let p = pool(client, pool_name).await?;
        let s = p.status.clone().unwrap_or_default();
        if p.spec.pending_transactions.is_empty()
            && s.devices_transaction == Some(p.spec.last_assigned_transaction)
        {
            last = Some(p);
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let Some(after) = last else {
        let p = pool(client, pool_name).await?;
        rep.fail(
            &format!("load-{n}: nothing pending at the end"),
            format!(
                "{} pending, last assigned {}, status {:?}",
                p.spec.pending_transactions.len(),
                p.spec.last_assigned_transaction,
                p.status
            ),
        );
        return Ok(());
    };
    rep.pass(&format!("load-{n}: nothing pending at the end"), "");
    let t1 = after.spec.last_assigned_transaction;
    let s = after.status.clone().unwrap_or_default();
    let recorded = ok_all as u64; // every successful request recorded exactly one transaction
    let generations: BTreeSet<u64> = ids
        .iter()
        .filter_map(|id| DeviceRef::parse(id).ok())
        .map(|r| r.generation)
        .collect();
    rep.expect(
        &format!("load-{n}: transaction ids dense"),
        t1 - t0 == recorded && s.kernel_transaction == Some(t1) && s.finished_transaction == Some(t1) && generations.len() == ids.len() && generations.iter().all(|g| *g > t0 && *g <= t1),
        format!("{t0}..{t1} for {recorded} recorded requests, kernel {:?}, finished {:?}, {} distinct generations", s.kernel_transaction, s.finished_transaction, generations.len()),
    );
    let left = devices(&after);
    rep.expect(
        &format!("load-{n}: the kernel's device list is empty"),
        left.is_empty() && after.spec.aborted_transactions.is_empty(),
        format!(
            "devices {left:?}, tombstones {:?}",
            after.spec.aborted_transactions
        ),
    );
    let objects = Api::<ThinVolume>::all(client.clone())
        .list(&ListParams::default())
        .await
        .map_err(e)?
        .items
        .len()
        + Api::<ThinSnapshot>::all(client.clone())
            .list(&ListParams::default())
            .await
            .map_err(e)?
            .items
            .len();
    rep.expect(
        &format!("load-{n}: no object left"),
        objects == 0,
        format!("{objects} objects"),
    );
    Ok(())
}

async fn create_live(rep: &mut Report, port: &str) -> R<()> {
    let mut c = connect(port).await?;
    let v = c
        .create_volume(vol_req(LIVE))
        .await
        .map_err(e)?
        .into_inner()
        .volume
        .ok_or("no volume")?;
    let s = c
        .create_snapshot(CreateSnapshotRequest {
            source_volume_id: v.volume_id.clone(),
            name: LIVE_SNAP.into(),
            ..Default::default()
        })
        .await
        .map_err(e)?;
    let s = s.into_inner().snapshot.ok_or("no snapshot")?;
    rep.pass(
        "a live volume and its snapshot",
        &format!("{} {}", v.volume_id, s.snapshot_id),
    );
    Ok(())
}

async fn killed(rep: &mut Report, port: &str, kind: &str, name: &str) -> R<()> {
    let mut c = connect(port).await?;
    let r = match kind {
        "volume" => c.create_volume(vol_req(name)).await.map(|_| ()),
        _ => {
            let live = Api::<ThinVolume>::all(csi_contract_client().await?)
                .get(&object_name(LIVE))
                .await
                .map_err(e)?;
            let id = DeviceRef::new(
                &live.spec.pool,
                live.spec.device_id,
                live.spec.create_transaction,
            )
            .to_string();
            c.create_snapshot(CreateSnapshotRequest {
                source_volume_id: id,
                name: name.into(),
                ..Default::default()
            })
            .await
            .map(|_| ())
        }
    };
    rep.expect(
        &format!("{kind} {name}: the call is cut by the controller's death"),
        r.is_err(),
        format!("{r:?}"),
    );
    Ok(())
}

async fn csi_contract_client() -> R<Client> {
    thin_csi_api::client::connect_default().await.map_err(e)
}

async fn annotate(client: &Client, pool: &str, key: &str, value: &str) -> R<()> {
    let patch = serde_json::json!({ "metadata": { "annotations": { key: value } } });
    Api::<ThinPool>::all(client.clone())
        .patch(pool, &PatchParams::default(), &Patch::Merge(patch))
        .await
        .map_err(e)?;
    Ok(())
}

async fn gave_up(rep: &mut Report, client: &Client, port: &str, pool_name: &str) -> R<()> {
    let name = "leak-gave-up";
    let p = pool(client, pool_name).await?;
    // The node dies as it starts this create's transaction: the object
    // exists and waits while csi-node restarts.
    let next = p.spec.last_assigned_transaction + 1;
    annotate(
        client,
        pool_name,
        thin_csi_api::hooks::KILL_AT,
        &format!("start@{next}"),
    )
    .await?;
    let mut c = connect(port).await?;
    let mut req = tonic::Request::new(vol_req(name));
    req.set_timeout(Duration::from_secs(4));
    let call = tokio::spawn(async move { c.create_volume(req).await.map(|_| ()) });
    let volumes: Api<ThinVolume> = Api::all(client.clone());
    let mut deleted = false;
    for _ in 0..200 {
        if volumes
            .get_opt(&object_name(name))
            .await
            .map_err(e)?
            .is_some()
        {
            volumes
                .delete(&object_name(name), &DeleteParams::default())
                .await
                .map_err(e)?;
            deleted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    rep.expect(
        "gave-up: its ThinVolume deleted while provisioning",
        deleted,
        "the object never appeared",
    );
    let r = call.await.map_err(e)?;
    rep.expect(
        "gave-up: the call ends (the caller's deadline, or ABORTED: its object removed)",
        matches!(&r, Err(s) if s.code() == Code::DeadlineExceeded || (s.code() == Code::Aborted && s.message().contains("removed")) || s.code() == Code::Cancelled),
        format!("{r:?}"),
    );
    Ok(())
}

async fn behind(rep: &mut Report, client: &Client, port: &str, pool_name: &str) -> R<()> {
    let mut c = connect(port).await?;
    let v = c
        .create_volume(vol_req(VICTIM))
        .await
        .map_err(e)?
        .into_inner()
        .volume
        .ok_or("no volume")?;
    let r = DeviceRef::parse(&v.volume_id).map_err(e)?;
    annotate(
        client,
        pool_name,
        thin_csi_api::hooks::DELETE_BEHIND,
        &r.device.to_string(),
    )
    .await?;
    rep.pass(
        "a volume whose device is deleted behind our back",
        &v.volume_id,
    );
    Ok(())
}

async fn collected(rep: &mut Report, client: &Client, pool_name: &str, secs: u64) -> R<()> {
    let volumes: Api<ThinVolume> = Api::all(client.clone());
    let snapshots: Api<ThinSnapshot> = Api::all(client.clone());
    let live = volumes.get(&object_name(LIVE)).await.map_err(e)?;
    let snap = snapshots.get(&object_name(LIVE_SNAP)).await.map_err(e)?;
    let want: BTreeSet<u32> = [live.spec.device_id.get(), snap.spec.device_id.get()].into();
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut p = pool(client, pool_name).await?;
    let mut seen_leaks = BTreeSet::new();
    while Instant::now() < deadline {
        p = pool(client, pool_name).await?;
        let d = devices(&p);
        seen_leaks.extend(d.difference(&want).copied());
        if d == want
            && p.spec.pending_transactions.is_empty()
            && p.spec.aborted_transactions.is_empty()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let d = devices(&p);
    rep.expect(
        "the collector deleted every leaked device: the kernel lists only the live ones",
        d == want,
        format!("listed {d:?}, live {want:?}, leaks seen {seen_leaks:?}"),
    );
    rep.expect(
        "no pending transaction and no tombstone left",
        p.spec.pending_transactions.is_empty() && p.spec.aborted_transactions.is_empty(),
        format!(
            "pending {:?}, tombstones {:?}",
            p.spec.pending_transactions, p.spec.aborted_transactions
        ),
    );
    let live_now = volumes.get(&object_name(LIVE)).await.map_err(e)?;
    let snap_now = snapshots.get(&object_name(LIVE_SNAP)).await.map_err(e)?;
    rep.expect(
        "the live volume and snapshot are untouched",
        live_now.spec == live.spec
            && snap_now.spec == snap.spec
            && live_now.status.as_ref().is_some_and(|s| s.ready)
            && snap_now.status.as_ref().is_some_and(|s| s.ready),
        format!("{:?} {:?}", live_now.status, snap_now.status),
    );
    // The victim: still there, with a Warning Event naming its missing device.
    let victim = object_name(VICTIM);
    let mut found = None;
    while found.is_none() && Instant::now() < deadline + Duration::from_secs(30) {
        let events = Api::<Event>::all(client.clone())
            .list(&ListParams::default())
            .await
            .map_err(e)?;
        found = events.items.into_iter().find(|ev| {
            ev.reason.as_deref() == Some("ThinDeviceMissing")
                && ev.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(victim.as_str())
        });
        if found.is_none() {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    let kept = volumes.get_opt(&victim).await.map_err(e)?.is_some();
    rep.expect(
        "an object whose device was deleted behind our back: a Warning Event, the object kept",
        found
            .as_ref()
            .is_some_and(|ev| ev.type_.as_deref() == Some("Warning"))
            && kept,
        format!("event {:?}, object kept {kept}", found.map(|e| e.note)),
    );
    Ok(())
}

async fn cleanup(rep: &mut Report, client: &Client, port: &str, pool_name: &str) -> R<()> {
    let mut c = connect(port).await?;
    let snapshots: Api<ThinSnapshot> = Api::all(client.clone());
    let volumes: Api<ThinVolume> = Api::all(client.clone());
    let s = snapshots.get(&object_name(LIVE_SNAP)).await.map_err(e)?;
    c.delete_snapshot(DeleteSnapshotRequest {
        snapshot_id: DeviceRef::new(&s.spec.pool, s.spec.device_id, s.spec.create_transaction)
            .to_string(),
        ..Default::default()
    })
    .await
    .map_err(e)?;
    let v = volumes.get(&object_name(LIVE)).await.map_err(e)?;
    c.delete_volume(DeleteVolumeRequest {
        volume_id: DeviceRef::new(&v.spec.pool, v.spec.device_id, v.spec.create_transaction)
            .to_string(),
        ..Default::default()
    })
    .await
    .map_err(e)?;
    // The victim's device is gone: its object is removed by hand, as an
    // operator told by the Event would.
    volumes
        .delete(&object_name(VICTIM), &DeleteParams::default())
        .await
        .map_err(e)?;
    let mut left = BTreeSet::new();
    for _ in 0..240 {
        left = devices(&pool(client, pool_name).await?);
        if left.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    rep.expect(
        "after the cleanup the pool reports no device",
        left.is_empty(),
        format!("{left:?}"),
    );
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    let mut rep = Report::start();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let client = match csi_contract_client().await {
        Ok(c) => c,
        Err(why) => {
            rep.fail("leak_e2e: kube client", why);
            return rep.finish("leak_e2e");
        }
    };
    let r = match args.as_slice() {
        ["load", port, pool, n] => match n.parse() {
            Ok(n) => load(&mut rep, &client, port, pool, n).await,
            Err(_) => Err(format!("N {n:?}")),
        },
        ["live", port] => create_live(&mut rep, port).await,
        ["killed", port, kind, name] => killed(&mut rep, port, kind, name).await,
        ["gave-up", port, pool] => gave_up(&mut rep, &client, port, pool).await,
        ["behind", port, pool] => behind(&mut rep, &client, port, pool).await,
        ["collected", pool, secs] => {
            collected(&mut rep, &client, pool, secs.parse().unwrap_or(300)).await
        }
        ["cleanup", port, pool] => cleanup(&mut rep, &client, port, pool).await,
        _ => {
            eprintln!("usage: see the module docs of e2e/suites/src/bin/leak_e2e.rs");
            return ExitCode::from(2);
        }
    };
    if let Err(why) = r {
        rep.fail(&format!("leak_e2e {}", args.first().unwrap_or(&"")), why);
    }
    rep.finish("leak_e2e")
}
