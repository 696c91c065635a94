//! csi-controller: registers the custom resources, takes the controller
//! Lease (one active replica; others stand by) and, while leading, owns
//! allocation for every pool. With `--csi-endpoint` it serves CSI Identity
//! and Controller there from the start: Probe is not ready and Controller
//! calls are UNAVAILABLE until this replica leads.
//!
//! usage (`csi-controller --help`): csi-controller [--kubeconfig FILE] [--identity NAME] [--namespace NS]
//!   [--csi-endpoint unix:///path|tcp://127.0.0.1:PORT] [--wait-timeout SECONDS]
//!   [--leak-grace SECONDS] [--leak-interval SECONDS] [--no-leak-collector]
//!   [--http-address HOST:PORT] [--log-format text|json]
//!
//! Ready (`/readyz`) once the lease state is known (leading or standing by)
//! and while the Kubernetes API answers.

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use csi_contract::process::{init_logging, run_main, CommonArgs};
use csi_controller::collector::Collector;
use csi_controller::controller::ControllerService;
use csi_controller::identity::IdentityService;
use csi_controller::leader::LeaderElector;
use csi_controller::serve::{serve, Endpoint};
use csi_controller::Allocator;
use tracing::{info, warn};

const LEASE: &str = "thin-csi-controller";
const LEASE_DURATION: Duration = Duration::from_secs(15);

#[derive(Parser, Debug)]
#[command(name = "csi-controller", version, about = "thin-csi controller: allocation for every pool, CSI Identity and Controller")]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
    /// This replica's name in the controller Lease (default: csi-controller-<pid>).
    #[arg(long)]
    identity: Option<String>,
    /// The namespace of the controller Lease.
    #[arg(long, default_value = "default")]
    namespace: String,
    /// Where to serve CSI: unix:///PATH or tcp://HOST:PORT.
    #[arg(long, value_parser = Endpoint::parse)]
    csi_endpoint: Option<Endpoint>,
    /// How long a request waits for the node to finish its transaction.
    #[arg(long, value_name = "SECONDS", default_value_t = 120)]
    wait_timeout: u64,
    /// How long a thin device must stay named by no object before the leak
    /// collector deletes it (and how long a tombstone no waiter needs, or an
    /// object whose device is gone, waits before it is pruned or reported).
    /// At least --wait-timeout: a live request creates its object or gives
    /// its device back within that.
    #[arg(long, value_name = "SECONDS", default_value_t = csi_controller::collector::DEFAULT_GRACE.as_secs())]
    leak_grace: u64,
    /// Seconds between the leak collector's passes (capped at --leak-grace).
    #[arg(long, value_name = "SECONDS", default_value_t = 60.0)]
    leak_interval: f64,
    /// Do not run the leak collector.
    #[arg(long)]
    no_leak_collector: bool,
}

async fn run(args: Args) -> Result<(), String> {
    csi_contract::health::condition(csi_controller::leader::LEASE_KNOWN);
    let api = csi_contract::health::condition("kubernetes API reachable");
    if let Some(endpoint) = &args.csi_endpoint {
        endpoint.readiness();
    }
    args.common.start_http(csi_contract::metrics::Role::Controller).await?;
    let client = args.common.client().await?;
    let probe = client.clone();
    tokio::spawn(async move {
        loop {
            let reachable = tokio::time::timeout(Duration::from_secs(5), probe.apiserver_version()).await.is_ok_and(|r| r.is_ok());
            api.set(reachable);
            tokio::time::sleep(Duration::from_secs(10)).await;
        }
    });
    let identity = args.identity.clone().unwrap_or_else(|| format!("csi-controller-{}", std::process::id()));
    let namespace = args.namespace.as_str();
    let endpoint = args.csi_endpoint.clone();
    let wait_timeout = Duration::from_secs(args.wait_timeout);
    if args.leak_grace < args.wait_timeout {
        return Err(format!("--leak-grace ({} s) must be at least --wait-timeout ({} s)", args.leak_grace, args.wait_timeout));
    }
    let leak_interval = Duration::try_from_secs_f64(args.leak_interval).map_err(|e| format!("--leak-interval: {e}"))?;
    let allocator = Allocator::new(client.clone());
    let crds = csi_controller::crds::apply(client.clone(), Duration::from_secs(60)).await.map_err(|e| e.to_string())?;
    info!(?crds, "custom resources registered");
    let (leading_tx, leading_rx) = tokio::sync::watch::channel(false);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = endpoint.map(|endpoint| {
        let identity_svc = IdentityService::new(client.clone(), leading_rx.clone());
        let controller = ControllerService::new(client.clone(), allocator.clone(), leading_rx.clone(), wait_timeout);
        tokio::spawn(async move { serve(&endpoint, identity_svc, controller, async { let _ = stop_rx.await; }).await })
    });
    let mut leading = LeaderElector::new(client.clone(), namespace, LEASE, &identity, LEASE_DURATION).lead().await;
    let _ = leading_tx.send(true);
    // Leader only: this process exits when it loses the lease.
    let _collector = (!args.no_leak_collector).then(|| {
        let collector = Collector::new(client, allocator, Duration::from_secs(args.leak_grace), leak_interval, &identity);
        tokio::spawn(collector.run())
    });
    println!("csi-controller {identity}: leading");
    let served = async {
        match server {
            Some(task) => task.await.map_err(|e| e.to_string()).and_then(|r| r),
            None => std::future::pending().await,
        }
    };
    let result = tokio::select! {
        r = served => r.and_then(|()| Err("the CSI server stopped".to_string())),
        _ = leading.wait_for(|l| !*l) => Err("lost the controller lease; exiting so a standby takes over".into()),
        _ = tokio::signal::ctrl_c() => {
            warn!("interrupted");
            Ok(())
        }
    };
    let _ = leading_tx.send(false);
    let _ = stop_tx.send(());
    result
}

fn main() -> ExitCode {
    let args = Args::parse();
    init_logging(args.common.log_format);
    run_main("csi-controller", run(args))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn arguments() {
        Args::command().debug_assert();
        let a = Args::try_parse_from(["csi-controller", "--kubeconfig", "/k", "--csi-endpoint", "tcp://127.0.0.1:9", "--wait-timeout", "5"]).unwrap();
        assert_eq!(a.csi_endpoint, Some(Endpoint::Tcp("127.0.0.1:9".into())));
        assert_eq!((a.wait_timeout, a.namespace.as_str()), (5, "default"));
        assert!(Args::try_parse_from(["csi-controller", "--csi-endpoint", "/no/scheme"]).is_err());
        assert!(Args::try_parse_from(["csi-controller", "--wait-timeout", "soon"]).is_err());
        let a = Args::try_parse_from(["csi-controller", "--leak-grace", "30", "--leak-interval", "0.5"]).unwrap();
        assert_eq!((a.leak_grace, a.leak_interval, a.no_leak_collector), (30, 0.5, false));
    }
}
