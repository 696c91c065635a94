//! Registering with the kubelet ourselves, so no node-driver-registrar
//! sidecar is needed: the kubelet's plugin watcher finds a socket in its
//! `plugins_registry` directory, calls `GetInfo` there (which names our CSI
//! endpoint as the kubelet sees it), connects to that endpoint (NodeGetInfo
//! → the CSINode object), and reports the result with
//! `NotifyRegistrationStatus`.
//!
//! Removing the socket unregisters the plugin; a stale socket left by an
//! earlier run is replaced on start (`csi_contract::endpoint`).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use csi_proto::pluginregistration::registration_server::{Registration, RegistrationServer};
use csi_proto::pluginregistration::{InfoRequest, PluginInfo, RegistrationStatus, RegistrationStatusResponse};
use tonic::{Request, Response, Status};
use tracing::{error, info};

/// The plugin type the kubelet's CSI handler takes (`CSIPlugin`).
pub const PLUGIN_TYPE: &str = "CSIPlugin";
/// The CSI versions this plugin speaks, as the kubelet's CSI handler expects them.
pub const SUPPORTED_VERSIONS: &[&str] = &["1.0.0"];

/// `/var/lib/kubelet/plugins_registry/<driver>-reg.sock`: where the kubelet looks.
pub fn default_socket() -> PathBuf {
    PathBuf::from(format!("/var/lib/kubelet/plugins_registry/{}-reg.sock", csi_contract::plugin::DRIVER_NAME))
}

/// What the kubelet last told us: `None` until it called.
pub type Outcome = Arc<Mutex<Option<Result<(), String>>>>;

#[derive(Clone)]
pub struct RegistrationService {
    endpoint: String,
    outcome: Outcome,
}

impl RegistrationService {
    /// `csi_socket` is the CSI endpoint's path as the kubelet sees it.
    pub fn new(csi_socket: &Path) -> Result<Self, String> {
        if !csi_socket.is_absolute() {
            return Err(format!("{}: the CSI socket advertised to the kubelet must be an absolute path", csi_socket.display()));
        }
        Ok(RegistrationService { endpoint: csi_socket.display().to_string(), outcome: Outcome::default() })
    }

    /// What the kubelet reported, shared with whoever wants to know.
    pub fn outcome(&self) -> Outcome {
        self.outcome.clone()
    }

    /// Serves the registration API on the unix socket `path` until the server
    /// fails. Every connection goes through `authority::relay`: the kubelet's
    /// `:authority` there is one h2 refuses.
    pub async fn serve(self, path: &Path) -> Result<(), String> {
        let router = csi_contract::endpoint::server().add_service(RegistrationServer::new(self));
        csi_contract::endpoint::prepare_unix_socket(path)?;
        let listener = tokio::net::UnixListener::bind(path).map_err(|e| format!("binding {}: {e}", path.display()))?;
        info!(socket = %path.display(), "serving gRPC");
        let ready = csi_contract::endpoint::Endpoint::Unix(path.to_path_buf()).readiness();
        ready.set(true);
        let incoming = futures::stream::unfold(listener, |listener| async move {
            let next = listener.accept().await.map(|(stream, _)| crate::authority::relay(stream));
            Some((next, listener))
        });
        let result = router.serve_with_incoming(incoming).await.map_err(|e| e.to_string());
        ready.set(false);
        result
    }
}

#[tonic::async_trait]
impl Registration for RegistrationService {
    async fn get_info(&self, _: Request<InfoRequest>) -> Result<Response<PluginInfo>, Status> {
        Ok(Response::new(PluginInfo {
            r#type: PLUGIN_TYPE.into(),
            name: csi_contract::plugin::DRIVER_NAME.into(),
            endpoint: self.endpoint.clone(),
            supported_versions: SUPPORTED_VERSIONS.iter().map(|v| v.to_string()).collect(),
        }))
    }

    async fn notify_registration_status(&self, request: Request<RegistrationStatus>) -> Result<Response<RegistrationStatusResponse>, Status> {
        let status = request.into_inner();
        let outcome = if status.plugin_registered {
            info!(endpoint = %self.endpoint, "registered with the kubelet");
            Ok(())
        } else {
            error!(error = %status.error, "the kubelet refused the registration");
            Err(status.error)
        };
        *self.outcome.lock().unwrap_or_else(|p| p.into_inner()) = Some(outcome);
        Ok(Response::new(RegistrationStatusResponse {}))
    }
}
