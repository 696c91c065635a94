//! csi-node: the only process that touches the pool. It runs the
//! transaction executor for one pool and, with `--csi-endpoint`, serves
//! CSI Identity and Node on the same pool.
//!
//! usage: csi-node --node-name NODE --pool-device DEVICE [--pool-name NAME] [--kubeconfig FILE] [--test-hooks true]
//!                 [--csi-endpoint unix:///PATH[,tcp://HOST:PORT]] [--max-volumes N]
//!        csi-node --list-devices DEVICE   (prints `DEVICES <id>...` for the pool on DEVICE)

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use csi_node::identity::IdentityService;
use csi_node::node::{NodeConfig, NodeService};
use csi_node::pool_executor::PoolExecutor;
use csi_node::serve::{serve, Endpoint};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use thinpool::layout::Contents;
use thinpool::{PoolName, Sectors};
use thinpool_dm::DmPool;
use tracing::{error, info};

fn parse(args: &[String]) -> Result<BTreeMap<String, String>, String> {
    let mut map = BTreeMap::new();
    let mut it = args.iter();
    while let Some(key) = it.next() {
        let key = key.strip_prefix("--").ok_or_else(|| format!("expected --option, got {key:?}"))?;
        let value = it.next().ok_or_else(|| format!("--{key} needs a value"))?;
        map.insert(key.to_string(), value.clone());
    }
    Ok(map)
}

/// A new pool's UUID: random bytes from the kernel.
fn new_uuid() -> Result<[u8; 16], String> {
    let bytes = std::fs::read("/proc/sys/kernel/random/uuid").map_err(|e| format!("reading a random uuid: {e}"))?;
    let hex: String = String::from_utf8_lossy(&bytes).chars().filter(char::is_ascii_hexdigit).collect();
    let mut uuid = [0u8; 16];
    for (i, b) in uuid.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|e| e.to_string())?;
    }
    Ok(uuid)
}

/// Finds the pool on its device by header, or lays a new one out on a blank
/// device; a device holding anything else is refused. Sends no message.
fn open_pool(device: &PathBuf, name: &PoolName) -> Result<DmPool, String> {
    match thinpool_dm::probe(device).map_err(|e| e.to_string())? {
        Contents::Pool(_) => DmPool::open_on_device(device).map_err(|e| e.to_string()),
        Contents::Zeros => DmPool::create_on_device(device, name, new_uuid()?, Sectors(128)).map_err(|e| e.to_string()),
        Contents::Foreign(what) => Err(format!("{} holds {what}; refusing to use it for a pool", device.display())),
    }
}

async fn client(kubeconfig: Option<&String>) -> Result<Client, String> {
    let config = match kubeconfig {
        Some(path) => {
            let kc = Kubeconfig::read_from(path).map_err(|e| format!("reading {path}: {e}"))?;
            Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await.map_err(|e| e.to_string())?
        }
        None => Config::infer().await.map_err(|e| e.to_string())?,
    };
    thin_csi_api::client::connect(config).map_err(|e| e.to_string())
}

async fn run(args: BTreeMap<String, String>) -> Result<(), String> {
    if let Some(device) = args.get("list-devices") {
        let mut pool = DmPool::open_on_device(std::path::Path::new(device)).map_err(|e| e.to_string())?;
        let ids = pool.list_thin_ids().map_err(|e| e.to_string())?;
        let ids: Vec<String> = ids.iter().map(ToString::to_string).collect();
        println!("DEVICES {}", ids.join(" "));
        return Ok(());
    }
    let node = args.get("node-name").ok_or("--node-name is required")?;
    let device = PathBuf::from(args.get("pool-device").ok_or("--pool-device is required")?);
    let name = PoolName::new(args.get("pool-name").map_or("pool0", String::as_str)).map_err(|e| e.to_string())?;
    let pool = open_pool(&device, &name)?;
    let endpoints = args.get("csi-endpoint").map(|e| Endpoint::parse_list(e)).transpose()?.unwrap_or_default();
    let max_volumes: i64 = args.get("max-volumes").map_or(Ok(1000), |v| v.parse()).map_err(|e| format!("--max-volumes: {e}"))?;
    let client = client(args.get("kubeconfig")).await?;
    let test_hooks = args.get("test-hooks").is_some_and(|v| v == "true");
    let executor = PoolExecutor::register(client.clone(), node, pool).await.map_err(|e| e.to_string())?.with_test_hooks(test_hooks);
    info!(node = %node, pool = %executor.object_name(), device = %device.display(), "csi-node serving its pool");
    let mut servers = tokio::task::JoinSet::new();
    if !endpoints.is_empty() {
        let identity = IdentityService::new(client.clone(), executor.kernel(), executor.object_name());
        let config = NodeConfig { node: node.clone(), pool_object: executor.object_name().to_string(), max_volumes, test_hooks };
        let node_svc = NodeService::new(client, executor.kernel(), config);
        for endpoint in endpoints {
            let (identity, node_svc) = (identity.clone(), node_svc.clone());
            servers.spawn(async move { serve(&endpoint, identity, node_svc).await.map_err(|e| format!("{endpoint:?}: {e}")) });
        }
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

fn main() -> ExitCode {
    tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"))).with_writer(std::io::stderr).with_ansi(false).init();
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let args = match parse(&argv) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("csi-node: {e}\nusage: csi-node --node-name NODE --pool-device DEVICE [--pool-name NAME] [--kubeconfig FILE] [--csi-endpoint unix:///PATH[,tcp://HOST:PORT]] [--max-volumes N]");
            return ExitCode::from(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!(error = %e, "csi-node stopped");
            eprintln!("csi-node: {e}");
            ExitCode::FAILURE
        }
    }
}
