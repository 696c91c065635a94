#!/usr/bin/env bash
# crash: the pool survives power loss, on the real kernel in qemu VMs.
#
# Part 1, hard power-offs: ROUNDS cuts. Each boot first checks the cut the
# previous boot ended with (pool found by its header, recovery converges,
# the kernel and the record agree, no device left suspended, the newest
# snapshots hold their data, thin_check clean), then runs transactions
# again until the host SIGKILLs qemu at a random moment: after a random
# number of transactions, a random delay after a "begin" (inside a commit)
# or a "committed" line. ROUNDS cuts take ROUNDS+1 boots.
#
# Part 2, a disk that drops what it was not told to flush: the pool's whole
# device on dm-log-writes during REPLAY_TXNS transactions; then every state
# after a FLUSH/FUA (and the end) is replayed by thin-vmtest replay-log and
# checked (see e2e/vmtest/src/crash.rs).
#
# CI sample (default): 5 rounds, 3 logged transactions, every point.
# Full matrix: CRASH_FULL=1 e2e/run crash  (100 rounds, 20 logged
# transactions; writes bench/results/crash-<date>.md). Override with
# CRASH_ROUNDS, CRASH_REPLAY_TXNS, CRASH_REPLAY_EVERY; CRASH_SEED
# reproduces the kill moments of a run. CRASH_REPLAY_UNFLUSHED=K also
# checks every point K more times with a random half of the writes that had
# completed but were not yet flushed there (a volatile cache that wrote
# some of them back); off by default (it multiplies part 2's time by 1+K).
set -euo pipefail
source "$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/lib.sh"
started=$SECONDS
# What the run is made from (the results file names it).
rev=$(git -C "$REPO" rev-parse --short HEAD)$(git -C "$REPO" status --porcelain --untracked-files=no | grep -q . && echo +dirty || true)
full=${CRASH_FULL:-0}
if [[ $full == 1 ]]; then
	rounds=${CRASH_ROUNDS:-100} replay_txns=${CRASH_REPLAY_TXNS:-20}
else
	rounds=${CRASH_ROUNDS:-5} replay_txns=${CRASH_REPLAY_TXNS:-3}
fi
every=${CRASH_REPLAY_EVERY:-1}
unflushed=${CRASH_REPLAY_UNFLUSHED:-0}
seed=${CRASH_SEED:-$((SRANDOM % 32768))}
RANDOM=$seed
echo "crash: $rounds power-off rounds, $replay_txns logged transactions replayed at every ${every}. point (+$unflushed unflushed variants each), seed $seed"

vmtest=$(build_vmtest)
logwrites_ko=$("$E2E/vm/guest-module" dm-log-writes)
work=$(mktemp -d "${TMPDIR:-/tmp}/thin-csi-crash.XXXXXX")
trap 'rm -rf "$work"' EXIT
# Verdicts decided here on the host; guest PASS/FAIL lines go to $work/all.log.
host_pass=0 host_fail=0
fail() { echo "FAIL $*"; host_fail=$((host_fail + 1)); }
: >"$work/all.log"
CHECKS_PER_CUT=8 # the PASS/FAIL lines of one `thin-vmtest powercheck`

echo "--- part 1: $rounds hard power-offs at random moments, each checked after the reboot"
truncate -s 512M "$work/pool.img"
truncate -s 4M "$work/record.img"
truncate -s 64M "$work/other.img"
disks=(--disk "$work/pool.img" --disk "$work/record.img" --disk "$work/other.img")
cuts_begin=0 cuts_committed=0 part1_start=$SECONDS
for ((boot = 0; boot <= rounds; boot++)); do
	steps=() kill=()
	((boot > 0)) && steps+=(check)
	if ((boot < rounds)); then
		steps+=(run)
		after=$((1 + RANDOM % 20))
		if ((RANDOM % 2)); then
			phase=begin delay=$((RANDOM % 15)) cuts_begin=$((cuts_begin + 1))
		else
			phase=committed delay=$((RANDOM % 40)) cuts_committed=$((cuts_committed + 1))
		fi
		kill=(--kill-after-pattern "^TXN [0-9]+ $phase #$after\$" --kill-delay-ms "$delay")
	fi
	log=$work/boot$boot.log
	rc=0
	"$E2E/vm/boot" --bin "$vmtest" "${disks[@]}" --timeout 600 --log "$log" "${kill[@]}" \
		-- "$E2E/guest/crashround.sh" "${steps[@]}" >/dev/null 2>&1 || rc=$?
	if ((boot > 0)); then
		# The check of cut $boot: its lines, counted, named by round.
		sed -n '/^CHECK BEGIN/,/^CHECK EXIT/p' "$log" | sed -n -E "s/^(PASS|FAIL) /\\1 round $boot: /p" | tee -a "$work/all.log"
		ran=$(sed -n '/^CHECK BEGIN/,/^CHECK EXIT/p' "$log" | grep -cE '^(PASS|FAIL) ' || true)
		status=$(sed -n -E 's/^CHECK EXIT ([0-9]+)$/\1/p' "$log")
		info=$(grep -E '^(after power-off: kernel at|recovery: )' "$log" | tr '\n' ' ' || true)
		echo "  round $boot: ${info:-no recovery report}"
		[[ $ran -eq $CHECKS_PER_CUT ]] || fail "round $boot: $ran of $CHECKS_PER_CUT checks ran (log $log)"
		[[ $status == 0 ]] || fail "round $boot: powercheck exit status ${status:-missing} (log $log)"
	fi
	if ((boot < rounds)); then
		last=$(grep -oE '^TXN [0-9]+ (begin|committed) #[0-9]+' "$log" | tail -1 || true)
		if [[ $rc -eq 0 ]] && grep -q '^VM KILLED' "$log"; then
			echo "  cut $((boot + 1)): ${delay} ms after '$phase #$after' (last line seen: ${last:-none})"
		else
			fail "cut $((boot + 1)): the power was not cut mid-run (boot exit $rc; log $log)"
			tail -15 "$log"
		fi
	elif [[ $rc -ne 0 ]]; then
		fail "final check boot: exit status $rc (log $log)"
		tail -15 "$log"
	fi
done
part1_secs=$((SECONDS - part1_start))
echo "  part 1: $rounds cuts ($cuts_begin inside a commit window, $cuts_committed after a commit) in $part1_secs s"

echo "--- part 2: the pool on dm-log-writes, replayed at every flush point"
part2_start=$SECONDS
log=$work/replay.log
rc=0
"$E2E/vm/boot" --bin "$vmtest" --file "$logwrites_ko:/lib/modules/extra/dm-log-writes.ko" --mem 1536 --timeout 3600 \
	--log "$log" -- "$E2E/guest/logreplay.sh" "$replay_txns" "$every" "$unflushed" >/dev/null 2>&1 || rc=$?
grep -E '^(PASS|FAIL) ' "$log" | tee -a "$work/all.log" | grep -E '^FAIL ' || true
grep -E '^replay: ' "$log" | sed 's/^/  /' || true
p2_pass=$(grep -cE '^PASS ' "$log" || true)
p2_fail=$(grep -cE '^FAIL ' "$log" || true)
echo "  part 2: $p2_pass passed, $p2_fail failed (each replay point one line)"
points=$(sed -n -E 's/^REPLAY POINTS ([0-9]+)$/\1/p' "$log")
if [[ -z $points ]]; then
	fail "replay: the replayer reported no points (exit $rc; log $log)"
	tail -20 "$log"
else
	# A logged run makes a few record versions and many flushes per transaction.
	((points >= replay_txns * 4 / every)) || fail "replay: only $points points for $replay_txns transactions"
	ran=$(grep -cE '^(PASS|FAIL) replay point ' "$log" || true)
	[[ $ran -eq $points ]] || fail "replay: $ran of $points points checked (log $log)"
fi
[[ $rc -eq 0 ]] || fail "replay VM: exit status $rc (log $log)"
part2_secs=$((SECONDS - part2_start))

expected=$((rounds * CHECKS_PER_CUT + 1 + ${points:-0}))
got=$(grep -cE '^(PASS|FAIL) ' "$work/all.log" || true)
((got >= expected)) || fail "only $got of the $expected expected checks ran"

total_secs=$((SECONDS - started))
summary=$(summarize crash "$work/all.log" "$host_pass" "$host_fail") && ok=1 || ok=0
if [[ $full == 1 ]]; then
	out=$REPO/bench/results/crash-$(date +%Y-%m-%d).md
	{
		echo "# Crash matrix (e2e/run crash, full)"
		echo
		echo "Command: \`CRASH_FULL=1${CRASH_ROUNDS:+ CRASH_ROUNDS=$CRASH_ROUNDS}${CRASH_REPLAY_TXNS:+ CRASH_REPLAY_TXNS=$CRASH_REPLAY_TXNS}${CRASH_REPLAY_UNFLUSHED:+ CRASH_REPLAY_UNFLUSHED=$CRASH_REPLAY_UNFLUSHED} CRASH_SEED=$seed e2e/run crash\`"
		echo "($(date -u +%Y-%m-%dT%H:%MZ), $rev, qemu TCG, guest kernel $(basename "$(dirname "$(dirname "$logwrites_ko")")"); 2 host cores shared with other work)"
		echo
		echo "| part | what | result | time |"
		echo "|---|---|---|---|"
		echo "| 1 | $rounds hard power-offs (qemu SIGKILL): $cuts_begin inside a commit window, $cuts_committed after a commit; reboot, recover, check ($CHECKS_PER_CUT checks each) | $(grep -cE '^PASS round ' "$work/all.log" || true) passed, $(grep -cE '^FAIL round ' "$work/all.log" || true) failed | $part1_secs s |"
		echo "| 2 | $replay_txns transactions on dm-log-writes, replayed at every flush point (${points:-0} states incl. $unflushed unflushed variants per point), each recovered and checked | $p2_pass passed, $p2_fail failed | $part2_secs s |"
		echo
		grep -E '^replay: ' "$log" | sed 's/^/    /' || true
		echo
		echo "Summary: \`$(tail -1 <<<"$summary")\`, $total_secs s in all."
	} >"$out"
	echo "  wrote $out"
fi
echo "  crash suite: $total_secs s (part 1 $part1_secs s, part 2 $part2_secs s)"
echo "$summary"
[[ $ok -eq 1 ]]
