#!/bin/sh
# The demo guest: a pool on a loop device, a mounted filesystem, a snapshot.
[ -b /dev/loop0 ] || mknod /dev/loop0 b 7 0
dd if=/dev/zero of=/tmp/demo.img bs=1M count=0 seek=512 2>/dev/null
losetup /dev/loop0 /tmp/demo.img
thin-vmtest demo --device /dev/loop0
