//! The CSI Controller service (docs/csi.md): the gRPC handlers. They check
//! the request, then act through [`Devices`] (`objects.rs`: the device
//! objects and the order of writes, the same for volumes and snapshots) and
//! its placement (`placement.rs`).
//!
//! Volumes and snapshots are `ThinVolume` / `ThinSnapshot` objects named by
//! `object_name(<CSI name>)` (idempotency by name) and labelled with their
//! pool and device id (lookup by CSI id). Every thin-device change is one
//! pool transaction: recorded with the allocator, then awaited until the
//! node reports it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use csi_contract::busy::{Busy, InFlight};
use csi_contract::keys::node_topology;
use csi_proto::v1::controller_server::Controller;
use csi_proto::v1::controller_service_capability::rpc::Type as RpcType;
use csi_proto::v1::volume_content_source::{SnapshotSource, Type as SourceType, VolumeSource as CsiVolumeSource};
use csi_proto::v1::*;
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use thin_csi_api::{object_name, AccessKind, ThinPool, ThinSnapshot, ThinSnapshotSpec, ThinVolume, ThinVolumeSpec, VolumeSource, VolumeSourceKind};
use tokio::sync::watch;
use tonic::{Request, Response, Status};

use crate::alloc::{Allocator, Request as Op};
use crate::objects::{object_meta, parse_id, DeviceObject, Devices};
use crate::params::*;
use crate::status::Error;

pub use crate::objects::aborted_create;

type Result<T, E = Error> = std::result::Result<T, E>;

/// The Controller service. Clones share state.
#[derive(Clone)]
pub struct ControllerService {
    inner: Arc<Inner>,
}

struct Inner {
    devices: Devices,
    leading: watch::Receiver<bool>,
    inflight: InFlight,
}

impl ControllerService {
    pub fn new(client: Client, alloc: Allocator, leading: watch::Receiver<bool>, wait_timeout: Duration) -> Self {
        ControllerService {
            inner: Arc::new(Inner { devices: Devices::new(client, alloc, wait_timeout), leading, inflight: InFlight::default() }),
        }
    }
}

impl Inner {
    fn busy(&self, key: String) -> Result<Busy<'_>> {
        let message = format!("an operation on {key} is already in progress");
        self.inflight.enter(key).ok_or(Error::Aborted(message))
    }

    fn check_leading(&self) -> Result<()> {
        if *self.leading.borrow() {
            Ok(())
        } else {
            Err(Error::Unavailable("this csi-controller replica is standing by (not the leader)".into()))
        }
    }

    fn volume_message(&self, v: &ThinVolume, pool: Option<&ThinPool>) -> Volume {
        let id = v.id();
        let mut ctx = HashMap::new();
        ctx.insert(CTX_POOL.to_string(), v.spec.pool.clone());
        ctx.insert(CTX_DEVICE.to_string(), v.spec.device_id.to_string());
        ctx.insert(CTX_VOLUME.to_string(), v.metadata.name.clone().unwrap_or_default());
        ctx.insert(CTX_FS_TYPE.to_string(), v.spec.fs_type.as_str().to_string());
        let content_source = v.spec.source.as_ref().map(|s| VolumeContentSource {
            r#type: Some(match s.kind {
                VolumeSourceKind::Snapshot => SourceType::Snapshot(SnapshotSource { snapshot_id: s.name.clone() }),
                VolumeSourceKind::Volume => SourceType::Volume(CsiVolumeSource { volume_id: s.name.clone() }),
            }),
        });
        Volume {
            capacity_bytes: v.spec.size_bytes as i64,
            volume_id: id.to_string(),
            volume_context: ctx,
            content_source,
            accessible_topology: pool.map(|p| vec![node_topology(&p.spec.node)]).unwrap_or_default(),
        }
    }

    async fn create_volume(&self, req: CreateVolumeRequest) -> Result<Volume> {
        if req.name.is_empty() {
            return Err(Error::invalid("name", "missing"));
        }
        let (access, cap_fs) = check_capabilities(&req.volume_capabilities)?;
        let params = Params::parse(&req.parameters)?;
        if let (Some(a), Some(b)) = (cap_fs, params.fs_type) {
            if a != b {
                return Err(Error::invalid("volume_capabilities", format!("mount fs_type {} but the parameters ask for {}", a.as_str(), b.as_str())));
            }
        }
        let fs_type = cap_fs.or(params.fs_type).unwrap_or(FsType::Ext4);
        if let Some(range) = &req.capacity_range {
            check_range(range)?;
        }
        self.check_leading()?;
        let _busy = self.busy(format!("volume name {:?}", req.name))?;

        // The source, if any: its pool, device and size.
        let source = match req.volume_content_source.as_ref().map(|s| s.r#type.as_ref()) {
            None => None,
            Some(None) => return Err(Error::invalid("volume_content_source", "has no snapshot or volume")),
            Some(Some(SourceType::Snapshot(s))) => {
                if s.snapshot_id.is_empty() {
                    return Err(Error::invalid("volume_content_source.snapshot.snapshot_id", "missing"));
                }
                let snap = self.devices.find_id::<ThinSnapshot>("volume_content_source.snapshot.snapshot_id", &s.snapshot_id).await?;
                let snap = snap.ok_or_else(|| Error::NotFound(format!("source snapshot {} does not exist", s.snapshot_id)))?;
                let snap = self.devices.settle(snap).await?;
                Some((VolumeSource { kind: VolumeSourceKind::Snapshot, name: s.snapshot_id.clone() }, snap.spec.pool, snap.spec.device_id, snap.spec.size_bytes))
            }
            Some(Some(SourceType::Volume(s))) => {
                if s.volume_id.is_empty() {
                    return Err(Error::invalid("volume_content_source.volume.volume_id", "missing"));
                }
                let vol = self.devices.find_id::<ThinVolume>("volume_content_source.volume.volume_id", &s.volume_id).await?;
                let vol = vol.ok_or_else(|| Error::NotFound(format!("source volume {} does not exist", s.volume_id)))?;
                let vol = self.devices.settle(vol).await?;
                Some((VolumeSource { kind: VolumeSourceKind::Volume, name: s.volume_id.clone() }, vol.spec.pool, vol.spec.device_id, vol.spec.size_bytes))
            }
        };
        let default = source.as_ref().map_or(DEFAULT_SIZE, |s| s.3);
        let size = size_for(req.capacity_range.as_ref(), default)?;
        if let Some((src, _, _, src_size)) = &source {
            if size < *src_size {
                return Err(Error::OutOfRange(format!(
                    "capacity_range: {size} bytes is smaller than the source {}'s {src_size} bytes",
                    src.name
                )));
            }
        }

        // Idempotency: the same name again.
        let obj_name = object_name(&req.name);
        if let Some(existing) = self.devices.volumes.get_opt(&obj_name).await? {
            let same = existing.spec.csi_name == req.name
                && size_fits(existing.spec.size_bytes, req.capacity_range.as_ref())
                && existing.spec.source == source.as_ref().map(|s| s.0.clone())
                && existing.spec.fs_type == fs_type;
            if !same {
                return Err(Error::AlreadyExists(format!(
                    "volume {:?} exists with other parameters (size {}, source {:?}, fs {})",
                    req.name,
                    existing.spec.size_bytes,
                    existing.spec.source.as_ref().map(|s| &s.name),
                    existing.spec.fs_type.as_str()
                )));
            }
            let v = self.devices.settle(existing).await?;
            let pool = self.devices.pools.get_opt(&v.spec.pool).await?;
            return Ok(self.volume_message(&v, pool.as_ref()));
        }

        // Placement and the transaction.
        let (pool, op) = match &source {
            None => (self.devices.place(&params, req.accessibility_requirements.as_ref(), size).await?, Op::CreateThin),
            Some((src, pool_name, device, _)) => {
                let pool = self
                    .devices
                    .pools
                    .get_opt(pool_name)
                    .await?
                    .ok_or_else(|| Error::NotFound(format!("the pool {pool_name} of source {} is gone", src.name)))?;
                if let Some(want) = &params.pool_name {
                    if *want != pool.spec.pool_name {
                        return Err(Error::invalid(
                            "parameters[pool]",
                            format!("{want}, but the source {} lives on pool {} of node {}: a restore or clone stays on its source's pool", src.name, pool.spec.pool_name, pool.spec.node),
                        ));
                    }
                }
                if let Some(t) = &req.accessibility_requirements {
                    let requisite: Vec<&String> = t.requisite.iter().filter_map(|t| t.segments.get(TOPOLOGY_KEY)).collect();
                    if !t.requisite.is_empty() && !requisite.contains(&&pool.spec.node) {
                        return Err(Error::ResourceExhausted(format!(
                            "the source {} lives on node {} (pool {}), which the requisite topology excludes; a restore or clone is a thin snapshot on the source's node",
                            src.name, pool.spec.node, pool.spec.pool_name
                        )));
                    }
                }
                if let Some(reason) = pool_unusable(&pool) {
                    return Err(Error::ResourceExhausted(format!("pool {} of source {}: {reason}", pool.spec.pool_name, src.name)));
                }
                let room = self.devices.room(&pool, params.overprovisioning).await?;
                if room < size {
                    return Err(Error::ResourceExhausted(format!("pool {} on {}: {room} bytes available, {size} wanted", pool.spec.pool_name, pool.spec.node)));
                }
                (pool, Op::CreateSnapshot { origin: *device })
            }
        };
        let pool_name = pool.name_any();
        let access = if access == Access::Block { AccessKind::Block } else { AccessKind::Mount };
        let v = self
            .devices
            .create(&pool_name, op, |a| {
                let mut v = ThinVolume::new(
                    &obj_name,
                    ThinVolumeSpec {
                        csi_name: req.name.clone(),
                        pool: pool_name.clone(),
                        pool_uid: a.pool_uid.clone(),
                        device_id: a.device,
                        create_transaction: a.transaction,
                        size_bytes: size,
                        fs_type,
                        access,
                        overprovisioning: params.overprovisioning,
                        source: source.as_ref().map(|s| s.0.clone()),
                    },
                );
                v.metadata = object_meta(&obj_name, &pool_name, a.device);
                v.metadata.annotations = csi_contract::keys::pvc_annotations(&req.parameters);
                v
            })
            .await?;
        Ok(self.volume_message(&v, Some(&pool)))
    }

    async fn delete_volume(&self, req: DeleteVolumeRequest) -> Result<()> {
        if req.volume_id.is_empty() {
            return Err(Error::invalid("volume_id", "missing"));
        }
        self.check_leading()?;
        // An id this driver never issued names nothing: deleted already.
        let Some(r) = parse_id("volume_id", &req.volume_id)? else { return Ok(()) };
        let _busy = self.busy(format!("volume {}", req.volume_id))?;
        self.devices.delete::<ThinVolume>(&r).await
    }

    async fn create_snapshot(&self, req: CreateSnapshotRequest) -> Result<Snapshot> {
        if req.name.is_empty() {
            return Err(Error::invalid("name", "missing"));
        }
        if req.source_volume_id.is_empty() {
            return Err(Error::invalid("source_volume_id", "missing"));
        }
        crate::objects::parse_id("source_volume_id", &req.source_volume_id)?;
        check_snapshot_params(&req.parameters)?;
        self.check_leading()?;
        let _busy = self.busy(format!("snapshot name {:?}", req.name))?;
        let obj_name = object_name(&req.name);
        if let Some(existing) = self.devices.snapshots.get_opt(&obj_name).await? {
            if existing.spec.csi_name != req.name || existing.spec.source.name != req.source_volume_id {
                return Err(Error::AlreadyExists(format!(
                    "snapshot {:?} exists for source volume {}, not {}",
                    req.name, existing.spec.source.name, req.source_volume_id
                )));
            }
            let s = self.devices.settle(existing).await?;
            return Ok(snapshot_message(&s));
        }
        let vol = self.devices.find_id::<ThinVolume>("source_volume_id", &req.source_volume_id).await?;
        let vol = vol.ok_or_else(|| Error::NotFound(format!("source volume {} does not exist", req.source_volume_id)))?;
        let vol = self.devices.settle(vol).await?;
        let pool = vol.spec.pool.clone();
        self.devices.check_snapshot_room(&pool).await?;
        let s = self
            .devices
            .create(&pool, Op::CreateSnapshot { origin: vol.spec.device_id }, |a| {
                let mut s = ThinSnapshot::new(
                    &obj_name,
                    ThinSnapshotSpec {
                        csi_name: req.name.clone(),
                        pool: pool.clone(),
                        pool_uid: a.pool_uid.clone(),
                        device_id: a.device,
                        create_transaction: a.transaction,
                        size_bytes: vol.spec.size_bytes,
                        source: VolumeSource { kind: VolumeSourceKind::Volume, name: req.source_volume_id.clone() },
                    },
                );
                s.metadata = object_meta(&obj_name, &pool, a.device);
                s
            })
            .await?;
        Ok(snapshot_message(&s))
    }

    async fn delete_snapshot(&self, req: DeleteSnapshotRequest) -> Result<()> {
        if req.snapshot_id.is_empty() {
            return Err(Error::invalid("snapshot_id", "missing"));
        }
        self.check_leading()?;
        let Some(r) = parse_id("snapshot_id", &req.snapshot_id)? else { return Ok(()) };
        let _busy = self.busy(format!("snapshot {}", req.snapshot_id))?;
        self.devices.delete::<ThinSnapshot>(&r).await
    }

    async fn list_volumes(&self, req: ListVolumesRequest) -> Result<ListVolumesResponse> {
        check_paging(&req.starting_token, req.max_entries)?;
        self.check_leading()?;
        let pools = self.devices.pool_map().await?;
        let items: Vec<(DeviceRef, ThinVolume)> = self
            .devices
            .volumes
            .list(&ListParams::default())
            .await?
            .items
            .into_iter()
            .filter(|v| v.status.as_ref().is_some_and(|s| s.ready))
            .map(|v| (v.id(), v))
            .collect();
        let (page, next_token) = page(items, &req.starting_token, req.max_entries)?;
        let entries = page
            .into_iter()
            .map(|(_, v)| {
                let pool = pools.get(&v.spec.pool);
                list_volumes_response::Entry {
                    volume: Some(self.volume_message(&v, pool)),
                    status: Some(list_volumes_response::VolumeStatus { published_node_ids: Vec::new() }),
                }
            })
            .collect();
        Ok(ListVolumesResponse { entries, next_token })
    }

    async fn list_snapshots(&self, req: ListSnapshotsRequest) -> Result<ListSnapshotsResponse> {
        check_paging(&req.starting_token, req.max_entries)?;
        self.check_leading()?;
        let mut items: Vec<(DeviceRef, ThinSnapshot)> = Vec::new();
        if !req.snapshot_id.is_empty() {
            // One snapshot by id: an id that names nothing is an empty list.
            if let Some(r) = parse_id("snapshot_id", &req.snapshot_id)? {
                if let Some(s) = self.devices.find::<ThinSnapshot>(&r).await? {
                    items.push((r, s));
                }
            }
        } else {
            items = self.devices.snapshots.list(&ListParams::default()).await?.items.into_iter().map(|s| (s.id(), s)).collect();
        }
        items.retain(|(_, s)| s.status.as_ref().is_some_and(|st| st.ready));
        if !req.source_volume_id.is_empty() {
            items.retain(|(_, s)| s.spec.source.name == req.source_volume_id);
        }
        let (page, next_token) = page(items, &req.starting_token, req.max_entries)?;
        let entries = page.into_iter().map(|(_, s)| list_snapshots_response::Entry { snapshot: Some(snapshot_message(&s)) }).collect();
        Ok(ListSnapshotsResponse { entries, next_token })
    }

    async fn get_snapshot(&self, req: GetSnapshotRequest) -> Result<GetSnapshotResponse> {
        if req.snapshot_id.is_empty() {
            return Err(Error::invalid("snapshot_id", "missing"));
        }
        self.check_leading()?;
        // Not ready yet is still the snapshot (ready_to_use false), as the
        // snapshotter polls it; an id we never issued names nothing.
        let s = self.devices.find_id::<ThinSnapshot>("snapshot_id", &req.snapshot_id).await?;
        let s = s.ok_or_else(|| Error::NotFound(format!("snapshot {} does not exist", req.snapshot_id)))?;
        Ok(GetSnapshotResponse { snapshot: Some(snapshot_message(&s)) })
    }

    async fn get_capacity(&self, req: GetCapacityRequest) -> Result<GetCapacityResponse> {
        let params = Params::parse(&req.parameters)?;
        if !req.volume_capabilities.is_empty() {
            if let Err(e) = check_capabilities(&req.volume_capabilities) {
                // Capacity for volumes we cannot make is none.
                tracing::debug!(error = %e, "GetCapacity for unsupported capabilities");
                return Ok(GetCapacityResponse { available_capacity: 0, maximum_volume_size: Some(0), minimum_volume_size: None });
            }
        }
        self.check_leading()?;
        let node = match &req.accessible_topology {
            None => None,
            Some(t) => match t.segments.get(TOPOLOGY_KEY) {
                Some(n) => Some(n.clone()),
                // A segment without our key is not one of our nodes.
                None => return Ok(GetCapacityResponse { available_capacity: 0, maximum_volume_size: Some(0), minimum_volume_size: None }),
            },
        };
        let best = self.devices.largest_room(node.as_deref(), &params).await?;
        // A volume lives in one pool: the largest room is both the capacity
        // and the largest volume that fits.
        let best = best.min(i64::MAX as u64) as i64;
        Ok(GetCapacityResponse { available_capacity: best, maximum_volume_size: Some(best), minimum_volume_size: Some(BLOCK as i64) })
    }

    async fn expand(&self, req: ControllerExpandVolumeRequest) -> Result<ControllerExpandVolumeResponse> {
        if req.volume_id.is_empty() {
            return Err(Error::invalid("volume_id", "missing"));
        }
        let Some(range) = req.capacity_range.as_ref() else { return Err(Error::invalid("capacity_range", "missing")) };
        check_range(range)?;
        if let Some(cap) = &req.volume_capability {
            check_capability(cap).map_err(|why| Error::invalid("volume_capability", why))?;
        }
        self.check_leading()?;
        let r = parse_id("volume_id", &req.volume_id)?.ok_or_else(|| Error::NotFound(format!("volume {} does not exist", req.volume_id)))?;
        let _busy = self.busy(format!("volume {}", req.volume_id))?;
        let v = self.devices.find::<ThinVolume>(&r).await?.ok_or_else(|| Error::NotFound(format!("volume {} does not exist", req.volume_id)))?;
        let v = self.devices.settle(v).await?;
        let current = v.spec.size_bytes;
        let wanted = size_for(Some(range), current)?;
        if wanted <= current {
            // Never shrinks; a limit below the current size cannot be met.
            if range.limit_bytes > 0 && (range.limit_bytes as u64) < current {
                return Err(Error::OutOfRange(format!("capacity_range: limit_bytes {} is below the current size {current}; volumes do not shrink", range.limit_bytes)));
            }
            return Ok(expand_reply(current));
        }
        let pool = self.devices.pools.get_opt(&r.pool).await?.ok_or_else(|| Error::NotFound(format!("the pool {} of volume {} is gone", r.pool, req.volume_id)))?;
        if let Some(reason) = pool_unusable(&pool) {
            return Err(Error::ResourceExhausted(format!("pool {} on {}: {reason}", pool.spec.pool_name, pool.spec.node)));
        }
        let room = self.devices.room(&pool, v.spec.overprovisioning).await?;
        if wanted - current > room {
            return Err(Error::ResourceExhausted(format!("pool {} on {}: {room} bytes available, {} more wanted", pool.spec.pool_name, pool.spec.node, wanted - current)));
        }
        let name = v.metadata.name.clone().unwrap_or_default();
        let patch = json!({"spec": {"sizeBytes": wanted}});
        self.devices.volumes.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)).await?;
        crate::failpoint::hit("expand-recorded");
        tracing::info!(id = %r, from = current, to = wanted, "volume expanded");
        Ok(expand_reply(wanted))
    }

    async fn validate(&self, req: ValidateVolumeCapabilitiesRequest) -> Result<ValidateVolumeCapabilitiesResponse> {
        if req.volume_id.is_empty() {
            return Err(Error::invalid("volume_id", "missing"));
        }
        if req.volume_capabilities.is_empty() {
            return Err(Error::invalid("volume_capabilities", "missing"));
        }
        Params::parse(&req.parameters)?;
        self.check_leading()?;
        let v = self.devices.find_id::<ThinVolume>("volume_id", &req.volume_id).await?;
        let v = v.ok_or_else(|| Error::NotFound(format!("volume {} does not exist", req.volume_id)))?;
        let fs = v.spec.fs_type.as_str();
        for cap in &req.volume_capabilities {
            match check_capability(cap) {
                Err(why) => return Ok(ValidateVolumeCapabilitiesResponse { confirmed: None, message: why }),
                Ok((_, Some(f))) if f.as_str() != fs => {
                    return Ok(ValidateVolumeCapabilitiesResponse {
                        confirmed: None,
                        message: format!("the volume's filesystem is {fs}, not {}", f.as_str()),
                    })
                }
                Ok(_) => {}
            }
        }
        Ok(ValidateVolumeCapabilitiesResponse {
            confirmed: Some(validate_volume_capabilities_response::Confirmed {
                volume_context: req.volume_context,
                volume_capabilities: req.volume_capabilities,
                parameters: req.parameters,
                mutable_parameters: req.mutable_parameters,
            }),
            message: String::new(),
        })
    }

    /// The ready volume `volume_id` names (NOT_FOUND otherwise) and its pool object.
    async fn ready_volume_and_pool(&self, volume_id: &str) -> Result<(ThinVolume, Option<ThinPool>)> {
        if volume_id.is_empty() {
            return Err(Error::invalid("volume_id", "missing"));
        }
        self.check_leading()?;
        let v = self.devices.find_id::<ThinVolume>("volume_id", volume_id).await?;
        let v = v.filter(|v| v.status.as_ref().is_some_and(|s| s.ready)).ok_or_else(|| Error::NotFound(format!("volume {volume_id} does not exist")))?;
        let pool = self.devices.pools.get_opt(&v.spec.pool).await?;
        Ok((v, pool))
    }

    async fn get_volume(&self, req: ControllerGetVolumeRequest) -> Result<ControllerGetVolumeResponse> {
        let (v, pool) = self.ready_volume_and_pool(&req.volume_id).await?;
        Ok(ControllerGetVolumeResponse {
            volume: Some(self.volume_message(&v, pool.as_ref())),
            status: Some(controller_get_volume_response::VolumeStatus { published_node_ids: Vec::new() }),
        })
    }

    /// ControllerGetVolumeHealth: the volume's pool as its ThinPool object
    /// says (the node writes its mode from the kernel); NOT_FOUND for a
    /// volume that does not exist.
    async fn get_volume_health(&self, req: ControllerGetVolumeHealthRequest) -> Result<ControllerGetVolumeHealthResponse> {
        let (_, pool) = self.ready_volume_and_pool(&req.volume_id).await?;
        let health = csi_contract::volume_health::volume_health(&req.volume_id, &conditions(pool.as_ref()));
        Ok(ControllerGetVolumeHealthResponse { volume_health: Some(health) })
    }
}

/// The answer to a ControllerExpandVolume that leaves the volume at
/// `capacity` bytes. Node expansion is required for raw block volumes too:
/// the thin device's length is its table on the node, so a staged device
/// keeps its old length until NodeExpandVolume grows it (an unstaged one
/// is activated at the new size; NodeExpandVolume is then not called).
fn expand_reply(capacity: u64) -> ControllerExpandVolumeResponse {
    ControllerExpandVolumeResponse { capacity_bytes: capacity as i64, node_expansion_required: true }
}

fn snapshot_message(s: &ThinSnapshot) -> Snapshot {
    let creation_time = s.metadata.creation_timestamp.as_ref().map(|t| prost_types::Timestamp { seconds: t.0.as_second(), nanos: 0 });
    Snapshot {
        size_bytes: s.spec.size_bytes as i64,
        snapshot_id: s.id().to_string(),
        source_volume_id: s.spec.source.name.clone(),
        creation_time,
        ready_to_use: s.status.as_ref().is_some_and(|s| s.ready),
        group_snapshot_id: String::new(),
        // Alpha (SNAPSHOT_ACCESSIBILITY_CONSTRAINTS, not advertised).
        accessible_topology: Vec::new(),
    }
}

/// What ControllerGetCapabilities advertises: only what works.
/// GetSnapshot is served but not yet advertised: the pinned csi-sanity
/// (v5.4, spec v1.12) fails a plugin that advertises GET_SNAPSHOT as an
/// unknown capability; it is advertised with the move to spec v1.13+ and
/// csi-sanity v5.6 (issue 10). ControllerGetVolumeHealth likewise
/// ([`HEALTH_CAPABILITIES`]). VOLUME_CONDITION is gone from spec v1.13.
pub const CAPABILITIES: [RpcType; 8] = [
    RpcType::CreateDeleteVolume,
    RpcType::CreateDeleteSnapshot,
    RpcType::ListVolumes,
    RpcType::ListSnapshots,
    RpcType::GetCapacity,
    RpcType::ExpandVolume,
    RpcType::CloneVolume,
    RpcType::GetVolume,
];

/// Served, advertised once the harness's csi-sanity knows them (v5.6).
pub const HEALTH_CAPABILITIES: [RpcType; 1] = [RpcType::GetVolumeHealth];

/// Runs a call that changes thin devices in its own task, to its end even
/// when the caller gives up (its deadline passes and tonic drops the
/// handler, or its connection drops). Cut between the pool record write and
/// the object write, the call would leave a recorded device that no object
/// names, leaked for good, and the retry would allocate another. A retry
/// meanwhile is ABORTED (the object is busy) and finds the work done after.
async fn to_the_end<T: Send + 'static>(work: impl std::future::Future<Output = Result<T>> + Send + 'static) -> Result<T> {
    tokio::spawn(work).await.unwrap_or_else(|e| Err(Error::Internal(format!("the operation's task failed: {e}"))))
}

fn reply<T>(r: Result<T>) -> Result<Response<T>, Status> {
    r.map(Response::new).map_err(Status::from)
}

fn unimplemented<T>(what: &str) -> Result<Response<T>, Status> {
    Err(Status::unimplemented(format!("{what} is not supported by {DRIVER_NAME}")))
}

#[tonic::async_trait]
impl Controller for ControllerService {
    async fn create_volume(&self, r: Request<CreateVolumeRequest>) -> Result<Response<CreateVolumeResponse>, Status> {
        let inner = self.inner.clone();
        reply(to_the_end(async move { inner.create_volume(r.into_inner()).await }).await.map(|v| CreateVolumeResponse { volume: Some(v) }))
    }
    async fn delete_volume(&self, r: Request<DeleteVolumeRequest>) -> Result<Response<DeleteVolumeResponse>, Status> {
        let inner = self.inner.clone();
        reply(to_the_end(async move { inner.delete_volume(r.into_inner()).await }).await.map(|()| DeleteVolumeResponse {}))
    }
    async fn controller_publish_volume(&self, _: Request<ControllerPublishVolumeRequest>) -> Result<Response<ControllerPublishVolumeResponse>, Status> {
        unimplemented("ControllerPublishVolume")
    }
    async fn controller_unpublish_volume(&self, _: Request<ControllerUnpublishVolumeRequest>) -> Result<Response<ControllerUnpublishVolumeResponse>, Status> {
        unimplemented("ControllerUnpublishVolume")
    }
    async fn validate_volume_capabilities(&self, r: Request<ValidateVolumeCapabilitiesRequest>) -> Result<Response<ValidateVolumeCapabilitiesResponse>, Status> {
        reply(self.inner.validate(r.into_inner()).await)
    }
    async fn list_volumes(&self, r: Request<ListVolumesRequest>) -> Result<Response<ListVolumesResponse>, Status> {
        reply(self.inner.list_volumes(r.into_inner()).await)
    }
    async fn get_capacity(&self, r: Request<GetCapacityRequest>) -> Result<Response<GetCapacityResponse>, Status> {
        reply(self.inner.get_capacity(r.into_inner()).await)
    }
    async fn controller_get_capabilities(&self, _: Request<ControllerGetCapabilitiesRequest>) -> Result<Response<ControllerGetCapabilitiesResponse>, Status> {
        let capabilities = CAPABILITIES
            .iter()
            .map(|t| ControllerServiceCapability {
                r#type: Some(controller_service_capability::Type::Rpc(controller_service_capability::Rpc { r#type: *t as i32 })),
            })
            .collect();
        Ok(Response::new(ControllerGetCapabilitiesResponse { capabilities }))
    }
    async fn create_snapshot(&self, r: Request<CreateSnapshotRequest>) -> Result<Response<CreateSnapshotResponse>, Status> {
        let inner = self.inner.clone();
        reply(to_the_end(async move { inner.create_snapshot(r.into_inner()).await }).await.map(|s| CreateSnapshotResponse { snapshot: Some(s) }))
    }
    async fn delete_snapshot(&self, r: Request<DeleteSnapshotRequest>) -> Result<Response<DeleteSnapshotResponse>, Status> {
        let inner = self.inner.clone();
        reply(to_the_end(async move { inner.delete_snapshot(r.into_inner()).await }).await.map(|()| DeleteSnapshotResponse {}))
    }
    async fn list_snapshots(&self, r: Request<ListSnapshotsRequest>) -> Result<Response<ListSnapshotsResponse>, Status> {
        reply(self.inner.list_snapshots(r.into_inner()).await)
    }
    async fn get_snapshot(&self, r: Request<GetSnapshotRequest>) -> Result<Response<GetSnapshotResponse>, Status> {
        reply(self.inner.get_snapshot(r.into_inner()).await)
    }
    async fn controller_expand_volume(&self, r: Request<ControllerExpandVolumeRequest>) -> Result<Response<ControllerExpandVolumeResponse>, Status> {
        reply(self.inner.expand(r.into_inner()).await)
    }
    async fn controller_get_volume(&self, r: Request<ControllerGetVolumeRequest>) -> Result<Response<ControllerGetVolumeResponse>, Status> {
        reply(self.inner.get_volume(r.into_inner()).await)
    }
    async fn controller_modify_volume(&self, _: Request<ControllerModifyVolumeRequest>) -> Result<Response<ControllerModifyVolumeResponse>, Status> {
        unimplemented("ControllerModifyVolume")
    }
    async fn controller_get_volume_health(&self, r: Request<ControllerGetVolumeHealthRequest>) -> Result<Response<ControllerGetVolumeHealthResponse>, Status> {
        reply(self.inner.get_volume_health(r.into_inner()).await)
    }
    async fn controller_list_volume_health(&self, _: Request<ControllerListVolumeHealthRequest>) -> Result<Response<ControllerListVolumeHealthResponse>, Status> {
        unimplemented("ControllerListVolumeHealth")
    }
    async fn controller_get_node_info(&self, _: Request<ControllerGetNodeInfoRequest>) -> Result<Response<ControllerGetNodeInfoResponse>, Status> {
        unimplemented("ControllerGetNodeInfo")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use thinpool::ThinId;

    #[test]
    fn snapshots_and_volumes_speak_csi_ids() {
        let s = ThinSnapshot::new(
            "snap",
            ThinSnapshotSpec {
                csi_name: "Snap 1".into(),
                pool: "pool1".into(),
                pool_uid: None,
                device_id: ThinId::new(5).unwrap(),
                create_transaction: 9,
                size_bytes: 1 << 30,
                source: VolumeSource { kind: VolumeSourceKind::Volume, name: "pool1:3:4".into() },
            },
        );
        let m = snapshot_message(&s);
        assert_eq!((m.snapshot_id.as_str(), m.source_volume_id.as_str(), m.size_bytes, m.ready_to_use), ("pool1:5:9", "pool1:3:4", 1 << 30, false));
        assert_eq!(node_topology("n1").segments[TOPOLOGY_KEY], "n1");
    }

    #[test]
    fn an_expanded_volume_needs_the_node_block_too() {
        // The thin device's length is its table on the node: a staged raw
        // block volume grows only through NodeExpandVolume, which a CO
        // calls only when the answer asks for it.
        let r = expand_reply(2 << 30);
        assert!(r.node_expansion_required);
        assert_eq!(r.capacity_bytes, 2 << 30);
    }

    /// A fake apiserver for one CreateVolume: one healthy pool, no objects;
    /// the pool record write (PUT) is held until `release` is notified, and
    /// a POST of a ThinVolume is signalled on `posted`.
    fn fake_api(put_arrived: Arc<tokio::sync::Notify>, release: Arc<tokio::sync::Notify>, posted: Arc<tokio::sync::Notify>) -> Client {
        use http_body_util::BodyExt;
        let mut pool = ThinPool::new("pool1", thin_csi_api::ThinPoolSpec::new("n1", "pool0", "pool1", 0));
        pool.metadata.resource_version = Some("1".into());
        pool.metadata.uid = Some("uid-1".into());
        pool.status = Some(thin_csi_api::ThinPoolStatus {
            kernel_transaction: Some(0),
            finished_transaction: Some(0),
            mode: Some(thin_csi_api::PoolMode::ReadWrite),
            data_total_bytes: Some(1 << 30),
            ..Default::default()
        });
        let json_reply = |code: u16, v: serde_json::Value| {
            http::Response::builder().status(code).header("content-type", "application/json").body(kube::client::Body::from(v.to_string().into_bytes())).unwrap()
        };
        let svc = tower::service_fn(move |req: http::Request<kube::client::Body>| {
            let (pool, put_arrived, release, posted) = (pool.clone(), put_arrived.clone(), release.clone(), posted.clone());
            async move {
                let (method, path) = (req.method().clone(), req.uri().path().to_string());
                let list = |kind: &str, items: Vec<serde_json::Value>| json!({"apiVersion": "thin.csi.io/v1alpha1", "kind": kind, "metadata": {"resourceVersion": "1"}, "items": items});
                let base = "/apis/thin.csi.io/v1alpha1";
                let watch = req.uri().query().is_some_and(|q| q.contains("watch=true"));
                let reply = match (method.as_str(), path.strip_prefix(base).unwrap_or(&path)) {
                    _ if watch => std::future::pending().await,
                    ("GET", "/thinpools") => json_reply(200, list("ThinPoolList", vec![serde_json::to_value(&pool).unwrap()])),
                    ("GET", "/thinpools/pool1") => json_reply(200, serde_json::to_value(&pool).unwrap()),
                    ("GET", "/thinvolumes") => json_reply(200, list("ThinVolumeList", vec![])),
                    ("GET", "/thinsnapshots") => json_reply(200, list("ThinSnapshotList", vec![])),
                    ("GET", p) if p.starts_with("/thinvolumes/") => json_reply(404, json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": "not found"})),
                    ("PUT", "/thinpools/pool1") => {
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        put_arrived.notify_one();
                        release.notified().await;
                        let mut v: serde_json::Value = serde_json::from_slice(&body).unwrap();
                        v["metadata"]["resourceVersion"] = json!("2");
                        json_reply(200, v)
                    }
                    ("POST", "/thinvolumes") => {
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        posted.notify_one();
                        json_reply(201, serde_json::from_slice(&body).unwrap())
                    }
                    _ => std::future::pending().await,
                };
                Ok::<_, std::convert::Infallible>(reply)
            }
        });
        Client::new(svc, "default")
    }

    /// A caller that gives up (its deadline passes, its connection drops)
    /// while the pool record write is in flight must not stop the call
    /// half-way: the write may take effect, and a device recorded with no
    /// object is leaked for good (the retry allocates another). Seen on the
    /// real apiserver (e2e/run api-faults, the allocation's reply held past
    /// the caller's deadline).
    #[tokio::test]
    async fn a_caller_giving_up_does_not_cut_a_create_between_record_and_object() {
        let (put_arrived, release, posted) = (Arc::new(tokio::sync::Notify::new()), Arc::new(tokio::sync::Notify::new()), Arc::new(tokio::sync::Notify::new()));
        let client = fake_api(put_arrived.clone(), release.clone(), posted.clone());
        let (_leading_tx, leading) = watch::channel(true);
        let svc = ControllerService::new(client.clone(), Allocator::new(client), leading, Duration::from_secs(5));
        let topo = Topology { segments: [(TOPOLOGY_KEY.to_string(), "n1".to_string())].into() };
        let req = CreateVolumeRequest {
            name: "v1".into(),
            capacity_range: Some(CapacityRange { required_bytes: 16 << 20, limit_bytes: 0 }),
            volume_capabilities: vec![VolumeCapability {
                access_type: Some(volume_capability::AccessType::Mount(volume_capability::MountVolume::default())),
                access_mode: Some(volume_capability::AccessMode { mode: volume_capability::access_mode::Mode::SingleNodeWriter as i32 }),
            }],
            accessibility_requirements: Some(TopologyRequirement { requisite: vec![topo.clone()], preferred: vec![topo] }),
            ..Default::default()
        };
        {
            let call = Controller::create_volume(&svc, Request::new(req));
            tokio::select! {
                r = call => panic!("CreateVolume ended before its pool record write was answered: {r:?}"),
                _ = put_arrived.notified() => {}
            }
            // The caller is gone: `call` is dropped here, as tonic drops it at the deadline.
        }
        release.notify_one();
        let object = tokio::time::timeout(Duration::from_secs(5), posted.notified()).await;
        assert!(object.is_ok(), "the allocation was recorded but its ThinVolume never written: the device leaks");
    }

    #[test]
    fn advertises_what_works() {
        assert!(CAPABILITIES.contains(&RpcType::CloneVolume));
        assert!(!CAPABILITIES.contains(&RpcType::PublishUnpublishVolume));
        assert!(!CAPABILITIES.contains(&RpcType::GetSnapshot), "not until csi-sanity knows it");
        assert!(!CAPABILITIES.contains(&RpcType::ModifyVolume));
    }
}
