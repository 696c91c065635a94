#!/usr/bin/env bash
# faults: the exhaustive fault search of the protocol (e2e/faults, no VM, no
# cluster). Every scenario of up to FAULTS_LEN CSI requests, every
# interleaving of up to FAULTS_BUDGET faults per path, one and two replicas.
# Prints one PASS/FAIL line per scenario (a FAIL carries the path that broke
# an invariant) and `FAULTS: explored N paths, M states, V violations`.
set -euo pipefail
source "$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/lib.sh"
ensure_build_deps
(cd "$REPO" && cargo build --release -q -p thin-faults) || { echo "FAIL faults: cargo build of thin-faults failed"; echo "faults: 0 passed, 1 failed"; exit 1; }
log=$(mktemp)
trap 'rm -f "$log"' EXIT
rc=0
"$CARGO_TARGET_DIR/release/thin-faults" --len "${FAULTS_LEN:-2}" --replica-len "${FAULTS_REPLICA_LEN:-1}" --faults "${FAULTS_BUDGET:-2}" >"$log" 2>&1 || rc=$?
grep -v '^faults: ' "$log" || true
[[ $rc -eq 0 ]] || grep -q '^FAIL ' "$log" || echo "FAIL thin-faults exited $rc without a verdict" >>"$log"
summarize faults "$log"
