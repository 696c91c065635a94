//! The CSI Controller service (docs/csi.md).
//!
//! Volumes and snapshots are `ThinVolume` / `ThinSnapshot` objects named by
//! `object_name(<CSI name>)` (idempotency by name) and labelled with their
//! pool and device id (lookup by CSI id). Every thin-device change is one
//! pool transaction: recorded with [`Allocator::allocate`], then awaited
//! with [`wait::wait_finished`] until the node reports it.
//!
//! Order of writes: the transaction is recorded first, then the object is
//! created carrying the transaction id (annotation) and marked ready once
//! the node committed it. A retry of a request whose object exists waits on
//! that transaction again. A delete removes the device first, the object
//! after; an object left behind by a crash in between is removed when the
//! allocator hands its id out again ([`Inner::clear_stale`]).
//!
//! Known gaps: a crash between the allocation and the object's creation
//! leaves a device no object names (for a garbage collector to find: the
//! pool's devices minus the objects' ids). Ids are reused once freed, so a
//! DeleteVolume retried by the CO after its device delete committed *and*
//! the id was handed to a new volume would find the new volume; closing that
//! needs a generation in the CSI id (docs/csi.md fixes `<pool>:<device>`).
//!
//! Placement: a new empty volume goes to a usable pool on the first node of
//! the request's preferred, then requisite topology, or, with no
//! accessibility requirements at all (csi-sanity), to the usable pool with
//! the most room on any node. A restore or clone lives on its source's pool.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use csi_proto::v1::controller_server::Controller;
use csi_proto::v1::controller_service_capability::rpc::Type as RpcType;
use csi_proto::v1::volume_content_source::{SnapshotSource, Type as SourceType, VolumeSource as CsiVolumeSource};
use csi_proto::v1::*;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::Client;
use serde_json::json;
use thin_csi_api::{object_name, ThinPool, ThinSnapshot, ThinSnapshotSpec, ThinVolume, ThinVolumeSpec, VolumeSource, VolumeSourceKind};
use tokio::sync::watch;
use tonic::{Request, Response, Status};

use crate::alloc::{AllocError, Allocator, Request as Op};
use crate::params::*;
use crate::status::Error;
use crate::wait::{self, Finished};

type Result<T, E = Error> = std::result::Result<T, E>;

const ANN_TRANSACTION: &str = "thin.csi.io/transaction";
const ANN_FS_TYPE: &str = "thin.csi.io/fs-type";
const ANN_ACCESS: &str = "thin.csi.io/access-type";

/// The Controller service. Clones share state.
#[derive(Clone)]
pub struct ControllerService {
    inner: Arc<Inner>,
}

struct Inner {
    pools: Api<ThinPool>,
    volumes: Api<ThinVolume>,
    snapshots: Api<ThinSnapshot>,
    alloc: Allocator,
    wait_timeout: Duration,
    leading: watch::Receiver<bool>,
    inflight: Mutex<HashSet<String>>,
}

/// Marks one object busy for the life of the guard: a second request for
/// the same volume or snapshot while the first runs is ABORTED (the CSI
/// spec's "operation pending"), and the CO retries.
struct Busy<'a> {
    set: &'a Mutex<HashSet<String>>,
    key: String,
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.set.lock().unwrap_or_else(|e| e.into_inner()).remove(&self.key);
    }
}

impl ControllerService {
    pub fn new(client: Client, alloc: Allocator, leading: watch::Receiver<bool>, wait_timeout: Duration) -> Self {
        ControllerService {
            inner: Arc::new(Inner {
                pools: Api::all(client.clone()),
                volumes: Api::all(client.clone()),
                snapshots: Api::all(client),
                alloc,
                wait_timeout,
                leading,
                inflight: Mutex::default(),
            }),
        }
    }
}

impl Inner {
    fn busy(&self, key: String) -> Result<Busy<'_>> {
        let mut set = self.inflight.lock().unwrap_or_else(|e| e.into_inner());
        if !set.insert(key.clone()) {
            return Err(Error::Aborted(format!("an operation on {key} is already in progress")));
        }
        Ok(Busy { set: &self.inflight, key })
    }

    fn check_leading(&self) -> Result<()> {
        if *self.leading.borrow() {
            Ok(())
        } else {
            Err(Error::Unavailable("this csi-controller replica is standing by (not the leader)".into()))
        }
    }

    async fn find_volume(&self, r: &DeviceRef) -> Result<Option<ThinVolume>> {
        let list = self.volumes.list(&ListParams::default().labels(&r.selector())).await?;
        Ok(list.items.into_iter().find(|v| v.spec.pool == r.pool && v.spec.device_id.0 == r.device))
    }

    async fn find_snapshot(&self, r: &DeviceRef) -> Result<Option<ThinSnapshot>> {
        let list = self.snapshots.list(&ListParams::default().labels(&r.selector())).await?;
        Ok(list.items.into_iter().find(|v| v.spec.pool == r.pool && v.spec.device_id.0 == r.device))
    }

    async fn pool_map(&self) -> Result<BTreeMap<String, ThinPool>> {
        let list = self.pools.list(&ListParams::default()).await?;
        Ok(list.items.into_iter().map(|p| (p.metadata.name.clone().unwrap_or_default(), p)).collect())
    }

    /// Σ sizes of the volumes on each pool.
    async fn provisioned(&self) -> Result<HashMap<String, u64>> {
        let mut out = HashMap::new();
        for v in self.volumes.list(&ListParams::default()).await?.items {
            *out.entry(v.spec.pool.clone()).or_insert(0) += v.spec.size_bytes;
        }
        Ok(out)
    }

    /// Waits for the node to finish `txn` on `pool`.
    async fn wait(&self, pool: &str, txn: u64, uid: Option<&str>, subject: wait::Subject) -> Result<Finished> {
        Ok(wait::wait_finished_in(&self.pools, pool, txn, uid, subject, self.wait_timeout).await?)
    }

    /// Makes sure the device of a volume object exists: waits on its create
    /// transaction and marks it ready; an aborted create deletes the object.
    async fn settle_volume(&self, v: ThinVolume) -> Result<ThinVolume> {
        self.try_settle_volume(v).await?.ready()
    }

    async fn settle_snapshot(&self, s: ThinSnapshot) -> Result<ThinSnapshot> {
        self.try_settle_snapshot(s).await?.ready()
    }

    async fn try_settle_volume(&self, v: ThinVolume) -> Result<Settled<ThinVolume>> {
        if v.status.as_ref().is_some_and(|s| s.ready) {
            return Ok(Settled::Ready(v));
        }
        let name = v.metadata.name.clone().unwrap_or_default();
        let txn = transaction_of(&v.metadata)?;
        let finished = match self.wait(&v.spec.pool, txn, v.spec.pool_uid.as_deref(), wait::Subject::Create(v.spec.device_id.0)).await {
            // Its record is gone (the pool object was re-created): nothing
            // was promised for this object; remove it so a retry starts over.
            Err(e @ Error::Wait(wait::WaitError::TransactionUnknown { .. })) => {
                let _ = self.volumes.delete(&name, &DeleteParams::default()).await;
                return Err(e);
            }
            r => r?,
        };
        crate::failpoint::hit("volume-waited");
        match finished {
            Finished::Committed => {
                let status = json!({"status": {"ready": true, "transaction": txn}});
                let ready = self.volumes.patch_status(&name, &PatchParams::default(), &Patch::Merge(&status)).await?;
                crate::failpoint::hit("volume-ready");
                Ok(Settled::Ready(ready))
            }
            Finished::Aborted(aborted) => {
                let _ = self.volumes.delete(&name, &DeleteParams::default()).await;
                Ok(Settled::Aborted(aborted_create(&v.spec.pool, aborted)))
            }
        }
    }

    async fn try_settle_snapshot(&self, s: ThinSnapshot) -> Result<Settled<ThinSnapshot>> {
        if s.status.as_ref().is_some_and(|s| s.ready) {
            return Ok(Settled::Ready(s));
        }
        let name = s.metadata.name.clone().unwrap_or_default();
        let txn = transaction_of(&s.metadata)?;
        let finished = match self.wait(&s.spec.pool, txn, s.spec.pool_uid.as_deref(), wait::Subject::Create(s.spec.device_id.0)).await {
            // Its record is gone (the pool object was re-created): nothing
            // was promised for this object; remove it so a retry starts over.
            Err(e @ Error::Wait(wait::WaitError::TransactionUnknown { .. })) => {
                let _ = self.snapshots.delete(&name, &DeleteParams::default()).await;
                return Err(e);
            }
            r => r?,
        };
        crate::failpoint::hit("snapshot-waited");
        match finished {
            Finished::Committed => {
                let status = json!({"status": {"ready": true, "transaction": txn}});
                let ready = self.snapshots.patch_status(&name, &PatchParams::default(), &Patch::Merge(&status)).await?;
                crate::failpoint::hit("snapshot-ready");
                Ok(Settled::Ready(ready))
            }
            Finished::Aborted(aborted) => {
                let _ = self.snapshots.delete(&name, &DeleteParams::default()).await;
                Ok(Settled::Aborted(aborted_create(&s.spec.pool, aborted)))
            }
        }
    }

    /// Deletes thin device `device` of `pool` through a transaction; Ok once
    /// the device is gone (also when it already was).
    async fn delete_device(&self, pool: &str, device: u32) -> Result<()> {
        let id = DeviceRef::new(pool, device).thin_id();
        let (txn, uid) = match self.alloc.allocate(pool, &[Op::Delete { id }]).await {
            Ok(a) => (a.transaction.id().get(), a.pool_uid),
            // Gone already (a retry after the delete committed).
            Err(AllocError::NotAllocated { .. }) => return Ok(()),
            // The pool's record is gone (its object deleted): the device may
            // still be there; deleting the object would leak it silently.
            Err(e @ AllocError::PoolNotFound { .. }) => {
                return Err(Error::Unavailable(format!("cannot delete thin device {device}: {e}; the node re-creates the pool object when it restarts")))
            }
            // A retry while our earlier delete is still pending: wait for it.
            Err(AllocError::BeingDeleted { txn, .. }) => (txn, None),
            Err(e) => return Err(e.into()),
        };
        crate::failpoint::hit("delete-recorded");
        // The uid: an outcome read from a re-created record would be another's.
        match self.wait(pool, txn, uid.as_deref(), wait::Subject::Delete(device)).await? {
            Finished::Committed => {
                crate::failpoint::hit("delete-finished");
                Ok(())
            }
            Finished::Aborted(a) => {
                let message = format!("thin device {device}: {}", a.message);
                Err(transaction_aborted(pool, "delete", thin_csi_api::AbortedTransaction { message, ..a }))
            }
        }
    }

    /// Picks the pool for a new empty volume of `size` bytes.
    async fn place(&self, params: &Params, topo: Option<&TopologyRequirement>, size: u64) -> Result<ThinPool> {
        let pools = self.pool_map().await?;
        let provisioned = self.provisioned().await?;
        let nodes_of = |ts: &[Topology]| -> Vec<String> { ts.iter().filter_map(|t| t.segments.get(TOPOLOGY_KEY).cloned()).collect() };
        // Candidate nodes in order of preference; empty = anywhere.
        let mut nodes: Vec<String> = Vec::new();
        let mut restricted = false;
        if let Some(t) = topo {
            for n in nodes_of(&t.preferred).into_iter().chain(nodes_of(&t.requisite)) {
                if !nodes.contains(&n) {
                    nodes.push(n);
                }
            }
            restricted = !t.requisite.is_empty() || !t.preferred.is_empty();
            if restricted && nodes.is_empty() {
                return Err(Error::invalid("accessibility_requirements", format!("no topology segment has the key {TOPOLOGY_KEY}")));
            }
        }
        let mut why: Vec<String> = Vec::new();
        let mut best: Option<(usize, u64, ThinPool)> = None;
        for (name, p) in pools {
            let rank = if restricted {
                match nodes.iter().position(|n| *n == p.spec.node) {
                    Some(i) => i,
                    None => continue,
                }
            } else {
                0
            };
            if params.pool.as_ref().is_some_and(|want| *want != p.spec.pool_name) {
                continue;
            }
            if let Some(reason) = pool_unusable(&p) {
                why.push(format!("{} on {}: {reason}", p.spec.pool_name, p.spec.node));
                continue;
            }
            let room = available(&p, params.overprovisioning, provisioned.get(&name).copied().unwrap_or(0));
            if room < size {
                why.push(format!("{} on {}: {room} bytes available", p.spec.pool_name, p.spec.node));
                continue;
            }
            if best.as_ref().is_none_or(|(r, b, _)| rank < *r || (rank == *r && room > *b)) {
                best = Some((rank, room, p));
            }
        }
        match best {
            Some((_, _, p)) => Ok(p),
            None => Err(Error::ResourceExhausted(format!(
                "no pool{}{} can hold {size} bytes{}",
                params.pool.as_ref().map(|p| format!(" named {p}")).unwrap_or_default(),
                if restricted { format!(" on node(s) {}", nodes.join(", ")) } else { String::new() },
                if why.is_empty() { String::new() } else { format!(": {}", why.join("; ")) }
            ))),
        }
    }

    fn volume_message(&self, v: &ThinVolume, pool: Option<&ThinPool>) -> Volume {
        let id = DeviceRef::new(&v.spec.pool, v.spec.device_id.0);
        let ann = v.metadata.annotations.clone().unwrap_or_default();
        let mut ctx = HashMap::new();
        ctx.insert(CTX_POOL.to_string(), v.spec.pool.clone());
        ctx.insert(CTX_DEVICE.to_string(), v.spec.device_id.0.to_string());
        ctx.insert(CTX_VOLUME.to_string(), v.metadata.name.clone().unwrap_or_default());
        ctx.insert(CTX_FS_TYPE.to_string(), ann.get(ANN_FS_TYPE).cloned().unwrap_or_else(|| FsType::Ext4.as_str().into()));
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
                let r = DeviceRef::parse(&s.snapshot_id);
                let snap = match &r {
                    Some(r) => self.find_snapshot(r).await?,
                    None => None,
                };
                let snap = snap.ok_or_else(|| Error::NotFound(format!("source snapshot {} does not exist", s.snapshot_id)))?;
                let snap = self.settle_snapshot(snap).await?;
                Some((VolumeSource { kind: VolumeSourceKind::Snapshot, name: s.snapshot_id.clone() }, snap.spec.pool, snap.spec.device_id.0, snap.spec.size_bytes))
            }
            Some(Some(SourceType::Volume(s))) => {
                if s.volume_id.is_empty() {
                    return Err(Error::invalid("volume_content_source.volume.volume_id", "missing"));
                }
                let r = DeviceRef::parse(&s.volume_id);
                let vol = match &r {
                    Some(r) => self.find_volume(r).await?,
                    None => None,
                };
                let vol = vol.ok_or_else(|| Error::NotFound(format!("source volume {} does not exist", s.volume_id)))?;
                let vol = self.settle_volume(vol).await?;
                Some((VolumeSource { kind: VolumeSourceKind::Volume, name: s.volume_id.clone() }, vol.spec.pool, vol.spec.device_id.0, vol.spec.size_bytes))
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
        if let Some(existing) = self.volumes.get_opt(&obj_name).await? {
            let ann = existing.metadata.annotations.clone().unwrap_or_default();
            let same = existing.spec.csi_name == req.name
                && size_fits(existing.spec.size_bytes, req.capacity_range.as_ref())
                && existing.spec.source == source.as_ref().map(|s| s.0.clone())
                && ann.get(ANN_FS_TYPE).map(String::as_str) == Some(fs_type.as_str());
            if !same {
                return Err(Error::AlreadyExists(format!(
                    "volume {:?} exists with other parameters (size {}, source {:?}, fs {:?})",
                    req.name,
                    existing.spec.size_bytes,
                    existing.spec.source.as_ref().map(|s| &s.name),
                    ann.get(ANN_FS_TYPE)
                )));
            }
            let v = self.settle_volume(existing).await?;
            let pool = self.pools.get_opt(&v.spec.pool).await?;
            return Ok(self.volume_message(&v, pool.as_ref()));
        }

        // Placement and the transaction.
        let (pool, op) = match &source {
            None => (self.place(&params, req.accessibility_requirements.as_ref(), size).await?, Op::CreateThin),
            Some((src, pool_name, device, _)) => {
                let pool = self
                    .pools
                    .get_opt(pool_name)
                    .await?
                    .ok_or_else(|| Error::NotFound(format!("the pool {pool_name} of source {} is gone", src.name)))?;
                if let Some(want) = &params.pool {
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
                let provisioned = self.provisioned().await?.get(pool_name).copied().unwrap_or(0);
                let room = available(&pool, params.overprovisioning, provisioned);
                if room < size {
                    return Err(Error::ResourceExhausted(format!("pool {} on {}: {room} bytes available, {size} wanted", pool.spec.pool_name, pool.spec.node)));
                }
                (pool, Op::CreateSnapshot { origin: DeviceRef::new(pool_name, *device).thin_id() })
            }
        };
        let pool_name = pool.metadata.name.clone().unwrap_or_default();
        let a = self.alloc.allocate(&pool_name, &[op]).await?;
        crate::failpoint::hit("volume-allocated");
        let device = a.created[0].get();
        let txn = a.transaction.id().get();
        if let Err(e) = self.clear_stale(&pool_name, device, a.pool_uid.as_deref()).await {
            self.give_back(&pool_name, device, txn).await;
            return Err(e);
        }
        let mut v = ThinVolume::new(
            &obj_name,
            ThinVolumeSpec {
                csi_name: req.name.clone(),
                pool: pool_name.clone(),
                pool_uid: a.pool_uid.clone(),
                device_id: thin_csi_api::DeviceId(device),
                size_bytes: size,
                source: source.as_ref().map(|s| s.0.clone()),
            },
        );
        v.metadata = object_meta(&obj_name, &pool_name, device, txn, &[
            (ANN_FS_TYPE, fs_type.as_str()),
            (ANN_ACCESS, if access == Access::Block { "block" } else { "mount" }),
        ]);
        let created = match self.volumes.create(&PostParams::default(), &v).await {
            Ok(c) => c,
            // The create may have taken effect with its reply lost: ours
            // (same device and transaction) is used, not given back.
            Err(e) => match self.volumes.get_opt(&obj_name).await {
                Ok(Some(c)) if c.spec.device_id.0 == device && transaction_of(&c.metadata).ok() == Some(txn) => c,
                _ => {
                    self.give_back(&pool_name, device, txn).await;
                    return Err(e.into());
                }
            },
        };
        crate::failpoint::hit("volume-object");
        let v = self.settle_volume(created).await?;
        tracing::info!(name = %req.name, id = %DeviceRef::new(&pool_name, device), size, txn, "volume created");
        Ok(self.volume_message(&v, Some(&pool)))
    }

    /// Removes objects that still name `device` of `pool`, which the
    /// allocator just handed out again: it only hands out ids whose delete
    /// committed (or whose create aborted), so such an object is left over
    /// from a controller that stopped between the device delete and the
    /// object delete. Without this, a lookup by id could find it.
    async fn clear_stale(&self, pool: &str, device: u32, pool_uid: Option<&str>) -> Result<()> {
        let lp = ListParams::default().labels(&DeviceRef::new(pool, device).selector());
        // Only objects of the record that handed the id out again: another
        // record's (a re-created pool object) are not ours to judge.
        let same_record = |uid: &Option<String>| uid.is_none() || pool_uid.is_none() || uid.as_deref() == pool_uid;
        for v in self.volumes.list(&lp).await?.items.into_iter().filter(|v| same_record(&v.spec.pool_uid)) {
            let name = v.metadata.name.clone().unwrap_or_default();
            tracing::warn!(object = %name, pool, device, "removing a stale ThinVolume: its device was deleted and the id reused");
            let _ = self.volumes.delete(&name, &DeleteParams::default()).await;
        }
        for s in self.snapshots.list(&lp).await?.items.into_iter().filter(|s| same_record(&s.spec.pool_uid)) {
            let name = s.metadata.name.clone().unwrap_or_default();
            tracing::warn!(object = %name, pool, device, "removing a stale ThinSnapshot: its device was deleted and the id reused");
            let _ = self.snapshots.delete(&name, &DeleteParams::default()).await;
        }
        Ok(())
    }

    /// Best effort: deletes a device whose object could not be written, once
    /// its create transaction `txn` has finished (a device is never deleted
    /// while its create is pending). What this misses, the leak collector finds.
    async fn give_back(&self, pool: &str, device: u32, txn: u64) {
        let id = DeviceRef::new(pool, device).thin_id();
        match self.wait(pool, txn, None, wait::Subject::Create(device)).await {
            Ok(Finished::Committed) => {}
            Ok(Finished::Aborted(_)) => return, // no device was made
            Err(e) => {
                tracing::warn!(pool, device, txn, error = %e, "could not give back a device whose object was not written");
                return;
            }
        }
        if let Err(e) = self.alloc.allocate(pool, &[Op::Delete { id }]).await {
            tracing::warn!(pool, device, error = %e, "could not give back a device whose object was not written");
        }
    }

    async fn delete_volume(&self, req: DeleteVolumeRequest) -> Result<()> {
        if req.volume_id.is_empty() {
            return Err(Error::invalid("volume_id", "missing"));
        }
        self.check_leading()?;
        let Some(r) = DeviceRef::parse(&req.volume_id) else { return Ok(()) };
        let _busy = self.busy(format!("volume {}", req.volume_id))?;
        let Some(v) = self.find_volume(&r).await? else { return Ok(()) };
        let name = v.metadata.name.clone().unwrap_or_default();
        // Its create aborted: there is no device, and the object is gone.
        if let Settled::Aborted(_) = self.try_settle_volume(v).await? {
            return Ok(());
        }
        self.delete_device(&r.pool, r.device).await?;
        match self.volumes.delete(&name, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
        tracing::info!(id = %r, "volume deleted");
        Ok(())
    }

    async fn create_snapshot(&self, req: CreateSnapshotRequest) -> Result<Snapshot> {
        if req.name.is_empty() {
            return Err(Error::invalid("name", "missing"));
        }
        if req.source_volume_id.is_empty() {
            return Err(Error::invalid("source_volume_id", "missing"));
        }
        check_snapshot_params(&req.parameters)?;
        self.check_leading()?;
        let _busy = self.busy(format!("snapshot name {:?}", req.name))?;
        let obj_name = object_name(&req.name);
        if let Some(existing) = self.snapshots.get_opt(&obj_name).await? {
            if existing.spec.csi_name != req.name || existing.spec.source.name != req.source_volume_id {
                return Err(Error::AlreadyExists(format!(
                    "snapshot {:?} exists for source volume {}, not {}",
                    req.name, existing.spec.source.name, req.source_volume_id
                )));
            }
            let s = self.settle_snapshot(existing).await?;
            return Ok(snapshot_message(&s));
        }
        let r = DeviceRef::parse(&req.source_volume_id);
        let vol = match &r {
            Some(r) => self.find_volume(r).await?,
            None => None,
        };
        let vol = vol.ok_or_else(|| Error::NotFound(format!("source volume {} does not exist", req.source_volume_id)))?;
        let vol = self.settle_volume(vol).await?;
        let pool = vol.spec.pool.clone();
        let origin = DeviceRef::new(&pool, vol.spec.device_id.0).thin_id();
        let a = self.alloc.allocate(&pool, &[Op::CreateSnapshot { origin }]).await?;
        crate::failpoint::hit("snapshot-allocated");
        let device = a.created[0].get();
        let txn = a.transaction.id().get();
        if let Err(e) = self.clear_stale(&pool, device, a.pool_uid.as_deref()).await {
            self.give_back(&pool, device, txn).await;
            return Err(e);
        }
        let mut s = ThinSnapshot::new(
            &obj_name,
            ThinSnapshotSpec {
                csi_name: req.name.clone(),
                pool: pool.clone(),
                pool_uid: a.pool_uid.clone(),
                device_id: thin_csi_api::DeviceId(device),
                size_bytes: vol.spec.size_bytes,
                source: VolumeSource { kind: VolumeSourceKind::Volume, name: req.source_volume_id.clone() },
            },
        );
        s.metadata = object_meta(&obj_name, &pool, device, txn, &[]);
        let created = match self.snapshots.create(&PostParams::default(), &s).await {
            Ok(c) => c,
            // The create may have taken effect with its reply lost: ours
            // (same device and transaction) is used, not given back.
            Err(e) => match self.snapshots.get_opt(&obj_name).await {
                Ok(Some(c)) if c.spec.device_id.0 == device && transaction_of(&c.metadata).ok() == Some(txn) => c,
                _ => {
                    self.give_back(&pool, device, txn).await;
                    return Err(e.into());
                }
            },
        };
        crate::failpoint::hit("snapshot-object");
        let s = self.settle_snapshot(created).await?;
        tracing::info!(name = %req.name, id = %DeviceRef::new(&pool, device), source = %req.source_volume_id, txn, "snapshot created");
        Ok(snapshot_message(&s))
    }

    async fn delete_snapshot(&self, req: DeleteSnapshotRequest) -> Result<()> {
        if req.snapshot_id.is_empty() {
            return Err(Error::invalid("snapshot_id", "missing"));
        }
        self.check_leading()?;
        let Some(r) = DeviceRef::parse(&req.snapshot_id) else { return Ok(()) };
        let _busy = self.busy(format!("snapshot {}", req.snapshot_id))?;
        let Some(s) = self.find_snapshot(&r).await? else { return Ok(()) };
        let name = s.metadata.name.clone().unwrap_or_default();
        if let Settled::Aborted(_) = self.try_settle_snapshot(s).await? {
            return Ok(());
        }
        self.delete_device(&r.pool, r.device).await?;
        match self.snapshots.delete(&name, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
        tracing::info!(id = %r, "snapshot deleted");
        Ok(())
    }

    async fn list_volumes(&self, req: ListVolumesRequest) -> Result<ListVolumesResponse> {
        self.check_leading()?;
        let pools = self.pool_map().await?;
        let items: Vec<(DeviceRef, ThinVolume)> = self
            .volumes
            .list(&ListParams::default())
            .await?
            .items
            .into_iter()
            .filter(|v| v.status.as_ref().is_some_and(|s| s.ready))
            .map(|v| (DeviceRef::new(&v.spec.pool, v.spec.device_id.0), v))
            .collect();
        let (page, next_token) = page(items, &req.starting_token, req.max_entries)?;
        let entries = page
            .into_iter()
            .map(|(_, v)| {
                let pool = pools.get(&v.spec.pool);
                let (abnormal, message) = condition(pool);
                list_volumes_response::Entry {
                    volume: Some(self.volume_message(&v, pool)),
                    status: Some(list_volumes_response::VolumeStatus {
                        published_node_ids: Vec::new(),
                        volume_condition: Some(VolumeCondition { abnormal, message }),
                    }),
                }
            })
            .collect();
        Ok(ListVolumesResponse { entries, next_token })
    }

    async fn list_snapshots(&self, req: ListSnapshotsRequest) -> Result<ListSnapshotsResponse> {
        self.check_leading()?;
        let mut items: Vec<(DeviceRef, ThinSnapshot)> = Vec::new();
        if !req.snapshot_id.is_empty() {
            // One snapshot by id: an id that names nothing is an empty list.
            if let Some(r) = DeviceRef::parse(&req.snapshot_id) {
                if let Some(s) = self.find_snapshot(&r).await? {
                    items.push((r, s));
                }
            }
        } else {
            items = self.snapshots.list(&ListParams::default()).await?.items.into_iter().map(|s| (DeviceRef::new(&s.spec.pool, s.spec.device_id.0), s)).collect();
        }
        items.retain(|(_, s)| s.status.as_ref().is_some_and(|st| st.ready));
        if !req.source_volume_id.is_empty() {
            items.retain(|(_, s)| s.spec.source.name == req.source_volume_id);
        }
        let (page, next_token) = page(items, &req.starting_token, req.max_entries)?;
        let entries = page.into_iter().map(|(_, s)| list_snapshots_response::Entry { snapshot: Some(snapshot_message(&s)) }).collect();
        Ok(ListSnapshotsResponse { entries, next_token })
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
        let provisioned = self.provisioned().await?;
        let best = self
            .pool_map()
            .await?
            .into_iter()
            .filter(|(_, p)| node.as_ref().is_none_or(|n| *n == p.spec.node))
            .filter(|(_, p)| params.pool.as_ref().is_none_or(|want| *want == p.spec.pool_name))
            .map(|(name, p)| available(&p, params.overprovisioning, provisioned.get(&name).copied().unwrap_or(0)))
            .max()
            .unwrap_or(0);
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
        if let Some(cap) = &req.volume_capability {
            check_capability(cap).map_err(|why| Error::invalid("volume_capability", why))?;
        }
        self.check_leading()?;
        let r = DeviceRef::parse(&req.volume_id).ok_or_else(|| Error::NotFound(format!("volume {} does not exist", req.volume_id)))?;
        let _busy = self.busy(format!("volume {}", req.volume_id))?;
        let v = self.find_volume(&r).await?.ok_or_else(|| Error::NotFound(format!("volume {} does not exist", req.volume_id)))?;
        let v = self.settle_volume(v).await?;
        let current = v.spec.size_bytes;
        let wanted = size_for(Some(range), current)?;
        let block = match &req.volume_capability {
            Some(VolumeCapability { access_type: Some(volume_capability::AccessType::Block(_)), .. }) => true,
            Some(_) => false,
            None => v.metadata.annotations.as_ref().and_then(|a| a.get(ANN_ACCESS)).is_some_and(|a| a == "block"),
        };
        if wanted <= current {
            // Never shrinks; a limit below the current size cannot be met.
            if range.limit_bytes > 0 && (range.limit_bytes as u64) < current {
                return Err(Error::OutOfRange(format!("capacity_range: limit_bytes {} is below the current size {current}; volumes do not shrink", range.limit_bytes)));
            }
            return Ok(ControllerExpandVolumeResponse { capacity_bytes: current as i64, node_expansion_required: !block });
        }
        let pool = self.pools.get_opt(&r.pool).await?.ok_or_else(|| Error::NotFound(format!("the pool {} of volume {} is gone", r.pool, req.volume_id)))?;
        if let Some(reason) = pool_unusable(&pool) {
            return Err(Error::ResourceExhausted(format!("pool {} on {}: {reason}", pool.spec.pool_name, pool.spec.node)));
        }
        let provisioned = self.provisioned().await?.get(&r.pool).copied().unwrap_or(0);
        let room = available(&pool, DEFAULT_OVERPROVISIONING, provisioned);
        if wanted - current > room {
            return Err(Error::ResourceExhausted(format!("pool {} on {}: {room} bytes available, {} more wanted", pool.spec.pool_name, pool.spec.node, wanted - current)));
        }
        let name = v.metadata.name.clone().unwrap_or_default();
        let patch = json!({"spec": {"sizeBytes": wanted}});
        self.volumes.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)).await?;
        tracing::info!(id = %r, from = current, to = wanted, "volume expanded");
        Ok(ControllerExpandVolumeResponse { capacity_bytes: wanted as i64, node_expansion_required: !block })
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
        let r = DeviceRef::parse(&req.volume_id);
        let v = match &r {
            Some(r) => self.find_volume(r).await?,
            None => None,
        };
        let v = v.ok_or_else(|| Error::NotFound(format!("volume {} does not exist", req.volume_id)))?;
        let fs = v.metadata.annotations.as_ref().and_then(|a| a.get(ANN_FS_TYPE)).cloned().unwrap_or_else(|| "ext4".into());
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

    async fn get_volume(&self, req: ControllerGetVolumeRequest) -> Result<ControllerGetVolumeResponse> {
        if req.volume_id.is_empty() {
            return Err(Error::invalid("volume_id", "missing"));
        }
        self.check_leading()?;
        let r = DeviceRef::parse(&req.volume_id);
        let v = match &r {
            Some(r) => self.find_volume(r).await?,
            None => None,
        };
        let v = v.filter(|v| v.status.as_ref().is_some_and(|s| s.ready)).ok_or_else(|| Error::NotFound(format!("volume {} does not exist", req.volume_id)))?;
        let pool = self.pools.get_opt(&v.spec.pool).await?;
        let (abnormal, message) = condition(pool.as_ref());
        Ok(ControllerGetVolumeResponse {
            volume: Some(self.volume_message(&v, pool.as_ref())),
            status: Some(controller_get_volume_response::VolumeStatus {
                published_node_ids: Vec::new(),
                volume_condition: Some(VolumeCondition { abnormal, message }),
            }),
        })
    }
}

/// An object's device after waiting on its create transaction.
enum Settled<T> {
    Ready(T),
    /// The node aborted the create; the object was removed. The error says why.
    Aborted(Error),
}

impl<T> Settled<T> {
    fn ready(self) -> Result<T> {
        match self {
            Settled::Ready(t) => Ok(t),
            Settled::Aborted(e) => Err(e),
        }
    }
}

fn node_topology(node: &str) -> Topology {
    Topology { segments: HashMap::from([(TOPOLOGY_KEY.to_string(), node.to_string())]) }
}

fn transaction_of(meta: &ObjectMeta) -> Result<u64> {
    let name = meta.name.clone().unwrap_or_default();
    meta.annotations
        .as_ref()
        .and_then(|a| a.get(ANN_TRANSACTION))
        .and_then(|t| t.parse().ok())
        .ok_or_else(|| Error::Internal(format!("object {name} is not ready and names no transaction ({ANN_TRANSACTION})")))
}

/// The error a CSI create returns when the node aborted its transaction.
pub fn aborted_create(pool: &str, aborted: thin_csi_api::AbortedTransaction) -> Error {
    transaction_aborted(pool, "create", aborted)
}

/// The error a CSI call returns when the node aborted the transaction of
/// its `what` (create or delete); `status.rs` maps the reason to a code.
fn transaction_aborted(pool: &str, what: &'static str, a: thin_csi_api::AbortedTransaction) -> Error {
    Error::TransactionAborted { pool: pool.to_string(), what, txn: a.id, reason: a.reason, message: a.message }
}

fn object_meta(name: &str, pool: &str, device: u32, txn: u64, extra: &[(&str, &str)]) -> ObjectMeta {
    let labels = BTreeMap::from([(LABEL_POOL.to_string(), pool.to_string()), (LABEL_DEVICE.to_string(), device.to_string())]);
    let mut annotations = BTreeMap::from([(ANN_TRANSACTION.to_string(), txn.to_string())]);
    for (k, v) in extra {
        annotations.insert(k.to_string(), v.to_string());
    }
    ObjectMeta { name: Some(name.to_string()), labels: Some(labels), annotations: Some(annotations), ..Default::default() }
}

fn snapshot_message(s: &ThinSnapshot) -> Snapshot {
    let creation_time = s.metadata.creation_timestamp.as_ref().map(|t| prost_types::Timestamp { seconds: t.0.as_second(), nanos: 0 });
    Snapshot {
        size_bytes: s.spec.size_bytes as i64,
        snapshot_id: DeviceRef::new(&s.spec.pool, s.spec.device_id.0).to_string(),
        source_volume_id: s.spec.source.name.clone(),
        creation_time,
        ready_to_use: s.status.as_ref().is_some_and(|s| s.ready),
        group_snapshot_id: String::new(),
    }
}

/// What ControllerGetCapabilities advertises: only what works.
pub const CAPABILITIES: [RpcType; 9] = [
    RpcType::CreateDeleteVolume,
    RpcType::CreateDeleteSnapshot,
    RpcType::ListVolumes,
    RpcType::ListSnapshots,
    RpcType::GetCapacity,
    RpcType::ExpandVolume,
    RpcType::CloneVolume,
    RpcType::GetVolume,
    RpcType::VolumeCondition,
];

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
    async fn get_snapshot(&self, _: Request<GetSnapshotRequest>) -> Result<Response<GetSnapshotResponse>, Status> {
        unimplemented("GetSnapshot")
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    #[test]
    fn objects_carry_their_lookup_labels_and_transaction() {
        let m = object_meta("vol-a", "pool1", 17, 42, &[(ANN_FS_TYPE, "xfs")]);
        let labels = m.labels.clone().unwrap();
        assert_eq!(labels[LABEL_POOL], "pool1");
        assert_eq!(labels[LABEL_DEVICE], "17");
        assert_eq!(transaction_of(&m).unwrap(), 42);
        assert_eq!(m.annotations.unwrap()[ANN_FS_TYPE], "xfs");
        let bare = ObjectMeta { name: Some("x".into()), ..Default::default() };
        assert_eq!(transaction_of(&bare).unwrap_err().code(), Code::Internal);
    }

    #[test]
    fn snapshots_and_volumes_speak_csi_ids() {
        let s = ThinSnapshot::new(
            "snap",
            ThinSnapshotSpec {
                csi_name: "Snap 1".into(),
                pool: "pool1".into(),
                pool_uid: None,
                device_id: thin_csi_api::DeviceId(5),
                size_bytes: 1 << 30,
                source: VolumeSource { kind: VolumeSourceKind::Volume, name: "pool1:3".into() },
            },
        );
        let m = snapshot_message(&s);
        assert_eq!((m.snapshot_id.as_str(), m.source_volume_id.as_str(), m.size_bytes, m.ready_to_use), ("pool1:5", "pool1:3", 1 << 30, false));
        assert_eq!(node_topology("n1").segments[TOPOLOGY_KEY], "n1");
    }

    #[test]
    fn aborted_creates_say_why() {
        let a = |reason| thin_csi_api::AbortedTransaction { id: 4, reason, message: "create_thin 3: no space left in pool metadata (ENOSPC)".into() };
        let e = aborted_create("p", a(thin_csi_api::AbortReason::NoSpace));
        assert_eq!(e.code(), Code::ResourceExhausted);
        assert!(e.to_string().contains("ENOSPC"), "{e}");
        assert_eq!(aborted_create("p", a(thin_csi_api::AbortReason::OriginMissing)).code(), Code::NotFound);
        assert!(matches!(Settled::<()>::Aborted(Error::Internal("x".into())).ready(), Err(Error::Internal(_))));
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
        assert!(!CAPABILITIES.contains(&RpcType::GetSnapshot));
        assert!(!CAPABILITIES.contains(&RpcType::ModifyVolume));
    }
}
