//! The one reporter of every e2e test program (the drivers in
//! `e2e/suites/src/bin`, `thin-vmtest`, `api-faults`): the `PASS`/`FAIL`
//! lines the suites count (e2e/lib.sh `summarize`), the counting, the
//! program's summary line and exit status, and the panic hook that makes a
//! panic a counted failure.
//!
//! Line formats (the suites grep the first word only):
//!
//!   PASS <name>                 PASS <name> (<detail>)
//!   FAIL <name> (<why>)
//!   <program>: N passed, M failed          (Report::finish)
//!   FAIL <program> <subcommand>: panicked at FILE:LINE: MESSAGE
//!
//! No dependencies: the guest-side programs link it too.

use std::fmt::Display;
use std::io::Write;
use std::process::ExitCode;

/// What a check written as a function returns: why it failed, if it did.
pub type Check = Result<(), String>;

/// `ensure!(cond, "why {}", x)`: in a function returning [`Check`] (or any
/// `Result<_, String>`), return the formatted reason when `cond` is false.
#[macro_export]
macro_rules! ensure {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err(format!($($fmt)+));
        }
    };
}

/// Counts checks and prints their lines. Cheap to make; one per program
/// (or per subcommand) is the rule, but nothing breaks with several.
#[derive(Debug, Default)]
pub struct Report {
    passed: u32,
    failed: u32,
}

impl Report {
    /// A reporter with the panic hook installed ([`install_panic_hook`]).
    pub fn start() -> Self {
        install_panic_hook();
        Self::default()
    }

    /// `PASS name` or, with a detail, `PASS name (detail)`.
    pub fn pass(&mut self, name: &str, detail: &str) {
        self.passed += 1;
        if detail.is_empty() {
            line(format_args!("PASS {name}"));
        } else {
            line(format_args!("PASS {name} ({detail})"));
        }
    }

    /// `FAIL name (why)`.
    pub fn fail(&mut self, name: &str, why: impl Display) {
        self.failed += 1;
        line(format_args!("FAIL {name} ({})", one_line(&why.to_string())));
    }

    /// A check whose result carries the detail (`Ok`) or the reason (`Err`).
    /// Returns whether it passed.
    pub fn check<E: Display>(&mut self, name: &str, result: Result<String, E>) -> bool {
        match result {
            Ok(detail) => {
                self.pass(name, &detail);
                true
            }
            Err(why) => {
                self.fail(name, why);
                false
            }
        }
    }

    /// A check of a condition; `why` is printed only when it fails.
    pub fn expect(&mut self, name: &str, ok: bool, why: impl Display) -> bool {
        if ok {
            self.pass(name, "");
        } else {
            self.fail(name, why);
        }
        ok
    }

    /// A check whose result says only why it failed.
    pub fn result(&mut self, name: &str, result: Check) -> bool {
        self.check(name, result.map(|()| String::new()))
    }

    /// A check written as a closure that says why it failed.
    pub fn case(&mut self, name: &str, f: impl FnOnce() -> Check) -> bool {
        self.check(name, f().map(|()| String::new()))
    }

    /// [`Report::case`] for a check written as a future.
    pub async fn case_async<F: std::future::Future<Output = Check>>(&mut self, name: &str, f: F) -> bool {
        self.check(name, f.await.map(|()| String::new()))
    }

    /// A check of a result whose value is not needed in the line; the
    /// value is handed back when it passed.
    pub fn ok<T, E: Display>(&mut self, name: &str, result: Result<T, E>) -> Option<T> {
        match result {
            Ok(v) => {
                self.pass(name, "");
                Some(v)
            }
            Err(e) => {
                self.fail(name, e);
                None
            }
        }
    }

    pub fn passed(&self) -> u32 {
        self.passed
    }

    pub fn failed(&self) -> u32 {
        self.failed
    }

    /// True when nothing failed so far.
    pub fn clean(&self) -> bool {
        self.failed == 0
    }

    /// The exit status: failure when any check failed.
    pub fn exit_code(&self) -> ExitCode {
        if self.failed == 0 {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        }
    }

    /// Prints `<program>: N passed, M failed` and returns the exit status.
    pub fn finish(&self, program: &str) -> ExitCode {
        line(format_args!("{program}: {} passed, {} failed", self.passed, self.failed));
        self.exit_code()
    }
}

fn one_line(s: &str) -> String {
    s.replace('\n', " ")
}

/// Writes one line on stdout and flushes it, so a program killed or
/// crashing right after a check still leaves the line for the suite.
fn line(args: std::fmt::Arguments<'_>) {
    let mut out = std::io::stdout().lock();
    // Never panic in here (a closed stdout): the exit status still tells.
    let _ = writeln!(out, "{args}");
    let _ = out.flush();
}

/// A panic anywhere in the program, on any thread or tokio task, prints a
/// `FAIL <program> <subcommand>: panicked at FILE:LINE: MESSAGE` line on
/// stdout, where the suites count it, after Rust's usual message on stderr.
/// A panic in the main thread also exits 101, which the suite checks
/// (e2e/lib.sh `checked`). Call it first thing in `main` (or use
/// [`Report::start`]); installing it twice is harmless.
pub fn install_panic_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let mut argv = std::env::args();
        let program = argv.next().map(|a| a.rsplit('/').next().unwrap_or_default().to_string()).unwrap_or_default();
        let what = match argv.next() {
            Some(sub) if !sub.starts_with('-') => format!("{program} {sub}"),
            _ => program,
        };
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            default(info);
            let payload = info.payload();
            let msg = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "(no message)".into());
            let at = info.location().map(|l| format!(" at {}:{}", l.file(), l.line())).unwrap_or_default();
            line(format_args!("FAIL {what}: panicked{at}: {}", one_line(&msg)));
        }));
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_passes_and_failures() {
        let mut r = Report::default();
        assert!(r.check("a", Ok::<_, String>("detail".into())));
        assert!(!r.check("b", Err("why")));
        assert!(r.expect("c", true, "unused"));
        assert_eq!(r.ok("d", Err::<(), _>("no")), None);
        assert_eq!((r.passed(), r.failed()), (2, 2));
        assert!(!r.clean());
    }
}
