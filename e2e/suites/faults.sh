#!/usr/bin/env bash
# faults: the exhaustive fault search of the protocol (e2e/faults, no VM, no
# cluster). Each pass R:N:F explores every scenario of up to N CSI requests
# with R controller replicas and every interleaving of up to F faults per
# path. Prints one PASS/FAIL line per scenario (a FAIL carries the path that
# broke an invariant) and `FAULTS: explored N paths, M states, V violations`;
# then checks that the search still finds defects put back on purpose.
# CI: one replica, 2 requests, 2 faults; two replicas, 1 request, 2 faults
# and 2 requests, 1 fault; one replica, 3 requests, no fault (~0.69 M
# states, ~17 s of CPU). FAULTS_WIDE=1 (= e2e/run
# faults-wide): 3 requests with 1 fault, 4 requests with 0 and then 1 fault,
# two replicas at 3 requests with 1 fault, within FAULTS_TIME_BUDGET seconds
# (default 1500; scenarios not started by then are listed and fail the run).
# FAULTS_PASSES="R:N:F ..." sets the passes by hand.
set -euo pipefail
source "$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/lib.sh"
ensure_build_deps
suite=faults
default="1:2:2 2:1:2 2:2:1 1:3:0"
extra=()
if [[ ${FAULTS_WIDE:-0} == 1 ]]; then
	suite=faults-wide
	default="1:3:1 1:4:0 2:3:1 1:4:1"
	extra=(--time-budget "${FAULTS_TIME_BUDGET:-1500}" --max-states "${FAULTS_MAX_STATES:-6000000}")
fi
(cd "$REPO" && cargo build --release -q -p thin-faults) || { echo "FAIL $suite: cargo build of thin-faults failed"; echo "$suite: 0 passed, 1 failed"; exit 1; }
bin="$CARGO_TARGET_DIR/release/thin-faults"
log=$(mktemp)
trap 'rm -f "$log" "$log".m' EXIT
passes=()
for p in ${FAULTS_PASSES:-$default}; do passes+=(--pass "$p"); done
rc=0
"$bin" "${passes[@]}" "${extra[@]}" >"$log" 2>&1 || rc=$?
grep -v '^faults: ' "$log" || true
[[ $rc -eq 0 ]] || grep -q '^FAIL ' "$log" || echo "FAIL thin-faults exited $rc without a verdict" | tee -a "$log"
# The search can fail: each defect put back (thin_faults::Mutation) is found
# by a small search, which must exit non-zero with that violation.
mutant() {
	local name=$1 expect=$2 r=0
	shift 2
	"$bin" --mutate "$name" "$@" >"$log.m" 2>&1 || r=$?
	if [[ $r -ne 0 ]] && grep -q "^FAIL .*$expect" "$log.m"; then
		echo "PASS $suite: the search finds $name put back ($(grep -o '[0-9]* violations' "$log.m"))" | tee -a "$log"
	else
		echo "FAIL $suite: the search missed $name put back (exit $r): $(grep '^FAULTS' "$log.m")" | tee -a "$log"
	fi
}
open_delete='[Create, DeleteOpen { of: 0 }]'
mutant plain-status-patch "left fields it meant to clear" --pass 1:2:1 --only "$open_delete"
mutant abort-reported-committed "aborted but is reported committed" --pass 1:2:1 --only "$open_delete"
mutant record-not-marked "cursor" --pass 1:1:2 --only "[Create]"
mutant aborted-delete-succeeds "succeeded but device" --pass 1:2:0 --only "$open_delete"
summarize "$suite" "$log"
