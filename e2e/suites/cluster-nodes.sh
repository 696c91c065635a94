# shellcheck shell=bash
# The node half of the cluster suite, sourced by cluster.sh once the control
# plane is up (uses RUN, log, KUBECONFIG): two qemu VMs, each running
# csi-node on its own pool and reaching the apiserver through qemu user
# networking; the controller side (node_e2e) drives them through the API.

node_e2e_step() { run_driver "node_e2e $1" "$NODE_E2E" "$@"; }

# Boots one node VM in the background; its console goes to $RUN/logs/vm-TAG.log
# (TAG defaults to NODE; a later boot of the same disk takes another tag).
# CSI_PORT (optional): csi-node also serves its Node service there,
# forwarded to the host's loopback. NODE_VM_TIMEOUT and NODE_VM_RESTARTS
# (set by node_tests from the crash rounds) bound the VM's life and how
# often csi-node may die in it; NODE_GUEST_SCRIPT replaces e2e/guest/node.sh.
start_node_vm() {
	local node=$1 tag=${2:-$1} csi_port=${3:-0} fwd=()
	truncate -s 1G "$RUN/$node.img" # creates it on the first boot; keeps the pool after
	[[ $csi_port == 0 ]] || fwd=(--hostfwd "tcp:127.0.0.1:$csi_port-:$csi_port")
	"$E2E/vm/boot" --bin "$CSI_NODE" --file "$RUN/guest.kubeconfig:/guest/kubeconfig" --disk "$RUN/$node.img" \
		--net "${fwd[@]}" --mem 1024 --timeout "${NODE_VM_TIMEOUT:-1800}" --log "$RUN/logs/vm-$tag.log" \
		-- "${NODE_GUEST_SCRIPT:-$E2E/guest/node.sh}" "$node" "$csi_port" "${NODE_VM_RESTARTS:-30}" >/dev/null 2>&1 &
	NODE_VM_PIDS+=($!)
	NODE_VM_NAMES+=("$tag")
}

stop_node_vms() {
	local pid
	for pid in "${NODE_VM_PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
	NODE_VM_PIDS=() NODE_VM_NAMES=()
}

# Stops the node VMs through pool object $1's stop hook (waiting up to $3 s)
# and checks the kernel's own device listing in console log $2 is empty;
# $4 is the PASS line's text.
check_pool_empty_at_stop() {
	local pool=$1 console=$2 timeout=$3 pass_text=$4 devices
	"$KUBECTL" annotate thinpool "$pool" test.thin.csi.io/stop=true >/dev/null
	wait_node_vms "$timeout"
	devices=$(listed_devices "$console")
	if [[ -z $devices ]]; then
		echo "FAIL the node listed no devices after stopping (log $console)" | tee -a "$log"
	elif [[ $devices == "DEVICES" || $devices == "DEVICES " ]]; then
		echo "PASS $pass_text" | tee -a "$log"
	else
		echo "FAIL devices left in the pool: ${devices:0:200}" | tee -a "$log"
	fi
}

# Waits (up to $1 s) for every node VM to finish on its own (after the stop
# hook). A VM still running then, or whose guest script exited non-zero, is
# a FAIL (the harness's verdict; the checks are node_e2e's).
wait_node_vms() {
	local deadline=$(($(date +%s) + $1)) i pid name rc
	for i in "${!NODE_VM_PIDS[@]}"; do
		pid=${NODE_VM_PIDS[$i]} name=${NODE_VM_NAMES[$i]}
		while kill -0 "$pid" 2>/dev/null && [[ $(date +%s) -lt $deadline ]]; do sleep 1; done
		if kill -0 "$pid" 2>/dev/null; then
			echo "FAIL node VM $name did not stop within $1 s (console $RUN/logs/vm-$name.log)" | tee -a "$log"
			continue
		fi
		rc=0
		wait "$pid" || rc=$?
		if [[ $rc -eq 0 ]]; then
			echo "--- node VM $name stopped" | tee -a "$log"
		else
			echo "FAIL node VM $name: exit status $rc (console $RUN/logs/vm-$name.log)" | tee -a "$log"
		fi
	done
	stop_node_vms
}

# The node kill points, in the order a transaction meets them (unreported:
# after the kernel work, here a commit, before the status write); each runs
# NODE_CRASH_ROUNDS times, and so do crash-abort (an abort, then killed
# before the status write) and, on vm-b with the controller matrix,
# expand-resized (NodeExpandVolume between the device resize and the
# filesystem grow).
NODE_BOUNDARIES="start suspended posted-0 posted-1 txn-set resumed unreported"

# usage: node_tests MODE   (MODE: test | bench)
node_tests() {
	local mode=$1 a b ledger=$RUN/ledger-a boundary r
	local node_rounds=${NODE_CRASH_ROUNDS:-1} ctl_rounds=${CTL_CRASH_ROUNDS:-1} node_port
	# vm-a's csi-node dies 8 times per node round (7 boundaries, crash-abort),
	# vm-b's once (expand-resized), besides the fixed tests; the VMs live
	# through every round of both matrices.
	NODE_VM_RESTARTS=$((30 + 8 * node_rounds))
	NODE_VM_TIMEOUT=$((1800 + 120 * (node_rounds + ctl_rounds - 2)))
	echo "building csi-node (release, for the VM) and node_e2e" >&2
	if ! (cd "$REPO" && cargo build -q --release -p csi-node --bin csi-node -p csi-controller --bin csi-controller >&2 && cargo build -q -p thin-e2e --bin node_e2e >&2); then
		echo "FAIL build csi-node / node_e2e" | tee -a "$log"
		return
	fi
	CSI_NODE=$CARGO_TARGET_DIR/release/csi-node
	# Built before the VMs start: the controller matrix runs beside the
	# node matrix, and a compile then would starve the VMs.
	if [[ $mode == test ]]; then
		if (cd "$REPO" && cargo build -q -p csi-controller --features failpoints --bin csi-controller >&2); then
			cp "$CARGO_TARGET_DIR/debug/csi-controller" "$RUN/csi-controller-failpoints"
		else
			echo "FAIL build csi-controller --features failpoints" | tee -a "$log"
		fi
	fi
	NODE_E2E=$CARGO_TARGET_DIR/debug/node_e2e
	NODE_VM_PIDS=() NODE_VM_NAMES=()
	suite_stop() { stop_node_vms; } # called first by the suite's cleanup trap
	node_port=$(free_port)
	start_node_vm vm-a
	start_node_vm vm-b vm-b "$node_port" # the controller matrix stages expanded volumes there
	node_e2e_step pools vm-a vm-b
	a=$(awk '/^POOL vm-a /{print $3}' "$log" | tail -1)
	b=$(awk '/^POOL vm-b /{print $3}' "$log" | tail -1)
	if [[ -z $a || -z $b ]]; then
		echo "FAIL node VMs did not register their pools (logs: $RUN/logs/vm-node-*.log)" | tee -a "$log"
		tail -15 "$RUN"/logs/vm-vm-a.log
		stop_node_vms
		return
	fi
	if [[ $mode == bench ]]; then
		node_e2e_step bench "$a" 50
		grep -h 'transaction committed' "$RUN/logs/vm-vm-a.log" | sed -E 's/.*micros=([0-9]+).*/\1/' | sort -n |
			awk '{ v[NR] = $1 } END { if (NR) printf "BENCH snapshot-api-engine thin-csi median_us=%d p90_us=%d n=%d\n", v[int(NR/2)+1], v[int(NR*0.9)], NR }' | tee -a "$log"
		node_e2e_step stop "$a" "$b"
		wait_node_vms 120
		return
	fi
	node_e2e_step lifecycle "$a" "$b" "$ledger"
	# Restore and clone placement across the two nodes, through csi-controller's gRPC.
	local port cpid ctl_pid
	port=$(free_port)
	"$CARGO_TARGET_DIR/release/csi-controller" --kubeconfig "$KUBECONFIG" --identity cluster-suite \
		--csi-endpoint "tcp://127.0.0.1:$port" >"$RUN/logs/csi-controller.log" 2>&1 &
	cpid=$!
	for _ in $(seq 100); do grep -q 'leading' "$RUN/logs/csi-controller.log" && break; sleep 0.2; done
	node_e2e_step cross-node "$port" vm-a vm-b
	kill "$cpid" 2>/dev/null || true
	wait "$cpid" 2>/dev/null || true
	# The controller matrix (vm-b) runs beside the node matrix and the
	# tests after it (vm-a): other VM, pool and objects. Its lines go to
	# their own log, added to the suite's when it ends.
	(log=$RUN/ctl-matrix.log; controller_crash_tests "$b" vm-b "$node_port") &
	ctl_pid=$!
	local node_start=$SECONDS
	for boundary in $NODE_BOUNDARIES; do
		for r in $(seq "$node_rounds"); do
			node_e2e_step crash "$a" "$boundary" "$ledger"
		done
	done
	# The same after an abort (a snapshot of a missing origin).
	for r in $(seq "$node_rounds"); do
		node_e2e_step crash-abort "$a"
	done
	echo "--- node matrix: $node_rounds round(s) of $(wc -w <<<"$NODE_BOUNDARIES") boundaries + crash-abort in $((SECONDS - node_start)) s" | tee -a "$log"
	# A controller killed between recording a transaction and seeing its status.
	"$NODE_E2E" record-only "$a" "$ledger" >"$RUN/record-only.out" 2>>"$RUN/node_e2e.stderr" &
	local rec=$!
	for _ in $(seq 100); do grep -q '^RECORDED' "$RUN/record-only.out" && break; sleep 0.1; done
	kill -9 "$rec" 2>/dev/null || true
	wait "$rec" 2>/dev/null || true
	# The harness's part: the controller recorded before it was killed.
	if grep -q '^RECORDED' "$RUN/record-only.out"; then
		echo "--- $(grep '^RECORDED' "$RUN/record-only.out" | head -1); controller SIGKILLed before the status" | tee -a "$log"
	else
		echo "FAIL node_e2e record-only recorded nothing before it was killed: $(tail -3 "$RUN/record-only.out" | tr '\n' ' ')" | tee -a "$log"
	fi
	node_e2e_step converge "$a" "$ledger"
	node_e2e_step concurrent "$a" 200 "$ledger"
	wait "$ctl_pid" || echo "FAIL the controller matrix exited $?" | tee -a "$log"
	cat "$RUN/ctl-matrix.log" >>"$log"
	CTL_LEAK_BUDGET=$(cat "$RUN/ctl-leak-budget" 2>/dev/null || echo 0)
	node_e2e_step diverge "$b"
	node_e2e_step stop "$a" "$b"
	wait_node_vms 180
	local devices_a devices_b
	devices_a=$(listed_devices "$RUN/logs/vm-vm-a.log")
	devices_b=$(listed_devices "$RUN/logs/vm-vm-b.log")
	if [[ -z $devices_a ]]; then
		echo "FAIL vm-a listed no devices after stopping (log $RUN/logs/vm-vm-a.log)" | tee -a "$log"
	else
		node_e2e_step compare "$ledger" "$devices_a"
	fi
	if [[ $devices_b == "DEVICES " || $devices_b == "DEVICES" ]]; then
		echo "PASS vm-b's pool holds no device (its one volume was deleted; nothing else was sent to it)" | tee -a "$log"
	elif [[ -n $devices_b && ${CTL_LEAK_BUDGET:-0} -gt 0 ]]; then
		# The controller crash runs deleted everything they made: what is
		# left leaked from kills between an allocation and its object.
		node_e2e_step leaks "$devices_b" "$CTL_LEAK_BUDGET"
	else
		echo "FAIL vm-b's pool: ${devices_b:-no listing}" | tee -a "$log"
	fi
	echo "--- vm-a restarts after SIGKILL: $(grep -c 'csi-node exited with status 137' "$RUN/logs/vm-vm-a.log" || true)"
	# The unreported kills did happen (else the two checks above prove nothing).
	local unreported
	unreported=$(grep -ac 'killing the node process before the status write' "$RUN/logs/vm-vm-a.log" || true)
	if [[ $unreported -eq $((2 * node_rounds)) ]]; then
		echo "PASS the node was SIGKILLed between the kernel work and the status write $unreported times ($node_rounds after a commit, $node_rounds after an abort)" | tee -a "$log"
	else
		echo "FAIL the node was SIGKILLed before the status write $unreported times, expected $((2 * node_rounds)) (log $RUN/logs/vm-vm-a.log)" | tee -a "$log"
	fi
	if [[ -n $devices_a ]]; then record_lost "$a" "$ledger"; fi
}

# csi-controller (a failpoints build) SIGKILLed at each step of CreateVolume,
# CreateSnapshot, DeleteVolume, DeleteSnapshot and ControllerExpandVolume
# (csi-controller/src/failpoint.rs, listed by `node_e2e ctl-steps`) on
# NODE's pool, restarted without the failpoint, the same request retried:
# it must succeed with the same device (expand: the new size, in the API and
# in the kernel's active device, staged through NODE_PORT), and no device is
# named by two objects; at the end everything is deleted through the
# controller and the node's final listing may hold only leaks (kills between
# an allocation and its object; counted, the budget goes to
# $RUN/ctl-leak-budget). CTL_CRASH_ROUNDS (default 1) runs per step.
controller_crash_tests() {
	local pool=$1 node=$2 node_port=$3 rounds=${CTL_CRASH_ROUNDS:-1} ids=$RUN/ctl-ids fp=$RUN/csi-controller-failpoints step r port cpid rc name
	local budget=0 started=$SECONDS steps
	if [[ ! -x $fp ]]; then
		echo "FAIL no csi-controller failpoints build at $fp" | tee -a "$log"
		return
	fi
	steps=$("$NODE_E2E" ctl-steps || true)
	[[ -n $steps ]] || echo "FAIL node_e2e ctl-steps listed no failpoint" | tee -a "$log"
	port=$(free_port)
	ctl_start() { # LOG [FAILPOINT]: starts the controller, waits until it leads
		THIN_CSI_FAILPOINT=${2:-} "$fp" --kubeconfig "$KUBECONFIG" --identity cluster-suite \
			--csi-endpoint "tcp://127.0.0.1:$port" >"$1" 2>&1 &
		cpid=$!
		for _ in $(seq 150); do grep -q 'leading' "$1" && break; sleep 0.2; done
	}
	for step in $steps; do
		for r in $(seq "$rounds"); do
			name=cf-$step-$r
			ctl_start "$RUN/logs/ctl-$name-killed.log" "$step"
			node_e2e_step ctl-request "$port" "$node_port" "$step" "$name" "$node" "$ids"
			for _ in $(seq 150); do kill -0 "$cpid" 2>/dev/null || break; sleep 0.2; done
			kill -9 "$cpid" 2>/dev/null || true
			rc=0
			wait "$cpid" 2>/dev/null || rc=$?
			if ! grep -q "failpoint $step: SIGKILL" "$RUN/logs/ctl-$name-killed.log"; then
				echo "FAIL csi-controller did not reach failpoint $step (exit $rc, log $RUN/logs/ctl-$name-killed.log)" | tee -a "$log"
			fi
			case $step in *-allocated) budget=$((budget + 1)) ;; esac
			ctl_start "$RUN/logs/ctl-$name-retry.log"
			node_e2e_step ctl-retry "$port" "$node_port" "$step" "$name" "$node" "$pool" "$ids"
			kill "$cpid" 2>/dev/null || true
			wait "$cpid" 2>/dev/null || true
		done
	done
	echo "$budget" >"$RUN/ctl-leak-budget"
	ctl_start "$RUN/logs/ctl-cleanup.log"
	# A node kill point that needs the Node service, so on this node: csi-node
	# killed in NodeExpandVolume between the device resize and the
	# filesystem grow, NODE_CRASH_ROUNDS times.
	for r in $(seq "${NODE_CRASH_ROUNDS:-1}"); do
		node_e2e_step node-expand-crash "$port" "$node_port" "ne-$r" "$node" "$ids"
	done
	node_e2e_step ctl-cleanup "$port" "$pool" "$ids"
	kill "$cpid" 2>/dev/null || true
	wait "$cpid" 2>/dev/null || true
	echo "--- controller matrix: $rounds round(s) of $(wc -w <<<"$steps") steps and ${NODE_CRASH_ROUNDS:-1} expand-resized node kill(s) in $((SECONDS - started)) s" | tee -a "$log"
}

# The pool object deleted by hand on a pool with data (vm-a's, stopped, its
# devices listed): the node, booted again on the same disk, re-creates it as
# unverified and the record hands out nothing; the kernel's devices stay the
# ledger's; adopted from the saved object, a new volume gets a fresh id.
record_lost() {
	local a=$1 ledger=$2 saved=$RUN/pool-a.saved.json devices
	node_e2e_step forget "$a" "$saved"
	[[ -s $saved ]] || return
	start_node_vm vm-a vm-a.2
	node_e2e_step unverified "$a" "$saved"
	node_e2e_step stop "$a"
	wait_node_vms 180
	devices=$(listed_devices "$RUN/logs/vm-vm-a.2.log")
	if [[ -z $devices ]]; then
		echo "FAIL vm-a (unverified record) listed no devices after stopping (log $RUN/logs/vm-vm-a.2.log)" | tee -a "$log"
		return
	fi
	# No device created or deleted while the record was unverified.
	node_e2e_step compare "$ledger" "$devices"
	node_e2e_step unstop "$a" # the object outlived that boot: its stop hook would stop the next one
	start_node_vm vm-a vm-a.3
	node_e2e_step adopt "$a" "$saved" "$ledger" "$devices"
	node_e2e_step stop "$a"
	wait_node_vms 180
	devices=$(listed_devices "$RUN/logs/vm-vm-a.3.log")
	if [[ -z $devices ]]; then
		echo "FAIL vm-a (adopted) listed no devices after stopping (log $RUN/logs/vm-vm-a.3.log)" | tee -a "$log"
	else
		node_e2e_step compare "$ledger" "$devices"
	fi
}

# The full matrix's report (bench/results/cluster-crash-<date>.md), from the
# suite's log: per kill point how many runs passed and failed, the failures,
# the durations, the leaks against their budget.
# usage: cluster_crash_report LOG CTL_ROUNDS NODE_ROUNDS SECONDS SUMMARY
cluster_crash_report() {
	local log=$1 ctl_rounds=$2 node_rounds=$3 secs=$4 summary=$5 step p f leaks budget
	count() { grep -cF -- "$1" "$log" || true; }
	budget=$(cat "$RUN/ctl-leak-budget" 2>/dev/null || echo '?')
	leaks=$(sed -n -E 's/^PASS .*\(LEAKS ([0-9]+) .*/\1/p' "$log" | tail -1)
	grep -q "^PASS vm-b's pool holds no device" "$log" && leaks=0
	echo "# Cluster crash matrix (e2e/run cluster-full)"
	echo
	echo "Command: \`CTL_CRASH_ROUNDS=$ctl_rounds NODE_CRASH_ROUNDS=$node_rounds e2e/run cluster-full\`"
	echo "($(date -u +%Y-%m-%dT%H:%MZ), $(cd "$REPO" && git rev-parse --short HEAD)$(cd "$REPO" && git diff --quiet HEAD -- . ':!bench/results' || echo '+changes'); real etcd + kube-apiserver on loopback, two qemu TCG node VMs; 2 host cores shared with other work)"
	echo
	echo "## csi-controller SIGKILLed at each failpoint, restarted, the request retried"
	echo
	echo "| step | retries passed | failed (retry, request, or kill not reached) |"
	echo "|---|---|---|"
	for step in $("${NODE_E2E:-false}" ctl-steps || true); do
		p=$(count "PASS controller killed at $step:")
		f=$(($(count "FAIL controller killed at $step") + $(count "FAIL csi-controller did not reach failpoint $step ")))
		echo "| \`$step\` | $p | $f |"
	done
	echo
	echo "## csi-node SIGKILLed at each kill point, restarted by its supervisor"
	echo
	echo "| kill point | passed | failed |"
	echo "|---|---|---|"
	for step in $NODE_BOUNDARIES; do
		echo "| \`$step\` | $(count "PASS node killed at $step (") | $(count "FAIL node killed at $step (") |"
	done
	echo "| \`crash-abort\` (an abort, then killed before its status) | $(count "PASS node killed after an abort") | $(count "FAIL node killed after an abort") |"
	echo "| \`expand-resized\` (NodeExpandVolume of a mounted volume: the device grown, the filesystem not yet) | $(count "PASS node killed at expand-resized (") | $(count "FAIL node killed at expand-resized (") |"
	echo
	echo "Leaks (devices left on vm-b's pool after every object was deleted through the controller): ${leaks:-not counted} of a budget of $budget (one per kill at a \`*-allocated\` step: the transaction is recorded, no object names its device yet)."
	echo
	echo "Durations: $(grep -E '^--- (controller|node) matrix' "$log" | sed 's/^--- //' | paste -sd ';' | sed 's/;/; /g'); whole suite $secs s (the two matrices run side by side, on vm-b and vm-a)."
	echo
	echo "Summary: \`$(tail -1 <<<"$summary")\`"
	echo
	if grep -q '^FAIL ' "$log"; then
		echo "Failures:"
		echo
		grep '^FAIL ' "$log" | cut -c1-400 | sed 's/^/    /'
	else
		echo "Failures: none."
	fi
}
