//! Bad input, fuzzed (issue 10, item 6): every field of every Controller
//! request, through the real gRPC handlers, against an apiserver that
//! answers every call 503 (so nothing a request does can depend on the
//! cluster's state, and a handler that needs the API answers UNAVAILABLE).
//!
//! Requests are built from a valid one by mutations, each known to be
//! either fine or bad input with the code CSI gives it. The rule checked:
//! a request with a bad field is refused with that field's code
//! (INVALID_ARGUMENT; OUT_OF_RANGE for a capacity the plugin cannot meet)
//! before anything else is looked at; one with only fine fields gets one of
//! the answers its state allows (UNAVAILABLE here, NOT_FOUND for an id this
//! plugin never issued, ...). A second property feeds arbitrary values into
//! every field: no panic, never INTERNAL/UNKNOWN/UNIMPLEMENTED, always a
//! message. `FUZZ_CASES` sets the cases per property (default 256; the long
//! run is `e2e/run fuzz`).

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use csi_controller::controller::ControllerService;
use csi_controller::Allocator;
use csi_proto::v1::controller_server::Controller;
use csi_proto::v1::volume_capability::{access_mode::Mode, AccessMode, AccessType, BlockVolume, MountVolume};
use csi_proto::v1::volume_content_source::{SnapshotSource, Type as SourceType, VolumeSource};
use csi_proto::v1::*;
use kube::Client;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use tonic::{Code, Request};

/// An apiserver that answers every request 503.
fn unavailable_api() -> Client {
    let svc = tower::service_fn(|_req: http::Request<kube::client::Body>| async {
        let body = serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "ServiceUnavailable", "code": 503, "message": "fuzzing: no apiserver"});
        Ok::<_, std::convert::Infallible>(
            http::Response::builder().status(503).header("content-type", "application/json").body(kube::client::Body::from(body.to_string().into_bytes())).unwrap(),
        )
    });
    Client::new(svc, "default")
}

struct Harness {
    rt: tokio::runtime::Runtime,
    svc: ControllerService,
    _leading: tokio::sync::watch::Sender<bool>,
}

impl Harness {
    fn new() -> Self {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let (svc, leading) = rt.block_on(async {
            let client = unavailable_api();
            let (tx, rx) = tokio::sync::watch::channel(true);
            (ControllerService::new(client.clone(), Allocator::new(client), rx, Duration::from_millis(50)), tx)
        });
        Harness { rt, svc, _leading: leading }
    }

    /// Runs one request; `Ok` is `Code::Ok` with an empty message.
    fn call(&self, req: &Req) -> (Code, String) {
        let s = &self.svc;
        let r = self.rt.block_on(async {
            match req.clone() {
                Req::CreateVolume(r) => s.create_volume(Request::new(r)).await.map(drop),
                Req::DeleteVolume(r) => s.delete_volume(Request::new(r)).await.map(drop),
                Req::CreateSnapshot(r) => s.create_snapshot(Request::new(r)).await.map(drop),
                Req::DeleteSnapshot(r) => s.delete_snapshot(Request::new(r)).await.map(drop),
                Req::ListVolumes(r) => s.list_volumes(Request::new(r)).await.map(drop),
                Req::ListSnapshots(r) => s.list_snapshots(Request::new(r)).await.map(drop),
                Req::GetCapacity(r) => s.get_capacity(Request::new(r)).await.map(drop),
                Req::Expand(r) => s.controller_expand_volume(Request::new(r)).await.map(drop),
                Req::Validate(r) => s.validate_volume_capabilities(Request::new(r)).await.map(drop),
                Req::GetVolume(r) => s.controller_get_volume(Request::new(r)).await.map(drop),
                Req::GetSnapshot(r) => s.get_snapshot(Request::new(r)).await.map(drop),
            }
        });
        match r {
            Ok(()) => (Code::Ok, String::new()),
            Err(status) => (status.code(), status.message().to_string()),
        }
    }
}

#[derive(Clone, Debug)]
enum Req {
    CreateVolume(CreateVolumeRequest),
    DeleteVolume(DeleteVolumeRequest),
    CreateSnapshot(CreateSnapshotRequest),
    DeleteSnapshot(DeleteSnapshotRequest),
    ListVolumes(ListVolumesRequest),
    ListSnapshots(ListSnapshotsRequest),
    GetCapacity(GetCapacityRequest),
    Expand(ControllerExpandVolumeRequest),
    Validate(ValidateVolumeCapabilitiesRequest),
    GetVolume(ControllerGetVolumeRequest),
    GetSnapshot(GetSnapshotRequest),
}

/// A request, and what it may be answered: `bad` holds the codes of the bad
/// fields it carries (empty: none), `fine` the answers allowed otherwise.
#[derive(Clone, Debug)]
struct Case {
    req: Req,
    bad: BTreeSet<i32>,
    fine: BTreeSet<i32>,
}

fn codes(list: &[Code]) -> BTreeSet<i32> {
    list.iter().map(|c| *c as i32).collect()
}

/// An id this plugin could have issued (it parses), naming nothing here.
const OUR_ID: &str = "pool-a:5:3";

fn cap(access: AccessType, mode: i32) -> VolumeCapability {
    VolumeCapability { access_type: Some(access), access_mode: Some(AccessMode { mode }) }
}

fn mount(fs: &str) -> AccessType {
    AccessType::Mount(MountVolume { fs_type: fs.into(), ..Default::default() })
}

fn good_cap() -> VolumeCapability {
    cap(mount(""), Mode::SingleNodeWriter as i32)
}

/// Strings of every shape: empty, ids of ours, separators, unicode, long.
fn any_text() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        Just(OUR_ID.to_string()),
        Just(":".to_string()),
        Just("pool-a:".to_string()),
        Just(":5".to_string()),
        Just("pool-a:16777216".to_string()),
        Just("pool-a:-1".to_string()),
        Just("pool-a:5:9".to_string()),
        Just("../../etc/passwd".to_string()),
        "[a-z0-9:.-]{0,40}",
        ".{0,64}",
        "\\PC{200,600}",
    ]
}

fn any_map() -> impl Strategy<Value = HashMap<String, String>> {
    prop::collection::hash_map(
        prop_oneof![Just("pool".to_string()), Just("fsType".to_string()), Just("overprovisioning".to_string()), Just("csi.storage.k8s.io/fstype".to_string()), any_text()],
        any_text(),
        0..4,
    )
}

fn any_cap() -> impl Strategy<Value = VolumeCapability> {
    let access = prop_oneof![
        Just(None),
        Just(Some(AccessType::Block(BlockVolume {}))),
        (any_text(), prop::collection::vec(any_text(), 0..3))
            .prop_map(|(fs_type, mount_flags)| Some(AccessType::Mount(MountVolume { fs_type, mount_flags, ..Default::default() }))),
    ];
    let mode = prop_oneof![Just(None), (-2..10i32).prop_map(|mode| Some(AccessMode { mode })), any::<i32>().prop_map(|mode| Some(AccessMode { mode }))];
    (access, mode).prop_map(|(access_type, access_mode)| VolumeCapability { access_type, access_mode })
}

fn any_range() -> impl Strategy<Value = Option<CapacityRange>> {
    let n = prop_oneof![Just(0i64), Just(-1i64), Just(65_536i64), Just(65_535i64), Just(i64::MAX), Just(i64::MIN), any::<i64>()];
    prop::option::of((n.clone(), n).prop_map(|(required_bytes, limit_bytes)| CapacityRange { required_bytes, limit_bytes }))
}

fn any_topology() -> impl Strategy<Value = Option<Topology>> {
    prop::option::of(any_map().prop_map(|segments| Topology { segments }))
}

/// Arbitrary values in every field of every request.
fn any_request() -> impl Strategy<Value = Req> {
    let caps = || prop::collection::vec(any_cap(), 0..3);
    let source = prop::option::of(prop_oneof![
        Just(VolumeContentSource { r#type: None }),
        any_text().prop_map(|snapshot_id| VolumeContentSource { r#type: Some(SourceType::Snapshot(SnapshotSource { snapshot_id })) }),
        any_text().prop_map(|volume_id| VolumeContentSource { r#type: Some(SourceType::Volume(VolumeSource { volume_id })) }),
    ]);
    let topo = prop::option::of((prop::collection::vec(any_topology(), 0..2), prop::collection::vec(any_topology(), 0..2)).prop_map(|(r, p)| TopologyRequirement {
        requisite: r.into_iter().flatten().collect(),
        preferred: p.into_iter().flatten().collect(),
    }));
    prop_oneof![
        (any_text(), any_range(), caps(), any_map(), source, topo).prop_map(|(name, capacity_range, volume_capabilities, parameters, volume_content_source, accessibility_requirements)| {
            Req::CreateVolume(CreateVolumeRequest { name, capacity_range, volume_capabilities, parameters, volume_content_source, accessibility_requirements, ..Default::default() })
        }),
        any_text().prop_map(|volume_id| Req::DeleteVolume(DeleteVolumeRequest { volume_id, ..Default::default() })),
        (any_text(), any_text(), any_map()).prop_map(|(source_volume_id, name, parameters)| Req::CreateSnapshot(CreateSnapshotRequest { source_volume_id, name, parameters, ..Default::default() })),
        any_text().prop_map(|snapshot_id| Req::DeleteSnapshot(DeleteSnapshotRequest { snapshot_id, ..Default::default() })),
        (any::<i32>(), any_text()).prop_map(|(max_entries, starting_token)| Req::ListVolumes(ListVolumesRequest { max_entries, starting_token })),
        (any::<i32>(), any_text(), any_text(), any_text()).prop_map(|(max_entries, starting_token, source_volume_id, snapshot_id)| Req::ListSnapshots(
            ListSnapshotsRequest { max_entries, starting_token, source_volume_id, snapshot_id, ..Default::default() }
        )),
        (caps(), any_map(), any_topology()).prop_map(|(volume_capabilities, parameters, accessible_topology)| Req::GetCapacity(GetCapacityRequest {
            volume_capabilities,
            parameters,
            accessible_topology,
            ..Default::default()
        })),
        (any_text(), any_range(), prop::option::of(any_cap())).prop_map(|(volume_id, capacity_range, volume_capability)| Req::Expand(ControllerExpandVolumeRequest {
            volume_id,
            capacity_range,
            volume_capability,
            ..Default::default()
        })),
        (any_text(), caps(), any_map()).prop_map(|(volume_id, volume_capabilities, parameters)| Req::Validate(ValidateVolumeCapabilitiesRequest {
            volume_id,
            volume_capabilities,
            parameters,
            ..Default::default()
        })),
        any_text().prop_map(|volume_id| Req::GetVolume(ControllerGetVolumeRequest { volume_id })),
        any_text().prop_map(|snapshot_id| Req::GetSnapshot(GetSnapshotRequest { snapshot_id, ..Default::default() })),
    ]
}

/// One field change of a known kind: fine, or bad input with its code. The
/// mutation's name starts with the field it changes ("field: what").
type Mutation<R> = (fn(&mut R, &str), Option<Code>, &'static str);

/// Applies the chosen mutations (by index) to `base`, at most one per field
/// (a second change of a field would undo the first), collecting the codes.
fn mutate<R: Clone>(base: &R, table: &[Mutation<R>], picks: &[(usize, String)]) -> (R, BTreeSet<i32>, Vec<&'static str>) {
    let mut r = base.clone();
    let mut bad = BTreeSet::new();
    let mut names: Vec<&'static str> = Vec::new();
    let field = |name: &str| name.split(':').next().unwrap_or(name).to_string();
    for (i, text) in picks {
        let (apply, code, name) = &table[i % table.len()];
        if names.iter().any(|n| field(n) == field(name)) {
            continue;
        }
        apply(&mut r, text);
        if let Some(c) = code {
            bad.insert(*c as i32);
        }
        names.push(*name);
    }
    (r, bad, names)
}

fn create_volume_mutations() -> Vec<Mutation<CreateVolumeRequest>> {
    use Code::*;
    let invalid = Some(InvalidArgument);
    vec![
        (|r, _| r.name.clear(), invalid, "name: empty"),
        (|r, t| r.name = format!("n{t}"), None, "name: any non-empty"),
        (|r, _| r.volume_capabilities.clear(), invalid, "caps: none"),
        (|r, _| r.volume_capabilities.push(VolumeCapability { access_type: None, ..good_cap() }), invalid, "caps: without access type"),
        (|r, _| r.volume_capabilities.push(VolumeCapability { access_mode: None, ..good_cap() }), invalid, "caps: without access mode"),
        (|r, _| r.volume_capabilities.push(cap(mount(""), Mode::MultiNodeMultiWriter as i32)), invalid, "caps: multi-node access"),
        (|r, _| r.volume_capabilities.push(cap(mount(""), 4242)), invalid, "caps: unknown access mode"),
        (|r, t| r.volume_capabilities.push(cap(mount(&format!("zz{t}")), Mode::SingleNodeWriter as i32)), invalid, "caps: unknown fs_type"),
        (|r, _| r.volume_capabilities.push(cap(AccessType::Block(BlockVolume {}), Mode::SingleNodeWriter as i32)), None, "caps: block"),
        (|r, _| r.volume_capabilities[0] = cap(mount("xfs"), Mode::SingleNodeReaderOnly as i32), None, "caps: xfs read-only"),
        (|r, t| drop(r.parameters.insert(format!("x-{t}"), "1".into())), invalid, "params: unknown key"),
        (|r, t| drop(r.parameters.insert(format!("csi.storage.k8s.io/{t}"), t.into())), None, "params: sidecar key"),
        (|r, _| drop(r.parameters.insert("pool".into(), String::new())), invalid, "params: empty pool"),
        (|r, t| drop(r.parameters.insert("fsType".into(), format!("zz{t}"))), invalid, "params: unknown fsType"),
        (|r, t| drop(r.parameters.insert("overprovisioning".into(), format!("x{t}"))), invalid, "params: overprovisioning not a number"),
        (|r, _| drop(r.parameters.insert("overprovisioning".into(), "0.5".into())), invalid, "params: overprovisioning below 1"),
        (|r, _| drop(r.parameters.insert("overprovisioning".into(), "NaN".into())), invalid, "params: overprovisioning NaN"),
        (|r, _| drop(r.parameters.insert("overprovisioning".into(), "2.5".into())), None, "params: overprovisioning 2.5"),
        (|r, _| r.capacity_range = Some(CapacityRange { required_bytes: -1, limit_bytes: 0 }), invalid, "range: required negative"),
        (|r, _| r.capacity_range = Some(CapacityRange { required_bytes: 0, limit_bytes: -5 }), invalid, "range: limit negative"),
        (|r, _| r.capacity_range = Some(CapacityRange { required_bytes: 2 << 20, limit_bytes: 1 << 20 }), Some(OutOfRange), "range: required above limit"),
        (|r, _| r.capacity_range = Some(CapacityRange { required_bytes: 0, limit_bytes: 1000 }), Some(OutOfRange), "range: limit below one block"),
        (|r, _| r.capacity_range = None, None, "range: none"),
        (|r, _| r.volume_content_source = Some(VolumeContentSource { r#type: None }), invalid, "source: without type"),
        (
            |r, _| r.volume_content_source = Some(VolumeContentSource { r#type: Some(SourceType::Snapshot(SnapshotSource { snapshot_id: String::new() })) }),
            invalid,
            "source: snapshot id empty",
        ),
        (
            |r, _| r.volume_content_source = Some(VolumeContentSource { r#type: Some(SourceType::Volume(VolumeSource { volume_id: String::new() })) }),
            invalid,
            "source: volume id empty",
        ),
        (
            |r, t| r.volume_content_source = Some(VolumeContentSource { r#type: Some(SourceType::Snapshot(SnapshotSource { snapshot_id: format!("s{t}") })) }),
            None,
            "source: snapshot any id",
        ),
        (|r, t| r.accessibility_requirements = Some(TopologyRequirement { requisite: vec![Topology { segments: [(t.to_string(), t.to_string())].into() }], preferred: vec![] }), None, "topology: any"),
    ]
}

fn create_snapshot_mutations() -> Vec<Mutation<CreateSnapshotRequest>> {
    let invalid = Some(Code::InvalidArgument);
    vec![
        (|r, _| r.name.clear(), invalid, "name: empty"),
        (|r, t| r.name = format!("n{t}"), None, "name: any non-empty"),
        (|r, _| r.source_volume_id.clear(), invalid, "source: empty"),
        (|r, t| r.source_volume_id = format!("v{t}"), None, "source: any id"),
        (|r, t| drop(r.parameters.insert(format!("x-{t}"), "1".into())), invalid, "params: unknown key"),
        (|r, t| drop(r.parameters.insert(format!("csi.storage.k8s.io/{t}"), t.into())), None, "params: sidecar key"),
    ]
}

fn expand_mutations() -> Vec<Mutation<ControllerExpandVolumeRequest>> {
    use Code::*;
    let invalid = Some(InvalidArgument);
    vec![
        (|r, _| r.volume_id.clear(), invalid, "id: empty"),
        (|r, t| r.volume_id = format!("v{t}"), None, "id: any"),
        (|r, _| r.capacity_range = None, invalid, "range: none"),
        (|r, _| r.capacity_range = Some(CapacityRange { required_bytes: -1, limit_bytes: 0 }), invalid, "range: required negative"),
        (|r, _| r.capacity_range = Some(CapacityRange { required_bytes: 0, limit_bytes: -1 }), invalid, "range: limit negative"),
        (|r, _| r.capacity_range = Some(CapacityRange { required_bytes: 2 << 30, limit_bytes: 1 << 30 }), Some(OutOfRange), "range: required above limit"),
        (|r, _| r.volume_capability = Some(VolumeCapability { access_type: None, ..good_cap() }), invalid, "caps: without access type"),
        (|r, _| r.volume_capability = Some(cap(mount(""), Mode::MultiNodeMultiWriter as i32)), invalid, "caps: multi-node"),
        (|r, _| r.volume_capability = Some(good_cap()), None, "caps: good"),
    ]
}

fn list_mutations() -> Vec<Mutation<(i32, String)>> {
    vec![
        (|r, _| r.0 = -1, Some(Code::InvalidArgument), "max: negative"),
        (|r, t| r.0 = t.len() as i32, None, "max: any"),
        (|r, t| r.1 = format!("not-ours-{}", t.replace(':', "")), Some(Code::Aborted), "token: not ours"),
        (|r, _| r.1 = OUR_ID.into(), None, "token: of ours"),
    ]
}

fn single_id_mutations() -> Vec<Mutation<String>> {
    vec![(|r, _| r.clear(), Some(Code::InvalidArgument), "id: empty"), (|r, t| *r = format!("v{t}"), None, "id: any"), (|r, _| *r = OUR_ID.into(), None, "id: of ours")]
}

/// An id of our shape with a malformed generation is bad input
/// (csi_contract::IdError::BadGeneration); any other id we did not issue
/// names nothing (a state answer).
fn id_is_bad(id: &str) -> bool {
    csi_contract::DeviceRef::parse(id).is_err_and(|e| e.is_invalid())
}

/// The ids a request names (not paging tokens: any token we did not issue is ABORTED).
fn ids_of(req: &Req) -> Vec<&str> {
    match req {
        Req::CreateVolume(r) => match r.volume_content_source.as_ref().and_then(|s| s.r#type.as_ref()) {
            Some(SourceType::Snapshot(s)) => vec![s.snapshot_id.as_str()],
            Some(SourceType::Volume(v)) => vec![v.volume_id.as_str()],
            None => vec![],
        },
        Req::CreateSnapshot(r) => vec![r.source_volume_id.as_str()],
        Req::DeleteVolume(r) => vec![r.volume_id.as_str()],
        Req::DeleteSnapshot(r) => vec![r.snapshot_id.as_str()],
        Req::Expand(r) => vec![r.volume_id.as_str()],
        Req::GetVolume(r) => vec![r.volume_id.as_str()],
        _ => vec![],
    }
}

/// A request built from a valid one by 1..=3 mutations, with what it may be answered.
fn mutated_case() -> impl Strategy<Value = Case> {
    mutated_fields().prop_map(|mut case| {
        if ids_of(&case.req).iter().any(|id| !id.is_empty() && id_is_bad(id)) {
            case.bad.insert(Code::InvalidArgument as i32);
        }
        case
    })
}

fn mutated_fields() -> impl Strategy<Value = Case> {
    use Code::*;
    let picks = prop::collection::vec((any::<usize>(), "[a-z0-9:]{0,12}"), 1..=3);
    (0..8usize, picks).prop_map(|(rpc, picks)| {
        let state = |list: &[Code]| codes(list);
        match rpc {
            0 => {
                let base = CreateVolumeRequest {
                    name: "pvc-1".into(),
                    capacity_range: Some(CapacityRange { required_bytes: 16 << 20, limit_bytes: 0 }),
                    volume_capabilities: vec![good_cap()],
                    ..Default::default()
                };
                let (req, bad, _) = mutate(&base, &create_volume_mutations(), &picks);
                Case { req: Req::CreateVolume(req), bad, fine: state(&[Unavailable, NotFound]) }
            }
            1 => {
                let base = CreateSnapshotRequest { name: "snap-1".into(), source_volume_id: OUR_ID.into(), ..Default::default() };
                let (req, bad, _) = mutate(&base, &create_snapshot_mutations(), &picks);
                Case { req: Req::CreateSnapshot(req), bad, fine: state(&[Unavailable, NotFound]) }
            }
            2 => {
                let base = ControllerExpandVolumeRequest { volume_id: OUR_ID.into(), capacity_range: Some(CapacityRange { required_bytes: 1 << 30, limit_bytes: 0 }), ..Default::default() };
                let (req, bad, _) = mutate(&base, &expand_mutations(), &picks);
                Case { req: Req::Expand(req), bad, fine: state(&[Unavailable, NotFound]) }
            }
            3 | 4 => {
                let ((max_entries, starting_token), bad, _) = mutate(&(0, String::new()), &list_mutations(), &picks);
                let req = if rpc == 3 {
                    Req::ListVolumes(ListVolumesRequest { max_entries, starting_token })
                } else {
                    Req::ListSnapshots(ListSnapshotsRequest { max_entries, starting_token, ..Default::default() })
                };
                Case { req, bad, fine: state(&[Unavailable]) }
            }
            _ => {
                let (id, bad, _) = mutate(&OUR_ID.to_string(), &single_id_mutations(), &picks);
                let (req, fine) = match rpc {
                    5 => (Req::DeleteVolume(DeleteVolumeRequest { volume_id: id, ..Default::default() }), state(&[Ok, Unavailable])),
                    6 => (Req::DeleteSnapshot(DeleteSnapshotRequest { snapshot_id: id, ..Default::default() }), state(&[Ok, Unavailable])),
                    _ => (Req::GetVolume(ControllerGetVolumeRequest { volume_id: id }), state(&[Unavailable, NotFound])),
                };
                Case { req, bad, fine }
            }
        }
    })
}

fn cases() -> u32 {
    std::env::var("FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(256)
}

fn runner() -> TestRunner {
    TestRunner::new(Config { cases: cases(), failure_persistence: None, ..Config::default() })
}

#[test]
fn a_bad_field_gets_its_code_before_anything_else() {
    let h = Harness::new();
    runner()
        .run(&mutated_case(), |case| {
            let (code, message) = h.call(&case.req);
            let allowed = if case.bad.is_empty() { &case.fine } else { &case.bad };
            prop_assert!(
                allowed.contains(&(code as i32)),
                "{:?}: answered {code:?} ({message}); allowed {:?}",
                case.req,
                allowed.iter().map(|c| Code::from(*c)).collect::<Vec<_>>()
            );
            prop_assert!(code == Code::Ok || !message.is_empty(), "{:?}: {code:?} without a message", case.req);
            Ok(())
        })
        .unwrap();
}

#[test]
fn arbitrary_requests_never_panic_and_always_say_why() {
    let h = Harness::new();
    runner()
        .run(&any_request(), |req| {
            let (code, message) = h.call(&req);
            prop_assert!(!matches!(code, Code::Internal | Code::Unknown | Code::Unimplemented), "{req:?}: answered {code:?} ({message})");
            prop_assert!(code == Code::Ok || !message.is_empty(), "{req:?}: {code:?} without a message");
            Ok(())
        })
        .unwrap();
}
