//! Shared by the e2e test drivers (thin-vmtest and the csi-controller /
//! csi-node examples), each of which includes this file with `#[path]`:
//! a panic anywhere in the driver, on any thread or tokio task, prints a
//! `FAIL <program> <subcommand>: panicked at FILE:LINE: MESSAGE` line on
//! stdout, where the suites count it, after Rust's usual message on stderr.
//! A panic in the main thread also exits 101, which the suite checks.

use std::io::Write;

/// Installs the hook; call it first thing in `main`.
pub fn install() {
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
        // Never panic in here (a closed stdout): the exit status still tells.
        let _ = writeln!(std::io::stdout(), "FAIL {what}: panicked{at}: {}", msg.replace('\n', " "));
    }));
}
