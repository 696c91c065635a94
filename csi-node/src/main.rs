//! csi-node: the only process that touches the pool. It runs the
//! transaction executor for one pool and, with `--csi-endpoint`, serves
//! CSI Identity and Node on the same pool.
//!
//! usage (`csi-node --help`): csi-node --node-name NODE --pool-device DEVICE [--pool-name NAME]
//!   [--kubeconfig FILE] [--test-hooks true] [--csi-endpoint unix:///PATH[,tcp://HOST:PORT]] [--max-volumes N]
//!   [--http-address HOST:PORT] [--log-format text|json]
//!   [--plugin-registration-socket PATH | --no-plugin-registration] [--kubelet-csi-socket PATH]
//!
//! With a unix CSI endpoint it registers itself with the kubelet
//! ([`csi_node::registration`]): no node-driver-registrar sidecar.
//! or csi-node --list-devices DEVICE   (prints `DEVICES <id>...` for the pool on DEVICE)

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Parser;
use csi_contract::process::{init_logging, run_main, CommonArgs};
use csi_node::registration::RegistrationService;
use csi_node::identity::IdentityService;
use csi_node::node::{NodeConfig, NodeService};
use csi_node::pool_executor::PoolExecutor;
use csi_node::serve::{serve, Endpoint};
use thinpool::layout::Contents;
use thinpool::{PoolName, Sectors};
use thinpool_dm::DmPool;
use tracing::info;

#[derive(Parser, Debug)]
#[command(name = "csi-node", version, about = "thin-csi node plugin: runs the pool's transactions and serves CSI Identity and Node")]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
    /// This node's name (its Node object).
    #[arg(long, required_unless_present = "list_devices")]
    node_name: Option<String>,
    /// The block device holding the pool (laid out on first use if blank).
    #[arg(long, value_name = "DEVICE", required_unless_present = "list_devices")]
    pool_device: Option<PathBuf>,
    /// The pool's name on this node (device-mapper name part).
    #[arg(long, default_value = "pool0", value_parser = |s: &str| PoolName::new(s).map_err(|e| e.to_string()))]
    pool_name: PoolName,
    /// Where to serve CSI: unix:///PATH and/or tcp://HOST:PORT, comma-separated.
    #[arg(long, value_name = "ENDPOINTS")]
    csi_endpoint: Option<String>,
    /// The most volumes this node reports it can publish (NodeGetInfo).
    #[arg(long, default_value_t = 1000)]
    max_volumes: i64,
    /// Honour the fault-injection annotations on the pool object (test clusters only).
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set)]
    test_hooks: bool,
    /// The kubelet's directory: staging, target and volume paths must
    /// resolve inside it (symbolic links out of it are refused).
    #[arg(long, value_name = "DIR", default_value = "/var/lib/kubelet")]
    kubelet_dir: PathBuf,
    /// Where to serve the kubelet's plugin-registration API (its plugins_registry directory).
    #[arg(long, value_name = "PATH", default_value_os_t = csi_node::registration::default_socket())]
    plugin_registration_socket: PathBuf,
    /// Do not register with the kubelet (no kubelet on this node, or node-driver-registrar does it).
    #[arg(long)]
    no_plugin_registration: bool,
    /// The CSI socket as the kubelet sees it (default: the first unix:// CSI endpoint).
    #[arg(long, value_name = "PATH")]
    kubelet_csi_socket: Option<PathBuf>,
    /// How often the pool's device list (reported for the controller's leak
    /// collector) is read again from the kernel's metadata.
    #[arg(long, value_name = "SECONDS", default_value_t = csi_node::pool_executor::DEFAULT_DEVICE_RESCAN.as_secs())]
    device_rescan: u64,
    /// Print `DEVICES <id>...` for the pool on DEVICE and exit.
    #[arg(long, value_name = "DEVICE", exclusive = true)]
    list_devices: Option<PathBuf>,
}

/// A new pool's UUID.
fn new_uuid() -> [u8; 16] {
    uuid::Uuid::new_v4().into_bytes()
}

/// Finds the pool on its device by header, or lays a new one out on a blank
/// device; a device holding anything else is refused. Sends no message.
fn open_pool(device: &Path, name: &PoolName) -> Result<DmPool, String> {
    match thinpool_dm::probe(device).map_err(|e| e.to_string())? {
        Contents::Pool(_) => DmPool::open_on_device(device).map_err(|e| e.to_string()),
        Contents::Zeros => DmPool::create_on_device(device, name, new_uuid(), Sectors(128)).map_err(|e| e.to_string()),
        Contents::Foreign(what) => Err(format!("{} holds {what}; refusing to use it for a pool", device.display())),
    }
}

async fn run(args: Args) -> Result<(), String> {
    if let Some(device) = &args.list_devices {
        let mut pool = DmPool::open_on_device(device).map_err(|e| e.to_string())?;
        let ids = pool.list_thin_ids().map_err(|e| e.to_string())?;
        let ids: Vec<String> = ids.iter().map(ToString::to_string).collect();
        println!("DEVICES {}", ids.join(" "));
        return Ok(());
    }
    let (Some(node), Some(device)) = (&args.node_name, &args.pool_device) else {
        return Err("--node-name and --pool-device are required".into());
    };
    let endpoints = args.csi_endpoint.as_deref().map(Endpoint::parse_list).transpose()?.unwrap_or_default();
    let registration = registration(&args, &endpoints)?;
    let activated = csi_contract::health::condition("pool activated");
    for endpoint in &endpoints {
        endpoint.readiness();
    }
    if let Some((_, socket)) = &registration {
        Endpoint::Unix(socket.clone()).readiness();
    }
    args.common.start_http(csi_contract::metrics::Role::Node).await?;
    let pool = open_pool(device, &args.pool_name)?;
    let max_volumes = args.max_volumes;
    let client = args.common.client().await?;
    let test_hooks = args.test_hooks;
    let executor = PoolExecutor::register(client.clone(), node, pool).await.map_err(|e| e.to_string())?.with_test_hooks(test_hooks)
        .with_device_rescan(std::time::Duration::from_secs(args.device_rescan));
    info!(node = %node, pool = %executor.object_name(), device = %device.display(), "csi-node serving its pool");
    activated.set(true);
    let mut servers = tokio::task::JoinSet::new();
    if !endpoints.is_empty() {
        let identity = IdentityService::new(client.clone(), executor.kernel(), executor.object_name());
        // The kubelet makes it; a node without one yet (a test VM) gets it empty.
        std::fs::create_dir_all(&args.kubelet_dir).map_err(|e| format!("--kubelet-dir {}: {e}", args.kubelet_dir.display()))?;
        let kubelet_dir = csi_node::fs::KubeletDir::new(&args.kubelet_dir).map_err(|e| format!("--kubelet-dir: {e}"))?;
        let config = NodeConfig { node: node.clone(), pool_object: executor.object_name().to_string(), max_volumes, test_hooks, kubelet_dir };
        let node_svc = NodeService::new(client, executor.kernel(), config);
        for endpoint in endpoints {
            let (identity, node_svc) = (identity.clone(), node_svc.clone());
            servers.spawn(async move { serve(&endpoint, identity, node_svc).await.map_err(|e| format!("{endpoint:?}: {e}")) });
        }
    }
    if let Some((service, socket)) = registration {
        servers.spawn(async move { service.serve(&socket).await.map_err(|e| format!("plugin registration on {}: {e}", socket.display())) });
    }
    println!("csi-node ready: pool {}", executor.object_name());
    tokio::select! {
        r = executor.run() => r.map_err(|e| e.to_string()),
        Some(r) = servers.join_next() => match r {
            Ok(Ok(())) => Err("the CSI server stopped".to_string()),
            Ok(Err(e)) => Err(e),
            Err(e) => Err(format!("the CSI server task: {e}")),
        },
    }
}

/// The kubelet registration service and its socket, unless turned off or
/// there is no unix CSI endpoint to advertise.
fn registration(args: &Args, endpoints: &[Endpoint]) -> Result<Option<(RegistrationService, PathBuf)>, String> {
    if args.no_plugin_registration {
        return Ok(None);
    }
    let first_unix = endpoints.iter().find_map(|e| match e {
        Endpoint::Unix(path) => Some(path.clone()),
        Endpoint::Tcp(_) => None,
    });
    let Some(csi_socket) = args.kubelet_csi_socket.clone().or(first_unix) else {
        info!("no unix CSI endpoint: not registering with the kubelet");
        return Ok(None);
    };
    Ok(Some((RegistrationService::new(&csi_socket)?, args.plugin_registration_socket.clone())))
}

fn main() -> ExitCode {
    let args = Args::parse();
    init_logging(args.common.log_format);
    run_main("csi-node", run(args))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn arguments() {
        Args::command().debug_assert();
        let a = Args::try_parse_from(["csi-node", "--node-name", "n1", "--pool-device", "/dev/vdb", "--test-hooks", "true", "--csi-endpoint", "tcp://0.0.0.0:1"]).unwrap();
        assert_eq!((a.node_name.as_deref(), a.test_hooks, a.max_volumes, a.pool_name.as_str()), (Some("n1"), true, 1000, "pool0"));
        assert!(Args::try_parse_from(["csi-node", "--node-name", "n1"]).is_err(), "--pool-device is required");
        assert!(Args::try_parse_from(["csi-node", "--list-devices", "/dev/vdb"]).is_ok());
        assert!(Args::try_parse_from(["csi-node", "--list-devices", "/dev/vdb", "--node-name", "n"]).is_err());
        assert!(Args::try_parse_from(["csi-node", "--node-name", "n", "--pool-device", "/d", "--pool-name", "Bad_Name"]).is_err());
    }
}
