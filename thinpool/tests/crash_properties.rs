//! Property tests: random runs of transactions against the kernel model,
//! with a crash (process kill or power cut) injected after every possible
//! step, then recovery; every invariant of the design is checked after each
//! transaction.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use thinpool::engine::Outcome;
use thinpool::model::ModelKernel;
use thinpool::{commit, recover, Boundary, Kernel, Operation, PoolRecord, Sectors, ThinId, Transaction, TransactionId};

#[derive(Clone, Debug)]
enum Action {
    Create,
    /// Snapshot 1..=4 live devices (selectors) in one transaction.
    Snapshot(Vec<usize>),
    Delete(usize),
    /// A create and a delete in one transaction.
    CreateAndDelete(usize),
    Activate(usize),
    Deactivate(usize),
    Write(usize, u64),
}

#[derive(Clone, Copy, Debug)]
struct Crash {
    after_steps: u64,
    power_cut: bool,
    /// A second crash, during recovery.
    again_after: Option<u64>,
}

/// The controller's side (allocation, the record) and the node's wishes
/// (which devices should be active), with what each device should hold.
struct World {
    kernel: ModelKernel,
    record: PoolRecord,
    live: BTreeMap<ThinId, u64>,
    free: Vec<ThinId>,
    next_id: u32,
    want_active: BTreeSet<ThinId>,
    ended: BTreeMap<TransactionId, &'static str>,
}

impl World {
    fn new() -> Self {
        World {
            kernel: ModelKernel::new(),
            record: PoolRecord::default(),
            live: BTreeMap::new(),
            free: Vec::new(),
            next_id: 0,
            want_active: BTreeSet::new(),
            ended: BTreeMap::new(),
        }
    }

    fn pick(&self, sel: usize) -> Option<ThinId> {
        let n = self.live.len();
        (n > 0).then(|| *self.live.keys().nth(sel % n).unwrap())
    }

    /// Ids come back only after the delete that freed them committed.
    fn allocate(&mut self) -> ThinId {
        let id = self.free.pop().unwrap_or_else(|| {
            self.next_id += 1;
            ThinId::new(self.next_id.into()).unwrap()
        });
        assert!(self.kernel.devices().all(|d| d != id), "allocated id {id} is still in the pool");
        id
    }

    fn ops_for(&mut self, action: &Action) -> Option<Vec<Operation>> {
        Some(match action {
            Action::Create => vec![Operation::CreateThin { id: self.allocate() }],
            Action::Snapshot(sels) => {
                let origins: BTreeSet<ThinId> = sels.iter().filter_map(|s| self.pick(*s)).collect();
                if origins.is_empty() {
                    return None;
                }
                origins.into_iter().map(|origin| Operation::CreateSnapshot { id: self.allocate(), origin }).collect()
            }
            Action::Delete(sel) => vec![Operation::Delete { id: self.pick(*sel)? }],
            Action::CreateAndDelete(sel) => {
                let doomed = self.pick(*sel)?;
                vec![Operation::CreateThin { id: self.allocate() }, Operation::Delete { id: doomed }]
            }
            _ => return None,
        })
    }

    fn node_action(&mut self, action: &Action) {
        match *action {
            Action::Activate(sel) => {
                if let Some(id) = self.pick(sel).filter(|id| !self.want_active.contains(id)) {
                    // A crash during recovery's existence probe can leave the
                    // device active already.
                    match self.kernel.activate_thin(id, Sectors(8)) {
                        Ok(()) | Err(thinpool::KernelError::AlreadyActive(_)) => {}
                        Err(e) => panic!("activate {id}: {e}"),
                    }
                    self.want_active.insert(id);
                }
            }
            Action::Deactivate(sel) => {
                if let Some(id) = self.pick(sel).filter(|id| self.want_active.contains(id)) {
                    self.kernel.deactivate_thin(id).unwrap();
                    self.want_active.remove(&id);
                }
            }
            Action::Write(sel, value) => {
                if let Some(id) = self.pick(sel).filter(|id| self.want_active.contains(id)) {
                    self.kernel.write(id, value).unwrap();
                    self.live.insert(id, value);
                }
            }
            _ => {}
        }
    }

    fn apply_committed(&mut self, txn: &Transaction, before: &BTreeMap<ThinId, u64>) {
        for op in txn.operations() {
            match *op {
                Operation::CreateThin { id } => {
                    self.live.insert(id, 0);
                }
                Operation::CreateSnapshot { id, origin } => {
                    self.live.insert(id, before[&origin]);
                }
                Operation::Delete { id } => {
                    self.live.remove(&id);
                    self.free.push(id);
                }
            }
        }
    }

    fn end(&mut self, txn: TransactionId, how: &'static str) {
        assert!(self.ended.insert(txn, how).is_none(), "transaction {txn} ended twice");
        self.record.finished = txn;
        self.record.pending.clear();
    }

    /// One transaction through the whole path, with an optional crash.
    fn run(&mut self, action: &Action, crash: Option<Crash>) {
        let Some(ops) = self.ops_for(action) else {
            return self.node_action(action);
        };
        // The node deactivates devices before they are deleted.
        for id in ops.iter().filter_map(Operation::deleted) {
            if self.want_active.remove(&id) {
                self.kernel.deactivate_thin(id).unwrap();
            }
        }
        let txn = Transaction::new(self.record.last_assigned().successor(), ops).unwrap();
        self.record.pending.push(txn.clone()); // recorded before the node acts
        let before = self.live.clone();
        // Group consistency: when the messages start, every active origin of
        // the transaction is suspended at once. The observer cannot borrow the
        // kernel, so it records the boundary; the model's unsafe_snapshots
        // counter checks each create_snap found its origin suspended.
        let mut boundaries = Vec::new();
        let mut observe = |_: TransactionId, b: Boundary| boundaries.push(b);
        if let Some(c) = crash {
            self.kernel.crash_after(c.after_steps);
        }
        let result = commit(&mut self.kernel, &txn, &mut observe);
        if result.is_ok() && !self.kernel.crashed() {
            assert_eq!(boundaries.first(), Some(&Boundary::Start));
            assert_eq!(boundaries.last(), Some(&Boundary::Resumed));
            assert!(boundaries.contains(&Boundary::TransactionIdSet));
        }
        if !self.kernel.crashed() {
            result.unwrap_or_else(|e| panic!("commit {} failed without a crash: {e}", txn.id()));
            self.kernel.restart(); // clears a crash point that was never reached
            self.apply_committed(&txn, &before);
            return self.end(txn.id(), "committed");
        }
        let c = crash.unwrap();
        self.reboot(c.power_cut);
        if let Some(again) = c.again_after {
            self.kernel.crash_after(again);
            let _ = recover(&mut self.kernel, &self.record, &mut ());
            if self.kernel.crashed() {
                self.reboot(c.power_cut);
            } else {
                self.kernel.restart();
            }
        }
        let report = recover(&mut self.kernel, &self.record, &mut ()).unwrap_or_else(|e| panic!("recovery of {} failed: {e}", txn.id()));
        let committed = report.committed_unreported.contains(&txn.id())
            || matches!(&report.finished, Some((id, Outcome::Committed(_))) if *id == txn.id())
            || (report.finished.is_none() && report.kernel_was_at >= txn.id());
        assert!(committed, "transaction {} was neither committed nor rolled forward: {report:?}", txn.id());
        self.apply_committed(&txn, &before);
        self.end(txn.id(), "committed after recovery");
        self.reactivate();
    }

    fn reboot(&mut self, power_cut: bool) {
        if power_cut {
            self.kernel.power_cycle();
        } else {
            self.kernel.restart();
        }
    }

    /// After a power cut the node activates again what it had active.
    fn reactivate(&mut self) {
        let active: BTreeSet<ThinId> = self.kernel.active_thins().unwrap().iter().map(|t| t.id).collect();
        for id in self.want_active.clone() {
            if !active.contains(&id) {
                self.kernel.activate_thin(id, Sectors(8)).unwrap();
            }
        }
    }

    fn check_invariants(&self) {
        let kernel_at = self.kernel.transaction_id();
        assert_eq!(kernel_at, self.record.last_assigned(), "kernel and record disagree on the last transaction");
        let ended: Vec<u64> = self.ended.keys().map(|t| t.get()).collect();
        assert_eq!(ended, (1..=kernel_at.get()).collect::<Vec<_>>(), "transaction ids must be dense and each consumed once");
        let devices: BTreeMap<ThinId, u64> = self.kernel.devices().map(|d| (d, self.kernel.content(d).unwrap())).collect();
        assert_eq!(devices, self.live, "pool devices (with contents) differ from the committed record");
        let active = self.kernel.active_thins().unwrap();
        assert!(active.iter().all(|t| !t.suspended), "a device was left suspended: {active:?}");
        assert_eq!(self.kernel.unsafe_snapshots, 0, "a snapshot was taken of an origin that was not suspended");
        let free: BTreeSet<ThinId> = self.free.iter().copied().collect();
        assert_eq!(free.len(), self.free.len(), "an id is on the free list twice");
        assert!(free.iter().all(|id| !self.live.contains_key(id)), "a live id is on the free list");
    }
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        3 => Just(Action::Create),
        3 => prop::collection::vec(any::<usize>(), 1..=4).prop_map(Action::Snapshot),
        2 => any::<usize>().prop_map(Action::Delete),
        1 => any::<usize>().prop_map(Action::CreateAndDelete),
        3 => any::<usize>().prop_map(Action::Activate),
        1 => any::<usize>().prop_map(Action::Deactivate),
        3 => (any::<usize>(), 1..1_000_000u64).prop_map(|(s, v)| Action::Write(s, v)),
    ]
}

fn crash() -> impl Strategy<Value = Option<Crash>> {
    prop::option::weighted(
        0.5,
        (1..14u64, any::<bool>(), prop::option::weighted(0.3, 1..6u64))
            .prop_map(|(after_steps, power_cut, again_after)| Crash { after_steps, power_cut, again_after }),
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn random_runs_with_crashes_keep_every_invariant(steps in prop::collection::vec((action(), crash()), 1..40)) {
        let mut world = World::new();
        for (action, crash) in &steps {
            world.run(action, *crash);
            world.check_invariants();
        }
    }
}

/// Deterministic sweep: one rich transaction (a group snapshot of three
/// active origins, a create and a delete), crashed after each of its steps
/// in turn, by process kill and by power cut.
#[test]
fn crash_after_every_step_of_a_group_transaction() {
    let setup = |world: &mut World| {
        for _ in 0..4 {
            world.run(&Action::Create, None);
        }
        for sel in 0..3 {
            world.run(&Action::Activate(sel), None);
            world.run(&Action::Write(sel, 10 + sel as u64), None);
        }
    };
    let group = Action::Snapshot(vec![0, 1, 2]);
    let mut probe = World::new();
    setup(&mut probe);
    let start = probe.kernel.steps();
    probe.run(&group, None);
    let total = probe.kernel.steps() - start;
    assert!(total >= 8, "a 3-origin group snapshot takes suspend×3, messages×4, resume×3; saw {total} steps");
    for power_cut in [false, true] {
        for after_steps in 1..=total {
            let mut world = World::new();
            setup(&mut world);
            world.run(&group, Some(Crash { after_steps, power_cut, again_after: None }));
            world.check_invariants();
            world.run(&Action::CreateAndDelete(3), Some(Crash { after_steps: 2, power_cut, again_after: Some(1) }));
            world.check_invariants();
        }
    }
}
