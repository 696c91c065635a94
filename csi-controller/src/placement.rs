//! Where a new volume goes and how much room a pool has (the arithmetic is
//! `params::available`; this module gathers what it needs from the API).
//!
//! A new empty volume goes to a usable pool on the first node of the
//! request's preferred, then requisite topology, or, with no accessibility
//! requirements at all (csi-sanity), to the usable pool with the most room
//! on any node. A restore or clone lives on its source's pool.

use std::collections::{BTreeMap, HashMap};

use csi_proto::v1::{Topology, TopologyRequirement};
use kube::api::ListParams;
use thin_csi_api::ThinPool;

use crate::objects::Devices;
use crate::params::{available, pool_unusable, Params, TOPOLOGY_KEY};
use crate::status::Error;

type Result<T, E = Error> = std::result::Result<T, E>;

impl Devices {
    /// Every pool object by name.
    pub async fn pool_map(&self) -> Result<BTreeMap<String, ThinPool>> {
        let list = self.pools.list(&ListParams::default()).await?;
        Ok(list.items.into_iter().map(|p| (p.metadata.name.clone().unwrap_or_default(), p)).collect())
    }

    /// Σ sizes of the volumes on each pool.
    pub async fn provisioned(&self) -> Result<HashMap<String, u64>> {
        let mut out = HashMap::new();
        for v in self.volumes.list(&ListParams::default()).await?.items {
            *out.entry(v.spec.pool.clone()).or_insert(0) += v.spec.size_bytes;
        }
        Ok(out)
    }

    /// The room `pool` has for more provisioned bytes under `overprovisioning`.
    pub async fn room(&self, pool: &ThinPool, overprovisioning: f64) -> Result<u64> {
        let name = pool.metadata.name.as_deref().unwrap_or_default();
        let provisioned = self.provisioned().await?.get(name).copied().unwrap_or(0);
        Ok(available(pool, overprovisioning, provisioned))
    }

    /// The largest room of any pool on `node` (any node: `None`) named
    /// `params.pool_name` (any: `None`).
    pub async fn largest_room(&self, node: Option<&str>, params: &Params) -> Result<u64> {
        let provisioned = self.provisioned().await?;
        Ok(self
            .pool_map()
            .await?
            .into_iter()
            .filter(|(_, p)| node.is_none_or(|n| n == p.spec.node))
            .filter(|(_, p)| params.pool_name.as_ref().is_none_or(|want| *want == p.spec.pool_name))
            .map(|(name, p)| available(&p, params.overprovisioning, provisioned.get(&name).copied().unwrap_or(0)))
            .max()
            .unwrap_or(0))
    }

    /// Refuses a new snapshot on `pool` (RESOURCE_EXHAUSTED) when the pool
    /// takes nothing new: gone, unhealthy, not read/write (out of data
    /// space, read-only, needs_check) or its metadata over the limit, which
    /// stops snapshots before the kernel runs out of metadata and aborts to
    /// read-only. A snapshot needs no budget: it shares its origin's blocks.
    pub async fn check_snapshot_room(&self, pool: &str) -> Result<()> {
        let p = self.pools.get_opt(pool).await?.ok_or_else(|| Error::ResourceExhausted(format!("pool {pool} is gone")))?;
        match pool_unusable(&p) {
            Some(reason) => Err(Error::ResourceExhausted(format!("pool {} on {} takes no new snapshot: {reason}", p.spec.pool_name, p.spec.node))),
            None => Ok(()),
        }
    }

    /// Picks the pool for a new empty volume of `size` bytes.
    pub async fn place(&self, params: &Params, topo: Option<&TopologyRequirement>, size: u64) -> Result<ThinPool> {
        let pools = self.pool_map().await?;
        let provisioned = self.provisioned().await?;
        let nodes_of = |ts: &[Topology]| -> Vec<String> { ts.iter().filter_map(|t| t.segments.get(TOPOLOGY_KEY).cloned()).collect() };
        // Candidate nodes in order of preference; empty = anywhere.
        let mut nodes: Vec<String> = Vec::new();
        let mut restricted = false;
        if let Some(t) = topo {
            for n in nodes_of(&t.preferred).into_iter().chain(nodes_of(&t.requisite)) {
                if !nodes.contains(&n) {
                    nodes.push(n);
                }
            }
            restricted = !t.requisite.is_empty() || !t.preferred.is_empty();
            if restricted && nodes.is_empty() {
                return Err(Error::invalid("accessibility_requirements", format!("no topology segment has the key {TOPOLOGY_KEY}")));
            }
        }
        let mut why: Vec<String> = Vec::new();
        let mut best: Option<(usize, u64, ThinPool)> = None;
        for (name, p) in pools {
            let rank = if restricted {
                match nodes.iter().position(|n| *n == p.spec.node) {
                    Some(i) => i,
                    None => continue,
                }
            } else {
                0
            };
            if params.pool_name.as_ref().is_some_and(|want| *want != p.spec.pool_name) {
                continue;
            }
            if let Some(reason) = pool_unusable(&p) {
                why.push(format!("{} on {}: {reason}", p.spec.pool_name, p.spec.node));
                continue;
            }
            let room = available(&p, params.overprovisioning, provisioned.get(&name).copied().unwrap_or(0));
            if room < size {
                why.push(format!("{} on {}: {room} bytes available", p.spec.pool_name, p.spec.node));
                continue;
            }
            if best.as_ref().is_none_or(|(r, b, _)| rank < *r || (rank == *r && room > *b)) {
                best = Some((rank, room, p));
            }
        }
        match best {
            Some((_, _, p)) => Ok(p),
            None => Err(Error::ResourceExhausted(format!(
                "no pool{}{} can hold {size} bytes{}",
                params.pool_name.as_ref().map(|p| format!(" named {p}")).unwrap_or_default(),
                if restricted { format!(" on node(s) {}", nodes.join(", ")) } else { String::new() },
                if why.is_empty() { String::new() } else { format!(": {}", why.join("; ")) }
            ))),
        }
    }
}
