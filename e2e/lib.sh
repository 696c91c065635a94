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

# The number of checks a suite expects to run, from e2e/expected-checks.
expected_checks() { awk -v s="$1" '$1 == s { print $2; exit }' "$E2E/expected-checks"; }

# Counts PASS/FAIL lines of a log and prints the suite summary line. Only
# PASS/FAIL lines count; progress lines (`--- ...`, `ok ...`, BENCH) do not.
# A suite that ran fewer checks than e2e/expected-checks says fails.
# usage: summarize SUITE LOG [extra_passed extra_failed]
summarize() {
	local suite=$1 log=$2 p f want
	p=$(grep -c '^PASS ' "$log" || true)
	f=$(grep -c '^FAIL ' "$log" || true)
	p=$((p + ${3:-0})); f=$((f + ${4:-0}))
	want=$(expected_checks "$suite")
	if [[ -z $want ]]; then
		f=$((f + 1)); echo "FAIL $suite: no expected count in e2e/expected-checks"
	elif [[ $((p + f)) -lt $want ]]; then
		echo "FAIL $suite: expected $want checks, only $((p + f)) ran"; f=$((f + 1))
	fi
	echo "$suite: $p passed, $f failed"
	[[ $f -eq 0 ]]
}

# The pool's devices as the node VM whose console is LOGFILE listed them
# after its csi-node stopped (`DEVICES <id>...`, the last such line), or
# nothing when it listed none.
# usage: listed_devices LOGFILE
listed_devices() {
	grep -a '^DEVICES' "$1" | tail -1 || true
}

# Runs a test program whose PASS/FAIL lines go to stdout (and to LOG); a
# non-zero exit that printed no FAIL line of its own (a crash, a kill, a
# panic without the hook) becomes `FAIL NAME exited N`. Returns 0.
# usage: checked LOG NAME CMD...   (stderr goes where the caller's goes)
checked() {
	local log=$1 name=$2 out rc=0
	shift 2
	out=$(mktemp)
	"$@" >"$out" || rc=$?
	tee -a "$log" <"$out"
	if [[ $rc -ne 0 ]] && ! grep -q '^FAIL ' "$out"; then
		echo "FAIL $name exited $rc" | tee -a "$log"
	fi
	rm -f "$out"
	return 0
}
