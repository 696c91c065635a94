#!/usr/bin/env bash
# api-faults: the API faults of design.md ("a write that fails, times out,
# or takes effect without its reply arriving") injected against the real
# kube-apiserver. thin-apiproxy (e2e/apiproxy) sits between the apiserver
# and both csi-controller (on the host) and csi-node (in a qemu VM, reaching
# the proxy at 10.0.2.2); for each write on the protocol's path — the pool
# record write that allocates, the ThinVolume/ThinSnapshot create, ready
# status and delete, the node's status patch after a commit and after an
# abort — one scenario injects `lose`, `fail` or `timeout` and drives the
# CSI call, retried as a sidecar would, to its final answer (api-faults,
# e2e/apiproxy/src/bin/api_faults.rs). At the end the node's kernel devices
# are compared with the objects.
set -euo pipefail
source "$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/lib.sh"
ensure_build_deps

log=$(mktemp)
RUN=$(mktemp -d "${TMPDIR:-/tmp}/thin-csi-api-faults.XXXXXX")
VM_PID=
CTL_PID=
cleanup() {
	local rc=$?
	[[ -n $VM_PID ]] && kill "$VM_PID" 2>/dev/null || true
	[[ -n $CTL_PID ]] && kill "$CTL_PID" 2>/dev/null || true
	"$E2E/cluster/down" "$RUN" >/dev/null 2>&1 || true # also stops the proxy (its pid file is in $RUN/pids)
	if [[ $rc -eq 0 ]]; then rm -rf "$RUN"; else echo "api-faults: run dir kept for its logs: $RUN" >&2; fi
	rm -f "$log"
}
trap cleanup EXIT
t_start=$(date +%s)

bail() { # a harness step failed: the checks that would follow cannot run
	echo "FAIL $*" | tee -a "$log"
	summarize api-faults "$log"
	exit 1
}

# One release build for all three: the proxy and the driver reuse the
# binaries' dependencies instead of a second (debug) build of kube.
echo "building csi-node, csi-controller, thin-apiproxy (release)" >&2
(cd "$REPO" && cargo build -q --release -p csi-node --bin csi-node -p csi-controller --bin csi-controller -p thin-apiproxy --bin thin-apiproxy --bin api-faults >&2) || bail "build"
CSI_NODE=$CARGO_TARGET_DIR/release/csi-node
CSI_CONTROLLER=$CARGO_TARGET_DIR/release/csi-controller
PROXY=$CARGO_TARGET_DIR/release/thin-apiproxy
DRIVER=$CARGO_TARGET_DIR/release/api-faults

t0=$(date +%s)
env_out=$(THIN_CSI_RUN=$RUN "$E2E/cluster/up") || bail "control plane up (logs in $RUN/logs)"
eval "$env_out"
. "$RUN/cluster.env"
echo "--- control plane up ($(($(date +%s) - t0)) s, run dir $RUN)" | tee -a "$log"
export KUBECONFIG=$RUN/admin.kubeconfig # the driver reads the truth directly

# The proxy's serving cert, signed with the cluster's CA: the host sees the
# proxy at 127.0.0.1, a qemu guest at 10.0.2.2.
PKI=$RUN/pki
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$PKI/apiproxy.key" 2>/dev/null
openssl req -new -key "$PKI/apiproxy.key" -subj "/CN=thin-apiproxy" -out "$PKI/apiproxy.csr" 2>/dev/null
printf '%s\n' "basicConstraints=CA:FALSE" "keyUsage=critical,digitalSignature,keyEncipherment" \
	"extendedKeyUsage=serverAuth" "subjectAltName=IP:127.0.0.1,IP:10.0.2.2" >"$PKI/apiproxy.ext"
openssl x509 -req -in "$PKI/apiproxy.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" -CAcreateserial -days 1 -sha256 \
	-extfile "$PKI/apiproxy.ext" -out "$PKI/apiproxy.crt" 2>/dev/null || bail "signing the proxy's serving cert"

# The proxy forwards with the harness's admin client cert. Its pid file
# lets e2e/cluster/down stop it (its command line names the run dir).
setsid "$PROXY" --upstream "$API_SERVER" --ca "$PKI/ca.crt" --cert "$PKI/apiproxy.crt" --key "$PKI/apiproxy.key" \
	--client-cert "$PKI/admin.crt" --client-key "$PKI/admin.key" --ports-file "$RUN/apiproxy.ports" \
	>"$RUN/logs/apiproxy.log" 2>&1 </dev/null &
echo $! >"$RUN/pids/apiproxy.pid"
for _ in $(seq 100); do [[ -s $RUN/apiproxy.ports ]] && break; sleep 0.1; done
[[ -s $RUN/apiproxy.ports ]] || bail "the proxy did not start (log $RUN/logs/apiproxy.log)"
read -r PROXY_PORT CONTROL_PORT <"$RUN/apiproxy.ports"
# Same identity and CA, the proxy's address.
sed "s#https://127.0.0.1:$API_PORT#https://127.0.0.1:$PROXY_PORT#" "$RUN/admin.kubeconfig" >"$RUN/proxy.kubeconfig"
sed "s#https://10.0.2.2:$API_PORT#https://10.0.2.2:$PROXY_PORT#" "$RUN/guest.kubeconfig" >"$RUN/guest-proxy.kubeconfig"
grep -q ":$PROXY_PORT" "$RUN/proxy.kubeconfig" && grep -q ":$PROXY_PORT" "$RUN/guest-proxy.kubeconfig" || bail "proxy kubeconfigs"
if curl -fsS --max-time 5 --cacert "$PKI/ca.crt" "https://127.0.0.1:$PROXY_PORT/readyz" >/dev/null; then
	echo "--- thin-apiproxy on 127.0.0.1:$PROXY_PORT forwards to $API_SERVER (control 127.0.0.1:$CONTROL_PORT)" | tee -a "$log"
else
	bail "the proxy does not forward /readyz (log $RUN/logs/apiproxy.log)"
fi

# csi-controller through the proxy: it registers the CRDs and takes the Lease there.
CSI_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$CSI_CONTROLLER" --kubeconfig "$RUN/proxy.kubeconfig" --identity api-faults --csi-endpoint "tcp://127.0.0.1:$CSI_PORT" \
	--wait-timeout 60 >"$RUN/logs/csi-controller.log" 2>&1 &
CTL_PID=$!
for _ in $(seq 300); do grep -q 'leading' "$RUN/logs/csi-controller.log" && break; sleep 0.2; done
grep -q 'leading' "$RUN/logs/csi-controller.log" || bail "csi-controller did not lead (log $RUN/logs/csi-controller.log)"

# csi-node in a VM, its API through the proxy.
truncate -s 1G "$RUN/vm-a.img"
"$E2E/vm/boot" --bin "$CSI_NODE" --file "$RUN/guest-proxy.kubeconfig:/guest/kubeconfig" --disk "$RUN/vm-a.img" \
	--net --mem 1024 --timeout 1800 --log "$RUN/logs/vm-a.log" -- "$E2E/guest/node.sh" vm-a >/dev/null 2>&1 &
VM_PID=$!

checked "$log" "api-faults pool" "$DRIVER" pool vm-a 2>>"$RUN/api-faults.stderr"
POOL=$(awk '/^POOL vm-a /{print $3}' "$log" | tail -1)
[[ -n $POOL ]] || bail "vm-a registered no pool (console $RUN/logs/vm-a.log)"

t0=$(date +%s)
checked "$log" "api-faults run" "$DRIVER" run "127.0.0.1:$CONTROL_PORT" "$CSI_PORT" "$POOL" vm-a "$RUN/state" ${API_FAULTS_ONLY:+"$API_FAULTS_ONLY"} \
	2>>"$RUN/api-faults.stderr"
echo "--- scenarios took $(($(date +%s) - t0)) s; injections:" | tee -a "$log"
sed 's/^INJECT /---   /;t;d' "$RUN/logs/apiproxy.log" | tee -a "$log"
checked "$log" "api-faults settled" "$DRIVER" settled "$POOL" 2>>"$RUN/api-faults.stderr"

# Stop the node (directly, not through the proxy); it lists its devices.
"$DRIVER" stop "$POOL" 2>>"$RUN/api-faults.stderr" || bail "asking the node to stop"
rc=0
for _ in $(seq 180); do kill -0 "$VM_PID" 2>/dev/null || break; sleep 1; done
if kill -0 "$VM_PID" 2>/dev/null; then bail "the node VM did not stop within 180 s (console $RUN/logs/vm-a.log)"; fi
wait "$VM_PID" || rc=$?
VM_PID=
[[ $rc -eq 0 ]] || echo "FAIL node VM: exit status $rc (console $RUN/logs/vm-a.log)" | tee -a "$log"
devices=$(listed_devices "$RUN/logs/vm-a.log")
[[ -n $devices ]] || bail "the node listed no devices (console $RUN/logs/vm-a.log)"
checked "$log" "api-faults final" "$DRIVER" final "$POOL" "$RUN/state" "$devices" 2>>"$RUN/api-faults.stderr"

echo "--- api-faults took $(($(date +%s) - t_start)) s" | tee -a "$log"
summarize api-faults "$log"
