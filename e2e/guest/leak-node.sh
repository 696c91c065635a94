#!/bin/sh
# The leak suite's cluster node: e2e/guest/node.sh with csi-node listing its
# devices again every few seconds (DEVICE_RESCAN), so a device deleted
# behind the engine's back shows quickly. Same args as node.sh.
node=$1 csi_port=${2:-0} max_restarts=${3:-30}
export RUST_LOG=info DEVICE_RESCAN=${DEVICE_RESCAN:-3}
. /guest/lib.sh
serve_pool "$node" "$csi_port" "$max_restarts" || exit 1
csi-node --list-devices /dev/vda
