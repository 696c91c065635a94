//! Generates the CSI gRPC code from the spec's own csi.proto, fetched at
//! build time from the Go module proxy (the spec's Go module carries it),
//! pinned to one version. Nothing of the spec is copied into this repo.
//!
//! `THIN_CSI_CSI_PROTO=/path/to/csi.proto` overrides the lookup (offline builds).

use std::path::PathBuf;
use std::process::Command;

const SPEC_MODULE: &str = "github.com/container-storage-interface/spec";
const SPEC_VERSION: &str = "v1.12.0";

fn locate_proto() -> PathBuf {
    println!("cargo:rerun-if-env-changed=THIN_CSI_CSI_PROTO");
    if let Some(path) = std::env::var_os("THIN_CSI_CSI_PROTO") {
        return PathBuf::from(path);
    }
    let module = format!("{SPEC_MODULE}@{SPEC_VERSION}");
    // `go mod download` needs no go.mod; it fills the module cache from GOPROXY.
    let out = Command::new("go")
        .args(["mod", "download", "-json", &module])
        .env("GOFLAGS", "-mod=mod")
        .output()
        .unwrap_or_else(|e| panic!("running `go mod download {module}` (Go is needed to fetch csi.proto): {e}"));
    let json = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "`go mod download -json {module}` failed: {json}{}", String::from_utf8_lossy(&out.stderr));
    // The one field we need: "Dir": "/root/go/pkg/mod/github.com/...@v1.12.0"
    let dir = json
        .split("\"Dir\":")
        .nth(1)
        .and_then(|rest| rest.split('"').nth(1))
        .unwrap_or_else(|| panic!("no Dir in `go mod download -json` output: {json}"));
    PathBuf::from(dir).join("csi.proto")
}

fn main() {
    let proto = locate_proto();
    assert!(proto.is_file(), "{} is missing", proto.display());
    println!("cargo:rerun-if-changed={}", proto.display());
    let include = proto.parent().expect("csi.proto has a directory").to_path_buf();
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_protos(&[proto], &[include, PathBuf::from("/usr/include")])
        .unwrap_or_else(|e| panic!("compiling csi.proto (protoc from Debian's protobuf-compiler and libprotobuf-dev is needed): {e}"));
}
