#!/bin/sh
# A cluster node in the VM: csi-node serves its pool on /dev/vda, restarted
# whenever it dies (as a DaemonSet would be), until it is asked to stop
# (exit 0); then the pool's devices are listed for the host to compare.
node=$1
export RUST_LOG=info
restarts=0
while :; do
	csi-node --node-name "$node" --pool-device /dev/vda --kubeconfig /guest/kubeconfig --test-hooks true
	rc=$?
	echo "csi-node exited with status $rc"
	[ "$rc" -eq 0 ] && break
	restarts=$((restarts + 1))
	[ $restarts -gt 30 ] && { echo "csi-node keeps dying"; exit 1; }
	sleep 1
done
csi-node --list-devices /dev/vda
