//! Where a CSI server listens: `unix:///path` or `tcp://host:port`.

use std::path::{Path, PathBuf};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Unix(PathBuf),
    Tcp(String),
}

impl Endpoint {
    pub fn parse(s: &str) -> Result<Self, String> {
        if let Some(path) = s.strip_prefix("unix://") {
            if path.is_empty() {
                return Err(format!("{s}: no socket path"));
            }
            Ok(Endpoint::Unix(PathBuf::from(path)))
        } else if let Some(addr) = s.strip_prefix("tcp://") {
            if addr.is_empty() {
                return Err(format!("{s}: no address"));
            }
            Ok(Endpoint::Tcp(addr.to_string()))
        } else {
            Err(format!("{s}: expected unix:///path or tcp://host:port"))
        }
    }

    /// A comma-separated list: `unix:///run/csi/csi.sock,tcp://0.0.0.0:10000`.
    pub fn parse_list(s: &str) -> Result<Vec<Self>, String> {
        s.split(',').filter(|e| !e.trim().is_empty()).map(|e| Endpoint::parse(e.trim())).collect()
    }
}

/// Makes a unix socket path ready to bind: its directory exists and a socket
/// left by an earlier run of the server is gone.
pub fn prepare_unix_socket(path: &Path) -> Result<(), String> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("removing stale socket {}: {e}", path.display())),
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    }
    Ok(())
}
