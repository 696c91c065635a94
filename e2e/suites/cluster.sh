#!/usr/bin/env bash
# cluster: the controller side of the pool protocol against a real control
# plane (etcd + kube-apiserver + kube-controller-manager on loopback, from
# e2e/cluster/up): the CRDs register and become Established; 200 concurrent
# allocations (4 tokio tasks in each of two OS processes) on one ThinPool get
# unique device ids and dense transaction ids 1..=200, each exactly once; a
# deleted id is reused only after the node reports its delete finished; bad
# objects are refused by the apiserver's schema validation.
# Then the node side (e2e/suites/cluster-nodes.sh): csi-node in two qemu VMs.
# CTL_CRASH_ROUNDS / NODE_CRASH_ROUNDS (default 1): runs per controller
# failpoint / node kill point; CLUSTER_FULL=1 (e2e/run cluster-full, 20 of
# each) also writes bench/results/cluster-crash-<date>.md.
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"
ensure_build_deps
suite_init cluster

echo "building the cluster_e2e driver" >&2
(cd "$REPO" && cargo build -q -p thin-e2e --bin cluster_e2e >&2) || fail_now "build cluster_e2e"
BIN=$CARGO_TARGET_DIR/debug/cluster_e2e

suite_start=$SECONDS
control_plane_up

# One subcommand of the driver: its PASS/FAIL lines go to the log; a
# non-zero exit that printed no FAIL line (a crash) counts as a failure.
step() { run_driver "cluster_e2e $1" "$BIN" "$@"; }

# (a) CRDs
step crds

# (b) 200 concurrent allocations: two processes, four tasks each.
pool=alloc-$$
step create-pool "$pool"
step alloc "$pool" 4 100 "$RUN/alloc-1.txt" &
p1=$!
step alloc "$pool" 4 100 "$RUN/alloc-2.txt" &
p2=$!
wait "$p1" "$p2"
step verify "$pool" 200 "$RUN/alloc-1.txt" "$RUN/alloc-2.txt"

# Ids freed only once the node reports the delete finished; unhealthy pools get nothing.
step reuse "reuse-$$"

# Records bounded by what is live: CLUSTER_CHURN_N allocations (creates and
# deletes of 100 live devices, the node's reports played), the pool object's
# size and the time per allocation at the end within 1.2x of the start.
step churn "churn-$$" "${CLUSTER_CHURN_N:-2000}" 100

# (c) schema validation
step reject

# One active controller: a leader and a standby on one Lease; the leader is
# SIGKILLed mid-run and the standby takes over the allocations.
if (cd "$REPO" && cargo build -q -p thin-e2e --bin leader_e2e >&2); then
	LEADER_E2E=$CARGO_TARGET_DIR/debug/leader_e2e
	lpool=leader-$$
	step create-pool "$lpool"
	"$LEADER_E2E" run "$lpool" controller-1 100000 "$RUN/leader-1.txt" >"$RUN/leader-1.out" 2>>"$RUN/logs/leader_e2e.stderr" &
	l1=$!
	for _ in $(seq 300); do grep -q '^LEADER' "$RUN/leader-1.out" && break; sleep 0.1; done
	"$LEADER_E2E" run "$lpool" controller-2 100 "$RUN/leader-2.txt" >"$RUN/leader-2.out" 2>>"$RUN/logs/leader_e2e.stderr" &
	l2=$!
	for _ in $(seq 300); do [[ $(wc -l <"$RUN/leader-1.txt" 2>/dev/null || echo 0) -ge 60 ]] && break; sleep 0.1; done
	if grep -q '^STANDBY controller-2' "$RUN/leader-2.out" && ! grep -q '^LEADER' "$RUN/leader-2.out"; then
		echo "PASS a second controller stands by while the first leads ($(wc -l <"$RUN/leader-1.txt") allocations so far)" | tee -a "$log"
	else
		echo "FAIL a second controller stands by: $(cat "$RUN/leader-2.out")" | tee -a "$log"
	fi
	kill -9 "$l1"
	wait "$l1" 2>/dev/null || true
	l2rc=0
	wait "$l2" || l2rc=$?
	grep -E '^(PASS|FAIL)' "$RUN/leader-2.out" | tee -a "$log" || true
	if [[ $l2rc -ne 0 ]] && ! grep -q '^FAIL ' "$RUN/leader-2.out"; then
		echo "FAIL leader_e2e run controller-2 exited $l2rc (stderr in $RUN/logs/leader_e2e.stderr)" | tee -a "$log"
	fi
	run_driver "leader_e2e verify" "$LEADER_E2E" verify "$lpool" "$RUN/leader-1.txt" "$RUN/leader-2.txt"
else
	echo "FAIL build leader_e2e" | tee -a "$log"
fi

# The node side: csi-node in two VMs, driven through the API.
source "$E2E/suites/cluster-nodes.sh"
node_tests "${CLUSTER_MODE:-test}"

# e2e/expected-checks gives the count for one round of each matrix; more
# rounds add one check per controller step and per node kill point each.
ctl_rounds=${CTL_CRASH_ROUNDS:-1} node_rounds=${NODE_CRASH_ROUNDS:-1}
ctl_steps=$(wc -w <<<"$("${NODE_E2E:-false}" ctl-steps 2>/dev/null || true)")
node_points=$(($(wc -w <<<"$NODE_BOUNDARIES") + 2)) # + crash-abort, expand-resized
extra=$(((ctl_rounds - 1) * ctl_steps + (node_rounds - 1) * node_points))
if ((extra > 0)); then
	want=$(($(expected_checks cluster) + extra))
	got=$(grep -cE '^(PASS|FAIL) ' "$log" || true)
	((got >= want)) || echo "FAIL cluster: expected $want checks with CTL_CRASH_ROUNDS=$ctl_rounds NODE_CRASH_ROUNDS=$node_rounds, only $got ran" | tee -a "$log"
fi
suite_secs=$((SECONDS - suite_start))
echo "--- cluster suite: $suite_secs s"
summary=$(summarize cluster "$log") && ok=1 || ok=0
if [[ ${CLUSTER_FULL:-0} == 1 ]]; then
	cluster_crash_report "$log" "$ctl_rounds" "$node_rounds" "$suite_secs" "$summary" >"$REPO/bench/results/cluster-crash-$(date +%Y-%m-%d).md"
	echo "  wrote bench/results/cluster-crash-$(date +%Y-%m-%d).md"
fi
echo "$summary"
[[ $ok -eq 1 ]]
