//! The CSI Node service: staging (activate the thin device, make a
//! filesystem only on an empty device, mount), publishing (bind mount, or
//! the device node bound onto a file for raw block), the reverse of both,
//! online expansion, usage and condition, node info and capabilities.
//!
//! Paths: the CO creates the staging directory (we create it if it is
//! missing, and leave it in place on unstage); the publish target is ours —
//! created on publish (a directory, or a file for raw block, with its
//! parents) and removed on unpublish.
//!
//! Device-mapper calls take the pool lock the transaction executor shares
//! (short: activate, resize, look up); mkfs, mount and resize tools run
//! without it, in blocking tasks. One operation per volume at a time: a
//! second concurrent call for the same volume is ABORTED.

use std::collections::HashMap;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use csi_contract::busy::{Busy, InFlight};
use csi_proto::v1::node_server::Node;
use csi_proto::v1::volume_capability::access_mode::Mode;
use csi_proto::v1::volume_capability::{AccessType, MountVolume};
use csi_proto::v1::*;
use kube::api::{Api, ListParams};
use kube::Client;
use thin_csi_api::ThinVolume;
use csi_contract::volume_health::{volume_health, PoolCondition};
use thinpool::{Kernel, KernelError, Sectors, ThinId};
use thinpool_dm::DmPool;
use tonic::{Request, Response, Status};

use crate::fs::{self, FsType};
use crate::status::{reply, Error, Result};

use csi_contract::keys::{node_topology, CTX_FS_TYPE, CTX_VOLUME};
use csi_contract::DeviceRef;

/// Where the node's settings come from (command line).
#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub node: String,
    /// The ThinPool object name (pool identity) this node serves.
    pub pool_object: String,
    pub max_volumes: i64,
    /// Honour the test-only kill hook in NodeExpandVolume (`--test-hooks true`).
    pub test_hooks: bool,
    /// Staging, target and volume paths must resolve inside it.
    pub kubelet_dir: fs::KubeletDir,
}

#[derive(Clone)]
pub struct NodeService {
    inner: Arc<Inner>,
}

struct Inner {
    config: NodeConfig,
    pool: Arc<Mutex<DmPool>>,
    volumes: Api<ThinVolume>,
    busy: InFlight,
}

fn required<'a>(value: &'a str, field: &str) -> Result<&'a str> {
    if value.is_empty() {
        Err(Error::invalid(field, "missing"))
    } else {
        Ok(value)
    }
}

/// Blocking filesystem work off the async threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(|e| Error::Internal(format!("blocking task: {e}")))?
}

fn io_err(op: &str, path: &Path, e: std::io::Error) -> Error {
    if e.kind() == std::io::ErrorKind::NotFound {
        Error::NotFound(format!("{}: no such file or directory", path.display()))
    } else {
        Error::Internal(format!("{op} {}: {e}", path.display()))
    }
}

/// The access type and whether the mode is read-only; checks the mode.
fn check_capability(cap: Option<&VolumeCapability>) -> Result<(&AccessType, bool)> {
    let cap = cap.ok_or_else(|| Error::invalid("volume_capability", "missing"))?;
    let access = cap.access_type.as_ref().ok_or_else(|| Error::invalid("volume_capability.access_type", "missing (mount or block)"))?;
    let mode = cap.access_mode.as_ref().ok_or_else(|| Error::invalid("volume_capability.access_mode", "missing"))?;
    match Mode::try_from(mode.mode) {
        Ok(Mode::SingleNodeWriter | Mode::SingleNodeSingleWriter | Mode::SingleNodeMultiWriter) => Ok((access, false)),
        Ok(Mode::SingleNodeReaderOnly) => Ok((access, true)),
        Ok(m) => Err(Error::invalid("volume_capability.access_mode", format!("{} is not supported: volumes are node-local", m.as_str_name()))),
        Err(_) => Err(Error::invalid("volume_capability.access_mode", format!("unknown mode {}", mode.mode))),
    }
}

/// The filesystem to make/mount: the capability's fs_type, else the
/// volume context's, else ext4.
fn fs_type(mount: &MountVolume, context: &HashMap<String, String>) -> Result<FsType> {
    if !mount.fs_type.is_empty() {
        return mount.fs_type.parse().map_err(|e: fs::FsError| Error::invalid("volume_capability.mount.fs_type", e.to_string()));
    }
    match context.get(CTX_FS_TYPE).filter(|s| !s.is_empty()) {
        Some(s) => s.parse().map_err(|e: fs::FsError| Error::invalid(format!("volume_context[{CTX_FS_TYPE}]"), e.to_string())),
        None => Ok(FsType::Ext4),
    }
}

/// mkfs options for a fresh thin device: nothing to discard on it.
fn mkfs_options(fs: &FsType) -> Vec<String> {
    match fs {
        FsType::Xfs => vec!["-K".into()],
        _ => vec!["-E".into(), "nodiscard".into()],
    }
}

fn canonical(path: &Path) -> Result<PathBuf> {
    std::fs::canonicalize(path).map_err(|e| io_err("resolving", path, e))
}

impl NodeService {
    pub fn new(client: Client, pool: Arc<Mutex<DmPool>>, config: NodeConfig) -> Self {
        NodeService {
            inner: Arc::new(Inner { config, pool, volumes: Api::all(client), busy: InFlight::default() }),
        }
    }

    /// A path from request field `field`: present, and inside the kubelet
    /// directory with no symbolic link out of it (`fs::KubeletDir::check`).
    /// Checked after every field is present and the volume is ours, so a
    /// missing field is named as such whatever the paths are.
    fn confine(&self, path: &Path, field: &str) -> Result<()> {
        Ok(self.inner.config.kubelet_dir.check(path, field)?)
    }

    /// A `volume_path` (stats, expand) names where the volume is: one that
    /// is not inside the kubelet directory does not hold it (NOT_FOUND, as
    /// for any other path where the volume is not).
    fn volume_path(&self, path: &Path, volume_id: &str) -> Result<()> {
        self.inner.config.kubelet_dir.check(path, "volume_path").map_err(|e| Error::NotFound(format!("volume {volume_id} is not at {}: {e}", path.display())))
    }

    /// Parses the volume id and checks it is on this node's pool.
    fn ours(&self, volume_id: &str) -> Result<DeviceRef> {
        let r = DeviceRef::parse(volume_id).map_err(Error::volume_id)?;
        if r.pool != self.inner.config.pool_object {
            return Err(Error::NotFound(format!(
                "volume {volume_id} is on pool {}, not on this node's pool {}",
                r.pool, self.inner.config.pool_object
            )));
        }
        Ok(r)
    }

    fn busy(&self, volume_id: &str) -> Result<Busy<'_>> {
        self.inner.busy.enter(volume_id).ok_or_else(|| Error::Aborted(format!("an operation on volume {volume_id} is in progress")))
    }

    /// Runs `f` on the pool (device-mapper ioctls) under the shared lock.
    async fn kernel<T: Send + 'static>(&self, f: impl FnOnce(&mut DmPool) -> Result<T> + Send + 'static) -> Result<T> {
        let pool = self.inner.pool.clone();
        blocking(move || {
            let mut p = pool.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut p)
        })
        .await
    }

    /// The device node of an active thin device; None if it is not active.
    async fn active_device(&self, id: ThinId) -> Result<Option<PathBuf>> {
        self.kernel(move |p| match p.thin_device_path(id) {
            Ok(path) => Ok(Some(path)),
            Err(KernelError::NotActive(_)) => Ok(None),
            Err(e) => Err(e.into()),
        })
        .await
    }

    /// The volume's object: by the volume context's name, else by pool and
    /// device id (labels, then the specs).
    async fn find_volume(&self, r: &DeviceRef, volume_id: &str, context: &HashMap<String, String>) -> Result<ThinVolume> {
        // The generation too: an object of a device id reused since is another volume's.
        let matches = |v: &ThinVolume| r.names(&v.spec.pool, v.spec.device_id, v.spec.create_transaction);
        if let Some(name) = context.get(CTX_VOLUME).filter(|s| !s.is_empty()) {
            return match self.inner.volumes.get_opt(name).await? {
                Some(v) if matches(&v) => Ok(v),
                Some(v) => Err(Error::NotFound(format!(
                    "volume {volume_id} does not exist: ThinVolume {name} holds {}",
                    DeviceRef::new(&v.spec.pool, v.spec.device_id, v.spec.create_transaction)
                ))),
                None => Err(Error::NotFound(format!("volume {volume_id} does not exist: no ThinVolume {name}"))),
            };
        }
        let selector = r.selector();
        let labelled = self.inner.volumes.list(&ListParams::default().labels(&selector)).await?;
        if let Some(v) = labelled.items.into_iter().find(matches) {
            return Ok(v);
        }
        let all = self.inner.volumes.list(&ListParams::default()).await?;
        all.items.into_iter().find(matches).ok_or_else(|| Error::NotFound(format!("volume {volume_id} does not exist: no ThinVolume holds it")))
    }

    /// Activates thin `id` at `size` (already active is fine; one smaller
    /// than `size` is grown) and returns its device node and whether this
    /// call activated it.
    async fn ensure_active(&self, id: ThinId, size: Sectors) -> Result<(PathBuf, bool)> {
        self.kernel(move |p| {
            let mut activated = false;
            match p.activate_thin(id, size) {
                Ok(()) => activated = true,
                Err(KernelError::AlreadyActive(_)) => {
                    let current = p.active_thin(id)?.map(|t| t.size);
                    if current.is_some_and(|c| c < size) {
                        p.resize_thin(id, size)?;
                    }
                }
                Err(e) => return Err(e.into()),
            }
            Ok((p.thin_device_path(id)?, activated))
        })
        .await
    }

    async fn stage(&self, req: NodeStageVolumeRequest) -> Result<()> {
        required(&req.volume_id, "volume_id")?;
        let staging = PathBuf::from(required(&req.staging_target_path, "staging_target_path")?);
        let (access, read_only) = check_capability(req.volume_capability.as_ref())?;
        let r = self.ours(&req.volume_id)?;
        let fs_and_flags = match access {
            AccessType::Mount(m) => Some((fs_type(m, &req.volume_context)?, m.mount_flags.clone())),
            AccessType::Block(_) => None,
        };
        self.confine(&staging, "staging_target_path")?;
        let _busy = self.busy(&req.volume_id)?;
        let volume = self.find_volume(&r, &req.volume_id, &req.volume_context).await?;
        let size = Sectors::from_bytes_ceil(volume.spec.size_bytes);
        let (device, activated) = self.ensure_active(r.device, size).await?;
        let Some((fs, flags)) = fs_and_flags else {
            return Ok(()); // raw block: published from the device node
        };
        let staged = blocking(move || {
            if read_only {
                fs::require_formatted(&device, &fs)?;
            } else {
                match fs::format_if_empty(&device, &fs, &mkfs_options(&fs))? {
                    fs::FormatOutcome::Formatted => tracing::info!(device = %device.display(), fs = fs.name(), "made a filesystem"),
                    fs::FormatOutcome::AlreadyFormatted(found) => tracing::info!(device = %device.display(), fs = found.name(), "filesystem found; not formatting"),
                }
            }
            fs::mount(&device, &staging, &fs, read_only, &flags)?;
            if !read_only {
                // A restore or clone into a larger volume brings the source's smaller filesystem.
                fs::grow_to_device(&device, &staging, &fs)?;
            }
            Ok(())
        })
        .await;
        if staged.is_err() && activated {
            // A failed stage leaves nothing behind that it made.
            let id = r.device;
            if let Err(e) = self.kernel(move |p| Ok(p.deactivate_thin(id)?)).await {
                tracing::warn!(thin = %id, error = %e, "could not deactivate after a failed stage");
            }
        }
        staged
    }

    async fn unstage(&self, req: NodeUnstageVolumeRequest) -> Result<()> {
        required(&req.volume_id, "volume_id")?;
        let staging = PathBuf::from(required(&req.staging_target_path, "staging_target_path")?);
        let r = self.ours(&req.volume_id)?;
        self.confine(&staging, "staging_target_path")?;
        let _busy = self.busy(&req.volume_id)?;
        if let Some(device) = self.active_device(r.device).await? {
            let thin_name = self.kernel(move |p| Ok(p.names().thin(r.device))).await?;
            let staging_c = staging.clone();
            blocking(move || {
                let staging_c = std::fs::canonicalize(&staging_c).ok();
                // Still published? A bind of the filesystem elsewhere, or of the device node.
                if let Some(other) = fs::mounts_of(&device)?.into_iter().find(|m| Some(&m.mount_point) != staging_c.as_ref()) {
                    return Err(Error::FailedPrecondition(format!(
                        "volume is still mounted at {} (unpublish it first)",
                        other.mount_point.display()
                    )));
                }
                if let Some(bound) = fs::read_mountinfo()?.into_iter().find(|m| m.root.file_name().is_some_and(|n| n == thin_name.as_str())) {
                    return Err(Error::FailedPrecondition(format!(
                        "the volume's device is still bound at {} (unpublish it first)",
                        bound.mount_point.display()
                    )));
                }
                Ok(())
            })
            .await?;
        }
        let target = staging.clone();
        blocking(move || {
            fs::unmount(&target)?;
            Ok(())
        })
        .await?;
        self.kernel(move |p| match p.deactivate_thin(r.device) {
            Ok(()) | Err(KernelError::NotActive(_)) => Ok(()),
            Err(KernelError::Busy(why)) => Err(Error::FailedPrecondition(format!("cannot deactivate the volume's device: {why}"))),
            Err(e) => Err(e.into()),
        })
        .await
    }

    async fn publish(&self, req: NodePublishVolumeRequest) -> Result<()> {
        required(&req.volume_id, "volume_id")?;
        let target = PathBuf::from(required(&req.target_path, "target_path")?);
        let (access, mode_read_only) = check_capability(req.volume_capability.as_ref())?;
        let staging = PathBuf::from(required(&req.staging_target_path, "staging_target_path")?);
        let r = self.ours(&req.volume_id)?;
        let read_only = req.readonly || mode_read_only;
        let block = matches!(access, AccessType::Block(_));
        if block && read_only {
            return Err(Error::invalid(
                "readonly",
                "a read-only raw block publish is not supported: a bind of a device node cannot refuse writes",
            ));
        }
        self.confine(&target, "target_path")?;
        self.confine(&staging, "staging_target_path")?;
        let _busy = self.busy(&req.volume_id)?;
        let device = self
            .active_device(r.device)
            .await?
            .ok_or_else(|| Error::FailedPrecondition(format!("volume {} is not staged on this node", req.volume_id)))?;
        let volume_id = req.volume_id.clone();
        blocking(move || {
            if block {
                fs::bind_mount_block(&device, &target)?;
                return Ok(());
            }
            let staging_c = canonical(&staging).map_err(|_| Error::FailedPrecondition(format!("volume {volume_id} is not staged at {}", staging.display())))?;
            if !fs::mounts_of(&device)?.iter().any(|m| m.mount_point == staging_c) {
                return Err(Error::FailedPrecondition(format!("volume {volume_id} is not staged at {}", staging.display())));
            }
            fs::bind_mount(&staging, &target, read_only)?;
            Ok(())
        })
        .await
    }

    async fn unpublish(&self, req: NodeUnpublishVolumeRequest) -> Result<()> {
        required(&req.volume_id, "volume_id")?;
        let target = PathBuf::from(required(&req.target_path, "target_path")?);
        self.ours(&req.volume_id)?;
        self.confine(&target, "target_path")?;
        let _busy = self.busy(&req.volume_id)?;
        blocking(move || {
            fs::unmount(&target)?;
            // What publish created (an empty directory or file) goes; nothing else.
            fs::remove_created_target(&target)?;
            Ok(())
        })
        .await
    }

    /// The pool's adverse conditions, from its status read with no-flush.
    async fn conditions(&self) -> Result<Vec<PoolCondition>> {
        let status = self.kernel(|p| Ok(p.pool_status()?)).await?;
        Ok(conditions_of(&status))
    }

    /// NodeGetVolumeHealth: NOT_FOUND unless the volume's thin device is in
    /// this node's pool (it need not be staged: the CO may ask after a
    /// failed stage); then the pool's conditions.
    async fn volume_health(&self, req: NodeGetVolumeHealthRequest) -> Result<NodeGetVolumeHealthResponse> {
        required(&req.volume_id, "volume_id")?;
        let r = self.ours(&req.volume_id)?;
        let id = r.device;
        // A failed pool cannot be probed: its volumes are reported inaccessible.
        let (exists, status) = self
            .kernel(move |p| {
                let status = p.pool_status()?;
                let exists = status.working().is_none() || thinpool::device_exists(p, id)?;
                Ok((exists, status))
            })
            .await?;
        if !exists {
            return Err(Error::NotFound(format!("volume {}: thin device {id} is not in this node's pool", req.volume_id)));
        }
        Ok(NodeGetVolumeHealthResponse { volume_health: Some(volume_health(&req.volume_id, &conditions_of(&status))) })
    }

    async fn storage_health(&self) -> Result<NodeGetStorageHealthResponse> {
        Ok(NodeGetStorageHealthResponse { backend_health: self.conditions().await?.iter().map(PoolCondition::backend).collect() })
    }

    async fn stats(&self, req: NodeGetVolumeStatsRequest) -> Result<NodeGetVolumeStatsResponse> {
        required(&req.volume_id, "volume_id")?;
        let path = PathBuf::from(required(&req.volume_path, "volume_path")?);
        let r = self.ours(&req.volume_id)?;
        self.volume_path(&path, &req.volume_id)?;
        let device = self
            .active_device(r.device)
            .await?
            .ok_or_else(|| Error::NotFound(format!("volume {} is not staged on this node", req.volume_id)))?;
        let volume_id = req.volume_id.clone();
        let usage = blocking(move || {
            let meta = std::fs::metadata(&path).map_err(|e| io_err("stat", &path, e))?;
            let dev_meta = std::fs::metadata(&device).map_err(|e| io_err("stat", &device, e))?;
            let bytes = |total: u64, used: u64, available: u64, unit: volume_usage::Unit| VolumeUsage {
                total: total as i64,
                used: used as i64,
                available: available as i64,
                unit: unit as i32,
            };
            if meta.file_type().is_block_device() {
                if meta.rdev() != dev_meta.rdev() {
                    return Err(Error::NotFound(format!("{} is not volume {volume_id}'s device", path.display())));
                }
                let total = fs::block_device_size(&device)?;
                return Ok(vec![VolumeUsage { total: total as i64, unit: volume_usage::Unit::Bytes as i32, ..Default::default() }]);
            }
            let path_c = canonical(&path)?;
            if !fs::mounts_of(&device)?.iter().any(|m| m.mount_point == path_c) {
                return Err(Error::NotFound(format!("volume {volume_id} is not mounted at {}", path.display())));
            }
            let s = fs::stats(&path)?;
            Ok(vec![
                bytes(s.bytes_total, s.bytes_used, s.bytes_available, volume_usage::Unit::Bytes),
                bytes(s.inodes_total, s.inodes_used, s.inodes_free, volume_usage::Unit::Inodes),
            ])
        })
        .await?;
        // The pool's condition is NodeGetVolumeHealth's since spec v1.13.
        Ok(NodeGetVolumeStatsResponse { usage })
    }

    async fn expand(&self, req: NodeExpandVolumeRequest) -> Result<NodeExpandVolumeResponse> {
        required(&req.volume_id, "volume_id")?;
        let path = PathBuf::from(required(&req.volume_path, "volume_path")?);
        let r = self.ours(&req.volume_id)?;
        self.volume_path(&path, &req.volume_id)?;
        if let Err(e) = std::fs::metadata(&path) {
            return Err(io_err("stat", &path, e));
        }
        let _busy = self.busy(&req.volume_id)?;
        let volume = self.find_volume(&r, &req.volume_id, &HashMap::new()).await?;
        let size = volume.spec.size_bytes;
        if let Some(range) = &req.capacity_range {
            if range.required_bytes > 0 && range.required_bytes as u64 > size {
                return Err(Error::OutOfRange(format!(
                    "capacity_range.required_bytes {} is more than the volume's {size} bytes (expand it through the controller first)",
                    range.required_bytes
                )));
            }
            if range.limit_bytes > 0 && (range.limit_bytes as u64) < size {
                return Err(Error::OutOfRange(format!("capacity_range.limit_bytes {} is less than the volume's {size} bytes", range.limit_bytes)));
            }
        }
        if self.active_device(r.device).await?.is_none() {
            return Err(Error::NotFound(format!("volume {} is not staged on this node", req.volume_id)));
        }
        let id = r.device;
        let sectors = Sectors::from_bytes_ceil(size);
        let device = self
            .kernel(move |p| {
                match p.resize_thin(id, sectors) {
                    Ok(old) => tracing::info!(thin = %id, from = old.0, to = sectors.0, "thin device length"),
                    Err(KernelError::Invalid(why)) => return Err(Error::FailedPrecondition(why)),
                    Err(e) => return Err(e.into()),
                }
                Ok(p.thin_device_path(id)?)
            })
            .await?;
        // Test hook: die with the device grown and the filesystem not yet.
        let kill = volume.metadata.annotations.as_ref().and_then(|a| a.get(thin_csi_api::hooks::KILL_AT));
        if self.inner.config.test_hooks && kill.is_some_and(|k| k == thin_csi_api::hooks::EXPAND_RESIZED) && crate::pool_executor::fire_once(&format!("expand-{}", req.volume_id)) {
            tracing::error!(volume = %req.volume_id, "test hook: killing the node process between the device resize and the filesystem grow");
            crate::pool_executor::die();
        }
        let volume_id = req.volume_id.clone();
        blocking(move || {
            let meta = std::fs::metadata(&path).map_err(|e| io_err("stat", &path, e))?;
            if meta.file_type().is_block_device() {
                return Ok(()); // the device is the volume: nothing more to grow
            }
            let path_c = canonical(&path)?;
            let mounted = fs::mounts_of(&device)?.into_iter().find(|m| m.mount_point == path_c);
            let Some(mounted) = mounted else {
                return Err(Error::NotFound(format!("volume {volume_id} is not mounted at {}", path.display())));
            };
            let fs_type: FsType = mounted.fs_type.parse()?;
            fs::expand(&device, &path, &fs_type)?;
            Ok(())
        })
        .await?;
        Ok(NodeExpandVolumeResponse { capacity_bytes: size as i64 })
    }

    fn info(&self) -> NodeGetInfoResponse {
        let c = &self.inner.config;
        NodeGetInfoResponse {
            node_id: c.node.clone(),
            max_volumes_per_node: c.max_volumes,
            accessible_topology: Some(node_topology(&c.node)),
        }
    }
}

/// The pool's adverse conditions from its kernel status: failed, or a mode
/// other than read/write (needs_check wins over the mode).
pub fn conditions_of(status: &thinpool::PoolStatus) -> Vec<PoolCondition> {
    match status.working() {
        None => vec![PoolCondition::Failed],
        Some(w) => PoolCondition::of_mode(thin_csi_api::pool::PoolMode::of(w)).into_iter().collect(),
    }
}

/// What NodeGetCapabilities advertises. NodeGetVolumeHealth and
/// NodeGetStorageHealth are served but not advertised while the harness's
/// csi-sanity is v5.4 (spec v1.12): it fails a plugin on a capability it
/// does not know; [`HEALTH_CAPABILITIES`] join this list with csi-sanity
/// v5.6 (docs/decisions.md, "Pool health").
pub fn capabilities() -> Vec<NodeServiceCapability> {
    use node_service_capability::rpc::Type;
    [Type::StageUnstageVolume, Type::GetVolumeStats, Type::ExpandVolume]
        .into_iter()
        .map(|t| NodeServiceCapability {
            r#type: Some(node_service_capability::Type::Rpc(node_service_capability::Rpc { r#type: t as i32 })),
        })
        .collect()
}

/// The health RPCs' capabilities (alpha in spec v1.14), served, advertised
/// once csi-sanity knows them (see [`capabilities`]).
pub const HEALTH_CAPABILITIES: [node_service_capability::rpc::Type; 2] =
    [node_service_capability::rpc::Type::GetVolumeHealth, node_service_capability::rpc::Type::GetStorageHealth];

#[tonic::async_trait]
impl Node for NodeService {
    async fn node_stage_volume(&self, r: Request<NodeStageVolumeRequest>) -> Result<Response<NodeStageVolumeResponse>, Status> {
        reply(self.stage(r.into_inner()).await.map(|()| NodeStageVolumeResponse {}))
    }
    async fn node_unstage_volume(&self, r: Request<NodeUnstageVolumeRequest>) -> Result<Response<NodeUnstageVolumeResponse>, Status> {
        reply(self.unstage(r.into_inner()).await.map(|()| NodeUnstageVolumeResponse {}))
    }
    async fn node_publish_volume(&self, r: Request<NodePublishVolumeRequest>) -> Result<Response<NodePublishVolumeResponse>, Status> {
        reply(self.publish(r.into_inner()).await.map(|()| NodePublishVolumeResponse {}))
    }
    async fn node_unpublish_volume(&self, r: Request<NodeUnpublishVolumeRequest>) -> Result<Response<NodeUnpublishVolumeResponse>, Status> {
        reply(self.unpublish(r.into_inner()).await.map(|()| NodeUnpublishVolumeResponse {}))
    }
    async fn node_get_volume_stats(&self, r: Request<NodeGetVolumeStatsRequest>) -> Result<Response<NodeGetVolumeStatsResponse>, Status> {
        reply(self.stats(r.into_inner()).await)
    }
    async fn node_expand_volume(&self, r: Request<NodeExpandVolumeRequest>) -> Result<Response<NodeExpandVolumeResponse>, Status> {
        reply(self.expand(r.into_inner()).await)
    }
    async fn node_get_capabilities(&self, _: Request<NodeGetCapabilitiesRequest>) -> Result<Response<NodeGetCapabilitiesResponse>, Status> {
        Ok(Response::new(NodeGetCapabilitiesResponse { capabilities: capabilities() }))
    }
    async fn node_get_info(&self, _: Request<NodeGetInfoRequest>) -> Result<Response<NodeGetInfoResponse>, Status> {
        Ok(Response::new(self.info()))
    }
    async fn node_get_volume_health(&self, r: Request<NodeGetVolumeHealthRequest>) -> Result<Response<NodeGetVolumeHealthResponse>, Status> {
        reply(self.volume_health(r.into_inner()).await)
    }
    async fn node_get_storage_health(&self, _: Request<NodeGetStorageHealthRequest>) -> Result<Response<NodeGetStorageHealthResponse>, Status> {
        reply(self.storage_health().await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use csi_proto::v1::volume_capability::BlockVolume;
    use tonic::Code;

    #[test]
    fn volume_ids() {
        // The rules are csi-contract's; here, which code each answer gets.
        assert_eq!(Error::volume_id(csi_contract::IdError::Missing).code(), Code::InvalidArgument);
        let e = Error::volume_id(DeviceRef::parse("pool:16777216:1").unwrap_err());
        assert_eq!(e.code(), Code::NotFound);
        assert!(e.to_string().contains("\"pool:16777216:1\" is not an id of this driver"), "{e}");
        let e = Error::volume_id(DeviceRef::parse("pool:5:05").unwrap_err());
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(e.to_string().contains("create transaction"), "{e}");
    }

    fn cap(access: AccessType, mode: Mode) -> VolumeCapability {
        VolumeCapability { access_type: Some(access), access_mode: Some(volume_capability::AccessMode { mode: mode as i32 }) }
    }

    #[test]
    fn capabilities_checked_naming_the_field() {
        let e = check_capability(None).unwrap_err();
        assert_eq!((e.code(), e.to_string()), (Code::InvalidArgument, "volume_capability: missing".into()));
        let no_mode = VolumeCapability { access_type: Some(AccessType::Block(BlockVolume {})), access_mode: None };
        assert!(check_capability(Some(&no_mode)).unwrap_err().to_string().starts_with("volume_capability.access_mode"));
        let multi = cap(AccessType::Block(BlockVolume {}), Mode::MultiNodeMultiWriter);
        assert_eq!(check_capability(Some(&multi)).unwrap_err().code(), Code::InvalidArgument);
        let ro = cap(AccessType::Mount(MountVolume::default()), Mode::SingleNodeReaderOnly);
        assert!(check_capability(Some(&ro)).unwrap().1);
    }

    #[test]
    fn fs_type_from_capability_then_context_then_ext4() {
        let mut ctx = HashMap::new();
        assert_eq!(fs_type(&MountVolume::default(), &ctx).unwrap(), FsType::Ext4);
        ctx.insert(CTX_FS_TYPE.to_string(), "xfs".to_string());
        assert_eq!(fs_type(&MountVolume::default(), &ctx).unwrap(), FsType::Xfs);
        let m = MountVolume { fs_type: "ext4".into(), ..Default::default() };
        assert_eq!(fs_type(&m, &ctx).unwrap(), FsType::Ext4);
        let m = MountVolume { fs_type: "btrfs".into(), ..Default::default() };
        let e = fs_type(&m, &ctx).unwrap_err();
        assert!(e.to_string().starts_with("volume_capability.mount.fs_type"));
    }

    #[test]
    fn conditions_from_the_pool_status_line() {
        use thin_csi_api::pool::PoolMode;
        let cond = |line: &str| conditions_of(&line.parse::<thinpool::PoolStatus>().unwrap());
        assert_eq!(cond("7 20/1024 30/2000 - rw discard_passdown queue_if_no_space - 1024"), vec![]);
        let c = cond("7 20/1024 2000/2000 - out_of_data_space discard_passdown error_if_no_space - 1024");
        assert_eq!(c, vec![PoolCondition::Mode(PoolMode::OutOfDataSpace)]);
        assert_eq!(cond("7 20/1024 30/2000 - ro discard_passdown queue_if_no_space - 1024"), vec![PoolCondition::Mode(PoolMode::ReadOnly)]);
        let c = cond("7 20/1024 30/2000 - ro discard_passdown queue_if_no_space needs_check 1024");
        assert_eq!(c, vec![PoolCondition::Mode(PoolMode::NeedsCheck)]);
        assert_eq!(cond("Fail"), vec![PoolCondition::Failed]);
    }

    #[test]
    fn advertises_the_node_rpcs() {
        let caps = capabilities();
        assert_eq!(caps.len(), 3);
    }
}
