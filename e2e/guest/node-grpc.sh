#!/bin/sh
# The CSI Node service through gRPC on the real kernel, inside a node VM:
# csi-node runs its pool on /dev/vda (transaction executor) and serves
# Identity + Node on a unix socket and on TCP loopback; node_grpc_vmtest
# plays kubelet against it, with csi-controller on the host (10.0.2.2) making
# and expanding the volumes. Driven from the host by e2e/suites/node.sh (e2e/run node).
# args: NODE_NAME CONTROLLER_PORT
node=$1 port=$2
export RUST_LOG=${RUST_LOG:-info}
mkdir -p /run/csi /tmp/kubelet
csi-node --node-name "$node" --pool-device /dev/vda --kubeconfig /guest/kubeconfig --kubelet-dir /tmp/kubelet \
	--csi-endpoint unix:///run/csi/csi.sock,tcp://127.0.0.1:10000 >/tmp/csi-node.log 2>&1 &
pid=$!
for _ in $(seq 240); do [ -S /run/csi/csi.sock ] && grep -q 'csi-node ready' /tmp/csi-node.log && break; sleep 0.5; done
if [ -S /run/csi/csi.sock ]; then
	echo "ok csi-node serves unix:///run/csi/csi.sock"
else
	echo "FAIL csi-node did not serve its socket"
	tail -30 /tmp/csi-node.log
	exit 1
fi
rc=0
node_grpc_vmtest --node "$node" --node-endpoint 127.0.0.1:10000 --controller-endpoint "10.0.2.2:$port" --work /tmp/kubelet || rc=$?
# Nothing of ours left mounted or active.
left=$(grep -c ' /tmp/kubelet' /proc/self/mountinfo)
if [ "$left" -eq 0 ]; then echo "PASS no mount left under /tmp/kubelet"; else echo "FAIL $left mounts left under /tmp/kubelet"; grep ' /tmp/kubelet' /proc/self/mountinfo; rc=1; fi
thins=$(dmsetup ls 2>/dev/null | grep -c -- '-thin-')
if [ "$thins" -eq 0 ]; then echo "PASS no thin device left active"; else echo "FAIL $thins thin devices left active"; dmsetup ls; rc=1; fi
kill "$pid" 2>/dev/null
wait "$pid" 2>/dev/null
echo "--- csi-node log (warnings and errors)"
grep -E 'WARN|ERROR' /tmp/csi-node.log | tail -20
exit $rc
