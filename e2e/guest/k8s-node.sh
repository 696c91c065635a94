#!/bin/sh
# The k8s suite's node VM: csi-node on its pool (/dev/vda), restarted if it
# dies (as a DaemonSet would be), serving its CSI endpoint on TCP when the
# binary has a Node service (CSI_PORT non-zero; forwarded to the host's
# loopback); and a small command server on CMD_PORT (forwarded too) so the
# host can run the guest-side data checks (e2e/guest/k8s-data.sh) inside the
# VM. When csi-node exits 0 (the stop test hook), the pool's thin devices
# are listed on the console for the host.
# HTTP_PORT (optional): csi-node's /healthz, /readyz, /metrics on 0.0.0.0.
# args: NODE CSI_PORT CMD_PORT [HTTP_PORT]
node=$1 csi_port=$2 cmd_port=$3 http_port=${4:-0}
export RUST_LOG=info
mkdir -p /var/lib/kubelet/plugins/kubernetes.io/csi /var/lib/kubelet/pods
if [ "$cmd_port" != 0 ]; then
	# busybox nc: -ll keeps listening; each connection runs the handler.
	nc -ll -p "$cmd_port" -e /guest/k8s-data.sh serve >/tmp/cmd-server.log 2>&1 &
fi
. /guest/lib.sh
serve_pool "$node" "$csi_port" 10 "$http_port" || exit 1
echo "DM-TABLES $(dmsetup ls 2>/dev/null | awk '{print $1}' | tr '\n' ' ')"
csi-node --list-devices /dev/vda
