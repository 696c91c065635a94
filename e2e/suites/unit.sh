#!/usr/bin/env bash
# unit: cargo test --workspace (pure logic, the kernel model, property tests).
# --no-fail-fast: a failing or crashing test binary does not hide the others;
# a crash (no "test result" line) still fails through cargo's exit status and
# the minimum count in e2e/expected-checks.
set -euo pipefail
source "$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/lib.sh"
ensure_build_deps
log=$(mktemp)
rc=0
(cd "$REPO" && cargo test --workspace --no-fail-fast 2>&1) | tee "$log" || rc=$?
read -r passed failed < <(awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } } END { print p+0, f+0 }' "$log")
passed=${passed:-0}; failed=${failed:-0}
if [[ $rc -ne 0 && $failed -eq 0 ]]; then failed=1; echo "FAIL cargo test exited $rc (a build error or a test binary that crashed)"; fi
rm -f "$log"
summarize unit /dev/null "$passed" "$failed"
