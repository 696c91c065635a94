#!/usr/bin/env bash
# node: csi-node's own layers on the real kernel, in two qemu VMs.
#  1. fs_vmtest (e2e/guest/fs.sh): the filesystem layer (csi-node/src/fs) on
#     loop devices: probe, format only when empty (foreign signatures
#     refused), mount/bind/raw-block bind, busy and stacked unmounts, stats,
#     online grow of ext4 and xfs. No control plane.
#  2. node_grpc_vmtest (e2e/guest/node-grpc.sh): the CSI Node service through
#     gRPC, playing kubelet: a loopback control plane, csi-controller on a
#     loopback TCP port (it registers the CRDs, leads, makes and expands the
#     volumes), and one node VM running csi-node with its CSI endpoint.
#     Afterwards: no mount, no active thin device, no ThinVolume left.
# Prints PASS/FAIL lines and "node: N passed, M failed".
# Env: KEEP_RUN=1 keeps the run dir (logs) even when everything passed.
set -euo pipefail
source "$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/lib.sh"
ensure_build_deps

log=$(mktemp)
RUN=$(mktemp -d "${TMPDIR:-/tmp}/thin-csi-node-grpc.XXXXXX")
CONTROLLER_PID=
VM_PID=
cleanup() {
	local rc=$?
	[[ -n $VM_PID ]] && kill "$VM_PID" 2>/dev/null || true
	if [[ -n $CONTROLLER_PID ]]; then kill "$CONTROLLER_PID" 2>/dev/null || true; wait "$CONTROLLER_PID" 2>/dev/null || true; fi
	"$E2E/cluster/down" "$RUN" >/dev/null 2>&1 || true
	if [[ $rc -eq 0 && -z ${KEEP_RUN:-} ]]; then rm -rf "$RUN"; else echo "node: run dir kept for its logs: $RUN" >&2; fi
	rm -f "$log"
}
trap cleanup EXIT
fail_now() { echo "FAIL $*" | tee -a "$log"; summarize node "$log"; exit 1; }

echo "building csi-node, csi-controller (release), node_grpc_vmtest and fs_vmtest" >&2
(cd "$REPO" && cargo build -q --release -p csi-node --bin csi-node -p thin-e2e --bin node_grpc_vmtest --bin fs_vmtest -p csi-controller --bin csi-controller >&2) || fail_now "build"
eval "$("$E2E/cluster/build-tools" --print-paths kubectl 2>/dev/null)"

# 1. The filesystem layer, alone in a VM (no control plane needed).
fs_rc=0
"$E2E/vm/boot" --bin "$CARGO_TARGET_DIR/release/fs_vmtest" --bin /usr/sbin/resize2fs --bin /usr/sbin/xfs_growfs \
	--mem 1024 --timeout 600 --log "$RUN/logs/vm-fs.log" -- "$E2E/guest/fs.sh" \
	| grep -aE '^(PASS|FAIL|fs_vmtest:)' | tee -a "$log" || fs_rc=$?
grep -aq '^fs_vmtest:' "$RUN/logs/vm-fs.log" || { tail -30 "$RUN/logs/vm-fs.log" >&2; echo "FAIL the fs VM test did not finish (log $RUN/logs/vm-fs.log)" | tee -a "$log"; }
if [[ $fs_rc -ne 0 ]] && ! { [[ $fs_rc -eq 1 ]] && grep -aq '^FAIL ' "$log"; }; then
	echo "FAIL the fs VM: exit status $fs_rc (log $RUN/logs/vm-fs.log)" | tee -a "$log"
fi

# 2. The Node service through gRPC, against csi-controller on the host.

env_out=$(THIN_CSI_RUN=$RUN "$E2E/cluster/up") || fail_now "control plane up (logs in $RUN/logs)"
eval "$env_out"
export KUBECONFIG=$RUN/admin.kubeconfig
echo "ok control plane up" | tee -a "$log"

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
RUST_LOG=${RUST_LOG:-info} "$CARGO_TARGET_DIR/release/csi-controller" --kubeconfig "$RUN/admin.kubeconfig" --identity node-grpc \
	--csi-endpoint "tcp://127.0.0.1:$port" >"$RUN/logs/csi-controller.out" 2>"$RUN/logs/csi-controller.log" &
CONTROLLER_PID=$!
for _ in $(seq 600); do grep -q 'leading' "$RUN/logs/csi-controller.out" 2>/dev/null && break; kill -0 "$CONTROLLER_PID" 2>/dev/null || break; sleep 0.1; done
grep -q 'leading' "$RUN/logs/csi-controller.out" || fail_now "csi-controller did not lead (log $RUN/logs/csi-controller.log)"
echo "ok csi-controller leads and serves tcp://127.0.0.1:$port" | tee -a "$log"

node=grpc-node
truncate -s 1G "$RUN/$node.img"
vm_rc=0
"$E2E/vm/boot" --bin "$CARGO_TARGET_DIR/release/csi-node" --bin "$CARGO_TARGET_DIR/release/node_grpc_vmtest" \
	--bin /usr/sbin/resize2fs --bin /usr/sbin/xfs_growfs \
	--file "$RUN/guest.kubeconfig:/guest/kubeconfig" --disk "$RUN/$node.img" \
	--net --mem 1024 --timeout 900 --log "$RUN/logs/vm-$node.log" -- "$E2E/guest/node-grpc.sh" "$node" "$port" \
	| grep -aE '^(PASS|FAIL|node_grpc_vmtest:)' | tee -a "$log" || vm_rc=$?
grep -aq 'node_grpc_vmtest:' "$RUN/logs/vm-$node.log" || { tail -30 "$RUN/logs/vm-$node.log" >&2; echo "FAIL the VM test did not finish (log $RUN/logs/vm-$node.log)" | tee -a "$log"; }
# The guest exits 1 after its own FAIL lines; any other non-zero exit (a
# timeout, no sentinel, a crash) is a failure of its own.
if [[ $vm_rc -ne 0 ]] && ! { [[ $vm_rc -eq 1 ]] && grep -aq '^FAIL ' "$log"; }; then
	echo "FAIL the node VM: exit status $vm_rc (log $RUN/logs/vm-$node.log)" | tee -a "$log"
fi

left=$("$KUBECTL" get thinvolumes -o name 2>/dev/null | wc -l)
if [[ $left -eq 0 ]]; then
	echo "PASS no ThinVolume left" | tee -a "$log"
else
	echo "FAIL $left ThinVolume objects left" | tee -a "$log"
fi
summarize node "$log"
