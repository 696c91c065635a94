# shellcheck shell=bash
# The real node: a cluster a user would recognise, on this machine.
# Sourced by e2e/suites/kubelet.sh and e2e/demo-real (after e2e/suites/lib.sh:
# suite_init, control_plane_up, start_bg, fail_now).
#
#   node_build           everything it needs, progress on stderr: csi-controller and
#                        csi-node (release), the Go tools (build-tools core node + sidecars,
#                        helm, kubectl, snapshot-controller), the guest modules, the images
#   node_cluster_up      control plane, snapshot CRDs, snapshot-controller and
#                        kube-scheduler on the host; the node VM (kubelet + containerd,
#                        the pool disk /dev/vda) joined and Ready
#   guest CMD...         a command of the node's command server (e2e/guest/kubelet-node.sh)
#   node_stop            the node's logs into $RUN/logs, then the VM stopped
#   helm_install [ARGS]  the chart, release $REL in namespace $NS, with e2e/node/values.yaml
#
# kubectl logs/exec do not work here (the apiserver cannot dial the node):
# test Pods report through their termination message and a hostPath
# directory the command server reads (/run/thin-csi-test).
# shellcheck source=../cluster/versions.env
. "$E2E/cluster/versions.env"
NODE_NAME=${NODE_NAME:-thin-node-0}
NS=${NS:-thin-csi}
REL=${REL:-thin-csi}
NODE_MEM=${NODE_MEM:-3072}
NODE_POOL_SIZE=${NODE_POOL_SIZE:-2G}
CHART=$REPO/charts/thin-csi

now_ms() { date +%s%3N; }
secs_since() { awk -v a="$1" -v b="$(now_ms)" 'BEGIN { printf "%.1f", (b - a) / 1000 }'; }
step() { echo "--- $*" >&2; }

node_build() {
	local t0 t
	t0=$(now_ms)
	ensure_build_deps
	vm_need_packages gcc libc6-dev libseccomp-dev pkg-config busybox-static
	# THIN_CSI_BINARIES=DIR: csi-controller and csi-node built elsewhere.
	if [[ -n ${THIN_CSI_BINARIES:-} ]]; then
		CSI_CONTROLLER=$THIN_CSI_BINARIES/csi-controller CSI_NODE=$THIN_CSI_BINARIES/csi-node
		[[ -x $CSI_CONTROLLER && -x $CSI_NODE ]] || fail_now "no csi-controller and csi-node in $THIN_CSI_BINARIES"
	else
		step "building csi-controller and csi-node (cargo, release)"
		t=$(now_ms)
		(cd "$REPO" && cargo build --release -q -p csi-controller --bin csi-controller -p csi-node --bin csi-node >&2) ||
			fail_now "cargo build of csi-controller and csi-node"
		step "  done in $(secs_since "$t") s"
		CSI_CONTROLLER=$CARGO_TARGET_DIR/release/csi-controller
		CSI_NODE=$CARGO_TARGET_DIR/release/csi-node
	fi
	step "building the Go tools into $THIN_CSI_CACHE/go-bin (cached by version; ~12 min on a fresh machine)"
	t=$(now_ms)
	"$E2E/cluster/build-tools" core node csi-provisioner csi-snapshotter csi-resizer snapshot-controller helm >&2 ||
		fail_now "build-tools"
	eval "$("$E2E/cluster/build-tools" --print-paths 2>/dev/null)"
	step "  done in $(secs_since "$t") s"
	mapfile -t NODE_MODULES < <("$E2E/vm/guest-module" overlay llc stp bridge veth) || fail_now "guest modules"
	step "packing the images (OCI archives: pause, busybox, the sidecars, csi-controller, csi-node)"
	t=$(now_ms)
	IMAGES=$RUN/images
	"$E2E/images/build" "$IMAGES" "$CSI_CONTROLLER" "$CSI_NODE" >"$RUN/images.list" || fail_now "images"
	step "  done in $(secs_since "$t") s ($(du -sh "$IMAGES" | cut -f1) of our own, the rest cached)"
	step "everything built in $(secs_since "$t0") s"
}

# A command of the node's command server (e2e/guest/kubelet-node.sh).
guest() { guest_cmd "$NODE_CMD_PORT" "$@"; }

k() { "$KUBECTL" --kubeconfig "$KUBECONFIG" "$@"; }

node_cluster_up() {
	local t0 t files=() img m
	t0=$(now_ms)
	step "starting the control plane (etcd, kube-apiserver, kube-controller-manager on loopback)"
	control_plane_up
	k apply -f "$SNAPSHOT_CRD_DIR" >"$RUN/logs/crds.log" 2>&1 &&
		k wait --for=condition=Established --timeout=60s -f "$SNAPSHOT_CRD_DIR" >>"$RUN/logs/crds.log" 2>&1 ||
		fail_now "snapshot CRDs (see $RUN/logs/crds.log)"
	start_bg snapshot-controller "$SNAPSHOT_CONTROLLER" --kubeconfig "$KUBECONFIG" --kube-api-qps 50 --kube-api-burst 100 --v 2
	SCHED_PORT=$(free_port)
	start_bg kube-scheduler "$KUBE_SCHEDULER" --kubeconfig "$KUBECONFIG" --authentication-kubeconfig "$KUBECONFIG" \
		--authorization-kubeconfig "$KUBECONFIG" --leader-elect=false --bind-address 127.0.0.1 --secure-port "$SCHED_PORT" --v 1
	step "booting the node VM (kubelet $K8S_VERSION, containerd $CONTAINERD_VERSION, runc $RUNC_VERSION, CNI $CNI_PLUGINS_VERSION)"
	t=$(now_ms)
	NODE_CMD_PORT=$(free_port)
	NODE_HTTP_PORT=$(free_port)
	CTL_HTTP_PORT=$(free_port)
	for m in "${NODE_MODULES[@]}"; do files+=(--file "$m:/lib/modules/extra/${m##*/}"); done
	while IFS='=' read -r _ img; do files+=(--file "$img:/guest/images/${img##*/}"); done <"$RUN/images.list"
	for b in cni-bridge cni-host-local cni-loopback; do
		m=$("$E2E/cluster/build-tools" --print-paths 2>/dev/null | sed -n "s/^$(echo $b | tr a-z- A-Z_)=//p")
		files+=(--file "$m:/opt/cni/bin/${b#cni-}")
	done
	truncate -s "$NODE_POOL_SIZE" "$RUN/pool.img"
	"$E2E/vm/boot" --bin "$KUBELET" --bin "$CONTAINERD" --bin "$CONTAINERD_SHIM_RUNC_V2" --bin "$CTR" --bin "$RUNC" --bin "$CSI_NODE" \
		"${files[@]}" --file "$RUN/guest.kubeconfig:/guest/kubeconfig" \
		--hostfwd "tcp:127.0.0.1:$NODE_CMD_PORT-:$NODE_CMD_PORT" \
		--hostfwd "tcp:127.0.0.1:$NODE_HTTP_PORT-:9809" --hostfwd "tcp:127.0.0.1:$CTL_HTTP_PORT-:9808" \
		--disk "$RUN/pool.img" --mem "$NODE_MEM" --timeout 7200 --log "$RUN/logs/vm-$NODE_NAME.log" \
		-- "$E2E/guest/kubelet-node.sh" "$NODE_NAME" "$NODE_CMD_PORT" /guest/images >/dev/null 2>&1 &
	NODE_VM_PID=$!
	local ready=
	for _ in $(seq 600); do
		kill -0 "$NODE_VM_PID" 2>/dev/null || break
		ready=$(k get node "$NODE_NAME" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null || true)
		[[ $ready == True ]] && break
		sleep 1
	done
	grep -a '^node: ' "$RUN/logs/vm-$NODE_NAME.log" | sed 's/^/    /' >&2 || true
	if [[ $ready != True ]]; then
		tail -40 "$RUN/logs/vm-$NODE_NAME.log" >&2
		fail_now "node $NODE_NAME Ready (VM log $RUN/logs/vm-$NODE_NAME.log)"
	fi
	NODE_READY_S=$(secs_since "$t")
	step "node $NODE_NAME Ready $NODE_READY_S s after boot; cluster up in $(secs_since "$t0") s"
}

node_stop() {
	[[ -n ${NODE_VM_PID:-} ]] || return 0
	local w
	if kill -0 "$NODE_VM_PID" 2>/dev/null; then
		for w in kubelet containerd; do guest log "$w" >"$RUN/logs/node-$w.log" 2>/dev/null || true; done
		guest stop >/dev/null 2>&1 || true
		for _ in $(seq 60); do kill -0 "$NODE_VM_PID" 2>/dev/null || break; sleep 1; done
		kill "$NODE_VM_PID" 2>/dev/null || true
	fi
	wait "$NODE_VM_PID" 2>/dev/null || true
	NODE_VM_PID=
}

# usage: helm_install [helm upgrade --install args...]
helm_install() {
	"$HELM" --kubeconfig "$KUBECONFIG" upgrade --install "$REL" "$CHART" -n "$NS" --create-namespace \
		-f "$E2E/node/values.yaml" --set-string "kubernetesAPI.port=$API_PORT" --wait --timeout 10m "$@"
}

# ---- workloads (namespace default) ---------------------------------------------
# usage: apply_pvc NAME SIZE [Filesystem|Block] [SOURCE_KIND SOURCE_NAME]
apply_pvc() {
	python3 - "$@" <<-'PY' | k apply -f - >/dev/null
	import json, sys
	a = sys.argv[1:] + [""] * 4
	name, size, mode, kind, src = a[0], a[1], a[2] or "Filesystem", a[3], a[4]
	spec = {"accessModes": ["ReadWriteOnce"], "storageClassName": "thin-csi", "volumeMode": mode,
	        "resources": {"requests": {"storage": size}}}
	if kind:
	    spec["dataSource"] = {"kind": kind, "name": src,
	                          **({"apiGroup": "snapshot.storage.k8s.io"} if kind == "VolumeSnapshot" else {})}
	print(json.dumps({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
	                  "metadata": {"name": name, "namespace": "default"}, "spec": spec}))
	PY
}
# A busybox Pod running SCRIPT (sh -c) with PVC at /data (or, with `block`,
# at /dev/xvda) and the node's /run/thin-csi-test at /sig.
# usage: apply_pod NAME PVC SCRIPT [block]
apply_pod() {
	python3 - "$@" <<-'PY' | k apply -f - >/dev/null
	import json, sys
	name, pvc, script = sys.argv[1:4]
	block = len(sys.argv) > 4 and sys.argv[4] == "block"
	c = {"name": "c", "image": "thin-csi.test/busybox:dev", "imagePullPolicy": "Never",
	     "command": ["/bin/sh", "-c", script],
	     "volumeMounts": [{"name": "sig", "mountPath": "/sig"}]}
	if block:
	    c["volumeDevices"] = [{"name": "data", "devicePath": "/dev/xvda"}]
	else:
	    c["volumeMounts"].append({"name": "data", "mountPath": "/data"})
	print(json.dumps({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "default"},
	    "spec": {"restartPolicy": "Never", "terminationGracePeriodSeconds": 1, "containers": [c],
	             "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": pvc}},
	                         {"name": "sig", "hostPath": {"path": "/run/thin-csi-test", "type": "Directory"}}]}}))
	PY
}
pod_phase() { k get pod "$1" -o jsonpath='{.status.phase}' 2>/dev/null || true; }
# usage: wait_pod NAME PHASE[|PHASE] TIMEOUT_S; 0 when it got there
wait_pod() {
	local p
	for _ in $(seq $(($3 * 5))); do
		p=$(pod_phase "$1")
		[[ "|$2|" == *"|$p|"* ]] && return 0
		[[ $p == Failed && $2 != *Failed* ]] && return 1
		sleep 0.2
	done
	return 1
}
pod_message() { k get pod "$1" -o jsonpath='{.status.containerStatuses[0].state.terminated.message}'; }
# usage: wait_sig NAME TIMEOUT_S: the node's /run/thin-csi-test/NAME exists (its content on stdout)
wait_sig() {
	for _ in $(seq $(($2 * 2))); do
		guest cat "$1" 2>/dev/null && return 0
		sleep 0.5
	done
	return 1
}
snapshot_ready() { [[ $(k get volumesnapshot "$1" -o jsonpath='{.status.readyToUse}' 2>/dev/null) == true ]]; }
apply_snapshot() { # NAME PVC
	printf '{"apiVersion":"snapshot.storage.k8s.io/v1","kind":"VolumeSnapshot","metadata":{"name":"%s","namespace":"default"},"spec":{"volumeSnapshotClassName":"thin-csi","source":{"persistentVolumeClaimName":"%s"}}}' "$1" "$2" |
		k apply -f - >/dev/null
}
# BENCH line of N microsecond samples: usage: bench_line OP TOOL SAMPLE...
bench_line() {
	local op=$1 tool=$2
	shift 2
	printf '%s\n' "$@" | sort -n | awk -v op="$op" -v tool="$tool" '{ v[NR] = $1 } END {
		m = v[int((NR + 1) / 2)]; p = v[int(NR * 0.9 + 0.999)]; if (p == "") p = v[NR]
		printf "BENCH %s %s median_us=%d p90_us=%d n=%d\n", op, tool, m, p, NR }'
}
