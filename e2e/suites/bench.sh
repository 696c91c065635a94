#!/usr/bin/env bash
# bench: in ONE VM run on the same kernel, snapshot and delete timed with our
# engine, with the same steps as separate dmsetup processes, and with lvm2;
# a 16-origin group snapshot; and scale (10 000 thin devices in our pool,
# 600 thin LVs in lvm2's VG); churn of the pool record against the real
# apiserver (CHURN_N allocations, default 100 000: `BENCH churn-N`, object
# size and time per allocation at the end within 1.2x of the start, two
# checks). Writes bench/results/engine-<date>.md.
# BENCH lines are measurements, not checks: the suite's PASS/FAIL count is
# its few real checks (CRDs, the nodes' pools), and each measurement that
# e2e/expected-checks names (bench-measurements) and did not come is a FAIL.
set -euo pipefail
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"
vmtest=$(build_vmtest)
log=$(mktemp "${TMPDIR:-/tmp}/thin-csi-bench.XXXXXX")
args=("$@")
rc=0
# THIN_CSI_BENCH_PARTS=cluster runs only the API round trip (for a quick look;
# the results file of record comes from a full run).
if [[ ${THIN_CSI_BENCH_PARTS:-all} != cluster ]]; then
	"$E2E/vm/boot" --bin "$vmtest" --mem 3072 --timeout 3000 --log "$log" -- "$E2E/guest/bench.sh" "${args[@]}" >/dev/null || rc=$?
fi

# The API round trip for one snapshot: controller → apiserver → csi-node in a
# VM → kernel → status → controller's watch, beside the node's own engine time.
cluster_bench() {
	local env_out
	RUN=$(mktemp -d "${TMPDIR:-/tmp}/thin-csi-bench-cluster.XXXXXX")
	cleanup() { stop_node_vms 2>/dev/null || true; "$E2E/cluster/down" "$RUN" >/dev/null 2>&1 || true; }
	trap cleanup EXIT
	env_out=$(THIN_CSI_RUN=$RUN "$E2E/cluster/up") || { echo "FAIL control plane up (logs in $RUN/logs)" >>"$log"; cleanup; return; }
	eval "$env_out"
	export KUBECONFIG=$RUN/admin.kubeconfig
	if (cd "$REPO" && cargo build -q -p thin-e2e --bin cluster_e2e >&2); then
		checked "$log" "cluster_e2e crds" "$CARGO_TARGET_DIR/debug/cluster_e2e" crds >/dev/null
		checked "$log" "cluster_e2e churn" "$CARGO_TARGET_DIR/debug/cluster_e2e" churn "churn-$$" "${CHURN_N:-100000}" 100 >/dev/null
		source "$E2E/suites/cluster-nodes.sh"
		node_tests bench
	else
		echo "FAIL build cluster_e2e" >>"$log"
	fi
	cleanup
}
cluster_bench "$log" >/dev/null
grep -E '^(BENCH|filled|FAIL)' "$log" || true
lines=$(grep -c '^BENCH .* median_us=' "$log" || true)
# A measurement with no samples, or a VM that failed, is a failure.
host_fail=$(grep -c '^BENCH .* failed' "$log" || true)
if [[ $rc -ne 0 ]] && ! grep -q '^FAIL ' "$log"; then echo "FAIL bench VM: exit status $rc"; host_fail=$((host_fail + 1)); fi
key=bench-measurements
[[ ${THIN_CSI_BENCH_PARTS:-all} != cluster ]] || key=bench-measurements-cluster
want=$(expected_checks "$key")
if [[ $lines -lt ${want:-1} ]]; then echo "FAIL bench: expected ${want:-1} measurements (BENCH lines), only $lines came"; host_fail=$((host_fail + 1)); fi

if [[ $lines -gt 0 && ${THIN_CSI_BENCH_PARTS:-all} == all ]]; then
	out="$REPO/bench/results/engine-$(date -u +%Y-%m-%d).md"
	mkdir -p "$(dirname "$out")"
	{
		echo "# Engine benchmark, $(date -u +%Y-%m-%dT%H:%MZ)"
		echo
		echo "Command: \`e2e/run bench\` (guest: e2e/guest/bench.sh; qemu TCG, 2 vCPUs, rcupdate.rcu_expedited=1;"
		echo "snapshot-api: e2e/suites/cluster-nodes.sh bench mode, real apiserver on loopback, csi-node in a VM over qemu user networking;"
		echo "our pool on a 4 GiB and lvm2's VG on a 1 GiB sparse loop device over tmpfs, same VM run, same kernel)."
		echo
		echo "| op | tool | median µs | p90 µs | n |"
		echo "|---|---|---:|---:|---:|"
		grep '^BENCH .* median_us=' "$log" | grep -v -e warmup -e '^BENCH churn-' |
			sed -E 's/^BENCH ([^ ]+) ([^ ]+) median_us=([0-9]+) p90_us=([0-9]+) n=([0-9]+).*/| \1 | \2 | \3 | \4 | \5 |/'
		echo
		grep '^filled' "$log" | sed 's/^/- /'
		echo
		echo "Pool record churn (real apiserver, the node's reports played; CHURN_N=${CHURN_N:-100000}):"
		echo
		grep -E '^(BENCH churn-|PASS churn|FAIL churn)' "$log" | sed 's/^/    /'
		awk '/^BENCH snapshot (thin-csi|lvm2|dmsetup|raw-ioctl) / { split($4, a, "="); m[$3] = a[2] }
			END { if (m["thin-csi"] > 0 && m["raw-ioctl"] > 0) printf "\nRatios of snapshot medians: lvm2 / thin-csi = %.1f×, dmsetup / thin-csi = %.1f×, thin-csi / raw-ioctl floor = %.2f×\n", m["lvm2"] / m["thin-csi"], m["dmsetup"] / m["thin-csi"], m["thin-csi"] / m["raw-ioctl"] }' "$log"
	} >"$out"
	echo "wrote $out"
fi
rc=0
summarize bench "$log" 0 "$host_fail" || rc=$?
rm -f "$log"
exit $rc
