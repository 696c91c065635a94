#!/bin/sh
# The csi-sanity run, inside a node VM: csi-node serves the Node service on a
# unix socket here (and its pool executor); the controller runs on the host,
# reached at 10.0.2.2. Mount and staging paths are the node's own.
# args: NODE_NAME CONTROLLER_PORT
node=$1 port=$2
export RUST_LOG=info
mkdir -p /run/csi /tmp/sanity
csi-node --node-name "$node" --pool-device /dev/vda --kubeconfig /guest/kubeconfig --csi-endpoint unix:///run/csi/csi.sock >/tmp/csi-node.log 2>&1 &
for _ in $(seq 120); do [ -S /run/csi/csi.sock ] && break; sleep 0.5; done
[ -S /run/csi/csi.sock ] || { echo "FAIL csi-node did not serve its socket"; tail -20 /tmp/csi-node.log; exit 1; }
csi-sanity -csi.endpoint unix:///run/csi/csi.sock -csi.controllerendpoint "dns:///10.0.2.2:$port" \
	-csi.mountdir /tmp/sanity/mount -csi.stagingdir /tmp/sanity/stage \
	-csi.testvolumesize 67108864 -csi.testvolumeexpandsize 134217728 \
	-ginkgo.no-color -ginkgo.v >/tmp/sanity.out 2>&1
rc=$?
# Every skipped spec with ginkgo's reason, then the summary.
echo "--- skipped specs"
grep -A4 '^S \[SKIPPED\]' /tmp/sanity.out | grep -E '^(Controller|Node|Identity|GroupController|SnapshotMetadata|ExpandVolume|DeleteSnapshot|ListSnapshots|CreateSnapshot|.*\[SKIPPED\] )' | grep -v '^S \[SKIPPED\]'
echo "--- failures"
grep -B2 -A12 '\[FAIL\]' /tmp/sanity.out | head -80
tail -8 /tmp/sanity.out
echo "--- csi-node log (tail)"
tail -15 /tmp/csi-node.log
exit $rc
