//! Crash points for the tests (cargo feature `failpoints`, never in a
//! deployment build): with `THIN_CSI_FAILPOINT=<step>` in its environment,
//! the process SIGKILLs itself when it reaches that step.
//!
//! Each step is a place where a kill leaves a different durable state:
//!
//! - CreateVolume: `volume-allocated` (the transaction is recorded, no
//!   object names its device yet: a kill here leaks the id),
//!   `volume-object` (the ThinVolume exists, not ready), `volume-waited`
//!   (the node reported the transaction, the object is not marked ready),
//!   `volume-ready` (marked ready, the reply not sent);
//! - CreateSnapshot: the same four with `snapshot-`;
//! - DeleteVolume: `delete-volume-recorded` (the delete's transaction is
//!   recorded), `delete-volume-finished` (the node reported the device
//!   gone; the ThinVolume is still there); DeleteSnapshot: the same with
//!   `delete-snapshot-` (both share the device delete; the names say which
//!   request reached it);
//! - ControllerExpandVolume: `expand-recorded` (the ThinVolume's new size
//!   is written, the reply not sent). Expand's only write is that one
//!   patch (the node grows the device itself, at NodeExpandVolume or the
//!   next stage), so a kill anywhere before it leaves what was there.
//!
//! `e2e/suites/cluster-nodes.sh` kills the controller at every step in
//! [`STEPS`] (it reads the list from `node_e2e ctl-steps`).

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
    "delete-volume-recorded",
    "delete-volume-finished",
    "delete-snapshot-recorded",
    "delete-snapshot-finished",
    "expand-recorded",
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

#[cfg(test)]
mod tests {
    /// A step the controller no longer reaches would make the suite's kill
    /// at it fail loudly; a step reached but not listed would never be
    /// tested. Both directions, against the controller's source.
    #[test]
    fn every_step_is_reached_and_every_reached_step_is_listed() {
        let src = include_str!("controller.rs");
        for step in super::STEPS {
            assert_eq!(src.matches(&format!("\"{step}\"")).count(), 1, "step {step} named once in controller.rs");
        }
        let direct = src.matches("failpoint::hit(\"").count();
        let passed = src.matches("-recorded\", \"").count() * 2; // delete_device's pairs
        assert_eq!(direct + passed, super::STEPS.len(), "hit sites in controller.rs vs STEPS");
    }
}
