//! csi-controller: registers the custom resources, takes the controller
//! Lease (one active replica; others stand by) and, while leading, owns
//! allocation for every pool. With `--csi-endpoint` it serves CSI Identity
//! and Controller there from the start: Probe is not ready and Controller
//! calls are UNAVAILABLE until this replica leads.
//!
//! usage: csi-controller [--kubeconfig FILE] [--identity NAME] [--namespace NS]
//!                       [--csi-endpoint unix:///path|tcp://127.0.0.1:PORT] [--wait-timeout SECONDS]

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Duration;

use csi_controller::controller::ControllerService;
use csi_controller::identity::IdentityService;
use csi_controller::leader::LeaderElector;
use csi_controller::serve::{serve, Endpoint};
use csi_controller::Allocator;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::Config;
use tracing::{error, info, warn};

const LEASE: &str = "thin-csi-controller";
const LEASE_DURATION: Duration = Duration::from_secs(15);

fn parse(args: &[String]) -> Result<BTreeMap<String, String>, String> {
    let mut map = BTreeMap::new();
    let mut it = args.iter();
    while let Some(key) = it.next() {
        let key = key.strip_prefix("--").ok_or_else(|| format!("expected --option, got {key:?}"))?;
        map.insert(key.to_string(), it.next().ok_or_else(|| format!("--{key} needs a value"))?.clone());
    }
    Ok(map)
}

async fn run(args: BTreeMap<String, String>) -> Result<(), String> {
    let config = match args.get("kubeconfig") {
        Some(path) => {
            let kc = Kubeconfig::read_from(path).map_err(|e| format!("reading {path}: {e}"))?;
            Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await.map_err(|e| e.to_string())?
        }
        None => Config::infer().await.map_err(|e| e.to_string())?,
    };
    let client = thin_csi_api::client::connect(config).map_err(|e| e.to_string())?;
    let identity = args.get("identity").cloned().unwrap_or_else(|| format!("csi-controller-{}", std::process::id()));
    let namespace = args.get("namespace").map_or("default", String::as_str);
    let endpoint = args.get("csi-endpoint").map(|e| Endpoint::parse(e)).transpose()?;
    let wait_timeout = match args.get("wait-timeout") {
        Some(s) => Duration::from_secs(s.parse().map_err(|_| format!("--wait-timeout {s:?}: not a number of seconds"))?),
        None => Duration::from_secs(120),
    };
    let crds = csi_controller::crds::apply(client.clone(), Duration::from_secs(60)).await.map_err(|e| e.to_string())?;
    info!(?crds, "custom resources registered");
    let (leading_tx, leading_rx) = tokio::sync::watch::channel(false);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = endpoint.map(|endpoint| {
        let identity_svc = IdentityService::new(client.clone(), leading_rx.clone());
        let controller = ControllerService::new(client.clone(), Allocator::new(client.clone()), leading_rx.clone(), wait_timeout);
        tokio::spawn(async move { serve(&endpoint, identity_svc, controller, async { let _ = stop_rx.await; }).await })
    });
    let mut leading = LeaderElector::new(client, namespace, LEASE, &identity, LEASE_DURATION).lead().await;
    let _ = leading_tx.send(true);
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
    tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"))).with_writer(std::io::stderr).init();
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let args = match parse(&argv) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("csi-controller: {e}\nusage: csi-controller [--kubeconfig FILE] [--identity NAME] [--namespace NS] [--csi-endpoint unix:///PATH|tcp://HOST:PORT] [--wait-timeout SECONDS]");
            return ExitCode::from(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!(error = %e, "csi-controller stopped");
            eprintln!("csi-controller: {e}");
            ExitCode::FAILURE
        }
    }
}
