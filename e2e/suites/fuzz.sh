#!/usr/bin/env bash
# fuzz: the bad-input properties (issue 10, item 6) run for a time budget
# instead of unit's 256 cases each: every Controller request field through
# the real handlers (csi-controller/tests/fuzz_requests.rs), the kernel status
# line, the pool header, device heads and ids (thinpool/tests/fuzz_parsers.rs),
# the device-mapper tables (thinpool-dm/tests/fuzz_tables.rs), mount flags,
# mountinfo and blkid output (csi-node/tests/fuzz_parsers.rs).
#
# Rounds of FUZZ_CASES cases per property (default 20000), each round with
# fresh random inputs, until FUZZ_MINUTES (default 60) have passed. One check
# per property: PASS when every round of it passed, with the cases run.
# Writes bench/results/fuzz-<date>.md. Not in `all` (an hour); unit runs the
# same properties at 256 cases each.
set -euo pipefail
source "$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/lib.sh"
ensure_build_deps
cases=${FUZZ_CASES:-20000}
budget=$((${FUZZ_MINUTES:-60} * 60))
targets=("csi-controller fuzz_requests" "thinpool fuzz_parsers" "thinpool-dm fuzz_tables" "csi-node fuzz_parsers")
work=$(mktemp -d "${TMPDIR:-/tmp}/thin-csi-fuzz.XXXXXX")
log=$work/fuzz.log
: >"$log"

# Build once; list each target's properties.
declare -A bins
for t in "${targets[@]}"; do
	read -r crate test <<<"$t"
	bin=$(cd "$REPO" && cargo test -p "$crate" --test "$test" --no-run --message-format=json 2>/dev/null |
		python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == ["test"]: print(m["executable"])' | tail -1)
	[[ -x $bin ]] || { echo "FAIL fuzz: could not build $crate --test $test"; exit 1; }
	# A copy: a build during the run must not swap the program under it.
	cp "$bin" "$work/$crate-$test"
	bins[$t]=$work/$crate-$test
done

declare -A ran failed_rounds
start=$(date +%s)
round=0
while :; do
	round=$((round + 1))
	for t in "${targets[@]}"; do
		for prop in $("${bins[$t]}" --list 2>/dev/null | sed -n 's/: test$//p'); do
			key="$t $prop"
			out=$work/round.out
			if FUZZ_CASES=$cases "${bins[$t]}" --exact "$prop" --test-threads 1 >"$out" 2>&1; then
				ran[$key]=$((${ran[$key]:-0} + cases))
			else
				failed_rounds[$key]=$((${failed_rounds[$key]:-0} + 1))
				ran[$key]=${ran[$key]:-0}
				{ echo "--- $key, round $round:"; grep -E 'panicked|minimal failing|Reason' "$out" | head -5; } | tee -a "$work/failures.txt"
			fi
		done
	done
	elapsed=$(($(date +%s) - start))
	echo "--- round $round done after ${elapsed}s"
	[[ $elapsed -ge $budget ]] && break
done

total=0
for key in $(printf '%s\n' "${!ran[@]}" | sed 's/ /|/g' | sort); do
	key=${key//|/ }
	total=$((total + ${ran[$key]}))
	if [[ -z ${failed_rounds[$key]:-} ]]; then
		echo "PASS fuzz $key: ${ran[$key]} cases, no panic, every rejection as specified" | tee -a "$log"
	else
		echo "FAIL fuzz $key: ${failed_rounds[$key]} failing round(s) (see $work/failures.txt)" | tee -a "$log"
	fi
done
elapsed=$(($(date +%s) - start))
echo "--- $total cases in ${elapsed}s, $round rounds"

if [[ ${FUZZ_RECORD:-1} == 1 ]]; then
	out="$REPO/bench/results/fuzz-$(date +%Y-%m-%d).md"
	{
		echo "# Bad-input fuzzing ($(date -u +%Y-%m-%d), commit $(git -C "$REPO" rev-parse --short HEAD))"
		echo
		echo "Command: \`FUZZ_MINUTES=${FUZZ_MINUTES:-60} FUZZ_CASES=$cases e2e/run fuzz\` — $round rounds of $cases cases per property, ${elapsed} s wall time, load average $(cut -d' ' -f1-3 /proc/loadavg) at the end."
		echo
		echo '```'
		cat "$log"
		echo "$total cases in ${elapsed}s"
		echo '```'
	} >"$out"
	echo "--- wrote $out"
fi
summarize fuzz "$log"
