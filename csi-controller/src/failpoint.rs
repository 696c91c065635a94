//! Crash points for the tests (cargo feature `failpoints`, never in a
//! deployment build): with `THIN_CSI_FAILPOINT=<step>` in its environment,
//! the process SIGKILLs itself when it reaches that step.
//!
//! Steps: `volume-allocated`, `volume-object`, `volume-waited`,
//! `volume-ready` (CreateVolume: after the allocation is recorded, after the
//! ThinVolume is created, after the node reported the transaction, after
//! the object is marked ready); the same with `snapshot-` for
//! CreateSnapshot; `delete-recorded`, `delete-finished` (DeleteVolume and
//! DeleteSnapshot: after the delete's transaction is recorded, after the
//! node reported it).

/// Every step, in the order a request meets them.
pub const STEPS: &[&str] = &[
    "volume-allocated",
    "volume-object",
    "volume-waited",
    "volume-ready",
    "snapshot-allocated",
    "snapshot-object",
    "snapshot-waited",
    "snapshot-ready",
    "delete-recorded",
    "delete-finished",
];

/// Dies here if `THIN_CSI_FAILPOINT` names `step` (feature `failpoints` only).
#[inline]
pub fn hit(step: &str) {
    #[cfg(feature = "failpoints")]
    if std::env::var("THIN_CSI_FAILPOINT").is_ok_and(|v| v == step) {
        eprintln!("failpoint {step}: SIGKILL");
        // SAFETY: a plain syscall; the process dies here, as in a crash.
        unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
    }
    #[cfg(not(feature = "failpoints"))]
    let _ = step;
}

/// [`hit`] for step `<what>-<step>` (`volume-allocated`, `snapshot-ready`, ...).
#[inline]
pub fn hit_for(what: &str, step: &str) {
    #[cfg(feature = "failpoints")]
    hit(&format!("{what}-{step}"));
    #[cfg(not(feature = "failpoints"))]
    let _ = (what, step);
}
