//! An in-memory model of the kernel's thin-pool target, enforcing the rules
//! the real one does, for fast unit and property tests.
//!
//! Rules: EEXIST on a create of an id in use; ENODATA on a delete (or
//! snapshot origin) that is not in the pool; EINVAL on a wrong current
//! transaction id or an id of 2^24 or more; EBUSY on a delete of an active
//! device. Each message commits on its own. Metadata exhaustion as measured
//! on the real kernel (6.1, `e2e/run engine`): the message whose metadata
//! commit runs out of space is acknowledged (the ioctl succeeds), but the
//! kernel aborts the metadata transaction, so that message's effect is rolled
//! back, sets `needs_check` and drops the pool to read-only; from then on
//! every message is refused (EOPNOTSUPP, not ENOSPC). The status line keeps
//! the transaction id a rolled-back `set_transaction_id` set until the pool
//! is reloaded ([`ModelKernel::power_cycle`] here).
//!
//! Crash injection: [`ModelKernel::crash_after`] makes the "process" die
//! right after its k-th state-changing call. From then on every call fails
//! and changes nothing, until [`ModelKernel::restart`] (the process comes
//! back; suspended devices stay suspended, as in the kernel) or
//! [`ModelKernel::power_cycle`] (the machine comes back: nothing is active).

use std::collections::BTreeMap;

use crate::ids::{Sectors, ThinId, TransactionId};
use crate::kernel::{ActiveThin, Kernel, KernelError};
use crate::status::{PoolMode, PoolStatus, Usage, WorkingStatus};
use crate::txn::PoolMessage;

#[derive(Clone, Debug, Default)]
struct Active {
    size: Sectors,
    open_count: u32,
    suspended: bool,
}

#[derive(Clone, Debug)]
pub struct ModelKernel {
    transaction_id: TransactionId,
    /// Pool metadata: every thin id and its content (one number stands for
    /// the data: a snapshot copies its origin's).
    devices: BTreeMap<ThinId, u64>,
    active: BTreeMap<ThinId, Active>,
    metadata_capacity: usize,
    metadata_snapshot_held: bool,
    mode: PoolMode,
    needs_check: bool,
    steps: u64,
    crash_after: Option<u64>,
    crashed: bool,
    /// Suspends of this device fail (a filesystem that cannot be frozen).
    refuse_suspend: Option<ThinId>,
    /// The next `set_transaction_id` fails without effect (a transient error).
    fail_next_set_transaction_id: bool,
    /// What the status reports after a rolled-back `set_transaction_id`:
    /// measured, the kernel's status keeps the id the message set after the
    /// abort, until the pool is reloaded.
    stale_transaction_id: Option<TransactionId>,
    /// Counts down successful messages; the one that reaches 0 runs out of
    /// metadata space when it is committed.
    out_of_metadata_in: Option<u32>,
    /// Snapshots taken of an active origin that was not suspended: the kernel
    /// allows it, but the snapshot would not be consistent. Tests assert 0.
    pub unsafe_snapshots: u64,
    /// Calls of `active_thins` (which lists every device on a real node):
    /// tests hold steady-state transactions to none.
    full_listings: std::cell::Cell<u64>,
}

impl Default for ModelKernel {
    fn default() -> Self {
        Self::new()
    }
}

impl ModelKernel {
    pub fn new() -> Self {
        ModelKernel {
            transaction_id: TransactionId::ZERO,
            devices: BTreeMap::new(),
            active: BTreeMap::new(),
            metadata_capacity: 1 << 20,
            metadata_snapshot_held: false,
            mode: PoolMode::ReadWrite,
            needs_check: false,
            steps: 0,
            crash_after: None,
            crashed: false,
            refuse_suspend: None,
            fail_next_set_transaction_id: false,
            out_of_metadata_in: None,
            stale_transaction_id: None,
            unsafe_snapshots: 0,
            full_listings: std::cell::Cell::new(0),
        }
    }

    /// Limits how many thin devices metadata can hold: the create beyond is
    /// acknowledged, rolled back, and the pool drops to read-only.
    pub fn with_metadata_capacity(mut self, devices: usize) -> Self {
        self.metadata_capacity = devices;
        self
    }

    /// The process dies right after its `steps`-th state-changing call from now.
    pub fn crash_after(&mut self, steps: u64) {
        self.crash_after = Some(self.steps + steps);
    }

    pub fn crashed(&self) -> bool {
        self.crashed
    }

    /// How often every active device was listed (`active_thins`).
    pub fn full_listings(&self) -> u64 {
        self.full_listings.get()
    }

    /// State-changing calls made so far.
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// The process restarts; kernel state (including suspended devices) stays.
    pub fn restart(&mut self) {
        self.crashed = false;
        self.crash_after = None;
    }

    /// Power cut and reboot: metadata survives (each message committed), no
    /// device is active any more.
    pub fn power_cycle(&mut self) {
        self.restart();
        self.active.clear();
        self.metadata_snapshot_held = false;
        self.stale_transaction_id = None;
    }

    /// Makes every suspend of `id` fail with EBUSY.
    pub fn refuse_suspend(&mut self, id: Option<ThinId>) {
        self.refuse_suspend = id;
    }

    /// The next `set_transaction_id` fails with an I/O error and changes nothing.
    pub fn fail_next_set_transaction_id(&mut self) {
        self.fail_next_set_transaction_id = true;
    }

    /// The `nth` message from now that succeeds (1: the next) runs out of
    /// metadata when the kernel commits it: it is acknowledged, rolled back,
    /// and the pool drops to read-only. In the kernel, blocks that I/O
    /// allocated since the last commit go into that commit too, so any
    /// message, `set_transaction_id` included, can be the one that runs out.
    pub fn out_of_metadata_at_message(&mut self, nth: u32) {
        self.out_of_metadata_in = Some(nth);
    }

    fn commit_runs_out(&mut self) -> bool {
        match self.out_of_metadata_in {
            Some(1) => {
                self.out_of_metadata_in = None;
                true
            }
            Some(n) => {
                self.out_of_metadata_in = Some(n - 1);
                false
            }
            None => false,
        }
    }

    /// Someone else moves the transaction id (for divergence tests).
    pub fn tamper_transaction_id(&mut self, id: TransactionId) {
        self.transaction_id = id;
    }

    pub fn set_mode(&mut self, mode: PoolMode, needs_check: bool) {
        self.mode = mode;
        self.needs_check = needs_check;
    }

    pub fn transaction_id(&self) -> TransactionId {
        self.transaction_id
    }

    pub fn devices(&self) -> impl Iterator<Item = ThinId> + '_ {
        self.devices.keys().copied()
    }

    pub fn content(&self, id: ThinId) -> Option<u64> {
        self.devices.get(&id).copied()
    }

    /// A mount or an open file handle on an active device.
    pub fn open(&mut self, id: ThinId) -> Result<(), KernelError> {
        self.active.get_mut(&id).ok_or(KernelError::NotActive(id))?.open_count += 1;
        Ok(())
    }

    pub fn close(&mut self, id: ThinId) -> Result<(), KernelError> {
        let a = self.active.get_mut(&id).ok_or(KernelError::NotActive(id))?;
        a.open_count = a.open_count.saturating_sub(1);
        Ok(())
    }

    /// A write of `value` to an active device; I/O to a suspended device would block.
    pub fn write(&mut self, id: ThinId, value: u64) -> Result<(), KernelError> {
        match self.active.get(&id) {
            None => Err(KernelError::NotActive(id)),
            Some(a) if a.suspended => Err(KernelError::Other { context: format!("write to {id}"), detail: "device is suspended; I/O would block".into() }),
            Some(_) => {
                *self.devices.get_mut(&id).expect("active devices exist") = value;
                Ok(())
            }
        }
    }

    /// Posts a message given as text, parsed the way the kernel parses it
    /// (so ids of 2^24 and more reach the range check).
    pub fn message_text(&mut self, text: &str) -> Result<(), KernelError> {
        let invalid = || KernelError::Invalid(text.to_string());
        let words: Vec<&str> = text.split_whitespace().collect();
        let num = |s: &str| s.parse::<u64>().map_err(|_| invalid());
        let id = |s: &str| ThinId::new(num(s)?).map_err(|_| invalid());
        let msg = match words.as_slice() {
            ["create_thin", a] => PoolMessage::CreateThin { id: id(a)? },
            ["create_snap", a, b] => PoolMessage::CreateSnap { id: id(a)?, origin: id(b)? },
            ["delete", a] => PoolMessage::Delete { id: id(a)? },
            ["set_transaction_id", a, b] => PoolMessage::SetTransactionId { current: TransactionId::new(num(a)?), new: TransactionId::new(num(b)?) },
            ["reserve_metadata_snap"] => PoolMessage::ReserveMetadataSnap,
            ["release_metadata_snap"] => PoolMessage::ReleaseMetadataSnap,
            _ => return Err(invalid()),
        };
        self.message(&msg)
    }

    fn alive(&self, what: &str) -> Result<(), KernelError> {
        if self.crashed {
            Err(KernelError::Other { context: what.to_string(), detail: "the process has crashed".into() })
        } else {
            Ok(())
        }
    }

    /// Counts a state-changing call that succeeded; the crash comes after it.
    fn step(&mut self) {
        self.steps += 1;
        if self.crash_after == Some(self.steps) {
            self.crashed = true;
        }
    }

    fn writable(&self, what: &str) -> Result<(), KernelError> {
        if self.mode == PoolMode::ReadOnly || self.needs_check {
            // The kernel's answer to any message in read-only mode.
            return Err(KernelError::Other {
                context: what.to_string(),
                detail: "unable to service pool target messages in read-only mode (EOPNOTSUPP)".into(),
            });
        }
        Ok(())
    }

    fn apply(&mut self, message: &PoolMessage) -> Result<(), KernelError> {
        let text = message.to_string();
        self.writable(&text)?;
        match *message {
            PoolMessage::CreateThin { id } => {
                if self.devices.contains_key(&id) {
                    return Err(KernelError::AlreadyExists(text));
                }
                self.devices.insert(id, 0);
            }
            PoolMessage::CreateSnap { id, origin } => {
                if self.devices.contains_key(&id) {
                    return Err(KernelError::AlreadyExists(text));
                }
                let content = *self.devices.get(&origin).ok_or_else(|| KernelError::NoData(text.clone()))?;
                if self.active.get(&origin).is_some_and(|a| !a.suspended) {
                    self.unsafe_snapshots += 1;
                }
                self.devices.insert(id, content);
            }
            PoolMessage::Delete { id } => {
                if !self.devices.contains_key(&id) {
                    return Err(KernelError::NoData(text));
                }
                if self.active.contains_key(&id) {
                    return Err(KernelError::Busy(text));
                }
                self.devices.remove(&id);
            }
            PoolMessage::SetTransactionId { current, new } => {
                if current != self.transaction_id {
                    return Err(KernelError::Invalid(text));
                }
                self.transaction_id = new;
            }
            PoolMessage::ReserveMetadataSnap => {
                if self.metadata_snapshot_held {
                    return Err(KernelError::Busy(text));
                }
                self.metadata_snapshot_held = true;
            }
            PoolMessage::ReleaseMetadataSnap => {
                if !self.metadata_snapshot_held {
                    return Err(KernelError::Invalid(text));
                }
                self.metadata_snapshot_held = false;
            }
        }
        Ok(())
    }
}

impl Kernel for ModelKernel {
    fn pool_status(&self) -> Result<PoolStatus, KernelError> {
        self.alive("pool status")?;
        Ok(PoolStatus::Working(WorkingStatus {
            transaction_id: self.stale_transaction_id.unwrap_or(self.transaction_id),
            metadata: Usage { used: self.devices.len() as u64, total: self.metadata_capacity as u64 },
            data: Usage { used: 0, total: 1 << 20 },
            held_metadata_root: None,
            mode: self.mode,
            discard_passdown: true,
            error_if_no_space: false,
            needs_check: self.needs_check,
            metadata_low_watermark: None,
        }))
    }

    fn message(&mut self, message: &PoolMessage) -> Result<(), KernelError> {
        self.alive(&message.to_string())?;
        if matches!(message, PoolMessage::SetTransactionId { .. }) && std::mem::take(&mut self.fail_next_set_transaction_id) {
            return Err(KernelError::Other { context: message.to_string(), detail: "I/O error (injected)".into() });
        }
        let (devices, transaction_id) = (self.devices.clone(), self.transaction_id);
        self.apply(message)?;
        // The commit that follows every successful message.
        if self.commit_runs_out() || self.devices.len() > self.metadata_capacity {
            // Out of metadata: the kernel aborts the metadata transaction (the
            // message is undone) yet still acknowledges the message; the pool
            // is read-only with needs_check set, so not even an abort's
            // deletes are taken after it.
            if self.transaction_id != transaction_id {
                self.stale_transaction_id = Some(self.transaction_id);
            }
            self.devices = devices;
            self.transaction_id = transaction_id;
            self.mode = PoolMode::ReadOnly;
            self.needs_check = true;
        }
        self.step();
        Ok(())
    }

    fn active_thins(&self) -> Result<Vec<ActiveThin>, KernelError> {
        self.alive("list active thin devices")?;
        self.full_listings.set(self.full_listings.get() + 1);
        Ok(self
            .active
            .iter()
            .map(|(id, a)| ActiveThin { id: *id, size: a.size, open_count: a.open_count, suspended: a.suspended })
            .collect())
    }

    fn active_thin(&self, id: ThinId) -> Result<Option<ActiveThin>, KernelError> {
        self.alive("look up an active thin device")?;
        Ok(self.active.get(&id).map(|a| ActiveThin { id, size: a.size, open_count: a.open_count, suspended: a.suspended }))
    }

    fn suspend_thin(&mut self, id: ThinId) -> Result<(), KernelError> {
        self.alive("suspend")?;
        if self.refuse_suspend == Some(id) {
            return Err(KernelError::Busy(format!("suspend thin {id}")));
        }
        self.active.get_mut(&id).ok_or(KernelError::NotActive(id))?.suspended = true;
        self.step();
        Ok(())
    }

    fn resume_thin(&mut self, id: ThinId) -> Result<(), KernelError> {
        self.alive("resume")?;
        self.active.get_mut(&id).ok_or(KernelError::NotActive(id))?.suspended = false;
        self.step();
        Ok(())
    }

    fn activate_thin(&mut self, id: ThinId, size: Sectors) -> Result<(), KernelError> {
        self.alive("activate")?;
        if !self.devices.contains_key(&id) {
            return Err(KernelError::NoData(format!("activate thin {id}")));
        }
        if self.active.contains_key(&id) {
            return Err(KernelError::AlreadyActive(id));
        }
        self.active.insert(id, Active { size, ..Active::default() });
        self.step();
        Ok(())
    }

    fn deactivate_thin(&mut self, id: ThinId) -> Result<(), KernelError> {
        self.alive("deactivate")?;
        let a = self.active.get(&id).ok_or(KernelError::NotActive(id))?;
        if a.open_count > 0 {
            return Err(KernelError::Busy(format!("deactivate thin {id}")));
        }
        self.active.remove(&id);
        self.step();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::t;

    #[test]
    fn enforces_the_kernel_rules() {
        let mut k = ModelKernel::new();
        k.message(&PoolMessage::CreateThin { id: t(1) }).unwrap();
        assert!(matches!(k.message(&PoolMessage::CreateThin { id: t(1) }), Err(KernelError::AlreadyExists(_))));
        assert!(matches!(k.message(&PoolMessage::Delete { id: t(2) }), Err(KernelError::NoData(_))));
        assert!(matches!(k.message(&PoolMessage::CreateSnap { id: t(3), origin: t(2) }), Err(KernelError::NoData(_))));
        let wrong = PoolMessage::SetTransactionId { current: TransactionId::new(5), new: TransactionId::new(6) };
        assert!(matches!(k.message(&wrong), Err(KernelError::Invalid(_))));
        assert!(matches!(k.message_text("create_thin 16777216"), Err(KernelError::Invalid(_))));
        k.message_text("create_thin 16777215").unwrap();
        k.activate_thin(t(1), Sectors(8)).unwrap();
        assert!(matches!(k.message(&PoolMessage::Delete { id: t(1) }), Err(KernelError::Busy(_))));
        k.open(t(1)).unwrap();
        assert!(matches!(k.deactivate_thin(t(1)), Err(KernelError::Busy(_))));
        let mut small = ModelKernel::new().with_metadata_capacity(1);
        small.message(&PoolMessage::CreateThin { id: t(1) }).unwrap();
        // As the kernel does: the create that runs out is acknowledged and
        // rolled back; the pool is read-only with needs_check, and refuses
        // every message, even a delete.
        small.message(&PoolMessage::CreateThin { id: t(2) }).unwrap();
        assert_eq!(small.devices().collect::<Vec<_>>(), vec![t(1)]);
        assert!(small.pool_status().unwrap().working().is_some_and(|w| w.mode == PoolMode::ReadOnly && w.needs_check));
        assert!(small.message(&PoolMessage::Delete { id: t(1) }).is_err());
        let mut k = ModelKernel::new();
        k.out_of_metadata_at_message(1);
        k.message(&PoolMessage::SetTransactionId { current: TransactionId::ZERO, new: TransactionId::new(1) }).unwrap();
        assert_eq!(k.transaction_id(), TransactionId::ZERO, "the acknowledged set_transaction_id was rolled back");
        let stale = k.pool_status().unwrap().working().map(|w| (w.transaction_id, w.needs_check));
        assert_eq!(stale, Some((TransactionId::new(1), true)), "the status keeps the rolled-back id until a reload");
        k.power_cycle();
        assert_eq!(k.pool_status().unwrap().working().map(|w| w.transaction_id), Some(TransactionId::ZERO));
    }

    #[test]
    fn a_crash_stops_everything_until_restart() {
        let mut k = ModelKernel::new();
        k.crash_after(1);
        k.message(&PoolMessage::CreateThin { id: t(1) }).unwrap();
        assert!(k.crashed());
        assert!(k.message(&PoolMessage::CreateThin { id: t(2) }).is_err());
        k.restart();
        assert_eq!(k.devices().collect::<Vec<_>>(), vec![t(1)]);
        k.activate_thin(t(1), Sectors(8)).unwrap();
        k.suspend_thin(t(1)).unwrap();
        k.power_cycle();
        assert!(k.active_thins().unwrap().is_empty());
    }
}
