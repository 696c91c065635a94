//! What both binaries do before and around their own work: the command-line
//! options they share, logging, the Kubernetes client, and turning the
//! outcome into an exit status.

use std::future::Future;
use std::path::PathBuf;
use std::process::ExitCode;

use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

/// The options every binary takes (flattened into each one's clap parser).
#[derive(Clone, Debug, clap::Args)]
pub struct CommonArgs {
    /// A kubeconfig file; without it, the in-cluster config or $KUBECONFIG.
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
}

impl CommonArgs {
    /// The Kubernetes client ([`thin_csi_api::client::connect`]: TCP_NODELAY).
    pub async fn client(&self) -> Result<Client, String> {
        let config = match &self.kubeconfig {
            Some(path) => {
                let kc = Kubeconfig::read_from(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
                Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await.map_err(|e| e.to_string())?
            }
            None => Config::infer().await.map_err(|e| e.to_string())?,
        };
        thin_csi_api::client::connect(config).map_err(|e| e.to_string())
    }
}

/// Logs to stderr, `info` unless RUST_LOG says otherwise (the suites read
/// the info lines: a warning alone hides what led to it).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(false).init();
}

/// Runs a binary's work on a multi-threaded runtime; an error is logged and
/// printed, and the exit status says which it was.
pub fn run_main<F: Future<Output = Result<(), String>>>(program: &str, work: F) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{program}: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(work) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "{program} stopped");
            eprintln!("{program}: {e}");
            ExitCode::FAILURE
        }
    }
}
