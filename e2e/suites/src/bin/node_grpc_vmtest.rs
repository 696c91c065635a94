//! The CSI Node service on a real kernel, through gRPC: run inside the node
//! VM by e2e/guest/node-grpc.sh, against csi-node (its pool on /dev/vda)
//! and csi-controller on the host (reached at 10.0.2.2), which makes the
//! volumes (thin devices through the pool transactions, ThinVolume objects)
//! and expands them. This program plays kubelet.
//!
//!     node_grpc_vmtest --node NODE --node-endpoint HOST:PORT --controller-endpoint HOST:PORT --work DIR
//!
//! Prints `PASS <name>` / `FAIL <name>: <why>` lines and exits 1 if anything
//! failed.

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use csi_proto::v1::controller_client::ControllerClient;
use csi_proto::v1::identity_client::IdentityClient;
use csi_proto::v1::node_client::NodeClient;
use csi_proto::v1::volume_capability::access_mode::Mode;
use csi_proto::v1::volume_capability::{AccessMode, AccessType, BlockVolume, MountVolume};
use csi_proto::v1::*;
use tonic::transport::Channel;
use tonic::Code;

use report::{ensure, Check, Report};

const MIB: i64 = 1 << 20;

#[derive(Clone)]
struct T {
    node: NodeClient<Channel>,
    ctl: ControllerClient<Channel>,
    ident: IdentityClient<Channel>,
    node_name: String,
    work: PathBuf,
}

fn st(e: tonic::Status) -> String {
    format!("{:?}: {}", e.code(), e.message())
}

fn mount_cap(fs: &str, mode: Mode) -> VolumeCapability {
    VolumeCapability {
        access_type: Some(AccessType::Mount(MountVolume { fs_type: fs.into(), mount_flags: vec![], volume_mount_group: String::new() })),
        access_mode: Some(AccessMode { mode: mode as i32 }),
    }
}

fn block_cap() -> VolumeCapability {
    VolumeCapability { access_type: Some(AccessType::Block(BlockVolume {})), access_mode: Some(AccessMode { mode: Mode::SingleNodeWriter as i32 }) }
}

struct Vol {
    id: String,
    context: HashMap<String, String>,
    cap: VolumeCapability,
    staging: PathBuf,
}

impl T {
    fn path(&self, p: &str) -> PathBuf {
        self.work.join(p)
    }

    async fn create(&self, name: &str, size: i64, cap: VolumeCapability) -> Result<Vol, String> {
        self.create_from(name, size, cap, None).await
    }

    /// CreateVolume from a snapshot or a volume (`source`), or empty.
    async fn create_from(&self, name: &str, size: i64, cap: VolumeCapability, source: Option<volume_content_source::Type>) -> Result<Vol, String> {
        let topo = Topology { segments: [("topology.thin.csi.io/node".to_string(), self.node_name.clone())].into_iter().collect() };
        let req = CreateVolumeRequest {
            name: name.into(),
            capacity_range: Some(CapacityRange { required_bytes: size, limit_bytes: 0 }),
            volume_capabilities: vec![cap.clone()],
            accessibility_requirements: Some(TopologyRequirement { requisite: vec![topo.clone()], preferred: vec![topo] }),
            volume_content_source: source.map(|t| VolumeContentSource { r#type: Some(t) }),
            ..Default::default()
        };
        let v = self.ctl.clone().create_volume(req).await.map_err(st)?.into_inner().volume.ok_or("no volume")?;
        let staging = self.path(&format!("plugins/staging/{name}"));
        std::fs::create_dir_all(&staging).map_err(|e| e.to_string())?; // the CO creates staging dirs
        Ok(Vol { id: v.volume_id, context: v.volume_context, cap, staging })
    }

    async fn stage(&self, v: &Vol) -> Result<(), tonic::Status> {
        self.stage_with(v, &v.staging, v.cap.clone()).await
    }

    async fn stage_with(&self, v: &Vol, staging: &Path, cap: VolumeCapability) -> Result<(), tonic::Status> {
        let req = NodeStageVolumeRequest {
            volume_id: v.id.clone(),
            staging_target_path: staging.display().to_string(),
            volume_capability: Some(cap),
            volume_context: v.context.clone(),
            ..Default::default()
        };
        self.node.clone().node_stage_volume(req).await.map(|_| ())
    }

    async fn unstage(&self, v: &Vol) -> Result<(), tonic::Status> {
        let req = NodeUnstageVolumeRequest { volume_id: v.id.clone(), staging_target_path: v.staging.display().to_string() };
        self.node.clone().node_unstage_volume(req).await.map(|_| ())
    }

    async fn publish(&self, v: &Vol, target: &Path, readonly: bool) -> Result<(), tonic::Status> {
        let req = NodePublishVolumeRequest {
            volume_id: v.id.clone(),
            staging_target_path: v.staging.display().to_string(),
            target_path: target.display().to_string(),
            volume_capability: Some(v.cap.clone()),
            readonly,
            volume_context: v.context.clone(),
            ..Default::default()
        };
        self.node.clone().node_publish_volume(req).await.map(|_| ())
    }

    async fn unpublish(&self, v: &Vol, target: &Path) -> Result<(), tonic::Status> {
        let req = NodeUnpublishVolumeRequest { volume_id: v.id.clone(), target_path: target.display().to_string() };
        self.node.clone().node_unpublish_volume(req).await.map(|_| ())
    }

    async fn stats(&self, id: &str, path: &Path) -> Result<NodeGetVolumeStatsResponse, tonic::Status> {
        let req = NodeGetVolumeStatsRequest { volume_id: id.into(), volume_path: path.display().to_string(), staging_target_path: String::new() };
        self.node.clone().node_get_volume_stats(req).await.map(|r| r.into_inner())
    }

    /// GetCapacity on this node (default parameters).
    async fn capacity(&self) -> Result<i64, String> {
        let topo = Topology { segments: [("topology.thin.csi.io/node".to_string(), self.node_name.clone())].into_iter().collect() };
        let req = GetCapacityRequest { accessible_topology: Some(topo), ..Default::default() };
        Ok(self.ctl.clone().get_capacity(req).await.map_err(st)?.into_inner().available_capacity)
    }

    /// NodeGetVolumeHealth: the reasons of its entries (empty: healthy).
    async fn health(&self, id: &str) -> Result<Vec<String>, tonic::Status> {
        let req = NodeGetVolumeHealthRequest { volume_id: id.into(), ..Default::default() };
        let h = self.node.clone().node_get_volume_health(req).await?.into_inner().volume_health.unwrap_or_default();
        Ok(h.health_statuses.into_iter().map(|e| e.reason).collect())
    }

    async fn expand(&self, v: &Vol, path: &Path, size: i64) -> Result<i64, String> {
        let req = ControllerExpandVolumeRequest {
            volume_id: v.id.clone(),
            capacity_range: Some(CapacityRange { required_bytes: size, limit_bytes: 0 }),
            volume_capability: Some(v.cap.clone()),
            ..Default::default()
        };
        let c = self.ctl.clone().controller_expand_volume(req).await.map_err(|e| format!("ControllerExpandVolume: {}", st(e)))?.into_inner();
        ensure!(c.capacity_bytes >= size, "ControllerExpandVolume returned {} bytes", c.capacity_bytes);
        let req = NodeExpandVolumeRequest {
            volume_id: v.id.clone(),
            volume_path: path.display().to_string(),
            capacity_range: Some(CapacityRange { required_bytes: size, limit_bytes: 0 }),
            staging_target_path: v.staging.display().to_string(),
            volume_capability: Some(v.cap.clone()),
            ..Default::default()
        };
        let n = self.node.clone().node_expand_volume(req).await.map_err(|e| format!("NodeExpandVolume: {}", st(e)))?.into_inner();
        Ok(n.capacity_bytes)
    }

    async fn delete(&self, v: &Vol) -> Result<(), String> {
        self.ctl.clone().delete_volume(DeleteVolumeRequest { volume_id: v.id.clone(), ..Default::default() }).await.map_err(st).map(|_| ())
    }
}

/// The code back out of an error string made by [`st`].
fn code_of(e: &str) -> Code {
    [Code::ResourceExhausted, Code::InvalidArgument, Code::NotFound, Code::FailedPrecondition, Code::AlreadyExists, Code::OutOfRange]
        .into_iter()
        .find(|c| e.starts_with(&format!("{c:?}:")))
        .unwrap_or(Code::Unknown)
}

fn expect_code<X>(r: Result<X, tonic::Status>, code: Code, mention: &str) -> Check {
    match r {
        Ok(_) => Err(format!("succeeded; expected {code:?}")),
        Err(s) if s.code() == code && s.message().contains(mention) => Ok(()),
        Err(s) => Err(format!("got {:?} {:?}; expected {code:?} mentioning {mention:?}", s.code(), s.message())),
    }
}

fn write_file(path: &Path, data: &[u8]) -> Check {
    let mut f = std::fs::File::create(path).map_err(|e| format!("create {}: {e}", path.display()))?;
    f.write_all(data).map_err(|e| e.to_string())?;
    f.sync_all().map_err(|e| e.to_string())
}

fn read_file(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("read {}: {e}", path.display()))
}

fn is_mounted(path: &Path) -> bool {
    let Ok(c) = std::fs::canonicalize(path) else { return false };
    csi_node::fs::is_mount_point(&c).unwrap_or(false)
}

fn usage(r: &NodeGetVolumeStatsResponse, unit: volume_usage::Unit) -> Option<VolumeUsage> {
    r.usage.iter().find(|u| u.unit == unit as i32).copied()
}

/// Active thin devices of the pool, as dm names (from /sys: no tools needed).
fn dm_names() -> Vec<String> {
    let mut names = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/sys/block") {
        for e in dir.flatten() {
            if let Ok(n) = std::fs::read_to_string(e.path().join("dm/name")) {
                names.push(n.trim().to_string());
            }
        }
    }
    names
}

fn thin_active(id: &str) -> bool {
    // <pool>:<thin id>:<create transaction>
    let thin = id.split(':').nth(1).unwrap_or("");
    dm_names().iter().any(|n| n.ends_with(&format!("-thin-{thin}")))
}

struct Args {
    node: String,
    node_ep: String,
    ctl_ep: String,
    work: PathBuf,
}

fn parse_args() -> Result<Args, String> {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut m = HashMap::new();
    let mut it = argv.iter();
    while let Some(k) = it.next() {
        let k = k.strip_prefix("--").ok_or(format!("expected --option, got {k}"))?;
        m.insert(k.to_string(), it.next().ok_or(format!("--{k} needs a value"))?.clone());
    }
    let get = |k: &str| m.get(k).cloned().ok_or(format!("--{k} is required"));
    Ok(Args { node: get("node")?, node_ep: get("node-endpoint")?, ctl_ep: get("controller-endpoint")?, work: PathBuf::from(get("work")?) })
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("node_grpc_vmtest: {e}");
            return ExitCode::from(2);
        }
    };
    let connect = |ep: &str| tonic::transport::Endpoint::from_shared(format!("http://{ep}")).map(|e| e.connect_lazy());
    let (node_ch, ctl_ch) = match (connect(&args.node_ep), connect(&args.ctl_ep)) {
        (Ok(a), Ok(b)) => (a, b),
        _ => {
            eprintln!("node_grpc_vmtest: bad endpoint");
            return ExitCode::from(2);
        }
    };
    let t = T {
        node: NodeClient::new(node_ch.clone()),
        ctl: ControllerClient::new(ctl_ch),
        ident: IdentityClient::new(node_ch),
        node_name: args.node.clone(),
        work: args.work.clone(),
    };
    let mut s = Report::start();
    run(&t, &mut s).await;
    s.finish("node_grpc_vmtest")
}

async fn run(t: &T, s: &mut Report) {
    // ---- identity, info, capabilities
    s.case_async("GetPluginInfo names thin.csi.io", async {
        let r = t.ident.clone().get_plugin_info(GetPluginInfoRequest {}).await.map_err(st)?.into_inner();
        ensure!(r.name == "thin.csi.io" && !r.vendor_version.is_empty(), "{r:?}");
        Ok(())
    })
    .await;
    s.case_async("Probe: ready (pool active, API reachable)", async {
        let r = t.ident.clone().probe(ProbeRequest {}).await.map_err(st)?.into_inner();
        ensure!(r.ready == Some(true), "{r:?}");
        Ok(())
    })
    .await;
    s.case_async("GetPluginCapabilities: the plugin's, as csi-controller reports them", async {
        let r = t.ident.clone().get_plugin_capabilities(GetPluginCapabilitiesRequest {}).await.map_err(st)?.into_inner();
        ensure!(r.capabilities == csi_contract::plugin::capabilities(), "{r:?}");
        Ok(())
    })
    .await;
    s.case_async("NodeGetInfo: node id, topology key, max volumes", async {
        let r = t.node.clone().node_get_info(NodeGetInfoRequest::default()).await.map_err(st)?.into_inner();
        ensure!(r.node_id == t.node_name, "node id {}", r.node_id);
        let seg = r.accessible_topology.map(|t| t.segments).unwrap_or_default();
        ensure!(seg.get("topology.thin.csi.io/node") == Some(&t.node_name), "topology {seg:?}");
        ensure!(r.max_volumes_per_node > 0, "max volumes {}", r.max_volumes_per_node);
        Ok(())
    })
    .await;
    s.case_async("NodeGetCapabilities: stage, stats, expand (VOLUME_CONDITION is gone since CSI v1.13)", async {
        let r = t.node.clone().node_get_capabilities(NodeGetCapabilitiesRequest {}).await.map_err(st)?.into_inner();
        let mut types: Vec<i32> = r
            .capabilities
            .iter()
            .filter_map(|c| match c.r#type {
                Some(node_service_capability::Type::Rpc(rpc)) => Some(rpc.r#type),
                _ => None,
            })
            .collect();
        types.sort();
        ensure!(types == vec![1, 2, 3], "{types:?}");
        Ok(())
    })
    .await;

    // ---- ext4: stage, publish, data, unpublish, unstage, again
    let a = match t.create("vm-ext4", 64 * MIB, mount_cap("ext4", Mode::SingleNodeWriter)).await {
        Ok(v) => v,
        Err(e) => {
            s.case_async("CreateVolume ext4 (controller)", async { Err::<(), _>(e) }).await;
            return;
        }
    };
    let pod1 = t.path("pods/1/volumes/vm-ext4/mount");
    let pod2 = t.path("pods/2/volumes/vm-ext4/mount");
    s.case_async("stage ext4: formatted and mounted at the staging path", async {
        t.stage(&a).await.map_err(st)?;
        ensure!(is_mounted(&a.staging), "staging path not a mount point");
        Ok(())
    })
    .await;
    s.case_async("stage again: idempotent", async { t.stage(&a).await.map_err(st) }).await;
    s.case_async("stage again read-only at the same path: ALREADY_EXISTS", async {
        expect_code(t.stage_with(&a, &a.staging, mount_cap("ext4", Mode::SingleNodeReaderOnly)).await, Code::AlreadyExists, "")
    })
    .await;
    s.case_async("publish creates the target and binds it; write a file (fsync)", async {
        ensure!(!pod1.exists(), "target exists before publish");
        t.publish(&a, &pod1, false).await.map_err(st)?;
        ensure!(is_mounted(&pod1), "target not mounted");
        write_file(&pod1.join("data"), b"thin-csi node test\n")?;
        t.publish(&a, &pod1, false).await.map_err(|e| format!("second publish: {}", st(e)))
    })
    .await;
    s.case_async("read-only publish refuses writes; the file is visible", async {
        t.publish(&a, &pod2, true).await.map_err(st)?;
        ensure!(read_file(&pod2.join("data"))? == b"thin-csi node test\n", "content differs");
        match std::fs::File::create(pod2.join("nope")) {
            Err(e) if e.raw_os_error() == Some(libc::EROFS) => {}
            other => return Err(format!("write on the read-only publish: {other:?}")),
        }
        expect_code(t.publish(&a, &pod2, false).await, Code::AlreadyExists, "")
    })
    .await;
    s.case_async("stats of a mount: bytes and inodes; NodeGetVolumeHealth: healthy", async {
        let r = t.stats(&a.id, &pod1).await.map_err(st)?;
        let b = usage(&r, volume_usage::Unit::Bytes).ok_or("no bytes")?;
        let i = usage(&r, volume_usage::Unit::Inodes).ok_or("no inodes")?;
        ensure!(b.total > 50 * MIB && b.total <= 64 * MIB && b.used > 0 && b.available > 0, "bytes {b:?}");
        ensure!(i.total > 0 && i.used > 0, "inodes {i:?}");
        let h = t.health(&a.id).await.map_err(st)?;
        ensure!(h.is_empty(), "health {h:?}");
        Ok(())
    })
    .await;
    s.case_async("unstage while published: FAILED_PRECONDITION, still staged", async {
        expect_code(t.unstage(&a).await, Code::FailedPrecondition, "")?;
        ensure!(is_mounted(&a.staging) && thin_active(&a.id), "staging gone after a refused unstage");
        Ok(())
    })
    .await;
    s.case_async("expand online ext4 64 -> 128 MiB while published", async {
        let cap = t.expand(&a, &pod1, 128 * MIB).await?;
        ensure!(cap == 128 * MIB, "NodeExpandVolume said {cap}");
        let b = usage(&t.stats(&a.id, &pod1).await.map_err(st)?, volume_usage::Unit::Bytes).ok_or("no bytes")?;
        ensure!(b.total > 100 * MIB, "filesystem total after expand {}", b.total);
        ensure!(read_file(&pod1.join("data"))? == b"thin-csi node test\n", "content differs after expand");
        let again = t.expand(&a, &pod1, 128 * MIB).await?;
        ensure!(again == 128 * MIB, "second expand said {again}");
        Ok(())
    })
    .await;
    s.case_async("unpublish removes the target; repeated: ok", async {
        for p in [&pod1, &pod2] {
            t.unpublish(&a, p).await.map_err(st)?;
            ensure!(!p.exists(), "{} still exists", p.display());
            t.unpublish(&a, p).await.map_err(|e| format!("second unpublish: {}", st(e)))?;
        }
        Ok(())
    })
    .await;
    s.case_async("unstage: unmounted, device deactivated; repeated: ok", async {
        t.unstage(&a).await.map_err(st)?;
        ensure!(!is_mounted(&a.staging), "staging still mounted");
        ensure!(!thin_active(&a.id), "thin device still active: {:?}", dm_names());
        t.unstage(&a).await.map_err(|e| format!("second unstage: {}", st(e)))?;
        expect_code(t.stats(&a.id, &a.staging).await, Code::NotFound, "not staged")
    })
    .await;
    s.case_async("stage as xfs over the ext4 volume: refused, nothing formatted", async {
        let r = t.stage_with(&a, &a.staging, mount_cap("xfs", Mode::SingleNodeWriter)).await;
        expect_code(r, Code::FailedPrecondition, "refusing to format")?;
        ensure!(!is_mounted(&a.staging), "mounted anyway");
        ensure!(!thin_active(&a.id), "the failed stage left the device active");
        Ok(())
    })
    .await;
    s.case_async("stage again: the data is there, not reformatted, the size is the expanded one", async {
        t.stage(&a).await.map_err(st)?;
        t.publish(&a, &pod1, false).await.map_err(st)?;
        ensure!(read_file(&pod1.join("data"))? == b"thin-csi node test\n", "the file is gone or differs");
        let b = usage(&t.stats(&a.id, &pod1).await.map_err(st)?, volume_usage::Unit::Bytes).ok_or("no bytes")?;
        ensure!(b.total > 100 * MIB, "filesystem total {}", b.total);
        t.unpublish(&a, &pod1).await.map_err(st)?;
        t.unstage(&a).await.map_err(st)
    })
    .await;

    // ---- xfs
    match t.create("vm-xfs", 512 * MIB, mount_cap("xfs", Mode::SingleNodeWriter)).await {
        Err(e) => {
            s.case_async("CreateVolume xfs (controller)", async { Err::<(), _>(e) }).await;
        }
        Ok(x) => {
            let px = t.path("pods/3/volumes/vm-xfs/mount");
            s.case_async("xfs: stage, publish, write, stats", async {
                t.stage(&x).await.map_err(st)?;
                t.publish(&x, &px, false).await.map_err(st)?;
                write_file(&px.join("data"), b"xfs data\n")?;
                let r = t.stats(&x.id, &px).await.map_err(st)?;
                let b = usage(&r, volume_usage::Unit::Bytes).ok_or("no bytes")?;
                ensure!(b.total > 400 * MIB, "bytes {b:?}");
                let mounts = std::fs::read_to_string("/proc/self/mountinfo").map_err(|e| e.to_string())?;
                ensure!(mounts.lines().any(|l| l.contains(" - xfs ") && l.contains("vm-xfs")), "no xfs mount listed");
                Ok(())
            })
            .await;
            s.case_async("xfs: expand online 512 -> 640 MiB", async {
                let before = usage(&t.stats(&x.id, &px).await.map_err(st)?, volume_usage::Unit::Bytes).ok_or("no bytes")?;
                let cap = t.expand(&x, &px, 640 * MIB).await?;
                ensure!(cap == 640 * MIB, "said {cap}");
                let b = usage(&t.stats(&x.id, &px).await.map_err(st)?, volume_usage::Unit::Bytes).ok_or("no bytes")?;
                // statvfs leaves xfs's internal log out of the total: compare the growth.
                ensure!(b.total - before.total >= 120 * MIB, "total {} -> {}", before.total, b.total);
                ensure!(read_file(&px.join("data"))? == b"xfs data\n", "content differs");
                Ok(())
            })
            .await;
            s.case_async("xfs: unpublish, unstage, stage again keeps the data", async {
                t.unpublish(&x, &px).await.map_err(st)?;
                t.unstage(&x).await.map_err(st)?;
                ensure!(!thin_active(&x.id), "still active");
                t.stage(&x).await.map_err(st)?;
                t.publish(&x, &px, false).await.map_err(st)?;
                ensure!(read_file(&px.join("data"))? == b"xfs data\n", "content differs");
                t.unpublish(&x, &px).await.map_err(st)?;
                t.unstage(&x).await.map_err(st)
            })
            .await;
            s.case_async("xfs: DeleteVolume after unstage", async { t.delete(&x).await }).await;
        }
    }

    // ---- raw block
    match t.create("vm-block", 64 * MIB, block_cap()).await {
        Err(e) => {
            s.case_async("CreateVolume block (controller)", async { Err::<(), _>(e) }).await;
        }
        Ok(b) => {
            let pb = t.path("pods/4/volumeDevices/vm-block/dev");
            s.case_async("block: stage activates, publish binds the device node onto a file", async {
                t.stage(&b).await.map_err(st)?;
                ensure!(thin_active(&b.id), "not active after stage");
                t.publish(&b, &pb, false).await.map_err(st)?;
                let m = std::fs::metadata(&pb).map_err(|e| e.to_string())?;
                ensure!(m.file_type().is_block_device(), "target is not a block device");
                t.publish(&b, &pb, false).await.map_err(|e| format!("second publish: {}", st(e)))?;
                let mut f = std::fs::OpenOptions::new().read(true).write(true).open(&pb).map_err(|e| e.to_string())?;
                f.seek(SeekFrom::Start(1 << 20)).map_err(|e| e.to_string())?;
                f.write_all(&[0xa5; 4096]).map_err(|e| e.to_string())?;
                f.sync_all().map_err(|e| e.to_string())?;
                let mut back = vec![0u8; 4096];
                f.seek(SeekFrom::Start(1 << 20)).map_err(|e| e.to_string())?;
                f.read_exact(&mut back).map_err(|e| e.to_string())?;
                ensure!(back.iter().all(|&x| x == 0xa5), "read back differs");
                let _ = m.rdev();
                Ok(())
            })
            .await;
            s.case_async("block: read-only publish is INVALID_ARGUMENT naming readonly", async {
                expect_code(t.publish(&b, &t.path("pods/5/dev"), true).await, Code::InvalidArgument, "readonly")
            })
            .await;
            s.case_async("block: stats report the device size", async {
                let r = t.stats(&b.id, &pb).await.map_err(st)?;
                let u = usage(&r, volume_usage::Unit::Bytes).ok_or("no bytes")?;
                ensure!(u.total == 64 * MIB, "total {}", u.total);
                Ok(())
            })
            .await;
            s.case_async("block: expand 64 -> 128 MiB, the device grows", async {
                let cap = t.expand(&b, &pb, 128 * MIB).await?;
                ensure!(cap == 128 * MIB, "said {cap}");
                let size = csi_node::fs::block_device_size(&pb).map_err(|e| e.to_string())?;
                ensure!(size == 128 << 20, "device size {size}");
                Ok(())
            })
            .await;
            s.case_async("block: unstage while bound is refused; unpublish removes the file; unstage; data kept", async {
                expect_code(t.unstage(&b).await, Code::FailedPrecondition, "")?;
                t.unpublish(&b, &pb).await.map_err(st)?;
                ensure!(!pb.exists(), "target file still exists");
                t.unstage(&b).await.map_err(st)?;
                ensure!(!thin_active(&b.id), "still active");
                t.stage(&b).await.map_err(st)?;
                t.publish(&b, &pb, false).await.map_err(st)?;
                let mut f = std::fs::File::open(&pb).map_err(|e| e.to_string())?;
                let mut back = vec![0u8; 4096];
                f.seek(SeekFrom::Start(1 << 20)).map_err(|e| e.to_string())?;
                f.read_exact(&mut back).map_err(|e| e.to_string())?;
                ensure!(back.iter().all(|&x| x == 0xa5), "data lost");
                drop(f);
                t.unpublish(&b, &pb).await.map_err(st)?;
                t.unstage(&b).await.map_err(st)
            })
            .await;
            s.case_async("block: DeleteVolume after unstage", async { t.delete(&b).await }).await;
        }
    }

    // ---- a read-only stage never formats; a restore or clone into a larger volume grows its filesystem
    match t.create("vm-ro-empty", 64 * MIB, mount_cap("ext4", Mode::SingleNodeReaderOnly)).await {
        Err(e) => {
            s.case_async("CreateVolume for a read-only stage (controller)", async { Err::<(), _>(e) }).await;
        }
        Ok(r) => {
            s.case_async("read-only stage of an empty volume: FAILED_PRECONDITION, nothing formatted", async {
                expect_code(t.stage(&r).await, Code::FailedPrecondition, "never formats")?;
                ensure!(!is_mounted(&r.staging), "mounted anyway");
                ensure!(!thin_active(&r.id), "the refused stage left the device active");
                // The device read raw: still zeros where mkfs would have written.
                let raw = Vol { cap: block_cap(), staging: t.path("plugins/staging/vm-ro-empty-raw"), ..r.clone_shallow() };
                std::fs::create_dir_all(&raw.staging).map_err(|e| e.to_string())?;
                let dev = t.path("pods/8/volumeDevices/vm-ro-empty/dev");
                t.stage(&raw).await.map_err(st)?;
                t.publish(&raw, &dev, false).await.map_err(st)?;
                let head = read_file(&dev).map(|mut b| {
                    b.truncate(4 << 20);
                    b
                });
                t.unpublish(&raw, &dev).await.map_err(st)?;
                t.unstage(&raw).await.map_err(st)?;
                let head = head?;
                ensure!(head.len() == 4 << 20 && head.iter().all(|&b| b == 0), "the device was written");
                t.delete(&r).await
            })
            .await;
        }
    }
    let snap = t
        .ctl
        .clone()
        .create_snapshot(CreateSnapshotRequest { source_volume_id: a.id.clone(), name: "vm-ext4-snap".into(), ..Default::default() })
        .await
        .map_err(st)
        .and_then(|r| r.into_inner().snapshot.map(|s| s.snapshot_id).ok_or_else(|| "no snapshot".to_string()));
    for (name, size, source) in [
        ("vm-restore-big", 256 * MIB, snap.clone().map(|snapshot_id| volume_content_source::Type::Snapshot(volume_content_source::SnapshotSource { snapshot_id }))),
        ("vm-clone-big", 192 * MIB, Ok(volume_content_source::Type::Volume(volume_content_source::VolumeSource { volume_id: a.id.clone() }))),
    ] {
        s.case_async(&format!("{name}: 128 MiB ext4 into {} MiB, the filesystem grown at stage, the data there", size / MIB), async {
            let v = t.create_from(name, size, mount_cap("ext4", Mode::SingleNodeWriter), Some(source?)).await?;
            let target = t.path(&format!("pods/9/volumes/{name}/mount"));
            t.stage(&v).await.map_err(st)?;
            t.publish(&v, &target, false).await.map_err(st)?;
            let data = read_file(&target.join("data"));
            let total = usage(&t.stats(&v.id, &target).await.map_err(st)?, volume_usage::Unit::Bytes).map(|u| u.total);
            t.unpublish(&v, &target).await.map_err(st)?;
            t.unstage(&v).await.map_err(st)?;
            t.delete(&v).await?;
            ensure!(data? == b"thin-csi node test\n", "the file is gone or differs");
            let total = total.ok_or("no bytes")?;
            // ext4's own metadata stays out of statvfs' total (~9 % at these
            // sizes); the 128 MiB source's filesystem would be under 120 MiB.
            ensure!(total > size / 5 * 4, "filesystem total {total} of a {size}-byte volume");
            Ok(())
        })
        .await;
    }
    if let Ok(id) = snap {
        s.case_async("the snapshot deleted", async {
            t.ctl.clone().delete_snapshot(DeleteSnapshotRequest { snapshot_id: id, ..Default::default() }).await.map_err(st).map(|_| ())
        })
        .await;
    }

    // ---- bad input: exact codes
    let pool = a.id.split(':').next().unwrap_or_default().to_string();
    let ghost = Vol { id: format!("{pool}:4242:1"), context: HashMap::new(), cap: mount_cap("ext4", Mode::SingleNodeWriter), staging: t.path("plugins/staging/ghost") };
    s.case_async("errors: missing fields are INVALID_ARGUMENT naming the field", async {
        let mut n = t.node.clone();
        let cap = Some(mount_cap("ext4", Mode::SingleNodeWriter));
        let stage = |id: &str, path: &str, cap: Option<VolumeCapability>| NodeStageVolumeRequest {
            volume_id: id.into(),
            staging_target_path: path.into(),
            volume_capability: cap,
            ..Default::default()
        };
        expect_code(n.node_stage_volume(stage("", "/x", cap.clone())).await, Code::InvalidArgument, "volume_id")?;
        expect_code(n.node_stage_volume(stage(&a.id, "", cap.clone())).await, Code::InvalidArgument, "staging_target_path")?;
        expect_code(n.node_stage_volume(stage(&a.id, "/x", None)).await, Code::InvalidArgument, "volume_capability")?;
        let multi = mount_cap("ext4", Mode::MultiNodeMultiWriter);
        expect_code(n.node_stage_volume(stage(&a.id, "/x", Some(multi))).await, Code::InvalidArgument, "access_mode")?;
        expect_code(n.node_stage_volume(stage(&a.id, "/x", Some(mount_cap("btrfs", Mode::SingleNodeWriter)))).await, Code::InvalidArgument, "fs_type")?;
        let publish = NodePublishVolumeRequest { volume_id: a.id.clone(), staging_target_path: "/x".into(), volume_capability: cap.clone(), ..Default::default() };
        expect_code(n.node_publish_volume(publish).await, Code::InvalidArgument, "target_path")?;
        let unpub = NodeUnpublishVolumeRequest { volume_id: a.id.clone(), target_path: String::new() };
        expect_code(n.node_unpublish_volume(unpub).await, Code::InvalidArgument, "target_path")?;
        let unstage = NodeUnstageVolumeRequest { volume_id: String::new(), staging_target_path: "/x".into() };
        expect_code(n.node_unstage_volume(unstage).await, Code::InvalidArgument, "volume_id")?;
        let stats = NodeGetVolumeStatsRequest { volume_id: a.id.clone(), ..Default::default() };
        expect_code(n.node_get_volume_stats(stats).await, Code::InvalidArgument, "volume_path")?;
        let expand = NodeExpandVolumeRequest { volume_id: a.id.clone(), ..Default::default() };
        expect_code(n.node_expand_volume(expand).await, Code::InvalidArgument, "volume_path")
    })
    .await;
    s.case_async("errors: unknown volumes are NOT_FOUND", async {
        let bogus = Vol { id: "some-vol-id".into(), ..ghost.clone_shallow() };
        expect_code(t.stage(&bogus).await, Code::NotFound, "")?;
        let other_pool = Vol { id: "0123456789abcdef0123456789abcdef:3:1".into(), ..ghost.clone_shallow() };
        expect_code(t.stage(&other_pool).await, Code::NotFound, "not on this node's pool")?;
        std::fs::create_dir_all(&ghost.staging).map_err(|e| e.to_string())?;
        expect_code(t.stage(&ghost).await, Code::NotFound, "does not exist")?;
        expect_code(t.stats("some-vol-id", &t.work).await, Code::NotFound, "")?;
        expect_code(t.stats(&a.id, Path::new("/path/that/does/not/exist")).await, Code::NotFound, "")?;
        let expand = NodeExpandVolumeRequest { volume_id: "some-vol-id".into(), volume_path: t.work.display().to_string(), ..Default::default() };
        expect_code(t.node.clone().node_expand_volume(expand).await, Code::NotFound, "")
    })
    .await;
    s.case_async("errors: publish before stage is FAILED_PRECONDITION", async {
        expect_code(t.publish(&a, &t.path("pods/6/mount"), false).await, Code::FailedPrecondition, "not staged")
    })
    .await;
    s.case_async("ext4: DeleteVolume after unstage", async { t.delete(&a).await }).await;

    // ---- a pool out of data space: NodeGetVolumeHealth says so
    match t.create("vm-fill", 2048 * MIB, block_cap()).await {
        Err(e) => {
            s.case_async("CreateVolume 2 GiB on a 1 GiB pool (controller)", async { Err::<(), _>(e) }).await;
        }
        Ok(f) => {
            let pf = t.path("pods/7/volumeDevices/vm-fill/dev");
            s.case_async("fill the pool: writes fail, NodeGetVolumeHealth says PoolOutOfDataSpace", async {
                t.stage(&f).await.map_err(st)?;
                t.publish(&f, &pf, false).await.map_err(st)?;
                let before = t.health(&f.id).await.map_err(st)?;
                ensure!(before.is_empty(), "unhealthy before filling: {before:?}");
                let written = fill(&pf)?;
                let after = t.health(&f.id).await.map_err(st)?;
                ensure!(after == ["PoolOutOfDataSpace"], "after {written} bytes written: {after:?}");
                Ok(())
            })
            .await;
            s.case_async("NodeGetStorageHealth on the full pool: STORAGE_DEGRADED PoolOutOfDataSpace", async {
                let b = t.node.clone().node_get_storage_health(NodeGetStorageHealthRequest::default()).await.map_err(st)?.into_inner().backend_health;
                let got: Vec<(i32, &str)> = b.iter().map(|h| (h.status, h.reason.as_str())).collect();
                ensure!(got == [(StorageHealthErrorType::StorageDegraded as i32, "PoolOutOfDataSpace")], "{b:?}");
                Ok(())
            })
            .await;
            // The mode reaches the ThinPool status through the pool's
            // device-mapper event (no spec change happened since the fill).
            s.case_async("the node reports the mode: ControllerGetVolumeHealth says PoolOutOfDataSpace, GetCapacity 0", async {
                let mut last = String::new();
                for _ in 0..120 {
                    let req = ControllerGetVolumeHealthRequest { volume_id: f.id.clone(), ..Default::default() };
                    let h = t.ctl.clone().controller_get_volume_health(req).await.map_err(st)?.into_inner().volume_health.unwrap_or_default();
                    let reasons: Vec<String> = h.health_statuses.into_iter().map(|e| e.reason).collect();
                    let cap = t.capacity().await?;
                    if reasons == ["PoolOutOfDataSpace"] && cap == 0 {
                        return Ok(());
                    }
                    last = format!("health {reasons:?}, capacity {cap}");
                    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                }
                Err(format!("after 60 s: {last}"))
            })
            .await;
            s.case_async("CreateVolume on the full pool: RESOURCE_EXHAUSTED", async {
                expect_code(t.create("vm-more", 64 * MIB, block_cap()).await.map_err(|e| tonic::Status::new(code_of(&e), e)), Code::ResourceExhausted, "out of data space")
            })
            .await;
            s.case_async("CreateSnapshot on the full pool: RESOURCE_EXHAUSTED", async {
                let req = CreateSnapshotRequest { name: "vm-fill-snap".into(), source_volume_id: f.id.clone(), ..Default::default() };
                expect_code(t.ctl.clone().create_snapshot(req).await, Code::ResourceExhausted, "out of data space")
            })
            .await;
            s.case_async("the full volume unpublished, unstaged and deleted", async {
                t.unpublish(&f, &pf).await.map_err(st)?;
                t.unstage(&f).await.map_err(st)?;
                t.delete(&f).await
            })
            .await;
            // The kernel leaves out_of_data_space at the next metadata
            // commit that finds free blocks: the delete's message here.
            s.case_async("the delete freed the blocks: the pool is rw again (no storage health entry, capacity back)", async {
                let mut last = String::new();
                for _ in 0..120 {
                    let b = t.node.clone().node_get_storage_health(NodeGetStorageHealthRequest::default()).await.map_err(st)?.into_inner().backend_health;
                    let cap = t.capacity().await?;
                    if b.is_empty() && cap > 0 {
                        return Ok(());
                    }
                    last = format!("storage health {b:?}, capacity {cap}");
                    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                }
                Err(format!("after 60 s: {last}"))
            })
            .await;
        }
    }
}

/// Writes the block device at `path` with O_DIRECT until a write fails
/// (the pool runs out of data space: error_if_no_space); returns the bytes
/// written. An error if it never fails.
fn fill(path: &Path) -> Result<u64, String> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new().write(true).custom_flags(libc::O_DIRECT).open(path).map_err(|e| e.to_string())?;
    let chunk = 1usize << 20;
    let mut raw = vec![0x5au8; chunk + 4096];
    let off = raw.as_ptr().align_offset(4096);
    let buf = &mut raw[off..off + chunk];
    let mut written = 0u64;
    while written < 2048 << 20 {
        match f.write(buf) {
            Ok(n) if n > 0 => written += n as u64,
            Ok(_) => return Ok(written),
            Err(_) => return Ok(written),
        }
    }
    Err(format!("wrote {written} bytes and nothing failed"))
}

impl Vol {
    fn clone_shallow(&self) -> Vol {
        Vol { id: self.id.clone(), context: self.context.clone(), cap: self.cap.clone(), staging: self.staging.clone() }
    }
}
