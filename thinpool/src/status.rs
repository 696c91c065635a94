//! The thin-pool target's status line, parsed into a typed value.
//!
//! `<transaction id> <used meta>/<total meta> <used data>/<total data>
//!  <held root|-> rw|ro|out_of_data_space [no_]discard_passdown
//!  error_if_no_space|queue_if_no_space needs_check|- [<metadata low watermark>]`
//! or the single word `Fail` (or `Error`) when the pool has failed.

use std::str::FromStr;

use crate::ids::TransactionId;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PoolMode {
    ReadWrite,
    OutOfDataSpace,
    ReadOnly,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Usage {
    pub used: u64,
    pub total: u64,
}

impl Usage {
    pub fn free(&self) -> u64 {
        self.total.saturating_sub(self.used)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkingStatus {
    pub transaction_id: TransactionId,
    /// In metadata blocks (4 KiB).
    pub metadata: Usage,
    /// In data blocks (the pool's block size).
    pub data: Usage,
    pub held_metadata_root: Option<u64>,
    pub mode: PoolMode,
    pub discard_passdown: bool,
    pub error_if_no_space: bool,
    pub needs_check: bool,
    pub metadata_low_watermark: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PoolStatus {
    Working(WorkingStatus),
    /// The kernel gave up on the pool (`Fail`/`Error`): no message will work.
    Failed,
}

impl PoolStatus {
    pub fn working(&self) -> Option<&WorkingStatus> {
        match self {
            PoolStatus::Working(w) => Some(w),
            PoolStatus::Failed => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot parse thin-pool status {line:?}: {why}")]
pub struct StatusParseError {
    pub line: String,
    pub why: String,
}

impl FromStr for PoolStatus {
    type Err = StatusParseError;

    fn from_str(line: &str) -> Result<Self, Self::Err> {
        let fail = |why: &str| StatusParseError { line: line.to_string(), why: why.to_string() };
        let fields: Vec<&str> = line.split_whitespace().collect();
        match fields.as_slice() {
            ["Fail"] | ["Error"] => return Ok(PoolStatus::Failed),
            f if f.len() < 8 => return Err(fail("expected at least 8 fields")),
            _ => {}
        }
        let number = |s: &str, what: &str| s.parse::<u64>().map_err(|_| fail(&format!("{what} {s:?} is not a number")));
        let usage = |s: &str, what: &str| -> Result<Usage, StatusParseError> {
            let (used, total) = s.split_once('/').ok_or_else(|| fail(&format!("{what} {s:?} is not used/total")))?;
            Ok(Usage { used: number(used, what)?, total: number(total, what)? })
        };
        let mode = match fields[4] {
            "rw" => PoolMode::ReadWrite,
            "ro" => PoolMode::ReadOnly,
            "out_of_data_space" => PoolMode::OutOfDataSpace,
            other => return Err(fail(&format!("unknown mode {other:?}"))),
        };
        let discard_passdown = match fields[5] {
            "discard_passdown" => true,
            "no_discard_passdown" => false,
            other => return Err(fail(&format!("unknown discard field {other:?}"))),
        };
        let error_if_no_space = match fields[6] {
            "error_if_no_space" => true,
            "queue_if_no_space" => false,
            other => return Err(fail(&format!("unknown no-space policy {other:?}"))),
        };
        let needs_check = match fields[7] {
            "needs_check" => true,
            "-" => false,
            other => return Err(fail(&format!("unknown needs_check field {other:?}"))),
        };
        Ok(PoolStatus::Working(WorkingStatus {
            transaction_id: TransactionId::new(number(fields[0], "transaction id")?),
            metadata: usage(fields[1], "metadata usage")?,
            data: usage(fields[2], "data usage")?,
            held_metadata_root: match fields[3] {
                "-" => None,
                s => Some(number(s, "held metadata root")?),
            },
            mode,
            discard_passdown,
            error_if_no_space,
            needs_check,
            metadata_low_watermark: fields.get(8).map(|s| number(s, "metadata low watermark")).transpose()?,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_kernel_6_1_line() {
        let s: PoolStatus = "7 21/4096 10/16384 - rw discard_passdown queue_if_no_space - 1024".parse().unwrap();
        let w = s.working().unwrap();
        assert_eq!(w.transaction_id, TransactionId::new(7));
        assert_eq!(w.metadata, Usage { used: 21, total: 4096 });
        assert_eq!(w.data.free(), 16374);
        assert_eq!(w.mode, PoolMode::ReadWrite);
        assert!(!w.needs_check && !w.error_if_no_space && w.discard_passdown);
        assert_eq!(w.metadata_low_watermark, Some(1024));
        assert_eq!(w.held_metadata_root, None);
    }

    #[test]
    fn parses_modes_flags_and_older_lines() {
        let s: PoolStatus = "18446744073709551615 1/2 3/4 99 out_of_data_space no_discard_passdown error_if_no_space needs_check"
            .parse()
            .unwrap();
        let w = s.working().unwrap();
        assert_eq!(w.transaction_id.get(), u64::MAX);
        assert_eq!(w.mode, PoolMode::OutOfDataSpace);
        assert!(w.needs_check && w.error_if_no_space && !w.discard_passdown);
        assert_eq!(w.held_metadata_root, Some(99));
        assert_eq!(w.metadata_low_watermark, None);
        let ro: PoolStatus = "1 1/2 3/4 - ro no_discard_passdown queue_if_no_space -".parse().unwrap();
        assert_eq!(ro.working().unwrap().mode, PoolMode::ReadOnly);
        assert_eq!("Fail".parse::<PoolStatus>().unwrap(), PoolStatus::Failed);
    }

    #[test]
    fn rejects_garbage_saying_why() {
        for bad in ["", "1 2 3", "x 1/2 3/4 - rw discard_passdown queue_if_no_space -", "1 1-2 3/4 - rw discard_passdown queue_if_no_space -", "1 1/2 3/4 - maybe discard_passdown queue_if_no_space -"] {
            let err = bad.parse::<PoolStatus>().unwrap_err();
            assert!(!err.why.is_empty(), "{bad:?}");
        }
    }
}
