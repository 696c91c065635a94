//! One active controller: a `coordination.k8s.io/v1` Lease, taken and
//! renewed with optimistic concurrency (resourceVersion). A standby replica
//! retries until the holder stops renewing, then takes over.
//!
//! The lease keeps the work on one replica; it is not what keeps the pool
//! record safe: every allocation is a compare-and-swap on the ThinPool
//! object, so even two replicas that both believe they lead cannot hand out
//! an id or a transaction id twice.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ObjectMeta, PostParams};
use kube::Client;
use tokio::sync::watch;
use tracing::{info, warn};

/// The readiness condition (`csi_contract::health`) that holds once this
/// replica knows whether it leads: its first read or write of the Lease.
pub const LEASE_KNOWN: &str = "leader lease state known";

#[derive(Clone)]
pub struct LeaderElector {
    leases: Api<Lease>,
    name: String,
    identity: String,
    duration: Duration,
}

impl LeaderElector {
    pub fn new(client: Client, namespace: &str, name: &str, identity: &str, duration: Duration) -> Self {
        LeaderElector { leases: Api::namespaced(client, namespace), name: name.into(), identity: identity.into(), duration }
    }

    /// Takes the lease if it is free, expired or already ours, and renews it.
    /// Returns whether we hold it now. A lost write race is "not leader".
    pub async fn try_acquire_or_renew(&self) -> Result<bool, kube::Error> {
        let now = Timestamp::now();
        let secs = self.duration.as_secs().max(1) as i32;
        let spec = |transitions: i32, acquired: Option<MicroTime>| LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(secs),
            acquire_time: acquired.or(Some(MicroTime(now))),
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        };
        let Some(mut lease) = self.leases.get_opt(&self.name).await? else {
            let lease = Lease { metadata: ObjectMeta { name: Some(self.name.clone()), ..Default::default() }, spec: Some(spec(0, None)) };
            return match self.leases.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                Err(e) => Err(e),
            };
        };
        let current = lease.spec.clone().unwrap_or_default();
        let ours = current.holder_identity.as_deref() == Some(&self.identity);
        let expired = match (current.renew_time.as_ref(), current.lease_duration_seconds) {
            (Some(renewed), Some(d)) => renewed.0.as_second() + i64::from(d) < now.as_second(),
            _ => true,
        };
        if !ours && !expired && current.holder_identity.is_some() {
            return Ok(false);
        }
        let transitions = current.lease_transitions.unwrap_or(0) + i32::from(!ours);
        lease.spec = Some(spec(transitions, if ours { current.acquire_time } else { None }));
        match self.leases.replace(&self.name, &PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Waits until this replica leads, then keeps renewing in the background.
    /// The receiver turns false if leadership is lost (stop working then).
    pub async fn lead(self) -> watch::Receiver<bool> {
        let retry = self.duration / 3;
        let known = csi_contract::health::condition(LEASE_KNOWN);
        loop {
            let attempt = self.try_acquire_or_renew().await;
            known.set(known_now(&attempt));
            match attempt {
                Ok(true) => break,
                Ok(false) => {}
                Err(e) => warn!(error = %e, "lease: could not read or write"),
            }
            tokio::time::sleep(retry).await;
        }
        info!(identity = %self.identity, lease = %self.name, "leading");
        let (tx, rx) = watch::channel(true);
        tokio::spawn(async move {
            let mut last_renewal = tokio::time::Instant::now();
            loop {
                tokio::time::sleep(retry).await;
                match self.try_acquire_or_renew().await {
                    Ok(true) => last_renewal = tokio::time::Instant::now(),
                    Ok(false) => break,
                    Err(e) if last_renewal.elapsed() < self.duration => warn!(error = %e, "lease: renewal failed; retrying"),
                    Err(_) => break,
                }
            }
            warn!(identity = %self.identity, "lost the lease");
            let _ = tx.send(false);
        });
        rx
    }
}

/// Whether an attempt on the Lease told us where we stand.
fn known_now(attempt: &Result<bool, kube::Error>) -> bool {
    attempt.is_ok()
}
