//! The CSI volume and snapshot id, `<ThinPool object name>:<thin device
//! id>:<create transaction>` (docs/csi.md), and its one parser: both
//! binaries accept exactly the ids the controller issues and nothing else.
//!
//! The third part is the device's generation: the transaction that created
//! it (its object's `spec.createTransaction`, unique per pool record and
//! growing). Device ids are reused as soon as their delete has committed,
//! so `<pool>:<device>` alone could name a newer device; with the
//! generation, an id names one device for ever, and a lookup whose object
//! has another create transaction finds nothing (a stale retry of a
//! DeleteVolume cannot reach the device that reused the id).
//!
//! Ids of the two-part form `<pool>:<device>` (before the generation) are
//! not ours: nothing released ever issued them, so they name nothing (NOT
//! FOUND; a delete of one succeeds). An id of our shape whose generation is
//! malformed is bad input: [`IdError::BadGeneration`], INVALID_ARGUMENT.

use std::fmt;

use thinpool::ThinId;

use crate::keys::{LABEL_DEVICE, LABEL_POOL};

/// A volume or snapshot: which pool object's record, which thin device, and
/// which generation of that device id.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DeviceRef {
    /// The ThinPool object's name (the pool's UUID). Everywhere in the code,
    /// `pool` is this name; the node-local name is `pool_name`.
    pub pool: String,
    pub device: ThinId,
    /// The transaction that created the device (its object's
    /// `spec.createTransaction`); at least 1.
    pub generation: u64,
}

/// Why a string is not an id of this driver.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// The request carries no id at all: INVALID_ARGUMENT.
    #[error("missing")]
    Missing,
    /// Not an id this driver issued, so it names nothing we have: NOT_FOUND.
    #[error("{0:?} is not an id of this driver (<pool>:<thin device id>:<create transaction>)")]
    NotOurs(String),
    /// Our pool and device, but the generation is not a canonical decimal
    /// of at least 1: INVALID_ARGUMENT.
    #[error("{0:?}: the create transaction after the device id must be a decimal number from 1 without leading zeros")]
    BadGeneration(String),
}

impl IdError {
    /// Whether the id is bad input (INVALID_ARGUMENT) rather than one that
    /// names nothing (NOT_FOUND).
    pub fn is_invalid(&self) -> bool {
        matches!(self, IdError::Missing | IdError::BadGeneration(_))
    }
}

/// A canonical decimal: digits only, no sign, no leading zeros.
fn canonical_decimal(s: &str, max_len: usize) -> bool {
    !s.is_empty() && s.len() <= max_len && s.chars().all(|c| c.is_ascii_digit()) && (s == "0" || !s.starts_with('0'))
}

impl DeviceRef {
    pub fn new(pool: &str, device: ThinId, generation: u64) -> Self {
        DeviceRef { pool: pool.to_string(), device, generation }
    }

    /// Parses an id exactly as [`fmt::Display`] writes it: the pool a DNS
    /// label, the device decimal without sign or leading zeros and below
    /// 2^24, the generation decimal from 1 without leading zeros. So one
    /// device has one id, and `parse(id.to_string()) == id`.
    pub fn parse(id: &str) -> Result<Self, IdError> {
        if id.is_empty() {
            return Err(IdError::Missing);
        }
        let not_ours = || IdError::NotOurs(id.to_string());
        let (pool, rest) = id.split_once(':').ok_or_else(not_ours)?;
        let label_ok = !pool.is_empty()
            && pool.len() <= 63
            && pool.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
            && pool.starts_with(|c: char| c.is_ascii_alphanumeric())
            && pool.ends_with(|c: char| c.is_ascii_alphanumeric());
        // The two-part form (no generation) was never released: not ours.
        let (device, generation) = rest.split_once(':').ok_or_else(not_ours)?;
        if !label_ok || !canonical_decimal(device, 8) {
            return Err(not_ours());
        }
        let device: ThinId = device.parse().map_err(|_| not_ours())?;
        let generation = match generation.parse::<u64>() {
            Ok(g) if g >= 1 && canonical_decimal(generation, 20) => g,
            _ => return Err(IdError::BadGeneration(id.to_string())),
        };
        Ok(DeviceRef { pool: pool.to_string(), device, generation })
    }

    /// The label selector that finds the objects of this device id (of any
    /// generation: [`Self::names`] tells which one is this).
    pub fn selector(&self) -> String {
        format!("{LABEL_POOL}={},{LABEL_DEVICE}={}", self.pool, self.device)
    }

    /// Whether an object of pool `pool`, device `device`, created by
    /// transaction `create_transaction` is the one this id names.
    pub fn names(&self, pool: &str, device: ThinId, create_transaction: u64) -> bool {
        self.pool == pool && self.device == device && self.generation == create_transaction
    }
}

impl fmt::Display for DeviceRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.pool, self.device, self.generation)
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
        let r = DeviceRef::parse("3945ce1997034a5a9238173c2f13176b:17:42").unwrap();
        assert_eq!(r, DeviceRef::new("3945ce1997034a5a9238173c2f13176b", t(17), 42));
        assert_eq!(r.to_string(), "3945ce1997034a5a9238173c2f13176b:17:42");
        assert_eq!(DeviceRef::parse("a-b:16777215:1").unwrap().device, ThinId::MAX);
        assert_eq!(DeviceRef::parse("p:0:18446744073709551615").unwrap(), DeviceRef::new("p", t(0), u64::MAX));
        assert_eq!(r.selector(), "thin.csi.io/pool=3945ce1997034a5a9238173c2f13176b,thin.csi.io/device-id=17");
        assert!(r.names("3945ce1997034a5a9238173c2f13176b", t(17), 42));
        // The same device id of another generation (reused) is another device.
        assert!(!r.names("3945ce1997034a5a9238173c2f13176b", t(17), 43));
        assert!(!r.names("other", t(17), 42));
    }

    #[test]
    fn anything_else_is_not_ours() {
        assert_eq!(DeviceRef::parse(""), Err(IdError::Missing));
        for bad in [
            "nocolon", ":5:1", "p::1", "p:-1:1", "p:+1:1", "p:007:1", "p:16777216:1", "p:99999999999:1", "P:1:1", "-p:1:1", "p-:1:1", "p_q:1:1",
            "p: 1:1", "a/b:1:1",
            // The two-part form of before the generation: never released.
            "p:1", "p:0", "3945ce1997034a5a9238173c2f13176b:17",
        ] {
            assert_eq!(DeviceRef::parse(bad), Err(IdError::NotOurs(bad.to_string())), "{bad:?}");
            assert!(!IdError::NotOurs(bad.into()).is_invalid());
        }
        assert!(DeviceRef::parse(&format!("{}:1:1", "a".repeat(64))).is_err());
    }

    #[test]
    fn a_malformed_generation_is_bad_input() {
        for bad in ["p:1:", "p:1:0", "p:1:007", "p:1:-3", "p:1:+3", "p:1:x", "p:1:2:3", "p:1: 2", "p:1:2 ", "p:1:18446744073709551616"] {
            let e = DeviceRef::parse(bad).unwrap_err();
            assert_eq!(e, IdError::BadGeneration(bad.to_string()), "{bad:?}");
            assert!(e.is_invalid());
            assert!(e.to_string().contains("create transaction"), "{e}");
        }
    }
}
