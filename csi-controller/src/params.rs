//! The pure parts of the Controller service (docs/csi.md): ids, StorageClass
//! parameters, sizes, capabilities, paging tokens, capacity arithmetic and
//! pool condition. No I/O here: everything is unit-tested.

use std::collections::HashMap;

use csi_proto::v1::volume_capability::access_mode::Mode;
use csi_proto::v1::volume_capability::AccessType;
use csi_proto::v1::{CapacityRange, VolumeCapability};
use thin_csi_api::{PoolHealth, PoolMode, ThinPool};

use crate::status::Error;
pub use csi_contract::volume_health::PoolCondition;

pub use csi_contract::keys::{CTX_DEVICE, CTX_FS_TYPE, CTX_POOL, CTX_VOLUME, LABEL_DEVICE, LABEL_POOL, TOPOLOGY_KEY};
pub use csi_contract::plugin::DRIVER_NAME;
pub use csi_contract::DeviceRef;
/// The pool block size: sizes are rounded up to it.
pub const BLOCK: u64 = 64 * 1024;
/// The size of a volume created without a capacity range.
pub const DEFAULT_SIZE: u64 = 1 << 30;
pub const DEFAULT_OVERPROVISIONING: f64 = 10.0;
/// Above this share of metadata used, a pool takes no new volume.
pub const METADATA_LIMIT: f64 = 0.9;

pub use thin_csi_api::FsType;

/// A filesystem named in a request field.
fn fs_type(s: &str, field: &str) -> Result<FsType, Error> {
    s.parse().map_err(|why: String| Error::invalid(field, why))
}

/// StorageClass parameters (docs/csi.md).
#[derive(Clone, Debug, PartialEq)]
pub struct Params {
    /// The pool's name on its node (ThinPool spec.poolName).
    pub pool_name: Option<String>,
    /// From `fsType` / `csi.storage.k8s.io/fstype`; `None`: the default (ext4).
    pub fs_type: Option<FsType>,
    pub overprovisioning: f64,
}

impl Default for Params {
    fn default() -> Self {
        Params { pool_name: None, fs_type: None, overprovisioning: DEFAULT_OVERPROVISIONING }
    }
}

const SIDECAR_PREFIX: &str = "csi.storage.k8s.io/";

impl Params {
    pub fn parse(map: &HashMap<String, String>) -> Result<Self, Error> {
        let mut p = Params::default();
        let mut keys: Vec<&String> = map.keys().collect();
        keys.sort();
        for key in keys {
            let value = &map[key];
            let field = format!("parameters[{key}]");
            match key.as_str() {
                "pool" => {
                    if value.is_empty() {
                        return Err(Error::invalid(field, "empty pool name"));
                    }
                    p.pool_name = Some(value.clone());
                }
                "fsType" | "csi.storage.k8s.io/fstype" => {
                    if !value.is_empty() {
                        let fs = fs_type(value, &field)?;
                        if p.fs_type.is_some_and(|f| f != fs) {
                            return Err(Error::invalid(field, "fsType and csi.storage.k8s.io/fstype disagree"));
                        }
                        p.fs_type = Some(fs);
                    }
                }
                "overprovisioning" => {
                    let r: f64 = value.parse().map_err(|_| Error::invalid(&field, format!("{value:?} is not a number")))?;
                    if !r.is_finite() || r < 1.0 {
                        return Err(Error::invalid(field, format!("{value} is below 1.0 (a ratio ≥ 1.0)")));
                    }
                    p.overprovisioning = r;
                }
                k if k.starts_with(SIDECAR_PREFIX) => {}
                _ => return Err(Error::invalid(field, "unknown parameter (known: pool, fsType, overprovisioning)")),
            }
        }
        Ok(p)
    }
}

/// Snapshot parameters: none of ours; only the sidecars' `csi.storage.k8s.io/*`.
pub fn check_snapshot_params(map: &HashMap<String, String>) -> Result<(), Error> {
    let mut keys: Vec<&String> = map.keys().filter(|k| !k.starts_with(SIDECAR_PREFIX)).collect();
    keys.sort();
    match keys.first() {
        Some(k) => Err(Error::invalid(format!("parameters[{k}]"), "unknown snapshot parameter (there are none)")),
        None => Ok(()),
    }
}

pub fn round_up(bytes: u64) -> u64 {
    bytes.div_ceil(BLOCK).saturating_mul(BLOCK)
}

/// The size to give a volume for `range`: `default` when absent or when only
/// a limit is set (capped to it), rounded up to [`BLOCK`].
pub fn size_for(range: Option<&CapacityRange>, default: u64) -> Result<u64, Error> {
    let Some(r) = range else { return Ok(round_up(default)) };
    check_range(r)?;
    let (required, limit) = (r.required_bytes as u64, r.limit_bytes as u64);
    let wanted = if required > 0 { required } else if limit > 0 { default.min(limit) } else { default };
    let size = round_up(wanted.max(1));
    if limit > 0 && size > limit {
        // The limit is below the next block boundary: the largest whole block
        // count under it, if that still covers what is required.
        let down = limit / BLOCK * BLOCK;
        if down > 0 && down >= required {
            return Ok(down);
        }
        return Err(Error::OutOfRange(format!(
            "capacity_range: sizes are multiples of {BLOCK} bytes; {size} exceeds limit_bytes {limit}"
        )));
    }
    Ok(size)
}

/// What is wrong with `r` whatever the volume: negative bounds, a required
/// size above the limit, a limit below one block. Checked before anything
/// is looked up, so bad input is refused as such in every cluster state.
pub fn check_range(r: &CapacityRange) -> Result<(), Error> {
    if r.required_bytes < 0 {
        return Err(Error::invalid("capacity_range.required_bytes", "negative"));
    }
    if r.limit_bytes < 0 {
        return Err(Error::invalid("capacity_range.limit_bytes", "negative"));
    }
    let (required, limit) = (r.required_bytes as u64, r.limit_bytes as u64);
    if limit > 0 && required > limit {
        return Err(Error::OutOfRange(format!("capacity_range: required_bytes {required} exceeds limit_bytes {limit}")));
    }
    if limit > 0 && limit < BLOCK {
        return Err(Error::OutOfRange(format!("capacity_range: sizes are multiples of {BLOCK} bytes; limit_bytes {limit} is below one")));
    }
    Ok(())
}

/// Whether an existing volume of `size` satisfies `range`.
pub fn size_fits(size: u64, range: Option<&CapacityRange>) -> bool {
    match range {
        None => true,
        Some(r) => size >= r.required_bytes.max(0) as u64 && (r.limit_bytes <= 0 || size <= r.limit_bytes as u64),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Mount,
    Block,
}

/// Checks one capability: an access type and a single-node access mode (the
/// volumes are node-local). `Err` says why it is not supported.
pub fn check_capability(cap: &VolumeCapability) -> Result<(Access, Option<FsType>), String> {
    let access = match &cap.access_type {
        None => return Err("access_type is missing (mount or block)".into()),
        Some(AccessType::Block(_)) => (Access::Block, None),
        Some(AccessType::Mount(m)) if m.fs_type.is_empty() => (Access::Mount, None),
        Some(AccessType::Mount(m)) => (Access::Mount, Some(fs_type(&m.fs_type, "mount.fs_type").map_err(|e| e.to_string())?)),
    };
    let Some(mode) = cap.access_mode.as_ref() else { return Err("access_mode is missing".into()) };
    match Mode::try_from(mode.mode) {
        Ok(Mode::SingleNodeWriter | Mode::SingleNodeReaderOnly | Mode::SingleNodeSingleWriter | Mode::SingleNodeMultiWriter) => Ok(access),
        Ok(m) => Err(format!("access mode {} is not supported: volumes are node-local", m.as_str_name())),
        Err(_) => Err(format!("access mode {} is unknown", mode.mode)),
    }
}

/// Checks every capability of a request; the access types and the one
/// filesystem type they ask for.
pub fn check_capabilities(caps: &[VolumeCapability]) -> Result<(Access, Option<FsType>), Error> {
    if caps.is_empty() {
        return Err(Error::invalid("volume_capabilities", "missing"));
    }
    let mut access = Access::Block;
    let mut fs: Option<FsType> = None;
    for (i, cap) in caps.iter().enumerate() {
        let (a, f) = check_capability(cap).map_err(|why| Error::invalid(format!("volume_capabilities[{i}]"), why))?;
        if a == Access::Mount {
            access = Access::Mount;
        }
        if let Some(f) = f {
            if fs.is_some_and(|g| g != f) {
                return Err(Error::invalid(format!("volume_capabilities[{i}]"), "two different filesystem types requested"));
            }
            fs = Some(f);
        }
    }
    Ok((access, fs))
}

/// The paging fields of a List request, checked before anything is listed:
/// `max_entries` is not negative (INVALID_ARGUMENT) and a `starting_token`
/// is one this plugin issues (ABORTED, as the spec says). The key to start
/// after, if any.
pub fn check_paging(token: &str, max: i32) -> Result<Option<DeviceRef>, Error> {
    if max < 0 {
        return Err(Error::invalid("max_entries", "negative"));
    }
    if token.is_empty() {
        return Ok(None);
    }
    DeviceRef::parse(token).map(Some).map_err(|_| Error::Aborted(format!("starting_token {token:?} is not a token this plugin issued")))
}

/// One page of `items` (sorted by key here) after `token` (the key of the
/// last entry of the previous page), at most `max` (0: all). The next token
/// is the key of the last entry returned, empty when nothing follows. An
/// entry deleted between pages does not shift the next page.
pub fn page<T>(mut items: Vec<(DeviceRef, T)>, token: &str, max: i32) -> Result<(Vec<(DeviceRef, T)>, String), Error> {
    let after = check_paging(token, max)?;
    items.sort_by(|a, b| a.0.cmp(&b.0));
    let rest: Vec<(DeviceRef, T)> = match after {
        None => items,
        Some(after) => items.into_iter().filter(|(k, _)| *k > after).collect(),
    };
    let max = if max == 0 { usize::MAX } else { max as usize };
    let more = rest.len() > max;
    let out: Vec<(DeviceRef, T)> = rest.into_iter().take(max).collect();
    let next = if more { out.last().map(|(k, _)| k.to_string()).unwrap_or_default() } else { String::new() };
    Ok((out, next))
}

/// Why a pool takes no new volume, or `None` when it can.
pub fn pool_unusable(pool: &ThinPool) -> Option<String> {
    let Some(s) = &pool.status else { return Some("the node has not reported on the pool yet".into()) };
    if s.health == Some(PoolHealth::Unhealthy) {
        return Some(format!("pool is unhealthy: {}", s.last_error.as_deref().unwrap_or("no reason given")));
    }
    match s.mode {
        Some(PoolMode::ReadWrite) => {}
        Some(PoolMode::OutOfDataSpace) => return Some("pool is out of data space".into()),
        Some(PoolMode::ReadOnly) => return Some("pool is read-only".into()),
        Some(PoolMode::NeedsCheck) => return Some("pool needs a check (needs_check)".into()),
        None => return Some("the node has not reported the pool's mode yet".into()),
    }
    if let (Some(used), Some(total)) = (s.metadata_used_bytes, s.metadata_total_bytes) {
        if total > 0 && used as f64 > total as f64 * METADATA_LIMIT {
            return Some(format!("pool metadata is over {} % full ({used} of {total} bytes)", METADATA_LIMIT * 100.0));
        }
    }
    None
}

/// What a volume on the pool can still get (docs/csi.md, "Capacity"):
///
/// min(data_total × ratio − Σ sizes of its volumes, (data_total − data_used) × ratio)
///
/// rounded down to [`BLOCK`], 0 when the pool is unusable. The first term
/// is the overprovisioning budget; the second the physical free space at
/// the same ratio, which counts what thin snapshots hold exclusively (the
/// blocks their origins have overwritten since: in the kernel's used
/// count, in no volume's size).
pub fn available(pool: &ThinPool, ratio: f64, provisioned: u64) -> u64 {
    if pool_unusable(pool).is_some() {
        return 0;
    }
    let status = pool.status.as_ref();
    let total = status.and_then(|s| s.data_total_bytes).unwrap_or(0);
    let used = status.and_then(|s| s.data_used_bytes).unwrap_or(0);
    let scaled = |bytes: u64| (bytes as f64 * ratio).min(u64::MAX as f64) as u64;
    let budget = scaled(total).saturating_sub(provisioned);
    let physical = scaled(total.saturating_sub(used));
    budget.min(physical) / BLOCK * BLOCK
}

/// A volume's adverse conditions from its pool (ControllerGetVolumeHealth):
/// the pool gone, unhealthy, or in a mode other than read/write (metadata
/// fill alone only stops new volumes). The rule is csi-contract's.
pub fn conditions(pool: Option<&ThinPool>) -> Vec<PoolCondition> {
    let Some(pool) = pool else { return vec![PoolCondition::Gone] };
    let s = pool.status.clone().unwrap_or_default();
    let mut out = Vec::new();
    if s.health == Some(PoolHealth::Unhealthy) {
        out.push(PoolCondition::Unhealthy(s.last_error.unwrap_or_else(|| "no reason given".into())));
    }
    out.extend(s.mode.and_then(PoolCondition::of_mode));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use csi_proto::v1::volume_capability::{AccessMode, BlockVolume, MountVolume};
    use thin_csi_api::{ThinPoolSpec, ThinPoolStatus};
    use thinpool::ThinId;

    fn range(required: i64, limit: i64) -> CapacityRange {
        CapacityRange { required_bytes: required, limit_bytes: limit }
    }

    #[test]
    fn parameters() {
        let m = |kv: &[(&str, &str)]| kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<HashMap<_, _>>();
        assert_eq!(Params::parse(&m(&[])).unwrap(), Params::default());
        let p = Params::parse(&m(&[("pool", "pool0"), ("fsType", "xfs"), ("overprovisioning", "2.5"), ("csi.storage.k8s.io/pv/name", "pv")])).unwrap();
        assert_eq!(p, Params { pool_name: Some("pool0".into()), fs_type: Some(FsType::Xfs), overprovisioning: 2.5 });
        assert_eq!(Params::parse(&m(&[("csi.storage.k8s.io/fstype", "ext4")])).unwrap().fs_type, Some(FsType::Ext4));
        let err = |kv: &[(&str, &str)]| Params::parse(&m(kv)).unwrap_err().to_string();
        assert!(err(&[("colour", "red")]).starts_with("parameters[colour]: unknown parameter"));
        assert!(err(&[("fsType", "btrfs")]).contains("\"btrfs\" is not supported"));
        assert!(err(&[("overprovisioning", "0.5")]).contains("below 1.0"));
        assert!(err(&[("overprovisioning", "lots")]).contains("not a number"));
        assert!(err(&[("overprovisioning", "NaN")]).contains("below 1.0"));
        assert!(err(&[("pool", "")]).contains("empty pool name"));
        assert!(err(&[("fsType", "xfs"), ("csi.storage.k8s.io/fstype", "ext4")]).contains("disagree"));
        assert!(check_snapshot_params(&m(&[("csi.storage.k8s.io/volumesnapshot/name", "s")])).is_ok());
        assert!(check_snapshot_params(&m(&[("x", "y")])).unwrap_err().to_string().starts_with("parameters[x]"));
    }

    #[test]
    fn sizes() {
        assert_eq!(size_for(None, DEFAULT_SIZE).unwrap(), 1 << 30);
        assert_eq!(size_for(Some(&range(1, 0)), DEFAULT_SIZE).unwrap(), BLOCK);
        assert_eq!(size_for(Some(&range(BLOCK as i64 + 1, 0)), DEFAULT_SIZE).unwrap(), 2 * BLOCK);
        assert_eq!(size_for(Some(&range(0, 0)), DEFAULT_SIZE).unwrap(), 1 << 30);
        // only a limit: the default, capped to the limit
        assert_eq!(size_for(Some(&range(0, 1 << 20)), DEFAULT_SIZE).unwrap(), 1 << 20);
        // a limit between block boundaries: round down if that still covers required
        assert_eq!(size_for(Some(&range(1000, 100_000)), DEFAULT_SIZE).unwrap(), BLOCK);
        assert!(matches!(size_for(Some(&range(70_000, 100_000)), DEFAULT_SIZE), Err(Error::OutOfRange(_))));
        assert!(matches!(size_for(Some(&range(10, 5)), DEFAULT_SIZE), Err(Error::OutOfRange(_))));
        assert!(matches!(size_for(Some(&range(-1, 0)), DEFAULT_SIZE), Err(Error::InvalidArgument { .. })));
        assert_eq!(round_up(10 << 30), 10 << 30);
        assert!(size_fits(1 << 30, Some(&range(1 << 30, 1 << 30))));
        assert!(!size_fits(1 << 30, Some(&range(2 << 30, 2 << 30))));
        assert!(size_fits(1 << 30, None));
    }

    fn cap(access: Option<AccessType>, mode: Mode) -> VolumeCapability {
        VolumeCapability { access_type: access, access_mode: Some(AccessMode { mode: mode as i32 }) }
    }

    #[test]
    fn capabilities() {
        let mount = |fs: &str| Some(AccessType::Mount(MountVolume { fs_type: fs.into(), ..Default::default() }));
        let block = Some(AccessType::Block(BlockVolume {}));
        assert_eq!(check_capabilities(&[cap(mount(""), Mode::SingleNodeWriter)]).unwrap(), (Access::Mount, None));
        assert_eq!(check_capabilities(&[cap(mount("xfs"), Mode::SingleNodeWriter)]).unwrap(), (Access::Mount, Some(FsType::Xfs)));
        assert_eq!(check_capabilities(&[cap(block.clone(), Mode::SingleNodeMultiWriter)]).unwrap(), (Access::Block, None));
        assert!(check_capabilities(&[]).unwrap_err().to_string().starts_with("volume_capabilities: missing"));
        assert!(check_capabilities(&[cap(block, Mode::MultiNodeMultiWriter)]).unwrap_err().to_string().contains("node-local"));
        assert!(check_capabilities(&[cap(None, Mode::SingleNodeWriter)]).unwrap_err().to_string().contains("access_type is missing"));
        assert!(check_capabilities(&[cap(mount("btrfs"), Mode::SingleNodeWriter)]).is_err());
        assert!(check_capabilities(&[cap(mount("ext4"), Mode::SingleNodeWriter), cap(mount("xfs"), Mode::SingleNodeWriter)]).is_err());
    }

    #[test]
    fn paging() {
        let d = |i: u32| DeviceRef::new("p", ThinId::new(i.into()).unwrap(), 1);
        let items = |n: u32| (0..n).rev().map(|i| (d(i), i)).collect::<Vec<_>>();
        let (page1, next) = page(items(5), "", 2).unwrap();
        assert_eq!(page1.iter().map(|x| x.1).collect::<Vec<_>>(), [0, 1]);
        assert_eq!(next, "p:1:1");
        // the last entry of the page deleted: the next page still starts after it
        let without_1: Vec<_> = items(5).into_iter().filter(|(_, i)| *i != 1).collect();
        let (page2, next2) = page(without_1, &next, 0).unwrap();
        assert_eq!(page2.iter().map(|x| x.1).collect::<Vec<_>>(), [2, 3, 4]);
        assert_eq!(next2, "");
        let (all, none) = page(items(3), "", 3).unwrap();
        assert_eq!((all.len(), none.as_str()), (3, ""));
        assert!(matches!(page(items(3), "invalid-token", 0), Err(Error::Aborted(_))));
        assert!(matches!(page(items(3), "", -1), Err(Error::InvalidArgument { .. })));
        // ordering is numeric per pool
        let (p, _) = page(vec![(d(10), 10), (d(9), 9)], "", 0).unwrap();
        assert_eq!(p[0].1, 9);
    }

    fn pool(mode: Option<PoolMode>, health: PoolHealth, meta: (u64, u64)) -> ThinPool {
        let mut p = ThinPool::new("u", ThinPoolSpec::new("n", "pool0", "u", 0));
        p.status = Some(ThinPoolStatus {
            data_total_bytes: Some(1 << 30),
            metadata_used_bytes: Some(meta.0),
            metadata_total_bytes: Some(meta.1),
            mode,
            health: Some(health),
            ..Default::default()
        });
        p
    }

    #[test]
    fn capacity() {
        let ok = pool(Some(PoolMode::ReadWrite), PoolHealth::Healthy, (10, 100));
        assert_eq!(available(&ok, 10.0, 0), 10 << 30);
        assert_eq!(available(&ok, 10.0, 3 << 30), 7 << 30);
        assert_eq!(available(&ok, 1.0, 3 << 30), 0);
        assert_eq!(available(&ok, 1.5, 0), 3 << 29);
        assert_eq!(available(&pool(Some(PoolMode::ReadWrite), PoolHealth::Healthy, (91, 100)), 10.0, 0), 0);
        assert_eq!(available(&pool(Some(PoolMode::ReadOnly), PoolHealth::Healthy, (1, 100)), 10.0, 0), 0);
        assert_eq!(available(&pool(Some(PoolMode::NeedsCheck), PoolHealth::Healthy, (1, 100)), 10.0, 0), 0);
        assert_eq!(available(&pool(Some(PoolMode::ReadWrite), PoolHealth::Unhealthy, (1, 100)), 10.0, 0), 0);
        assert_eq!(available(&ThinPool::new("u", ThinPoolSpec::new("n", "p", "u", 0)), 10.0, 0), 0);
    }

    /// Blocks the kernel counts used beyond what the volumes' sizes say (a
    /// snapshot's exclusive blocks) shrink the room: before, only the sizes
    /// counted and a pool whose snapshots held most of it reported 10 GiB.
    #[test]
    fn capacity_counts_physical_use() {
        let mut p = pool(Some(PoolMode::ReadWrite), PoolHealth::Healthy, (10, 100));
        p.status.as_mut().unwrap().data_used_bytes = Some(900 << 20);
        // (1 GiB − 900 MiB) × 10 = 1240 MiB, under the budget of 10 GiB − 1 GiB.
        assert_eq!(available(&p, 10.0, 1 << 30), 1240 << 20);
        assert_eq!(available(&p, 1.0, 0), 124 << 20);
        // The budget still bounds it when little is used.
        p.status.as_mut().unwrap().data_used_bytes = Some(1 << 20);
        assert_eq!(available(&p, 2.0, 1 << 30), 1 << 30);
    }

    #[test]
    fn volume_conditions() {
        let reasons = |p: Option<&ThinPool>| conditions(p).iter().map(|c| c.entry().reason).collect::<Vec<_>>();
        assert!(reasons(Some(&pool(Some(PoolMode::ReadWrite), PoolHealth::Healthy, (1, 100)))).is_empty());
        assert!(reasons(Some(&pool(Some(PoolMode::ReadWrite), PoolHealth::Healthy, (95, 100)))).is_empty());
        assert_eq!(reasons(Some(&pool(Some(PoolMode::OutOfDataSpace), PoolHealth::Healthy, (1, 100)))), ["PoolOutOfDataSpace"]);
        assert_eq!(reasons(Some(&pool(Some(PoolMode::ReadOnly), PoolHealth::Healthy, (1, 100)))), ["PoolReadOnly"]);
        assert_eq!(reasons(Some(&pool(Some(PoolMode::NeedsCheck), PoolHealth::Unhealthy, (1, 100)))), ["PoolUnhealthy", "PoolNeedsCheck"]);
        assert_eq!(reasons(None), ["PoolGone"]);
    }
}
