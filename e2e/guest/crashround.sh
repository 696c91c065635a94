#!/bin/sh
# One boot of the crash suite's power-off rounds (e2e/suites/crash.sh).
# Args, in order: `check` finds the pool the last boot left behind when the
# host cut its power, recovers and checks it; `run` then commits
# transactions until the host cuts the power again.
set -u
rc=0
for step in "$@"; do
	case $step in
	check)
		echo "CHECK BEGIN"
		thin-vmtest powercheck --candidates /dev/vda,/dev/vdc --record /dev/vdb
		c=$?
		echo "CHECK EXIT $c"
		[ $c -eq 0 ] || rc=$c
		;;
	run)
		echo "RUN BEGIN"
		thin-vmtest powerrun --device /dev/vda --record /dev/vdb --count 400
		echo "RUN EXIT $? (the power was not cut)"
		rc=1
		;;
	*) echo "crashround: unknown step $step"; rc=2 ;;
	esac
done
exit $rc
