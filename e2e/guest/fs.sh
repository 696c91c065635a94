#!/bin/sh
# Runs inside the VM (busybox sh): the csi-node filesystem layer
# (csi-node/src/fs) on a real kernel, on loop devices over tmpfs files —
# no device-mapper needed. fs_vmtest prints the PASS/FAIL lines.
#
# From the repository root (resize2fs and xfs_growfs as --bin until the
# base image carries them):
#   (e2e/run node runs it; by hand:) cargo build --release -p thin-e2e --bin fs_vmtest
#   e2e/vm/boot --bin $CARGO_TARGET_DIR/release/fs_vmtest \
#     --bin /usr/sbin/resize2fs --bin /usr/sbin/xfs_growfs \
#     --mem 1024 --timeout 600 -- e2e/guest/fs.sh
set -u
W=/tmp/fs

. /guest/lib.sh

mkdir -p $W
# Tools the layer runs (busybox applets would shadow some in this shell,
# so look at the real paths; fs_vmtest itself finds them through PATH).
for t in mkfs.ext4 mkfs.xfs blkid resize2fs xfs_growfs e2fsck; do
	found=''
	for d in /usr/sbin /usr/bin; do [ -x $d/$t ] && [ ! -L $d/$t ] && found=$d/$t; done
	[ -n "$found" ] || echo "NOTE: $t is not in the VM image (its test will fail)"
done

loop 0 $W/ext4.img 512
loop 1 $W/xfs.img 512
loop 2 $W/foreign.img 64
loop 3 $W/raw.img 64
loop 4 $W/busy.img 64

fs_vmtest --work $W/mnt \
	--ext4 /dev/loop0:$W/ext4.img \
	--xfs /dev/loop1:$W/xfs.img \
	--foreign /dev/loop2 \
	--raw /dev/loop3 \
	--busy /dev/loop4:$W/busy.img \
	--spare /dev/loop5
rc=$?

# Whatever a failed run left mounted, then the loops.
for m in $(grep " $W/mnt" /proc/self/mountinfo | cut -d' ' -f5 | sort -r); do umount "$m" 2>/dev/null; done
for n in 0 1 2 3 4 5; do losetup -d /dev/loop$n 2>/dev/null; done
exit $rc
