//! The leak collector: run by the leader only, a pass every
//! `--leak-interval` over every pool, it compares the devices the node
//! reports (`status.devices`, true at `status.devicesTransaction`) with the
//! objects (`ThinVolume`, `ThinSnapshot`) that name them.
//!
//! - A device no object names, that no transaction in the record touches
//!   and no tombstone still needed protects, is a *suspect*; one that stays
//!   a suspect for `--leak-grace` without a break is a leak and is deleted
//!   through a normal delete transaction ([`Allocator::allocate`] with
//!   [`Request::Delete`]), so the id returns to the free ranges only when
//!   the node reports the delete committed, like any other.
//! - An object whose create finished (in the listing's past) and whose
//!   device the listing lacks, for the grace period, is reported: a Warning
//!   Event on the object and the `objects_missing_device` gauge. It is not
//!   changed: what to do with a volume whose data is gone is a person's call.
//! - A tombstone (`spec.abortedTransactions`) that no object can still be
//!   waiting on, for the grace period, is removed, as are the finished
//!   transactions that only the next allocation would have pruned.
//!
//! The decision ([`judge`]) is pure, on the pool object as read, the
//! objects' references and what the previous passes saw ([`Seen`]). Why the
//! grace period makes it safe: a live request records its allocation and
//! creates its object within one request; it gives up (and gives the device
//! back) after `--wait-timeout`, which the grace must exceed (checked at
//! start). A device that stayed unnamed, allocated and untouched by the
//! record for longer was made by a request that died (a controller killed
//! between recording a create and creating the object, a create whose
//! object was deleted while it was provisioning and whose give-back was
//! lost). An id freed and handed out again between two passes is a new
//! device; its object appears within a request or it leaked too.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::Duration;

use kube::api::{Api, ListParams};
use kube::{Client, Resource, ResourceExt};
use thin_csi_api::pool::{range_ids, ranges_contain};
use thin_csi_api::{PoolHealth, ThinPool, ThinSnapshot, ThinVolume};
use thinpool::ThinId;
use tracing::{info, warn};

use crate::alloc::{self, AllocError, Allocator, Request};

/// The default of `--leak-grace`.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(600);

/// One object's claim on a device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reference {
    pub kind: Kind,
    pub name: String,
    pub uid: Option<String>,
    pub device: ThinId,
    pub create_transaction: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    Volume,
    Snapshot,
}

/// What the earlier passes saw on one pool: since when each suspect device,
/// unneeded tombstone and object without its device has been so, in the
/// collector's monotonic time. Anything not seen so in a pass is dropped:
/// the grace restarts.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Seen {
    devices: BTreeMap<ThinId, Duration>,
    tombstones: BTreeMap<u64, Duration>,
    objects: BTreeMap<(String, u64), Duration>,
}

/// What to do on one pool after a pass.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Verdict {
    /// Leaks past the grace period: delete each.
    pub delete: Vec<ThinId>,
    /// Devices no object names, still in their grace period.
    pub suspects: Vec<ThinId>,
    /// Tombstones no waiter can need any more (by id).
    pub prune_tombstones: Vec<u64>,
    /// Objects whose device is gone, past the grace period.
    pub missing: Vec<Reference>,
}

/// Why a pool is not judged in this pass.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Wait {
    /// Unhealthy or unverified: nothing is sent to it.
    NotInUse,
    /// The node has not reported its devices, or the report predates a
    /// transaction it says finished.
    NoCurrentListing,
}

/// Judges one pool. `refs` are the references of every object naming this
/// pool; `now` is the collector's monotonic time.
pub fn judge(
    pool: &ThinPool,
    refs: &[Reference],
    seen: &mut Seen,
    now: Duration,
    grace: Duration,
) -> Result<Verdict, Wait> {
    let status = pool.status.clone().unwrap_or_default();
    if status.health == Some(PoolHealth::Unhealthy)
        || pool.spec.devices_unknown_at_transaction.is_some()
    {
        *seen = Seen::default();
        return Err(Wait::NotInUse);
    }
    let listed_at = status.devices_transaction.ok_or(Wait::NoCurrentListing)?;
    let finished = pool.finished_transaction();
    if listed_at < status.finished_transaction.unwrap_or(0)
        || listed_at < pool.spec.finished_at_least()
    {
        return Err(Wait::NoCurrentListing);
    }
    let spec = &pool.spec;
    let past = |since: Option<&Duration>| since.is_some_and(|s| now.saturating_sub(*s) >= grace);
    let mut verdict = Verdict::default();
    let mut next = Seen::default();

    // Every id a transaction still in the record touches (finished ones not
    // yet pruned too: a committed create whose object is being written, a
    // committed delete whose id is not yet free).
    let touched: BTreeSet<ThinId> = spec
        .pending_transactions
        .iter()
        .flat_map(|p| {
            p.operations
                .iter()
                .flat_map(|o| std::iter::once(o.id).chain(o.origin))
        })
        .collect();
    let named: BTreeSet<ThinId> = refs.iter().map(|r| r.device).collect();

    // Tombstones: a create's is needed while an object of that create
    // exists (its waiter settles it); a delete's while an object names a
    // device it would have deleted (the delete is retried).
    for t in &spec.aborted_transactions {
        let needed = if t.creates.is_empty() {
            t.deletes.iter().any(|d| named.contains(d))
        } else {
            refs.iter().any(|r| t.covers(r.create_transaction))
        };
        if needed {
            continue;
        }
        let since = *seen.tombstones.get(&t.id).unwrap_or(&now);
        if past(Some(&since)) {
            verdict.prune_tombstones.push(t.id);
        } else {
            next.tombstones.insert(t.id, since);
        }
    }
    let protected: BTreeSet<ThinId> = spec
        .aborted_transactions
        .iter()
        .filter(|t| !verdict.prune_tombstones.contains(&t.id))
        .flat_map(|t| t.deletes.iter().copied())
        .collect();

    // Devices no object names.
    for id in range_ids(&status.devices) {
        if named.contains(&id)
            || touched.contains(&id)
            || protected.contains(&id)
            || spec.is_free(id)
        {
            continue;
        }
        let since = *seen.devices.get(&id).unwrap_or(&now);
        if past(Some(&since)) {
            verdict.delete.push(id);
        } else {
            verdict.suspects.push(id);
        }
        // Kept until the delete is recorded: then `touched` drops it.
        next.devices.insert(id, since);
    }

    // Objects whose create finished before the listing and whose device
    // the listing lacks.
    for r in refs {
        let created = r.create_transaction <= finished && r.create_transaction <= listed_at;
        if !created || touched.contains(&r.device) || ranges_contain(&status.devices, r.device) {
            continue;
        }
        let key = (
            r.uid.clone().unwrap_or_else(|| r.name.clone()),
            r.create_transaction,
        );
        let since = *seen.objects.get(&key).unwrap_or(&now);
        if past(Some(&since)) {
            verdict.missing.push(r.clone());
        }
        next.objects.insert(key, since);
    }
    *seen = next;
    Ok(verdict)
}

/// The collector's process side: lists, judges, writes.
pub struct Collector {
    client: Client,
    allocator: Allocator,
    grace: Duration,
    every: Duration,
    recorder: kube::runtime::events::Recorder,
    seen: HashMap<String, Seen>,
    reported: HashSet<(String, u64)>,
    start: tokio::time::Instant,
}

/// What one pass did, summed over the pools (logged; the tests read the metrics).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pass {
    pub deleted: usize,
    pub suspects: usize,
    pub tombstones_pruned: usize,
    pub missing: usize,
}

impl Collector {
    /// `every`: the time between passes (at most the grace period).
    pub fn new(
        client: Client,
        allocator: Allocator,
        grace: Duration,
        every: Duration,
        identity: &str,
    ) -> Collector {
        let recorder = crate::events::recorder(client.clone(), identity);
        Collector {
            client,
            allocator,
            grace,
            every: every.min(grace).max(Duration::from_millis(100)),
            recorder,
            seen: HashMap::new(),
            reported: HashSet::new(),
            start: tokio::time::Instant::now(),
        }
    }

    /// Runs passes until the task is dropped (the leader exits when it
    /// loses the lease, so a standby never collects).
    pub async fn run(mut self) {
        info!(
            grace_s = self.grace.as_secs(),
            every_s = self.every.as_secs_f64(),
            "leak collector started"
        );
        loop {
            match self.pass().await {
                Ok(p) if p != Pass::default() => info!(?p, "leak collector pass"),
                Ok(_) => {}
                Err(e) => warn!(error = %e, "leak collector pass failed; the next one retries"),
            }
            tokio::time::sleep(self.every).await;
        }
    }

    pub async fn pass(&mut self) -> Result<Pass, AllocError> {
        let list = ListParams::default();
        let pools = Api::<ThinPool>::all(self.client.clone())
            .list(&list)
            .await
            .map_err(AllocError::Api)?;
        // Objects listed after the pools: an object created after the pool
        // read is seen (never a reference missed for a device listed).
        let volumes = Api::<ThinVolume>::all(self.client.clone())
            .list(&list)
            .await
            .map_err(AllocError::Api)?;
        let snapshots = Api::<ThinSnapshot>::all(self.client.clone())
            .list(&list)
            .await
            .map_err(AllocError::Api)?;
        let mut refs: HashMap<String, Vec<Reference>> = HashMap::new();
        for v in &volumes {
            refs.entry(v.spec.pool.clone()).or_default().push(reference(
                v,
                Kind::Volume,
                v.spec.device_id,
                v.spec.create_transaction,
            ));
        }
        for s in &snapshots {
            refs.entry(s.spec.pool.clone()).or_default().push(reference(
                s,
                Kind::Snapshot,
                s.spec.device_id,
                s.spec.create_transaction,
            ));
        }
        let now = self.start.elapsed();
        let mut pass = Pass::default();
        let mut live = HashSet::new();
        for pool in &pools {
            let name = pool.name_any();
            live.insert(name.clone());
            let labels = csi_contract::metrics::PoolLabels { pool: name.clone() };
            let metrics = csi_contract::metrics::get();
            let seen = self
                .seen
                .entry(format!("{name}/{}", pool.uid().unwrap_or_default()))
                .or_default();
            let pool_refs = refs.get(&name).map_or(&[][..], Vec::as_slice);
            let verdict = match judge(pool, pool_refs, seen, now, self.grace) {
                Ok(v) => v,
                Err(_) => continue,
            };
            metrics
                .leaked_devices
                .get_or_create(&labels)
                .set((verdict.suspects.len() + verdict.delete.len()) as i64);
            metrics
                .objects_missing_device
                .get_or_create(&labels)
                .set(verdict.missing.len() as i64);
            pass.suspects += verdict.suspects.len();
            pass.missing += verdict.missing.len();
            let prune = verdict.prune_tombstones.clone();
            // Only when the record as listed has something to tidy: most passes write nothing.
            let tidy = match alloc::tidy(pool, &prune) {
                Ok(Some(_)) => {
                    self.allocator
                        .rewrite(&name, |fresh| alloc::tidy(fresh, &prune))
                        .await
                }
                other => other.map(|_| false),
            };
            match tidy {
                Ok(_) if !prune.is_empty() => {
                    info!(pool = %name, tombstones = ?prune, "pruned tombstones no waiter needs");
                    metrics
                        .tombstones_pruned
                        .get_or_create(&labels)
                        .inc_by(prune.len() as u64);
                    pass.tombstones_pruned += prune.len();
                }
                Ok(_) => {}
                Err(e) => warn!(pool = %name, error = %e, "could not tidy the record"),
            }
            for id in verdict.delete {
                match self
                    .allocator
                    .allocate(&name, &[Request::Delete { id }])
                    .await
                {
                    Ok(a) => {
                        warn!(pool = %name, device = %id, txn = %a.transaction.id(), grace_s = self.grace.as_secs(), "leaked thin device (no object names it): delete recorded");
                        metrics.leaked_devices_deleted.get_or_create(&labels).inc();
                        pass.deleted += 1;
                    }
                    Err(e) => {
                        warn!(pool = %name, device = %id, error = %e, "could not record the delete of a leaked device")
                    }
                }
            }
            for r in &verdict.missing {
                if self.reported.insert((
                    r.uid.clone().unwrap_or_else(|| r.name.clone()),
                    r.create_transaction,
                )) {
                    self.report_missing(&name, r, &volumes.items, &snapshots.items)
                        .await;
                }
            }
        }
        self.seen
            .retain(|k, _| live.iter().any(|p| k.starts_with(&format!("{p}/"))));
        Ok(pass)
    }

    async fn report_missing(
        &self,
        pool: &str,
        r: &Reference,
        volumes: &[ThinVolume],
        snapshots: &[ThinSnapshot],
    ) {
        let object = match r.kind {
            Kind::Volume => volumes
                .iter()
                .find(|v| v.name_any() == r.name)
                .map(|v| v.object_ref(&())),
            Kind::Snapshot => snapshots
                .iter()
                .find(|s| s.name_any() == r.name)
                .map(|s| s.object_ref(&())),
        };
        let note = format!("thin device {} of pool {pool} (created by transaction {}) is not in the pool: its data is gone", r.device, r.create_transaction);
        warn!(object = %r.name, %note, "object without its device");
        if let Some(object) = object {
            crate::events::publish(
                &self.recorder,
                &object,
                kube::runtime::events::EventType::Warning,
                "ThinDeviceMissing",
                "LeakCheck",
                &note,
            )
            .await;
        }
    }
}

fn reference<K: Resource<DynamicType = ()>>(
    object: &K,
    kind: Kind,
    device: ThinId,
    create_transaction: u64,
) -> Reference {
    Reference {
        kind,
        name: object.meta().name.clone().unwrap_or_default(),
        uid: object.meta().uid.clone(),
        device,
        create_transaction,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use thin_csi_api::pool::to_ranges;
    use thin_csi_api::{
        AbortReason, OperationKind, PendingTransaction, ThinPoolSpec, ThinPoolStatus, Tombstone,
        TransactionOperation,
    };

    const GRACE: Duration = Duration::from_secs(60);

    fn t(i: u32) -> ThinId {
        ThinId::new(i.into()).unwrap()
    }

    /// A pool at transaction `at`, every id below `cursor` allocated, the
    /// kernel listing `devices` at `at`.
    fn pool(at: u64, cursor: u32, devices: &[u32]) -> ThinPool {
        let mut spec = ThinPoolSpec::new("n", "p", "u", at);
        spec.next_device_id = cursor;
        let mut p = ThinPool::new("u", spec);
        p.metadata.uid = Some("uid".into());
        p.status = Some(ThinPoolStatus {
            finished_transaction: Some(at),
            kernel_transaction: Some(at),
            devices: to_ranges(devices.iter().map(|i| t(*i))),
            devices_transaction: Some(at),
            ..Default::default()
        });
        p
    }

    fn vol(name: &str, device: u32, txn: u64) -> Reference {
        Reference {
            kind: Kind::Volume,
            name: name.into(),
            uid: Some(format!("uid-{name}")),
            device: t(device),
            create_transaction: txn,
        }
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn an_unnamed_device_is_deleted_only_after_the_grace_period() {
        let p = pool(5, 3, &[0, 1, 2]);
        let refs = [vol("a", 0, 1), vol("b", 2, 3)];
        let mut seen = Seen::default();
        let v = judge(&p, &refs, &mut seen, secs(0), GRACE).unwrap();
        assert_eq!((v.delete.clone(), v.suspects.clone()), (vec![], vec![t(1)]));
        let v = judge(&p, &refs, &mut seen, secs(59), GRACE).unwrap();
        assert!(v.delete.is_empty());
        let v = judge(&p, &refs, &mut seen, secs(60), GRACE).unwrap();
        assert_eq!(v.delete, vec![t(1)]);
        assert!(v.missing.is_empty());
    }

    #[test]
    fn a_device_named_again_restarts_its_grace() {
        let p = pool(5, 2, &[0, 1]);
        let mut seen = Seen::default();
        judge(&p, &[], &mut seen, secs(0), GRACE).unwrap();
        // An object names it at 30 s (a slow request that did create it).
        judge(&p, &[vol("a", 1, 4)], &mut seen, secs(30), GRACE).unwrap();
        let v = judge(&p, &[], &mut seen, secs(61), GRACE).unwrap();
        assert_eq!(
            (v.delete, v.suspects),
            (vec![t(0)], vec![t(1)]),
            "0 unnamed since 0; 1 restarted at 61"
        );
    }

    #[test]
    fn devices_of_transactions_in_the_record_are_never_suspects() {
        let mut p = pool(5, 4, &[0, 1, 2, 3]);
        let op = |op, id, origin: Option<u32>| TransactionOperation {
            op,
            id: t(id),
            origin: origin.map(t),
        };
        // 6 finished (not pruned): created 1; 7 pending: snapshot 2 of 3; 8 pending: delete 0.
        p.spec.last_assigned_transaction = 8;
        p.spec.pending_transactions = vec![
            PendingTransaction {
                id: 6,
                operations: vec![op(OperationKind::CreateThin, 1, None)],
            },
            PendingTransaction {
                id: 7,
                operations: vec![op(OperationKind::CreateSnapshot, 2, Some(3))],
            },
            PendingTransaction {
                id: 8,
                operations: vec![op(OperationKind::Delete, 0, None)],
            },
        ];
        p.status.as_mut().unwrap().finished_transaction = Some(6);
        p.status.as_mut().unwrap().devices_transaction = Some(6);
        let mut seen = Seen::default();
        for s in [0, 100, 200] {
            let v = judge(&p, &[], &mut seen, secs(s), GRACE).unwrap();
            assert_eq!(v, Verdict::default(), "at {s} s");
        }
    }

    #[test]
    fn a_tombstone_is_pruned_when_no_object_can_wait_on_it_and_protects_its_devices_until_then() {
        let mut p = pool(9, 4, &[0, 3]);
        p.spec.free_device_ranges = vec![thin_csi_api::DeviceRange { first: 1, last: 2 }];
        let stone = |id, creates: Vec<u32>, deletes: Vec<u32>| Tombstone {
            id,
            through: None,
            reason: AbortReason::DeviceBusy,
            message: String::new(),
            creates: creates.into_iter().map(t).collect(),
            deletes: deletes.into_iter().map(t).collect(),
        };
        // 7: an aborted create of 1 whose object "c" still exists; 8: an
        // aborted delete of 3, whose object is gone.
        p.spec.aborted_transactions = vec![stone(7, vec![1], vec![]), stone(8, vec![], vec![3])];
        let refs = [vol("keep", 0, 1), vol("c", 1, 7)];
        let mut seen = Seen::default();
        let v = judge(&p, &refs, &mut seen, secs(0), GRACE).unwrap();
        assert!(
            v.prune_tombstones.is_empty() && v.suspects.is_empty(),
            "{v:?}"
        );
        let v = judge(&p, &refs, &mut seen, secs(60), GRACE).unwrap();
        assert_eq!(v.prune_tombstones, vec![8]);
        // The device becomes a suspect only once its tombstone is gone.
        assert_eq!(v.suspects, vec![t(3)]);
        // Object "c" has no device: aborted create, past the grace period.
        assert_eq!(
            v.missing
                .iter()
                .map(|r| r.name.as_str())
                .collect::<Vec<_>>(),
            vec!["c"]
        );
    }

    #[test]
    fn an_object_whose_device_is_gone_is_reported_after_the_grace_period() {
        let p = pool(5, 3, &[0, 2]);
        let refs = [vol("a", 0, 1), vol("gone", 1, 2), vol("b", 2, 3)];
        let mut seen = Seen::default();
        assert!(judge(&p, &refs, &mut seen, secs(0), GRACE)
            .unwrap()
            .missing
            .is_empty());
        let v = judge(&p, &refs, &mut seen, secs(60), GRACE).unwrap();
        assert_eq!(v.missing, vec![vol("gone", 1, 2)]);
        // An object whose create is after the listing is not judged.
        let late = [vol("late", 1, 6)];
        assert!(
            judge(&p, &late, &mut Seen::default(), secs(0), Duration::ZERO)
                .unwrap()
                .missing
                .is_empty()
        );
    }

    #[test]
    fn an_old_or_missing_listing_or_an_unusable_pool_is_not_judged() {
        let mut p = pool(5, 2, &[0, 1]);
        p.status.as_mut().unwrap().devices_transaction = Some(4);
        assert_eq!(
            judge(&p, &[], &mut Seen::default(), secs(0), Duration::ZERO),
            Err(Wait::NoCurrentListing)
        );
        p.status.as_mut().unwrap().devices_transaction = None;
        assert_eq!(
            judge(&p, &[], &mut Seen::default(), secs(0), Duration::ZERO),
            Err(Wait::NoCurrentListing)
        );
        let mut p = pool(5, 2, &[0, 1]);
        p.status.as_mut().unwrap().health = Some(PoolHealth::Unhealthy);
        assert_eq!(
            judge(&p, &[], &mut Seen::default(), secs(0), Duration::ZERO),
            Err(Wait::NotInUse)
        );
        let mut p = pool(5, 2, &[0, 1]);
        p.spec.devices_unknown_at_transaction = Some(5);
        assert_eq!(
            judge(&p, &[], &mut Seen::default(), secs(0), Duration::ZERO),
            Err(Wait::NotInUse)
        );
    }

    /// Property, on the model of a pool under random work: whatever the
    /// record, the objects and the history of passes, the collector never
    /// deletes a device an object names, a transaction in the record
    /// touches or a remaining tombstone protects, and never one it has not
    /// seen unnamed for the whole grace period.
    #[test]
    fn never_deletes_what_is_named_touched_or_in_grace() {
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move |n: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % n
        };
        for _case in 0..300 {
            let mut seen = Seen::default();
            let mut unnamed_since: BTreeMap<ThinId, u64> = BTreeMap::new();
            for step in 0..20u64 {
                let now = step * 20;
                let devices: Vec<u32> = (0..12).filter(|_| next(3) > 0).collect();
                let mut p = pool(50, 12, &devices);
                let op = |op, id: u32| TransactionOperation {
                    op,
                    id: t(id),
                    origin: None,
                };
                let pending: Vec<u32> = (0..12).filter(|_| next(6) == 0).collect();
                p.spec.last_assigned_transaction = 50 + pending.len() as u64;
                p.spec.pending_transactions = pending
                    .iter()
                    .enumerate()
                    .map(|(i, id)| PendingTransaction {
                        id: 51 + i as u64,
                        operations: vec![op(
                            if next(2) == 0 {
                                OperationKind::CreateThin
                            } else {
                                OperationKind::Delete
                            },
                            *id,
                        )],
                    })
                    .collect();
                let stones: Vec<u32> = (0..12).filter(|_| next(8) == 0).collect();
                p.spec.aborted_transactions = stones
                    .iter()
                    .enumerate()
                    .map(|(i, id)| Tombstone {
                        id: 10 + i as u64,
                        through: None,
                        reason: AbortReason::DeviceBusy,
                        message: String::new(),
                        creates: vec![],
                        deletes: vec![t(*id)],
                    })
                    .collect();
                let refs: Vec<Reference> = (0..12)
                    .filter(|_| next(2) == 0)
                    .map(|id| vol(&format!("v{id}"), id, 1 + u64::from(id)))
                    .collect();
                let v = judge(&p, &refs, &mut seen, secs(now), secs(60)).unwrap();
                for id in (0..12).map(t) {
                    let unnamed = devices.contains(&id.get())
                        && !refs.iter().any(|r| r.device == id)
                        && !pending.contains(&id.get());
                    if unnamed {
                        unnamed_since.entry(id).or_insert(now);
                    } else {
                        unnamed_since.remove(&id);
                    }
                }
                let kept: BTreeSet<u64> = p
                    .spec
                    .aborted_transactions
                    .iter()
                    .map(|t| t.id)
                    .filter(|i| !v.prune_tombstones.contains(i))
                    .collect();
                for id in &v.delete {
                    assert!(!refs.iter().any(|r| r.device == *id), "named {id}");
                    assert!(!pending.contains(&id.get()), "touched {id}");
                    assert!(
                        !p.spec
                            .aborted_transactions
                            .iter()
                            .any(|s| kept.contains(&s.id) && s.deletes.contains(id)),
                        "protected {id}"
                    );
                    assert!(
                        now - unnamed_since[id] >= 60,
                        "{id} deleted {} s after it was first seen unnamed",
                        now - unnamed_since[id]
                    );
                }
            }
        }
    }
}
