# shellcheck shell=bash
# The suites' shell library. Every script in e2e/suites sources it (it
# sources e2e/lib.sh: the cache, the build, `summarize`, `checked`):
#
#   suite_init NAME        log, run dir $RUN (logs/, pids/), the cleanup trap
#   pass / fail WHAT       a check's PASS / FAIL line (into the log)
#   ok WHAT                a setup step that worked: progress, not a check
#   finish                 the summary line; exit 0 when everything passed
#   fail_now WHAT          a harness step failed: FAIL line, summary, exit 1
#   free_port              a free loopback TCP port
#   control_plane_up       e2e/cluster/up in $RUN, KUBECONFIG exported
#   start_bg NAME CMD...   a host process in the background, logged, stopped by the trap
#   start_controller IDENTITY ENDPOINT [ARGS...]
#                          release csi-controller in the background, waited for until it leads
#   guest_cmd PORT CMD...  a command of a guest's command server (forwarded to PORT):
#                          its output on stdout, the `RC n` line it ends with as our status
#   run_driver NAME BIN ARGS...
#                          a test program's PASS/FAIL lines into the log (`checked`),
#                          its stderr in $RUN/logs/NAME.stderr
#
# A suite may define `suite_stop` (called first by the trap: VMs, ...).
set -euo pipefail
source "$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/lib.sh"

suite_init() {
	SUITE=$1
	log=$(mktemp)
	RUN=$(mktemp -d "${TMPDIR:-/tmp}/thin-csi-$SUITE.XXXXXX")
	mkdir -p "$RUN/logs" "$RUN/pids"
	SUITE_PIDS=()
	trap suite_cleanup EXIT
}

# [RC]: the exit status, when called from another trap ($? there is no
# longer the script's). Keeps the run dir when it is not 0, or with KEEP_RUN=1.
suite_cleanup() {
	local rc=${1:-$?} p
	if declare -F suite_stop >/dev/null; then suite_stop || true; fi
	for p in "${SUITE_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
	for p in "${SUITE_PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
	"$E2E/cluster/down" "$RUN" >/dev/null 2>&1 || true
	if [[ $rc -eq 0 && -z ${KEEP_RUN:-} ]]; then rm -rf "$RUN"; else echo "$SUITE: run dir kept for its logs: $RUN" >&2; fi
	rm -f "$log"
}

pass() { echo "PASS $*" | tee -a "$log"; }
fail() { echo "FAIL $*" | tee -a "$log"; }
ok() { echo "ok $*" | tee -a "$log"; }
finish() {
	summarize "$SUITE" "$log" && exit 0
	exit 1
}

fail_now() {
	echo "FAIL $*" | tee -a "$log"
	summarize "$SUITE" "$log"
	exit 1
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Sets what e2e/cluster/up prints (THIN_CSI_RUN, KUBECONFIG) and
# $RUN/cluster.env's ports and paths; a progress line, not a check.
control_plane_up() {
	local t0 env_out
	t0=$(date +%s)
	env_out=$(THIN_CSI_RUN=$RUN "$E2E/cluster/up") || fail_now "control plane up (logs in $RUN/logs)"
	eval "$env_out"
	# shellcheck source=/dev/null
	. "$RUN/cluster.env"
	export KUBECONFIG=$RUN/admin.kubeconfig
	echo "ok control plane up ($(($(date +%s) - t0)) s, run dir $RUN)" | tee -a "$log"
}

# The pid file lets e2e/cluster/down stop it too (its command line names
# the run dir); the last one started is $BG_PID.
start_bg() {
	local name=$1
	shift
	"$@" >"$RUN/logs/$name.log" 2>&1 </dev/null &
	BG_PID=$!
	SUITE_PIDS+=("$BG_PID")
	echo "$BG_PID" >"$RUN/pids/$name.pid"
}

# usage: start_controller IDENTITY ENDPOINT [ARGS...]; sets CONTROLLER_PID.
# Its log is $RUN/logs/csi-controller-IDENTITY.log.
start_controller() {
	local identity=$1 endpoint=$2 name="csi-controller-$1"
	shift 2
	start_bg "$name" env RUST_LOG="${RUST_LOG:-info}" "$CARGO_TARGET_DIR/release/csi-controller" \
		--kubeconfig "${CONTROLLER_KUBECONFIG:-$KUBECONFIG}" --identity "$identity" --csi-endpoint "$endpoint" "$@"
	CONTROLLER_PID=$BG_PID
	for _ in $(seq 600); do
		grep -q 'leading' "$RUN/logs/$name.log" 2>/dev/null && break
		kill -0 "$CONTROLLER_PID" 2>/dev/null || break
		sleep 0.1
	done
	grep -q 'leading' "$RUN/logs/$name.log" || fail_now "csi-controller $identity did not lead (log $RUN/logs/$name.log)"
	echo "ok csi-controller $identity leads and serves $endpoint" | tee -a "$log"
}

guest_cmd() {
	local port=$1 out rc
	shift
	out=$(python3 - "$port" "$*" <<'PY'
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=120)
s.sendall((sys.argv[2] + "\n").encode())
data = b""
while True:
    chunk = s.recv(65536)
    if not chunk:
        break
    data += chunk
sys.stdout.write(data.decode(errors="replace"))
PY
	) || return 1
	rc=$(sed -n 's/^RC //p' <<<"$out" | tail -1)
	grep -v '^RC ' <<<"$out" || true
	[[ ${rc:-1} -eq 0 ]]
}

run_driver() {
	local name=$1
	shift
	checked "$log" "$name" "$@" 2>>"$RUN/logs/${name%% *}.stderr"
}

# Boots a VM whose guest script prints PASS/FAIL lines and, last, PROGRAM's
# summary line (`PROGRAM: N passed, M failed`); the lines go to the log. A
# missing summary, or a non-zero exit other than the guest's own verdict
# (1 after FAIL lines: a timeout, no sentinel, a crash), is a FAIL.
# usage: vm_test PROGRAM VMLOG BOOT_ARGS... -- GUEST_SCRIPT ARGS...
vm_test() {
	local program=$1 vmlog=$2 rc=0
	shift 2
	"$E2E/vm/boot" --log "$vmlog" "$@" | grep -aE "^(PASS|FAIL|$program:)" | tee -a "$log" || rc=$?
	grep -aq "$program:" "$vmlog" || { tail -30 "$vmlog" >&2; echo "FAIL $program did not finish (log $vmlog)" | tee -a "$log"; }
	if [[ $rc -ne 0 ]] && ! { [[ $rc -eq 1 ]] && grep -aq '^FAIL ' "$log"; }; then
		echo "FAIL the $program VM: exit status $rc (log $vmlog)" | tee -a "$log"
	fi
}
