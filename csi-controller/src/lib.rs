//! csi-controller: the CSI Identity and Controller services ([`identity`],
//! [`controller`], errors mapped in [`status`], pure rules in [`params`]),
//! the allocation of thin device ids and transaction ids on `ThinPool`
//! objects ([`alloc`]), waiting for the node ([`wait`]), the leader Lease
//! ([`leader`]), the registration of the CRDs ([`crds`]), the leak
//! collector the leader runs ([`collector`]) and Events ([`events`]).

pub mod alloc;
pub mod collector;
pub mod controller;
pub mod objects;
pub mod placement;
pub mod crds;
pub mod events;
pub mod failpoint;
pub mod identity;
pub mod leader;
pub mod params;
pub mod serve;
pub mod status;
pub mod wait;

pub use alloc::{plan, AllocError, Allocation, Allocator, Plan, Request};
