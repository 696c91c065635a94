//! The boundary between the engine and the kernel's thin-pool target.
//!
//! One `Kernel` value stands for one active pool on this node. Two
//! implementations exist: `thinpool_dm::DmPool` (device-mapper ioctls) and
//! [`crate::model::ModelKernel`] (in memory, enforcing the same rules).

use crate::ids::{Sectors, ThinId};
use crate::status::PoolStatus;
use crate::txn::PoolMessage;

/// A thin device of the pool that is active (has a device-mapper device) on this node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ActiveThin {
    pub id: ThinId,
    pub size: Sectors,
    /// Openers of the device (a mount, a process holding it open).
    pub open_count: u32,
    pub suspended: bool,
}

/// Errors the kernel reports. The errno-shaped ones matter to the engine:
/// during recovery they identify replays.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KernelError {
    /// EEXIST: a create of an id that is already in the pool.
    #[error("{0}: device id already exists (EEXIST)")]
    AlreadyExists(String),
    /// ENODATA: a delete (or snapshot origin) of an id that is not in the pool.
    #[error("{0}: no such device id in the pool (ENODATA)")]
    NoData(String),
    /// EINVAL: wrong current transaction id, id out of range, malformed message.
    #[error("{0}: invalid argument (EINVAL)")]
    Invalid(String),
    /// EBUSY: the device is open.
    #[error("{0}: device busy (EBUSY)")]
    Busy(String),
    /// ENOSPC: out of metadata space.
    #[error("{0}: no space left in pool metadata (ENOSPC)")]
    NoSpace(String),
    /// The thin device is not active on this node.
    #[error("thin device {0} is not active")]
    NotActive(ThinId),
    #[error("thin device {0} is already active")]
    AlreadyActive(ThinId),
    /// Any other failure, with what was being done.
    #[error("{context}: {detail}")]
    Other { context: String, detail: String },
}

pub trait Kernel {
    /// The pool's status, read without flushing so it never stalls I/O.
    fn pool_status(&self) -> Result<PoolStatus, KernelError>;

    /// Posts one message. The kernel commits pool metadata after each
    /// successful message, so each one survives a power cut on its own.
    fn message(&mut self, message: &PoolMessage) -> Result<(), KernelError>;

    /// The pool's thin devices that are active on this node, by id. Its
    /// cost grows with the devices on the node: for recovery and listings,
    /// not for each transaction.
    fn active_thins(&self) -> Result<Vec<ActiveThin>, KernelError>;

    /// Thin device `id` if it is active on this node. What each transaction
    /// asks about the devices it names, so its kernel work does not grow
    /// with the devices the node has active (the device-mapper kernel looks
    /// one device up by name).
    fn active_thin(&self, id: ThinId) -> Result<Option<ActiveThin>, KernelError> {
        Ok(self.active_thins()?.into_iter().find(|a| a.id == id))
    }

    /// Suspends an active thin device with a flush and a filesystem freeze
    /// (no skip-lockfs, no noflush): what it holds is then consistent.
    fn suspend_thin(&mut self, id: ThinId) -> Result<(), KernelError>;

    fn resume_thin(&mut self, id: ThinId) -> Result<(), KernelError>;

    /// Creates the device-mapper device for an existing thin id. Sends no message.
    fn activate_thin(&mut self, id: ThinId, size: Sectors) -> Result<(), KernelError>;

    /// Removes the device-mapper device of a thin id; the id stays in the pool.
    fn deactivate_thin(&mut self, id: ThinId) -> Result<(), KernelError>;
}

impl<K: Kernel + ?Sized> Kernel for &mut K {
    fn pool_status(&self) -> Result<PoolStatus, KernelError> {
        (**self).pool_status()
    }
    fn message(&mut self, message: &PoolMessage) -> Result<(), KernelError> {
        (**self).message(message)
    }
    fn active_thins(&self) -> Result<Vec<ActiveThin>, KernelError> {
        (**self).active_thins()
    }
    fn active_thin(&self, id: ThinId) -> Result<Option<ActiveThin>, KernelError> {
        (**self).active_thin(id)
    }
    fn suspend_thin(&mut self, id: ThinId) -> Result<(), KernelError> {
        (**self).suspend_thin(id)
    }
    fn resume_thin(&mut self, id: ThinId) -> Result<(), KernelError> {
        (**self).resume_thin(id)
    }
    fn activate_thin(&mut self, id: ThinId, size: Sectors) -> Result<(), KernelError> {
        (**self).activate_thin(id, size)
    }
    fn deactivate_thin(&mut self, id: ThinId) -> Result<(), KernelError> {
        (**self).deactivate_thin(id)
    }
}
