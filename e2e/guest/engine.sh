#!/bin/sh
# Runs inside the VM (busybox sh): the real-kernel engine suite. Prints
# PASS/FAIL lines; the host counts them.
set -u
T=thin-vmtest

loop() { # loop N FILE SIZE_MB: a sparse tmpfs file on /dev/loopN
	[ -b /dev/loop$1 ] || mknod /dev/loop$1 b 7 $1
	dd if=/dev/zero of=$2 bs=1M count=0 seek=$3 2>/dev/null
	losetup /dev/loop$1 $2
}
check() { # check NAME COMMAND...: PASS/FAIL from an exit status
	name=$1; shift
	if "$@" >/tmp/check.out 2>&1; then echo "PASS $name"; else echo "FAIL $name: $(tail -3 /tmp/check.out | tr '\n' ' ')"; fi
}

loop 0 /tmp/one.img 512
loop 1 /tmp/meta.img 16
loop 2 /tmp/data.img 512
loop 3 /tmp/ext4.img 64
loop 4 /tmp/lvm.img 64
loop 5 /tmp/crash.img 512
loop 6 /tmp/gpt.img 64

echo "--- behavioural cases, pool laid out on one device"
$T cases --device /dev/loop0
echo "--- behavioural cases, explicit metadata + data devices"
$T cases --meta /dev/loop1 --data /dev/loop2
check "thin_check clean on the adopted metadata device" thin_check /dev/loop1

echo "--- devices that hold something else are refused and left untouched"
mkfs.ext4 -q -F /dev/loop3 && $T refuse --device /dev/loop3 --expect ext4
pvcreate -q -ff -y /dev/loop4 >/dev/null 2>&1 && $T refuse --device /dev/loop4 --expect LVM
printf '\125\252' | dd of=/dev/loop6 bs=1 seek=510 conv=notrunc 2>/dev/null && $T refuse --device /dev/loop6 --expect partition

echo "--- the node process SIGKILLed at each phase boundary of a commit, then recovered"
for at in start suspended posted-0 posted-1 posted-2 txn-set resumed; do
	$T crash --device /dev/loop5 --record /tmp/record --at $at
	rc=$?
	if [ $rc -eq 137 ]; then echo "PASS killed at $at"; else echo "FAIL killed at $at: exit status $rc, expected 137 (SIGKILL)"; fi
	$T recover --device /dev/loop5 --record /tmp/record --label "killed at $at"
done
$T finish --device /dev/loop5
