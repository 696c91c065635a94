//! Waiting for device-mapper events on a pool (docs/decisions.md, "Pool
//! health"). The thin-pool target raises a table event when its mode
//! changes (rw → out_of_data_space → read-only, needs_check set) and when
//! data crosses the low water mark, which bumps the device's event number.
//!
//! The waiter has its own control-device handle, so it never waits on the
//! pool lock: `DM_DEV_ARM_POLL` (kernel ≥ 4.13) arms the handle, `poll(2)`
//! on it wakes on the next event of any device-mapper device, and the
//! pool's event number (`DM_DEV_STATUS`, no I/O) says whether it was ours.
//! The caller then reads the pool status with no-flush. A timeout bounds
//! the wait, so usage (which raises no event) is refreshed too, and a
//! kernel without arm-poll degrades to that interval.

use std::os::fd::AsRawFd;
use std::time::Duration;

use devicemapper::{DevId, DmName, DM};
use thinpool::KernelError;

use crate::error::kernel_error;

/// Waits for events of one pool device.
pub struct PoolEvents {
    dm: DM,
    name: String,
    last: Option<u32>,
    /// False once arming failed (an old kernel): the waits are plain sleeps.
    armed: bool,
}

impl std::fmt::Debug for PoolEvents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolEvents").field("name", &self.name).field("last", &self.last).field("armed", &self.armed).finish()
    }
}

impl PoolEvents {
    /// A waiter for the pool device named `dm_name`.
    pub fn new(dm_name: &str) -> Result<PoolEvents, KernelError> {
        let dm = DM::new().map_err(|e| kernel_error("opening /dev/mapper/control".into(), &e))?;
        let mut events = PoolEvents { dm, name: dm_name.to_string(), last: None, armed: true };
        events.last = Some(events.event_nr()?);
        Ok(events)
    }

    /// The pool device's event number.
    pub fn event_nr(&self) -> Result<u32, KernelError> {
        let name = DmName::new(&self.name).map_err(|e| KernelError::Other { context: format!("name {}", self.name), detail: e.to_string() })?;
        let info = self.dm.device_info(&DevId::Name(name)).map_err(|e| kernel_error(format!("info of {}", self.name), &e))?;
        Ok(info.event_nr())
    }

    /// Whether arm-poll works here (false: [`PoolEvents::wait`] only sleeps).
    pub fn uses_events(&self) -> bool {
        self.armed
    }

    /// Blocks until the pool's event number moves (true) or `timeout`
    /// passes (false). An event between two waits is not lost: the number
    /// is compared after arming, before sleeping.
    pub fn wait(&mut self, timeout: Duration) -> Result<bool, KernelError> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if self.armed && self.dm.arm_poll().is_err() {
                tracing::warn!(pool = %self.name, "DM_DEV_ARM_POLL failed: pool status is polled at an interval only");
                self.armed = false;
            }
            if self.changed()? {
                return Ok(true);
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Ok(false);
            }
            if !self.armed {
                std::thread::sleep(left);
                return self.changed();
            }
            let mut fd = libc::pollfd { fd: self.dm.file().as_raw_fd(), events: libc::POLLIN, revents: 0 };
            let ms = left.as_millis().min(i32::MAX as u128) as i32;
            // SAFETY: one valid pollfd, the handle open for the call's length.
            let n = unsafe { libc::poll(&mut fd, 1, ms) };
            if n < 0 && std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
                return Err(KernelError::Other { context: format!("poll on the control device for {}", self.name), detail: std::io::Error::last_os_error().to_string() });
            }
            // Woken by another device's event, or interrupted: re-arm and look again.
        }
    }

    fn changed(&mut self) -> Result<bool, KernelError> {
        let nr = self.event_nr()?;
        let changed = self.last != Some(nr);
        self.last = Some(nr);
        Ok(changed)
    }
}
