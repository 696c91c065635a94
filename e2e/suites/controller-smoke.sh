#!/usr/bin/env bash
# controller-smoke: csi-sanity's Identity and Controller tests, from the host,
# against csi-controller (host, TCP endpoint) on a real control plane, with
# ONE node VM running csi-node's transaction executor on a real thin pool:
# every volume and snapshot csi-sanity makes is a real thin device created
# and deleted by the node. Then csi_e2e checks the controller's own rules
# (topology placement, restore/clone on the source's node, parameters,
# GetCapacity per node, expansion, volume condition) and that a standby
# replica is not ready. Afterwards: no ThinVolume/ThinSnapshot object is
# left and the node's pool holds no device.
#
#   e2e/suites/controller-smoke.sh          (prints csi-sanity's summary and
#                                            "controller-smoke: N passed, M failed")
# Env: SMOKE_FOCUS (ginkgo focus of the controller run, default "Controller Server"),
#      KEEP_RUN=1 keeps the run dir (logs) even when everything passed.
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"
ensure_build_deps
suite_init controller-smoke
NODE_VM_PIDS=() NODE_VM_NAMES=()
source "$E2E/suites/cluster-nodes.sh"
suite_stop() { stop_node_vms; }

echo "building csi-node and csi-controller (release)" >&2
(cd "$REPO" && cargo build -q --release -p csi-node --bin csi-node -p csi-controller --bin csi-controller >&2 &&
	cargo build -q -p thin-e2e --bin sanity_node_stub --bin csi_e2e >&2) || fail_now "build"
CSI_NODE=$CARGO_TARGET_DIR/release/csi-node
eval "$("$E2E/cluster/build-tools" --print-paths csi-sanity kubectl 2>/dev/null)"
[[ -x ${CSI_SANITY:-} ]] || fail_now "csi-sanity not built (e2e/cluster/build-tools csi-sanity)"

control_plane_up

# csi-controller registers the CRDs, leads, serves CSI on a loopback port.
port=$(free_port)
start_controller smoke "tcp://127.0.0.1:$port"

# One node VM: csi-node runs the pool transactions.
start_node_vm smoke-node
pool=
for _ in $(seq 600); do
	pool=$("$KUBECTL" get thinpools -o jsonpath='{range .items[?(@.spec.node=="smoke-node")]}{.metadata.name}{" "}{.status.kernelTransaction}{"\n"}{end}' 2>/dev/null | awk 'NF==2{print $1}' | tail -1)
	[[ -n $pool ]] && break
	sleep 0.5
done
[[ -n $pool ]] || { tail -20 "$RUN/logs/vm-smoke-node.log" >&2; fail_now "the node VM registered no pool (log $RUN/logs/vm-smoke-node.log)"; }
echo "PASS node smoke-node registered pool $pool" | tee -a "$log"

# csi-sanity from the host, in two runs:
#  - Identity Service against csi-controller's endpoint;
#  - the Controller Server tests (Controller Service, CreateSnapshot,
#    DeleteSnapshot, ListSnapshots, ExpandVolume) with the controller
#    endpoint on csi-controller. Their cleanup calls NodeUnpublishVolume and
#    NodeGetCapabilities on the node endpoint before DeleteVolume; with no
#    node plugin in this suite, that endpoint is sanity_node_stub (answers
#    "not published" and "no capabilities"). The Node tests run elsewhere,
#    inside the VM against csi-node (e2e/suites/sanity.sh).
# 1 GiB volumes: the VM's pool has ~1 GiB of data (× the default
# overprovisioning 10); expand to 2 GiB (a multiple of the 64 KiB block, as
# sanity checks the returned size for equality).
stub_port=$(free_port)
start_bg node-stub "$CARGO_TARGET_DIR/debug/sanity_node_stub" "127.0.0.1:$stub_port"
STUB_PID=$BG_PID
mkdir -p "$RUN/sanity"
sanity_run() { # NAME NODE_ENDPOINT CONTROLLER_ENDPOINT FOCUS
	local name=$1 node_ep=$2 ctrl_ep=$3 focus=$4 rc=0 summary ran passed failed
	"$CSI_SANITY" -csi.endpoint "$node_ep" -csi.controllerendpoint "$ctrl_ep" \
		-csi.mountdir "$RUN/sanity/mount" -csi.stagingdir "$RUN/sanity/staging" \
		-csi.testvolumesize 1073741824 -csi.testvolumeexpandsize 2147483648 \
		-ginkgo.focus "$focus" -ginkgo.skip "Node Service|GroupController" \
		-ginkgo.no-color -ginkgo.timeout 30m >"$RUN/sanity-$name.log" 2>&1 || rc=$?
	grep -aE '^\s*\[FAIL\]' "$RUN/sanity-$name.log" | sort -u | sed 's/^/  /' | head -40 >&2 || true
	summary=$(grep -aE '[0-9]+ Passed \| [0-9]+ Failed' "$RUN/sanity-$name.log" | tail -1 || true)
	ran=$(grep -aE '^Ran [0-9]+ of [0-9]+ Specs' "$RUN/sanity-$name.log" | tail -1 || true)
	echo "csi-sanity ($name): ${ran:-?} ${summary:-no summary (exit $rc; log $RUN/sanity-$name.log)}"
	passed=$(sed -nE 's/.*([^0-9]|^)([0-9]+) Passed.*/\2/p' <<<"$summary")
	failed=$(sed -nE 's/.* ([0-9]+) Failed.*/\1/p' <<<"$summary")
	if [[ -n $passed && ${failed:-1} -eq 0 && $rc -eq 0 ]]; then
		echo "PASS csi-sanity $name: $passed specs passed" | tee -a "$log"
	else
		echo "FAIL csi-sanity $name: ${summary:-no summary} (exit $rc, log $RUN/sanity-$name.log)" | tee -a "$log"
	fi
}
sanity_run identity "dns:///127.0.0.1:$port" "dns:///127.0.0.1:$port" "Identity Service"
sanity_run controller "dns:///127.0.0.1:$stub_port" "dns:///127.0.0.1:$port" "${SMOKE_FOCUS:-Controller Server}"
kill "$STUB_PID" 2>/dev/null || true

# The controller's own rules over gRPC (placement, restore on the source's
# node, parameters, capacity per node, expansion, volume condition).
run_driver "csi_e2e rules" "$CARGO_TARGET_DIR/debug/csi_e2e" rules "$port" smoke-node "$pool"

# A second replica stands by: it serves, but is not ready and refuses work.
sb_port=$(free_port)
start_bg csi-controller-standby "$CARGO_TARGET_DIR/release/csi-controller" --kubeconfig "$KUBECONFIG" --identity smoke-standby \
	--csi-endpoint "tcp://127.0.0.1:$sb_port"
sb_pid=$BG_PID
for _ in $(seq 100); do grep -q 'serving CSI' "$RUN/logs/csi-controller-standby.log" 2>/dev/null && break; sleep 0.1; done
run_driver "csi_e2e standby" "$CARGO_TARGET_DIR/debug/csi_e2e" standby "$sb_port"
kill "$sb_pid" 2>/dev/null || true
wait "$sb_pid" 2>/dev/null || true
# The unix socket endpoint (what the sidecars use), on another standby:
# csi-sanity's Identity tests over it (Probe answers, not ready).
sock=$RUN/standby-unix/csi.sock
start_bg csi-controller-unix "$CARGO_TARGET_DIR/release/csi-controller" --kubeconfig "$KUBECONFIG" --identity smoke-standby-unix \
	--csi-endpoint "unix://$sock"
sb_pid=$BG_PID
for _ in $(seq 100); do [[ -S $sock ]] && break; sleep 0.1; done
sanity_run identity-unix "unix://$sock" "unix://$sock" "Identity Service"
kill "$sb_pid" 2>/dev/null || true
wait "$sb_pid" 2>/dev/null || true

# Nothing left behind: no objects, no thin device in the pool.
left=$("$KUBECTL" get thinvolumes,thinsnapshots -o name 2>/dev/null | wc -l)
if [[ $left -eq 0 ]]; then
	echo "PASS no ThinVolume or ThinSnapshot left" | tee -a "$log"
else
	echo "FAIL $left ThinVolume/ThinSnapshot objects left: $("$KUBECTL" get thinvolumes,thinsnapshots -o name | head -5 | tr '\n' ' ')" | tee -a "$log"
fi
check_pool_empty_at_stop "$pool" "$RUN/logs/vm-smoke-node.log" 120 "the pool holds no thin device after csi-sanity"
summarize controller-smoke "$log"
