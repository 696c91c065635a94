//! Helpers of the k8s suite (e2e/suites/k8s.sh) that need a Kubernetes or a
//! CSI client: timings through the real apiserver, and the kubelet's calls to
//! the node plugin (its CSI endpoint forwarded to a host loopback port).
//! KUBECONFIG names the cluster.
//!
//!   k8s_e2e bench-pvc NS STORAGECLASS NODE N
//!       N times: a WaitForFirstConsumer PVC is created, then annotated with
//!       `volume.kubernetes.io/selected-node` as kube-scheduler does; timed
//!       from the annotation to phase Bound. Prints `BENCH pvc-bound ...`,
//!       deletes the PVCs and waits until their PVs are gone.
//!   k8s_e2e bench-snapshot NS PVC SNAPSHOTCLASS N
//!       N VolumeSnapshots of PVC, one after another, each timed from create
//!       to status.readyToUse. Prints `BENCH volumesnapshot-ready ...`,
//!       deletes them and waits until their contents are gone.
//!   k8s_e2e node-info ADDR
//!       NodeGetInfo at ADDR (host:port): `NODEINFO <node id> <key>=<value>...`
//!   k8s_e2e kubelet stage|publish|unpublish|unstage ADDR PV POD_UID [ro]
//!       the call kubelet makes, with kubelet's paths and the PV's volume
//!       handle, volume attributes and fsType; prints the paths it used.
//!   k8s_e2e kubelet paths ADDR PV POD_UID
//!       only prints the staging and target paths kubelet would use
//!   k8s_e2e kubelet expand ADDR PV POD_UID BYTES
//!   k8s_e2e kubelet stats ADDR PV POD_UID
//!       NodeGetVolumeStats: `STATS total=<bytes> used=<bytes> abnormal=<bool>`
//!       (abnormal: NodeGetVolumeHealth has an entry)

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use csi_proto::v1::node_client::NodeClient;
use csi_proto::v1::{
    volume_capability, CapacityRange, NodeExpandVolumeRequest, NodeGetInfoRequest, NodeGetVolumeHealthRequest, NodeGetVolumeStatsRequest,
    NodePublishVolumeRequest, NodeStageVolumeRequest, NodeUnpublishVolumeRequest, NodeUnstageVolumeRequest,
    VolumeCapability,
};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams};
use kube::runtime::watcher::{self, Event};
use kube::Client;
use serde_json::json;

type Result<T> = std::result::Result<T, String>;
const DRIVER: &str = "thin.csi.io";
const WAIT: Duration = Duration::from_secs(120);

fn percentiles(mut v: Vec<u128>) -> (u128, u128) {
    v.sort_unstable();
    let n = v.len();
    (v[n / 2], v[(n * 9).div_ceil(10).saturating_sub(1)])
}

/// Waits until the object named `name` satisfies `done`, watching from now.
async fn wait_for<K, F>(api: &Api<K>, name: &str, done: F) -> Result<K>
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + 'static,
    F: Fn(&K) -> bool,
{
    let cfg = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let stream = watcher::watcher(api.clone(), cfg);
    futures::pin_mut!(stream);
    let deadline = tokio::time::sleep(WAIT);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            ev = stream.next() => match ev {
                Some(Ok(Event::Apply(o) | Event::InitApply(o))) if done(&o) => return Ok(o),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(format!("watch of {name}: {e}")),
                None => return Err(format!("watch of {name} ended")),
            },
            () = &mut deadline => return Err(format!("{name}: not done after {WAIT:?}")),
        }
    }
}

/// Waits until `name` is gone (polling: a deleted object sends no Apply).
async fn wait_gone<K>(api: &Api<K>, name: &str) -> Result<()>
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned,
{
    let start = Instant::now();
    while start.elapsed() < WAIT {
        match api.get_opt(name).await {
            Ok(None) => return Ok(()),
            Ok(Some(_)) => tokio::time::sleep(Duration::from_millis(200)).await,
            Err(e) => return Err(e.to_string()),
        }
    }
    Err(format!("{name} still exists after {WAIT:?}"))
}

async fn bench_pvc(client: Client, ns: &str, sc: &str, node: &str, n: usize) -> Result<()> {
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), ns);
    let pvs: Api<PersistentVolume> = Api::all(client);
    let mut samples = Vec::new();
    let mut volumes = Vec::new();
    for i in 0..n {
        let name = format!("bench-pvc-{i}");
        let pvc: PersistentVolumeClaim = serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": sc,
                     "resources": {"requests": {"storage": "64Mi"}}}
        }))
        .map_err(|e| e.to_string())?;
        pvcs.create(&PostParams::default(), &pvc).await.map_err(|e| e.to_string())?;
        let bound = {
            let pvcs = pvcs.clone();
            let name = name.clone();
            tokio::spawn(async move { wait_for(&pvcs, &name, |p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound")).await })
        };
        // The watch is open before the clock starts (its initial list sees the PVC Pending).
        tokio::time::sleep(Duration::from_millis(100)).await;
        let t0 = Instant::now();
        let patch = json!({"metadata": {"annotations": {"volume.kubernetes.io/selected-node": node}}});
        pvcs.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)).await.map_err(|e| e.to_string())?;
        let done = bound.await.map_err(|e| e.to_string())??;
        samples.push(t0.elapsed().as_micros());
        volumes.push(done.spec.and_then(|s| s.volume_name).unwrap_or_default());
    }
    let (p50, p90) = percentiles(samples.clone());
    println!("BENCH pvc-bound thin-csi median_us={p50} p90_us={p90} n={}", samples.len());
    for i in 0..n {
        pvcs.delete(&format!("bench-pvc-{i}"), &DeleteParams::default()).await.map_err(|e| e.to_string())?;
    }
    for pv in volumes.iter().filter(|v| !v.is_empty()) {
        wait_gone(&pvs, pv).await?;
    }
    Ok(())
}

fn snapshot_api(client: Client, ns: &str) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("snapshot.storage.k8s.io", "v1", "VolumeSnapshot");
    Api::namespaced_with(client, ns, &ApiResource::from_gvk(&gvk))
}

async fn bench_snapshot(client: Client, ns: &str, pvc: &str, class: &str, n: usize) -> Result<()> {
    let snaps = snapshot_api(client.clone(), ns);
    let gvk = GroupVersionKind::gvk("snapshot.storage.k8s.io", "v1", "VolumeSnapshotContent");
    let contents: Api<DynamicObject> = Api::all_with(client, &ApiResource::from_gvk(&gvk));
    let ready = |o: &DynamicObject| o.data.pointer("/status/readyToUse").and_then(serde_json::Value::as_bool) == Some(true);
    let mut samples = Vec::new();
    let mut bound = Vec::new();
    for i in 0..n {
        let name = format!("bench-snap-{i}");
        let mut obj = DynamicObject::new(&name, &ApiResource::from_gvk(&GroupVersionKind::gvk("snapshot.storage.k8s.io", "v1", "VolumeSnapshot")));
        obj.data = json!({"spec": {"volumeSnapshotClassName": class, "source": {"persistentVolumeClaimName": pvc}}});
        let waiter = {
            let snaps = snaps.clone();
            let name = name.clone();
            tokio::spawn(async move { wait_for(&snaps, &name, ready).await })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        let t0 = Instant::now();
        snaps.create(&PostParams::default(), &obj).await.map_err(|e| e.to_string())?;
        let done = waiter.await.map_err(|e| e.to_string())??;
        samples.push(t0.elapsed().as_micros());
        if let Some(c) = done.data.pointer("/status/boundVolumeSnapshotContentName").and_then(serde_json::Value::as_str) {
            bound.push(c.to_string());
        }
    }
    let (p50, p90) = percentiles(samples.clone());
    println!("BENCH volumesnapshot-ready thin-csi median_us={p50} p90_us={p90} n={}", samples.len());
    for i in 0..n {
        snaps.delete(&format!("bench-snap-{i}"), &DeleteParams::default()).await.map_err(|e| e.to_string())?;
    }
    for c in &bound {
        wait_gone(&contents, c).await?;
    }
    Ok(())
}

async fn node_client(addr: &str) -> Result<NodeClient<tonic::transport::Channel>> {
    let start = Instant::now();
    loop {
        match NodeClient::connect(format!("http://{addr}")).await {
            Ok(c) => return Ok(c),
            Err(e) if start.elapsed() > Duration::from_secs(30) => return Err(format!("connecting to {addr}: {e}")),
            Err(_) => tokio::time::sleep(Duration::from_millis(300)).await,
        }
    }
}

fn sha256_hex(s: &str) -> String {
    // kubelet names the staging dir by the SHA-256 of the volume handle; the
    // sha256sum tool gives the same.
    let out = std::process::Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child.stdin.take().expect("stdin").write_all(s.as_bytes())?;
            child.wait_with_output()
        })
        .expect("sha256sum");
    String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap_or_default().to_string()
}

async fn kubelet(client: Client, args: &[String]) -> Result<()> {
    let [op, addr, pv_name, pod_uid, rest @ ..] = args else { return Err("kubelet OP ADDR PV POD_UID".into()) };
    let pvs: Api<PersistentVolume> = Api::all(client);
    let pv = pvs.get(pv_name).await.map_err(|e| format!("PV {pv_name}: {e}"))?;
    let spec = pv.spec.clone().unwrap_or_default();
    let csi = spec.csi.clone().ok_or("the PV has no csi source")?;
    let block = spec.volume_mode.as_deref() == Some("Block");
    // kubelet's paths (pkg/volume/csi: csi_attacher.go, csi_mounter.go, csi_block.go).
    let (staging, target) = if block {
        (
            format!("/var/lib/kubelet/plugins/kubernetes.io/csi/volumeDevices/staging/{pv_name}"),
            format!("/var/lib/kubelet/plugins/kubernetes.io/csi/volumeDevices/publish/{pv_name}/{pod_uid}"),
        )
    } else {
        (
            format!("/var/lib/kubelet/plugins/kubernetes.io/csi/{DRIVER}/{}/globalmount", sha256_hex(&csi.volume_handle)),
            format!("/var/lib/kubelet/pods/{pod_uid}/volumes/kubernetes.io~csi/{pv_name}/mount"),
        )
    };
    let access_type = if block {
        volume_capability::AccessType::Block(volume_capability::BlockVolume {})
    } else {
        volume_capability::AccessType::Mount(volume_capability::MountVolume {
            fs_type: csi.fs_type.clone().unwrap_or_default(),
            mount_flags: spec.mount_options.clone().unwrap_or_default(),
            volume_mount_group: String::new(),
        })
    };
    let capability = VolumeCapability {
        access_type: Some(access_type),
        access_mode: Some(volume_capability::AccessMode { mode: volume_capability::access_mode::Mode::SingleNodeWriter as i32 }),
    };
    let context: std::collections::HashMap<String, String> = csi.volume_attributes.clone().unwrap_or_default().into_iter().collect();
    if op == "paths" {
        println!("STAGING {staging}");
        println!("TARGET {target}");
        return Ok(());
    }
    let mut node = node_client(addr).await?;
    let id = csi.volume_handle.clone();
    let r = match op.as_str() {
        "stage" => node
            .node_stage_volume(NodeStageVolumeRequest {
                volume_id: id,
                publish_context: Default::default(),
                staging_target_path: staging.clone(),
                volume_capability: Some(capability),
                secrets: Default::default(),
                volume_context: context,
            })
            .await
            .map(|_| ()),
        "publish" => node
            .node_publish_volume(NodePublishVolumeRequest {
                volume_id: id,
                publish_context: Default::default(),
                staging_target_path: staging.clone(),
                target_path: target.clone(),
                volume_capability: Some(capability),
                readonly: rest.first().is_some_and(|r| r == "ro"),
                secrets: Default::default(),
                volume_context: context,
            })
            .await
            .map(|_| ()),
        "unpublish" => node.node_unpublish_volume(NodeUnpublishVolumeRequest { volume_id: id, target_path: target.clone() }).await.map(|_| ()),
        "unstage" => node.node_unstage_volume(NodeUnstageVolumeRequest { volume_id: id, staging_target_path: staging.clone() }).await.map(|_| ()),
        "expand" => {
            let bytes: i64 = rest.first().ok_or("expand needs BYTES")?.parse().map_err(|_| "BYTES: not a number")?;
            node.node_expand_volume(NodeExpandVolumeRequest {
                volume_id: id,
                volume_path: target.clone(),
                capacity_range: Some(CapacityRange { required_bytes: bytes, limit_bytes: 0 }),
                staging_target_path: staging.clone(),
                volume_capability: Some(capability),
                secrets: Default::default(),
            })
            .await
            .map(|r| println!("EXPANDED {}", r.into_inner().capacity_bytes))
        }
        "stats" => {
            let health = node.node_get_volume_health(NodeGetVolumeHealthRequest { volume_id: id.clone(), ..Default::default() }).await;
            let abnormal = match health {
                Ok(h) => h.into_inner().volume_health.is_some_and(|h| !h.health_statuses.is_empty()),
                Err(s) => return Err(format!("health: {:?}: {}", s.code(), s.message())),
            };
            node.node_get_volume_stats(NodeGetVolumeStatsRequest { volume_id: id, volume_path: target.clone(), staging_target_path: staging.clone() })
                .await
                .map(|r| {
                    let r = r.into_inner();
                    let bytes = r.usage.iter().find(|u| u.unit == csi_proto::v1::volume_usage::Unit::Bytes as i32);
                    println!("STATS total={} used={} abnormal={abnormal}", bytes.map_or(0, |u| u.total), bytes.map_or(0, |u| u.used));
                })
        }
        other => return Err(format!("unknown kubelet call {other}")),
    };
    r.map_err(|s| format!("{op}: {:?}: {}", s.code(), s.message()))?;
    println!("STAGING {staging}");
    println!("TARGET {target}");
    Ok(())
}

async fn node_info(addr: &str) -> Result<()> {
    let mut node = node_client(addr).await?;
    let info = node.node_get_info(NodeGetInfoRequest::default()).await.map_err(|s| format!("NodeGetInfo: {:?}: {}", s.code(), s.message()))?.into_inner();
    let segments: BTreeMap<String, String> = info.accessible_topology.map(|t| t.segments.into_iter().collect()).unwrap_or_default();
    let seg: Vec<String> = segments.iter().map(|(k, v)| format!("{k}={v}")).collect();
    println!("NODEINFO {} {}", info.node_id, seg.join(" "));
    Ok(())
}

async fn run(args: &[String]) -> Result<()> {
    match args {
        [cmd, addr] if cmd == "node-info" => node_info(addr).await,
        _ => {
            let client = thin_csi_api::client::connect_default().await.map_err(|e| e.to_string())?;
            match args {
                [cmd, ns, sc, node, n] if cmd == "bench-pvc" => bench_pvc(client, ns, sc, node, n.parse().map_err(|_| "N")?).await,
                [cmd, ns, pvc, class, n] if cmd == "bench-snapshot" => bench_snapshot(client, ns, pvc, class, n.parse().map_err(|_| "N")?).await,
                [cmd, rest @ ..] if cmd == "kubelet" => kubelet(client, rest).await,
                _ => Err("usage: see the header of e2e/suites/src/bin/k8s_e2e.rs".into()),
            }
        }
    }
}

fn main() -> ExitCode {
    report::install_panic_hook();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    match rt.block_on(run(&args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("k8s_e2e: {e}");
            ExitCode::FAILURE
        }
    }
}
