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
