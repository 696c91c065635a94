#!/usr/bin/env bash
# leak: the leak collector and load-200 on a real control plane with ONE
# node VM (csi-node on a real thin pool, listing its devices again every
# 3 s: e2e/guest/leak-node.sh).
#
#  1. load: csi-controller (release) serves CSI on a loopback port;
#     leak_e2e runs LOAD_N (200) tasks at once, each CreateVolume →
#     CreateSnapshot → DeleteSnapshot → DeleteVolume: answers OK or clean,
#     ids unique, transactions dense, no device, pending transaction or
#     object left (BENCH load-200).
#  2. leaks, with csi-controller's failpoints build and a short grace
#     (LEAK_GRACE, default 20 s; --wait-timeout the same): a live volume and
#     snapshot; the controller SIGKILLed after recording a create
#     (volume-allocated, snapshot-allocated); a CreateVolume whose caller
#     gives up while its ThinVolume is deleted; a volume whose device the
#     node deletes behind the engine's back. Then the collector must have
#     deleted every leak (the node's device list = the live ones), left the
#     live ones alone, pruned the record, and reported the victim (Event,
#     metric); its counters from /metrics; the cleanup; at the end the
#     kernel's own listing (after the node stops) holds no device.
#
#   e2e/suites/leak.sh     Env: LOAD_N (200), LEAK_GRACE (20), KEEP_RUN=1
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"
ensure_build_deps
suite_init leak
NODE_VM_PIDS=() NODE_VM_NAMES=()
source "$E2E/suites/cluster-nodes.sh"
suite_stop() { stop_node_vms; }
started=$SECONDS

echo "building csi-node, csi-controller (release; failpoints) and leak_e2e" >&2
(cd "$REPO" && cargo build -q --release -p csi-node --bin csi-node -p csi-controller --bin csi-controller >&2 &&
	cargo build -q -p csi-controller --features failpoints --bin csi-controller >&2 &&
	cp "$CARGO_TARGET_DIR/debug/csi-controller" "$RUN/csi-controller-failpoints" &&
	cargo build -q -p thin-e2e --bin leak_e2e >&2) || fail_now "build"
CSI_NODE=$CARGO_TARGET_DIR/release/csi-node
LEAK=$CARGO_TARGET_DIR/debug/leak_e2e
GRACE=${LEAK_GRACE:-20}
eval "$("$E2E/cluster/build-tools" --print-paths kubectl 2>/dev/null)"
[[ -x ${KUBECTL:-} ]] || fail_now "kubectl not built (e2e/cluster/build-tools kubectl)"
echo "ok built ($((SECONDS - started)) s)" | tee -a "$log"

control_plane_up

port=$(free_port)
http=$(free_port)
start_controller leak-suite "tcp://127.0.0.1:$port" --leak-interval 1 --http-address "127.0.0.1:$http"
LOAD_PID=$CONTROLLER_PID

NODE_GUEST_SCRIPT=$E2E/guest/leak-node.sh start_node_vm leak-node
pool=
for _ in $(seq 600); do
	pool=$("$KUBECTL" get thinpools -o jsonpath='{range .items[?(@.spec.node=="leak-node")]}{.metadata.name}{" "}{.status.devicesTransaction}{"\n"}{end}' 2>/dev/null | awk 'NF==2{print $1}' | tail -1)
	[[ -n $pool ]] && break
	sleep 0.5
done
[[ -n $pool ]] || { tail -20 "$RUN/logs/vm-leak-node.log" >&2; fail_now "the node VM registered no pool with its device list (log $RUN/logs/vm-leak-node.log)"; }
echo "PASS node leak-node registered pool $pool and reported its devices" | tee -a "$log"

t0=$SECONDS
run_driver "leak_e2e load" "$LEAK" load "$port" "$pool" "${LOAD_N:-200}"
echo "--- load in $((SECONDS - t0)) s" | tee -a "$log"
kill "$LOAD_PID" 2>/dev/null || true
wait "$LOAD_PID" 2>/dev/null || true

# The leak runs: the failpoints build, a short grace.
fp=$RUN/csi-controller-failpoints
ctl_start() { # NAME [FAILPOINT]: starts the controller, waits until it leads
	local name=$1
	start_bg "ctl-$name" env RUST_LOG=info THIN_CSI_FAILPOINT="${2:-}" "$fp" --kubeconfig "$KUBECONFIG" --identity leak-suite \
		--csi-endpoint "tcp://127.0.0.1:$port" --http-address "127.0.0.1:$http" \
		--leak-grace "$GRACE" --wait-timeout "$GRACE" --leak-interval 1
	CPID=$BG_PID
	for _ in $(seq 300); do grep -q 'leading' "$RUN/logs/ctl-$name.log" 2>/dev/null && break; sleep 0.2; done
	grep -q 'leading' "$RUN/logs/ctl-$name.log" || echo "FAIL csi-controller $name did not lead (log $RUN/logs/ctl-$name.log)" | tee -a "$log"
}
ctl_stop() { kill "$CPID" 2>/dev/null || true; wait "$CPID" 2>/dev/null || true; }

ctl_start live
run_driver "leak_e2e live" "$LEAK" live "$port"
ctl_stop
for kind in volume snapshot; do
	ctl_start "killed-$kind" "$kind-allocated"
	run_driver "leak_e2e killed" "$LEAK" killed "$port" "$kind" "leak-killed-$kind"
	for _ in $(seq 100); do kill -0 "$CPID" 2>/dev/null || break; sleep 0.1; done
	ctl_stop
	if grep -q "failpoint $kind-allocated: SIGKILL" "$RUN/logs/ctl-killed-$kind.log"; then
		echo "PASS csi-controller SIGKILLed between recording the $kind's create and creating its object" | tee -a "$log"
	else
		echo "FAIL csi-controller did not reach failpoint $kind-allocated (log $RUN/logs/ctl-killed-$kind.log)" | tee -a "$log"
	fi
done
ctl_start collect
run_driver "leak_e2e gave-up" "$LEAK" gave-up "$port" "$pool"
run_driver "leak_e2e behind" "$LEAK" behind "$port" "$pool"
t0=$SECONDS
run_driver "leak_e2e collected" "$LEAK" collected "$pool" $((GRACE * 6 + 120))
echo "--- collected in $((SECONDS - t0)) s (grace $GRACE s)" | tee -a "$log"
metrics=$(curl -s "http://127.0.0.1:$http/metrics" || true)
deleted=$(sed -nE "s/^thin_csi_leaked_devices_deleted_total\{pool=\"$pool\"\} ([0-9]+).*/\1/p" <<<"$metrics")
missing=$(sed -nE "s/^thin_csi_objects_missing_device\{pool=\"$pool\"\} ([0-9]+).*/\1/p" <<<"$metrics")
# Two controller kills leak one device each; the abandoned create may
# have been given back by its own request (then nothing leaked from it).
if [[ ${deleted:-0} -ge 2 ]]; then
	echo "PASS the collector deleted $deleted leaked devices (metric leaked_devices_deleted)" | tee -a "$log"
else
	echo "FAIL leaked_devices_deleted is ${deleted:-absent}, expected at least 2" | tee -a "$log"
fi
if [[ ${missing:-0} -eq 1 ]]; then
	echo "PASS one object without its device (metric objects_missing_device)" | tee -a "$log"
else
	echo "FAIL objects_missing_device is ${missing:-absent}, expected 1" | tee -a "$log"
fi
run_driver "leak_e2e cleanup" "$LEAK" cleanup "$port" "$pool"
ctl_stop

check_pool_empty_at_stop "$pool" "$RUN/logs/vm-leak-node.log" 180 "the kernel's device list is empty at the end"
echo "--- leak suite in $((SECONDS - started)) s" | tee -a "$log"
summarize leak "$log"
