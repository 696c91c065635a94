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

/// [`hit`] for the step named by `parts` joined with `-` (the generic
/// object code names its steps by kind: `volume-allocated`,
/// `delete-snapshot-recorded`); the name is built only in test builds.
#[inline]
pub fn hit_for(parts: &[&str]) {
    #[cfg(feature = "failpoints")]
    hit(&parts.join("-"));
    #[cfg(not(feature = "failpoints"))]
    let _ = parts;
}

#[cfg(test)]
mod tests {
    /// A step the controller no longer reaches would make the suite's kill
    /// at it fail loudly; a step reached but not listed would never be
    /// tested. Both directions, against the sources: the generic object
    /// code reaches `<kind>-<step>` and `delete-<kind>-<step>` for both
    /// kinds, the expand handler its one step.
    #[test]
    fn every_step_is_reached_and_every_reached_step_is_listed() {
        let objects = include_str!("objects.rs");
        let controller = include_str!("controller.rs");
        let create: Vec<&str> = ["allocated", "object", "waited", "ready"].into();
        let delete: Vec<&str> = ["recorded", "finished"].into();
        for s in &create {
            assert_eq!(objects.matches(&format!("hit_for(&[K::WHAT, \"{s}\"])")).count(), 1, "create step {s}");
        }
        for s in &delete {
            assert_eq!(objects.matches(&format!("hit_for(&[\"delete\", what, \"{s}\"])")).count(), 1, "delete step {s}");
        }
        assert_eq!(objects.matches("hit_for(").count(), create.len() + delete.len(), "no other object steps");
        assert_eq!(objects.matches("failpoint::hit(").count(), 0);
        assert_eq!(controller.matches("failpoint::hit(\"expand-recorded\")").count(), 1);
        assert_eq!(controller.matches("failpoint::hit").count(), 1, "the handlers' only step");
        let mut reached = Vec::new();
        for kind in ["volume", "snapshot"] {
            reached.extend(create.iter().map(|s| format!("{kind}-{s}")));
        }
        for kind in ["volume", "snapshot"] {
            reached.extend(delete.iter().map(|s| format!("delete-{kind}-{s}")));
        }
        reached.push("expand-recorded".into());
        assert_eq!(super::STEPS, reached.iter().map(String::as_str).collect::<Vec<_>>().as_slice());
    }
}
