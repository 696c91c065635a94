//! Thin helpers over devicemapper's low-level `DM` calls, shared by the
//! `Kernel` implementation and pool setup.

use devicemapper::{DevId, DeviceInfo, DmFlags, DmName, DmOptions, DmUuid, DM};
use tracing::{debug, warn};

use crate::error::{errno_of, ioctl_error, DmError};
use crate::table::{TableLine, Target};

pub(crate) fn open_control() -> Result<DM, DmError> {
    DM::new().map_err(|e| DmError::NoDeviceMapper(crate::error::describe(&e)))
}

pub(crate) fn dm_name(name: &str) -> Result<&DmName, DmError> {
    DmName::new(name).map_err(|e| DmError::Ioctl {
        action: "name",
        name: name.to_string(),
        errno: None,
        detail: e.to_string(),
    })
}

/// Device info, or `None` if no device of that name exists (ENXIO).
pub(crate) fn info(dm: &DM, name: &str) -> Result<Option<DeviceInfo>, DmError> {
    match dm.device_info(&DevId::Name(dm_name(name)?)) {
        Ok(info) => Ok(Some(info)),
        Err(e) if errno_of(&e) == Some(libc::ENXIO) => Ok(None),
        Err(e) => Err(ioctl_error("info", name, &e)),
    }
}

/// The device's active table, as the kernel reports it.
/// A table as `DM::table_status` returns it: `(start, length, type, params)` lines.
pub(crate) type RawTable = Vec<(u64, u64, String, String)>;

pub(crate) fn active_table(dm: &DM, name: &str) -> Result<(DeviceInfo, RawTable), DmError> {
    dm.table_status(
        &DevId::Name(dm_name(name)?),
        DmOptions::default().set_flags(DmFlags::DM_STATUS_TABLE),
    )
    .map_err(|e| ioctl_error("read the table of", name, &e))
}

/// Resume (suspend without `DM_SUSPEND`), with udev rules that skip
/// scanning for private devices (metadata, data, pool): nothing should
/// probe them for filesystems.
pub(crate) fn resume(dm: &DM, name: &str, private: bool) -> Result<(), DmError> {
    let options = if private {
        DmOptions::private()
    } else {
        DmOptions::default()
    };
    dm.device_suspend(&DevId::Name(dm_name(name)?), options)
        .map(|_| ())
        .map_err(|e| ioctl_error("resume", name, &e))
}

pub(crate) fn remove(dm: &DM, name: &str) -> Result<DeviceInfo, DmError> {
    let started = std::time::Instant::now();
    let removed = dm
        .device_remove(&DevId::Name(dm_name(name)?), DmOptions::default())
        .map_err(|e| ioctl_error("remove", name, &e));
    debug!(
        device = name,
        elapsed_us = started.elapsed().as_micros() as u64,
        ok = removed.is_ok(),
        "remove"
    );
    removed
}

/// Removes a device this call created, on an error path: the first error
/// is what the caller reports, this one only gets logged.
pub(crate) fn remove_quietly(dm: &DM, name: &str) {
    if let Err(e) = remove(dm, name) {
        warn!(device = name, error = %e, "could not remove a device while undoing a failed setup");
    }
}

/// How an active device's table must match the one we would load.
fn same_mapping(expected: &TableLine, found: &TableLine) -> bool {
    match (&expected.target, &found.target) {
        // Low water mark and features are tunables; the devices and the
        // block size are what make it this pool.
        (Target::ThinPool(e), Target::ThinPool(f)) => {
            expected.start == found.start
                && expected.length == found.length
                && e.metadata == f.metadata
                && e.data == f.data
                && e.block_size == f.block_size
        }
        _ => expected == found,
    }
}

/// Makes device `name` active with table `line`: creates it, or adopts it
/// if it is already active with that mapping, or finishes it if an earlier
/// run created it and stopped before it became active. Returns its device
/// number and whether this call created it (for undo on a later error).
/// Never leaves a device it created behind on an error.
pub(crate) fn ensure_device(
    dm: &DM,
    name: &str,
    uuid: Option<&str>,
    line: &TableLine,
    private: bool,
) -> Result<(devicemapper::Device, bool), DmError> {
    let id_name = dm_name(name)?;
    match info(dm, name)? {
        None => {
            let dm_uuid = match uuid {
                Some(u) => Some(DmUuid::new(u).map_err(|e| DmError::Ioctl {
                    action: "uuid",
                    name: name.to_string(),
                    errno: None,
                    detail: e.to_string(),
                })?),
                None => None,
            };
            let created = dm
                .device_create(id_name, dm_uuid, DmOptions::default())
                .map_err(|e| ioctl_error("create", name, &e))?;
            debug!(device = name, dev = %created.device(), table = %line, "created device");
            if let Err(e) = load_and_resume(dm, name, line, private) {
                remove_quietly(dm, name);
                return Err(e);
            }
            Ok((created.device(), true))
        }
        Some(existing) => {
            let found_uuid = existing.uuid().map(|u| u.to_string());
            if let Some(want) = uuid {
                if found_uuid.as_deref() != Some(want) {
                    return Err(DmError::ForeignDevice {
                        name: name.to_string(),
                        expected: format!("uuid {want}"),
                        found: format!("uuid {}", found_uuid.unwrap_or_else(|| "(none)".into())),
                    });
                }
            }
            if existing.flags().contains(DmFlags::DM_ACTIVE_PRESENT) {
                let (_, table) = active_table(dm, name)?;
                let found = match table.as_slice() {
                    [one] => TableLine::from_dm(one).ok(),
                    _ => None,
                };
                match found {
                    Some(found) if same_mapping(line, &found) => {
                        if found != *line {
                            debug!(device = name, expected = %line, found = %found, "adopting a device whose tunables differ");
                        }
                    }
                    _ => {
                        let found = table
                            .iter()
                            .map(|(s, l, t, p)| format!("{s} {l} {t} {}", p.trim_end()))
                            .collect::<Vec<_>>()
                            .join("; ");
                        return Err(DmError::ForeignDevice {
                            name: name.to_string(),
                            expected: line.to_string(),
                            found,
                        });
                    }
                }
                if existing.flags().contains(DmFlags::DM_SUSPEND) {
                    // Left suspended by a crash: nothing of ours keeps it so.
                    resume(dm, name, private)?;
                }
            } else {
                // Created by a run that stopped before loading or resuming.
                load_and_resume(dm, name, line, private)?;
            }
            debug!(device = name, dev = %existing.device(), "adopted active device");
            Ok((existing.device(), false))
        }
    }
}

fn load_and_resume(dm: &DM, name: &str, line: &TableLine, private: bool) -> Result<(), DmError> {
    dm.table_load(
        &DevId::Name(dm_name(name)?),
        &[line.to_dm()],
        DmOptions::default(),
    )
    .map_err(|e| ioctl_error("load the table of", name, &e))?;
    resume(dm, name, private)
}
