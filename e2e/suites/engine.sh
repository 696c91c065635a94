#!/usr/bin/env bash
# engine: the behavioural cases, the crash matrix, the refusal of foreign
# devices and a power cut, all on the real kernel thin pool in a qemu VM.
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

echo "--- VM 2+3: hard power-off in the middle of a run of transactions, reboot, recover"
truncate -s 512M "$work/pool.img"
truncate -s 4M "$work/record.img"
truncate -s 64M "$work/other.img"
delay=$((RANDOM % 40))
rc=0
"$E2E/vm/boot" --bin "$vmtest" --disk "$work/pool.img" --disk "$work/record.img" --disk "$work/other.img" --timeout 600 \
	--log "$work/power1.log" --kill-after-pattern '^TXN 25 committed' --kill-delay-ms "$delay" \
	-- "$E2E/guest/powerrun.sh" >/dev/null || rc=$?
last=$(grep -o '^TXN [0-9]* committed' "$work/power1.log" | tail -1 || true)
if [[ $rc -eq 0 ]] && grep -q 'VM KILLED' "$work/power1.log" && [[ -n $last ]]; then
	echo "PASS power cut ${delay} ms after transaction 25 (last reported: ${last})"
	host_pass=$((host_pass + 1))
else
	echo "FAIL power cut: VM was not killed mid-run (exit $rc; log $work/power1.log)"; tail -20 "$work/power1.log"
	host_fail=$((host_fail + 1))
fi
rc=0
"$E2E/vm/boot" --bin "$vmtest" --disk "$work/pool.img" --disk "$work/record.img" --disk "$work/other.img" --timeout 600 \
	--log "$work/power2.log" -- "$E2E/guest/powercheck.sh" >/dev/null || rc=$?
grep -E '^(PASS|FAIL|after power-off: kernel at)' "$work/power2.log" || true
[[ $rc -eq 0 ]] || { echo "FAIL power-cut recovery VM: exit status $rc"; tail -20 "$work/power2.log"; host_fail=$((host_fail + 1)); }

cat "$work/cases.log" "$work/power2.log" >"$work/all.log"
summarize engine "$work/all.log" "$host_pass" "$host_fail"
