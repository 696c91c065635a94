//! The CSI volume and snapshot id, `<ThinPool object name>:<thin device id>`
//! (docs/csi.md), and its one parser: both binaries accept exactly the ids
//! the controller issues and nothing else.

use std::fmt;

use thinpool::ThinId;

use crate::keys::{LABEL_DEVICE, LABEL_POOL};

/// A volume or snapshot: which pool object's record and which thin device.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DeviceRef {
    /// The ThinPool object's name (the pool's UUID). Everywhere in the code,
    /// `pool` is this name; the node-local name is `pool_name`.
    pub pool: String,
    pub device: ThinId,
}

/// Why a string is not an id of this driver.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// The request carries no id at all: INVALID_ARGUMENT.
    #[error("missing")]
    Missing,
    /// Not an id this driver issued, so it names nothing we have: NOT_FOUND.
    #[error("{0:?} is not an id of this driver (<pool>:<thin device id>)")]
    NotOurs(String),
}

impl DeviceRef {
    pub fn new(pool: &str, device: ThinId) -> Self {
        DeviceRef { pool: pool.to_string(), device }
    }

    /// Parses an id exactly as [`fmt::Display`] writes it: the pool a DNS
    /// label, the device decimal without sign or leading zeros and below
    /// 2^24. So one device has one id, and `parse(id.to_string()) == id`.
    pub fn parse(id: &str) -> Result<Self, IdError> {
        if id.is_empty() {
            return Err(IdError::Missing);
        }
        let not_ours = || IdError::NotOurs(id.to_string());
        let (pool, device) = id.rsplit_once(':').ok_or_else(not_ours)?;
        let label_ok = !pool.is_empty()
            && pool.len() <= 63
            && pool.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
            && pool.starts_with(|c: char| c.is_ascii_alphanumeric())
            && pool.ends_with(|c: char| c.is_ascii_alphanumeric());
        let canonical = !device.is_empty() && device.len() <= 8 && device.chars().all(|c| c.is_ascii_digit()) && (device == "0" || !device.starts_with('0'));
        if !label_ok || !canonical {
            return Err(not_ours());
        }
        let device: ThinId = device.parse().map_err(|_| not_ours())?;
        Ok(DeviceRef { pool: pool.to_string(), device })
    }

    /// The label selector that finds the object of this device.
    pub fn selector(&self) -> String {
        format!("{LABEL_POOL}={},{LABEL_DEVICE}={}", self.pool, self.device)
    }
}

impl fmt::Display for DeviceRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.pool, self.device)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(n: u32) -> ThinId {
        ThinId::new(n.into()).unwrap()
    }

    #[test]
    fn ids_round_trip() {
        let r = DeviceRef::parse("3945ce1997034a5a9238173c2f13176b:17").unwrap();
        assert_eq!(r, DeviceRef::new("3945ce1997034a5a9238173c2f13176b", t(17)));
        assert_eq!(r.to_string(), "3945ce1997034a5a9238173c2f13176b:17");
        assert_eq!(DeviceRef::parse("a-b:16777215").unwrap().device, ThinId::MAX);
        assert_eq!(DeviceRef::parse("p:0").unwrap().device, t(0));
        assert_eq!(r.selector(), "thin.csi.io/pool=3945ce1997034a5a9238173c2f13176b,thin.csi.io/device-id=17");
    }

    #[test]
    fn anything_else_is_not_ours() {
        assert_eq!(DeviceRef::parse(""), Err(IdError::Missing));
        for bad in [
            "nocolon", ":5", "p:", "p:-1", "p:+1", "p:007", "p:16777216", "p:99999999999", "P:1", "-p:1", "p-:1", "p_q:1", "p:1:2x",
            "p: 1", "p:1 ", "a/b:1",
        ] {
            assert_eq!(DeviceRef::parse(bad), Err(IdError::NotOurs(bad.to_string())), "{bad:?}");
        }
        assert!(DeviceRef::parse(&format!("{}:1", "a".repeat(64))).is_err());
    }
}
