//! Typed identifiers and sizes. Raw integers never cross a module boundary.

use std::fmt;
use std::str::FromStr;

/// A thin device id inside one pool. The kernel keeps 24 bits of it. The
/// one device-id type of every layer: on the wire (feature `schema`) it is
/// a plain integer whose schema carries the bounds, and deserializing an
/// out-of-range number fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "schema", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "schema", serde(try_from = "u64", into = "u32"))]
pub struct ThinId(u32);

impl TryFrom<u64> for ThinId {
    type Error = IdError;
    fn try_from(raw: u64) -> Result<Self, IdError> {
        ThinId::new(raw)
    }
}

impl From<ThinId> for u32 {
    fn from(id: ThinId) -> u32 {
        id.0
    }
}

#[cfg(feature = "schema")]
impl schemars::JsonSchema for ThinId {
    fn inline_schema() -> bool {
        true
    }

    fn schema_name() -> std::borrow::Cow<'static, str> {
        "ThinId".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "integer",
            "format": "int64",
            "minimum": 0,
            "maximum": ThinId::LIMIT - 1,
            "description": "A thin device id: 0..=16777215 (24 bits)."
        })
    }
}

impl ThinId {
    /// One past the largest id the kernel accepts (`2^24`).
    pub const LIMIT: u32 = 1 << 24;
    pub const MAX: ThinId = ThinId(Self::LIMIT - 1);

    pub fn new(raw: u64) -> Result<Self, IdError> {
        if raw < u64::from(Self::LIMIT) {
            Ok(ThinId(raw as u32))
        } else {
            Err(IdError::ThinIdOutOfRange(raw))
        }
    }

    pub const fn get(self) -> u32 {
        self.0
    }
}

impl fmt::Display for ThinId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl FromStr for ThinId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        let raw: u64 = s.parse().map_err(|_| IdError::NotANumber(s.to_string()))?;
        ThinId::new(raw)
    }
}

/// A pool transaction id: a 64-bit counter kept in pool metadata, moved only
/// by `set_transaction_id <current> <new>`. A fresh pool is at 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct TransactionId(u64);

impl TransactionId {
    pub const ZERO: TransactionId = TransactionId(0);

    pub fn new(raw: u64) -> Self {
        TransactionId(raw)
    }

    pub fn get(self) -> u64 {
        self.0
    }

    /// The id a transaction must find the kernel at before it commits.
    /// `None` for 0, which no transaction can have.
    pub fn predecessor(self) -> Option<TransactionId> {
        self.0.checked_sub(1).map(TransactionId)
    }

    pub fn successor(self) -> TransactionId {
        TransactionId(self.0 + 1)
    }
}

impl fmt::Display for TransactionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A length in 512-byte sectors, the unit of device-mapper tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Sectors(pub u64);

impl Sectors {
    pub const SIZE: u64 = 512;

    pub fn from_bytes_ceil(bytes: u64) -> Sectors {
        Sectors(bytes.div_ceil(Self::SIZE))
    }

    pub fn bytes(self) -> u64 {
        self.0 * Self::SIZE
    }
}

impl fmt::Display for Sectors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}s", self.0)
    }
}

/// A pool's name on its node: short, and safe inside a device-mapper name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PoolName(String);

impl PoolName {
    pub const MAX_LEN: usize = 48;

    pub fn new(name: &str) -> Result<Self, IdError> {
        let ok_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-';
        if name.is_empty() || name.len() > Self::MAX_LEN || !name.chars().all(ok_char) || name.starts_with('-') {
            return Err(IdError::BadPoolName(name.to_string()));
        }
        Ok(PoolName(name.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for PoolName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("thin device id {0} is out of range: the kernel accepts 0..=16777215 (24 bits)")]
    ThinIdOutOfRange(u64),
    #[error("{0:?} is not a number")]
    NotANumber(String),
    #[error("pool name {0:?} is invalid: use 1 to 48 characters of a-z, 0-9 and '-', not starting with '-'")]
    BadPoolName(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thin_id_is_24_bits() {
        assert_eq!(ThinId::new(0).unwrap().get(), 0);
        assert_eq!(ThinId::new((1 << 24) - 1).unwrap(), ThinId::MAX);
        assert_eq!(ThinId::new(1 << 24), Err(IdError::ThinIdOutOfRange(1 << 24)));
        assert!("16777216".parse::<ThinId>().is_err());
        assert!("x".parse::<ThinId>().is_err());
    }

    #[test]
    fn transaction_id_neighbours() {
        assert_eq!(TransactionId::ZERO.predecessor(), None);
        assert_eq!(TransactionId::new(5).predecessor(), Some(TransactionId::new(4)));
        assert_eq!(TransactionId::new(5).successor(), TransactionId::new(6));
    }

    #[test]
    fn pool_names() {
        assert!(PoolName::new("nvme0-pool").is_ok());
        assert!(PoolName::new("").is_err());
        assert!(PoolName::new("Bad_Name").is_err());
        assert!(PoolName::new("-x").is_err());
        assert!(PoolName::new(&"a".repeat(49)).is_err());
    }
}
