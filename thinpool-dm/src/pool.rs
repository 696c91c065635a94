//! [`DmPool`]: one active thin pool, driven through device-mapper ioctls,
//! implementing the engine's [`Kernel`] boundary.

use std::fmt;
use std::path::PathBuf;

use devicemapper::{DevId, Device, DmFlags, DmName, DmOptions, DM};
use thinpool::layout::PoolHeader;
use thinpool::{
    ActiveThin, Kernel, KernelError, PoolMessage, PoolName, PoolStatus, Sectors, ThinId,
};
use tracing::{debug, warn};

use crate::blockdev;
use crate::dmops;
use crate::error::{errno_of, kernel_error, DmError};
use crate::names::{mapper_path, DeviceNames};
use crate::table::{TableLine, Target, ThinParams};

/// Where a pool's metadata and data live.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PoolLayout {
    /// One device laid out by this crate: our header, the metadata area and
    /// the data area, the two areas mapped with dm-linear.
    OneDevice { device: PathBuf, header: PoolHeader },
    /// An explicit metadata device and data device, used whole.
    Pair {
        metadata: PathBuf,
        metadata_len: Sectors,
        data: PathBuf,
    },
}

/// Where a pool's metadata is on disk: what `thin_check` reads once the
/// pool is torn down (it refuses live metadata).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetadataArea {
    pub device: PathBuf,
    pub start: Sectors,
    pub len: Sectors,
}

/// One active thin pool on this node.
///
/// Dropping it leaves every device active: a pool outlives the process
/// that set it up, and a restarted node adopts it again
/// ([`DmPool::open_on_device`], [`DmPool::adopt`]). [`DmPool::teardown`]
/// removes the devices.
pub struct DmPool {
    pub(crate) dm: DM,
    pub(crate) names: DeviceNames,
    pub(crate) layout: PoolLayout,
    /// The thin-pool target's device number (thin tables reference it).
    pub(crate) pool_device: Device,
    pub(crate) block_size: Sectors,
    pub(crate) data_len: Sectors,
}

impl fmt::Debug for DmPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DmPool")
            .field("name", self.names.pool_name())
            .field("layout", &self.layout)
            .field("pool_device", &self.pool_device)
            .field("block_size", &self.block_size)
            .field("data_len", &self.data_len)
            .finish()
    }
}

impl DmPool {
    pub fn name(&self) -> &PoolName {
        self.names.pool_name()
    }

    pub fn names(&self) -> &DeviceNames {
        &self.names
    }

    pub fn layout(&self) -> &PoolLayout {
        &self.layout
    }

    /// `major:minor` of the thin-pool device.
    pub fn pool_device(&self) -> Device {
        self.pool_device
    }

    /// Data block size, in sectors.
    pub fn block_size(&self) -> Sectors {
        self.block_size
    }

    /// Length of the data area (the pool table's length).
    pub fn data_len(&self) -> Sectors {
        self.data_len
    }

    /// Where the metadata is on disk.
    pub fn metadata_area(&self) -> MetadataArea {
        match &self.layout {
            PoolLayout::OneDevice { device, header } => MetadataArea {
                device: device.clone(),
                start: header.metadata_start,
                len: header.metadata_len,
            },
            PoolLayout::Pair {
                metadata,
                metadata_len,
                ..
            } => MetadataArea {
                device: metadata.clone(),
                start: Sectors(0),
                len: *metadata_len,
            },
        }
    }

    /// A path to open thin device `id` for I/O or mkfs:
    /// `/dev/mapper/thincsi-<pool>-thin-<id>`. Without udev nobody creates
    /// that node, so this makes it from the device number the kernel
    /// reports (and replaces a stale one).
    pub fn thin_device_path(&self, id: ThinId) -> Result<PathBuf, KernelError> {
        let name = self.names.thin(id);
        let info = self
            .dm
            .device_info(&DevId::Name(Self::dm_name(&name)?))
            .map_err(|e| self.thin_error(id, "look up", &e))?;
        let path = mapper_path(&name);
        blockdev::ensure_node(&path, info.device()).map_err(|e| KernelError::Other {
            context: format!("make device node {}", path.display()),
            detail: e.to_string(),
        })?;
        Ok(path)
    }

    /// Grows active thin device `id` to `size` sectors (a volume expanded by
    /// the controller): loads the longer table into the inactive slot,
    /// suspends the device (flush and filesystem freeze), resumes it, which
    /// swaps the new table in. The same size is a no-op; a smaller one is
    /// refused (`Invalid`): shrinking would cut a filesystem short. Never
    /// leaves the device suspended: a failed suspend clears the loaded
    /// table, and a failed resume is retried before it is reported.
    /// Returns the length the device had before.
    pub fn resize_thin(&mut self, id: ThinId, size: Sectors) -> Result<Sectors, KernelError> {
        let name = self.names.thin(id);
        let dm_name = Self::dm_name(&name)?;
        let dev = DevId::Name(dm_name);
        let (_, table) = self
            .dm
            .table_status(&dev, DmOptions::default().set_flags(DmFlags::DM_STATUS_TABLE))
            .map_err(|e| self.thin_error(id, "read the table of", &e))?;
        let current = match table.as_slice() {
            [line] => match self.own_thin_length(line, id) {
                Some(length) => length,
                None => {
                    return Err(KernelError::Other {
                        context: format!("resize {name}"),
                        detail: format!("its table maps something else: {line:?}"),
                    })
                }
            },
            other => {
                return Err(KernelError::Other {
                    context: format!("resize {name}"),
                    detail: format!("expected one thin target, found {other:?}"),
                })
            }
        };
        if size == current {
            return Ok(current);
        }
        if size < current {
            return Err(KernelError::Invalid(format!(
                "resize {name} from {} to {} sectors: shrinking is not supported",
                current.0, size.0
            )));
        }
        let line = TableLine { start: Sectors(0), length: size, target: Target::Thin(ThinParams { pool: self.pool_device, id }) };
        self.dm
            .table_load(&dev, &[line.to_dm()], DmOptions::default())
            .map_err(|e| kernel_error(format!("load the longer table of {name}"), &e))?;
        if let Err(e) = self.dm.device_suspend(&dev, DmOptions::default().set_flags(DmFlags::DM_SUSPEND)) {
            if let Err(undo) = self.dm.table_clear(&dev) {
                warn!(device = %name, error = %crate::error::describe(&undo), "could not clear the inactive table after a failed suspend");
            }
            return Err(kernel_error(format!("suspend {name} to resize it"), &e));
        }
        let mut last = None;
        for attempt in 0..5 {
            match self.dm.device_suspend(&dev, DmOptions::default()) {
                Ok(_) => {
                    last = None;
                    break;
                }
                Err(e) => {
                    warn!(device = %name, attempt, error = %crate::error::describe(&e), "resume after resize failed; retrying");
                    last = Some(e);
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
            }
        }
        if let Some(e) = last {
            return Err(kernel_error(format!("resume {name} after resizing it"), &e));
        }
        debug!(device = %name, from = current.0, to = size.0, "thin device resized");
        Ok(current)
    }

    /// Posts a message given as text, exactly as `dmsetup message` would:
    /// for tests that act behind the engine's back and for the kernel's own
    /// argument checks (ids of 2^24 and more).
    pub fn raw_message(&mut self, text: &str) -> Result<(), KernelError> {
        let name = self.pool_dm_name();
        self.dm
            .target_msg(&DevId::Name(Self::dm_name(&name)?), None, text)
            .map_err(|e| kernel_error(text.to_string(), &e))?;
        debug!(pool = %self.name(), message = %text, "message posted");
        Ok(())
    }

    /// Removes every thin device (refusing, before removing anything, if one
    /// is open), the pool and the linear maps. The on-disk state stays: the
    /// pool can be opened again, and `thin_check` can read the returned
    /// metadata area. On an error the pool stays active; open or adopt it
    /// again to keep using it.
    pub fn teardown(self) -> Result<MetadataArea, DmError> {
        let pool = self.name().clone();
        let thins = self.active_thins().map_err(|source| DmError::Kernel {
            pool: pool.clone(),
            source,
        })?;
        if let Some(open) = thins.iter().find(|t| t.open_count > 0) {
            return Err(DmError::ThinOpen {
                pool,
                id: open.id,
                open_count: open.open_count,
            });
        }
        let mut this = self;
        for thin in &thins {
            this.deactivate_thin(thin.id)
                .map_err(|source| DmError::Kernel {
                    pool: pool.clone(),
                    source,
                })?;
        }
        // Removing the pool suspends it first, which commits its metadata.
        dmops::remove(&this.dm, &this.names.pool())?;
        if let PoolLayout::OneDevice { .. } = this.layout {
            for name in [this.names.data(), this.names.metadata()] {
                if let Some(info) = dmops::info(&this.dm, &name)? {
                    dmops::remove(&this.dm, &name)?;
                    blockdev::remove_node(&mapper_path(&name), info.device());
                }
            }
        }
        debug!(pool = %pool, "pool torn down");
        Ok(this.metadata_area())
    }

    /// A waiter for this pool's device-mapper events (mode changes).
    pub fn events(&self) -> Result<crate::PoolEvents, KernelError> {
        crate::PoolEvents::new(&self.pool_dm_name())
    }

    fn pool_dm_name(&self) -> String {
        self.names.pool()
    }

    fn dm_name(name: &str) -> Result<&devicemapper::DmName, KernelError> {
        // Built from a validated pool name and a 24-bit id: this fails only
        // if device-mapper's naming rules change.
        devicemapper::DmName::new(name).map_err(|e| KernelError::Other {
            context: format!("name {name}"),
            detail: e.to_string(),
        })
    }

    /// Errors of an ioctl on a thin device: ENXIO means it is not active.
    fn thin_error(&self, id: ThinId, action: &str, err: &devicemapper::DmError) -> KernelError {
        if errno_of(err) == Some(libc::ENXIO) {
            KernelError::NotActive(id)
        } else {
            kernel_error(format!("{action} {}", self.names.thin(id)), err)
        }
    }
}

impl DmPool {
    /// The length `line` maps if it is thin `id` of this pool; `None` for
    /// any other target (a device with our name that is not ours).
    fn own_thin_length(&self, line: &(u64, u64, String, String), id: ThinId) -> Option<Sectors> {
        match TableLine::from_dm(line) {
            Ok(TableLine { length, target: Target::Thin(ThinParams { pool, id: table_id }), .. })
                if pool == self.pool_device && table_id == id =>
            {
                Some(length)
            }
            _ => None,
        }
    }

    /// The state of the device named as thin `id` of this pool (one
    /// DM_TABLE_STATUS by name), `None` if there is no such device. A device
    /// with the name that maps something else is ignored, with a warning.
    fn thin_state(&self, dm_name: &DmName, id: ThinId) -> Result<Option<ActiveThin>, KernelError> {
        let name = dm_name.to_string();
        let (info, table) = match self
            .dm
            .table_status(&DevId::Name(dm_name), DmOptions::default().set_flags(DmFlags::DM_STATUS_TABLE))
        {
            Ok(found) => found,
            // Not there (or removed since it was listed).
            Err(e) if errno_of(&e) == Some(libc::ENXIO) => return Ok(None),
            Err(e) => return Err(kernel_error(format!("read the table of {name}"), &e)),
        };
        let size = match table.as_slice() {
            [line] => match self.own_thin_length(line, id) {
                Some(length) => length,
                None => {
                    warn!(device = %name, table = ?line, "a device with this pool's thin name maps something else; ignoring it");
                    return Ok(None);
                }
            },
            // Created by an activation that stopped before its table was
            // loaded: reported (size 0, suspended) so it can be removed.
            [] => Sectors(0),
            _ => {
                warn!(device = %name, "a device with this pool's thin name has several targets; ignoring it");
                return Ok(None);
            }
        };
        Ok(Some(ActiveThin {
            id,
            size,
            open_count: u32::try_from(info.open_count()).unwrap_or(0),
            suspended: info.flags().contains(DmFlags::DM_SUSPEND),
        }))
    }
}

impl Kernel for DmPool {
    fn pool_status(&self) -> Result<PoolStatus, KernelError> {
        let name = self.pool_dm_name();
        let context = || format!("status of {name}");
        // DM_NOFLUSH: reading status must never commit metadata or wait on
        // I/O, so monitoring cannot stall the pool.
        let (_, targets) = self
            .dm
            .table_status(
                &DevId::Name(Self::dm_name(&name)?),
                DmOptions::default().set_flags(DmFlags::DM_NOFLUSH),
            )
            .map_err(|e| kernel_error(context(), &e))?;
        match targets.as_slice() {
            [(_, _, kind, params)] if kind == "thin-pool" => {
                params
                    .parse()
                    .map_err(|e: thinpool::status::StatusParseError| KernelError::Other {
                        context: context(),
                        detail: e.to_string(),
                    })
            }
            other => Err(KernelError::Other {
                context: context(),
                detail: format!("expected one thin-pool target, found {other:?}"),
            }),
        }
    }

    fn message(&mut self, message: &PoolMessage) -> Result<(), KernelError> {
        self.raw_message(&message.to_string())
    }

    fn active_thins(&self) -> Result<Vec<ActiveThin>, KernelError> {
        let listed = self
            .dm
            .list_devices()
            .map_err(|e| kernel_error(format!("list devices of pool {}", self.name()), &e))?;
        let mut thins = Vec::new();
        for (dm_name, _, _) in listed {
            let Some(id) = self.names.thin_id(&dm_name.as_ref().to_string()) else {
                continue;
            };
            thins.extend(self.thin_state(&dm_name, id)?);
        }
        thins.sort_by_key(|t| t.id);
        Ok(thins)
    }

    fn active_thin(&self, id: ThinId) -> Result<Option<ActiveThin>, KernelError> {
        let name = self.names.thin(id);
        self.thin_state(Self::dm_name(&name)?, id)
    }

    fn suspend_thin(&mut self, id: ThinId) -> Result<(), KernelError> {
        let name = self.names.thin(id);
        // DM_SUSPEND alone: flush queued I/O and freeze a mounted
        // filesystem (no DM_NOFLUSH, no DM_SKIP_LOCKFS), so a snapshot taken
        // now is filesystem-consistent.
        self.dm
            .device_suspend(
                &DevId::Name(Self::dm_name(&name)?),
                DmOptions::default().set_flags(DmFlags::DM_SUSPEND),
            )
            .map_err(|e| self.thin_error(id, "suspend", &e))?;
        Ok(())
    }

    fn resume_thin(&mut self, id: ThinId) -> Result<(), KernelError> {
        let name = self.names.thin(id);
        self.dm
            .device_suspend(&DevId::Name(Self::dm_name(&name)?), DmOptions::default())
            .map_err(|e| self.thin_error(id, "resume", &e))?;
        Ok(())
    }

    fn activate_thin(&mut self, id: ThinId, size: Sectors) -> Result<(), KernelError> {
        let name = self.names.thin(id);
        let context = || format!("activate thin {id} as {name}");
        if size.0 == 0 {
            return Err(KernelError::Invalid(format!("{}: size 0", context())));
        }
        let dm_name = Self::dm_name(&name)?;
        let created = match self.dm.device_create(dm_name, None, DmOptions::default()) {
            Ok(info) => info,
            Err(e) => {
                // The kernel answers EBUSY (not EEXIST) for a name in use.
                let exists = matches!(errno_of(&e), Some(libc::EBUSY | libc::EEXIST))
                    && self.dm.device_info(&DevId::Name(dm_name)).is_ok();
                return Err(if exists {
                    KernelError::AlreadyActive(id)
                } else {
                    kernel_error(context(), &e)
                });
            }
        };
        let line = TableLine {
            start: Sectors(0),
            length: size,
            target: Target::Thin(ThinParams {
                pool: self.pool_device,
                id,
            }),
        };
        let loaded = self
            .dm
            .table_load(&DevId::Name(dm_name), &[line.to_dm()], DmOptions::default())
            // ENODATA here: the id is not in the pool.
            .map_err(|e| kernel_error(context(), &e))
            .and_then(|_| {
                self.dm
                    .device_suspend(&DevId::Name(dm_name), DmOptions::default())
                    .map_err(|e| kernel_error(format!("resume {name}"), &e))
            });
        if let Err(e) = loaded {
            // Never leave a half-made (suspended, tableless) device behind.
            if let Err(undo) = self
                .dm
                .device_remove(&DevId::Name(dm_name), DmOptions::default())
            {
                warn!(device = %name, error = %crate::error::describe(&undo), "could not remove a device after its activation failed");
            }
            return Err(e);
        }
        // Callers usually want the node next; a failure here is not a
        // failed activation (thin_device_path retries and reports it).
        if let Err(e) = blockdev::ensure_node(&mapper_path(&name), created.device()) {
            debug!(device = %name, error = %e, "device node not made yet");
        }
        debug!(device = %name, size = size.0, "thin device active");
        Ok(())
    }

    fn deactivate_thin(&mut self, id: ThinId) -> Result<(), KernelError> {
        let name = self.names.thin(id);
        let dm_name = Self::dm_name(&name)?;
        let info = self
            .dm
            .device_info(&DevId::Name(dm_name))
            .map_err(|e| self.thin_error(id, "look up", &e))?;
        // Checked here because the crate retries a busy remove for ~1 s.
        if info.open_count() > 0 {
            return Err(KernelError::Busy(format!(
                "deactivate {name}: open {} times",
                info.open_count()
            )));
        }
        let started = std::time::Instant::now();
        self.dm
            .device_remove(&DevId::Name(dm_name), DmOptions::default())
            .map_err(|e| self.thin_error(id, "deactivate", &e))?;
        debug!(device = %name, elapsed_us = started.elapsed().as_micros() as u64, "remove");
        blockdev::remove_node(&mapper_path(&name), info.device());
        debug!(device = %name, "thin device removed");
        Ok(())
    }
}

/// The low water mark: free data blocks below which the kernel raises a
/// device-mapper event (5% of the pool), for whoever watches events.
pub(crate) fn low_water_mark(data_len: Sectors, block_size: Sectors) -> u64 {
    data_len.0 / block_size.0.max(1) / 20
}
