#!/bin/sh
# Guest half of the dm_smoke example (busybox sh, in the e2e/vm guest):
#   cargo build --release -p thinpool-dm --example dm_smoke
#   e2e/vm/boot --mem 1536 --bin target/release/examples/dm_smoke -- thinpool-dm/examples/dm_smoke.guest.sh
# RUST_LOG=thinpool_dm=debug (pass it as an argument: see below) logs every step.
[ -n "$1" ] && export RUST_LOG="$1"
for i in 0 1 2 3; do [ -b /dev/loop$i ] || mknod /dev/loop$i b 7 $i; done
# loop0: a zeroed 512 MiB device for a laid-out pool; loop1 + loop2: an
# explicit metadata + data pair; loop3: an ext4 filesystem, to be refused.
truncate -s 512M /tmp/pool.img && losetup /dev/loop0 /tmp/pool.img || exit 90
truncate -s 16M /tmp/meta.img && losetup /dev/loop1 /tmp/meta.img || exit 90
truncate -s 128M /tmp/data.img && losetup /dev/loop2 /tmp/data.img || exit 90
truncate -s 32M /tmp/ext4.img && mkfs.ext4 -q /tmp/ext4.img && losetup /dev/loop3 /tmp/ext4.img || exit 90
echo "kernel $(uname -r)"
dm_smoke /dev/loop0 /dev/loop1 /dev/loop2 /dev/loop3
