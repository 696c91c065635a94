//! csi-controller: the CSI Identity and Controller services. For now: the
//! allocation of thin device ids and transaction ids on `ThinPool` objects
//! ([`alloc`]) and the registration of the CRDs ([`crds`]).

pub mod alloc;
pub mod crds;
pub mod leader;
pub mod wait;

pub use alloc::{plan, AllocError, Allocation, Allocator, Plan, Request};
