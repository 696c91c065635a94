//! The Controller service's own rules end to end, over gRPC against a
//! running csi-controller (a real apiserver, KUBECONFIG) whose pool
//! transactions a real csi-node executes (e2e/suites/controller-smoke.sh):
//! topology placement, restore/clone placement on the source's node,
//! parameters, GetCapacity per node, expansion, the volume condition of a healthy pool. Prints
//! `PASS name` / `FAIL name (why)` lines.
//!
//!   csi_e2e rules PORT NODE POOL      the checks below (NODE has POOL; "elsewhere" has none)
//!   csi_e2e standby PORT              a standby replica: Probe not ready, Controller UNAVAILABLE

use std::collections::HashMap;
use std::process::ExitCode;

use csi_proto::v1::controller_client::ControllerClient;
use csi_proto::v1::identity_client::IdentityClient;
use csi_proto::v1::volume_capability::access_mode::Mode;
use csi_proto::v1::volume_capability::{AccessMode, AccessType, BlockVolume, MountVolume};
use csi_proto::v1::volume_content_source::{SnapshotSource, Type as SourceType, VolumeSource};
use csi_proto::v1::*;
use kube::api::Api;
use report::Report;
use thin_csi_api::{object_name, ThinPool, ThinVolume};
use tonic::transport::Channel;
use tonic::Code;

const GIB: i64 = 1 << 30;
const KEY: &str = "topology.thin.csi.io/node";

struct Ctx {
    c: ControllerClient<Channel>,
    node: String,
    pool: String,
    volumes: Api<ThinVolume>,
    pools: Api<ThinPool>,
    report: Report,
}

fn topo(node: &str) -> Topology {
    Topology { segments: HashMap::from([(KEY.to_string(), node.to_string())]) }
}

fn mount_cap(fs: &str) -> VolumeCapability {
    VolumeCapability {
        access_type: Some(AccessType::Mount(MountVolume { fs_type: fs.into(), ..Default::default() })),
        access_mode: Some(AccessMode { mode: Mode::SingleNodeWriter as i32 }),
    }
}

fn block_cap() -> VolumeCapability {
    VolumeCapability { access_type: Some(AccessType::Block(BlockVolume {})), access_mode: Some(AccessMode { mode: Mode::SingleNodeWriter as i32 }) }
}

fn req(name: &str, size: i64, requisite: &[&str], preferred: &[&str]) -> CreateVolumeRequest {
    CreateVolumeRequest {
        name: name.into(),
        capacity_range: Some(CapacityRange { required_bytes: size, limit_bytes: 0 }),
        volume_capabilities: vec![mount_cap("")],
        accessibility_requirements: Some(TopologyRequirement {
            requisite: requisite.iter().map(|n| topo(n)).collect(),
            preferred: preferred.iter().map(|n| topo(n)).collect(),
        }),
        ..Default::default()
    }
}

impl Ctx {
    fn check(&mut self, name: &str, ok: bool, why: impl std::fmt::Display) {
        self.report.expect(name, ok, why);
    }

    fn code<T: std::fmt::Debug>(&mut self, name: &str, r: Result<T, tonic::Status>, want: Code, contains: &str) {
        match r {
            Err(s) if s.code() == want && s.message().contains(contains) => self.report.pass(name, &format!("{:?} {}", s.code(), s.message())),
            other => self.check(name, false, format!("want {want:?} mentioning {contains:?}, got {other:?}")),
        }
    }

    async fn create(&mut self, r: CreateVolumeRequest) -> Result<Volume, String> {
        self.c.create_volume(r).await.map_err(|s| format!("{:?}: {}", s.code(), s.message()))?.into_inner().volume.ok_or_else(|| "no volume".into())
    }

    async fn capacity(&mut self, node: Option<&str>, params: &[(&str, &str)]) -> Result<i64, String> {
        let r = GetCapacityRequest {
            accessible_topology: node.map(topo),
            parameters: params.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            ..Default::default()
        };
        Ok(self.c.get_capacity(r).await.map_err(|s| s.to_string())?.into_inner().available_capacity)
    }

    async fn rules(&mut self) -> Result<(), String> {
        let node = self.node.clone();
        let pool = self.pool.clone();
        // Placement by topology, and the volume context.
        let mut r = req("e2e-topology", GIB, &[&node, "elsewhere"], &["elsewhere", &node]);
        r.parameters = HashMap::from([("fsType".into(), "xfs".into()), ("csi.storage.k8s.io/pvc/name".into(), "x".into())]);
        let v = self.create(r).await?;
        self.check("volume placed on the requisite node that has a pool", v.accessible_topology == vec![topo(&node)], format!("{:?}", v.accessible_topology));
        let ctx = &v.volume_context;
        self.check(
            "volume context: pool, device id, object, fs type",
            ctx.get("thin.csi.io/pool") == Some(&pool)
                && v.volume_id.starts_with(&format!("{pool}:{}:", ctx.get("thin.csi.io/device-id").cloned().unwrap_or_default()))
                && ctx.get("thin.csi.io/volume") == Some(&object_name("e2e-topology"))
                && ctx.get("thin.csi.io/fs-type").map(String::as_str) == Some("xfs"),
            format!("{ctx:?} id {}", v.volume_id),
        );
        let obj = self.volumes.get(&object_name("e2e-topology")).await.map_err(|e| e.to_string())?;
        self.check("ThinVolume records size and readiness", obj.spec.size_bytes == GIB as u64 && obj.status.as_ref().is_some_and(|s| s.ready), format!("{:?}", obj.spec));

        let r = self.c.create_volume(req("e2e-nowhere", GIB, &["elsewhere"], &[])).await;
        self.code("no pool on the requisite node: RESOURCE_EXHAUSTED", r, Code::ResourceExhausted, "elsewhere");
        let mut r = req("e2e-badparam", GIB, &[], &[]);
        r.parameters = HashMap::from([("colour".into(), "red".into())]);
        let r = self.c.create_volume(r).await;
        self.code("unknown parameter: INVALID_ARGUMENT naming it", r, Code::InvalidArgument, "parameters[colour]");
        let mut r = req("e2e-ratio", GIB, &[], &[]);
        r.parameters = HashMap::from([("overprovisioning".into(), "0.5".into())]);
        let r = self.c.create_volume(r).await;
        self.code("overprovisioning below 1: INVALID_ARGUMENT", r, Code::InvalidArgument, "overprovisioning");
        let mut r = req("e2e-limit", GIB, &[], &[]);
        r.capacity_range = Some(CapacityRange { required_bytes: 70_000, limit_bytes: 100_000 });
        let r = self.c.create_volume(r).await;
        self.code("limit below the rounded size: OUT_OF_RANGE", r, Code::OutOfRange, "65536");

        // GetCapacity per node topology.
        let p = self.pools.get(&pool).await.map_err(|e| e.to_string())?;
        let total = p.status.as_ref().and_then(|s| s.data_total_bytes).unwrap_or(0) as i64;
        let here = self.capacity(Some(&node), &[]).await?;
        let expect = (total * 10 - GIB) / 65536 * 65536;
        self.check("GetCapacity on the node = data × 10 − provisioned", here == expect, format!("{here} != {expect} (data {total})"));
        let ratio2 = self.capacity(Some(&node), &[("overprovisioning", "2")]).await?;
        self.check("GetCapacity honours overprovisioning", ratio2 == ((total * 2 - GIB).max(0)) / 65536 * 65536, format!("{ratio2}"));
        let there = self.capacity(Some("elsewhere"), &[]).await?;
        self.check("GetCapacity on a node without a pool is 0", there == 0, there);
        let other_pool = self.capacity(Some(&node), &[("pool", "no-such-pool")]).await?;
        self.check("GetCapacity for a pool name the node lacks is 0", other_pool == 0, other_pool);

        // Snapshot, then restore and clone placement.
        let snap = self
            .c
            .create_snapshot(CreateSnapshotRequest { source_volume_id: v.volume_id.clone(), name: "e2e-snap".into(), ..Default::default() })
            .await
            .map_err(|s| s.to_string())?
            .into_inner()
            .snapshot
            .ok_or("no snapshot")?;
        self.check("snapshot ready, on the source's pool", snap.ready_to_use && snap.snapshot_id.starts_with(&format!("{pool}:")) && snap.size_bytes == GIB, format!("{snap:?}"));
        let from_snap = |name: &str, size: i64, requisite: &[&str], preferred: &[&str]| {
            let mut r = req(name, size, requisite, preferred);
            r.volume_content_source = Some(VolumeContentSource { r#type: Some(SourceType::Snapshot(SnapshotSource { snapshot_id: snap.snapshot_id.clone() })) });
            r
        };
        let r = self.c.create_volume(from_snap("e2e-restore-elsewhere", GIB, &["elsewhere"], &[])).await;
        self.code("restore where the requisite excludes the source's node: RESOURCE_EXHAUSTED naming it", r, Code::ResourceExhausted, &node);
        let restored = self.create(from_snap("e2e-restore", 2 * GIB, &["elsewhere", &node], &["elsewhere"])).await?;
        self.check(
            "restore goes to the source's node even when another is preferred, and may be larger",
            restored.accessible_topology == vec![topo(&node)] && restored.capacity_bytes == 2 * GIB && restored.content_source.is_some(),
            format!("{restored:?}"),
        );
        let r = self.c.create_volume(from_snap("e2e-restore-small", GIB / 2, &[], &[])).await;
        self.code("restore smaller than the snapshot: OUT_OF_RANGE", r, Code::OutOfRange, "smaller");
        let mut clone = req("e2e-clone", 0, &[], &[]);
        clone.capacity_range = None;
        clone.volume_content_source = Some(VolumeContentSource { r#type: Some(SourceType::Volume(VolumeSource { volume_id: v.volume_id.clone() })) });
        let clone = self.create(clone).await?;
        self.check("clone without a size gets the source's size, on its node", clone.capacity_bytes == GIB && clone.accessible_topology == vec![topo(&node)], format!("{clone:?}"));

        // Expansion.
        let e = self
            .c
            .controller_expand_volume(ControllerExpandVolumeRequest {
                volume_id: v.volume_id.clone(),
                capacity_range: Some(CapacityRange { required_bytes: 3 * GIB, limit_bytes: 0 }),
                volume_capability: Some(mount_cap("xfs")),
                ..Default::default()
            })
            .await
            .map_err(|s| s.to_string())?
            .into_inner();
        let obj = self.volumes.get(&object_name("e2e-topology")).await.map_err(|e| e.to_string())?;
        self.check("expand: ThinVolume grows, node expansion required for mount", e.capacity_bytes == 3 * GIB && e.node_expansion_required && obj.spec.size_bytes == 3 * GIB as u64, format!("{e:?} size {}", obj.spec.size_bytes));
        let mut b = req("e2e-block", GIB, &[], &[]);
        b.volume_capabilities = vec![block_cap()];
        let b = self.create(b).await?;
        let e = self
            .c
            .controller_expand_volume(ControllerExpandVolumeRequest { volume_id: b.volume_id.clone(), capacity_range: Some(CapacityRange { required_bytes: 2 * GIB, limit_bytes: 0 }), ..Default::default() })
            .await
            .map_err(|s| s.to_string())?
            .into_inner();
        // The thin device's length is its table on the node: a staged block volume grows there.
        self.check("expand of a block volume asks for node expansion", e.capacity_bytes == 2 * GIB && e.node_expansion_required, format!("{e:?}"));
        let r = self
            .c
            .controller_expand_volume(ControllerExpandVolumeRequest { volume_id: b.volume_id.clone(), capacity_range: Some(CapacityRange { required_bytes: GIB, limit_bytes: GIB }), ..Default::default() })
            .await;
        self.code("shrink below the current size: OUT_OF_RANGE", r, Code::OutOfRange, "do not shrink");

        // Volume health follows the pool.
        let g = self.c.controller_get_volume_health(ControllerGetVolumeHealthRequest { volume_id: v.volume_id.clone(), ..Default::default() }).await.map_err(|s| s.to_string())?.into_inner();
        let health = g.volume_health;
        self.check("ControllerGetVolumeHealth: no entry on a healthy pool", health.as_ref().is_some_and(|h| h.health_statuses.is_empty() && h.volume_id == v.volume_id), format!("{health:?}"));
        // (Abnormal conditions — unhealthy, read-only, needs_check, out of
        // data space — are unit-tested in params.rs: the node rewrites its
        // pool status from the kernel as soon as anything else writes it,
        // so a patched status does not hold long enough to check here.)

        // A volume with snapshots can be deleted; the snapshot outlives it.
        self.c.delete_volume(DeleteVolumeRequest { volume_id: v.volume_id.clone(), ..Default::default() }).await.map_err(|s| s.to_string())?;
        let after = self.create(from_snap("e2e-restore-after", GIB, &[], &[])).await;
        self.check("the snapshot outlives its deleted source and restores", after.is_ok(), format!("{after:?}"));
        let g = self.c.controller_get_volume(ControllerGetVolumeRequest { volume_id: v.volume_id.clone() }).await;
        self.code("ControllerGetVolume of a deleted volume: NOT_FOUND", g, Code::NotFound, "does not exist");

        // Clean up everything; nothing is listed afterwards.
        let vols = self.c.list_volumes(ListVolumesRequest::default()).await.map_err(|s| s.to_string())?.into_inner().entries;
        for e in vols {
            let id = e.volume.map(|v| v.volume_id).unwrap_or_default();
            self.c.delete_volume(DeleteVolumeRequest { volume_id: id, ..Default::default() }).await.map_err(|s| s.to_string())?;
        }
        self.c.delete_snapshot(DeleteSnapshotRequest { snapshot_id: snap.snapshot_id.clone(), ..Default::default() }).await.map_err(|s| s.to_string())?;
        let left = self.c.list_volumes(ListVolumesRequest::default()).await.map_err(|s| s.to_string())?.into_inner().entries.len()
            + self.c.list_snapshots(ListSnapshotsRequest::default()).await.map_err(|s| s.to_string())?.into_inner().entries.len();
        self.check("everything deleted", left == 0, format!("{left} left"));
        Ok(())
    }
}

async fn standby(port: &str) -> Result<(), String> {
    let ep = format!("http://127.0.0.1:{port}");
    let mut id = IdentityClient::connect(ep.clone()).await.map_err(|e| e.to_string())?;
    let ready = id.probe(ProbeRequest {}).await.map_err(|s| s.to_string())?.into_inner().ready;
    let mut c = ControllerClient::connect(ep).await.map_err(|e| e.to_string())?;
    let r = c.create_volume(req("e2e-standby", GIB, &[], &[])).await;
    let ok = ready == Some(false) && r.as_ref().err().is_some_and(|s| s.code() == Code::Unavailable);
    let mut report = Report::default();
    if report.expect("a standby replica: Probe not ready, CreateVolume UNAVAILABLE", ok, format!("probe {ready:?}, create {r:?}")) {
        Ok(())
    } else {
        Err("standby".into())
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    report::install_panic_hook();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let result = match args.as_slice() {
        ["rules", port, node, pool] => {
            let client = match thin_csi_api::client::connect_default().await {
                Ok(c) => c,
                Err(e) => {
                    println!("FAIL csi_e2e: Kubernetes client: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let c = match ControllerClient::connect(format!("http://127.0.0.1:{port}")).await {
                Ok(c) => c,
                Err(e) => {
                    println!("FAIL csi_e2e: connect: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let mut ctx = Ctx { c, node: node.to_string(), pool: pool.to_string(), volumes: Api::all(client.clone()), pools: Api::all(client), report: Report::default() };
            let r = ctx.rules().await;
            if let Err(e) = &r {
                println!("FAIL csi_e2e rules stopped: {e}");
            }
            if r.is_ok() && ctx.report.clean() {
                Ok(())
            } else {
                Err(())
            }
        }
        ["standby", port] => standby(port).await.map_err(|_| ()),
        _ => {
            eprintln!("usage: csi_e2e rules PORT NODE POOL | csi_e2e standby PORT");
            return ExitCode::from(2);
        }
    };
    if result.is_ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
