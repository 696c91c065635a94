//! Setting a pool up on a node: laying it out on one device, finding it
//! again by its header, adopting an explicit metadata + data pair. None of
//! these sends a message: the pool's transaction id is left to the engine's
//! reconciliation.
//!
//! Safety rule (design, "The pool on a node"): nothing is written to a
//! device that holds anything but zeros or our own header. Creation reads
//! the device's head through an exclusive open (so nothing mounts or maps
//! it meanwhile) and refuses, naming what it found, unless it is all zeros.
//!
//! Resize (a grown disk, an appended device) is later work: it will reload
//! the data linear map and the pool table with a larger length, and rewrite
//! the header's data length, without a new pool.

use std::path::{Path, PathBuf};

use devicemapper::{Device, DM};
use thinpool::layout::{identify, Contents, LayoutError, PoolHeader, PROBE_BYTES};
use thinpool::{PoolName, Sectors};
use tracing::{debug, info, warn};

use crate::blockdev::{self, ExclusiveWriter};
use crate::dmops;
use crate::error::DmError;
use crate::names::{dm_uuid, mapper_path, DeviceNames};
use crate::pool::{low_water_mark, DmPool, MetadataArea, PoolLayout};
use crate::table::{LinearParams, PoolFeatures, TableLine, Target, ThinPoolParams};

/// What the start of a device holds: the first [`PROBE_BYTES`] (or the
/// whole device, if smaller), recognised by [`identify`].
pub fn probe(device: &Path) -> Result<Contents, DmError> {
    let head = blockdev::read_head(device, PROBE_BYTES)
        .map_err(|source| io(device, "read the start of the device", source))?;
    Ok(identify(&head))
}

/// The devices among `candidates` that hold a thin-csi pool header. Devices
/// that cannot be read are skipped (logged): a node scans what it was told
/// to, and one bad disk must not hide the others.
pub fn find_pools(candidates: &[PathBuf]) -> Vec<(PathBuf, PoolHeader)> {
    let mut found = Vec::new();
    for device in candidates {
        match probe(device) {
            Ok(Contents::Pool(header)) => found.push((device.clone(), header)),
            Ok(other) => {
                debug!(device = %device.display(), holds = %describe(&other), "no pool header")
            }
            Err(e) => warn!(device = %device.display(), error = %e, "cannot probe device"),
        }
    }
    found
}

/// Names what a device holds, for error messages.
pub fn describe(contents: &Contents) -> String {
    match contents {
        Contents::Zeros => "only zeros".to_string(),
        Contents::Pool(h) => format!(
            "the header of thin-csi pool {} (uuid {})",
            h.name,
            h.uuid_string()
        ),
        Contents::Foreign(what) => what.clone(),
    }
}

fn io(device: &Path, action: &'static str, source: std::io::Error) -> DmError {
    DmError::Io {
        device: device.to_path_buf(),
        action,
        source,
    }
}

/// How the pool's metadata and data devices come to be.
enum Underlying {
    /// dm-linear maps of areas of one device, tied to the pool's uuid.
    Linear {
        metadata: TableLine,
        data: TableLine,
        uuid_hex: String,
    },
    /// Whole devices, referenced directly.
    Devices { metadata: Device, data: Device },
}

impl DmPool {
    /// Lays a new pool out on `device` and activates it: refuses unless the
    /// device holds only zeros; writes the metadata area's first 4 KiB as
    /// zeros (the kernel formats zeroed metadata) and then our header;
    /// creates the `-meta` and `-data` linear maps and the thin-pool.
    /// Sends no message: the pool starts at transaction 0.
    pub fn create_on_device(
        device: &Path,
        name: &PoolName,
        uuid: [u8; 16],
        block_size: Sectors,
    ) -> Result<DmPool, DmError> {
        // A first look without the exclusive open, so a device in use (our
        // own active pool, a mount) is refused naming what it holds rather
        // than with a bare EBUSY.
        match probe(device)? {
            Contents::Zeros => {}
            other => {
                return Err(DmError::NotEmpty {
                    device: device.to_path_buf(),
                    found: describe(&other),
                })
            }
        }
        // Fail before writing anything if device-mapper is not there.
        let dm = dmops::open_control()?;
        let header = {
            let writer = ExclusiveWriter::open(device)
                .map_err(|e| io(device, "open exclusively (is the device in use?)", e))?;
            let size = writer.size().map_err(|e| io(device, "read the size", e))?;
            let header = PoolHeader::plan(
                uuid,
                name.clone(),
                Sectors(size / Sectors::SIZE),
                block_size,
            )
            .map_err(|source| DmError::Layout {
                device: device.to_path_buf(),
                source,
            })?;
            // Again under the exclusive open: what we check is what we overwrite.
            let head = writer
                .read_at(0, PROBE_BYTES)
                .map_err(|e| io(device, "read the start of the device", e))?;
            match identify(&head) {
                Contents::Zeros => {}
                other => {
                    return Err(DmError::NotEmpty {
                        device: device.to_path_buf(),
                        found: describe(&other),
                    })
                }
            }
            // The only bytes written outside the probed head: refuse there too
            // (thin metadata here means a pool whose header was erased).
            let meta_offset = header.metadata_start.bytes();
            let meta_head = writer
                .read_at(meta_offset, 4096)
                .map_err(|e| io(device, "read the metadata area", e))?;
            if let Some(at) = meta_head.iter().position(|b| *b != 0) {
                let found = if blockdev::thin_superblock(&meta_head).is_some() {
                    format!("thin-pool metadata at byte {meta_offset} (a pool whose header was erased?)")
                } else {
                    format!(
                        "data at byte {} (where the metadata area would start)",
                        meta_offset + at as u64
                    )
                };
                return Err(DmError::NotEmpty {
                    device: device.to_path_buf(),
                    found,
                });
            }
            writer
                .write_at(meta_offset, &[0u8; 4096])
                .map_err(|e| io(device, "zero the metadata superblock", e))?;
            writer.sync().map_err(|e| io(device, "flush", e))?;
            // The header last: a crash before it leaves a device that still
            // probes as zeros, so creation simply runs again.
            writer
                .write_at(0, &header.encode())
                .map_err(|e| io(device, "write the pool header", e))?;
            writer.sync().map_err(|e| io(device, "flush", e))?;
            header
            // The exclusive open ends here: dm-linear needs to claim the device.
        };
        info!(device = %device.display(), pool = %name, uuid = %header.uuid_string(), "pool laid out");
        bring_up_one_device(dm, device, header)
    }

    /// Finds the pool on `device` by its header and activates it (after a
    /// reboot), or adopts it if it is already active. Sends no message.
    pub fn open_on_device(device: &Path) -> Result<DmPool, DmError> {
        let header = match probe(device)? {
            Contents::Pool(header) => header,
            other => {
                return Err(DmError::NoPoolHeader {
                    device: device.to_path_buf(),
                    found: describe(&other),
                })
            }
        };
        let dm = dmops::open_control()?;
        bring_up_one_device(dm, device, header)
    }

    /// Activates (or adopts, if active) a pool on an explicit metadata and
    /// data device. The metadata device must hold zeros (a new pool: the
    /// kernel formats it) or thin-pool metadata of this block size; the
    /// data device may hold anything. Sends no message.
    pub fn adopt(
        name: &PoolName,
        metadata_device: &Path,
        data_device: &Path,
        block_size: Sectors,
    ) -> Result<DmPool, DmError> {
        if block_size.0 < 128 || block_size.0 > 2_097_152 || !block_size.0.is_multiple_of(128) {
            return Err(DmError::Layout {
                device: data_device.to_path_buf(),
                source: LayoutError::BadBlockSize(block_size),
            });
        }
        let metadata =
            blockdev::device_number(metadata_device).map_err(|e| io(metadata_device, "stat", e))?;
        let data = blockdev::device_number(data_device).map_err(|e| io(data_device, "stat", e))?;
        if metadata == data {
            return Err(DmError::SameDevice(metadata_device.to_path_buf()));
        }
        let head = blockdev::read_head(metadata_device, PROBE_BYTES)
            .map_err(|e| io(metadata_device, "read the start of the device", e))?;
        // The superblock magic first: `identify` looks for partition tables
        // and filesystems before it, and metadata bytes could mimic one.
        match blockdev::thin_superblock(&head) {
            Some(sb) if sb.data_block_size != block_size => {
                return Err(DmError::BlockSizeMismatch {
                    device: metadata_device.to_path_buf(),
                    found: sb.data_block_size,
                    expected: block_size,
                });
            }
            Some(sb) => {
                debug!(device = %metadata_device.display(), transaction_id = sb.transaction_id, "existing thin-pool metadata")
            }
            None => match identify(&head) {
                Contents::Zeros => {
                    debug!(device = %metadata_device.display(), "zeroed metadata: the kernel formats it")
                }
                other => {
                    return Err(DmError::NotMetadata {
                        device: metadata_device.to_path_buf(),
                        found: describe(&other),
                    })
                }
            },
        }
        let data_size =
            blockdev::device_len(data_device).map_err(|e| io(data_device, "read the size", e))?;
        let data_len = Sectors(data_size.0 / block_size.0 * block_size.0);
        if data_len.0 == 0 {
            return Err(DmError::DeviceTooSmall {
                device: data_device.to_path_buf(),
                needed: block_size,
                actual: data_size,
            });
        }
        let dm = dmops::open_control()?;
        let metadata_len = blockdev::device_len(metadata_device)
            .map_err(|e| io(metadata_device, "read the size", e))?;
        let layout = PoolLayout::Pair {
            metadata: metadata_device.to_path_buf(),
            metadata_len,
            data: data_device.to_path_buf(),
        };
        bring_up(
            dm,
            DeviceNames::new(name),
            layout,
            Underlying::Devices { metadata, data },
            block_size,
            data_len,
        )
    }
}

fn bring_up_one_device(dm: DM, device: &Path, header: PoolHeader) -> Result<DmPool, DmError> {
    let actual = blockdev::device_len(device).map_err(|e| io(device, "read the size", e))?;
    let needed = Sectors(header.data_start.0 + header.data_len.0);
    if actual < needed {
        return Err(DmError::DeviceTooSmall {
            device: device.to_path_buf(),
            needed,
            actual,
        });
    }
    let dev = blockdev::device_number(device).map_err(|e| io(device, "stat", e))?;
    let linear = |offset: Sectors, len: Sectors| TableLine {
        start: Sectors(0),
        length: len,
        target: Target::Linear(LinearParams {
            device: dev,
            offset,
        }),
    };
    let underlying = Underlying::Linear {
        metadata: linear(header.metadata_start, header.metadata_len),
        data: linear(header.data_start, header.data_len),
        uuid_hex: header.uuid_string(),
    };
    let (block_size, data_len) = (header.block_size, header.data_len);
    let names = DeviceNames::new(&header.name);
    let layout = PoolLayout::OneDevice {
        device: device.to_path_buf(),
        header,
    };
    bring_up(dm, names, layout, underlying, block_size, data_len)
}

/// Makes the metadata/data devices (if mapped) and the thin-pool active,
/// adopting any already active with the same mapping. On an error, removes
/// what this call created, in reverse order.
fn bring_up(
    dm: DM,
    names: DeviceNames,
    layout: PoolLayout,
    underlying: Underlying,
    block_size: Sectors,
    data_len: Sectors,
) -> Result<DmPool, DmError> {
    let mut created: Vec<String> = Vec::new();
    let result = (|| {
        let (metadata, data, uuid_hex) = match &underlying {
            Underlying::Linear {
                metadata,
                data,
                uuid_hex,
            } => {
                let (m, made) = dmops::ensure_device(
                    &dm,
                    &names.metadata(),
                    Some(&dm_uuid(uuid_hex, "meta")),
                    metadata,
                    true,
                )?;
                if made {
                    created.push(names.metadata());
                }
                let (d, made) = dmops::ensure_device(
                    &dm,
                    &names.data(),
                    Some(&dm_uuid(uuid_hex, "data")),
                    data,
                    true,
                )?;
                if made {
                    created.push(names.data());
                }
                (m, d, Some(uuid_hex.clone()))
            }
            Underlying::Devices { metadata, data } => (*metadata, *data, None),
        };
        let pool_line = TableLine {
            start: Sectors(0),
            length: data_len,
            target: Target::ThinPool(ThinPoolParams {
                metadata,
                data,
                block_size,
                low_water_mark: low_water_mark(data_len, block_size),
                features: PoolFeatures::DEFAULT,
                other_features: Vec::new(),
            }),
        };
        let pool_uuid = uuid_hex.map(|u| dm_uuid(&u, "pool"));
        let (pool_device, made) =
            dmops::ensure_device(&dm, &names.pool(), pool_uuid.as_deref(), &pool_line, true)?;
        if made {
            created.push(names.pool());
        }
        Ok(pool_device)
    })();
    match result {
        Ok(pool_device) => {
            info!(pool = %names.pool_name(), device = %pool_device, "pool active");
            Ok(DmPool {
                dm,
                names,
                layout,
                pool_device,
                block_size,
                data_len,
            })
        }
        Err(e) => {
            for name in created.iter().rev() {
                dmops::remove_quietly(&dm, name);
            }
            Err(e)
        }
    }
}

/// A block device holding exactly a pool's metadata, for `thin_check`
/// and friends after [`DmPool::teardown`].
#[derive(Debug)]
pub struct ExposedMetadata {
    path: PathBuf,
    /// The dm-linear map made for it, to remove on close.
    made: Option<(String, Device)>,
}

impl ExposedMetadata {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Removes the map made by [`MetadataArea::expose`], if one was made.
    pub fn close(self) -> Result<(), DmError> {
        if let Some((name, device)) = &self.made {
            let dm = dmops::open_control()?;
            dmops::remove(&dm, name)?;
            blockdev::remove_node(&mapper_path(name), *device);
        }
        Ok(())
    }
}

impl MetadataArea {
    /// A device node holding exactly this area: the device itself when the
    /// area is all of it, else a dm-linear map named like the pool's
    /// `-meta` device (adopted if it is still active).
    pub fn expose(&self, pool: &PoolName) -> Result<ExposedMetadata, DmError> {
        let whole =
            blockdev::device_len(&self.device).map_err(|e| io(&self.device, "read the size", e))?;
        if self.start.0 == 0 && self.len == whole {
            return Ok(ExposedMetadata {
                path: self.device.clone(),
                made: None,
            });
        }
        let dev = blockdev::device_number(&self.device).map_err(|e| io(&self.device, "stat", e))?;
        let line = TableLine {
            start: Sectors(0),
            length: self.len,
            target: Target::Linear(LinearParams {
                device: dev,
                offset: self.start,
            }),
        };
        let dm = dmops::open_control()?;
        let name = DeviceNames::new(pool).metadata();
        let (device, made) = dmops::ensure_device(&dm, &name, None, &line, true)?;
        let path = mapper_path(&name);
        if let Err(e) = blockdev::ensure_node(&path, device) {
            if made {
                dmops::remove_quietly(&dm, &name);
            }
            return Err(io(&path, "make the device node", e));
        }
        Ok(ExposedMetadata {
            path,
            made: made.then_some((name, device)),
        })
    }
}

#[cfg(test)]
mod tests {
    //! What can be checked without device-mapper: every refusal happens
    //! before `/dev/mapper/control` is opened, on plain files.
    use super::*;

    struct TempDevice(PathBuf);

    impl TempDevice {
        fn with(name: &str, len: usize, at: usize, bytes: &[u8]) -> TempDevice {
            let dir = std::env::temp_dir()
                .join(format!("thinpool-dm-setup-{}-{name}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let path = dir.join("dev");
            let mut content = vec![0u8; len];
            content[at..at + bytes.len()].copy_from_slice(bytes);
            std::fs::write(&path, content).unwrap();
            TempDevice(path)
        }
    }

    impl Drop for TempDevice {
        fn drop(&mut self) {
            if let Some(dir) = self.0.parent() {
                let _ = std::fs::remove_dir_all(dir);
            }
        }
    }

    #[test]
    fn create_refuses_a_device_with_a_filesystem_naming_it() {
        let dev = TempDevice::with("ext4", 8 << 20, 1080, &[0x53, 0xef]);
        let err =
            DmPool::create_on_device(&dev.0, &PoolName::new("p").unwrap(), [1; 16], Sectors(128))
                .unwrap_err();
        assert!(
            matches!(&err, DmError::NotEmpty { found, .. } if found.contains("ext")),
            "{err:?}"
        );
        assert!(
            err.to_string().contains(&dev.0.display().to_string()),
            "{err}"
        );
    }

    #[test]
    fn open_refuses_a_device_without_our_header() {
        let dev = TempDevice::with("zeros", 8 << 20, 0, &[]);
        assert_eq!(probe(&dev.0).unwrap(), Contents::Zeros);
        let err = DmPool::open_on_device(&dev.0).unwrap_err();
        assert!(
            matches!(&err, DmError::NoPoolHeader { found, .. } if found == "only zeros"),
            "{err:?}"
        );
    }

    #[test]
    fn find_pools_reports_only_devices_with_our_header() {
        let header = PoolHeader::plan(
            [9; 16],
            PoolName::new("found").unwrap(),
            Sectors(1 << 16),
            Sectors(128),
        )
        .unwrap();
        let ours = TempDevice::with("ours", 2 << 20, 0, &header.encode());
        let other = TempDevice::with("other", 2 << 20, 0, b"XFSB");
        let found = find_pools(&[
            other.0.clone(),
            PathBuf::from("/nonexistent/dev"),
            ours.0.clone(),
        ]);
        assert_eq!(found, vec![(ours.0.clone(), header)]);
    }

    #[test]
    fn adopt_checks_its_arguments_first() {
        let f = TempDevice::with("plain", 1 << 20, 0, &[]);
        let name = PoolName::new("p").unwrap();
        assert!(matches!(
            DmPool::adopt(&name, &f.0, &f.0, Sectors(100)),
            Err(DmError::Layout { .. })
        ));
        // Plain files are not block devices: named in the error.
        let err = DmPool::adopt(&name, &f.0, &f.0, Sectors(128)).unwrap_err();
        assert!(
            matches!(&err, DmError::Io { device, .. } if device == &f.0),
            "{err:?}"
        );
    }
}
