#!/usr/bin/env bash
# engine: the behavioural cases, the SIGKILL crash matrix and the refusal of
# foreign devices, on the real kernel thin pool in a qemu VM. Power cuts
# (qemu killed, and a disk that drops unflushed writes) are the crash suite's.
set -euo pipefail
source "$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/lib.sh"
vmtest=$(build_vmtest)
work=$(mktemp -d "${TMPDIR:-/tmp}/thin-csi-engine.XXXXXX")
trap 'rm -rf "$work"' EXIT
# Verdicts decided here on the host (the rest are the guest's PASS/FAIL lines).
host_pass=0 host_fail=0

echo "--- VM 1: behavioural cases, foreign devices, SIGKILL at every phase boundary"
rc=0
"$E2E/vm/boot" --bin "$vmtest" --mem 2048 --timeout 900 --log "$work/cases.log" -- "$E2E/guest/engine.sh" >/dev/null || rc=$?
grep -E '^(PASS|FAIL|---)' "$work/cases.log" || true
[[ $rc -eq 0 ]] || { echo "FAIL engine VM: exit status $rc (log: $work/cases.log)"; tail -20 "$work/cases.log"; host_fail=$((host_fail + 1)); }

cp "$work/cases.log" "$work/all.log"
summarize engine "$work/all.log" "$host_pass" "$host_fail"
