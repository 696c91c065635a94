//! What both binaries do before and around their own work: the command-line
//! options they share, logging, the Kubernetes client, and turning the
//! outcome into an exit status.

use std::future::Future;
use std::net::SocketAddr;
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
    /// Serve /healthz, /readyz and /metrics over HTTP here (e.g. 0.0.0.0:9808).
    #[arg(long, value_name = "HOST:PORT")]
    pub http_address: Option<SocketAddr>,
    /// Log lines as plain text or as one JSON object each.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

impl CommonArgs {
    /// The Kubernetes client ([`thin_csi_api::client::connect`]: TCP_NODELAY).
    /// Registers `role`'s metrics and, with `--http-address`, serves
    /// /healthz, /readyz and /metrics ([`crate::health`]). Register the
    /// readiness conditions before calling this.
    pub async fn start_http(&self, role: crate::metrics::Role) -> Result<(), String> {
        crate::metrics::init(role);
        if let Some(addr) = self.http_address {
            crate::health::serve_http(addr).await?;
        }
        Ok(())
    }

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
/// the info lines: a warning alone hides what led to it); `json`: one
/// object per line with the event's fields and its spans.
pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(false);
    match format {
        LogFormat::Text => fmt.init(),
        LogFormat::Json => fmt.json().init(),
    }
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
