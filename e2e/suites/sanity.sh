#!/usr/bin/env bash
# sanity: the real conformance suite (csi-sanity, csi-test v5) against
# csi-controller on the host and csi-node in a qemu VM, on a real apiserver.
# csi-sanity runs inside the VM so that the mount and staging paths it checks
# are the node's own; it reaches the controller at 10.0.2.2 (the host).
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"
ensure_build_deps
suite_init sanity

(cd "$REPO" && cargo build -q --release -p csi-node -p csi-controller >&2) || fail_now "build"
eval "$("$E2E/cluster/build-tools" --print-paths csi-sanity)"
control_plane_up >&2
port=$(free_port)
start_controller sanity "tcp://127.0.0.1:$port" >&2

truncate -s 2G "$RUN/node.img"
rc=0
"$E2E/vm/boot" --bin "$CARGO_TARGET_DIR/release/csi-node" --bin "$CSI_SANITY" \
	--file "$RUN/guest.kubeconfig:/guest/kubeconfig" --disk "$RUN/node.img" --net --mem 2048 --timeout 1500 \
	--log "$RUN/logs/vm-sanity.log" -- "$E2E/guest/sanity.sh" sanity-node "$port" | tee "$log" || rc=$?

# Ginkgo's summary of each pass: "N Passed | F Failed | P Pending | S Skipped".
read -r passed failed skipped < <(grep -aE '[0-9]+ Passed \| [0-9]+ Failed' "$log" |
	sed -E 's/.* ([0-9]+) Passed \| ([0-9]+) Failed \| ([0-9]+) Pending \| ([0-9]+) Skipped.*/\1 \2 \4/' |
	awk '{ p += $1; f += $2; s += $3; n++ } END { if (n == 2) print p, f, s; else print 0, 1, 0 }')
grep -aE '^=== csi-sanity|Passed \| [0-9]+ Failed' "$log" | sed 's/^/csi-sanity: /'
[[ $rc -eq 0 || $failed -gt 0 ]] || { failed=1; echo "FAIL the sanity VM: exit status $rc"; }
# Each spec csi-sanity ran is one check (its skipped ones are not).
echo "csi-sanity skipped $skipped specs for capabilities not advertised: see the lists above"
summarize sanity /dev/null "$passed" "$failed"
