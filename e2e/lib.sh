# shellcheck shell=bash
# Shared by e2e/run and the suites: the cache, host packages, the cargo build.
set -euo pipefail
E2E=${E2E:-$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)}
REPO=$(cd "$E2E/.." && pwd)
source "$E2E/vm/lib.sh"
export THIN_CSI_CACHE

# Build dependencies of the workspace (devicemapper-sys runs bindgen).
BUILD_PACKAGES=(libdevmapper-dev libclang-dev pkg-config protobuf-compiler libprotobuf-dev)

# The cargo target lives in the cache, keyed by the toolchain, so a clean
# checkout rebuilds only what changed.
rust_key() { rustc --version | tr -c 'a-zA-Z0-9.\n' '-' | head -c 60; }
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$THIN_CSI_CACHE/cargo-target/$(rust_key)}

ensure_build_deps() { vm_need_packages "${BUILD_PACKAGES[@]}"; }

# Builds the VM test binary (release) and prints its path.
build_vmtest() {
	ensure_build_deps
	(cd "$REPO" && cargo build --release -q -p thin-vmtest >&2) || { echo "cargo build of thin-vmtest failed" >&2; return 1; }
	echo "$CARGO_TARGET_DIR/release/thin-vmtest"
}

# Counts PASS/FAIL lines of a log and prints the suite summary line.
# usage: summarize SUITE LOG [extra_passed extra_failed]
summarize() {
	local suite=$1 log=$2 p f
	p=$(grep -c '^PASS ' "$log" || true)
	f=$(grep -c '^FAIL ' "$log" || true)
	p=$((p + ${3:-0})); f=$((f + ${4:-0}))
	if [[ $((p + f)) -eq 0 ]]; then f=1; echo "FAIL $suite: no test ran"; fi
	echo "$suite: $p passed, $f failed"
	[[ $f -eq 0 ]]
}
