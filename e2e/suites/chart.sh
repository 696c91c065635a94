#!/usr/bin/env bash
# chart: the Helm chart (charts/thin-csi) against the real apiserver
# (e2e/cluster/up): helm lint; helm template with default and non-default
# values, applied with server-side dry run; three wrong values refused by
# values.schema.json with a message naming them; the rendered RBAC checked
# with SubjectAccessReviews (kubectl auth can-i --as the chart's accounts);
# the ValidatingAdmissionPolicy refusing a pool status write for another
# node and allowing one for the token's own node.
set -euo pipefail
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"

CHART=$REPO/charts/thin-csi
NS=thin-csi
REL=t
suite_init chart

eval "$("$E2E/cluster/build-tools" --print-paths)"
if [[ ! -x $HELM || ! -x $KUBECTL ]]; then
	"$E2E/cluster/build-tools" helm kubectl core snapshot-crds >&2 || { fail "build-tools helm kubectl"; finish; }
	eval "$("$E2E/cluster/build-tools" --print-paths)"
fi
helm() { "$HELM" "$@"; }

# ---- lint and schema (no cluster) -------------------------------------------
if out=$(helm lint --strict "$CHART" 2>&1); then pass "helm lint --strict: $(tail -1 <<<"$out")"; else fail "helm lint: $out"; fi

# Each wrong value must be refused, and the message must name it.
refused() { # what expected-text --set...
	local what=$1 want=$2 out
	shift 2
	if out=$(helm template "$REL" "$CHART" -n "$NS" "$@" 2>&1); then
		fail "schema accepted $what"
	elif grep -q -- "$want" <<<"$out"; then
		pass "schema refuses $what: $(grep -m1 -- "$want" <<<"$out" | sed 's/^ *//' | cut -c1-160)"
	else
		fail "schema refused $what without naming it: $out"
	fi
}
refused "controller.replicas=two" "controller.replicas" --set controller.replicas=two
refused "storageClass.fsType=btrfs" "storageClass.fsType" --set storageClass.fsType=btrfs
refused "a pool device outside /dev" "node.pools.0.device" --set 'node.pools[0].name=pool0' --set 'node.pools[0].device=vdb'

# ---- the real apiserver -----------------------------------------------------
control_plane_up
k() { "$KUBECTL" --kubeconfig "$KUBECONFIG" "$@"; }
k apply -f "$SNAPSHOT_CRD_DIR" >"$RUN/logs/crds.log" 2>&1 && k wait --for=condition=Established --timeout=60s -f "$SNAPSHOT_CRD_DIR" >>"$RUN/logs/crds.log" 2>&1 ||
	{ fail "snapshot CRDs (see $RUN/logs/crds.log)"; finish; }
k create namespace "$NS" >/dev/null

# Server-side dry run of a rendering: CRDs first (for real: the rest names
# their kinds), then everything else.
dry_run() { # label helm-args...
	local label=$1 out
	shift
	helm template "$REL" "$CHART" -n "$NS" --include-crds "$@" >"$RUN/$label.yaml" 2>"$RUN/logs/$label.err" || { fail "helm template $label: $(cat "$RUN/logs/$label.err")"; return 1; }
	local kinds
	kinds=$(grep -c '^kind:' "$RUN/$label.yaml")
	if out=$(k apply --server-side --dry-run=server -n "$NS" -f "$RUN/$label.yaml" 2>&1); then
		pass "helm template ($label): $kinds objects accepted by the apiserver (server-side dry run)"
	else
		fail "server-side dry run ($label): $out"
	fi
}
# The CRDs for real, so the dry run of the ThinPool-naming policy and the
# chart's objects is checked against served kinds.
k apply --server-side -f "$CHART/crds/thin.csi.io.yaml" >/dev/null && k wait --for=condition=Established --timeout=60s -f "$CHART/crds/thin.csi.io.yaml" >/dev/null ||
	{ fail "apply the chart's CRDs"; finish; }
dry_run defaults
cat >"$RUN/values-custom.yaml" <<'YAML'
kubernetesAPI: {host: 10.0.2.2, port: "6443"}
logFormat: json
controller:
  replicas: 3
  hostNetwork: true
  podDisruptionBudget: {enabled: true, maxUnavailable: 2}
node:
  hostNetwork: false
  registrar: {enabled: true}
  pools:
    - {name: fast, device: /dev/nvme1n1, nodeSelector: {disk: nvme}}
    - {name: slow, device: /dev/sdb, nodeSelector: {disk: hdd}}
storageClass: {name: thin-xfs, fsType: xfs, isDefault: true, overprovisioning: "2.5", reclaimPolicy: Retain}
volumeSnapshotClass: {name: thin-retain, deletionPolicy: Retain}
YAML
dry_run custom -f "$RUN/values-custom.yaml"
if grep -q 'KUBERNETES_SERVICE_HOST' "$RUN/custom.yaml" && [[ $(grep -c '^kind: DaemonSet' "$RUN/custom.yaml") -eq 2 ]] &&
	grep -q 'node-driver-registrar' "$RUN/custom.yaml" && grep -q -- '--no-plugin-registration' "$RUN/custom.yaml"; then
	pass "non-default values rendered: API host for every container, 2 pool DaemonSets, node-driver-registrar in place of the own registration"
else
	fail "non-default values not rendered as set (see $RUN/custom.yaml)"
fi

# ---- RBAC: the rendered roles, for real, then SubjectAccessReviews ----------
k apply --server-side -n "$NS" -f "$RUN/defaults.yaml" >"$RUN/logs/apply.log" 2>&1 || { fail "apply the rendered chart: $(tail -3 "$RUN/logs/apply.log")"; finish; }
NODE_SA=system:serviceaccount:$NS:$REL-thin-csi-node
CTL_SA=system:serviceaccount:$NS:$REL-thin-csi-controller
can() { k auth can-i --as "$1" "${@:2}" 2>/dev/null || true; }
sar() { # want(yes|no) who what verb resource [flags]
	local want=$1 who=$2 what=$3
	shift 3
	local got
	got=$(can "$who" "$@")
	if [[ $got == "$want" ]]; then pass "SubjectAccessReview: $what: $got"; else fail "SubjectAccessReview: $what: got '$got', want $want"; fi
}
sar no "$NODE_SA" "node account cannot update a pool object's spec" update thinpools.thin.csi.io
sar no "$NODE_SA" "node account cannot patch a pool object's spec" patch thinpools.thin.csi.io
sar yes "$NODE_SA" "node account can patch pool status" patch thinpools.thin.csi.io --subresource=status
sar no "$NODE_SA" "node account cannot delete pool objects" delete thinpools.thin.csi.io
sar no "$CTL_SA" "controller account cannot create pods/exec" create pods --subresource=exec -n "$NS"
sar no "$CTL_SA" "controller account cannot read secrets" get secrets -n "$NS"
sar no "$CTL_SA" "controller account cannot list secrets cluster-wide" list secrets -A
sar yes "$CTL_SA" "controller account can update pool records" update thinpools.thin.csi.io

# ---- the admission policy: a node writes only its own pool's status ---------
# The policy is enforced once the apiserver has loaded it (asynchronously).
cat <<'YAML' | k apply -f - >/dev/null
apiVersion: thin.csi.io/v1alpha1
kind: ThinPool
metadata: {name: chart-pool-b}
spec: {node: node-b, poolName: pool0, poolUuid: 00000000-0000-0000-0000-00000000000b, nextDeviceId: 0, lastAssignedTransaction: 0}
YAML
as_node() { # node-name: patch chart-pool-b's status as the node account with a token bound to that node
	k --as "$NODE_SA" --as-user-extra "authentication.kubernetes.io/node-name=$1" \
		patch thinpool chart-pool-b --subresource=status --type=merge -p '{"status":{"lastError":"written by '"$1"'"}}' 2>&1
}
denied=
for _ in $(seq 40); do
	out=$(as_node node-a) && { sleep 0.5; continue; }
	denied=$out
	break
done
if [[ -n $denied && $denied == *"own node's pool object"* && $denied == *node-a* && $denied == *node-b* ]]; then
	pass "admission policy refuses node-a's write of node-b's pool status: $(grep -o "the node plugin may.*" <<<"$denied" | cut -c1-150)"
else
	fail "admission policy did not refuse node-a's status write for node-b's pool: ${denied:-accepted: $out}"
fi
if out=$(as_node node-b); then
	pass "admission policy allows node-b to write its own pool's status"
else
	fail "node-b's own status write refused: $out"
fi
if out=$(k --as "$NODE_SA" patch thinpool chart-pool-b --subresource=status --type=merge -p '{"status":{"lastError":"x"}}' 2>&1); then
	fail "a node-account write without a node-bound token was accepted"
elif [[ $out == *"ValidatingAdmissionPolicy '$REL-thin-csi-node-own-pool'"* ]]; then
	pass "a node-account write without a node-bound token is refused by the policy"
else
	fail "a node-account write without a node-bound token refused, but not by the policy: $out"
fi

finish
