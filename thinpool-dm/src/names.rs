//! Device-mapper names of a pool's devices, so that a node finds everything
//! again from the pool name alone (after a restart of csi-node, or by hand
//! with `dmsetup ls`).
//!
//! `thincsi-<pool>-meta`, `thincsi-<pool>-data` (dm-linear areas of a pool
//! laid out on one device), `thincsi-<pool>-pool` (the thin-pool target) and
//! `thincsi-<pool>-thin-<id>` (thin devices, id in decimal).
//!
//! Names are unambiguous across pools: a pool name is `[a-z0-9-]`, and a
//! thin device name ends in `-thin-<digits>`, which no `-meta`, `-data` or
//! `-pool` name does; [`DeviceNames::thin_id`] accepts only the canonical
//! decimal form, so a name maps to at most one (pool, id).

use std::path::PathBuf;

use thinpool::{PoolName, ThinId};

/// Prefix of every device-mapper device this crate creates.
pub const PREFIX: &str = "thincsi-";

/// Where device nodes of device-mapper devices live.
pub const MAPPER_DIR: &str = "/dev/mapper";

/// The device-mapper names of one pool's devices.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceNames {
    pool: PoolName,
}

impl DeviceNames {
    pub fn new(pool: &PoolName) -> Self {
        DeviceNames { pool: pool.clone() }
    }

    pub fn pool_name(&self) -> &PoolName {
        &self.pool
    }

    /// The dm-linear map of the metadata area (one-device layout).
    pub fn metadata(&self) -> String {
        format!("{PREFIX}{}-meta", self.pool)
    }

    /// The dm-linear map of the data area (one-device layout).
    pub fn data(&self) -> String {
        format!("{PREFIX}{}-data", self.pool)
    }

    /// The thin-pool target.
    pub fn pool(&self) -> String {
        format!("{PREFIX}{}-pool", self.pool)
    }

    /// Everything before the id in a thin device's name.
    pub fn thin_prefix(&self) -> String {
        format!("{PREFIX}{}-thin-", self.pool)
    }

    pub fn thin(&self, id: ThinId) -> String {
        format!("{}{id}", self.thin_prefix())
    }

    /// The thin id a device-mapper name stands for, if it is one of this
    /// pool's thin devices.
    pub fn thin_id(&self, dm_name: &str) -> Option<ThinId> {
        let digits = dm_name.strip_prefix(&self.thin_prefix())?;
        let canonical = !digits.is_empty()
            && digits.bytes().all(|b| b.is_ascii_digit())
            && (digits == "0" || !digits.starts_with('0'));
        if !canonical {
            return None;
        }
        digits.parse().ok()
    }
}

/// The device-mapper uuid of a laid-out pool's device: it ties an active
/// device to the pool's identity (the uuid in its header), so a pool of the
/// same name from another disk is never mistaken for it.
pub fn dm_uuid(pool_uuid_hex: &str, role: &str) -> String {
    format!("THINCSI-{pool_uuid_hex}-{role}")
}

/// `/dev/mapper/<name>`.
pub fn mapper_path(dm_name: &str) -> PathBuf {
    PathBuf::from(MAPPER_DIR).join(dm_name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(pool: &str) -> DeviceNames {
        DeviceNames::new(&PoolName::new(pool).unwrap())
    }

    fn id(n: u32) -> ThinId {
        ThinId::new(n.into()).unwrap()
    }

    #[test]
    fn formats_every_device_name() {
        let n = names("nvme0-pool");
        assert_eq!(n.metadata(), "thincsi-nvme0-pool-meta");
        assert_eq!(n.data(), "thincsi-nvme0-pool-data");
        assert_eq!(n.pool(), "thincsi-nvme0-pool-pool");
        assert_eq!(n.thin(id(0)), "thincsi-nvme0-pool-thin-0");
        assert_eq!(n.thin(ThinId::MAX), "thincsi-nvme0-pool-thin-16777215");
        assert_eq!(
            mapper_path(&n.thin(id(7))),
            PathBuf::from("/dev/mapper/thincsi-nvme0-pool-thin-7")
        );
        // The longest names fit device-mapper's 127 characters.
        let long = names(&"a".repeat(PoolName::MAX_LEN));
        assert!(long.thin(ThinId::MAX).len() < 128);
        assert_eq!(dm_uuid("00ff", "pool"), "THINCSI-00ff-pool");
    }

    #[test]
    fn thin_names_parse_back_to_their_id_only() {
        let n = names("p");
        for raw in [0, 1, 42, ThinId::MAX.get()] {
            assert_eq!(n.thin_id(&n.thin(id(raw))), Some(id(raw)));
        }
        for other in [
            "thincsi-p-pool",
            "thincsi-p-meta",
            "thincsi-p-thin-",
            "thincsi-p-thin-01",
            "thincsi-p-thin-+1",
            "thincsi-p-thin-1x",
            "thincsi-p-thin-16777216",
            "thincsi-q-thin-1",
            "thincsi-p-thin-1-thin-2",
            "vg0-lv0",
        ] {
            assert_eq!(n.thin_id(other), None, "{other}");
        }
    }

    #[test]
    fn pools_whose_names_nest_do_not_see_each_others_thins() {
        let a = names("a");
        let nested = names("a-thin-1");
        assert_eq!(a.thin_id(&nested.thin(id(5))), None);
        assert_eq!(a.thin_id(&nested.pool()), None);
        assert_eq!(nested.thin_id(&a.thin(id(1))), None);
    }
}
