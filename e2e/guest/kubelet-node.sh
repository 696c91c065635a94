#!/bin/sh
# The real node (e2e/node/lib.sh): containerd + runc + CNI + kubelet in the
# VM, joined to the host's control plane at 10.0.2.2. The pool disk is
# /dev/vda; the chart's csi-node Pod lays it out. A command server on
# CMD_PORT (forwarded to the host's loopback) answers the host:
#   devices        `DEVICES <id>...` of the pool on /dev/vda (csi-node --list-devices)
#   dm             `DM <names>` of the device-mapper devices
#   signal NAME    creates /run/thin-csi-test/NAME (a test Pod's hostPath waits on it)
#   cat NAME       prints /run/thin-csi-test/NAME
#   log WHAT       kubelet / containerd / csi-node-list: the whole log
#   rss NAME       `RSS <kib>` of the process whose comm is NAME (summed)
#   stop           stops kubelet and containerd; the VM powers off
#   run CMD        runs CMD (sh -c), for diagnostics by hand
# args: NODE CMD_PORT IMAGE_DIR
#
# runc cannot pivot_root out of an initramfs root: everything runs chrooted
# in a bind mount of / (made rshared for Bidirectional propagation).
node=$1 cmd_port=$2 images=$3
if [ "${4:-}" != inner ]; then
	for m in overlay llc stp bridge veth; do
		insmod "/lib/modules/extra/$m.ko" || { echo "FAIL node: insmod $m"; exit 1; }
	done
	mkdir -p /newroot
	mount --bind / /newroot
	mount -t proc proc /newroot/proc
	mount -t sysfs sysfs /newroot/sys
	mount -t devtmpfs devtmpfs /newroot/dev
	mkdir -p /newroot/dev/pts /newroot/dev/shm
	mount -t devpts devpts /newroot/dev/pts
	mount -t tmpfs tmpfs /newroot/dev/shm
	mount -t tmpfs tmpfs /newroot/run
	mount -t tmpfs tmpfs /newroot/tmp
	mount -t cgroup2 cgroup2 /newroot/sys/fs/cgroup
	mount --make-rshared /newroot
	exec chroot /newroot /bin/sh /guest/run "$node" "$cmd_port" "$images" inner
fi

export PATH=/usr/sbin:/usr/bin:/sbin:/bin
t0=$(date +%s)
stamp() { echo "node: $* ($(($(date +%s) - t0)) s)"; }
hostname "$node"
echo 1 >/proc/sys/net/ipv4/ip_forward
# every controller the kubelet's cgroupfs driver manages, for the child cgroups
for c in $(cat /sys/fs/cgroup/cgroup.controllers); do echo "+$c" >/sys/fs/cgroup/cgroup.subtree_control 2>/dev/null; done
tr -d '-' </proc/sys/kernel/random/uuid >/etc/machine-id
echo "nameserver 10.0.2.3" >/etc/resolv.conf
mkdir -p /etc/containerd /etc/cni/net.d /var/lib/kubelet /var/log /run/thin-csi-test /etc/kubernetes
cat >/etc/containerd/config.toml <<-'T'
	version = 3
	[plugins.'io.containerd.cri.v1.images'.pinned_images]
	  sandbox = 'registry.k8s.io/pause:3.10.2'
	[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
	  runtime_type = 'io.containerd.runc.v2'
	[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
	  BinaryName = '/usr/bin/runc'
	  SystemdCgroup = false
	[plugins.'io.containerd.cri.v1.runtime'.cni]
	  bin_dirs = ['/opt/cni/bin']
	  conf_dir = '/etc/cni/net.d'
T
cat >/etc/cni/net.d/10-thin-csi.conflist <<-'T'
	{"cniVersion": "1.0.0", "name": "thin-csi-node", "plugins": [
	  {"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": false,
	   "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.88.0.0/16"}]], "routes": [{"dst": "0.0.0.0/0"}]}}]}
T
cat >/etc/kubernetes/kubelet.yaml <<-'T'
	apiVersion: kubelet.config.k8s.io/v1beta1
	kind: KubeletConfiguration
	cgroupDriver: cgroupfs
	containerRuntimeEndpoint: unix:///run/containerd/containerd.sock
	failSwapOn: false
	# The apiserver cannot dial the node (no route to 10.0.2.15): nothing
	# calls the kubelet's API but the host's loopback forward, if any.
	authentication: {anonymous: {enabled: true}, webhook: {enabled: false}}
	authorization: {mode: AlwaysAllow}
	resolvConf: /etc/resolv.conf
	# A RAM-backed root: no disk pressure evictions, no image GC.
	evictionHard: {memory.available: "50Mi"}
	imageGCHighThresholdPercent: 100
	imageGCLowThresholdPercent: 99
	localStorageCapacityIsolation: false
	serializeImagePulls: false
	registerNode: true
	nodeStatusUpdateFrequency: 5s
	syncFrequency: 10s
T

# The command server (busybox nc: -ll keeps listening, one handler per connection).
cat >/guest/cmd.sh <<-'T'
	#!/bin/sh
	read -r cmd arg
	case $cmd in
	devices) csi-node --list-devices /dev/vda 2>/var/log/csi-node-list.log ;;
	dm) echo "DM $(dmsetup ls 2>/dev/null | awk '$1 != "No" {print $1}' | tr '\n' ' ')" ;;
	signal) touch "/run/thin-csi-test/$arg" ;;
	cat) cat "/run/thin-csi-test/$arg" ;;
	log) cat "/var/log/$arg.log" ;;
	rss) kib=0
		for p in /proc/[0-9]*; do
			[ "$(cat $p/comm 2>/dev/null)" = "$arg" ] || continue
			r=$(awk '/^VmRSS:/ {print $2}' $p/status 2>/dev/null); kib=$((kib + ${r:-0}))
		done
		echo "RSS $kib" ;;
	stop) touch /run/thin-csi-test/.stop ;;
	run) sh -c "$arg" 2>&1 ;; # diagnostics by hand (the suites do not use it)
	*) echo "unknown command $cmd" ;;
	esac
	echo "RC $?"
T
chmod 755 /guest/cmd.sh
nc -ll -p "$cmd_port" -e /guest/cmd.sh >/var/log/cmd-server.log 2>&1 &
containerd --config /etc/containerd/config.toml >/var/log/containerd.log 2>&1 &
containerd_pid=$!
for _ in $(seq 300); do [ -S /run/containerd/containerd.sock ] && break; sleep 0.1; done
[ -S /run/containerd/containerd.sock ] || { echo "FAIL node: containerd did not start"; tail -20 /var/log/containerd.log; exit 1; }
stamp "containerd up"
# In parallel (two vCPUs; hashing and unpacking under emulation is the cost).
for img in "$images"/*.tar; do
	(
		if ctr -n k8s.io images import --platform linux/amd64 "$img" >"$img.log" 2>&1; then
			rm -f "$img" # the initramfs copy: RAM
			stamp "imported ${img##*/}"
		else
			echo "FAIL node: import $img: $(tail -3 "$img.log")"
		fi
	) &
	pids="${pids:-} $!"
done
for p in $pids; do wait "$p"; done # not a bare wait: containerd and nc are jobs too
[ -z "$(ls "$images"/*.tar 2>/dev/null)" ] || exit 1
stamp "images imported: $(ctr -n k8s.io images ls -q | grep -v '^sha256:' | tr '\n' ' ')"

kubelet --config /etc/kubernetes/kubelet.yaml --kubeconfig /guest/kubeconfig \
	--node-ip 10.0.2.15 --hostname-override "$node" --v 1 >/var/log/kubelet.log 2>&1 &
kubelet_pid=$!
stamp "kubelet started"

echo "NODE-READY-TO-JOIN"

while [ ! -e /run/thin-csi-test/.stop ]; do
	kill -0 $kubelet_pid 2>/dev/null || { echo "FAIL node: kubelet exited"; tail -30 /var/log/kubelet.log; exit 1; }
	sleep 1
done
stamp "stopping"
kill $kubelet_pid
# containerd's shims keep the Pods' processes: stop them first
ctr -n k8s.io tasks ls -q 2>/dev/null | while read -r t; do ctr -n k8s.io tasks kill -s KILL "$t" >/dev/null 2>&1; done
kill $containerd_pid 2>/dev/null
sleep 1
echo "DM-TABLES $(dmsetup ls 2>/dev/null | awk '{print $1}' | tr '\n' ' ')"
exit 0
