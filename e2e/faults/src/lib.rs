//! An exhaustive search of the protocol's fault space: model checking, not
//! sampling.
//!
//! The world is the real protocol code over in-memory parts: the
//! controller's allocator ([`csi_controller::alloc::plan`]) and outcome
//! rules ([`csi_controller::wait::outcome`], the abort → gRPC mapping), the
//! node's executor ([`thinpool::executor`]) and status rule
//! ([`csi_node::pool_executor::next_status`]), the engine, and the kernel
//! model. Around them: an API store whose writes can fail, or take effect
//! with the reply lost; a node that can read a re-delivered (stale) event,
//! crash after any kernel step, lose power, or restart; a person who
//! deletes the pool object; a controller that crashes mid-request or races
//! a second replica. Every interleaving of those, for a scenario of CSI
//! requests, is explored depth first with visited states merged, up to a
//! fault budget per path. After every step the invariants are checked
//! ([`World::check`]); at every end state the liveness ones too.
//!
//! The controller's request flows (CreateVolume, CreateSnapshot,
//! DeleteVolume) are modelled step by step as `controller.rs` runs them:
//! the steps are the points where another actor can act in between.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::hash::{DefaultHasher, Hash, Hasher};

use csi_controller::alloc::{plan, AllocError, Request as Alloc};
use csi_controller::wait::Finished;
use thin_csi_api::{PoolHealth, ThinPool, ThinPoolSpec};
use thinpool::model::ModelKernel;
use thinpool::{ActiveThin, Kernel, KernelError, PoolMessage, PoolStatus, Sectors, ThinId, Transaction};
use tonic::Code;

/// One CSI request of a scenario. `of` is the index of an earlier `Create`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    Create,
    Snapshot { of: usize },
    Delete { of: usize },
    /// A create when pool metadata is full (the kernel says ENOSPC).
    CreateNoSpace,
    /// A DeleteVolume of a volume that is still mounted (open).
    DeleteOpen { of: usize },
}

#[derive(Clone, Copy, Debug)]
pub struct Config {
    /// Faults injected on one path at most.
    pub max_faults: u8,
    /// Two controller replicas: a request may be run twice at once.
    pub replicas: u8,
    /// CO retries of a request that failed or got no reply.
    pub retries: u8,
    /// Stop a scenario after this many distinct states (a safety net).
    pub max_states: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config { max_faults: 2, replicas: 1, retries: 2, max_states: 2_000_000 }
    }
}

#[derive(Clone, Debug, Default)]
pub struct Report {
    pub paths: u64,
    pub states: u64,
    pub violations: Vec<Violation>,
    /// Devices left that no object names, summed over end states (leaks for
    /// the collector, not violations).
    pub leaked_end_states: u64,
    pub truncated: bool,
}

#[derive(Clone, Debug)]
pub struct Violation {
    pub what: String,
    /// The actions that led there, in order.
    pub path: Vec<String>,
}

/// What the kernel did with a transaction id, seen at its `set_transaction_id`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Truth {
    Committed,
    Aborted { no_space: bool },
    /// Some of its effects and not others: never allowed.
    Partial,
    /// The kernel moved to an id the record does not hold.
    Unknown,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct CsiObject {
    device: u32,
    txn: u64,
    /// The pool object (record) that assigned it.
    pool_uid: Option<String>,
    ready: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Reply {
    Ok(u32),
    Err(Code),
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Step {
    Start,
    /// Read the pool object for an allocation; `read` holds it.
    Plan { read: String },
    /// The allocation is recorded: clear stale objects, create ours.
    Allocated { txn: u64, device: u32, uid: Option<String> },
    Wait { txn: u64, device: u32, uid: Option<String> },
    /// The object could not be written: delete the device once its create
    /// finished, then answer `code`.
    GiveBack { txn: u64, device: u32, code: Code },
    MarkReady { txn: u64, device: u32 },
    /// DeleteVolume: the volume's create must have finished.
    DeleteSettle { txn: u64 },
    DeletePlan { read: String },
    DeleteWait { txn: u64, uid: Option<String> },
    DeleteObject,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Request {
    op: Op,
    name: String,
    /// Running executions (two when a second replica races the first).
    execs: Vec<Step>,
    replies: Vec<Reply>,
    retries_left: u8,
    started: bool,
}

impl Request {
    fn done(&self) -> bool {
        self.started && self.execs.is_empty() && (matches!(self.replies.last(), Some(Reply::Ok(_))) || self.retries_left == 0)
    }
}

#[derive(Clone, Debug)]
struct Node {
    up: bool,
    /// The last pool object the watch delivered.
    view: Option<ThinPool>,
    executor: Option<thinpool::executor::Executor>,
    /// (uid, generation) of the last spec fully reconciled.
    done: Option<(Option<String>, Option<i64>)>,
    /// The last reconcile failed to write its status (the node retries).
    retry: bool,
}

#[derive(Clone)]
pub struct World {
    kernel: ModelKernel,
    pool: Option<ThinPool>,
    rv: u64,
    objects: BTreeMap<String, CsiObject>,
    node: Node,
    reqs: Vec<Request>,
    faults: u8,
    truth: BTreeMap<u64, Truth>,
    /// CSI creates answered with success and not deleted since: name → device.
    live: BTreeMap<String, u32>,
    /// Live volumes a DeleteVolume was issued for: the CO expects nothing of
    /// their data any more; back to `live` if the delete finally fails.
    deleting: BTreeMap<String, u32>,
    /// Volumes the harness (as kubelet) keeps mounted.
    mounted: BTreeSet<u32>,
    /// Misbehaviour of the node's status writes, seen when they happen.
    node_defects: Vec<String>,
}

const POOL: &str = "pool-uuid";
const NODE: &str = "node-a";

fn json(pool: &ThinPool) -> String {
    serde_json::to_string(pool).expect("serializable")
}

fn unjson(s: &str) -> ThinPool {
    serde_json::from_str(s).expect("round trip")
}

impl Hash for World {
    fn hash<H: Hasher>(&self, h: &mut H) {
        self.kernel.transaction_id().hash(h);
        for id in self.kernel.devices() {
            (id, self.kernel.content(id)).hash(h);
        }
        if let Ok(active) = self.kernel.active_thins() {
            for a in active {
                (a.id, a.open_count, a.suspended).hash(h);
            }
        }
        self.kernel.crashed().hash(h);
        format!("{:?}", self.kernel.pool_status().ok().and_then(|s| s.working().map(|w| w.mode))).hash(h);
        self.pool.as_ref().map(json).hash(h);
        self.objects.hash(h);
        self.node.up.hash(h);
        self.node.view.as_ref().map(json).hash(h);
        format!("{:?} {:?} {}", self.node.executor, self.node.done, self.node.retry).hash(h);
        self.reqs.hash(h);
        self.faults.hash(h);
        self.truth.hash(h);
        self.live.hash(h);
        self.deleting.hash(h);
        self.mounted.hash(h);
    }
}

/// A kernel wrapper that records what each transaction id ended as, at the
/// instant the kernel moved to it.
struct Recorder<'a> {
    k: &'a mut ModelKernel,
    txns: &'a BTreeMap<u64, Transaction>,
    truth: &'a mut BTreeMap<u64, Truth>,
    no_space: BTreeSet<u64>,
}

impl Recorder<'_> {
    fn classify(&self, n: u64) -> Truth {
        let Some(txn) = self.txns.get(&n) else { return Truth::Unknown };
        let has = |id: ThinId| self.k.content(id).is_some();
        let created: Vec<bool> = txn.created_ids().map(has).collect();
        let deleted: Vec<bool> = txn.deleted_ids().map(has).collect();
        if created.iter().all(|x| *x) && deleted.iter().all(|x| !*x) {
            Truth::Committed
        } else if created.iter().all(|x| !*x) && deleted.iter().all(|x| *x) {
            Truth::Aborted { no_space: self.no_space.contains(&n) }
        } else {
            Truth::Partial
        }
    }
}

impl Kernel for Recorder<'_> {
    fn pool_status(&self) -> Result<PoolStatus, KernelError> {
        self.k.pool_status()
    }
    fn message(&mut self, message: &PoolMessage) -> Result<(), KernelError> {
        let r = self.k.message(message);
        match (&r, message) {
            (Ok(()), PoolMessage::SetTransactionId { new, .. }) => {
                let t = self.classify(new.get());
                self.truth.insert(new.get(), t);
            }
            (Err(KernelError::NoSpace(_)), _) => {
                self.no_space.insert(self.k.transaction_id().get() + 1);
            }
            _ => {}
        }
        r
    }
    fn active_thins(&self) -> Result<Vec<ActiveThin>, KernelError> {
        self.k.active_thins()
    }
    fn suspend_thin(&mut self, id: ThinId) -> Result<(), KernelError> {
        self.k.suspend_thin(id)
    }
    fn resume_thin(&mut self, id: ThinId) -> Result<(), KernelError> {
        self.k.resume_thin(id)
    }
    fn activate_thin(&mut self, id: ThinId, size: Sectors) -> Result<(), KernelError> {
        self.k.activate_thin(id, size)
    }
    fn deactivate_thin(&mut self, id: ThinId) -> Result<(), KernelError> {
        self.k.deactivate_thin(id)
    }
}

fn thin(id: u32) -> ThinId {
    ThinId::new(id.into()).expect("small ids")
}

/// How an API write ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Write {
    Ok,
    /// Failed; nothing changed.
    Failed,
    /// Took effect; the reply was lost, the writer sees an error.
    Lost,
}

impl Write {
    fn all(w: &World, cfg: &Config) -> Vec<Write> {
        if w.faults < cfg.max_faults {
            vec![Write::Ok, Write::Failed, Write::Lost]
        } else {
            vec![Write::Ok]
        }
    }
    fn takes_effect(self) -> bool {
        self != Write::Failed
    }
    fn is_fault(self) -> bool {
        self != Write::Ok
    }
}

/// RFC 7386 JSON merge patch, as the apiserver applies `Patch::Merge`.
fn merge(target: &mut serde_json::Value, patch: &serde_json::Value) {
    match (target.as_object_mut(), patch.as_object()) {
        (Some(t), Some(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge(t.entry(k.clone()).or_insert(serde_json::Value::Null), v);
                }
            }
        }
        _ => *target = patch.clone(),
    }
}

impl World {
    pub fn new(ops: &[Op], cfg: &Config) -> World {
        let creates_before_full = ops.iter().take_while(|o| !matches!(o, Op::CreateNoSpace)).filter(|o| matches!(o, Op::Create | Op::Snapshot { .. })).count();
        let kernel = if ops.contains(&Op::CreateNoSpace) { ModelKernel::new().with_metadata_capacity(creates_before_full) } else { ModelKernel::new() };
        let mut w = World {
            kernel,
            pool: None,
            rv: 0,
            objects: BTreeMap::new(),
            node: Node { up: true, view: None, executor: None, done: None, retry: false },
            reqs: ops
                .iter()
                .enumerate()
                .map(|(i, op)| Request { op: *op, name: format!("r{i}"), execs: vec![], replies: vec![], retries_left: cfg.retries, started: false })
                .collect(),
            faults: 0,
            truth: BTreeMap::new(),
            live: BTreeMap::new(),
            deleting: BTreeMap::new(),
            mounted: BTreeSet::new(),
            node_defects: Vec::new(),
        };
        w.register();
        w
    }

    fn bump(&mut self) -> String {
        self.rv += 1;
        self.rv.to_string()
    }

    /// Stores the pool object as the apiserver would: a new resourceVersion
    /// on every write, the generation bumped when the spec changed.
    fn store_pool(&mut self, mut pool: ThinPool) {
        let generation = match &self.pool {
            Some(cur) if cur.metadata.uid == pool.metadata.uid => cur.metadata.generation.unwrap_or(1) + (cur.spec != pool.spec) as i64,
            _ => 1,
        };
        pool.metadata.generation = Some(generation);
        pool.metadata.resource_version = Some(self.bump());
        self.pool = Some(pool);
    }

    /// The node registers its pool object as `PoolExecutor::register` does:
    /// thaw, then create the object if missing (marked when the pool has
    /// history), and pick the executor.
    fn register(&mut self) {
        let _ = thinpool::thaw(&mut self.kernel);
        let at = self.kernel.transaction_id().get();
        self.node.done = None;
        if self.pool.is_some() {
            self.node.executor = Some(thinpool::Executor::default());
            return;
        }
        let mut spec = ThinPoolSpec::new(NODE, "pool0", POOL, at);
        if at > 0 || !self.objects.is_empty() {
            spec.devices_unknown_at_transaction = Some(at);
        }
        let mut fresh = ThinPool::new(POOL, spec);
        fresh.status = None;
        fresh.metadata.uid = Some(format!("uid-{}", self.rv));
        self.store_pool(fresh);
        self.node.executor = Some(thinpool::Executor::fresh_record());
    }

    fn request_ready(&self, i: usize) -> bool {
        let dep = match self.reqs[i].op {
            Op::Snapshot { of } | Op::Delete { of } | Op::DeleteOpen { of } => Some(of),
            _ => None,
        };
        // Requests are issued in order (one CO, one provisioner queue); a
        // dependent one only after its source was answered.
        (i == 0 || self.reqs[i - 1].started) && dep.is_none_or(|d| self.reqs[d].done())
    }

    fn reply(&mut self, i: usize, exec: usize, reply: Reply) {
        self.reqs[i].execs.remove(exec);
        self.reqs[i].replies.push(reply);
        let name = self.reqs[i].name.clone();
        match (self.reqs[i].op, reply) {
            (Op::Create | Op::CreateNoSpace | Op::Snapshot { .. }, Reply::Ok(d)) => {
                self.live.insert(name, d);
                // The harness stages (activates and mounts) every new volume:
                // snapshots then suspend a live origin, deletes must unstage.
                if !matches!(self.reqs[i].op, Op::Snapshot { .. }) && self.kernel.activate_thin(thin(d), Sectors(8)).is_ok() {
                    let _ = self.kernel.open(thin(d));
                    self.mounted.insert(d);
                }
            }
            (Op::Delete { of } | Op::DeleteOpen { of }, Reply::Ok(_)) => {
                let target = self.reqs[of].name.clone();
                if let Some(d) = self.deleting.remove(&target) {
                    if self.kernel.content(thin(d)).is_some() {
                        self.node_defects.push(format!("DeleteVolume of {target} succeeded but device {d} is still in the pool"));
                    }
                }
            }
            (Op::Delete { of } | Op::DeleteOpen { of }, Reply::Err(_)) if self.reqs[i].retries_left == 0 && self.reqs[i].execs.is_empty() => {
                // The delete finally failed: if its device is still there, the
                // volume (object and data) must be too.
                let target = self.reqs[of].name.clone();
                if let Some(d) = self.deleting.get(&target).copied() {
                    if self.kernel.content(thin(d)).is_some() {
                        self.deleting.remove(&target);
                        self.live.insert(target, d);
                    }
                }
            }
            _ => {}
        }
    }

    fn target(&self, i: usize) -> String {
        match self.reqs[i].op {
            Op::Delete { of } | Op::DeleteOpen { of } => self.reqs[of].name.clone(),
            _ => self.reqs[i].name.clone(),
        }
    }

    /// Every action enabled in this state, with its label and whether it is a fault.
    fn successors(&self, cfg: &Config) -> Vec<(String, World)> {
        let mut out = Vec::new();
        let can_fault = self.faults < cfg.max_faults;
        // CO: issue a request, or retry one that failed.
        for i in 0..self.reqs.len() {
            let r = &self.reqs[i];
            if !r.started && self.request_ready(i) {
                let mut w = self.clone();
                w.reqs[i].started = true;
                w.reqs[i].execs.push(Step::Start);
                if let Op::Delete { of } | Op::DeleteOpen { of } = r.op {
                    let target = w.reqs[of].name.clone();
                    if let Some(d) = w.live.remove(&target) {
                        w.deleting.insert(target, d);
                    }
                }
                if let Op::Delete { of } = r.op {
                    // The kubelet unstages before the CO deletes.
                    if let Some(d) = w.deleting.get(&w.reqs[of].name).copied() {
                        if w.mounted.remove(&d) {
                            let _ = w.kernel.close(thin(d));
                            let _ = w.kernel.deactivate_thin(thin(d));
                        }
                    }
                }
                out.push((format!("issue {} {:?}", r.name, r.op), w));
            } else if r.started && r.execs.is_empty() && !r.done() {
                let mut w = self.clone();
                w.reqs[i].retries_left -= 1;
                w.reqs[i].execs.push(Step::Start);
                out.push((format!("retry {}", r.name), w));
            }
            for e in 0..r.execs.len() {
                out.extend(self.controller_step(i, e, cfg));
                if can_fault {
                    let mut w = self.clone();
                    w.faults += 1;
                    w.reqs[i].execs.remove(e);
                    w.reqs[i].replies.push(Reply::Err(Code::Unavailable));
                    out.push((format!("FAULT controller crash during {} at {:?}", r.name, r.execs[e]), w));
                    if cfg.replicas > 1 && r.execs.len() == 1 {
                        let mut w = self.clone();
                        w.faults += 1;
                        w.reqs[i].execs.push(Step::Start);
                        out.push((format!("FAULT second replica runs {} too", r.name), w));
                    }
                }
            }
        }
        out.extend(self.node_steps(cfg));
        if can_fault && self.pool.is_some() {
            let mut w = self.clone();
            w.faults += 1;
            w.pool = None;
            out.push(("FAULT a person deletes the ThinPool object".into(), w));
        }
        out
    }

    fn controller_step(&self, i: usize, e: usize, cfg: &Config) -> Vec<(String, World)> {
        let r = &self.reqs[i];
        let step = r.execs[e].clone();
        let label = |s: &str| format!("{} {s}", r.name);
        let mut out = Vec::new();
        let mut w = self.clone();
        let is_delete = matches!(r.op, Op::Delete { .. } | Op::DeleteOpen { .. });
        match step {
            Step::Start if !is_delete => {
                match w.objects.get(&r.name).cloned() {
                    Some(o) if o.ready => w.reply(i, e, Reply::Ok(o.device)),
                    Some(o) => w.reqs[i].execs[e] = Step::Wait { txn: o.txn, device: o.device, uid: o.pool_uid.clone() },
                    None => match &w.pool {
                        None => w.reply(i, e, Reply::Err(Code::NotFound)),
                        Some(p) => w.reqs[i].execs[e] = Step::Plan { read: json(p) },
                    },
                }
                out.push((label("looks up its object / reads the pool"), w));
            }
            Step::Plan { read } => {
                let read = unjson(&read);
                let request = match r.op {
                    Op::Snapshot { of } => match self.live.get(&self.reqs[of].name) {
                        Some(d) => Alloc::CreateSnapshot { origin: thin(*d) },
                        None => {
                            w.reply(i, e, Reply::Err(Code::NotFound));
                            out.push((label("finds no source volume"), w));
                            return out;
                        }
                    },
                    _ => Alloc::CreateThin,
                };
                let current_rv = self.pool.as_ref().and_then(|p| p.metadata.resource_version.clone());
                match plan(&read, &[request]) {
                    Err(err) => {
                        let code = csi_controller::status::Error::from(err).code();
                        w.reply(i, e, Reply::Err(code));
                        out.push((label("plan refused"), w));
                    }
                    Ok(_) if current_rv != read.metadata.resource_version => {
                        // 409: re-read and plan again.
                        match &w.pool {
                            Some(p) => w.reqs[i].execs[e] = Step::Plan { read: json(p) },
                            None => w.reply(i, e, Reply::Err(Code::NotFound)),
                        }
                        out.push((label("allocation write conflicts (409), re-reads"), w));
                    }
                    Ok(p) => {
                        let device = p.created[0].get();
                        out.extend(self.record(cfg, i, e, &read, &p, "transaction", |txn, uid| Step::Allocated { txn, device, uid }));
                    }
                }
            }
            Step::Allocated { txn, device, uid } => {
                // clear_stale: objects naming the id just handed out are removed.
                for outcome in Write::all(self, cfg) {
                    let mut w = self.clone();
                    // clear_stale: only objects of the same record.
                    w.objects.retain(|_, o| o.device != device || (o.pool_uid.is_some() && uid.is_some() && o.pool_uid != uid));
                    let exists = w.objects.contains_key(&r.name);
                    if outcome.takes_effect() && !exists {
                        w.objects.insert(r.name.clone(), CsiObject { device, txn, pool_uid: uid.clone(), ready: false });
                    }
                    w.faults += outcome.is_fault() as u8;
                    // A failed create is re-read: ours (same device and
                    // transaction) is used; otherwise the device is given back
                    // once its create has finished.
                    let ours = w.objects.get(&r.name).is_some_and(|o| o.device == device && o.txn == txn);
                    if ours {
                        w.reqs[i].execs[e] = Step::Wait { txn, device, uid: uid.clone() };
                    } else {
                        w.reqs[i].execs[e] = Step::GiveBack { txn, device, code: if exists { Code::AlreadyExists } else { Code::Unavailable } };
                    }
                    out.push((label(&format!("clears stale objects of device {device}, creates its object ({outcome:?})")), w));
                }
            }
            Step::Wait { txn, device, uid } => {
                let Some(pool) = &self.pool else {
                    w.reply(i, e, Reply::Err(Code::NotFound));
                    out.push((label("waits: pool object gone"), w));
                    return out;
                };
                match csi_controller::wait::outcome_in(pool, txn, uid.as_deref(), csi_controller::wait::Subject::Create(thin(device))) {
                    Ok(None) => {} // blocked until the status changes
                    Err(err) => {
                        if matches!(err, csi_controller::wait::WaitError::TransactionUnknown { .. }) {
                            w.objects.remove(&r.name); // its record is gone
                        }
                        let code = csi_controller::status::Error::from(err).code();
                        w.reply(i, e, Reply::Err(code));
                        out.push((label("waits: refused"), w));
                    }
                    Ok(Some(Finished::Committed)) => {
                        w.reqs[i].execs[e] = Step::MarkReady { txn, device };
                        out.push((label(&format!("sees transaction {txn} committed")), w));
                    }
                    Ok(Some(Finished::Aborted(aborted))) => {
                        w.objects.remove(&r.name);
                        let code = csi_controller::controller::aborted_create(POOL, aborted).code();
                        w.reply(i, e, Reply::Err(code));
                        out.push((label(&format!("sees transaction {txn} aborted")), w));
                    }
                }
            }
            Step::GiveBack { txn, device, code } => {
                let done = match &self.pool {
                    None => Some(false),
                    Some(p) => match csi_controller::wait::outcome_in(p, txn, None, csi_controller::wait::Subject::Create(thin(device))) {
                        Ok(None) => None,
                        Ok(Some(Finished::Committed)) => Some(true),
                        Ok(Some(Finished::Aborted(_))) | Err(_) => Some(false),
                    },
                };
                if let Some(committed) = done {
                    if committed {
                        w.give_back(device);
                    }
                    w.reply(i, e, Reply::Err(code));
                    out.push((label(&format!("gives back device {device}")), w));
                }
            }
            Step::MarkReady { device, .. } => {
                for outcome in Write::all(self, cfg) {
                    let mut w = self.clone();
                    if outcome.takes_effect() {
                        if let Some(o) = w.objects.get_mut(&r.name) {
                            o.ready = true;
                        }
                    }
                    if outcome.is_fault() {
                        w.faults += 1;
                        w.reply(i, e, Reply::Err(Code::Unavailable));
                    } else if w.objects.contains_key(&r.name) {
                        w.reply(i, e, Reply::Ok(device));
                    } else {
                        w.reply(i, e, Reply::Err(Code::NotFound));
                    }
                    out.push((label(&format!("marks its object ready ({outcome:?})")), w));
                }
            }
            Step::Start => {
                let target = self.target(i);
                match w.objects.get(&target).cloned() {
                    None => w.reply(i, e, Reply::Ok(0)),
                    Some(o) if !o.ready => w.reqs[i].execs[e] = Step::DeleteSettle { txn: o.txn },
                    Some(_) => match &w.pool {
                        // The device's record is gone: it cannot be deleted now.
                        None => w.reply(i, e, Reply::Err(Code::Unavailable)),
                        Some(p) => w.reqs[i].execs[e] = Step::DeletePlan { read: json(p) },
                    },
                }
                out.push((label("looks up the volume"), w));
            }
            Step::DeleteSettle { txn } => {
                let Some(pool) = &self.pool else {
                    w.reply(i, e, Reply::Err(Code::NotFound));
                    out.push((label("settles: pool object gone"), w));
                    return out;
                };
                let device = self.objects.get(&self.target(i)).map_or(u32::MAX, |o| o.device);
                match csi_controller::wait::outcome_in(pool, txn, None, csi_controller::wait::Subject::Create(thin(device))) {
                    Ok(None) => {}
                    Err(_) => {
                        w.reply(i, e, Reply::Err(Code::Unavailable));
                        out.push((label("settles: pool unhealthy"), w));
                    }
                    Ok(Some(Finished::Aborted(_))) => {
                        let target = self.target(i);
                        w.objects.remove(&target);
                        w.reply(i, e, Reply::Ok(0));
                        out.push((label("settles: its create aborted, nothing to delete"), w));
                    }
                    Ok(Some(Finished::Committed)) => {
                        match &w.pool {
                            Some(p) => w.reqs[i].execs[e] = Step::DeletePlan { read: json(p) },
                            None => w.reply(i, e, Reply::Err(Code::Unavailable)),
                        }
                        out.push((label("settles: its create committed"), w));
                    }
                }
            }
            Step::DeletePlan { read } => {
                let read = unjson(&read);
                let target = self.target(i);
                let Some(device) = self.objects.get(&target).map(|o| o.device) else {
                    w.reply(i, e, Reply::Ok(0));
                    out.push((label("its object is gone"), w));
                    return out;
                };
                let current_rv = self.pool.as_ref().and_then(|p| p.metadata.resource_version.clone());
                match plan(&read, &[Alloc::Delete { id: thin(device) }]) {
                    Err(AllocError::NotAllocated { .. }) => {
                        w.reqs[i].execs[e] = Step::DeleteObject;
                        out.push((label("device not allocated: already deleted"), w));
                    }
                    Err(AllocError::BeingDeleted { txn, .. }) => {
                        w.reqs[i].execs[e] = Step::DeleteWait { txn, uid: None };
                        out.push((label("already being deleted"), w));
                    }
                    Err(err) => {
                        let code = csi_controller::status::Error::from(err).code();
                        w.reply(i, e, Reply::Err(code));
                        out.push((label("delete plan refused"), w));
                    }
                    Ok(_) if current_rv != read.metadata.resource_version => {
                        match &w.pool {
                            Some(p) => w.reqs[i].execs[e] = Step::DeletePlan { read: json(p) },
                            None => w.reply(i, e, Reply::Err(Code::Unavailable)),
                        }
                        out.push((label("delete write conflicts (409), re-reads"), w));
                    }
                    Ok(p) => out.extend(self.record(cfg, i, e, &read, &p, "delete transaction", |txn, uid| Step::DeleteWait { txn, uid })),
                }
            }
            Step::DeleteWait { txn, uid } => {
                let Some(pool) = &self.pool else {
                    w.reply(i, e, Reply::Err(Code::NotFound));
                    out.push((label("delete waits: pool object gone"), w));
                    return out;
                };
                match csi_controller::wait::outcome_in(pool, txn, uid.as_deref(), csi_controller::wait::Subject::Delete(thin(self.objects.get(&self.target(i)).map_or(ThinId::MAX.get(), |o| o.device)))) {
                    Ok(None) => {}
                    Err(_) => {
                        w.reply(i, e, Reply::Err(Code::Unavailable));
                        out.push((label("delete waits: pool unhealthy"), w));
                    }
                    Ok(Some(Finished::Committed)) => {
                        w.reqs[i].execs[e] = Step::DeleteObject;
                        out.push((label(&format!("sees delete {txn} committed")), w));
                    }
                    Ok(Some(Finished::Aborted(_))) => {
                        w.reply(i, e, Reply::Err(Code::FailedPrecondition));
                        out.push((label(&format!("sees delete {txn} aborted")), w));
                    }
                }
            }
            Step::DeleteObject => {
                for outcome in Write::all(self, cfg) {
                    let mut w = self.clone();
                    if outcome.takes_effect() {
                        let target = self.target(i);
                        w.objects.remove(&target);
                    }
                    if outcome.is_fault() {
                        w.faults += 1;
                        w.reply(i, e, Reply::Err(Code::Unavailable));
                    } else {
                        w.reply(i, e, Reply::Ok(0));
                    }
                    out.push((label(&format!("deletes the volume object ({outcome:?})")), w));
                }
            }
        }
        out
    }

    /// The allocator's write of plan `p` (read as `read`) under each write
    /// outcome: a failed write is re-read (`Allocator::allocate`) and one
    /// that took effect is found and used; `next` is the step after it.
    #[allow(clippy::too_many_arguments)]
    fn record(&self, cfg: &Config, i: usize, e: usize, read: &ThinPool, p: &csi_controller::Plan, what: &str, next: impl Fn(u64, Option<String>) -> Step) -> Vec<(String, World)> {
        let mut out = Vec::new();
        for outcome in Write::all(self, cfg) {
            let mut w = self.clone();
            if outcome.takes_effect() {
                let mut obj = read.clone();
                obj.spec = p.spec.clone();
                w.store_pool(obj);
            }
            w.faults += outcome.is_fault() as u8;
            if w.pool.as_ref().is_some_and(|now| csi_controller::alloc::recorded(now, &p.transaction)) {
                let uid = w.pool.as_ref().and_then(|p| p.metadata.uid.clone());
                w.reqs[i].execs[e] = next(p.transaction.id().get(), uid);
            } else {
                w.reply(i, e, Reply::Err(Code::Unavailable));
            }
            out.push((format!("{} records {what} {} ({outcome:?})", self.reqs[i].name, p.transaction.id()), w));
        }
        out
    }

    /// `give_back`: one immediate allocation of a delete, not awaited.
    fn give_back(&mut self, device: u32) {
        if let Some(p) = self.pool.clone() {
            if let Ok(plan) = plan(&p, &[Alloc::Delete { id: thin(device) }]) {
                let mut obj = p;
                obj.spec = plan.spec;
                self.store_pool(obj);
            }
        }
    }

    fn node_steps(&self, cfg: &Config) -> Vec<(String, World)> {
        let mut out = Vec::new();
        let can_fault = self.faults < cfg.max_faults;
        if !self.node.up {
            // The process comes back and registers.
            let mut w = self.clone();
            w.node.up = true;
            w.node.view = None;
            w.register();
            out.push(("node restarts and registers".into(), w));
            return out;
        }
        let Some(current) = &self.pool else { return out };
        let mut views = vec![(current.clone(), false)];
        if let Some(v) = &self.node.view {
            if json(v) != json(current) && (can_fault || self.node.retry) {
                views.push((v.clone(), !self.node.retry));
            }
        }
        for (view, stale) in views {
            // A run without a crash, to count the kernel steps it takes.
            let clean = self.reconcile(&view, None);
            let steps = clean.as_ref().map_or(0, |(_, s)| *s);
            let tag = if stale { "FAULT node reconciles a re-delivered old event" } else { "node reconciles" };
            if let Some((w, _)) = clean {
                let base_fault = stale as u8;
                for (outcome, w) in w {
                    let mut w = w;
                    w.faults += base_fault + outcome.is_fault() as u8;
                    if w.faults <= cfg.max_faults {
                        out.push((format!("{tag} (status write {outcome:?})"), w));
                    }
                }
            }
            if can_fault && !stale {
                for k in 1..=steps {
                    for power in [false, true] {
                        if let Some((ws, _)) = self.reconcile(&view, Some((k, power))) {
                            for (_, mut w) in ws.into_iter().take(1) {
                                if w.node.up {
                                    continue;
                                }
                                w.faults += 1;
                                let what = if power { "loses power" } else { "crashes" };
                                out.push((format!("FAULT node {what} after kernel step {k} of its run"), w));
                            }
                        }
                    }
                }
            }
        }
        if can_fault {
            let mut w = self.clone();
            w.faults += 1;
            w.node.up = false;
            w.kernel.restart();
            out.push(("FAULT node process restarts".into(), w));
        }
        out
    }

    /// One reconcile of the node on `view`, as `PoolExecutor::reconcile`
    /// runs it: skip a spec already reconciled, drive, believe a divergence
    /// only on a fresh read, write the status as a merge patch from the one
    /// it read. Returns the worlds for each status-write outcome and the
    /// number of kernel steps the run took. `crash`: die after that many
    /// kernel steps (`true`: the machine loses power).
    fn reconcile(&self, view: &ThinPool, crash: Option<(u64, bool)>) -> Option<(Vec<(Write, World)>, u64)> {
        let seen = (view.metadata.uid.clone(), view.metadata.generation);
        if !self.node.retry && self.node.done.as_ref().is_some_and(|d| d.0 == seen.0 && d.1 >= seen.1) {
            return None;
        }
        let mut w = self.clone();
        w.node.view = Some(view.clone());
        let before = w.kernel.steps();
        if let Some((k, _)) = crash {
            w.kernel.crash_after(k);
        }
        let mut pool = view.clone();
        let mut confirmed = false;
        let (old, status, record_finished) = loop {
            let old = pool.status.clone().unwrap_or_default();
            if old.health == Some(PoolHealth::Unhealthy) {
                w.node.done = Some(seen.clone());
                w.node.retry = false;
                return Some((vec![(Write::Ok, w)], 0));
            }
            if pool.spec.devices_unknown_at_transaction.is_some() {
                let status = thin_csi_api::ThinPoolStatus { health: Some(PoolHealth::Unhealthy), last_error: Some("record unverified".into()), ..old.clone() };
                break (old, status, None);
            }
            let record = thin_csi_api::convert::pool_record(&pool).ok()?;
            let txns: BTreeMap<u64, Transaction> = record.pending.iter().map(|t| (t.id().get(), t.clone())).collect();
            let mut executor = w.node.executor.take().unwrap_or_default();
            let progress = {
                let mut rec = Recorder { k: &mut w.kernel, txns: &txns, truth: &mut w.truth, no_space: BTreeSet::new() };
                executor.drive(&mut rec, &record, &mut ())
            };
            w.node.executor = Some(executor);
            if w.kernel.crashed() {
                break (old, thin_csi_api::ThinPoolStatus::default(), None);
            }
            if progress.stopped.as_ref().is_some_and(|s| s.is_divergence()) && !confirmed {
                confirmed = true;
                if let Some(fresh) = &self.pool {
                    if fresh.metadata.resource_version != pool.metadata.resource_version {
                        pool = fresh.clone();
                        continue;
                    }
                }
            }
            let mut status = csi_node::pool_executor::next_status(&old, &pool, &record.finished, &progress);
            if let Some(ws) = w.kernel.pool_status().ok().and_then(|s| s.working().cloned()) {
                status.mode = Some(thin_csi_api::PoolMode::of(&ws));
            }
            if progress.stopped.as_ref().is_some_and(|s| s.is_divergence()) {
                status.health = Some(PoolHealth::Unhealthy);
            }
            let blocked = progress.stopped.as_ref().is_some_and(|s| !s.is_divergence());
            break (old, status, Some(blocked));
        };
        let steps = w.kernel.steps() - before;
        if let Some((_, power)) = crash {
            if !w.kernel.crashed() {
                return None; // the run took fewer steps
            }
            if power {
                w.kernel.power_cycle();
                w.mounted.clear();
            } else {
                w.kernel.restart();
            }
            w.node.up = false;
            return Some((vec![(Write::Ok, w)], steps));
        }
        let blocked = record_finished.unwrap_or(false);
        if status == old {
            if !blocked {
                w.node.done = Some(seen);
            }
            w.node.retry = blocked;
            return Some((vec![(Write::Ok, w)], steps));
        }
        let mut out = Vec::new();
        for outcome in [Write::Ok, Write::Failed, Write::Lost] {
            let mut w = w.clone();
            if outcome.takes_effect() {
                if let Some(mut cur) = w.pool.clone() {
                    let mut value = serde_json::to_value(&cur).expect("serializable");
                    merge(&mut value, &status.merge_patch_from(&old));
                    let meta = cur.metadata.clone();
                    let before = cur.status.clone();
                    cur = serde_json::from_value(value).expect("merged object parses");
                    cur.metadata = meta;
                    if cur.status == before {
                        w.node_defects.push("the node wrote a status that changed nothing (it re-triggers itself)".into());
                        return Some((vec![(outcome, w)], steps));
                    }
                    if cur.status.as_ref() != Some(&status) {
                        w.node_defects.push(format!("the node's status write left fields it meant to clear: wrote {status:?}, object has {:?}", cur.status));
                    }
                    w.store_pool(cur);
                }
            }
            if outcome == Write::Ok && !blocked {
                w.node.done = Some(seen.clone());
                w.node.retry = false;
            } else {
                // An error (or a blocked run) retries from the same object.
                w.node.retry = true;
            }
            out.push((outcome, w));
        }
        Some((out, steps))
    }

    /// Invariants that hold in every state. Returns what is violated.
    fn check(&self) -> Vec<String> {
        let mut v = self.node_defects.clone();
        let devices: BTreeSet<u32> = self.kernel.devices().map(|d| d.get()).collect();
        let mut owners: BTreeMap<u32, &str> = BTreeMap::new();
        for (name, d) in &self.live {
            if !devices.contains(d) {
                v.push(format!("CSI create {name} succeeded with device {d}, which the pool does not hold"));
            }
            if let Some(other) = owners.insert(*d, name) {
                v.push(format!("device {d} belongs to two live volumes: {other} and {name}"));
            }
            match self.objects.get(name) {
                Some(o) if o.device == *d => {}
                _ => v.push(format!("the object of live volume {name} (device {d}) was removed or changed")),
            }
        }
        for (n, t) in &self.truth {
            match t {
                Truth::Partial => v.push(format!("transaction {n} ended with only part of its effects")),
                Truth::Unknown => v.push(format!("the kernel moved to transaction {n}, which the record does not hold")),
                _ => {}
            }
        }
        if let Some(p) = &self.pool {
            for id in &p.spec.free_device_ids {
                if devices.contains(&id.get()) {
                    v.push(format!("device id {} is on the free list but the pool holds it", id));
                }
            }
            // A record marked as not knowing the pool's devices hands out nothing.
            // At kernel transaction 0 nothing ever committed: a device there is
            // an empty thin of an interrupted first transaction that nothing
            // names (harmless to hand out again; a first attempt sees EEXIST).
            let unverified = p.spec.devices_unknown_at_transaction.is_some() || self.kernel.transaction_id().get() == 0;
            if let Some(d) = devices.iter().find(|d| **d >= p.spec.next_device_id).filter(|_| !unverified) {
                v.push(format!("the record's id cursor ({}) is not past device {d} the pool holds", p.spec.next_device_id));
            }
            let status = p.status.clone().unwrap_or_default();
            let finished = status.finished_transaction.unwrap_or(0);
            for t in &p.spec.pending_transactions {
                if t.id > finished {
                    continue;
                }
                let reported_aborted = status.aborted(t.id).is_some();
                match self.truth.get(&t.id) {
                    Some(Truth::Committed) if reported_aborted => v.push(format!("transaction {} committed but is reported aborted", t.id)),
                    Some(Truth::Aborted { .. }) if !reported_aborted => v.push(format!("transaction {} aborted but is reported committed", t.id)),
                    _ => {}
                }
            }
        }
        for r in &self.reqs {
            for reply in &r.replies {
                if let (Op::CreateNoSpace, Reply::Err(c)) = (r.op, reply) {
                    if !matches!(c, Code::ResourceExhausted | Code::Unavailable | Code::NotFound | Code::AlreadyExists) {
                        v.push(format!("{} (pool metadata full) answered {c:?}, not RESOURCE_EXHAUSTED", r.name));
                    }
                }
            }
        }
        v
    }

    /// Invariants of an end state (nothing more can happen).
    fn check_end(&self) -> Vec<String> {
        let mut v = Vec::new();
        for r in &self.reqs {
            if r.started && !r.execs.is_empty() {
                v.push(format!("{} never got an answer: {:?}", r.name, r.execs));
            }
        }
        if let Ok(active) = self.kernel.active_thins() {
            for a in active.iter().filter(|a| a.suspended) {
                v.push(format!("device {} left suspended", a.id));
            }
        }
        if let Some(p) = &self.pool {
            let healthy = p.status.as_ref().and_then(|s| s.health) != Some(PoolHealth::Unhealthy);
            let usable = self.kernel.pool_status().ok().and_then(|s| s.working().map(|w| w.mode)) == Some(thinpool::PoolMode::ReadWrite);
            if healthy && usable && self.kernel.transaction_id().get() < p.spec.last_assigned_transaction {
                v.push(format!(
                    "the pool is healthy but stuck at transaction {} of {}",
                    self.kernel.transaction_id(),
                    p.spec.last_assigned_transaction
                ));
            }
        }
        v
    }

    fn leaks(&self) -> bool {
        let named: BTreeSet<u32> = self.objects.values().map(|o| o.device).collect();
        self.kernel.devices().any(|d| !named.contains(&d.get()))
    }
}

/// Explores every path of `ops` under `cfg`.
pub fn explore(ops: &[Op], cfg: &Config) -> Report {
    let mut report = Report::default();
    let mut seen: HashSet<u64> = HashSet::new();
    let mut reported: BTreeSet<String> = BTreeSet::new();
    let start = World::new(ops, cfg);
    let mut stack: Vec<(World, Vec<String>)> = vec![(start, vec![])];
    while let Some((w, path)) = stack.pop() {
        let mut h = DefaultHasher::new();
        w.hash(&mut h);
        if !seen.insert(h.finish()) {
            continue;
        }
        report.states += 1;
        if report.states as usize >= cfg.max_states {
            report.truncated = true;
            break;
        }
        let mut found = w.check();
        let own = h.finish();
        // Steps that change nothing (a node retrying a blocked transaction on
        // a read-only pool) do not keep a state from being an end state.
        let next: Vec<(String, World)> = w
            .successors(cfg)
            .into_iter()
            .filter(|(_, n)| {
                let mut nh = DefaultHasher::new();
                n.hash(&mut nh);
                nh.finish() != own
            })
            .collect();
        if next.is_empty() {
            report.paths += 1;
            found.extend(w.check_end());
            if w.leaks() {
                report.leaked_end_states += 1;
            }
        }
        if !found.is_empty() {
            for what in found {
                // One example path per kind of violation.
                let kind: String = what.chars().filter(|c| !c.is_ascii_digit()).collect();
                if reported.insert(kind) {
                    report.violations.push(Violation { what, path: path.clone() });
                }
            }
            continue; // do not explore beyond a broken state
        }
        for (label, nw) in next.into_iter().rev() {
            let mut p = path.clone();
            p.push(label);
            stack.push((nw, p));
        }
    }
    report
}

/// Every scenario of up to `len` requests: creates, snapshots and deletes of
/// earlier creates, a create on a full pool, a delete of a mounted volume.
pub fn scenarios(len: usize) -> Vec<Vec<Op>> {
    let mut all = Vec::new();
    let mut cur = Vec::new();
    fn rec(len: usize, cur: &mut Vec<Op>, all: &mut Vec<Vec<Op>>) {
        if !cur.is_empty() {
            all.push(cur.clone());
        }
        if cur.len() == len {
            return;
        }
        let creates: Vec<usize> = cur.iter().enumerate().filter(|(_, o)| matches!(o, Op::Create)).map(|(i, _)| i).collect();
        let deleted: BTreeSet<usize> = cur.iter().filter_map(|o| match o { Op::Delete { of } | Op::DeleteOpen { of } => Some(*of), _ => None }).collect();
        let mut next = vec![Op::Create];
        if !cur.contains(&Op::CreateNoSpace) {
            next.push(Op::CreateNoSpace);
        }
        for &c in creates.iter().filter(|c| !deleted.contains(c)) {
            next.push(Op::Snapshot { of: c });
            next.push(Op::Delete { of: c });
            next.push(Op::DeleteOpen { of: c });
        }
        for op in next {
            cur.push(op);
            rec(len, cur, all);
            cur.pop();
        }
    }
    rec(len, &mut cur, &mut all);
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_create_under_one_fault_keeps_every_invariant() {
        let r = explore(&[Op::Create], &Config { max_faults: 1, ..Config::default() });
        assert!(r.violations.is_empty(), "{:?}", r.violations);
        assert!(r.paths > 10 && !r.truncated, "{r:?}");
    }

    #[test]
    fn scenarios_reference_earlier_creates_only() {
        for ops in scenarios(3) {
            for (i, op) in ops.iter().enumerate() {
                if let Op::Snapshot { of } | Op::Delete { of } | Op::DeleteOpen { of } = op {
                    assert!(*of < i && ops[*of] == Op::Create, "{ops:?}");
                }
            }
        }
    }

    #[test]
    fn the_merge_patch_model_clears_nulls() {
        let mut v = serde_json::json!({"a": 1, "b": {"c": 2, "d": 3}});
        merge(&mut v, &serde_json::json!({"a": null, "b": {"c": null}}));
        assert_eq!(v, serde_json::json!({"b": {"d": 3}}));
    }
}
