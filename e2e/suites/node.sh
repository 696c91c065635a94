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
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"
ensure_build_deps
suite_init node

echo "building csi-node, csi-controller (release), node_grpc_vmtest and fs_vmtest" >&2
(cd "$REPO" && cargo build -q --release -p csi-node --bin csi-node -p thin-e2e --bin node_grpc_vmtest --bin fs_vmtest -p csi-controller --bin csi-controller >&2) || fail_now "build"
eval "$("$E2E/cluster/build-tools" --print-paths kubectl 2>/dev/null)"

# 1. The filesystem layer, alone in a VM (no control plane needed).
vm_test fs_vmtest "$RUN/logs/vm-fs.log" --bin "$CARGO_TARGET_DIR/release/fs_vmtest" \
	--bin /usr/sbin/resize2fs --bin /usr/sbin/xfs_growfs --mem 1024 --timeout 600 -- "$E2E/guest/fs.sh"

# 2. The Node service through gRPC, against csi-controller on the host.
control_plane_up
port=$(free_port)
start_controller node-grpc "tcp://127.0.0.1:$port"
node=grpc-node
truncate -s 1G "$RUN/$node.img"
vm_test node_grpc_vmtest "$RUN/logs/vm-$node.log" --bin "$CARGO_TARGET_DIR/release/csi-node" \
	--bin "$CARGO_TARGET_DIR/release/node_grpc_vmtest" --bin /usr/sbin/resize2fs --bin /usr/sbin/xfs_growfs \
	--file "$RUN/guest.kubeconfig:/guest/kubeconfig" --disk "$RUN/$node.img" \
	--net --mem 1024 --timeout 900 -- "$E2E/guest/node-grpc.sh" "$node" "$port"

left=$("$KUBECTL" get thinvolumes -o name 2>/dev/null | wc -l)
if [[ $left -eq 0 ]]; then
	echo "PASS no ThinVolume left" | tee -a "$log"
else
	echo "FAIL $left ThinVolume objects left" | tee -a "$log"
fi
summarize node "$log"
