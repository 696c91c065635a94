#!/usr/bin/env bash
# k8s: the driver through the real CSI sidecars on a real control plane
# (design.md, "The test cluster"). On the host, in one run dir: etcd,
# kube-apiserver, kube-controller-manager (e2e/cluster/up), the snapshot CRDs,
# snapshot-controller, csi-controller on a unix socket and the sidecars
# (csi-provisioner with topology and capacity, csi-snapshotter, csi-resizer)
# talking to it. One qemu VM runs csi-node on its pool; its CSI endpoint (when
# csi-node has the Node service) and a command server for the guest-side data
# checks are forwarded to host loopback ports.
#
# The harness plays kube-scheduler (the selected-node annotation on a
# WaitForFirstConsumer claim) and kubelet (the Node and CSINode objects, and
# NodeStage/NodePublish/... with kubelet's paths), and nothing else.
# Tests: provision + bind on the selected node; VolumeSnapshot ready; restore
# and clone bound (and, with the Node service, their data is the data at
# snapshot/clone time, written with and without fsync); online expand;
# CSIStorageCapacity reflects the pool; everything deleted leaves no PV,
# VolumeSnapshotContent, ThinVolume, ThinSnapshot or thin device behind.
# Benchmarks: BENCH pvc-bound, BENCH volumesnapshot-ready (n=20 each).
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"
ensure_build_deps

NODE=vm-a
NS=default
SC=thin-csi
VSC=thin-csi
TOPO_KEY=topology.thin.csi.io/node
DRIVER=thin.csi.io
BENCH_N=${THIN_CSI_K8S_BENCH_N:-20}

suite_init k8s
VM_PID=
suite_stop() { if [[ -n $VM_PID ]]; then kill "$VM_PID" 2>/dev/null || true; wait "$VM_PID" 2>/dev/null || true; fi; }

now_ms() { date +%s%3N; }

# ---- builds ------------------------------------------------------------------
echo "building csi-controller, csi-node (release) and the k8s_e2e driver" >&2
if ! (cd "$REPO" && cargo build -q --release -p csi-node -p csi-controller >&2 && cargo build -q -p thin-e2e --bin k8s_e2e >&2); then
	fail "build"
	finish
fi
CSI_CONTROLLER=$CARGO_TARGET_DIR/release/csi-controller
CSI_NODE=$CARGO_TARGET_DIR/release/csi-node
K8S_E2E=$CARGO_TARGET_DIR/debug/k8s_e2e
eval "$("$E2E/cluster/build-tools" --print-paths)"
for t in CSI_PROVISIONER SNAPSHOT_CONTROLLER CSI_SNAPSHOTTER CSI_RESIZER KUBECTL; do
	if [[ ! -x ${!t} ]]; then
		echo "building the sidecars and kubectl (e2e/cluster/build-tools all)" >&2
		"$E2E/cluster/build-tools" all >&2 || { fail "build-tools"; finish; }
		eval "$("$E2E/cluster/build-tools" --print-paths)"
		break
	fi
done
# The Node service is there when csi-node takes a CSI endpoint.
# csi-node serves the Node service on its CSI endpoint; NODE_SERVICE drops
# to 0 only when NodeGetInfo fails below (the kubelet steps are then
# skipped, and the suite's count check fails).
NODE_SERVICE=1

# ---- control plane ----------------------------------------------------------
control_plane_up
k() { "$KUBECTL" --kubeconfig "$KUBECONFIG" "$@"; }

if k apply -f "$SNAPSHOT_CRD_DIR" >"$RUN/logs/crds.log" 2>&1 &&
	k wait --for=condition=Established --timeout=60s -f "$SNAPSHOT_CRD_DIR" >>"$RUN/logs/crds.log" 2>&1; then
	ok "snapshot CRDs Established ($(ls "$SNAPSHOT_CRD_DIR" | wc -l) incl. VolumeGroupSnapshot)"
else
	fail "snapshot CRDs (see $RUN/logs/crds.log)"
	finish
fi

start() { start_bg "$@"; } # name cmd...: e2e/suites/lib.sh
gate_if() { # binary gate: prints the flag when the binary knows the gate
	if "$1" --help 2>&1 | grep -q "$2=true|false"; then echo "--feature-gates=$2=true"; fi
}

SOCK=$RUN/csi.sock
CTL_HTTP=$(free_port)
start csi-controller "$CSI_CONTROLLER" --kubeconfig "$KUBECONFIG" --identity k8s-suite --csi-endpoint "unix://$SOCK" \
	--http-address "127.0.0.1:$CTL_HTTP"
for _ in $(seq 300); do [[ -S $SOCK ]] && break; sleep 0.1; done
if [[ -S $SOCK ]]; then ok "csi-controller serves unix://$SOCK"; else fail "csi-controller socket (log $RUN/logs/csi-controller.log)"; finish; fi

read -ra sc_gate <<<"$(gate_if "$SNAPSHOT_CONTROLLER" CSIVolumeGroupSnapshot)"
read -ra ss_gate <<<"$(gate_if "$CSI_SNAPSHOTTER" CSIVolumeGroupSnapshot)"
read -ra prov_gate <<<"$(gate_if "$CSI_PROVISIONER" Topology)"
# Client-side rate limits: the sidecars' defaults (5 QPS, burst 10) space a
# VolumeSnapshot's dozen API writes 200 ms apart once the burst is used up
# (seen: ReadyToUse in 1.7 s, nearly all of it throttling); deployments with
# real load raise them.
QPS=(--kube-api-qps 50 --kube-api-burst 100)
start snapshot-controller "$SNAPSHOT_CONTROLLER" --kubeconfig "$KUBECONFIG" "${sc_gate[@]}" "${QPS[@]}" --v 2
start csi-snapshotter "$CSI_SNAPSHOTTER" --kubeconfig "$KUBECONFIG" --csi-address "$SOCK" --timeout 120s --extra-create-metadata \
	"${ss_gate[@]}" "${QPS[@]}" --v 2
start csi-resizer "$CSI_RESIZER" --kubeconfig "$KUBECONFIG" --csi-address "$SOCK" --timeout 120s "${QPS[@]}" --v 2
# Capacity: CSIStorageCapacity objects in NAMESPACE; no owner (no pod here);
# polled every 5 s so the test sees changes quickly.
start csi-provisioner env NAMESPACE=$NS POD_NAME=csi-provisioner-k8s-suite "$CSI_PROVISIONER" --kubeconfig "$KUBECONFIG" --csi-address "$SOCK" \
	"${prov_gate[@]}" --enable-capacity --capacity-ownerref-level=-1 --capacity-poll-interval=5s \
	--extra-create-metadata --timeout 120s --retry-interval-max 5s "${QPS[@]}" --v 2

# ---- the node VM ------------------------------------------------------------
CMD_PORT=$(free_port)
CSI_PORT=0
NODE_HTTP=$(free_port) # csi-node's /healthz, /readyz, /metrics, forwarded like the CSI endpoint
vm_args=(--bin "$CSI_NODE" --file "$RUN/guest.kubeconfig:/guest/kubeconfig" --file "$E2E/guest/k8s-data.sh:/guest/k8s-data.sh"
	--hostfwd "tcp:127.0.0.1:$CMD_PORT-:$CMD_PORT" --hostfwd "tcp:127.0.0.1:$NODE_HTTP-:$NODE_HTTP")
if [[ $NODE_SERVICE -eq 1 ]]; then
	CSI_PORT=$(free_port)
	vm_args+=(--hostfwd "tcp:127.0.0.1:$CSI_PORT-:$CSI_PORT")
fi
truncate -s 1G "$RUN/$NODE.img"
"$E2E/vm/boot" "${vm_args[@]}" --disk "$RUN/$NODE.img" --mem 1024 --timeout 3000 --log "$RUN/logs/vm-$NODE.log" \
	-- "$E2E/guest/k8s-node.sh" "$NODE" "$CSI_PORT" "$CMD_PORT" "$NODE_HTTP" >/dev/null 2>&1 &
VM_PID=$!

# Runs a data-helper command in the VM (e2e/guest/k8s-data.sh): guest_cmd.
guest() { guest_cmd "$CMD_PORT" "$@"; }

POOL=
for _ in $(seq 240); do
	POOL=$(k get thinpools -o jsonpath="{range .items[?(@.spec.node==\"$NODE\")]}{.metadata.name}{end}" 2>/dev/null || true)
	[[ -n $POOL ]] && [[ -n $(k get thinpool "$POOL" -o jsonpath='{.status.dataTotalBytes}' 2>/dev/null) ]] && break
	sleep 0.5
done
if [[ -n $POOL ]]; then
	pass "node VM $NODE runs csi-node; its pool $POOL reports $(k get thinpool "$POOL" -o jsonpath='{.status.dataTotalBytes}') data bytes"
else
	fail "node VM $NODE registered no pool (console $RUN/logs/vm-$NODE.log)"
	tail -20 "$RUN/logs/vm-$NODE.log"
	finish
fi

# ---- kubelet's and the scheduler's parts: Node, CSINode, classes -----------
NODE_ID=$NODE
TOPO_VALUE=$NODE
if [[ $NODE_SERVICE -eq 1 ]]; then
	if info=$("$K8S_E2E" node-info "127.0.0.1:$CSI_PORT" 2>>"$RUN/k8s_e2e.stderr"); then
		NODE_ID=$(awk '{print $2}' <<<"$info")
		TOPO_VALUE=$(tr ' ' '\n' <<<"$info" | sed -n "s|^$TOPO_KEY=||p")
		if [[ $NODE_ID == "$NODE" && $TOPO_VALUE == "$NODE" ]]; then
			pass "NodeGetInfo: node id $NODE_ID, topology $TOPO_KEY=$TOPO_VALUE"
		else
			fail "NodeGetInfo: $info (want node id and $TOPO_KEY = $NODE)"
		fi
	else
		fail "NodeGetInfo at 127.0.0.1:$CSI_PORT ($(tail -1 "$RUN/k8s_e2e.stderr"))"
		NODE_SERVICE=0
	fi
fi
cat >"$RUN/node.yaml" <<EOF
apiVersion: v1
kind: Node
metadata:
  name: $NODE
  labels:
    kubernetes.io/hostname: $NODE
    $TOPO_KEY: $TOPO_VALUE
EOF
k apply -f "$RUN/node.yaml" >/dev/null
node_uid=$(k get node "$NODE" -o jsonpath='{.metadata.uid}')
sed -e "s/@NODE@/$NODE/g" -e "s/@NODE_ID@/$NODE_ID/g" -e "s/@NODE_UID@/$node_uid/g" -e "s/@SC@/$SC/g" -e "s/@VSC@/$VSC/g" \
	"$E2E/k8s/cluster.yaml" >"$RUN/cluster.yaml"
if k apply -f "$RUN/cluster.yaml" >"$RUN/logs/apply.log" 2>&1; then
	ok "applied Node, CSINode ($DRIVER, node id $NODE_ID, key $TOPO_KEY), CSIDriver, StorageClass $SC (WaitForFirstConsumer, expandable), VolumeSnapshotClass $VSC"
else
	fail "apply the cluster objects: $(cat "$RUN/logs/apply.log")"
	finish
fi

# ---- helpers ----------------------------------------------------------------
pvc() { # name size [dataSource kind name]   (PVC_CLASS, PVC_MODE: class and volumeMode)
	local ds=""
	if [[ $# -ge 4 ]]; then
		local group=""
		[[ $3 == VolumeSnapshot ]] && group="apiGroup: snapshot.storage.k8s.io"
		ds="  dataSource:
    $group
    kind: $3
    name: $4"
	fi
	k apply -f - >/dev/null <<EOF
apiVersion: v1
kind: PersistentVolumeClaim
metadata:
  name: $1
  namespace: $NS
spec:
  accessModes: [ReadWriteOnce]
  storageClassName: ${PVC_CLASS:-$SC}
  volumeMode: ${PVC_MODE:-Filesystem}
  resources:
    requests:
      storage: $2
$ds
EOF
}
# What kube-scheduler does once it picked the node for the claim's pod.
select_node() { k -n "$NS" annotate pvc "$1" "volume.kubernetes.io/selected-node=$NODE" --overwrite >/dev/null; }
wait_bound() { k -n "$NS" wait --for=jsonpath='{.status.phase}'=Bound "pvc/$1" --timeout="${2:-120}s" >/dev/null 2>&1; }
pv_of() { k -n "$NS" get pvc "$1" -o jsonpath='{.spec.volumeName}'; }
bytes() { python3 -c '
import sys, re
q = sys.argv[1]
m = re.fullmatch(r"([0-9.]+)([KMGTPE]i?|m|)", q)
mult = {"": 1, "Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "m": 0.001}[m.group(2)]
print(int(float(m.group(1)) * mult))' "$1"; }
provision_check() { # pvc: Bound, PV on our driver with node affinity to NODE
	local name=$1 pv aff drv
	if ! wait_bound "$name"; then
		fail "PVC $name Bound (phase $(k -n "$NS" get pvc "$name" -o jsonpath='{.status.phase}'); events: $(k -n "$NS" get events --field-selector "involvedObject.name=$name" -o jsonpath='{range .items[*]}{.message}; {end}' | tail -c 400))"
		return 1
	fi
	pv=$(pv_of "$name")
	drv=$(k get pv "$pv" -o jsonpath='{.spec.csi.driver}')
	aff=$(k get pv "$pv" -o jsonpath='{.spec.nodeAffinity.required.nodeSelectorTerms[*].matchExpressions[*].key}={.spec.nodeAffinity.required.nodeSelectorTerms[*].matchExpressions[*].values[*]}')
	if [[ $drv == "$DRIVER" && $aff == "$TOPO_KEY=$NODE" ]]; then
		pass "PVC $name Bound to $pv (driver $drv, node affinity $aff, handle $(k get pv "$pv" -o jsonpath='{.spec.csi.volumeHandle}'))"
	else
		fail "PV $pv of $name: driver '$drv', node affinity '$aff' (want $DRIVER, $TOPO_KEY=$NODE)"
		return 1
	fi
}
snapshot() { # name pvc
	k apply -f - >/dev/null <<EOF
apiVersion: snapshot.storage.k8s.io/v1
kind: VolumeSnapshot
metadata:
  name: $1
  namespace: $NS
spec:
  volumeSnapshotClassName: $VSC
  source:
    persistentVolumeClaimName: $2
EOF
}

# kubelet's calls to the node plugin, and the guest paths it used.
POD_UID=0f1c4e2a-8d7b-4c4e-9a51-$(printf '%012d' $$)
kubelet() { # op pvc [args]
	local op=$1 name=$2 out
	shift 2
	out=$("$K8S_E2E" kubelet "$op" "127.0.0.1:$CSI_PORT" "$(pv_of "$name")" "$POD_UID" "$@" 2>>"$RUN/k8s_e2e.stderr") || {
		echo "kubelet $op $name: $(tail -1 "$RUN/k8s_e2e.stderr")"
		return 1
	}
	echo "$out"
}
mount_pvc() { # pvc: stage + publish as kubelet; prints the target path
	local name=$1 paths staging target
	# kubelet makes the staging dir and the target's parent (CSI spec).
	paths=$(kubelet paths "$name") || return 1
	staging=$(sed -n 's/^STAGING //p' <<<"$paths")
	target=$(sed -n 's/^TARGET //p' <<<"$paths")
	guest mkdir "$staging" "$(dirname "$target")" >/dev/null || return 1
	kubelet stage "$name" >"$RUN/stage-$name.out" || return 1
	kubelet publish "$name" >"$RUN/publish-$name.out" || return 1
	echo "$name" >>"$RUN/mounted"
	sed -n 's/^TARGET //p' "$RUN/publish-$name.out"
}

# ---- tests ------------------------------------------------------------------
# /metrics of both binaries now and after the tests (e2e/metrics-check: the
# series present and moving).
scrape() { python3 -c 'import sys, urllib.request; sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode())' "$1"; }
scrape "http://127.0.0.1:$CTL_HTTP/metrics" >"$RUN/controller-metrics.0" 2>&1 || true
scrape "http://127.0.0.1:$NODE_HTTP/metrics" >"$RUN/node-metrics.0" 2>&1 || true
# 1. WaitForFirstConsumer: nothing happens until the scheduler picks a node.
pvc data-1 256Mi
sleep 2
phase=$(k -n "$NS" get pvc data-1 -o jsonpath='{.status.phase}')
if [[ $phase == Pending && -z $(pv_of data-1) ]]; then
	pass "WaitForFirstConsumer PVC stays Pending without a selected node"
else
	fail "WaitForFirstConsumer PVC without a selected node: phase $phase, volume $(pv_of data-1)"
fi
select_node data-1
provision_check data-1 || true
PV1=$(pv_of data-1)
if [[ -n $PV1 ]]; then
	tv=$(k get thinvolumes -o jsonpath="{range .items[?(@.spec.csiName==\"$PV1\")]}{.metadata.name} {.spec.pool} {.spec.sizeBytes}{end}")
	if [[ -n $tv && $(awk '{print $2}' <<<"$tv") == "$POOL" ]]; then
		pass "ThinVolume for $PV1 on pool $POOL ($(awk '{print $3}' <<<"$tv") bytes)"
	else
		fail "ThinVolume for $PV1: '$tv' (want one on pool $POOL)"
	fi
fi

DATA=0
if [[ $NODE_SERVICE -eq 1 && -n $PV1 ]]; then
	if T1=$(mount_pvc data-1); then
		pass "kubelet NodeStage + NodePublish of data-1 at $T1"
		s1=$(guest write "$T1" synced 2048 sync | sed -n 's/^SUM //p') || true
		s2=$(guest write "$T1" unsynced 2048 nosync | sed -n 's/^SUM //p') || true
		if [[ -n $s1 && -n $s2 ]]; then
			ok "wrote 2 MiB with fsync and 2 MiB without into data-1 (inside the VM; read back below)"
			DATA=1
		else
			fail "writing into data-1 in the VM"
		fi
	else
		fail "kubelet NodeStage/NodePublish of data-1: $(tail -1 "$RUN/k8s_e2e.stderr")"
	fi
fi

# 2. A VolumeSnapshot becomes ReadyToUse.
snapshot snap-1 data-1
if k -n "$NS" wait --for=jsonpath='{.status.readyToUse}'=true volumesnapshot/snap-1 --timeout=120s >/dev/null 2>&1; then
	vsc=$(k -n "$NS" get volumesnapshot snap-1 -o jsonpath='{.status.boundVolumeSnapshotContentName}')
	pass "VolumeSnapshot snap-1 ReadyToUse (content $vsc, handle $(k get volumesnapshotcontent "$vsc" -o jsonpath='{.status.snapshotHandle}'), restoreSize $(k -n "$NS" get volumesnapshot snap-1 -o jsonpath='{.status.restoreSize}'))"
else
	fail "VolumeSnapshot snap-1 ReadyToUse: $(k -n "$NS" get volumesnapshot snap-1 -o jsonpath='{.status}')"
fi
if [[ $DATA -eq 1 ]]; then
	# The origin changes after the snapshot.
	n1=$(guest write "$T1" synced 1024 sync | sed -n 's/^SUM //p') || true
	n2=$(guest write "$T1" unsynced 1024 nosync | sed -n 's/^SUM //p') || true
fi

# 3. Restore from the snapshot, clone of the volume.
pvc restore-1 256Mi VolumeSnapshot snap-1
select_node restore-1
provision_check restore-1 || true
pvc clone-1 256Mi PersistentVolumeClaim data-1
select_node clone-1
provision_check clone-1 || true
if [[ $DATA -eq 1 ]]; then
	for name in restore-1 clone-1; do
		if t=$(mount_pvc "$name"); then
			got=$(guest sums "$t" synced unsynced) || true
			if [[ $name == restore-1 ]]; then want="SUM synced $s1 SUM unsynced $s2"; what="the data at snapshot time"; else want="SUM synced $n1 SUM unsynced $n2"; what="the origin's data at clone time"; fi
			if [[ $(tr '\n' ' ' <<<"$got" | sed 's/ $//') == "$want" ]]; then
				pass "$name holds exactly $what (fsynced and unsynced files)"
			else
				fail "$name data: got '$(tr '\n' ' ' <<<"$got")', want '$want'"
			fi
		else
			fail "kubelet NodeStage/NodePublish of $name: $(tail -1 "$RUN/k8s_e2e.stderr")"
		fi
	done
	got=$(guest sums "$T1" synced unsynced | tr '\n' ' ' | sed 's/ $//') || true
	if [[ $got == "SUM synced $n1 SUM unsynced $n2" ]]; then pass "data-1 holds its new data"; else fail "data-1 data: $got"; fi
fi

# An xfs volume and a raw block volume, staged and published as kubelet would.
if [[ $DATA -eq 1 ]]; then
	PVC_CLASS=$SC-xfs pvc xfs-1 512Mi # mkfs.xfs wants more than 300 MB
	select_node xfs-1
	if provision_check xfs-1 && t=$(mount_pvc xfs-1); then
		fst=$(guest fstype "$t" | sed -n 's/^FSTYPE //p') || true
		w=$(guest write "$t" f 1024 nosync | sed -n 's/^SUM //p') || true
		r=$(guest sums "$t" f | sed -n 's/^SUM f //p') || true
		if [[ $fst == xfs && -n $w && $w == "$r" ]]; then pass "xfs-1 is an xfs filesystem at $t; data reads back"; else fail "xfs-1: fstype '$fst', wrote '$w', read '$r'"; fi
	else
		fail "xfs-1 staged and published: $(tail -1 "$RUN/k8s_e2e.stderr")"
	fi
	# A NodeStage that fails (mkfs.xfs refuses less than 300 MB) leaves its
	# thin device inactive: kubelet does not call NodeUnstage after a final
	# error, and the volume must still be deletable later.
	PVC_CLASS=$SC-xfs pvc xfs-small 256Mi
	select_node xfs-small
	if provision_check xfs-small; then
		paths=$(kubelet paths xfs-small) || true
		guest mkdir "$(sed -n 's/^STAGING //p' <<<"$paths")" >/dev/null || true
		id=$(k get pv "$(pv_of xfs-small)" -o jsonpath='{.spec.csi.volumeHandle}' | sed 's/.*://')
		if kubelet stage xfs-small >/dev/null; then
			fail "NodeStage of a 256Mi xfs volume succeeded (mkfs.xfs needs more than 300 MB)"
			echo xfs-small >>"$RUN/mounted"
		else
			why=$(tail -1 "$RUN/k8s_e2e.stderr" | cut -c1-90)
			dm=$(guest dm) || true
			if [[ -n $id && "$dm " != *"-thin-$id "* ]]; then pass "a failed NodeStage ($why...) leaves thin device $id inactive"; else fail "after a failed NodeStage thin device $id is still active: $dm"; fi
		fi
	fi
	PVC_MODE=Block pvc block-1 64Mi
	select_node block-1
	if provision_check block-1 && t=$(mount_pvc block-1); then
		w=$(guest blkwrite "$t" 4096 | sed -n 's/^SUM //p') || true
		r=$(guest blksum "$t" 4096 | sed -n 's/^SUM //p') || true
		if [[ -n $w && $w == "$r" ]]; then pass "block-1 published as a raw block device at $t; 4 MiB written and read back"; else fail "block-1: wrote '$w', read '$r'"; fi
	else
		fail "block-1 staged and published: $(tail -1 "$RUN/k8s_e2e.stderr")"
	fi
fi

# 4. Expand: csi-resizer calls ControllerExpandVolume; the PV grows.
if [[ -n $PV1 ]]; then
	k -n "$NS" patch pvc data-1 --type merge -p '{"spec":{"resources":{"requests":{"storage":"512Mi"}}}}' >/dev/null
	grown=0
	for _ in $(seq 120); do
		cap=$(k get pv "$PV1" -o jsonpath='{.spec.capacity.storage}')
		[[ -n $cap && $(bytes "$cap") -ge $((512 << 20)) ]] && { grown=1; break; }
		sleep 0.5
	done
	tvsize=$(k get thinvolumes -o jsonpath="{range .items[?(@.spec.csiName==\"$PV1\")]}{.spec.sizeBytes}{end}")
	if [[ $grown -eq 1 && ${tvsize:-0} -ge $((512 << 20)) ]]; then
		pass "PVC data-1 expanded 256Mi -> 512Mi: PV capacity $cap, ThinVolume $tvsize bytes (ControllerExpandVolume through csi-resizer)"
	else
		fail "expand data-1: PV capacity ${cap:-?}, ThinVolume ${tvsize:-?} bytes; PVC conditions $(k -n "$NS" get pvc data-1 -o jsonpath='{.status.conditions}')"
	fi
	if [[ $DATA -eq 1 ]]; then
		# kubelet's part of an online expand: NodeExpandVolume on the published volume.
		if kubelet expand data-1 $((512 << 20)) >/dev/null; then
			size=$(guest df "$T1" | sed -n 's/^SIZE //p') || true
			if [[ ${size:-0} -gt $((400 << 20)) ]]; then pass "NodeExpandVolume: the filesystem of data-1 is now $size bytes (online)"; else fail "filesystem of data-1 after NodeExpandVolume: ${size:-?} bytes"; fi
		else
			fail "NodeExpandVolume data-1: $(tail -1 "$RUN/k8s_e2e.stderr")"
		fi
	fi
fi

if [[ $DATA -eq 1 ]]; then
	st=$(kubelet stats data-1 | sed -n 's/^STATS //p') || true
	total=$(sed -nE 's/.*total=([0-9]+).*/\1/p' <<<"$st")
	if [[ ${total:-0} -gt $((400 << 20)) && $st == *abnormal=false* ]]; then pass "NodeGetVolumeStats data-1: $st"; else fail "NodeGetVolumeStats data-1: '${st:-$(tail -1 "$RUN/k8s_e2e.stderr")}'"; fi
fi

# 5. CSIStorageCapacity for the node's segment reflects the pool:
#    data_total x overprovisioning (10) - sum of the volumes' sizes.
cap_ok=0
for _ in $(seq 60); do
	total=$(k get thinpool "$POOL" -o jsonpath='{.status.dataTotalBytes}')
	provisioned=$(k get thinvolumes -o jsonpath="{range .items[?(@.spec.pool==\"$POOL\")]}{.spec.sizeBytes}{\"\\n\"}{end}" | awk '{s += $1} END {print s + 0}')
	want=$((total * 10 - provisioned))
	caps=$(k -n "$NS" get csistoragecapacities -o jsonpath="{range .items[?(@.storageClassName==\"$SC\")]}{.nodeTopology.matchLabels}{\" \"}{.capacity}{\"\\n\"}{end}")
	line=$(grep -F "\"$TOPO_KEY\":\"$NODE\"" <<<"$caps" | head -1 || true)
	got=$(awk '{print $2}' <<<"$line")
	if [[ -n $got ]] && [[ $(bytes "$got") -eq $want ]]; then cap_ok=1; break; fi
	sleep 1
done
if [[ $cap_ok -eq 1 ]]; then
	pass "CSIStorageCapacity for {$TOPO_KEY: $NODE}, class $SC: $got = $total x 10 - $provisioned provisioned"
else
	fail "CSIStorageCapacity for $TOPO_KEY=$NODE: '${caps:-none}' (want $want = $total x 10 - $provisioned)"
fi

# ---- metrics and readiness (after the tests' RPCs) ---------------------------
for who in controller node; do
	port=$CTL_HTTP
	[[ $who == node ]] && port=$NODE_HTTP
	if ready=$(scrape "http://127.0.0.1:$port/readyz" 2>&1) && [[ $ready == *"ready"* && $ready != *"[-]"* ]]; then
		pass "csi-$who /readyz: $(grep -c '^\[+\]' <<<"$ready") conditions hold ($(grep '^\[+\]' <<<"$ready" | tr '\n' ' '))"
	else
		fail "csi-$who /readyz: $ready"
	fi
	scrape "http://127.0.0.1:$port/metrics" >"$RUN/$who-metrics.1" 2>&1 || true
	if out=$("$E2E/metrics-check" "$who" "$RUN/$who-metrics.0" "$RUN/$who-metrics.1" "$POOL" 2>&1); then
		pass "csi-$who /metrics: $out"
	else
		fail "csi-$who /metrics: $out (scrapes $RUN/$who-metrics.{0,1})"
	fi
done

# ---- benchmarks ---------------------------------------------------------------
if out=$("$K8S_E2E" bench-pvc "$NS" "$SC" "$NODE" "$BENCH_N" 2>>"$RUN/k8s_e2e.stderr"); then
	echo "$out" | tee -a "$log"
	pass "bench: $BENCH_N PVCs provisioned, bound and deleted"
else
	echo "$out"
	fail "bench pvc-bound: $(tail -2 "$RUN/k8s_e2e.stderr")"
fi
txn0=$(k get thinpool "$POOL" -o jsonpath='{.spec.lastAssignedTransaction}')
if out=$("$K8S_E2E" bench-snapshot "$NS" data-1 "$VSC" "$BENCH_N" 2>>"$RUN/k8s_e2e.stderr"); then
	echo "$out" | tee -a "$log"
	# The engine's part of the same snapshots: the node's commit time of the
	# N transactions after txn0 (the creates; the deletes come after them).
	grep -a 'transaction committed' "$RUN/logs/vm-$NODE.log" | sed -nE 's/.*txn=([0-9]+) micros=([0-9]+).*/\1 \2/p' |
		awk -v a="$txn0" -v n="$BENCH_N" '$1 > a && $1 <= a + n {print $2}' | sort -n |
		awk '{ v[NR] = $1 } END { if (NR) printf "BENCH volumesnapshot-engine thin-csi median_us=%d p90_us=%d n=%d\n", v[int(NR/2)+1], v[int((NR*9+9)/10)], NR }' | tee -a "$log"
	pass "bench: $BENCH_N VolumeSnapshots ready and deleted"
else
	echo "$out"
	fail "bench volumesnapshot-ready: $(tail -2 "$RUN/k8s_e2e.stderr")"
fi

# ---- delete everything ------------------------------------------------------
if [[ $DATA -eq 1 ]]; then
	ok=1
	mounted=$(sort -u "$RUN/mounted" 2>/dev/null | tr "\n" " " || true)
	for name in $mounted; do
		kubelet unpublish "$name" >/dev/null && kubelet unstage "$name" >/dev/null || ok=0
	done
	left=$(guest mounts | grep -c . || true)
	if [[ $ok -eq 1 && $left -eq 0 ]]; then pass "kubelet NodeUnpublish + NodeUnstage of $mounted; no mount left under /var/lib/kubelet"; else fail "unpublish/unstage: $(tail -1 "$RUN/k8s_e2e.stderr"); mounts left: $left"; fi
fi
k -n "$NS" delete volumesnapshot --all --wait=false >/dev/null 2>&1 || true
k -n "$NS" delete pvc --all --wait=false >/dev/null 2>&1 || true
gone=0
deadline=$(($(date +%s) + 120))
while [[ $(date +%s) -lt $deadline ]]; do
	counts="pvc=$(k -n "$NS" get pvc -o name | wc -l) pv=$(k get pv -o name | wc -l) volumesnapshot=$(k -n "$NS" get volumesnapshot -o name | wc -l) volumesnapshotcontent=$(k get volumesnapshotcontent -o name | wc -l) thinvolume=$(k get thinvolumes -o name | wc -l) thinsnapshot=$(k get thinsnapshots -o name | wc -l)"
	if [[ $counts == "pvc=0 pv=0 volumesnapshot=0 volumesnapshotcontent=0 thinvolume=0 thinsnapshot=0" ]]; then gone=1; break; fi
	sleep 0.5
done
if [[ $gone -eq 1 ]]; then pass "everything deleted: $counts"; else fail "left after deleting: $counts"; fi

# Ask the node to stop (test hook); the guest then lists the pool's thin devices.
k annotate thinpool "$POOL" test.thin.csi.io/stop=true --overwrite >/dev/null
for _ in $(seq 120); do kill -0 "$VM_PID" 2>/dev/null || break; sleep 1; done
if kill -0 "$VM_PID" 2>/dev/null; then
	fail "node VM $NODE did not stop after the stop hook (console $RUN/logs/vm-$NODE.log)"
else
	vm_rc=0
	wait "$VM_PID" || vm_rc=$?
	VM_PID=
	if [[ $vm_rc -eq 0 ]]; then ok "node VM $NODE stopped"; else fail "node VM $NODE: exit status $vm_rc (console $RUN/logs/vm-$NODE.log)"; fi
fi
devices=$(listed_devices "$RUN/logs/vm-$NODE.log")
if [[ $devices == "DEVICES " || $devices == "DEVICES" ]]; then
	pass "the pool on $NODE holds no thin device (kernel listing after csi-node stopped)"
else
	fail "thin devices left in the pool on $NODE: '${devices:-no listing}' (console $RUN/logs/vm-$NODE.log)"
fi

finish
