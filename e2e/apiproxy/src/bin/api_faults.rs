//! The api-faults suite's driver (e2e/suites/api-faults.sh): CSI calls to a
//! csi-controller whose API traffic, and that of csi-node in the VM, goes
//! through thin-apiproxy, with one fault injected per scenario. KUBECONFIG
//! is the direct (unproxied) admin config: every check reads the truth.
//!
//!   api-faults pool NODE                         wait for NODE's ThinPool; prints `POOL node name`
//!   api-faults run CONTROL CSI POOL NODE STATE [FILTER]
//!                                                every scenario (those whose name contains FILTER)
//!   api-faults settled POOL                      every transaction ended, kernel at the last one
//!   api-faults final POOL STATE DEVICES_LINE     the node's device listing against the objects
//!
//! CONTROL is the proxy's control address (127.0.0.1:PORT), CSI the
//! controller's port. STATE collects what the final check needs: the
//! devices deleted through CSI and the leak budget.
//! Each check prints `PASS name (detail)` or `FAIL name (why)`; `---` lines
//! are the harness's notes (which attempt failed how, what was injected).


use std::collections::BTreeSet;
use std::io::Write;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use csi_controller::params::DeviceRef;
use csi_controller::wait::{wait_finished, Finished};
use csi_controller::Request as Op;
use csi_proto::v1::controller_client::ControllerClient;
use csi_proto::v1::volume_capability::{access_mode::Mode, AccessMode, AccessType, MountVolume};
use csi_proto::v1::*;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use report::Report;
use serde_json::json;
use thin_csi_api::{hooks, object_name, AbortReason, PoolHealth, ThinPool, ThinSnapshot, ThinVolume};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::transport::Channel;

type Result<T> = std::result::Result<T, String>;

const KEY: &str = "topology.thin.csi.io/node";
const GROUP: &str = "/apis/thin.csi.io/v1alpha1";
/// The sidecars' per-call deadline (external-provisioner's default --timeout).
const DEADLINE: Duration = Duration::from_secs(10);
/// Held longer than DEADLINE: the caller gives up before the reply is dropped.
const HOLD_MS: u64 = 12_000;
const ATTEMPTS: usize = 8;

// ---- the proxy's control port -------------------------------------------

async fn control(addr: &str, method: &str, path: &str, body: &str) -> Result<String> {
    let mut s = tokio::net::TcpStream::connect(addr).await.map_err(|e| format!("proxy control {addr}: {e}"))?;
    let req = format!("{method} {path} HTTP/1.1\r\nHost: proxy\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
    s.write_all(req.as_bytes()).await.map_err(|e| e.to_string())?;
    let mut out = String::new();
    s.read_to_string(&mut out).await.map_err(|e| e.to_string())?;
    let (head, text) = out.split_once("\r\n\r\n").ok_or("proxy control: no reply")?;
    if !head.starts_with("HTTP/1.1 200") {
        return Err(format!("proxy control {method} {path}: {head}: {text}"));
    }
    Ok(text.to_string())
}

/// Waits until the proxy holds no reply: a held one blocks its client (the
/// node's status loop, say) into the next scenario.
async fn unheld(addr: &str) -> Result<()> {
    let t0 = Instant::now();
    while control(addr, "GET", "/held", "").await?.trim() != "0" {
        if t0.elapsed() > Duration::from_secs(60) {
            return Err("the proxy still holds a reply after 60 s".into());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}

async fn set_rules(addr: &str, rules: &[String]) -> Result<()> {
    control(addr, "PUT", "/rules", &rules.join("\n")).await.map(|_| ())
}

/// How many of the rules fired (each fires at most once).
async fn fired(addr: &str) -> Result<usize> {
    Ok(control(addr, "GET", "/rules", "").await?.lines().filter(|l| l.ends_with("fired=true")).count())
}

// ---- CSI, retried as a sidecar would ------------------------------------

async fn csi(port: &str) -> Result<ControllerClient<Channel>> {
    ControllerClient::connect(format!("http://127.0.0.1:{port}")).await.map_err(|e| e.to_string())
}

fn deadline<T>(msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.set_timeout(DEADLINE);
    r
}

fn volume_req(name: &str, node: &str) -> CreateVolumeRequest {
    let topo = Topology { segments: [(KEY.to_string(), node.to_string())].into() };
    CreateVolumeRequest {
        name: name.into(),
        capacity_range: Some(CapacityRange { required_bytes: 16 << 20, limit_bytes: 0 }),
        volume_capabilities: vec![VolumeCapability {
            access_type: Some(AccessType::Mount(MountVolume::default())),
            access_mode: Some(AccessMode { mode: Mode::SingleNodeWriter as i32 }),
        }],
        accessibility_requirements: Some(TopologyRequirement { requisite: vec![topo.clone()], preferred: vec![topo] }),
        ..Default::default()
    }
}

/// The CSI operation a scenario runs (its setup made the objects it needs).
#[derive(Clone, Copy, Debug, PartialEq)]
enum Call {
    CreateVolume,
    CreateSnapshot,
    DeleteVolume,
    DeleteSnapshot,
}

/// One attempt; Ok(the id created or deleted).
async fn attempt(c: &mut ControllerClient<Channel>, call: Call, name: &str, node: &str, id: &str) -> std::result::Result<String, tonic::Status> {
    match call {
        Call::CreateVolume => c.create_volume(deadline(volume_req(name, node))).await?.into_inner().volume.map(|v| v.volume_id),
        Call::CreateSnapshot => {
            let req = CreateSnapshotRequest { source_volume_id: id.into(), name: name.into(), ..Default::default() };
            c.create_snapshot(deadline(req)).await?.into_inner().snapshot.map(|s| s.snapshot_id)
        }
        Call::DeleteVolume => c.delete_volume(deadline(DeleteVolumeRequest { volume_id: id.into(), ..Default::default() })).await.map(|_| Some(id.to_string()))?,
        Call::DeleteSnapshot => c.delete_snapshot(deadline(DeleteSnapshotRequest { snapshot_id: id.into(), ..Default::default() })).await.map(|_| Some(id.to_string()))?,
    }
    .ok_or_else(|| tonic::Status::internal("empty reply"))
}

/// Retries until success, as the sidecars do (they retry every error;
/// ALREADY_EXISTS and INVALID_ARGUMENT would never heal, so those end it).
async fn retried(port: &str, call: Call, name: &str, node: &str, id: &str) -> (Result<String>, Vec<String>) {
    let mut notes = Vec::new();
    for n in 1..=ATTEMPTS {
        let mut c = match csi(port).await {
            Ok(c) => c,
            Err(e) => return (Err(e), notes),
        };
        let t0 = Instant::now();
        match attempt(&mut c, call, name, node, id).await {
            Ok(id) => {
                notes.push(format!("attempt {n}: OK {id} in {:.1} s", t0.elapsed().as_secs_f64()));
                return (Ok(id), notes);
            }
            Err(s) => {
                let msg: String = s.message().chars().take(160).collect();
                notes.push(format!("attempt {n}: {:?} after {:.1} s: {msg}", s.code(), t0.elapsed().as_secs_f64()));
                if matches!(s.code(), tonic::Code::AlreadyExists | tonic::Code::InvalidArgument) {
                    return (Err(format!("{:?}: {}", s.code(), s.message())), notes);
                }
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    (Err(format!("no success in {ATTEMPTS} attempts")), notes)
}

// ---- the truth, read directly --------------------------------------------

struct Ctx {
    pools: Api<ThinPool>,
    volumes: Api<ThinVolume>,
    snapshots: Api<ThinSnapshot>,
}

impl Ctx {
    /// Every device named by an object of `pool`; Err if one is named twice.
    async fn named(&self, pool: &str) -> Result<BTreeSet<u32>> {
        let lp = ListParams::default().labels(&format!("{}={pool}", thin_csi_api::LABEL_POOL));
        let mut seen: Vec<(u32, String)> = Vec::new();
        for v in self.volumes.list(&lp).await.map_err(|e| e.to_string())?.items {
            seen.push((v.spec.device_id.get(), v.metadata.name.unwrap_or_default()));
        }
        for s in self.snapshots.list(&lp).await.map_err(|e| e.to_string())?.items {
            seen.push((s.spec.device_id.get(), s.metadata.name.unwrap_or_default()));
        }
        let mut set = BTreeSet::new();
        for (id, _) in &seen {
            if !set.insert(*id) {
                let both: Vec<_> = seen.iter().filter(|(d, _)| d == id).map(|(_, n)| n.as_str()).collect();
                return Err(format!("device {id} named by two objects: {both:?}"));
            }
        }
        Ok(set)
    }

    /// Waits (up to `limit`) until every assigned transaction has ended and
    /// the kernel is at the last one: the transaction ids are dense and the
    /// pool is not stuck. Returns the last transaction id.
    async fn settled(&self, pool: &str, limit: Duration) -> Result<u64> {
        let t0 = Instant::now();
        loop {
            let p = self.pools.get(pool).await.map_err(|e| e.to_string())?;
            let s = p.status.clone().unwrap_or_default();
            let last = p.spec.last_assigned_transaction;
            if s.health == Some(PoolHealth::Unhealthy) {
                return Err(format!("pool unhealthy: {:?}", s.last_error));
            }
            if p.finished_transaction() == last && s.kernel_transaction == Some(last) {
                return Ok(last);
            }
            if t0.elapsed() > limit {
                return Err(format!("after {limit:?}: last assigned {last}, finished {}, kernel {:?}, last error {:?}", p.finished_transaction(), s.kernel_transaction, s.last_error));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The device and readiness of the object `name` (a CSI name) names.
    async fn object(&self, snapshot: bool, name: &str) -> Result<Option<(u32, bool)>> {
        let obj = object_name(name);
        Ok(if snapshot {
            self.snapshots.get_opt(&obj).await.map_err(|e| e.to_string())?.map(|s| (s.spec.device_id.get(), s.status.is_some_and(|s| s.ready)))
        } else {
            self.volumes.get_opt(&obj).await.map_err(|e| e.to_string())?.map(|v| (v.spec.device_id.get(), v.status.is_some_and(|s| s.ready)))
        })
    }
}

// ---- scenarios -----------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Csi(Call),
    /// A transaction the kernel aborts (a snapshot of a device the pool does
    /// not hold), recorded by hand: the node's status write after an abort.
    Abort,
}

/// Where the fault hits: which write, as a rule's VERB and path.
#[derive(Clone, Copy, Debug)]
enum Target {
    /// The allocation: the controller's PUT of the pool record.
    PoolRecord,
    /// The node's status patch after the kernel work.
    NodeStatus,
    /// POST of the ThinVolume/ThinSnapshot object.
    ObjectCreate,
    /// The controller's status write marking the object ready (a replace at
    /// the version it read: `Devices::mark_ready`).
    ObjectReady,
    /// DELETE of the object.
    ObjectDelete,
}

struct Scenario {
    kind: Kind,
    write: Target,
    action: &'static str,
    /// Devices the fault may leak for good (the leak collector's, issue 10).
    leak_budget: usize,
}

impl Scenario {
    fn name(&self) -> String {
        let what = match self.kind {
            Kind::Csi(c) => format!("{c:?}"),
            Kind::Abort => "aborted transaction".into(),
        };
        let action = self.action.split(':').next().unwrap_or(self.action);
        format!("{what}: {action} the {}", match self.write {
            Target::PoolRecord => "pool record write (allocation)",
            Target::NodeStatus => "node's status patch",
            Target::ObjectCreate => "object create",
            Target::ObjectReady => "object's ready status",
            Target::ObjectDelete => "object delete",
        })
    }

    fn rule(&self, pool: &str, obj: &str) -> String {
        let plural = match self.kind {
            Kind::Csi(Call::CreateSnapshot | Call::DeleteSnapshot) => "thinsnapshots",
            _ => "thinvolumes",
        };
        let (verb, path) = match self.write {
            Target::PoolRecord => ("PUT", format!("^{GROUP}/thinpools/{pool}$")),
            Target::NodeStatus => ("PATCH", format!("^{GROUP}/thinpools/{pool}/status$")),
            Target::ObjectCreate => ("POST", format!("^{GROUP}/{plural}$")),
            Target::ObjectReady => ("PUT", format!("^{GROUP}/{plural}/{obj}/status$")),
            Target::ObjectDelete => ("DELETE", format!("^{GROUP}/{plural}/{obj}$")),
        };
        // The allocation's first PUT often loses a 409 race with the node's
        // status (the controller writes from the object it kept): a fault
        // on the pool record lands on the write that took effect.
        let applied = matches!(self.write, Target::PoolRecord) && !self.action.starts_with("fail");
        format!("{verb} {path} 1 {}{}", self.action, if applied { "@applied" } else { "" })
    }
}

fn scenarios() -> Vec<Scenario> {
    use Call::*;
    use Target::*;
    let timeout: &'static str = Box::leak(format!("timeout:{HOLD_MS}").into_boxed_str());
    let mut v = Vec::new();
    let s = |kind, write, action, leak_budget| Scenario { kind, write, action, leak_budget };
    for action in ["lose", "fail"] {
        for (call, writes) in [
            (CreateVolume, &[PoolRecord, ObjectCreate, ObjectReady, NodeStatus][..]),
            (CreateSnapshot, &[PoolRecord, ObjectCreate, ObjectReady][..]),
            (DeleteVolume, &[PoolRecord, ObjectDelete, NodeStatus][..]),
            (DeleteSnapshot, &[PoolRecord, ObjectDelete][..]),
        ] {
            for w in writes {
                v.push(s(Kind::Csi(call), *w, action, 0));
            }
        }
        v.push(s(Kind::Abort, NodeStatus, action, 0));
    }
    // The reply held past the caller's deadline (10 s), then dropped: the
    // call is cancelled while its write is in flight.
    v.push(s(Kind::Csi(CreateVolume), PoolRecord, timeout, 0));
    v.push(s(Kind::Csi(CreateSnapshot), PoolRecord, timeout, 0));
    v.push(s(Kind::Csi(CreateVolume), ObjectCreate, timeout, 0));
    v.push(s(Kind::Csi(DeleteVolume), PoolRecord, timeout, 0));
    v.push(s(Kind::Csi(CreateVolume), NodeStatus, timeout, 0));
    v.push(s(Kind::Abort, NodeStatus, timeout, 0));
    v
}

struct Run<'a> {
    ctx: &'a Ctx,
    control: &'a str,
    csi: &'a str,
    pool: &'a str,
    node: &'a str,
    state: &'a str,
}

fn note(state: &str, line: &str) -> Result<()> {
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(state).map_err(|e| e.to_string())?;
    writeln!(f, "{line}").map_err(|e| e.to_string())
}

impl Run<'_> {
    /// A setup step, no fault: one CSI call that must succeed.
    async fn setup(&self, call: Call, name: &str, id: &str) -> Result<String> {
        let (r, notes) = retried(self.csi, call, name, self.node, id).await;
        r.map_err(|e| format!("setup {call:?} {name}: {e} ({})", notes.join("; ")))
    }

    async fn scenario(&self, i: usize, sc: &Scenario) -> Result<String> {
        set_rules(self.control, &[]).await?;
        unheld(self.control).await?;
        self.ctx.settled(self.pool, Duration::from_secs(60)).await.map_err(|e| format!("before: {e}"))?;
        let tag = format!("af{i}");
        // Setup: what the call needs, made without faults.
        let (name, id, snapshot) = match sc.kind {
            Kind::Csi(Call::CreateVolume) => (tag.clone(), String::new(), false),
            Kind::Csi(Call::CreateSnapshot) => (tag.clone(), self.setup(Call::CreateVolume, &format!("{tag}-src"), "").await?, true),
            Kind::Csi(Call::DeleteVolume) => {
                let id = self.setup(Call::CreateVolume, &tag, "").await?;
                (tag.clone(), id, false)
            }
            Kind::Csi(Call::DeleteSnapshot) => {
                let src = self.setup(Call::CreateVolume, &format!("{tag}-src"), "").await?;
                let id = self.setup(Call::CreateSnapshot, &tag, &src).await?;
                (tag.clone(), id, true)
            }
            Kind::Abort => (tag.clone(), String::new(), false),
        };
        self.ctx.settled(self.pool, Duration::from_secs(60)).await.map_err(|e| format!("after setup: {e}"))?;
        let before = self.ctx.object(snapshot, &name).await?;
        set_rules(self.control, &[sc.rule(self.pool, &object_name(&name))]).await?;
        let t0 = Instant::now();
        let outcome = match sc.kind {
            Kind::Csi(call) => {
                let (r, notes) = retried(self.csi, call, &name, self.node, &id).await;
                for n in &notes {
                    println!("---   {n}");
                }
                r.map(Some)
            }
            Kind::Abort => self.abort().await.map(|_| None),
        };
        let took = t0.elapsed();
        let injected = fired(self.control).await?;
        set_rules(self.control, &[]).await?;
        if sc.leak_budget > 0 {
            note(self.state, &format!("budget {} {}", sc.leak_budget, sc.name()))?;
        }
        // The fault must have happened, or the scenario proves nothing.
        if injected != 1 {
            return Err(format!("the rule {:?} never fired", sc.rule(self.pool, &object_name(&name))));
        }
        let answer = outcome?;
        let last = self.ctx.settled(self.pool, Duration::from_secs(60)).await?;
        let named = self.ctx.named(self.pool).await?;
        let after = self.ctx.object(snapshot, &name).await?;
        let detail = match (sc.kind, answer) {
            (Kind::Csi(Call::CreateVolume | Call::CreateSnapshot), Some(id)) => {
                let r = DeviceRef::parse(&id).map_err(|e| format!("the answer {id:?}: {e}"))?;
                if r.pool != self.pool {
                    return Err(format!("the answer {id} names another pool"));
                }
                match after {
                    Some((d, true)) if d == r.device.get() => {}
                    other => return Err(format!("the answer {id} but the object is {other:?} (device, ready)")),
                }
                format!("{id}: the object names device {}, ready", r.device)
            }
            (Kind::Csi(Call::DeleteVolume | Call::DeleteSnapshot), Some(id)) => {
                if let Some(o) = after {
                    return Err(format!("DeleteVolume/Snapshot {id} succeeded but the object is still there: {o:?}"));
                }
                let (device, _) = before.ok_or("no object before the delete")?;
                note(self.state, &format!("deleted {device}"))?;
                format!("{id} (device {device}) deleted, object gone")
            }
            (_, _) => "aborted with its real reason (OriginMissing)".into(),
        };
        Ok(format!("{detail}; {:.1} s; every transaction up to {last} ended, kernel at {last}; {} devices named, none twice", took.as_secs_f64(), named.len()))
    }

    /// Records a snapshot of a device the pool does not hold (the allocator
    /// would never: written by hand, directly) and waits for the node's
    /// verdict, which must be the abort with its real reason even when the
    /// status write that carried it failed or lost its reply.
    async fn abort(&self) -> Result<()> {
        let txn = loop {
            let mut obj = self.ctx.pools.get(self.pool).await.map_err(|e| e.to_string())?;
            let plan = csi_controller::plan(&obj, &[Op::CreateThin]).map_err(|e| e.to_string())?;
            obj.spec = plan.spec;
            let op = &mut obj.spec.pending_transactions.last_mut().ok_or("nothing planned")?.operations[0];
            op.op = thin_csi_api::OperationKind::CreateSnapshot;
            op.origin = Some(thinpool::ThinId::MAX); // never allocated in these tests
            match self.ctx.pools.replace(self.pool, &PostParams::default(), &obj).await {
                Ok(_) => break plan.transaction.id().get(),
                Err(kube::Error::Api(s)) if s.code == 409 => continue,
                Err(e) => return Err(e.to_string()),
            }
        };
        match wait_finished(&self.ctx.pools, self.pool, txn, Duration::from_secs(60)).await.map_err(|e| e.to_string())? {
            Finished::Aborted(a) if a.reason == AbortReason::OriginMissing => Ok(()),
            other => Err(format!("transaction {txn}: {other:?}, expected aborted with OriginMissing")),
        }
    }
}

// ---- the final comparison -------------------------------------------------

async fn final_check(ctx: &Ctx, pool: &str, state: &str, devices: &str) -> Vec<(String, Result<String>)> {
    let mut out = Vec::new();
    let kernel: Result<BTreeSet<u32>> = devices.split_whitespace().skip(1).map(|s| s.parse().map_err(|_| format!("bad id {s:?}"))).collect();
    let kernel = match kernel {
        Ok(k) => k,
        Err(e) => return vec![("the node's device listing".into(), Err(e))],
    };
    let text = std::fs::read_to_string(state).unwrap_or_default();
    let deleted: BTreeSet<u32> = text.lines().filter_map(|l| l.strip_prefix("deleted ")?.parse().ok()).collect();
    let budget: usize = text.lines().filter_map(|l| l.strip_prefix("budget ")?.split_whitespace().next()?.parse::<usize>().ok()).sum();
    let named = ctx.named(pool).await;
    out.push(("every device an object names is in the kernel (nothing lost, none named twice)".into(), named.as_ref().map_err(Clone::clone).and_then(|n| {
        let lost: Vec<_> = n.difference(&kernel).collect();
        if lost.is_empty() { Ok(format!("{} named, all in the kernel's {}", n.len(), kernel.len())) } else { Err(format!("named but not in the kernel: {lost:?}")) }
    })));
    // Ids are reused as soon as their delete commits: a deleted id that an
    // object names again is a newer device, not the deleted one.
    let renamed = named.as_ref().cloned().unwrap_or_default();
    let left: Vec<_> = deleted.intersection(&kernel).filter(|id| !renamed.contains(id)).collect();
    out.push(("no device deleted through CSI is left in the kernel".into(), if left.is_empty() { Ok(format!("{} deleted, none left", deleted.len())) } else { Err(format!("still in the kernel: {left:?}")) }));
    if let Ok(n) = &named {
        let unnamed: Vec<_> = kernel.difference(n).collect();
        out.push(("the kernel holds nothing unnamed beyond the leak budget".into(), if unnamed.len() <= budget {
            Ok(format!("LEAKS {} {unnamed:?}, budget {budget} (devices no object names)", unnamed.len()))
        } else {
            Err(format!("unnamed devices {unnamed:?}: more than the budget {budget}"))
        }));
    }
    out
}

async fn pool_of(ctx: &Ctx, node: &str) -> Result<String> {
    let t0 = Instant::now();
    loop {
        let list = ctx.pools.list(&ListParams::default()).await.map_err(|e| e.to_string())?;
        if let Some(p) = list.items.iter().find(|p| p.spec.node == node && p.status.as_ref().is_some_and(|s| s.kernel_transaction.is_some())) {
            let name = p.metadata.name.clone().unwrap_or_default();
            println!("POOL {node} {name}");
            return Ok(format!("{name}, registered through the proxy"));
        }
        if t0.elapsed() > Duration::from_secs(180) {
            return Err(format!("no ThinPool for node {node} after 180 s"));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let mut rep = Report::start();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let client = match thin_csi_api::client::connect_default().await {
        Ok(c) => c,
        Err(e) => {
            println!("FAIL api-faults: kube client: {e}");
            return ExitCode::FAILURE;
        }
    };
    let ctx = Ctx { pools: Api::all(client.clone()), volumes: Api::all(client.clone()), snapshots: Api::all(client) };
    let ok = match argv.as_slice() {
        ["pool", node] => rep.check("the node registered its pool through the proxy", pool_of(&ctx, node).await),
        ["settled", pool] => {
            let r = ctx.settled(pool, Duration::from_secs(60)).await.map(|n| format!("transactions 1..={n} each ended once; kernel at {n}"));
            rep.check("transaction ids dense, the pool not stuck", r)
        }
        ["run", control, port, pool, node, state, filter @ ..] => {
            let run = Run { ctx: &ctx, control, csi: port, pool, node, state };
            let mut ok = true;
            for (i, sc) in scenarios().iter().enumerate() {
                let name = sc.name();
                if filter.first().is_some_and(|f| !name.contains(f)) {
                    continue;
                }
                println!("--- {name}: rule {}", sc.rule(pool, "<object>"));
                let _ = std::io::stdout().flush();
                ok &= rep.check(&name, run.scenario(i, sc).await);
                let _ = std::io::stdout().flush();
            }
            let _ = set_rules(control, &[]).await;
            ok
        }
        ["final", pool, state, devices] => {
            let mut ok = true;
            for (name, r) in final_check(&ctx, pool, state, devices).await {
                ok &= rep.check(&name, r);
            }
            ok
        }
        ["stop", pool] => {
            let patch = json!({ "metadata": { "annotations": { hooks::STOP: "true" } } });
            ctx.pools.patch(pool, &PatchParams::default(), &Patch::Merge(patch)).await.is_ok()
        }
        _ => {
            eprintln!("usage: see the header of e2e/apiproxy/src/bin/api_faults.rs");
            return ExitCode::from(2);
        }
    };
    if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}
