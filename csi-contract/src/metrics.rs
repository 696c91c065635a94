//! The Prometheus series both binaries export, defined once. Each binary
//! registers the families that are its own ([`init`] with its [`Role`]);
//! recording into a family the process did not register is a no-op for
//! the scrape.
//!
//! | series | labels | who |
//! |---|---|---|
//! | `thin_csi_grpc_requests_total` | `method`, `code` | both (every gRPC server, [`GrpcMetricsLayer`]) |
//! | `thin_csi_grpc_request_duration_seconds` (histogram) | `method`, `code` | both |
//! | `thin_csi_transaction_phase_duration_seconds` (histogram) | `phase` = suspend, message, resume | node |
//! | `thin_csi_transactions_total` | `outcome` = committed, aborted, recovered | node |
//! | `thin_csi_pool_{data,metadata}_{used,total}_bytes` | `pool` | node |
//! | `thin_csi_pool_mode` (1 for the current mode, 0 otherwise) | `pool`, `mode` | node |
//! | `thin_csi_allocation_conflicts_total` | | controller |

use std::future::Future;
use std::pin::Pin;
use std::sync::{LazyLock, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Which binary is exporting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Controller,
    Node,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RpcLabels {
    /// `package.Service/Method`, e.g. `csi.v1.Node/NodeStageVolume`; `unknown` for a path no service has.
    pub method: String,
    /// The gRPC status code's name: `Ok`, `NotFound`, `ResourceExhausted`, ...
    pub code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabels {
    pub phase: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolLabels {
    pub pool: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolModeLabels {
    pub pool: String,
    pub mode: &'static str,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// Every family, in one value.
pub struct Metrics {
    pub rpcs: Family<RpcLabels, Counter>,
    pub rpc_seconds: Histograms<RpcLabels>,
    pub phase_seconds: Histograms<PhaseLabels>,
    pub transactions: Family<OutcomeLabels, Counter>,
    pub pool_data_used: Family<PoolLabels, Gauge>,
    pub pool_data_total: Family<PoolLabels, Gauge>,
    pub pool_metadata_used: Family<PoolLabels, Gauge>,
    pub pool_metadata_total: Family<PoolLabels, Gauge>,
    pub pool_mode: Family<PoolModeLabels, Gauge>,
    pub allocation_conflicts: Counter,
    /// The leak collector (csi-controller): devices no object names, seen
    /// in the last pass (in their grace period or being deleted).
    pub leaked_devices: Family<PoolLabels, Gauge>,
    pub leaked_devices_deleted: Family<PoolLabels, Counter>,
    /// Objects whose device is not in the pool, past the grace period.
    pub objects_missing_device: Family<PoolLabels, Gauge>,
    pub tombstones_pruned: Family<PoolLabels, Counter>,
    registry: Mutex<Option<Registry>>,
}

/// 0.25 ms to ~8 s, doubling: a dm ioctl under emulation is ~1 ms, an RPC
/// that waits for the node seconds.
fn latency() -> Histogram {
    Histogram::new(exponential_buckets(0.000_25, 2.0, 16))
}

/// The pool modes the node reports (`PoolMode` of the pool object).
pub const POOL_MODES: &[&str] = &["rw", "out_of_data_space", "read-only", "needs_check"];

static METRICS: LazyLock<Metrics> = LazyLock::new(|| Metrics {
    rpcs: Family::default(),
    rpc_seconds: Family::new_with_constructor(latency),
    phase_seconds: Family::new_with_constructor(latency),
    transactions: Family::default(),
    pool_data_used: Family::default(),
    pool_data_total: Family::default(),
    pool_metadata_used: Family::default(),
    pool_metadata_total: Family::default(),
    pool_mode: Family::default(),
    leaked_devices: Family::default(),
    leaked_devices_deleted: Family::default(),
    objects_missing_device: Family::default(),
    tombstones_pruned: Family::default(),
    allocation_conflicts: Counter::default(),
    registry: Mutex::new(None),
});

/// The process's metrics.
pub fn get() -> &'static Metrics {
    &METRICS
}

/// Registers the families of `role` (once; a second call changes nothing).
pub fn init(role: Role) {
    let m = get();
    let mut slot = m.registry.lock().unwrap_or_else(|p| p.into_inner());
    if slot.is_some() {
        return;
    }
    let mut r = Registry::with_prefix("thin_csi");
    r.register("grpc_requests", "gRPC requests served, by method and status code", m.rpcs.clone());
    r.register("grpc_request_duration_seconds", "gRPC request latency, by method and status code", m.rpc_seconds.clone());
    match role {
        Role::Node => {
            r.register("transaction_phase_duration_seconds", "Pool transaction phase latency (suspend, message, resume)", m.phase_seconds.clone());
            r.register("transactions", "Pool transactions ended: committed, aborted, or recovered (found ended after a restart)", m.transactions.clone());
            r.register("pool_data_used_bytes", "Pool data space used", m.pool_data_used.clone());
            r.register("pool_data_total_bytes", "Pool data space", m.pool_data_total.clone());
            r.register("pool_metadata_used_bytes", "Pool metadata space used", m.pool_metadata_used.clone());
            r.register("pool_metadata_total_bytes", "Pool metadata space", m.pool_metadata_total.clone());
            r.register("pool_mode", "1 for the pool's current mode, 0 for the others", m.pool_mode.clone());
        }
        Role::Controller => {
            r.register("allocation_conflicts", "Pool record writes that lost an optimistic-concurrency conflict and were retried", m.allocation_conflicts.clone());
            r.register("leaked_devices", "Thin devices no volume or snapshot object names, seen by the leak collector's last pass", m.leaked_devices.clone());
            r.register("leaked_devices_deleted", "Leaked thin devices the collector deleted (a delete transaction recorded)", m.leaked_devices_deleted.clone());
            r.register("objects_missing_device", "Volume and snapshot objects whose thin device is not in the pool, past the grace period", m.objects_missing_device.clone());
            r.register("tombstones_pruned", "Tombstones of aborted transactions the collector removed (no waiter can need them)", m.tombstones_pruned.clone());
        }
    }
    *slot = Some(r);
}

/// The OpenMetrics text of every registered family (empty before [`init`]).
pub fn encode() -> String {
    let slot = get().registry.lock().unwrap_or_else(|p| p.into_inner());
    let mut out = String::new();
    if let Some(r) = slot.as_ref() {
        prometheus_client::encoding::text::encode(&mut out, r).expect("writing to a String cannot fail");
    }
    out
}

impl Metrics {
    /// One transaction phase took `d`.
    pub fn phase(&self, phase: &'static str, d: Duration) {
        self.phase_seconds.get_or_create(&PhaseLabels { phase }).observe(d.as_secs_f64());
    }

    /// A transaction ended: `committed`, `aborted` or `recovered`.
    pub fn transaction(&self, outcome: &'static str) {
        self.transactions.get_or_create(&OutcomeLabels { outcome }).inc();
    }

    /// What the node read from the pool's status line.
    pub fn pool(&self, pool: &str, data: (u64, u64), metadata: (u64, u64), mode: &str) {
        let l = PoolLabels { pool: pool.to_string() };
        let set = |f: &Family<PoolLabels, Gauge>, v: u64| {
            f.get_or_create(&l).set(i64::try_from(v).unwrap_or(i64::MAX));
        };
        set(&self.pool_data_used, data.0);
        set(&self.pool_data_total, data.1);
        set(&self.pool_metadata_used, metadata.0);
        set(&self.pool_metadata_total, metadata.1);
        for m in POOL_MODES {
            self.pool_mode.get_or_create(&PoolModeLabels { pool: pool.to_string(), mode: m }).set(i64::from(*m == mode));
        }
    }

    fn rpc(&self, method: String, code: tonic::Code, d: Duration) {
        let labels = RpcLabels { method, code: format!("{code:?}") };
        self.rpcs.get_or_create(&labels).inc();
        self.rpc_seconds.get_or_create(&labels).observe(d.as_secs_f64());
    }
}

/// A tower layer for tonic servers: counts and times every request by
/// method and gRPC status code ([`crate::endpoint::server`] adds it).
#[derive(Clone, Copy, Debug, Default)]
pub struct GrpcMetricsLayer;

impl<S> tower::Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetrics<S>;
    fn layer(&self, inner: S) -> GrpcMetrics<S> {
        GrpcMetrics { inner }
    }
}

#[derive(Clone, Debug)]
pub struct GrpcMetrics<S> {
    inner: S,
}

/// The status code of a response: tonic puts a handler's error status in
/// the headers (a trailers-only response); a unary success carries it in
/// the trailers, so no `grpc-status` header means OK.
pub fn response_code(headers: &http::HeaderMap) -> tonic::Code {
    headers.get("grpc-status").and_then(|v| v.to_str().ok()).and_then(|s| s.parse::<i32>().ok()).map_or(tonic::Code::Ok, tonic::Code::from_i32)
}

impl<S, B, R> tower::Service<http::Request<B>> for GrpcMetrics<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let method = request.uri().path().trim_start_matches('/').to_string();
        let start = Instant::now();
        let future = self.inner.call(request);
        Box::pin(async move {
            let result = future.await;
            let code = match &result {
                Ok(response) => response_code(response.headers()),
                Err(_) => tonic::Code::Internal,
            };
            // A path no service serves is not a label value: clients choose it.
            let method = if code == tonic::Code::Unimplemented { "unknown".to_string() } else { method };
            get().rpc(method, code, start.elapsed());
            result
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_from_headers() {
        let mut h = http::HeaderMap::new();
        assert_eq!(response_code(&h), tonic::Code::Ok);
        h.insert("grpc-status", "5".parse().unwrap());
        assert_eq!(response_code(&h), tonic::Code::NotFound);
    }

    #[test]
    fn node_families_are_encoded() {
        init(Role::Node);
        let m = get();
        m.phase("suspend", Duration::from_micros(300));
        m.transaction("committed");
        m.pool("p1", (1, 10), (2, 20), "rw");
        let text = encode();
        for want in [
            "thin_csi_transaction_phase_duration_seconds_count{phase=\"suspend\"} 1",
            "thin_csi_transactions_total{outcome=\"committed\"} 1",
            "thin_csi_pool_data_total_bytes{pool=\"p1\"} 10",
            "thin_csi_pool_mode{pool=\"p1\",mode=\"rw\"} 1",
            "thin_csi_pool_mode{pool=\"p1\",mode=\"read-only\"} 0",
        ] {
            assert!(text.contains(want), "{want} missing from:\n{text}");
        }
        assert!(!text.contains("allocation_conflicts"), "a controller family in the node's scrape");
    }
}
