#!/bin/sh
# The csi-sanity run, inside a node VM: csi-node serves the Node service on a
# unix socket here (and its pool executor); the controller runs on the host,
# reached at 10.0.2.2. Mount and staging paths are the node's own.
# args: NODE_NAME CONTROLLER_PORT
node=$1 port=$2
export RUST_LOG=info
mkdir -p /run/csi /tmp/sanity
csi-node --node-name "$node" --pool-device /dev/vda --kubeconfig /guest/kubeconfig --csi-endpoint unix:///run/csi/csi.sock --kubelet-dir /tmp/sanity >/tmp/csi-node.log 2>&1 &
for _ in $(seq 120); do [ -S /run/csi/csi.sock ] && break; sleep 0.5; done
[ -S /run/csi/csi.sock ] || { echo "FAIL csi-node did not serve its socket"; tail -20 /tmp/csi-node.log; exit 1; }
# Two passes: mount volumes, then raw block volumes.
rc=0
for access in mount block; do
	echo "=== csi-sanity, access type $access"
	csi-sanity -csi.endpoint unix:///run/csi/csi.sock -csi.controllerendpoint "dns:///10.0.2.2:$port" \
		-csi.mountdir /tmp/sanity/mount -csi.stagingdir /tmp/sanity/stage \
		-csi.testvolumesize 67108864 -csi.testvolumeexpandsize 134217728 \
		-csi.testvolumeaccesstype "$access" \
		-ginkgo.no-color -ginkgo.v >/tmp/sanity-$access.out 2>&1 || rc=1
	# Every skipped spec with ginkgo's reason, any failure, then the summary.
	echo "--- skipped specs ($access)"
	grep -A4 '^S \[SKIPPED\]' /tmp/sanity-$access.out | grep -E '^(Controller|Node|Identity|GroupController|SnapshotMetadata|.*\[SKIPPED\] )' | grep -v '^S \[SKIPPED\]'
	echo "--- failures ($access)"
	grep -A20 '\[FAIL\]' /tmp/sanity-$access.out | grep -v '^I1' | head -60
	tail -3 /tmp/sanity-$access.out
done
echo "--- csi-node log (tail)"
tail -15 /tmp/csi-node.log
exit $rc
