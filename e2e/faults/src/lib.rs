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
//!
//! ## Reductions, and why each loses nothing
//!
//! Two states are merged when they have the same future: the same steps
//! are enabled, they lead to states that are merged again, and every
//! invariant reads the same values. What the search merges on is
//! [`World::key`]; each departure from "the whole state, byte for byte" is
//! argued here. `Config::reduce = false` (`--no-reduce`) turns them off, and
//! a test checks that both searches find the same violations.
//!
//! - **A canonical encoding, not JSON.** The key is a compact encoding of
//!   every field that steps or checks read (kernel ids, contents, active
//!   devices and mode; the pool object's metadata, spec and status; the
//!   volume objects; the node's view, executor memory, last reconciled
//!   generation and retry flag; each request's steps and last answer; the
//!   ghost state the invariants read), fed to a 128-bit fingerprint (two
//!   SipHash streams). A collision would merge two different states: among
//!   10^8 states its odds are about 10^-23. Before, states were hashed by
//!   serializing the pool object twice to JSON into a 64-bit hash, which
//!   also left out the node's defect list (a state whose only difference was
//!   a defect seen could be merged with a clean one and the defect lost).
//! - **resourceVersions and uids are renamed** in the order the encoding
//!   first meets them. The code under test compares them only for equality
//!   (the allocator's 409 check, the node's fresh read, the waits' and
//!   `clear_stale`'s uid checks), and the store's counter makes every new
//!   one fresh, so states equal up to a one-to-one renaming have the same
//!   futures up to that renaming. The counter itself is left out for that
//!   reason. Generations are compared with `>=` by the node and stay as
//!   they are.
//! - **Faults spent are not in the key; the fewest seen are kept.** A fault
//!   step is enabled only while `faults < max_faults`, and nothing else
//!   reads the count, so a state reached with more faults has a subset of
//!   the futures of the same state reached with fewer. The seen table maps
//!   each key to the fewest faults it was explored with; a state is explored
//!   again only when reached with fewer.
//! - **An old view that can never be read again is left out.** The node
//!   reads its last view again only as a re-delivered event (a fault) or on
//!   a retry; the retry flag is set only by a reconcile that also replaces
//!   the view. So once the budget is spent and no retry is pending, the
//!   view cannot matter. (The other view is `None`, so such a state also
//!   merges with one where the node never had a view.)
//! - **A down node's memory is left out.** A node process that is down
//!   comes back with no view, a new executor and nothing reconciled
//!   (`register`); its crash worlds are built from the clean run's kernel
//!   snapshot after each step (the run is deterministic, so a run that dies
//!   after step k did exactly the clean run's first k steps; a test compares
//!   the two constructions in every state of small searches).
//! - **A read that is no longer current is kept only as what it will do.**
//!   A create's or delete's step holding a read of the pool object checks
//!   the plan first and then the version (409). Versions are fresh, so a
//!   read that is not the current version never is again, and its step
//!   will either answer the plan's refusal or re-read; the key keeps only
//!   which (the refusal's code, or for a delete: already deleted / being
//!   deleted by which transaction). Not for a snapshot, whose request
//!   depends on the source volume at the time of the step.
//! - **The CO's own bookkeeping steps are explored alone.** Issuing a
//!   create or snapshot, or retrying a request with no execution running,
//!   writes only that request's `started`/`execs`/`retries_left`, which
//!   no other step reads (a later request reads `started` but cannot run
//!   before it is set; `done()` stays false), no check reads, and which
//!   disables nothing: it commutes with every other step. When one is
//!   enabled it is the only successor explored (a singleton ample set,
//!   partial-order reduction): every path that runs other steps first has a
//!   permutation with this step first that reaches the same states and
//!   breaks the same invariants. Each such step uses up something finite
//!   (a request not yet issued, a retry), so no cycle can postpone another
//!   step forever. A delete's issue is not one: the kubelet's unstage
//!   before it touches the kernel and the ghost state the checks read.
//! - **Once the pool object is gone for good, requests fail one at a
//!   time.** With no pool object, the fault budget spent and the node up,
//!   no object can come back (a record write needs its read to be the
//!   current version, a give-back needs the object, the node registers
//!   only after a restart, which needs a fault) and the node has no step.
//!   Then a step of a request's only execution that reads the missing
//!   object, what the request holds, and at most its own volume object
//!   while nothing can change that one (no request is at the step that
//!   clears stale objects, none can reach it again, no delete of it is
//!   still to run), and that writes only the request's own steps and an
//!   error answer (`World::step_without_pool` lists them) commutes with
//!   every step of every other request: none reads or writes what it does,
//!   and it disables nothing (it can only make its request `done()`, which
//!   enables a dependent request's issue and disables none). It is the
//!   only successor explored (a singleton ample set), and only when the
//!   state it leads to breaks no invariant; since only the request's own
//!   steps change its answer, every state a path reaches without it then
//!   carries the same violations with it done first, and every end state
//!   has it done (it stays enabled until taken). Each such step removes an
//!   execution or moves it from its lookup to its wait, so no cycle is made
//!   of them (the cycle proviso). A success (it writes the ghost state) and
//!   a delete's last failure (which puts the volume back in `live`) are not
//!   taken so.
//! - **Interchangeable requests are one (symmetry).** Two issued requests
//!   of the same op that no other request snapshots or deletes differ only
//!   by their names: every step reads a request through its own fields and
//!   the object and ghost entries under its own name (the allocator hands
//!   out ids by the order of the writes, not by who writes), the ones that
//!   are not yet issued wait only on the *earlier* request's `started`
//!   (true for both), and every invariant is a statement over all requests
//!   and names alike (a violation's kind is compared without its digits, so
//!   without names). Swapping two such requests, with their names in the
//!   objects and the ghost maps, maps the full state graph onto itself and
//!   each violation onto one of the same kind; so the key encodes them
//!   sorted by what they hold and names by the position they are encoded
//!   at, and a state stands for each of its permutations. The order among
//!   the CO's own steps (below) picks by index, but those steps commute and
//!   all run before anything else, so the states they lead to are again
//!   permutations of each other. A test swaps two such requests in every
//!   state of small searches and requires the same key, the same
//!   violations and successors with the same keys.
//! - **Only a request's last answer is kept.** Every answer is checked in
//!   the state that gives it (a broken state is not explored past), and
//!   later steps read only the last one (`Request::done`).
//! - **A step that changes nothing is a self-loop**, not a new state; a
//!   state whose only steps are such loops is an end state (the node
//!   retrying a blocked transaction on a read-only pool).
//!
//! Paths are kept as successor indices and replayed for their labels only
//! when a violation is printed: the same paths, without a string per step.
//!
//! ## Keeping it honest
//!
//! [`Mutation`] puts back, one at a time, defects the product had (a status
//! patch that clears nothing, an abort reported as committed, a re-created
//! record not marked unverified, an aborted delete answered as success).
//! A test and the suite require the search to find each; the reductions
//! test requires the reduced and the plain search to agree on each.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::rc::Rc;

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
    /// A snapshot of a volume whose filesystem will not freeze: the origin's
    /// suspend fails and the create aborts (its id is freed and, pruned by
    /// a later request, handed out again while a waiter may still read it).
    SnapshotUnfrozen { of: usize },
    Delete { of: usize },
    /// A create when pool metadata is full (the kernel says ENOSPC).
    CreateNoSpace,
    /// A DeleteVolume of a volume that is still mounted (open).
    DeleteOpen { of: usize },
}

impl Op {
    /// The earlier request this one snapshots or deletes.
    fn source(self) -> Option<usize> {
        match self {
            Op::Snapshot { of } | Op::SnapshotUnfrozen { of } | Op::Delete { of } | Op::DeleteOpen { of } => Some(of),
            Op::Create | Op::CreateNoSpace => None,
        }
    }
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
    /// Merge states by the reductions of the module docs (off: the plain
    /// search, kept to check that the reductions lose nothing).
    pub reduce: bool,
    /// A known defect put back on purpose, to show the search still finds it.
    pub mutation: Option<Mutation>,
}

impl Default for Config {
    fn default() -> Self {
        Config { max_faults: 2, replicas: 1, retries: 2, max_states: 2_000_000, reduce: true, mutation: None }
    }
}

/// Defects the product had (issue 9), put back into the search's model of
/// the product's glue, so a test can show the search still finds them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mutation {
    /// Defect 3: the node's status write is a plain serialization, which
    /// skips empty fields, so nothing it drops is ever cleared.
    PlainStatusPatch,
    /// Defect 1: an aborted transaction is reported as committed.
    AbortReportedCommitted,
    /// Defect 2: a pool object re-created for a pool with history is not
    /// marked as not knowing the pool's devices.
    RecordNotMarked,
    /// Found by the search (97de2f6): a DeleteVolume whose delete was
    /// aborted (the volume still mounted) is answered as a success.
    AbortedDeleteSucceeds,
    /// Issue 10: a pruned transaction judged from the free ids, as before
    /// ids were reused at once (an aborted create freed its id; a committed
    /// delete freed it), instead of from the tombstones.
    FreeListJudgement,
    /// Issue 10: a lookup by CSI id that ignores the generation (pool and
    /// device only), as before ids carried one.
    LookupIgnoresGeneration,
}

impl Mutation {
    pub const ALL: [Mutation; 6] = [
        Mutation::PlainStatusPatch,
        Mutation::AbortReportedCommitted,
        Mutation::RecordNotMarked,
        Mutation::AbortedDeleteSucceeds,
        Mutation::FreeListJudgement,
        Mutation::LookupIgnoresGeneration,
    ];

    pub fn parse(s: &str) -> Option<Mutation> {
        Mutation::ALL.into_iter().find(|m| format!("{m:?}").eq_ignore_ascii_case(&s.replace('-', "")))
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
    /// States explored again because they were reached with fewer faults.
    pub revisits: u64,
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

#[derive(Clone, Debug, PartialEq)]
enum Step {
    Start,
    /// Read the pool object for an allocation; `read` holds it.
    Plan { read: Rc<ThinPool> },
    /// The allocation is recorded: clear stale objects, create ours.
    Allocated { txn: u64, device: u32, uid: Option<String> },
    Wait { txn: u64, device: u32, uid: Option<String> },
    /// The object could not be written: delete the device once its create
    /// finished, then answer `code`.
    GiveBack { txn: u64, device: u32, code: Code },
    MarkReady { txn: u64, device: u32 },
    /// DeleteVolume: the volume's create must have finished.
    DeleteSettle { txn: u64 },
    DeletePlan { read: Rc<ThinPool> },
    DeleteWait { txn: u64, uid: Option<String> },
    DeleteObject,
}

#[derive(Clone, Debug)]
struct Request {
    op: Op,
    name: String,
    /// Running executions (two when a second replica races the first).
    execs: Vec<Step>,
    /// The last answer (earlier ones were checked when they were given).
    reply: Option<Reply>,
    retries_left: u8,
    started: bool,
}

impl Request {
    fn done(&self) -> bool {
        self.started && self.execs.is_empty() && (matches!(self.reply, Some(Reply::Ok(_))) || self.retries_left == 0)
    }
}

#[derive(Clone, Debug)]
struct Node {
    up: bool,
    /// The last pool object the watch delivered.
    view: Option<Rc<ThinPool>>,
    executor: Option<thinpool::executor::Executor>,
    /// (uid, generation) of the last spec fully reconciled.
    done: Option<(Option<String>, Option<i64>)>,
    /// The last reconcile failed to write its status (the node retries).
    retry: bool,
}

#[derive(Clone)]
pub struct World {
    /// Shared until written (most steps do not touch the kernel).
    kernel: Rc<ModelKernel>,
    pool: Option<Rc<ThinPool>>,
    rv: u64,
    objects: Rc<BTreeMap<String, CsiObject>>,
    node: Node,
    reqs: Vec<Request>,
    faults: u8,
    truth: BTreeMap<u64, Truth>,
    /// The ids each recorded transaction creates (ghost state: with ids
    /// reused, which transaction made the device now under an id).
    created_by: BTreeMap<u64, Vec<u32>>,
    /// CSI creates answered with success and not deleted since: name → the
    /// CSI id (device, generation = create transaction).
    live: BTreeMap<String, CsiId>,
    /// Live volumes a DeleteVolume was issued for: the CO expects nothing of
    /// their data any more; back to `live` if the delete finally fails.
    deleting: BTreeMap<String, CsiId>,
    /// Volumes the harness (as kubelet) keeps mounted.
    mounted: BTreeSet<u32>,
    /// Misbehaviour of the node's status writes, seen when they happen.
    node_defects: Vec<String>,
    /// Constant for a search.
    mutation: Option<Mutation>,
}

/// What a CSI id names: a device id and its generation (create transaction).
type CsiId = (u32, u64);

const POOL: &str = "pool-uuid";
const NODE: &str = "node-a";

/// The canonical encoding of a state, written through `Hash` impls into a
/// byte buffer (`Hash` for `str` and slices is prefix-free: lengths and
/// terminators are written too), so two states encode alike only when they
/// are equal up to the renamings below. resourceVersions and uids are
/// written as the order in which the traversal first meets them.
struct Enc {
    buf: Vec<u8>,
    rvs: Vec<String>,
    uids: Vec<String>,
    /// Write raw resourceVersions and uids (the unreduced search).
    raw: bool,
    /// Where each part of the state starts (for `FAULTS_DEBUG` statistics).
    marks: Vec<usize>,
}

impl Hasher for Enc {
    fn write(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }
    fn finish(&self) -> u64 {
        unreachable!("an Enc is read with fingerprint()")
    }
}

impl std::fmt::Write for Enc {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.buf.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

/// A 128-bit fingerprint: two SipHash-1-3 streams over the encoding (one
/// prefixed), so a collision among 10^8 states has odds near 10^-23.
type Fingerprint = u128;

impl Enc {
    fn new(raw: bool) -> Enc {
        Enc { buf: Vec::with_capacity(1024), rvs: Vec::new(), uids: Vec::new(), raw, marks: Vec::new() }
    }

    fn fingerprint(&self) -> Fingerprint {
        let mut a = DefaultHasher::new();
        a.write(&self.buf);
        let mut b = DefaultHasher::new();
        b.write_u8(0xa5);
        b.write(&self.buf);
        ((a.finish() as u128) << 64) | b.finish() as u128
    }

    fn renamed(table: &mut Vec<String>, raw: bool, v: &Option<String>, out: &mut Vec<u8>) {
        match v {
            None => out.push(0),
            Some(s) if raw => {
                out.push(1);
                out.extend_from_slice(s.as_bytes());
                out.push(0xff);
            }
            Some(s) => {
                let i = table.iter().position(|t| t == s).unwrap_or_else(|| {
                    table.push(s.clone());
                    table.len() - 1
                });
                out.push(2);
                out.extend_from_slice(&(i as u32).to_le_bytes());
            }
        }
    }

    fn rv(&mut self, v: &Option<String>) {
        Self::renamed(&mut self.rvs, self.raw, v, &mut self.buf);
    }

    fn uid(&mut self, v: &Option<String>) {
        Self::renamed(&mut self.uids, self.raw, v, &mut self.buf);
    }

    fn pool(&mut self, p: Option<&ThinPool>) {
        let Some(p) = p else { return self.write_u8(0) };
        self.write_u8(1);
        let m = &p.metadata;
        self.uid(&m.uid);
        // Every write stores a new resourceVersion, so within one state all
        // copies with the same one (the object, the node's view, a read held
        // by a request) are the same version: after its first occurrence,
        // the version number alone says what it holds.
        let known = !self.raw && m.resource_version.as_ref().is_some_and(|rv| self.rvs.contains(rv));
        self.rv(&m.resource_version);
        if known {
            return;
        }
        m.generation.hash(self);
        m.name.hash(self);
        let s = &p.spec;
        (&s.node, &s.pool_name, &s.pool_uuid, s.next_device_id, &s.free_device_ranges, &s.aborted_transactions, s.last_assigned_transaction, s.devices_unknown_at_transaction).hash(self);
        s.pending_transactions.len().hash(self);
        for t in &s.pending_transactions {
            t.id.hash(self);
            t.operations.len().hash(self);
            for o in &t.operations {
                (o.op as u8, o.id, o.origin).hash(self);
            }
        }
        match &p.status {
            None => self.write_u8(0),
            Some(st) => {
                self.write_u8(1);
                (st.kernel_transaction, st.finished_transaction, st.data_used_bytes, st.data_total_bytes, st.metadata_used_bytes, st.metadata_total_bytes).hash(self);
                (st.mode.map(|m| m as u8), st.health.map(|h| h as u8), &st.last_error).hash(self);
                st.aborted_transactions.len().hash(self);
                for a in &st.aborted_transactions {
                    (a.id, a.reason, &a.message).hash(self);
                }
            }
        }
    }

    fn step(&mut self, s: &Step) {
        match s {
            Step::Start => self.write_u8(0),
            Step::Plan { read } => {
                self.write_u8(1);
                self.pool(Some(read));
            }
            Step::Allocated { txn, device, uid } => {
                (2u8, txn, device).hash(self);
                self.uid(uid);
            }
            Step::Wait { txn, device, uid } => {
                (3u8, txn, device).hash(self);
                self.uid(uid);
            }
            Step::GiveBack { txn, device, code } => (4u8, txn, device, code).hash(self),
            Step::MarkReady { txn, device } => (5u8, txn, device).hash(self),
            Step::DeleteSettle { txn } => (6u8, txn).hash(self),
            Step::DeletePlan { read } => {
                self.write_u8(7);
                self.pool(Some(read));
            }
            Step::DeleteWait { txn, uid } => {
                (8u8, txn).hash(self);
                self.uid(uid);
            }
            Step::DeleteObject => self.write_u8(9),
        }
    }
}

impl World {
    /// The key under which this state is merged with others: everything
    /// that can change what happens next, except the faults spent (see
    /// [`explore`]: a state reached with fewer faults covers it).
    fn key(&self, cfg: &Config) -> Fingerprint {
        self.encode(cfg).fingerprint()
    }

    /// Fingerprints of the parts of the key: kernel, pool, objects, node,
    /// requests, ghost state (how many distinct values each takes says
    /// where a search's states come from).
    pub fn part_keys(&self, cfg: &Config) -> Vec<u64> {
        let e = self.encode(cfg);
        let mut marks = e.marks.clone();
        marks.push(e.buf.len());
        marks.windows(2).map(|m| {
            let mut h = DefaultHasher::new();
            h.write(&e.buf[m[0]..m[1]]);
            h.finish()
        }).collect()
    }

    fn encode(&self, cfg: &Config) -> Enc {
        use std::fmt::Write as _;
        let mut e = Enc::new(!cfg.reduce);
        e.marks.push(0);
        let k = &self.kernel;
        (k.transaction_id(), k.crashed()).hash(&mut e);
        for id in k.devices() {
            (id, k.content(id)).hash(&mut e);
        }
        if let Ok(active) = k.active_thins() {
            active.len().hash(&mut e);
            for a in active {
                (a.id, a.size, a.open_count, a.suspended).hash(&mut e);
            }
        }
        match k.pool_status().ok().and_then(|s| s.working().cloned()) {
            Some(w) => (1u8, w.mode as u8, w.needs_check).hash(&mut e),
            None => e.write_u8(0),
        }
        e.marks.push(e.buf.len());
        e.pool(self.pool.as_deref());
        e.marks.push(e.buf.len());
        // Interchangeable requests are encoded in a canonical order, and
        // every name as the position it is encoded at (symmetry, module docs).
        let order = self.request_order(cfg);
        let slot_of = |name: &str| order.iter().position(|&m| self.reqs[m].name == name).expect("objects and ghost entries are named by requests");
        let by_slot = |names: &mut dyn Iterator<Item = &String>| -> Vec<(usize, String)> {
            let mut v: Vec<(usize, String)> = names.map(|n| (slot_of(n), n.clone())).collect();
            v.sort();
            v
        };
        self.objects.len().hash(&mut e);
        for (slot, name) in by_slot(&mut self.objects.keys()) {
            let o = &self.objects[&name];
            (slot, o.device, o.txn, o.ready).hash(&mut e);
            e.uid(&o.pool_uid);
        }
        e.marks.push(e.buf.len());
        (self.node.up, self.node.retry).hash(&mut e);
        // A node that is down starts again with no view, a new executor and
        // nothing reconciled (`register`): what the dead one had is not read.
        if self.node.up || !cfg.reduce {
            // An old view is only ever read again as a re-delivered event (a
            // fault) or by a retry (set only by a reconcile, which also
            // replaces the view).
            let view_matters = !cfg.reduce || self.faults < cfg.max_faults || self.node.retry;
            e.pool(self.node.view.as_deref().filter(|_| view_matters));
            let _ = write!(e, "{:?}", self.node.executor);
            match &self.node.done {
                None => e.write_u8(0),
                Some((uid, generation)) => {
                    e.write_u8(1);
                    e.uid(uid);
                    generation.hash(&mut e);
                }
            }
        }
        e.marks.push(e.buf.len());
        let current_rv = self.pool.as_ref().and_then(|p| p.metadata.resource_version.as_ref());
        for &i in &order {
            let r = &self.reqs[i];
            (r.started, r.retries_left, r.reply, r.execs.len()).hash(&mut e);
            for s in &r.execs {
                match s {
                    // A read that is no longer the object's current version
                    // never will be again (versions are fresh): its step
                    // will answer the plan's refusal, or else re-read (409).
                    // Only which of those it does is left of it.
                    Step::Plan { read } if cfg.reduce && read.metadata.resource_version.as_ref() != current_rv && matches!(r.op, Op::Create | Op::CreateNoSpace) => {
                        e.write_u8(10);
                        match plan(read, &[Alloc::CreateThin]) {
                            Ok(_) => e.write_u8(0),
                            Err(err) => (1u8, csi_controller::status::Error::from(err).code()).hash(&mut e),
                        }
                    }
                    // The same for a delete's read; the id it deletes is its
                    // volume object's, which only ever goes away.
                    Step::DeletePlan { read } if cfg.reduce && read.metadata.resource_version.as_ref() != current_rv => {
                        e.write_u8(11);
                        match self.target_object(i).map(|(_, o)| plan(read, &[Alloc::DeleteOf { id: thin(o.device), generation: o.txn }])) {
                            None => e.write_u8(0),
                            Some(Ok(_)) => e.write_u8(1),
                            Some(Err(AllocError::NotAllocated { .. })) => e.write_u8(2),
                            Some(Err(AllocError::BeingDeleted { txn, .. })) => (3u8, txn).hash(&mut e),
                            Some(Err(err)) => (4u8, csi_controller::status::Error::from(err).code()).hash(&mut e),
                        }
                    }
                    _ => e.step(s),
                }
            }
        }
        if !cfg.reduce {
            self.faults.hash(&mut e);
        }
        e.marks.push(e.buf.len());
        (&self.truth, &self.created_by).hash(&mut e);
        for names in [&self.live, &self.deleting] {
            names.len().hash(&mut e);
            for (slot, name) in by_slot(&mut names.keys()) {
                (slot, names[&name]).hash(&mut e);
            }
        }
        (&self.mounted, &self.node_defects).hash(&mut e);
        e
    }

    /// The order in which the key encodes the requests: index order, except
    /// that requests of one class of interchangeable ones (the same op,
    /// issued, and not the source or target of any other request) are
    /// sorted among their positions by what they hold (their steps and
    /// answer, and their object and ghost entries), so that states which
    /// differ only by a permutation of such requests encode alike.
    fn request_order(&self, cfg: &Config) -> Vec<usize> {
        let n = self.reqs.len();
        let mut order: Vec<usize> = (0..n).collect();
        if !cfg.reduce {
            return order;
        }
        let referenced: BTreeSet<usize> = self.reqs.iter().filter_map(|r| r.op.source()).collect();
        let free = |i: usize| self.reqs[i].started && !referenced.contains(&i);
        for i in (0..n).filter(|&i| free(i)) {
            let class: Vec<usize> = (0..n).filter(|&j| free(j) && self.reqs[j].op == self.reqs[i].op).collect();
            if class[0] != i || class.len() < 2 {
                continue;
            }
            let mut members = class.clone();
            members.sort_by_cached_key(|&j| self.signature(j));
            for (&slot, m) in class.iter().zip(members) {
                order[slot] = m;
            }
        }
        order
    }

    /// Everything of request `j` that the key holds (raw: only its order
    /// among interchangeable requests depends on it).
    fn signature(&self, j: usize) -> Vec<u8> {
        let r = &self.reqs[j];
        let mut e = Enc::new(true);
        (r.retries_left, r.reply, r.execs.len()).hash(&mut e);
        for s in &r.execs {
            e.step(s);
        }
        self.objects.get(&r.name).hash(&mut e);
        (self.live.get(&r.name), self.deleting.get(&r.name)).hash(&mut e);
        e.buf
    }
}

/// A kernel wrapper that records what each transaction id ended as, at the
/// instant the kernel moved to it.
struct Recorder<'a> {
    k: &'a mut ModelKernel,
    txns: &'a BTreeMap<u64, Transaction>,
    truth: &'a mut BTreeMap<u64, Truth>,
    no_space: BTreeSet<u64>,
    /// When given: the kernel and the truth after every state-changing
    /// call, which is what a crash right after that call leaves.
    snaps: Option<&'a mut Vec<Snap>>,
}

/// The kernel and the truth table after one kernel step of a node run.
type Snap = (ModelKernel, BTreeMap<u64, Truth>);

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

    fn snap<T>(&mut self, steps_before: u64, r: T) -> T {
        if self.k.steps() != steps_before {
            if let Some(snaps) = self.snaps.as_deref_mut() {
                snaps.push((self.k.clone(), self.truth.clone()));
            }
        }
        r
    }
}

impl Kernel for Recorder<'_> {
    fn pool_status(&self) -> Result<PoolStatus, KernelError> {
        self.k.pool_status()
    }
    fn message(&mut self, message: &PoolMessage) -> Result<(), KernelError> {
        let before = self.k.steps();
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
        self.snap(before, r)
    }
    fn active_thins(&self) -> Result<Vec<ActiveThin>, KernelError> {
        self.k.active_thins()
    }
    fn active_thin(&self, id: ThinId) -> Result<Option<ActiveThin>, KernelError> {
        self.k.active_thin(id)
    }
    fn suspend_thin(&mut self, id: ThinId) -> Result<(), KernelError> {
        let before = self.k.steps();
        let r = self.k.suspend_thin(id);
        self.snap(before, r)
    }
    fn resume_thin(&mut self, id: ThinId) -> Result<(), KernelError> {
        let before = self.k.steps();
        let r = self.k.resume_thin(id);
        self.snap(before, r)
    }
    fn activate_thin(&mut self, id: ThinId, size: Sectors) -> Result<(), KernelError> {
        let before = self.k.steps();
        let r = self.k.activate_thin(id, size);
        self.snap(before, r)
    }
    fn deactivate_thin(&mut self, id: ThinId) -> Result<(), KernelError> {
        let before = self.k.steps();
        let r = self.k.deactivate_thin(id);
        self.snap(before, r)
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
        let kernel = Rc::new(if ops.contains(&Op::CreateNoSpace) { ModelKernel::new().with_metadata_capacity(creates_before_full) } else { ModelKernel::new() });
        let mut w = World {
            kernel,
            pool: None,
            rv: 0,
            objects: Rc::default(),
            node: Node { up: true, view: None, executor: None, done: None, retry: false },
            reqs: ops
                .iter()
                .enumerate()
                .map(|(i, op)| Request { op: *op, name: format!("r{i}"), execs: vec![], reply: None, retries_left: cfg.retries, started: false })
                .collect(),
            faults: 0,
            truth: BTreeMap::new(),
            created_by: BTreeMap::new(),
            live: BTreeMap::new(),
            deleting: BTreeMap::new(),
            mounted: BTreeSet::new(),
            node_defects: Vec::new(),
            mutation: cfg.mutation,
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
        self.pool = Some(Rc::new(pool));
    }

    /// The node registers its pool object as `PoolExecutor::register` does:
    /// thaw, then create the object if missing (marked when the pool has
    /// history), and pick the executor.
    fn register(&mut self) {
        let _ = thinpool::thaw(Rc::make_mut(&mut self.kernel));
        let at = self.kernel.transaction_id().get();
        self.node.done = None;
        if self.pool.is_some() {
            self.node.executor = Some(thinpool::Executor::default());
            return;
        }
        let mut spec = ThinPoolSpec::new(NODE, "pool0", POOL, at);
        if (at > 0 || !self.objects.is_empty()) && self.mutation != Some(Mutation::RecordNotMarked) {
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
            Op::Snapshot { of } | Op::SnapshotUnfrozen { of } | Op::Delete { of } | Op::DeleteOpen { of } => Some(of),
            _ => None,
        };
        // Requests are issued in order (one CO, one provisioner queue); a
        // dependent one only after its source was answered.
        (i == 0 || self.reqs[i - 1].started) && dep.is_none_or(|d| self.reqs[d].done())
    }

    fn reply(&mut self, i: usize, exec: usize, reply: Reply) {
        self.reqs[i].execs.remove(exec);
        self.reqs[i].reply = Some(reply);
        let name = self.reqs[i].name.clone();
        match (self.reqs[i].op, reply) {
            (Op::Create | Op::CreateNoSpace | Op::Snapshot { .. } | Op::SnapshotUnfrozen { .. }, Reply::Ok(d)) => {
                // The id answered carries the object's create transaction.
                let generation = self.objects.get(&name).map_or(0, |o| o.txn);
                self.live.insert(name, (d, generation));
                // The harness stages (activates and mounts) every new volume:
                // snapshots then suspend a live origin, deletes must unstage.
                if self.reqs.iter().any(|r| r.op == Op::SnapshotUnfrozen { of: i }) {
                    Rc::make_mut(&mut self.kernel).refuse_suspend(Some(thin(d)));
                }
                if !matches!(self.reqs[i].op, Op::Snapshot { .. } | Op::SnapshotUnfrozen { .. }) && Rc::make_mut(&mut self.kernel).activate_thin(thin(d), Sectors(8)).is_ok() {
                    let _ = Rc::make_mut(&mut self.kernel).open(thin(d));
                    self.mounted.insert(d);
                }
            }
            (Op::Delete { of } | Op::DeleteOpen { of }, Reply::Ok(_)) => {
                let target = self.reqs[of].name.clone();
                if let Some(id) = self.deleting.remove(&target) {
                    if self.holds(id) {
                        self.node_defects.push(format!("DeleteVolume of {target} succeeded but device {} is still in the pool", id.0));
                    }
                }
            }
            (Op::Delete { of } | Op::DeleteOpen { of }, Reply::Err(_)) if self.reqs[i].retries_left == 0 && self.reqs[i].execs.is_empty() => {
                // The delete finally failed: if its device is still there, the
                // volume (object and data) must be too.
                let target = self.reqs[of].name.clone();
                if let Some(id) = self.deleting.get(&target).copied() {
                    if self.holds(id) {
                        self.deleting.remove(&target);
                        self.live.insert(target, id);
                    }
                }
            }
            _ => {}
        }
    }

    /// Whether the pool holds the device of CSI id `id`: the device id, made
    /// by that create transaction (not a newer device that reused the id).
    fn holds(&self, (device, generation): CsiId) -> bool {
        self.kernel.content(thin(device)).is_some() && self.born(device) == Some(generation)
    }

    /// The transaction that made the device now under `device`: the newest
    /// recorded create of the id that did not abort (an id is handed out
    /// again only once the device under it is deleted, so a newer create,
    /// even one still running, is what the pool holds under it).
    fn born(&self, device: u32) -> Option<u64> {
        self.created_by.iter().rev().find(|(t, ids)| ids.contains(&device) && !matches!(self.truth.get(t), Some(Truth::Aborted { .. }))).map(|(t, _)| *t)
    }

    /// The object a delete request's CSI id names (`Devices::find`: by pool
    /// and device label, then the generation), with its name; none when the
    /// CO holds no id for its target (the create never answered one).
    fn target_object(&self, i: usize) -> Option<(String, CsiObject)> {
        let target = self.target(i);
        let (device, generation) = self.deleting.get(&target).or_else(|| self.live.get(&target)).copied()?;
        let ignore = self.mutation == Some(Mutation::LookupIgnoresGeneration);
        self.objects.iter().find(|(_, o)| o.device == device && (ignore || o.txn == generation)).map(|(n, o)| (n.clone(), o.clone()))
    }

    /// [`csi_controller::wait::outcome_in`], or the free-list judgement of
    /// a pruned transaction under [`Mutation::FreeListJudgement`].
    fn outcome(&self, pool: &ThinPool, txn: u64, uid: Option<&str>, subject: csi_controller::wait::Subject, device: u32) -> Result<Option<Finished>, csi_controller::wait::WaitError> {
        let real = csi_controller::wait::outcome_in(pool, txn, uid, subject);
        let pruned = !pool.spec.pending_transactions.iter().any(|p| p.id == txn);
        let reported = pool.status.as_ref().is_some_and(|s| s.aborted(txn).is_some());
        if self.mutation != Some(Mutation::FreeListJudgement) || !pruned || reported || !matches!(real, Ok(Some(_))) {
            return real;
        }
        let free = pool.spec.is_free(thin(device));
        let lost = Finished::Aborted(thin_csi_api::AbortedTransaction { id: txn, reason: thin_csi_api::AbortReason::ReasonLost, message: String::new() });
        Ok(Some(match subject {
            csi_controller::wait::Subject::Create if free => lost,
            csi_controller::wait::Subject::Delete(_) if !free => lost,
            _ => Finished::Committed,
        }))
    }

    /// `Allocator::forget`: drops an aborted create's tombstone once its
    /// object is gone (one immediate write, best effort).
    fn forget(&mut self, txn: u64) {
        if let Some(p) = self.pool.clone() {
            if let Ok(Some(spec)) = csi_controller::alloc::forget(&p, txn) {
                let mut obj = (*p).clone();
                obj.spec = spec;
                self.store_pool(obj);
            }
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
        if cfg.reduce {
            if let Some(only) = self.local_step().or_else(|| self.step_without_pool(cfg).map(|(_, next)| next)) {
                return only;
            }
        }
        self.all_successors(cfg)
    }

    /// Once the pool object is gone for good, a step of a request that
    /// reads only what can no longer change and writes only that request's
    /// own fields, if one is enabled: then it alone is explored (a singleton
    /// ample set; module docs). The pool object is gone for good when it is
    /// missing, the fault budget is spent and the node is up: only a record
    /// write (which needs the version it read to be current), a give-back
    /// (which needs the object), the node's registration (which needs a
    /// restart, which needs the node down, which needs a fault) or the
    /// person (a fault) could bring one, and with none the node has no step
    /// at all. The steps taken so: a create's, snapshot's or delete's wait
    /// or give-back (the answer is NOT_FOUND or the give-back's code), a
    /// create's plan on the read it holds (its refusal, or a 409 and then
    /// NOT_FOUND), a create's or snapshot's lookup of its own object when
    /// that is missing or not ready (NOT_FOUND, or on to its wait) while no
    /// request is at the step that clears stale objects (nothing can reach
    /// it again) and no delete of it is still to run. Each runs on a
    /// request's only execution (a second one needs a fault), answers with
    /// an error (a success writes the ghost state) and, for a delete, only
    /// while it has a retry left (its final failure writes the ghost state),
    /// and is taken only when the state it leads to breaks no invariant.
    fn step_without_pool(&self, cfg: &Config) -> Option<(usize, Vec<(String, World)>)> {
        if self.pool.is_some() || self.faults < cfg.max_faults || !self.node.up {
            return None;
        }
        let clearing = self.reqs.iter().any(|r| r.execs.iter().any(|s| matches!(s, Step::Allocated { .. })));
        for (i, r) in self.reqs.iter().enumerate() {
            let [step] = &r.execs[..] else { continue };
            let alone = match step {
                Step::Wait { .. } | Step::GiveBack { .. } => true,
                Step::DeleteSettle { .. } | Step::DeleteWait { .. } => r.retries_left > 0,
                Step::Plan { .. } => matches!(r.op, Op::Create | Op::CreateNoSpace),
                Step::Start => {
                    r.op.source().is_none_or(|_| matches!(r.op, Op::Snapshot { .. }))
                        && !clearing
                        && !self.objects.get(&r.name).is_some_and(|o| o.ready)
                        && !self.reqs.iter().any(|d| matches!(d.op, Op::Delete { of } | Op::DeleteOpen { of } if of == i) && !d.done())
                }
                _ => false,
            };
            if !alone {
                continue;
            }
            let next = self.controller_step(i, 0, cfg);
            if let [(_, w)] = &next[..] {
                if w.check().is_empty() && !matches!(w.reqs[i].reply, Some(Reply::Ok(_))) {
                    return Some((i, next));
                }
            }
        }
        None
    }

    /// Every enabled action, with no partial-order reduction.
    fn all_successors(&self, cfg: &Config) -> Vec<(String, World)> {
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
                    if let Some(id) = w.live.remove(&target) {
                        w.deleting.insert(target, id);
                    }
                }
                if let Op::Delete { of } = r.op {
                    // The kubelet unstages before the CO deletes.
                    if let Some((d, _)) = w.deleting.get(&w.reqs[of].name).copied() {
                        if w.mounted.remove(&d) {
                            let k = Rc::make_mut(&mut w.kernel);
                            let _ = k.close(thin(d));
                            let _ = k.deactivate_thin(thin(d));
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
                    w.reqs[i].reply = Some(Reply::Err(Code::Unavailable));
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

    /// A step that commutes with every other and that no check can see, if
    /// one is enabled: then it alone is explored here (a singleton ample
    /// set). The CO issuing a create or snapshot, or retrying a request
    /// that has no execution running, writes only that request's own
    /// `started`/`execs`/`retries_left`, which no other actor's step reads
    /// or writes (a later request reads `started`, but cannot run before it
    /// is set; `done()` stays false) and no invariant reads; it disables
    /// nothing. So any path that runs other steps first reaches, with this
    /// step moved to the front, the same states up to ones that differ only
    /// in these fields and carry the same invariants. Each such step
    /// consumes a finite resource (an unissued request, a retry), so no
    /// cycle repeats it and nothing is postponed forever. A delete's issue
    /// is not one: the kubelet's unstage touches the kernel and the ghost
    /// state the invariants read.
    fn local_step(&self) -> Option<Vec<(String, World)>> {
        for (i, r) in self.reqs.iter().enumerate() {
            let issue = !r.started && self.request_ready(i) && matches!(r.op, Op::Create | Op::CreateNoSpace | Op::Snapshot { .. } | Op::SnapshotUnfrozen { .. });
            let retry = r.started && r.execs.is_empty() && !r.done();
            if issue || retry {
                let mut w = self.clone();
                w.reqs[i].started = true;
                w.reqs[i].execs.push(Step::Start);
                if retry {
                    w.reqs[i].retries_left -= 1;
                }
                let label = if retry { format!("retry {}", r.name) } else { format!("issue {} {:?}", r.name, r.op) };
                return Some(vec![(label, w)]);
            }
        }
        None
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
                        Some(p) => w.reqs[i].execs[e] = Step::Plan { read: p.clone() },
                    },
                }
                out.push((label("looks up its object / reads the pool"), w));
            }
            Step::Plan { read } => {
                let request = match r.op {
                    Op::Snapshot { of } | Op::SnapshotUnfrozen { of } => match self.live.get(&self.reqs[of].name) {
                        Some((d, _)) => Alloc::CreateSnapshot { origin: thin(*d) },
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
                            Some(p) => w.reqs[i].execs[e] = Step::Plan { read: p.clone() },
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
                    // clear_stale: only older generations of the same record.
                    Rc::make_mut(&mut w.objects).retain(|_, o| o.device != device || o.txn >= txn || (o.pool_uid.is_some() && uid.is_some() && o.pool_uid != uid));
                    let exists = w.objects.contains_key(&r.name);
                    if outcome.takes_effect() && !exists {
                        Rc::make_mut(&mut w.objects).insert(r.name.clone(), CsiObject { device, txn, pool_uid: uid.clone(), ready: false });
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
                match self.outcome(pool, txn, uid.as_deref(), csi_controller::wait::Subject::Create, device) {
                    Ok(None) => {} // blocked until the status changes
                    Err(err) => {
                        if matches!(err, csi_controller::wait::WaitError::TransactionUnknown { .. }) {
                            Rc::make_mut(&mut w.objects).remove(&r.name); // its record is gone
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
                        // Its object (this create's, not one re-made under the name), then its tombstone.
                        if w.objects.get(&r.name).is_some_and(|o| o.txn == txn) {
                            Rc::make_mut(&mut w.objects).remove(&r.name);
                            w.forget(txn);
                        }
                        let code = csi_controller::controller::aborted_create(POOL, aborted).code();
                        w.reply(i, e, Reply::Err(code));
                        out.push((label(&format!("sees transaction {txn} aborted")), w));
                    }
                }
            }
            Step::GiveBack { txn, device, code } => {
                let done = match &self.pool {
                    None => Some(Err(false)),
                    Some(p) => match self.outcome(p, txn, None, csi_controller::wait::Subject::Create, device) {
                        Ok(None) => None,
                        Ok(Some(Finished::Committed)) => Some(Ok(())),
                        Ok(Some(Finished::Aborted(_))) => Some(Err(true)),
                        Err(_) => Some(Err(false)),
                    },
                };
                if let Some(committed) = done {
                    match committed {
                        Ok(()) => w.give_back(device, txn),
                        Err(true) => w.forget(txn),
                        Err(false) => {}
                    }
                    w.reply(i, e, Reply::Err(code));
                    out.push((label(&format!("gives back device {device}")), w));
                }
            }
            Step::MarkReady { device, txn } => {
                // A replace at the version read (`Devices::mark_ready`): only
                // the object of the awaited create; one re-made under the
                // name since is another create's (ABORTED).
                if self.objects.get(&r.name).is_some_and(|o| o.txn != txn) {
                    w.reply(i, e, Reply::Err(Code::Aborted));
                    out.push((label("finds its object re-created, another create's"), w));
                    return out;
                }
                for outcome in Write::all(self, cfg) {
                    let mut w = self.clone();
                    if outcome.takes_effect() {
                        if let Some(o) = Rc::make_mut(&mut w.objects).get_mut(&r.name) {
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
                match self.target_object(i).map(|(_, o)| o) {
                    None => w.reply(i, e, Reply::Ok(0)),
                    Some(o) if !o.ready => w.reqs[i].execs[e] = Step::DeleteSettle { txn: o.txn },
                    Some(_) => match &w.pool {
                        // The device's record is gone: it cannot be deleted now.
                        None => w.reply(i, e, Reply::Err(Code::Unavailable)),
                        Some(p) => w.reqs[i].execs[e] = Step::DeletePlan { read: p.clone() },
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
                let device = self.target_object(i).map_or(u32::MAX, |(_, o)| o.device);
                match self.outcome(pool, txn, None, csi_controller::wait::Subject::Create, device) {
                    Ok(None) => {}
                    Err(_) => {
                        w.reply(i, e, Reply::Err(Code::Unavailable));
                        out.push((label("settles: pool unhealthy"), w));
                    }
                    Ok(Some(Finished::Aborted(_))) => {
                        if let Some((name, _)) = self.target_object(i) {
                            Rc::make_mut(&mut w.objects).remove(&name);
                            w.forget(txn);
                        }
                        w.reply(i, e, Reply::Ok(0));
                        out.push((label("settles: its create aborted, nothing to delete"), w));
                    }
                    Ok(Some(Finished::Committed)) => {
                        match &w.pool {
                            Some(p) => w.reqs[i].execs[e] = Step::DeletePlan { read: p.clone() },
                            None => w.reply(i, e, Reply::Err(Code::Unavailable)),
                        }
                        out.push((label("settles: its create committed"), w));
                    }
                }
            }
            Step::DeletePlan { read } => {
                let Some(device) = self.target_object(i).map(|(_, o)| o.device) else {
                    w.reply(i, e, Reply::Ok(0));
                    out.push((label("its object is gone"), w));
                    return out;
                };
                let current_rv = self.pool.as_ref().and_then(|p| p.metadata.resource_version.clone());
                let generation = self.target_object(i).map_or(0, |(_, o)| o.txn);
                match plan(&read, &[Alloc::DeleteOf { id: thin(device), generation }]) {
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
                            Some(p) => w.reqs[i].execs[e] = Step::DeletePlan { read: p.clone() },
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
                let device = self.target_object(i).map_or(ThinId::MAX.get(), |(_, o)| o.device);
                match self.outcome(pool, txn, uid.as_deref(), csi_controller::wait::Subject::Delete(thin(device)), device) {
                    Ok(None) => {}
                    Err(_) => {
                        w.reply(i, e, Reply::Err(Code::Unavailable));
                        out.push((label("delete waits: pool unhealthy"), w));
                    }
                    Ok(Some(Finished::Committed)) => {
                        w.reqs[i].execs[e] = Step::DeleteObject;
                        out.push((label(&format!("sees delete {txn} committed")), w));
                    }
                    Ok(Some(Finished::Aborted(_))) if w.mutation == Some(Mutation::AbortedDeleteSucceeds) => {
                        w.reqs[i].execs[e] = Step::DeleteObject;
                        out.push((label(&format!("sees delete {txn} aborted, takes it for done")), w));
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
                        if let Some((name, _)) = self.target_object(i) {
                            Rc::make_mut(&mut w.objects).remove(&name);
                        }
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
                if !p.created.is_empty() {
                    w.created_by.insert(p.transaction.id().get(), p.created.iter().map(|d| d.get()).collect());
                }
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
    fn give_back(&mut self, device: u32, generation: u64) {
        if let Some(p) = self.pool.clone() {
            if let Ok(plan) = plan(&p, &[Alloc::DeleteOf { id: thin(device), generation }]) {
                let mut obj = (*p).clone();
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
            if v != current && (can_fault || self.node.retry) {
                views.push((v.clone(), !self.node.retry));
            }
        }
        for (view, stale) in views {
            // A run without a crash; it also counts the kernel steps it takes
            // and keeps what each one left.
            let mut snaps = Vec::new();
            let clean = self.reconcile(&view, None, Some(&mut snaps), self.faults + (stale as u8) < cfg.max_faults);
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
                debug_assert_eq!(snaps.len() as u64, steps);
                for k in 1..=steps {
                    for power in [false, true] {
                        let crashed = if cfg.reduce { Some(self.crashed_at(&view, &snaps[k as usize - 1], power)) } else { self.crash_by_rerun(&view, k, power) };
                        if let Some(mut w) = crashed {
                            w.faults += 1;
                            let what = if power { "loses power" } else { "crashes" };
                            out.push((format!("FAULT node {what} after kernel step {k} of its run"), w));
                        }
                    }
                }
            }
        }
        if can_fault {
            let mut w = self.clone();
            w.faults += 1;
            w.node_goes_down(false);
            out.push(("FAULT node process restarts".into(), w));
        }
        out
    }

    /// The node run on `view` killed right after kernel step `k`, by running
    /// it again with the kernel set to die there (the plain search).
    fn crash_by_rerun(&self, view: &Rc<ThinPool>, k: u64, power: bool) -> Option<World> {
        let (ws, _) = self.reconcile(view, Some((k, power)), None, false)?;
        ws.into_iter().next().map(|(_, w)| w).filter(|w| !w.node.up)
    }

    /// The same from the clean run's snapshot after that step: the run is
    /// deterministic, so up to step `k` a run that dies there did exactly
    /// what the clean run did (a test checks the two agree).
    fn crashed_at(&self, view: &Rc<ThinPool>, snap: &Snap, power: bool) -> World {
        let mut w = self.clone();
        w.kernel = Rc::new(snap.0.clone());
        w.truth = snap.1.clone();
        w.node.view = Some(view.clone());
        w.node.executor = None; // a new process starts with a new one
        w.node_goes_down(power);
        w
    }

    /// The node process dies (`power`: the VM loses power too, so nothing
    /// stays mounted and the kernel forgets what was active).
    fn node_goes_down(&mut self, power: bool) {
        if power {
            Rc::make_mut(&mut self.kernel).power_cycle();
            self.mounted.clear();
        } else {
            Rc::make_mut(&mut self.kernel).restart();
        }
        self.node.up = false;
    }

    /// One reconcile of the node on `view`, as `PoolExecutor::reconcile`
    /// runs it: skip a spec already reconciled, drive, believe a divergence
    /// only on a fresh read, write the status as a merge patch from the one
    /// it read. Returns the worlds for each status-write outcome and the
    /// number of kernel steps the run took. `crash`: die after that many
    /// kernel steps (`true`: the machine loses power).
    fn reconcile(&self, view: &Rc<ThinPool>, crash: Option<(u64, bool)>, mut snaps: Option<&mut Vec<Snap>>, write_faults: bool) -> Option<(Vec<(Write, World)>, u64)> {
        let seen = (view.metadata.uid.clone(), view.metadata.generation);
        if !self.node.retry && self.node.done.as_ref().is_some_and(|d| d.0 == seen.0 && d.1 >= seen.1) {
            return None;
        }
        let mut w = self.clone();
        w.node.view = Some(view.clone());
        let before = w.kernel.steps();
        if let Some((k, _)) = crash {
            Rc::make_mut(&mut w.kernel).crash_after(k);
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
            let mut progress = {
                let mut rec = Recorder { k: Rc::make_mut(&mut w.kernel), txns: &txns, truth: &mut w.truth, no_space: BTreeSet::new(), snaps: snaps.as_deref_mut() };
                executor.drive(&mut rec, &record, &mut ())
            };
            if w.mutation == Some(Mutation::AbortReportedCommitted) {
                // As before the fix: a transaction found ended after a lost
                // report counts as committed, whatever the kernel did.
                for (_, ended) in &mut progress.ended {
                    if matches!(ended, thinpool::executor::Ended::Aborted { kind: thinpool::AbortKind::ReasonLost, .. }) {
                        *ended = thinpool::executor::Ended::Committed;
                    }
                }
            }
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
            w.node_goes_down(power);
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
        // The object after the patch, as the apiserver applies it (the same
        // whether or not the reply then gets lost).
        let mut patched: Option<ThinPool> = None;
        let mut defects = Vec::new();
        if let Some(cur) = &w.pool {
            let mut value = serde_json::json!({ "status": cur.status });
            let patch = if w.mutation == Some(Mutation::PlainStatusPatch) { serde_json::json!({ "status": status }) } else { status.merge_patch_from(&old) };
            merge(&mut value, &patch);
            let after: Option<thin_csi_api::ThinPoolStatus> = serde_json::from_value(value["status"].take()).expect("merged status parses");
            if after.as_ref() != Some(&status) {
                defects.push(format!("the node's status write left fields it meant to clear: wrote {status:?}, object has {after:?}"));
            }
            if after != cur.status {
                let mut obj = (**cur).clone();
                obj.status = after;
                patched = Some(obj);
            } else if pool.metadata.resource_version == cur.metadata.resource_version {
                // It knew the object and wrote what it already said.
                w.node_defects.extend(defects);
                w.node_defects.push("the node wrote a status that changed nothing (it re-triggers itself)".into());
                return Some((vec![(Write::Ok, w)], steps));
            }
            // Else it reconciled an old copy (a retry before the watch
            // brought its own last write): the apiserver applies a patch
            // that changes nothing as a no-op (no new resourceVersion, no
            // event), so nothing is re-triggered.
        }
        let outcomes: &[Write] = if write_faults { &[Write::Ok, Write::Failed, Write::Lost] } else { &[Write::Ok] };
        for &outcome in outcomes {
            let mut w = w.clone();
            if outcome.takes_effect() {
                w.node_defects.extend(defects.iter().cloned());
                if let Some(obj) = &patched {
                    w.store_pool(obj.clone());
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
        for (name, &(d, generation)) in &self.live {
            // Its device: the id, made by its create transaction (not a newer
            // device that reused the id).
            if !self.holds((d, generation)) {
                v.push(format!("CSI create {name} succeeded with device {d} (created by transaction {generation}), which the pool does not hold"));
            }
            if let Some(other) = owners.insert(d, name) {
                v.push(format!("device {d} belongs to two live volumes: {other} and {name}"));
            }
            match self.objects.get(name) {
                Some(o) if o.device == d && o.txn == generation => {}
                _ => v.push(format!("the object of live volume {name} (device {d}) was removed or changed")),
            }
            if let Some(p) = &self.pool {
                if p.spec.devices_unknown_at_transaction.is_none() && p.spec.is_free(thin(d)) {
                    v.push(format!("device {d} of live volume {name} is free in the record"));
                }
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
            for r in &p.spec.free_device_ranges {
                if let Some(d) = devices.range(r.first..=r.last).next() {
                    v.push(format!("device id {d} is in a free range ({}..={}) but the pool holds it", r.first, r.last));
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
            if let Some(reply) = &r.reply {
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
    // Key → the fewest faults it was explored with.
    let mut seen: HashMap<Fingerprint, u8> = HashMap::new();
    let mut reported: BTreeSet<String> = BTreeSet::new();
    let start = World::new(ops, cfg);
    let key = start.key(cfg);
    // Each entry: a state, its key, and the successor indices that reach it
    // from the start (labels are rebuilt only for a violation's path).
    let mut stack: Vec<(World, Fingerprint, Vec<u16>)> = vec![(start, key, vec![])];
    let covered = |seen: &HashMap<Fingerprint, u8>, key: &Fingerprint, faults: u8| seen.get(key).is_some_and(|f| *f <= faults);
    let mut parts: Option<Vec<HashSet<u64>>> = std::env::var_os("FAULTS_DEBUG").map(|_| vec![HashSet::new(); 6]);
    let mut longest: Vec<u16> = Vec::new();
    while let Some((w, own, path)) = stack.pop() {
        if covered(&seen, &own, w.faults) {
            continue;
        }
        if seen.insert(own, w.faults).is_some() {
            report.revisits += 1;
        }
        report.states += 1;
        if let Some(parts) = parts.as_mut() {
            for (set, k) in parts.iter_mut().zip(w.part_keys(cfg)) {
                set.insert(k);
            }
            if path.len() > longest.len() {
                longest = path.clone();
            }
        }
        if report.states as usize >= cfg.max_states {
            report.truncated = true;
            break;
        }
        let mut found = w.check();
        // Steps that change nothing (a node retrying a blocked transaction on
        // a read-only pool) do not keep a state from being an end state.
        let next: Vec<(u16, World, Fingerprint)> = w
            .successors(cfg)
            .into_iter()
            .enumerate()
            .map(|(i, (_, n))| {
                let k = n.key(cfg);
                (i as u16, n, k)
            })
            .filter(|(_, _, k)| *k != own)
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
                    report.violations.push(Violation { what, path: replay(ops, cfg, &path) });
                }
            }
            continue; // do not explore beyond a broken state
        }
        for (i, nw, k) in next.into_iter().rev() {
            if covered(&seen, &k, nw.faults) {
                continue;
            }
            let mut p = path.clone();
            p.push(i);
            stack.push((nw, k, p));
        }
    }
    if let Some(parts) = parts {
        eprintln!("  distinct kernel, pool, objects, node, requests, ghost: {:?}", parts.iter().map(|p| p.len()).collect::<Vec<_>>());
        eprintln!("  a longest path ({} steps):", longest.len());
        for l in replay(ops, cfg, &longest) {
            eprintln!("    {l}");
        }
    }
    report
}

/// The labels of the path that successor indices `path` take from the start.
fn replay(ops: &[Op], cfg: &Config, path: &[u16]) -> Vec<String> {
    let mut w = World::new(ops, cfg);
    let mut labels = Vec::new();
    for &i in path {
        let (label, next) = w.successors(cfg).swap_remove(i as usize);
        labels.push(label);
        w = next;
    }
    labels
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
            next.push(Op::SnapshotUnfrozen { of: c });
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
                if let Op::Snapshot { of } | Op::SnapshotUnfrozen { of } | Op::Delete { of } | Op::DeleteOpen { of } = op {
                    assert!(*of < i && ops[*of] == Op::Create, "{ops:?}");
                }
            }
        }
    }

    fn kinds(r: &Report) -> BTreeSet<String> {
        r.violations.iter().map(|v| v.what.chars().filter(|c| !c.is_ascii_digit()).collect()).collect()
    }

    /// Each defect put back is found, within a small search, and the same
    /// search without it finds nothing: every check here can fail.
    #[test]
    fn every_defect_put_back_is_found() {
        let open_delete: &[Op] = &[Op::Create, Op::DeleteOpen { of: 0 }];
        let cases: [(Mutation, &[Op], u8, &str); 4] = [
            (Mutation::PlainStatusPatch, open_delete, 1, "left fields it meant to clear"),
            (Mutation::AbortReportedCommitted, open_delete, 1, "aborted but is reported committed"),
            (Mutation::RecordNotMarked, &[Op::Create], 2, "cursor"),
            (Mutation::AbortedDeleteSucceeds, open_delete, 0, "succeeded but device"),
        ];
        for (m, ops, faults, what) in cases {
            let clean = explore(ops, &Config { max_faults: faults, ..Config::default() });
            assert!(clean.violations.is_empty() && !clean.truncated, "{ops:?} without {m:?}: {:?}", clean.violations);
            let r = explore(ops, &Config { max_faults: faults, mutation: Some(m), ..Config::default() });
            assert!(r.violations.iter().any(|v| v.what.contains(what)), "{m:?} on {ops:?} with {faults} faults: not found; {:?}", kinds(&r));
            // The printed path replays to the broken state.
            assert!(r.violations.iter().all(|v| !v.path.is_empty()), "{m:?}");
        }
    }

    /// The reductions (module docs) merge states but lose no violation: on
    /// small scenarios, with and without each defect, the reduced search
    /// finds the same kinds of violation as the plain one, in fewer states.
    #[test]
    fn the_reductions_lose_no_violation() {
        let scenarios: [(&[Op], u8, u8); 7] = [
            (&[Op::Create], 2, 1),
            (&[Op::CreateNoSpace], 2, 1),
            (&[Op::Create, Op::DeleteOpen { of: 0 }], 1, 1),
            (&[Op::Create], 1, 2),
            // Interchangeable requests (symmetry).
            (&[Op::Create, Op::Create], 1, 1),
            (&[Op::Create, Op::Create], 1, 2),
            (&[Op::Create, Op::Create, Op::Create], 0, 1),
        ];
        for (ops, faults, replicas) in scenarios {
            for m in std::iter::once(None).chain(Mutation::ALL.map(Some)) {
                let cfg = Config { max_faults: faults, replicas, mutation: m, ..Config::default() };
                let reduced = explore(ops, &cfg);
                let plain = explore(ops, &Config { reduce: false, ..cfg });
                assert!(!reduced.truncated && !plain.truncated);
                assert_eq!(kinds(&reduced), kinds(&plain), "{ops:?} {m:?} faults {faults} replicas {replicas}");
                assert!(reduced.states <= plain.states, "{ops:?} {m:?}: {} > {}", reduced.states, plain.states);
            }
        }
    }

    /// A crash world built from the clean run's snapshot is the one a run
    /// that dies at that step leaves, in every state of small searches.
    #[test]
    fn crash_snapshots_equal_crashed_runs() {
        let mut compared = 0;
        for ops in [&[Op::Create, Op::Snapshot { of: 0 }][..], &[Op::CreateNoSpace], &[Op::Create, Op::DeleteOpen { of: 0 }]] {
            let cfg = Config { max_faults: 1, ..Config::default() };
            let mut stack = vec![World::new(ops, &cfg)];
            let mut seen = HashMap::new();
            while let Some(w) = stack.pop() {
                if seen.insert(w.key(&cfg), ()).is_some() {
                    continue;
                }
                if let (true, Some(view)) = (w.node.up, w.pool.clone()) {
                    let mut snaps = Vec::new();
                    if let Some((_, steps)) = w.reconcile(&view, None, Some(&mut snaps), false) {
                        assert_eq!(snaps.len() as u64, steps);
                        for k in 1..=steps {
                            for power in [false, true] {
                                let rerun = w.crash_by_rerun(&view, k, power).expect("the run takes k steps");
                                let snap = w.crashed_at(&view, &snaps[k as usize - 1], power);
                                assert!(rerun.key(&cfg) == snap.key(&cfg), "{ops:?} step {k} power {power}");
                                compared += 1;
                            }
                        }
                    }
                }
                if w.check().is_empty() {
                    stack.extend(w.successors(&cfg).into_iter().map(|(_, n)| n));
                }
            }
        }
        assert!(compared > 100, "{compared}");
    }

    /// `w` with requests `a` and `b` (of the same op) swapped: their steps,
    /// answers and retries, and the objects and ghost entries their names hold.
    fn swapped(w: &World, a: usize, b: usize) -> World {
        let mut s = w.clone();
        let (na, nb) = (w.reqs[a].name.clone(), w.reqs[b].name.clone());
        s.reqs.swap(a, b);
        s.reqs[a].name = na.clone();
        s.reqs[b].name = nb.clone();
        let rename = |n: &String| if *n == na { nb.clone() } else if *n == nb { na.clone() } else { n.clone() };
        s.objects = Rc::new(w.objects.iter().map(|(n, o)| (rename(n), o.clone())).collect());
        s.live = w.live.iter().map(|(n, d)| (rename(n), *d)).collect();
        s.deleting = w.deleting.iter().map(|(n, d)| (rename(n), *d)).collect();
        s
    }

    /// The symmetry the key relies on holds: in every state of small
    /// searches, swapping two interchangeable requests gives a state with
    /// the same key, the same violations, and successors with the same keys.
    #[test]
    fn interchangeable_requests_are_symmetric() {
        let mut compared = 0;
        let cases: [(&[Op], u8, u8, (usize, usize)); 3] = [(&[Op::Create, Op::Create], 1, 1, (0, 1)), (&[Op::Create, Op::Create], 1, 2, (0, 1)), (&[Op::Create, Op::Create, Op::Create], 0, 1, (1, 2))];
        for (ops, max_faults, replicas, (a, b)) in cases {
            let cfg = Config { max_faults, replicas, ..Config::default() };
            let mut stack = vec![World::new(ops, &cfg)];
            let mut seen = HashSet::new();
            while let Some(w) = stack.pop() {
                if !seen.insert(w.key(&Config { reduce: false, ..cfg })) {
                    continue;
                }
                if w.reqs[a].started && w.reqs[b].started {
                    let s = swapped(&w, a, b);
                    assert!(s.key(&cfg) == w.key(&cfg), "{ops:?}");
                    let strip = |v: Vec<String>| -> BTreeSet<String> { v.into_iter().map(|x| x.chars().filter(|c| !c.is_ascii_digit()).collect()).collect() };
                    assert_eq!(strip(s.check()), strip(w.check()));
                    let keys = |w: &World| -> Vec<Fingerprint> {
                        let mut k: Vec<Fingerprint> = w.all_successors(&cfg).iter().map(|(_, n)| n.key(&cfg)).collect();
                        k.sort();
                        k
                    };
                    assert_eq!(keys(&s), keys(&w), "{ops:?}");
                    compared += 1;
                }
                if w.check().is_empty() {
                    stack.extend(w.successors(&Config { reduce: false, ..cfg }).into_iter().map(|(_, n)| n));
                }
            }
        }
        assert!(compared > 1000, "{compared}");
    }

    /// The steps taken alone once the pool object is gone for good commute
    /// with every other enabled step: in every state of small searches
    /// where one is taken, each other step `u` can still run after it and
    /// it after `u`, and both orders reach the same key.
    #[test]
    fn steps_without_the_pool_commute() {
        let mut compared = 0;
        for (ops, max_faults) in [(&[Op::Create, Op::Create][..], 1), (&[Op::Create, Op::DeleteOpen { of: 0 }], 1), (&[Op::Create, Op::Snapshot { of: 0 }], 1), (&[Op::CreateNoSpace, Op::Create], 1)] {
            let cfg = Config { max_faults, ..Config::default() };
            let mut stack = vec![World::new(ops, &cfg)];
            let mut seen = HashSet::new();
            while let Some(w) = stack.pop() {
                if !seen.insert(w.key(&cfg)) {
                    continue;
                }
                if let Some((i, t)) = w.step_without_pool(&cfg) {
                    let (t_label, tw) = &t[0];
                    for (label, uw) in w.all_successors(&cfg).into_iter().filter(|(l, _)| l != t_label) {
                        let after_u = uw.controller_step(i, 0, &cfg);
                        assert_eq!(after_u.len(), 1, "{ops:?}: {t_label} after {label}");
                        let after_t: Vec<_> = tw.all_successors(&cfg).into_iter().filter(|(l, _)| *l == label).collect();
                        assert_eq!(after_t.len(), 1, "{ops:?}: {label} after {t_label}");
                        assert!(after_u[0].1.key(&cfg) == after_t[0].1.key(&cfg), "{ops:?}: {t_label} and {label}");
                        compared += 1;
                    }
                }
                if w.check().is_empty() {
                    stack.extend(w.all_successors(&cfg).into_iter().map(|(_, n)| n));
                }
            }
        }
        assert!(compared > 100, "{compared}");
    }

    #[test]
    fn the_merge_patch_model_clears_nulls() {
        let mut v = serde_json::json!({"a": 1, "b": {"c": 2, "d": 3}});
        merge(&mut v, &serde_json::json!({"a": null, "b": {"c": null}}));
        assert_eq!(v, serde_json::json!({"b": {"d": 3}}));
    }
}
