//! csi-controller: registers the custom resources, takes the controller
//! Lease (one active replica; others stand by) and, while leading, owns
//! allocation for every pool. The CSI Controller service is served here
//! once it lands; today the binary registers, leads and waits.
//!
//! usage: csi-controller [--kubeconfig FILE] [--identity NAME] [--namespace NS]

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Duration;

use csi_controller::leader::LeaderElector;
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
    let crds = csi_controller::crds::apply(client.clone(), Duration::from_secs(60)).await.map_err(|e| e.to_string())?;
    info!(?crds, "custom resources registered");
    let mut leading = LeaderElector::new(client, namespace, LEASE, &identity, LEASE_DURATION).lead().await;
    println!("csi-controller {identity}: leading");
    tokio::select! {
        _ = leading.wait_for(|l| !*l) => Err("lost the controller lease; exiting so a standby takes over".into()),
        _ = tokio::signal::ctrl_c() => {
            warn!("interrupted");
            Ok(())
        }
    }
}

fn main() -> ExitCode {
    tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::from_default_env()).with_writer(std::io::stderr).init();
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let args = match parse(&argv) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("csi-controller: {e}\nusage: csi-controller [--kubeconfig FILE] [--identity NAME] [--namespace NS]");
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
