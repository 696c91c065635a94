#!/usr/bin/env bash
# kubelet: the chart installed with helm on a real node (e2e/node/lib.sh):
# kubelet + containerd + runc + CNI in the node VM, the real kube-scheduler
# and snapshot-controller on the host, our images imported into the node's
# containerd. Checks: the Node registered by the kubelet and Ready; helm
# install with the controller and node Pods Ready; CSINode written by the
# kubelet after our own registration service answered it; a Pod with a
# WaitForFirstConsumer PVC placed by the scheduler and writing; a
# VolumeSnapshot ReadyToUse while the Pod keeps writing; a PVC restored from
# it read back by a new Pod (exactly the data at snapshot time); a clone; an
# online expand seen inside the Pod; a raw block PVC; `helm upgrade` rolling
# the node Pod while a volume stays mounted and usable; and everything gone
# after the workloads are deleted and `helm uninstall` (no PV, no ThinVolume
# or ThinSnapshot, no VolumeSnapshotContent, no thin device in the pool).
# BENCH: pod-running-with-pvc, volumesnapshot-ready-chart, rss csi-node / csi-controller.
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"
source "$E2E/node/lib.sh"
BENCH_N=${THIN_CSI_KUBELET_BENCH_N:-3}
NODE_POOL_SIZE=4G

suite_init kubelet
suite_stop() { node_stop; }

node_build
node_cluster_up

# ---- the node ------------------------------------------------------------------
ver=$(k get node "$NODE_NAME" -o jsonpath='{.status.nodeInfo.kubeletVersion} {.status.nodeInfo.containerRuntimeVersion}')
if [[ $ver == "$K8S_VERSION containerd://${CONTAINERD_VERSION#v}"* ]]; then
	pass "Node $NODE_NAME registered by the kubelet and Ready in $NODE_READY_S s ($ver)"
else
	fail "Node $NODE_NAME: kubelet/runtime '$ver', want $K8S_VERSION containerd://${CONTAINERD_VERSION#v}"
fi

# ---- helm install -------------------------------------------------------------------
t=$(now_ms)
if helm_install >"$RUN/logs/helm-install.log" 2>&1; then
	pass "helm install: controller Deployment and node DaemonSet Ready in $(secs_since "$t") s"
else
	fail "helm install (see $RUN/logs/helm-install.log): $(tail -3 "$RUN/logs/helm-install.log")"
	k get pods -A -o wide >&2 || true
	finish
fi
k get pods -n "$NS" -o wide >"$RUN/logs/pods-installed.txt" 2>&1
# Idle memory of each installed component (the Pods just became Ready).
for c in csi-node csi-controller; do
	echo "BENCH rss $c kib=$(guest rss "$c" | sed -n 's/^RSS //p')" | tee -a "$log"
done
drivers=$(k get csinode "$NODE_NAME" -o jsonpath='{range .spec.drivers[*]}{.name} {.nodeID} {.topologyKeys}{end}' 2>/dev/null || true)
node_pod=$(k get pods -n "$NS" -l app.kubernetes.io/component=node -o jsonpath='{.items[0].metadata.name}')
containers=$(k get pod -n "$NS" "$node_pod" -o jsonpath='{.spec.containers[*].name}')
if [[ $drivers == "thin.csi.io $NODE_NAME "*topology.thin.csi.io/node* && $containers == csi-node ]]; then
	pass "CSINode $NODE_NAME names thin.csi.io (written by the kubelet; registered by csi-node itself, no registrar container): $drivers"
else
	# Without it the kubelet mounts nothing: the rest cannot run.
	fail_now "CSINode $NODE_NAME drivers '$drivers', node Pod containers '$containers'; kubelet: $(guest log kubelet | grep 'RegisterPlugin error' | tail -1 | cut -c1-400)"
fi

# ---- a Pod with a WaitForFirstConsumer PVC writes ---------------------------------
# The writer: data, then waits for `go2` (after the snapshot) to write again,
# then keeps reporting its filesystem size, and writes once more on `go3`.
writer='set -e
dd if=/dev/urandom of=/data/blob bs=1024 count=2048 2>/dev/null; echo one >/data/token; sync
sha256sum /data/blob | cut -d" " -f1 >/sig/w1.sum
while [ ! -e /sig/go2 ]; do sleep 0.2; done
dd if=/dev/urandom of=/data/blob bs=1024 count=2048 2>/dev/null; echo two >/data/token; sync
sha256sum /data/blob | cut -d" " -f1 >/sig/w2.sum
while :; do
  df -k /data | tail -1 >/sig/w.df.tmp && mv /sig/w.df.tmp /sig/w.df
  if [ -e /sig/go3 ] && [ ! -e /sig/w3 ]; then echo after-upgrade >/data/u; sync; cat /data/u >/sig/w3; fi
  sleep 1
done'
t=$(now_ms)
apply_pvc data 256Mi
apply_pod writer data "$writer"
if wait_pod writer Running 300; then
	bench_pod_us=$((($(now_ms) - t) * 1000))
	sel=$(k get pvc data -o jsonpath='{.metadata.annotations.volume\.kubernetes\.io/selected-node}')
	pv=$(k get pvc data -o jsonpath='{.spec.volumeName}')
	aff=$(k get pv "$pv" -o jsonpath='{.spec.nodeAffinity.required.nodeSelectorTerms[0].matchExpressions[0].values[0]}')
	if [[ $sel == "$NODE_NAME" && $aff == "$NODE_NAME" ]]; then
		pass "Pod with a WaitForFirstConsumer PVC Running in $(secs_since "$t") s; the scheduler selected $sel, the PV is pinned to it"
	else
		fail "PVC data: selected-node '$sel', PV $pv affinity '$aff' (want $NODE_NAME)"
	fi
else
	fail "writer Pod not Running: phase $(pod_phase writer); $(k describe pod writer | tail -8)"
	finish
fi
if sum1=$(wait_sig w1.sum 120); then pass "the Pod wrote 2 MiB through the mounted volume (sha256 ${sum1:0:16}…)"; else fail "the writer did not write"; fi

# ---- VolumeSnapshot while the Pod runs, then new data ----------------------------------
t=$(now_ms)
apply_snapshot snap data
for _ in $(seq 600); do snapshot_ready snap && break; sleep 0.2; done
if snapshot_ready snap; then
	snap_us=$((($(now_ms) - t) * 1000))
	pass "VolumeSnapshot ReadyToUse in $(secs_since "$t") s (the volume mounted in a running Pod)"
else
	fail "VolumeSnapshot not ReadyToUse: $(k get volumesnapshot snap -o jsonpath='{.status}')"
fi
guest signal go2 >/dev/null
sum2=$(wait_sig w2.sum 120 || true)
if [[ -n $sum2 && $sum2 != "$sum1" ]]; then pass "the Pod overwrote its data after the snapshot"; else fail "the writer's second write (after the snapshot): '$sum2'"; fi

# ---- restore into a new Pod: exactly the data at snapshot time ---------------------------
reader='{ cat /data/token; sha256sum /data/blob | cut -d" " -f1; } >/dev/termination-log'
apply_pvc restored 256Mi Filesystem VolumeSnapshot snap
apply_pod restore-reader restored "$reader"
if wait_pod restore-reader Succeeded 300; then
	got=$(pod_message restore-reader | tr '\n' ' ')
	if [[ $got == "one $sum1 " ]]; then
		pass "a new Pod on the restored PVC reads exactly the data at snapshot time (not the later write)"
	else
		fail "restored data: got '$got', want 'one $sum1' (later write: two $sum2)"
	fi
else
	fail "restore reader: phase $(pod_phase restore-reader); $(k describe pod restore-reader | tail -6)"
fi

# ---- a clone of the live volume ---------------------------------------------------------
apply_pvc cloned 256Mi Filesystem PersistentVolumeClaim data
apply_pod clone-reader cloned "$reader"
if wait_pod clone-reader Succeeded 300; then
	got=$(pod_message clone-reader | tr '\n' ' ')
	if [[ $got == "two $sum2 " ]]; then pass "a Pod on a clone of the mounted PVC reads the data at clone time"; else fail "cloned data: got '$got', want 'two $sum2'"; fi
else
	fail "clone reader: phase $(pod_phase clone-reader)"
fi

# ---- online expand, seen inside the Pod ------------------------------------------------
before=$(wait_sig w.df 60 | awk '{print $2}')
k patch pvc data --type=merge -p '{"spec":{"resources":{"requests":{"storage":"512Mi"}}}}' >/dev/null
after=$before
for _ in $(seq 120); do
	after=$(guest cat w.df | awk '{print $2}')
	[[ -n $after && -n $before && $after -gt $((before * 3 / 2)) ]] && break
	sleep 1
done
if [[ -n $before && -n $after && $after -gt $((before * 3 / 2)) ]]; then
	pass "online expand 256Mi -> 512Mi seen inside the running Pod (df: $before KiB -> $after KiB)"
else
	fail "online expand not seen in the Pod: df $before -> $after KiB; PVC $(k get pvc data -o jsonpath='{.status.capacity.storage} {.status.conditions}')"
fi

# ---- a raw block PVC --------------------------------------------------------------------
block='dd if=/dev/urandom of=/tmp/p bs=1024 count=1024 2>/dev/null
dd if=/tmp/p of=/dev/xvda bs=65536 conv=fsync 2>/dev/null
a=$(sha256sum </tmp/p | cut -d" " -f1); b=$(dd if=/dev/xvda bs=65536 count=16 2>/dev/null | sha256sum | cut -d" " -f1)
[ "$a" = "$b" ] && echo "same $(blockdev --getsize64 /dev/xvda)" >/dev/termination-log || echo "differ $a $b" >/dev/termination-log'
apply_pvc raw 64Mi Block
apply_pod block-user raw "$block" block
if wait_pod block-user Succeeded 300; then
	got=$(pod_message block-user)
	if [[ $got == "same $((64 * 1024 * 1024))" ]]; then pass "a raw block PVC in a Pod: 1 MiB written to the device and read back, size 64 MiB"; else fail "raw block: $got"; fi
else
	fail "block Pod: phase $(pod_phase block-user); $(k describe pod block-user | tail -6)"
fi

# ---- helm upgrade rolls the node Pod while the volume stays mounted --------------------
old_uid=$(k get pods -n "$NS" -l app.kubernetes.io/component=node -o jsonpath='{.items[0].metadata.uid}')
t=$(now_ms)
if helm_install --set logFormat=json >"$RUN/logs/helm-upgrade.log" 2>&1; then
	new_uid=$(k get pods -n "$NS" -l app.kubernetes.io/component=node -o jsonpath='{.items[0].metadata.uid}')
	guest signal go3 >/dev/null
	w3=$(wait_sig w3 120 || true)
	if [[ $new_uid != "$old_uid" && $(pod_phase writer) == Running && $w3 == after-upgrade ]]; then
		pass "helm upgrade (logFormat=json) rolled the node Pod in $(secs_since "$t") s; the writer's mounted volume still takes writes"
	else
		fail "helm upgrade: node Pod $old_uid -> $new_uid, writer $(pod_phase writer), write after upgrade '$w3'"
	fi
else
	fail "helm upgrade: $(tail -3 "$RUN/logs/helm-upgrade.log")"
fi

# ---- measurements ------------------------------------------------------------------------
pod_samples=("$bench_pod_us") snap_samples=("${snap_us:-0}")
for i in $(seq 2 "$BENCH_N"); do
	t=$(now_ms)
	apply_pvc "bench-$i" 32Mi
	apply_pod "bench-$i" "bench-$i" 'echo ok >/data/x; sleep 3600'
	wait_pod "bench-$i" Running 300 && pod_samples+=($((($(now_ms) - t) * 1000)))
	t=$(now_ms)
	apply_snapshot "bench-$i" "bench-$i"
	for _ in $(seq 600); do snapshot_ready "bench-$i" && break; sleep 0.1; done
	snapshot_ready "bench-$i" && snap_samples+=($((($(now_ms) - t) * 1000)))
done
bench_line pod-running-with-pvc thin-csi "${pod_samples[@]}" | tee -a "$log"
bench_line volumesnapshot-ready-chart thin-csi "${snap_samples[@]}" | tee -a "$log"

# ---- cleanup leaves nothing --------------------------------------------------------------
k delete pod --all -n default --wait=true --timeout=300s >/dev/null 2>&1 || true
k delete volumesnapshot --all -n default --wait=true --timeout=300s >/dev/null 2>&1 || true
k delete pvc --all -n default --wait=true --timeout=300s >/dev/null 2>&1 || true
left=
for _ in $(seq 300); do
	left="$(k get pv -o name 2>/dev/null) $(k get volumesnapshotcontent -o name 2>/dev/null) $(k get thinvolumes,thinsnapshots -A -o name 2>/dev/null)"
	[[ -z ${left// /} ]] && break
	sleep 1
done
devices=$(guest devices 2>/dev/null | grep '^DEVICES' | tr -s ' ' | sed 's/ $//' || true)
"$HELM" --kubeconfig "$KUBECONFIG" uninstall "$REL" -n "$NS" --wait --timeout 5m >"$RUN/logs/helm-uninstall.log" 2>&1 || fail "helm uninstall: $(tail -3 "$RUN/logs/helm-uninstall.log")"
gone=$(k get pods,daemonsets,deployments -n "$NS" -o name 2>/dev/null || true)
if [[ -z ${left// /} && $devices == DEVICES && -z $gone ]]; then
	pass "workloads deleted and helm uninstall: no PV, VolumeSnapshotContent, ThinVolume or ThinSnapshot, no thin device in the pool, no chart Pod"
else
	fail "left behind: objects [${left}] pool [${devices:-no answer}] chart [$gone]"
fi

finish
