#!/bin/sh
# A cluster node in the VM: csi-node serves its pool on /dev/vda, restarted
# whenever it dies (as a DaemonSet would be), until it is asked to stop
# (exit 0); then the pool's devices are listed for the host to compare.
# args: NODE [CSI_PORT [MAX_RESTARTS]]   CSI_PORT non-zero: csi-node also
# serves its Node service on tcp 0.0.0.0:CSI_PORT (forwarded to the host).
# MAX_RESTARTS (default 30): the kill tests restart it on purpose; more
# deaths than that is a crash loop.
node=$1 csi_port=${2:-0} max_restarts=${3:-30}
export RUST_LOG=info
endpoint=
[ "$csi_port" != 0 ] && endpoint="--csi-endpoint tcp://0.0.0.0:$csi_port"
restarts=0
while :; do
	# shellcheck disable=SC2086
	csi-node --node-name "$node" --pool-device /dev/vda --kubeconfig /guest/kubeconfig --test-hooks true $endpoint
	rc=$?
	echo "csi-node exited with status $rc"
	[ "$rc" -eq 0 ] && break
	restarts=$((restarts + 1))
	[ $restarts -gt "$max_restarts" ] && { echo "csi-node keeps dying"; exit 1; }
	sleep 1
done
csi-node --list-devices /dev/vda
