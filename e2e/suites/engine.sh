#!/usr/bin/env bash
# engine: the behavioural cases, the crash matrix, the refusal of foreign
# devices and a power cut, all on the real kernel thin pool in a qemu VM.
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

echo "--- VM 2+3: hard power-off in the middle of a run of transactions, reboot, recover (3 rounds)"
for round in 1 2 3; do
	truncate -s 512M "$work/pool$round.img"
	truncate -s 4M "$work/record$round.img"
	truncate -s 64M "$work/other$round.img"
	disks=(--disk "$work/pool$round.img" --disk "$work/record$round.img" --disk "$work/other$round.img")
	after=$((10 + round * 7)) delay=$((RANDOM % 50))
	rc=0
	"$E2E/vm/boot" --bin "$vmtest" "${disks[@]}" --timeout 600 --log "$work/power$round.log" \
		--kill-after-pattern "^TXN $after committed" --kill-delay-ms "$delay" -- "$E2E/guest/powerrun.sh" >/dev/null 2>&1 || rc=$?
	last=$(grep -o '^TXN [0-9]* committed' "$work/power$round.log" | tail -1 || true)
	if [[ $rc -eq 0 ]] && grep -q 'VM KILLED' "$work/power$round.log" && [[ -n $last ]]; then
		# The harness did its part (the VM died mid-run); the checks come after the reboot.
		echo "--- power cut $round: ${delay} ms after transaction $after (last reported: ${last})"
	else
		echo "FAIL power cut $round: VM was not killed mid-run (exit $rc; log $work/power$round.log)"; tail -20 "$work/power$round.log"
		host_fail=$((host_fail + 1))
	fi
	rc=0
	"$E2E/vm/boot" --bin "$vmtest" "${disks[@]}" --timeout 600 --log "$work/check$round.log" -- "$E2E/guest/powercheck.sh" >/dev/null 2>&1 || rc=$?
	sed -n -E 's/^(PASS|FAIL) /\1 round '"$round"' /p; s/^(after power-off: kernel at.*|recovery: .*)/  \1/p' "$work/check$round.log"
	vm_verdict "power-cut recovery VM $round" "$rc" "$work/check$round.log"
done

cat "$work/cases.log" "$work"/check*.log >"$work/all.log"
summarize engine "$work/all.log" 0 "$host_fail"
