#!/bin/sh
# The benchmark guest: our pool on loop0, lvm2's volume group on loop1.
set -u
for i in 0 1; do [ -b /dev/loop$i ] || mknod /dev/loop$i b 7 $i; done
dd if=/dev/zero of=/tmp/pool.img bs=1M count=0 seek=4096 2>/dev/null
dd if=/dev/zero of=/tmp/lvm.img bs=1M count=0 seek=1024 2>/dev/null
losetup /dev/loop0 /tmp/pool.img
losetup /dev/loop1 /tmp/lvm.img
thin-vmtest bench --device /dev/loop0 --lvm-device /dev/loop1 "$@"
