#!/usr/bin/env bash
# engine: the behavioural cases, the SIGKILL crash matrix and the refusal of
# foreign devices, on the real kernel thin pool in a qemu VM. Power cuts
# (qemu killed, and a disk that drops unflushed writes) are the crash suite's.
set -euo pipefail
source "$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/lib.sh"
vmtest=$(build_vmtest)
work=$(mktemp -d "${TMPDIR:-/tmp}/thin-csi-engine.XXXXXX")
trap 'rm -rf "$work"' EXIT
# Verdicts decided here on the host (the rest are the guest's PASS/FAIL
# lines). The host decides only harness failures: they are FAILs, never PASSes.
host_fail=0
# vm_verdict NAME RC LOG: a VM whose guest script exited non-zero fails,
# unless it was the guest's own verdict (exit 1 after its FAIL lines).
vm_verdict() {
	[[ $2 -eq 0 ]] && return 0
	[[ $2 -eq 1 ]] && grep -q '^FAIL ' "$3" && return 0
	echo "FAIL $1: exit status $2 (log: $3)"; tail -20 "$3"
	host_fail=$((host_fail + 1))
}

echo "--- VM 1: behavioural cases, foreign devices, SIGKILL at every phase boundary"
rc=0
"$E2E/vm/boot" --bin "$vmtest" --mem 2048 --timeout 900 --log "$work/cases.log" -- "$E2E/guest/engine.sh" >/dev/null || rc=$?
grep -E '^(PASS|FAIL|---)' "$work/cases.log" || true
vm_verdict "engine VM" "$rc" "$work/cases.log"

cp "$work/cases.log" "$work/all.log"
summarize engine "$work/all.log" 0 "$host_fail"
