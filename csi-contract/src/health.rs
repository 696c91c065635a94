//! `/healthz`, `/readyz` and `/metrics` over HTTP, for both binaries (so no
//! livenessprobe sidecar is needed).
//!
//! Readiness is a set of named conditions, each false until the code that
//! knows sets it ([`condition`]): csi-node's "pool activated" and "serving
//! <endpoint>", csi-controller's "leader lease state known" and "kubernetes
//! API reachable". `/readyz` answers 200 when every one holds and 503 naming
//! the ones that do not. `/healthz` answers 200 while the process serves
//! HTTP at all (its runtime is alive); `/metrics` is [`crate::metrics::encode`].

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{LazyLock, Mutex};

use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;

static CONDITIONS: LazyLock<Mutex<BTreeMap<String, bool>>> = LazyLock::new(Default::default);

/// A named readiness condition.
#[derive(Clone, Debug)]
pub struct Condition(String);

/// The condition `name`, registered false if it is new (the same name is
/// the same condition).
pub fn condition(name: &str) -> Condition {
    CONDITIONS.lock().unwrap_or_else(|p| p.into_inner()).entry(name.to_string()).or_insert(false);
    Condition(name.to_string())
}

impl Condition {
    pub fn set(&self, holds: bool) {
        CONDITIONS.lock().unwrap_or_else(|p| p.into_inner()).insert(self.0.clone(), holds);
    }
}

/// Whether every condition holds (none registered: not ready), and the
/// report `/readyz` prints: one `[+]name` or `[-]name` line each.
pub fn readiness() -> (bool, String) {
    let conditions = CONDITIONS.lock().unwrap_or_else(|p| p.into_inner());
    let ready = !conditions.is_empty() && conditions.values().all(|v| *v);
    let mut report: String = conditions.iter().map(|(name, v)| format!("[{}]{name}\n", if *v { '+' } else { '-' })).collect();
    report.push_str(if ready { "ready\n" } else { "not ready\n" });
    (ready, report)
}

async fn readyz() -> impl IntoResponse {
    let (ready, report) = readiness();
    (if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE }, report)
}

async fn metrics() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], crate::metrics::encode())
}

/// Binds `addr` (an error names it), then serves the three paths in a task.
pub async fn serve_http(addr: SocketAddr) -> Result<tokio::task::JoinHandle<()>, String> {
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| format!("binding the HTTP address {addr}: {e}"))?;
    let app = axum::Router::new().route("/healthz", get(|| async { "ok\n" })).route("/readyz", get(readyz)).route("/metrics", get(metrics));
    tracing::info!(%addr, "serving /healthz, /readyz, /metrics");
    Ok(tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "the HTTP server stopped");
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_when_every_condition_holds() {
        let a = condition("test a");
        let b = condition("test b");
        assert!(!readiness().0);
        a.set(true);
        let (ready, report) = readiness();
        assert!(!ready);
        assert!(report.contains("[+]test a\n[-]test b\n"), "{report}");
        b.set(true);
        assert!(readiness().0);
        condition("test b"); // the same condition: still true
        assert!(readiness().0);
    }
}
