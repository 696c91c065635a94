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
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"
ensure_build_deps
suite_init api-faults
t_start=$(date +%s)

# One release build for all three: the proxy and the driver reuse the
# binaries' dependencies instead of a second (debug) build of kube.
echo "building csi-node, csi-controller, thin-apiproxy (release)" >&2
(cd "$REPO" && cargo build -q --release -p csi-node --bin csi-node -p csi-controller --bin csi-controller -p thin-apiproxy --bin thin-apiproxy --bin api-faults >&2) || fail_now "build"
CSI_NODE=$CARGO_TARGET_DIR/release/csi-node
CSI_CONTROLLER=$CARGO_TARGET_DIR/release/csi-controller
PROXY=$CARGO_TARGET_DIR/release/thin-apiproxy
DRIVER=$CARGO_TARGET_DIR/release/api-faults

control_plane_up # KUBECONFIG: the driver reads the truth directly

# The proxy's serving cert, signed with the cluster's CA: the host sees the
# proxy at 127.0.0.1, a qemu guest at 10.0.2.2.
PKI=$RUN/pki
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$PKI/apiproxy.key" 2>/dev/null
openssl req -new -key "$PKI/apiproxy.key" -subj "/CN=thin-apiproxy" -out "$PKI/apiproxy.csr" 2>/dev/null
printf '%s\n' "basicConstraints=CA:FALSE" "keyUsage=critical,digitalSignature,keyEncipherment" \
	"extendedKeyUsage=serverAuth" "subjectAltName=IP:127.0.0.1,IP:10.0.2.2" >"$PKI/apiproxy.ext"
openssl x509 -req -in "$PKI/apiproxy.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" -CAcreateserial -days 1 -sha256 \
	-extfile "$PKI/apiproxy.ext" -out "$PKI/apiproxy.crt" 2>/dev/null || fail_now "signing the proxy's serving cert"

# The proxy forwards with the harness's admin client cert. Its pid file
# lets e2e/cluster/down stop it (its command line names the run dir).
setsid "$PROXY" --upstream "$API_SERVER" --ca "$PKI/ca.crt" --cert "$PKI/apiproxy.crt" --key "$PKI/apiproxy.key" \
	--client-cert "$PKI/admin.crt" --client-key "$PKI/admin.key" --ports-file "$RUN/apiproxy.ports" \
	>"$RUN/logs/apiproxy.log" 2>&1 </dev/null &
echo $! >"$RUN/pids/apiproxy.pid"
for _ in $(seq 100); do [[ -s $RUN/apiproxy.ports ]] && break; sleep 0.1; done
[[ -s $RUN/apiproxy.ports ]] || fail_now "the proxy did not start (log $RUN/logs/apiproxy.log)"
read -r PROXY_PORT CONTROL_PORT <"$RUN/apiproxy.ports"
# Same identity and CA, the proxy's address.
sed "s#https://127.0.0.1:$API_PORT#https://127.0.0.1:$PROXY_PORT#" "$RUN/admin.kubeconfig" >"$RUN/proxy.kubeconfig"
sed "s#https://10.0.2.2:$API_PORT#https://10.0.2.2:$PROXY_PORT#" "$RUN/guest.kubeconfig" >"$RUN/guest-proxy.kubeconfig"
grep -q ":$PROXY_PORT" "$RUN/proxy.kubeconfig" && grep -q ":$PROXY_PORT" "$RUN/guest-proxy.kubeconfig" || fail_now "proxy kubeconfigs"
if curl -fsS --max-time 5 --cacert "$PKI/ca.crt" "https://127.0.0.1:$PROXY_PORT/readyz" >/dev/null; then
	echo "--- thin-apiproxy on 127.0.0.1:$PROXY_PORT forwards to $API_SERVER (control 127.0.0.1:$CONTROL_PORT)" | tee -a "$log"
else
	fail_now "the proxy does not forward /readyz (log $RUN/logs/apiproxy.log)"
fi

# csi-controller through the proxy: it registers the CRDs and takes the Lease there.
CSI_PORT=$(free_port)
CONTROLLER_KUBECONFIG=$RUN/proxy.kubeconfig start_controller api-faults "tcp://127.0.0.1:$CSI_PORT" --wait-timeout 60

# csi-node in a VM, its API through the proxy.
truncate -s 1G "$RUN/vm-a.img"
start_bg vm-a-boot "$E2E/vm/boot" --bin "$CSI_NODE" --file "$RUN/guest-proxy.kubeconfig:/guest/kubeconfig" --disk "$RUN/vm-a.img" \
	--net --mem 1024 --timeout 1800 --log "$RUN/logs/vm-a.log" -- "$E2E/guest/node.sh" vm-a
VM_PID=$BG_PID

run_driver "api-faults pool" "$DRIVER" pool vm-a
POOL=$(awk '/^POOL vm-a /{print $3}' "$log" | tail -1)
[[ -n $POOL ]] || fail_now "vm-a registered no pool (console $RUN/logs/vm-a.log)"

t0=$(date +%s)
run_driver "api-faults run" "$DRIVER" run "127.0.0.1:$CONTROL_PORT" "$CSI_PORT" "$POOL" vm-a "$RUN/state" ${API_FAULTS_ONLY:+"$API_FAULTS_ONLY"}
echo "--- scenarios took $(($(date +%s) - t0)) s; injections:" | tee -a "$log"
sed 's/^INJECT /---   /;t;d' "$RUN/logs/apiproxy.log" | tee -a "$log"
run_driver "api-faults settled" "$DRIVER" settled "$POOL"

# Stop the node (directly, not through the proxy); it lists its devices.
"$DRIVER" stop "$POOL" 2>>"$RUN/logs/api-faults.stderr" || fail_now "asking the node to stop"
rc=0
for _ in $(seq 180); do kill -0 "$VM_PID" 2>/dev/null || break; sleep 1; done
if kill -0 "$VM_PID" 2>/dev/null; then fail_now "the node VM did not stop within 180 s (console $RUN/logs/vm-a.log)"; fi
wait "$VM_PID" || rc=$?
VM_PID=
[[ $rc -eq 0 ]] || echo "FAIL node VM: exit status $rc (console $RUN/logs/vm-a.log)" | tee -a "$log"
devices=$(listed_devices "$RUN/logs/vm-a.log")
[[ -n $devices ]] || fail_now "the node listed no devices (console $RUN/logs/vm-a.log)"
run_driver "api-faults final" "$DRIVER" final "$POOL" "$RUN/state" "$devices"

echo "--- api-faults took $(($(date +%s) - t_start)) s" | tee -a "$log"
summarize api-faults "$log"
