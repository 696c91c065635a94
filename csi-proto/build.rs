//! Generates the gRPC code from protos taken at build time from their Go
//! modules on the Go module proxy, each pinned to one version. Nothing of
//! either proto is copied into this repo:
//!
//! - `csi.proto` from the CSI spec's module (the CSI services);
//! - `pkg/apis/pluginregistration/v1/api.proto` from `k8s.io/kubelet`
//!   (the kubelet's plugin-registration service, which csi-node serves so
//!   that no node-driver-registrar sidecar is needed).
//!
//! `THIN_CSI_CSI_PROTO=/path/to/csi.proto` and
//! `THIN_CSI_PLUGINREGISTRATION_PROTO=/path/to/api.proto` override the
//! lookups (offline builds).

use std::path::PathBuf;
use std::process::Command;

const SPEC_MODULE: &str = "github.com/container-storage-interface/spec";
const SPEC_VERSION: &str = "v1.14.0";
/// The kubelet staging module of Kubernetes 1.36.3 (e2e/cluster/versions.env).
const KUBELET_MODULE: &str = "k8s.io/kubelet";
const KUBELET_VERSION: &str = "v0.36.3";

/// `file` inside `module@version`, from the Go module cache (filled from
/// GOPROXY by `go mod download`, which needs no go.mod), unless `env` names it.
fn module_file(env: &str, module: &str, version: &str, file: &str) -> PathBuf {
    println!("cargo:rerun-if-env-changed={env}");
    if let Some(path) = std::env::var_os(env) {
        return PathBuf::from(path);
    }
    let module = format!("{module}@{version}");
    let out = Command::new("go")
        .args(["mod", "download", "-json", &module])
        .env("GOFLAGS", "-mod=mod")
        .output()
        .unwrap_or_else(|e| panic!("running `go mod download {module}` (Go is needed to fetch {file}): {e}"));
    let json = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "`go mod download -json {module}` failed: {json}{}", String::from_utf8_lossy(&out.stderr));
    // The one field we need: "Dir": "/root/go/pkg/mod/github.com/...@v1.14.0"
    let dir = json
        .split("\"Dir\":")
        .nth(1)
        .and_then(|rest| rest.split('"').nth(1))
        .unwrap_or_else(|| panic!("no Dir in `go mod download -json` output: {json}"));
    PathBuf::from(dir).join(file)
}

fn compile(proto: PathBuf) {
    assert!(proto.is_file(), "{} is missing", proto.display());
    println!("cargo:rerun-if-changed={}", proto.display());
    let include = proto.parent().expect("a proto has a directory").to_path_buf();
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_protos(&[proto.clone()], &[include, PathBuf::from("/usr/include")])
        .unwrap_or_else(|e| panic!("compiling {} (protoc from Debian's protobuf-compiler and libprotobuf-dev is needed): {e}", proto.display()));
}

fn main() {
    compile(module_file("THIN_CSI_CSI_PROTO", SPEC_MODULE, SPEC_VERSION, "csi.proto"));
    compile(module_file("THIN_CSI_PLUGINREGISTRATION_PROTO", KUBELET_MODULE, KUBELET_VERSION, "pkg/apis/pluginregistration/v1/api.proto"));
}
