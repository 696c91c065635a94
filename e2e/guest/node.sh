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
. /guest/lib.sh
serve_pool "$node" "$csi_port" "$max_restarts" || exit 1
csi-node --list-devices /dev/vda
