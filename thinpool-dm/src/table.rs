//! The device-mapper tables this crate loads, as typed values: rendered into
//! the parameter strings the kernel takes, and parsed back from what the
//! kernel reports (`table_status` with `DM_STATUS_TABLE`), so an active
//! device can be checked against what it should be before it is adopted.
//!
//! The kernel reports devices as `major:minor` and may add a trailing space;
//! parsing is by whitespace-separated fields.

use std::fmt;
use std::str::FromStr;

use devicemapper::Device;
use thinpool::{Sectors, ThinId};

/// One line of a table: `<start> <length> <target type> <params>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableLine {
    pub start: Sectors,
    pub length: Sectors,
    pub target: Target,
}

impl TableLine {
    /// The form `DM::table_load` takes.
    pub fn to_dm(&self) -> (u64, u64, String, String) {
        (
            self.start.0,
            self.length.0,
            self.target.type_name().to_string(),
            self.target.params(),
        )
    }

    /// A line as `DM::table_status` returns it.
    pub fn from_dm(line: &(u64, u64, String, String)) -> Result<TableLine, TableParseError> {
        let (start, length, kind, params) = line;
        Ok(TableLine {
            start: Sectors(*start),
            length: Sectors(*length),
            target: Target::parse(kind, params)?,
        })
    }
}

impl fmt::Display for TableLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} {} {}",
            self.start.0,
            self.length.0,
            self.target.type_name(),
            self.target.params()
        )
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    Linear(LinearParams),
    ThinPool(ThinPoolParams),
    Thin(ThinParams),
}

impl Target {
    pub fn type_name(&self) -> &'static str {
        match self {
            Target::Linear(_) => "linear",
            Target::ThinPool(_) => "thin-pool",
            Target::Thin(_) => "thin",
        }
    }

    pub fn params(&self) -> String {
        match self {
            Target::Linear(p) => p.to_string(),
            Target::ThinPool(p) => p.to_string(),
            Target::Thin(p) => p.to_string(),
        }
    }

    pub fn parse(type_name: &str, params: &str) -> Result<Target, TableParseError> {
        match type_name {
            "linear" => params.parse().map(Target::Linear),
            "thin-pool" => params.parse().map(Target::ThinPool),
            "thin" => params.parse().map(Target::Thin),
            other => Err(TableParseError::new(
                params,
                format!("target type {other:?} is not one this crate loads"),
            )),
        }
    }
}

/// `linear <device> <offset>`: a range of another block device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinearParams {
    pub device: Device,
    pub offset: Sectors,
}

impl fmt::Display for LinearParams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.device, self.offset.0)
    }
}

impl FromStr for LinearParams {
    type Err = TableParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_whitespace().collect::<Vec<_>>().as_slice() {
            [device, offset] => Ok(LinearParams {
                device: device_field(s, device)?,
                offset: Sectors(number(s, offset, "offset")?),
            }),
            _ => Err(TableParseError::new(s, "linear takes <device> <offset>")),
        }
    }
}

/// Optional features of a thin-pool table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolFeatures {
    /// Zero a data block the first time a thin device writes to it, so no
    /// volume ever reads another volume's old data (`skip_block_zeroing`
    /// when off).
    pub zero_new_blocks: bool,
    /// Fail writes at once when data space runs out, rather than queueing
    /// them for up to `no_space_timeout` (60 s by default).
    pub error_if_no_space: bool,
}

impl PoolFeatures {
    /// What this crate loads. Zeroing stays on: thin devices are handed to
    /// different tenants and a fresh block must never show what a deleted
    /// volume left there; the cost is one write per block on first use.
    /// No-space errors at once: nothing here grows a pool automatically, so
    /// queueing would only stall writers (and any suspend with flush of an
    /// origin) for the timeout before they fail anyway.
    pub const DEFAULT: PoolFeatures = PoolFeatures {
        zero_new_blocks: true,
        error_if_no_space: true,
    };

    fn words(&self) -> Vec<&'static str> {
        let mut words = Vec::new();
        if !self.zero_new_blocks {
            words.push("skip_block_zeroing");
        }
        if self.error_if_no_space {
            words.push("error_if_no_space");
        }
        words
    }
}

/// `thin-pool <metadata dev> <data dev> <block size> <low water mark> <#features> <features>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ThinPoolParams {
    pub metadata: Device,
    pub data: Device,
    /// Data block size, in sectors.
    pub block_size: Sectors,
    /// Free data blocks below which the kernel raises an event.
    pub low_water_mark: u64,
    pub features: PoolFeatures,
    /// Features the kernel reported that [`PoolFeatures`] does not model
    /// (`ignore_discard`, `no_discard_passdown`, `read_only`), kept so a
    /// comparison does not silently ignore them.
    pub other_features: Vec<String>,
}

impl fmt::Display for ThinPoolParams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut features: Vec<&str> = self.features.words();
        features.extend(self.other_features.iter().map(String::as_str));
        write!(
            f,
            "{} {} {} {} {}",
            self.metadata,
            self.data,
            self.block_size.0,
            self.low_water_mark,
            features.len()
        )?;
        for word in features {
            write!(f, " {word}")?;
        }
        Ok(())
    }
}

impl FromStr for ThinPoolParams {
    type Err = TableParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let fields: Vec<&str> = s.split_whitespace().collect();
        if fields.len() < 4 {
            return Err(TableParseError::new(s, "thin-pool takes <metadata dev> <data dev> <block size> <low water mark> [<#features> <features>]"));
        }
        let count = match fields.get(4) {
            Some(n) => usize::try_from(number(s, n, "feature count")?)
                .map_err(|_| TableParseError::new(s, "feature count too large"))?,
            None => 0,
        };
        let words = fields.get(5..).unwrap_or(&[]);
        if words.len() != count {
            return Err(TableParseError::new(
                s,
                format!("{count} features announced, {} given", words.len()),
            ));
        }
        let mut features = PoolFeatures {
            zero_new_blocks: true,
            error_if_no_space: false,
        };
        let mut other_features = Vec::new();
        for word in words {
            match *word {
                "skip_block_zeroing" => features.zero_new_blocks = false,
                "error_if_no_space" => features.error_if_no_space = true,
                other => other_features.push(other.to_string()),
            }
        }
        Ok(ThinPoolParams {
            metadata: device_field(s, fields[0])?,
            data: device_field(s, fields[1])?,
            block_size: Sectors(number(s, fields[2], "block size")?),
            low_water_mark: number(s, fields[3], "low water mark")?,
            features,
            other_features,
        })
    }
}

/// `thin <pool dev> <dev id>`. (External origins are not used.)
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ThinParams {
    pub pool: Device,
    pub id: ThinId,
}

impl fmt::Display for ThinParams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.pool, self.id)
    }
}

impl FromStr for ThinParams {
    type Err = TableParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_whitespace().collect::<Vec<_>>().as_slice() {
            [pool, id] => Ok(ThinParams {
                pool: device_field(s, pool)?,
                id: id
                    .parse()
                    .map_err(|e| TableParseError::new(s, format!("thin id: {e}")))?,
            }),
            [_, _, _] => Err(TableParseError::new(
                s,
                "a thin device with an external origin is not one of ours",
            )),
            _ => Err(TableParseError::new(s, "thin takes <pool dev> <dev id>")),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot parse table parameters {params:?}: {why}")]
pub struct TableParseError {
    pub params: String,
    pub why: String,
}

impl TableParseError {
    fn new(params: &str, why: impl Into<String>) -> Self {
        TableParseError {
            params: params.to_string(),
            why: why.into(),
        }
    }
}

fn number(params: &str, field: &str, what: &str) -> Result<u64, TableParseError> {
    field
        .parse()
        .map_err(|_| TableParseError::new(params, format!("{what} {field:?} is not a number")))
}

/// A `major:minor` field. (The kernel prints devices this way in tables.)
fn device_field(params: &str, field: &str) -> Result<Device, TableParseError> {
    let bad = || {
        TableParseError::new(
            params,
            format!("{field:?} is not a major:minor device number"),
        )
    };
    let (major, minor) = field.split_once(':').ok_or_else(bad)?;
    Ok(Device {
        major: major.parse().map_err(|_| bad())?,
        minor: minor.parse().map_err(|_| bad())?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(major: u32, minor: u32) -> Device {
        Device { major, minor }
    }

    #[test]
    fn renders_the_tables_the_kernel_takes() {
        let meta = TableLine {
            start: Sectors(0),
            length: Sectors(8192),
            target: Target::Linear(LinearParams {
                device: dev(7, 0),
                offset: Sectors(2048),
            }),
        };
        assert_eq!(meta.to_string(), "0 8192 linear 7:0 2048");
        let pool = ThinPoolParams {
            metadata: dev(253, 0),
            data: dev(253, 1),
            block_size: Sectors(128),
            low_water_mark: 409,
            features: PoolFeatures::DEFAULT,
            other_features: vec![],
        };
        assert_eq!(pool.to_string(), "253:0 253:1 128 409 1 error_if_no_space");
        let zeroing_off = ThinPoolParams {
            features: PoolFeatures {
                zero_new_blocks: false,
                error_if_no_space: false,
            },
            ..pool.clone()
        };
        assert_eq!(
            zeroing_off.to_string(),
            "253:0 253:1 128 409 1 skip_block_zeroing"
        );
        let thin = TableLine {
            start: Sectors(0),
            length: Sectors(2097152),
            target: Target::Thin(ThinParams {
                pool: dev(253, 2),
                id: ThinId::new(5).unwrap(),
            }),
        };
        assert_eq!(
            thin.to_dm(),
            (0, 2097152, "thin".to_string(), "253:2 5".to_string())
        );
    }

    #[test]
    fn parses_what_the_kernel_reports_back() {
        // As kernel 6.1 prints them, trailing space included.
        let pool: ThinPoolParams = "253:0 253:1 128 409 1 error_if_no_space ".parse().unwrap();
        assert_eq!(pool.metadata, dev(253, 0));
        assert_eq!(pool.block_size, Sectors(128));
        assert_eq!(pool.features, PoolFeatures::DEFAULT);
        assert!(pool.other_features.is_empty());
        let lvm: ThinPoolParams = "253:4 253:5 128 0 2 skip_block_zeroing no_discard_passdown"
            .parse()
            .unwrap();
        assert!(!lvm.features.zero_new_blocks);
        assert_eq!(lvm.other_features, vec!["no_discard_passdown".to_string()]);
        assert!(
            !"253:0 253:1 128 0 0"
                .parse::<ThinPoolParams>()
                .unwrap()
                .features
                .error_if_no_space
        );
        let line = TableLine::from_dm(&(0, 8192, "linear".into(), "7:0 2048".into())).unwrap();
        assert_eq!(
            line.target,
            Target::Linear(LinearParams {
                device: dev(7, 0),
                offset: Sectors(2048)
            })
        );
        let thin = TableLine::from_dm(&(0, 100, "thin".into(), "253:2 16777215".into())).unwrap();
        assert_eq!(
            thin.target,
            Target::Thin(ThinParams {
                pool: dev(253, 2),
                id: ThinId::MAX
            })
        );
    }

    #[test]
    fn rejects_tables_that_are_not_ours_saying_why() {
        for (kind, params) in [
            ("linear", "7:0"),
            ("linear", "/dev/loop0 0"),
            ("thin-pool", "253:0 253:1 128"),
            ("thin-pool", "253:0 253:1 128 0 2 skip_block_zeroing"),
            ("thin", "253:2 16777216"),
            ("thin", "253:2 1 253:9"),
            ("striped", "2 128 7:0 0 7:1 0"),
        ] {
            let err = Target::parse(kind, params).unwrap_err();
            assert!(!err.why.is_empty(), "{kind} {params}");
        }
    }
}
