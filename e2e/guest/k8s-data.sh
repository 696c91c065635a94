#!/bin/sh
# Guest-side data checks for the k8s suite, run inside the node VM (busybox
# applets; the host reaches them through k8s-node.sh's command server).
#   k8s-data.sh serve                 read one command line from stdin, run it, print `RC <code>`
#   k8s-data.sh write DIR NAME KIB sync|nosync   random data to DIR/NAME (fsync or not); prints `SUM <sha256>`
#   k8s-data.sh blkwrite DEV KIB      random data at the start of a block device: `SUM <sha256>`
#   k8s-data.sh blksum DEV KIB        `SUM <sha256>` of the first KIB KiB
#   k8s-data.sh fstype DIR            `FSTYPE <type>` of the mount at DIR
#   k8s-data.sh sums DIR NAME...      prints `SUM NAME <sha256>` per file (`SUM NAME missing`)
#   k8s-data.sh df DIR                prints `SIZE <bytes>` of the filesystem at DIR
#   k8s-data.sh mkdir DIR...         mkdir -p (kubelet's staging dir and the target's parent)
#   k8s-data.sh mounts                the mount table lines under /var/lib/kubelet
#   k8s-data.sh dm                    prints `DM <names>` of the device-mapper devices
case $1 in
serve)
	read -r line
	# shellcheck disable=SC2086
	/guest/k8s-data.sh $line 2>&1
	echo "RC $?"
	;;
write)
	dir=$2 name=$3 kib=$4 mode=$5
	dd if=/dev/urandom of="/tmp/pattern.$$" bs=1024 count="$kib" 2>/dev/null || exit 1
	if [ "$mode" = sync ]; then
		dd if="/tmp/pattern.$$" of="$dir/$name" bs=65536 conv=fsync 2>/dev/null || exit 1
	else
		dd if="/tmp/pattern.$$" of="$dir/$name" bs=65536 2>/dev/null || exit 1
	fi
	echo "SUM $(sha256sum <"/tmp/pattern.$$" | cut -d' ' -f1)"
	rm -f "/tmp/pattern.$$"
	;;
blkwrite)
	# random data at the start of a raw block device; prints `SUM <sha256>`
	dd if=/dev/urandom of="/tmp/pattern.$$" bs=1024 count="$3" 2>/dev/null || exit 1
	dd if="/tmp/pattern.$$" of="$2" bs=65536 conv=fsync 2>/dev/null || exit 1
	echo "SUM $(sha256sum <"/tmp/pattern.$$" | cut -d' ' -f1)"
	rm -f "/tmp/pattern.$$"
	;;
blksum)
	echo "SUM $(dd if="$2" bs=1024 count="$3" 2>/dev/null | sha256sum | cut -d' ' -f1)"
	;;
fstype)
	echo "FSTYPE $(awk -v m="$2" '$2 == m {print $3}' /proc/mounts | tail -1)"
	;;
sums)
	dir=$2
	shift 2
	for n in "$@"; do
		if [ -f "$dir/$n" ]; then echo "SUM $n $(sha256sum <"$dir/$n" | cut -d' ' -f1)"; else echo "SUM $n missing"; fi
	done
	;;
df)
	# statfs: total blocks x block size (df wraps long device names).
	echo "SIZE $(stat -f -c '%b %S' "$2" | awk '{print $1 * $2}')"
	;;
mkdir)
	shift
	mkdir -p "$@"
	;;
mounts)
	grep /var/lib/kubelet /proc/mounts
	true
	;;
dm)
	echo "DM $(dmsetup ls 2>/dev/null | awk '{print $1}' | tr '\n' ' ')"
	;;
*)
	echo "unknown command: $*"
	exit 2
	;;
esac
