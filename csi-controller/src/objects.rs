//! The device objects: a `ThinVolume` or `ThinSnapshot` names one thin
//! device and the transaction that creates it. One generic
//! create-and-settle and one delete-then-remove serve both kinds
//! ([`DeviceObject`]), so the order of writes below is written once.
//!
//! Order of writes: the transaction is recorded first (the allocator), then
//! the object is created carrying its transaction (`spec.createTransaction`)
//! and marked ready once the node committed it. A retry of a request whose
//! object exists waits on that transaction again. A delete removes the
//! device first, the object after; an object left behind by a crash in
//! between is removed when the allocator hands its id out again
//! ([`Devices::clear_stale`]).
//!
//! Ids are reused as soon as their delete commits; the CSI id carries the
//! device's generation (its create transaction), and every lookup by id
//! ([`Devices::find`]) finds only the object of that generation, so a
//! DeleteVolume retried after its device delete committed and the id went
//! to a new volume finds nothing. The settle of an aborted create removes
//! its object (by uid) and then forgets the transaction's tombstone
//! ([`Allocator::forget`]); marking an object ready is a replace at the
//! version read, of the object whose create transaction was awaited.
//!
//! Known gaps: a crash between the allocation and the object's creation
//! leaves a device no object names (for a garbage collector to find: the
//! pool's devices minus the objects' ids), or, if that create aborted, a
//! tombstone nothing forgets (the collector's too).

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, ListParams, PostParams, Preconditions};
use kube::core::ClusterResourceScope;
use kube::{Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::json;
use thin_csi_api::{AbortedTransaction, ThinPool, ThinSnapshot, ThinVolume};
use thinpool::ThinId;

use crate::alloc::{AllocError, Allocator, Request as Op};
use crate::failpoint;
use crate::params::{DeviceRef, LABEL_DEVICE, LABEL_POOL};
use crate::status::Error;
use crate::wait::{self, Finished, Subject, WaitError};

type Result<T, E = Error> = std::result::Result<T, E>;

/// What the generic code needs of a volume or snapshot object.
pub trait DeviceObject: Resource<DynamicType = (), Scope = ClusterResourceScope> + Clone + Debug + Serialize + DeserializeOwned + Send + Sync + 'static {
    /// `volume` or `snapshot`: in messages and failpoint names.
    const WHAT: &'static str;
    fn api(devices: &Devices) -> &Api<Self>;
    /// The ThinPool object (pool UUID) holding the device.
    fn pool(&self) -> &str;
    /// The uid of the pool object whose record assigned the device.
    fn pool_uid(&self) -> Option<&str>;
    fn device(&self) -> ThinId;
    fn create_transaction(&self) -> u64;
    fn is_ready(&self) -> bool;
    /// Its CSI id: pool, device and generation.
    fn id(&self) -> DeviceRef {
        DeviceRef::new(self.pool(), self.device(), self.create_transaction())
    }
}

macro_rules! device_object {
    ($kind:ty, $what:literal, $field:ident) => {
        impl DeviceObject for $kind {
            const WHAT: &'static str = $what;
            fn api(devices: &Devices) -> &Api<Self> {
                &devices.$field
            }
            fn pool(&self) -> &str {
                &self.spec.pool
            }
            fn pool_uid(&self) -> Option<&str> {
                self.spec.pool_uid.as_deref()
            }
            fn device(&self) -> ThinId {
                self.spec.device_id
            }
            fn create_transaction(&self) -> u64 {
                self.spec.create_transaction
            }
            fn is_ready(&self) -> bool {
                self.status.as_ref().is_some_and(|s| s.ready)
            }
        }
    };
}
device_object!(ThinVolume, "volume", volumes);
device_object!(ThinSnapshot, "snapshot", snapshots);

/// The objects and the allocator that changes devices, shared by every RPC.
pub struct Devices {
    pub pools: Api<ThinPool>,
    pub volumes: Api<ThinVolume>,
    pub snapshots: Api<ThinSnapshot>,
    pub alloc: Allocator,
    pub wait_timeout: Duration,
    /// The one watch of the pool objects every wait shares, started by the first wait.
    pool_watch: std::sync::Arc<std::sync::OnceLock<wait::PoolWatch>>,
}

/// A device object after waiting on its create transaction.
pub enum Settled<T> {
    Ready(T),
    /// The node aborted the create; the object was removed. The error says why.
    Aborted(Error),
}

impl<T> Settled<T> {
    pub fn ready(self) -> Result<T> {
        match self {
            Settled::Ready(t) => Ok(t),
            Settled::Aborted(e) => Err(e),
        }
    }
}

/// What an allocation handed a new object: its device, the transaction
/// that creates it, and the uid of the record that assigned both.
pub struct Assigned {
    pub device: ThinId,
    pub transaction: u64,
    pub pool_uid: Option<String>,
}

impl Devices {
    pub fn new(client: Client, alloc: Allocator, wait_timeout: Duration) -> Self {
        Devices { pools: Api::all(client.clone()), volumes: Api::all(client.clone()), snapshots: Api::all(client), alloc, wait_timeout, pool_watch: Default::default() }
    }

    /// The object of a device, found by its labels: only the one of the id's
    /// generation (an object of the same device id and another create
    /// transaction is another device, or a stale leftover).
    pub async fn find<K: DeviceObject>(&self, r: &DeviceRef) -> Result<Option<K>> {
        let list = K::api(self).list(&ListParams::default().labels(&r.selector())).await?;
        Ok(list.items.into_iter().find(|o| r.names(o.pool(), o.device(), o.create_transaction())))
    }

    /// [`Self::find`] for an id string a request carries (`field` names it
    /// in errors): an id this driver never issued names nothing; one with a
    /// malformed generation is INVALID_ARGUMENT.
    pub async fn find_id<K: DeviceObject>(&self, field: &str, id: &str) -> Result<Option<K>> {
        match parse_id(field, id)? {
            Some(r) => self.find(&r).await,
            None => Ok(None),
        }
    }

    /// Waits for the node to finish `txn` on `pool`.
    pub async fn wait(&self, pool: &str, txn: u64, uid: Option<&str>, subject: Subject) -> Result<Finished> {
        let watch = self.pool_watch.get_or_init(|| wait::PoolWatch::start(self.pools.clone()));
        Ok(watch.wait_finished_in(pool, txn, uid, subject, self.wait_timeout).await?)
    }

    /// Makes sure the device of an object exists: waits on its create
    /// transaction and marks it ready; an aborted create deletes the object.
    pub async fn settle<K: DeviceObject>(&self, obj: K) -> Result<K> {
        self.try_settle(obj).await?.ready()
    }

    pub async fn try_settle<K: DeviceObject>(&self, obj: K) -> Result<Settled<K>> {
        if obj.is_ready() {
            return Ok(Settled::Ready(obj));
        }
        let name = obj.name_any();
        let api = K::api(self);
        let finished = match self.wait(obj.pool(), obj.create_transaction(), obj.pool_uid(), Subject::Create).await {
            // Its record is gone (the pool object was re-created): nothing
            // was promised for this object; remove it so a retry starts over.
            Err(e @ Error::Wait(WaitError::TransactionUnknown { .. })) => {
                let _ = api.delete(&name, &DeleteParams::default()).await;
                return Err(e);
            }
            r => r?,
        };
        failpoint::hit_for(&[K::WHAT, "waited"]);
        match finished {
            Finished::Committed => {
                let ready = self.mark_ready(obj).await?;
                failpoint::hit_for(&[K::WHAT, "ready"]);
                Ok(Settled::Ready(ready))
            }
            Finished::Aborted(aborted) => {
                // This object (its uid), not one a retry made since under the name.
                let dp = DeleteParams { preconditions: Some(Preconditions { uid: obj.uid(), resource_version: None }), ..Default::default() };
                match api.delete(&name, &dp).await {
                    // Removed, or gone already (404; 409: the name holds another uid now).
                    Ok(_) => {}
                    Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
                    // Not removed: its tombstone stays for a retry to settle.
                    Err(e) => return Err(e.into()),
                }
                self.forget(obj.pool(), obj.create_transaction()).await;
                Ok(Settled::Aborted(aborted_create(obj.pool(), aborted)))
            }
        }
    }

    /// Marks `obj` ready: a replace at the version read, so only this object
    /// (the create transaction awaited) is marked; one re-created under the
    /// name since is another create's (ABORTED: a retry settles that one).
    async fn mark_ready<K: DeviceObject>(&self, obj: K) -> Result<K> {
        let name = obj.name_any();
        let api = K::api(self);
        let mut value = serde_json::to_value(&obj).map_err(|e| Error::Internal(format!("{} {name}: {e}", K::WHAT)))?;
        value["status"] = json!({"ready": true});
        let marked: K = serde_json::from_value(value).map_err(|e| Error::Internal(format!("{} {name}: {e}", K::WHAT)))?;
        match api.replace_status(&name, &PostParams::default(), &marked).await {
            Ok(ready) => Ok(ready),
            Err(kube::Error::Api(s)) if s.code == 409 || s.code == 404 => match api.get_opt(&name).await? {
                // Written by someone else since (another replica marked it): fine.
                Some(now) if now.uid() == obj.uid() && now.is_ready() => Ok(now),
                Some(now) if now.uid() == obj.uid() => Box::pin(self.mark_ready(now)).await,
                _ => Err(Error::Aborted(format!("{} {name} was removed or re-created while its create transaction {} was awaited", K::WHAT, obj.create_transaction()))),
            },
            Err(e) => Err(e.into()),
        }
    }

    /// Best effort: drops the tombstone of aborted create `txn` once its
    /// object is gone (what this misses is for the leak collector).
    async fn forget(&self, pool: &str, txn: u64) {
        if let Err(e) = self.alloc.forget(pool, txn).await {
            tracing::warn!(pool, txn, error = %e, "could not drop the tombstone of an aborted create");
        }
    }

    /// Creates a device with `op` on `pool` and the object `build` makes for
    /// it, then waits until the node committed it. An object that cannot be
    /// written gives its device back.
    pub async fn create<K: DeviceObject>(&self, pool: &str, op: Op, build: impl FnOnce(&Assigned) -> K) -> Result<K> {
        let a = self.alloc.allocate(pool, &[op]).await?;
        failpoint::hit_for(&[K::WHAT, "allocated"]);
        let assigned = Assigned { device: a.created[0], transaction: a.transaction.id().get(), pool_uid: a.pool_uid };
        let (device, txn) = (assigned.device, assigned.transaction);
        if let Err(e) = self.clear_stale(pool, device, txn, assigned.pool_uid.as_deref()).await {
            self.give_back(pool, device, txn).await;
            return Err(e);
        }
        let obj = build(&assigned);
        let name = obj.name_any();
        let api = K::api(self);
        let created = match api.create(&PostParams::default(), &obj).await {
            Ok(c) => c,
            // The create may have taken effect with its reply lost: ours
            // (same device and transaction) is used, not given back.
            Err(e) => match api.get_opt(&name).await {
                Ok(Some(c)) if c.device() == device && c.create_transaction() == txn => c,
                _ => {
                    self.give_back(pool, device, txn).await;
                    return Err(e.into());
                }
            },
        };
        failpoint::hit_for(&[K::WHAT, "object"]);
        let settled = self.settle(created).await?;
        tracing::info!(object = %name, id = %DeviceRef::new(pool, device, txn), txn, "{} created", K::WHAT);
        Ok(settled)
    }

    /// Deletes the device of `r` and then its object; Ok when there is
    /// nothing (left) to delete.
    pub async fn delete<K: DeviceObject>(&self, r: &DeviceRef) -> Result<()> {
        let Some(obj) = self.find::<K>(r).await? else { return Ok(()) };
        let (name, uid) = (obj.name_any(), obj.uid());
        // Its create aborted: there is no device, and the object is gone.
        if let Settled::Aborted(_) = self.try_settle(obj).await? {
            return Ok(());
        }
        self.delete_device(r, K::WHAT).await?;
        // This object (its uid): one re-created under the name since is another device's.
        match K::api(self).delete(&name, &DeleteParams { preconditions: Some(Preconditions { uid: uid.clone(), resource_version: None }), ..Default::default() }).await {
            Ok(_) => {}
            // Gone, or re-created under the name (a 409 of the uid precondition).
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
        tracing::info!(id = %r, "{} deleted", K::WHAT);
        Ok(())
    }

    /// Deletes thin device `device` of `pool` through a transaction; Ok once
    /// the device is gone (also when it already was). `what`: the kind of
    /// object being deleted, which names the crash points.
    async fn delete_device(&self, r: &DeviceRef, what: &str) -> Result<()> {
        let (pool, device) = (r.pool.as_str(), r.device);
        let (txn, uid) = match self.alloc.allocate(pool, &[Op::DeleteOf { id: device, generation: r.generation }]).await {
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
        failpoint::hit_for(&["delete", what, "recorded"]);
        // The uid: an outcome read from a re-created record would be another's.
        match self.wait(pool, txn, uid.as_deref(), Subject::Delete(device)).await? {
            Finished::Committed => {
                failpoint::hit_for(&["delete", what, "finished"]);
                Ok(())
            }
            Finished::Aborted(a) => {
                let message = format!("thin device {device}: {}", a.message);
                Err(transaction_aborted(pool, "delete", AbortedTransaction { message, ..a }))
            }
        }
    }

    /// Removes objects that still name `device` of `pool` with an older
    /// generation than `txn`, the transaction the allocator just handed the
    /// id to: it only hands out ids whose delete committed (or whose create
    /// aborted), so such an object is left over from a controller that
    /// stopped between the device delete and the object delete (or from an
    /// aborted create not yet settled). Without this, ListVolumes could list
    /// it. A newer generation is not stale: the id may have been handed out
    /// again since this allocation (this call ran late), and that object is
    /// a live volume's.
    async fn clear_stale(&self, pool: &str, device: ThinId, txn: u64, pool_uid: Option<&str>) -> Result<()> {
        self.clear_stale_of::<ThinVolume>(pool, device, txn, pool_uid).await?;
        self.clear_stale_of::<ThinSnapshot>(pool, device, txn, pool_uid).await
    }

    async fn clear_stale_of<K: DeviceObject>(&self, pool: &str, device: ThinId, txn: u64, pool_uid: Option<&str>) -> Result<()> {
        let lp = ListParams::default().labels(&format!("{LABEL_POOL}={pool},{LABEL_DEVICE}={device}"));
        // Only objects of the record that handed the id out again: another
        // record's (a re-created pool object) are not ours to judge.
        let same_record = |o: &K| o.pool_uid().is_none() || pool_uid.is_none() || o.pool_uid() == pool_uid;
        for o in K::api(self).list(&lp).await?.items.into_iter().filter(same_record).filter(|o| o.create_transaction() < txn) {
            let name = o.name_any();
            tracing::warn!(object = %name, pool, device = %device, "removing a stale {} object: its device was deleted and the id reused", K::WHAT);
            let dp = DeleteParams { preconditions: Some(Preconditions { uid: o.uid(), resource_version: None }), ..Default::default() };
            let _ = K::api(self).delete(&name, &dp).await;
        }
        Ok(())
    }

    /// Best effort: deletes a device whose object could not be written, once
    /// its create transaction `txn` has finished (a device is never deleted
    /// while its create is pending). What this misses stays a leak: a
    /// device no object names.
    async fn give_back(&self, pool: &str, device: ThinId, txn: u64) {
        match self.wait(pool, txn, None, Subject::Create).await {
            Ok(Finished::Committed) => {}
            Ok(Finished::Aborted(_)) => {
                // No device was made, and no object names the transaction.
                self.forget(pool, txn).await;
                return;
            }
            Err(e) => {
                tracing::warn!(pool, device = %device, txn, error = %e, "could not give back a device whose object was not written");
                return;
            }
        }
        if let Err(e) = self.alloc.allocate(pool, &[Op::DeleteOf { id: device, generation: txn }]).await {
            tracing::warn!(pool, device = %device, error = %e, "could not give back a device whose object was not written");
        }
    }
}

/// The id a request carries in `field`, parsed: `None` for one this driver
/// never issued (it names nothing), INVALID_ARGUMENT for none at all or a
/// malformed generation.
pub fn parse_id(field: &str, id: &str) -> Result<Option<DeviceRef>> {
    match DeviceRef::parse(id) {
        Ok(r) => Ok(Some(r)),
        Err(e) if e.is_invalid() => Err(Error::invalid(field, e.to_string())),
        Err(_) => Ok(None),
    }
}

/// The metadata of a new device object: its name and the labels that find
/// it by device.
pub fn object_meta(name: &str, pool: &str, device: ThinId) -> ObjectMeta {
    let labels = BTreeMap::from([(LABEL_POOL.to_string(), pool.to_string()), (LABEL_DEVICE.to_string(), device.to_string())]);
    ObjectMeta { name: Some(name.to_string()), labels: Some(labels), ..Default::default() }
}

/// The error a CSI create returns when the node aborted its transaction.
pub fn aborted_create(pool: &str, aborted: AbortedTransaction) -> Error {
    transaction_aborted(pool, "create", aborted)
}

/// The error a CSI call returns when the node aborted the transaction of
/// its `what` (create or delete); `status.rs` maps the reason to a code.
fn transaction_aborted(pool: &str, what: &'static str, a: AbortedTransaction) -> Error {
    Error::TransactionAborted { pool: pool.to_string(), what, txn: a.id, reason: a.reason, message: a.message }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    #[test]
    fn objects_carry_their_lookup_labels() {
        let m = object_meta("vol-a", "pool1", ThinId::new(17).unwrap());
        let labels = m.labels.clone().unwrap();
        assert_eq!(labels[LABEL_POOL], "pool1");
        assert_eq!(labels[LABEL_DEVICE], "17");
        assert_eq!(m.annotations, None);
    }

    #[test]
    fn aborted_creates_say_why() {
        let a = |reason| AbortedTransaction { id: 4, reason, message: "create_thin 3: no space left in pool metadata (ENOSPC)".into() };
        let e = aborted_create("p", a(thin_csi_api::AbortReason::NoSpace));
        assert_eq!(e.code(), Code::ResourceExhausted);
        assert!(e.to_string().contains("ENOSPC"), "{e}");
        assert_eq!(aborted_create("p", a(thin_csi_api::AbortReason::OriginMissing)).code(), Code::NotFound);
        assert!(matches!(Settled::<()>::Aborted(Error::Internal("x".into())).ready(), Err(Error::Internal(_))));
    }
}
