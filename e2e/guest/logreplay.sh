#!/bin/sh
# The crash suite's disk half (e2e/suites/crash.sh): the pool's whole
# device on dm-log-writes during COUNT transactions, then every state a
# disk that drops unflushed writes could have been left in, replayed and
# checked (every EVERY-th flush point, and the end), each point also
# UNFLUSHED times with a random half of the writes not yet flushed there.
# Args: COUNT EVERY [UNFLUSHED].
set -u
count=$1 every=$2 unflushed=${3:-0}
. /guest/lib.sh
insmod /lib/modules/extra/dm-log-writes.ko || { echo "FAIL dm-log-writes: insmod failed"; exit 1; }
loop 0 /tmp/pool.img 256
loop 1 /tmp/log.img 2048
loop 2 /tmp/replay.img 256
loop 3 /tmp/cow.img 256
dmsetup create crashlog --table "0 $(blockdev --getsz /dev/loop0) log-writes /dev/loop0 /dev/loop1" || exit 1
dev=/dev/dm-$(dmsetup info -c --noheadings -o minor crashlog | tr -d ' ')
echo "--- $count transactions on a pool laid out on $dev (log-writes over /dev/loop0, log on /dev/loop1)"
thin-vmtest powerrun --device "$dev" --record /tmp/record --count "$count" --mark-device crashlog --history /tmp/history --finish yes
rc=$?
[ $rc -eq 0 ] || { echo "FAIL logged run: thin-vmtest powerrun exit status $rc"; exit 1; }
dmsetup status crashlog
dmsetup remove crashlog || exit 1
echo "--- replaying the log"
thin-vmtest replay-log --log /dev/loop1 --history /tmp/history --replay /tmp/replay.img --replay-device /dev/loop2 --cow /dev/loop3 --every "$every" --unflushed "$unflushed"
