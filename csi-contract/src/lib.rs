//! csi-contract: what csi-controller and csi-node must agree on, in one
//! place, so a rule cannot drift between the two binaries.
//!
//! - [`id`]: the volume/snapshot id `<pool object>:<thin id>` and its one parser;
//! - [`keys`]: the topology key, volume-context keys and object labels;
//! - [`plugin`]: the driver name and plugin capabilities both report;
//! - [`endpoint`]: `unix://` / `tcp://` endpoints and serving gRPC on them;
//! - [`busy`]: one operation per object at a time;
//! - [`codes`]: Kubernetes API errors as gRPC codes;
//! - [`process`]: the shared options, logging and client setup of both `main.rs`;
//! - [`metrics`]: the Prometheus series both export, and the gRPC request layer;
//! - [`volume_health`]: a pool's condition as CSI volume/storage health entries;
//! - [`health`]: `/healthz`, `/readyz` (named readiness conditions), `/metrics` over HTTP.

pub mod busy;
pub mod codes;
pub mod endpoint;
pub mod health;
pub mod id;
pub mod keys;
pub mod metrics;
pub mod plugin;
pub mod process;
pub mod volume_health;

pub use id::{DeviceRef, IdError};
