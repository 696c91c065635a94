//! thinpool-dm: the engine's [`thinpool::Kernel`] boundary on device-mapper
//! ioctls (the `devicemapper` crate's low-level `DM` calls; no lvm2, no
//! dmsetup processes), and setting a pool up on a node's block devices.
//!
//! - [`DmPool`] is one active pool. Its `Kernel` implementation: status with
//!   `DM_NOFLUSH`; messages with `target_msg`; suspend of a thin device with
//!   flush and filesystem freeze; thin devices as `0 <len> thin <pool> <id>`.
//! - Setup ([`DmPool::create_on_device`], [`DmPool::open_on_device`],
//!   [`DmPool::adopt`], [`DmPool::teardown`], [`probe`], [`find_pools`])
//!   never sends a message.
//! - [`PoolEvents`] waits for the pool's device-mapper events (mode
//!   changes) on its own control handle, never on the pool lock.
//! - Device names ([`names`]) let a node find every device again from the
//!   pool name: `thincsi-<pool>-{meta,data,pool}`, `thincsi-<pool>-thin-<id>`.
//!
//! Only csi-node and the VM tests link this crate; nothing here works
//! without `/dev/mapper/control` (a kernel with dm-mod, and privilege).
//! The unit tests need neither.

mod blockdev;
mod dmops;
mod events;
mod listing;
pub mod error;
pub mod names;
mod pool;
mod setup;
pub mod table;

pub use blockdev::{device_size, read_head, size_of, thin_superblock, ThinSuperblock, THIN_METADATA_MAGIC};
pub use error::{from_errno, DmError};
pub use events::PoolEvents;
pub use pool::{DmPool, MetadataArea, PoolLayout};
pub use setup::{describe, find_pools, probe, ExposedMetadata};
pub use table::PoolFeatures;
