# shellcheck shell=sh
# Shared by the guest scripts (busybox sh, inside the VM); e2e/vm/boot puts
# it at /guest/lib.sh in every guest: `. /guest/lib.sh`.

# loop N FILE SIZE_MB: a zeroed sparse tmpfs file on /dev/loopN. A failed
# losetup is a FAIL line (the host counts it) and a non-zero status.
loop() {
	[ -b /dev/loop$1 ] || mknod /dev/loop$1 b 7 $1
	dd if=/dev/zero of=$2 bs=1M count=0 seek=$3 2>/dev/null
	losetup /dev/loop$1 $2 && return 0
	echo "FAIL setup: losetup /dev/loop$1 $2"
	return 1
}

# serve_pool NODE CSI_PORT MAX_RESTARTS [HTTP_PORT]: csi-node on the pool on
# /dev/vda (with the test hooks), restarted whenever it dies, as a DaemonSet
# would be, until it exits 0 (asked to stop). CSI_PORT non-zero: it also
# serves its Node service on tcp 0.0.0.0:CSI_PORT; HTTP_PORT non-zero: its
# /metrics and health on 0.0.0.0:HTTP_PORT. More than MAX_RESTARTS deaths is
# a crash loop: status 1.
serve_pool() {
	endpoint=
	[ "$2" != 0 ] && endpoint="--csi-endpoint tcp://0.0.0.0:$2"
	[ "${4:-0}" != 0 ] && endpoint="$endpoint --http-address 0.0.0.0:$4"
	# DEVICE_RESCAN (seconds): how often csi-node lists its devices again.
	[ -n "${DEVICE_RESCAN:-}" ] && endpoint="$endpoint --device-rescan $DEVICE_RESCAN"
	restarts=0
	while :; do
		# shellcheck disable=SC2086
		csi-node --node-name "$1" --pool-device /dev/vda --kubeconfig /guest/kubeconfig --test-hooks true $endpoint
		rc=$?
		echo "csi-node exited with status $rc"
		[ "$rc" -eq 0 ] && return 0
		restarts=$((restarts + 1))
		[ $restarts -gt "$3" ] && { echo "csi-node keeps dying"; return 1; }
		sleep 1
	done
}
