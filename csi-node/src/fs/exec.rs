//! Running the few external tools this layer needs, with typed errors.

use std::ffi::OsStr;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use super::error::{FsError, Result};

/// How much of a tool's stderr an error message carries (its tail).
const STDERR_TAIL: usize = 2000;

/// Runs `tool args...` with stdin closed and a C locale; returns its output
/// whatever the exit status. `path` is the device or directory the run is
/// about, for error messages.
pub(crate) fn run_raw<I, S>(tool: &str, args: I, path: &Path) -> Result<Output>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    tracing::debug!(tool, path = %path.display(), "running");
    Command::new(tool)
        .args(args)
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .map_err(|source| FsError::ToolUnavailable { tool: tool.to_string(), path: path.to_path_buf(), source })
}

/// Runs a tool and requires exit status 0.
pub(crate) fn run<I, S>(tool: &str, args: I, path: &Path) -> Result<Output>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let out = run_raw(tool, args, path)?;
    if out.status.success() {
        Ok(out)
    } else {
        Err(failed(tool, path, &out))
    }
}

/// The error for a tool that ran and failed.
pub(crate) fn failed(tool: &str, path: &Path, out: &Output) -> FsError {
    let status = match out.status.code() {
        Some(code) => format!("exit status {code}"),
        None => format!("{}", out.status),
    };
    // Tools put their reason on stderr, some (mkfs.xfs usage) on stdout.
    let mut text = String::from_utf8_lossy(&out.stderr).trim().to_string();
    if text.is_empty() {
        text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    }
    if text.is_empty() {
        text = "no output".into();
    }
    FsError::ToolFailed { tool: tool.to_string(), path: path.to_path_buf(), status, stderr: tail(&text, STDERR_TAIL) }
}

/// The last `max` bytes of `text`, cut on a character boundary, with the
/// lines joined so the message stays on one line.
pub(crate) fn tail(text: &str, max: usize) -> String {
    let mut start = text.len().saturating_sub(max);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    let cut = &text[start..];
    let joined: Vec<&str> = cut.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    let joined = joined.join("; ");
    if start > 0 {
        format!("...{joined}")
    } else {
        joined
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_cuts_and_joins() {
        assert_eq!(tail("a\n\n b \nc\n", 100), "a; b; c");
        assert_eq!(tail("0123456789", 4), "...6789");
        // Never splits a character.
        assert_eq!(tail("ééé", 3), "...é");
    }

    #[test]
    fn missing_tool_is_named() {
        let err = run("thin-csi-no-such-tool", ["x"], Path::new("/dev/loop9")).unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with("cannot run thin-csi-no-such-tool for /dev/loop9: "), "{msg}");
    }

    #[test]
    fn failing_tool_reports_status_and_stderr() {
        let err = run("sh", ["-c", "echo first >&2; echo 'it broke' >&2; exit 3"], Path::new("/dev/x")).unwrap_err();
        assert_eq!(err.to_string(), "sh on /dev/x failed (exit status 3): first; it broke");
    }
}
