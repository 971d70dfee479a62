#!/usr/bin/env bash
# The whole H200 sweep of issue 15 as one queue, in priority order, run as `bash sweep.sh SECONDS` from the
# repository root on the device machine (after the wheel install and exports of reports/speed/README.md).
# Every command resumes from the store (points already measured with the same code and flags are kept), so
# a queue cut at its deadline goes on in the next device call by running this script again with the store
# it left. The store is copied to $OUT every 20 s and after each command.
set -x
D=/tmp/speed; mkdir -p $D; cp .gpu/speed_points.jsonl .gpu/speed_runs.jsonl $D/
END=$((SECONDS + ${1:-560}))
save() { cp $D/speed_points.jsonl $D/speed_runs.jsonl $OUT/ 2>/dev/null; }
(set +x; while sleep 20; do save; done) >/dev/null 2>&1 &
SAVER=$!; trap 'kill $SAVER 2>/dev/null; save' EXIT
step() {
  left=$((END - SECONDS))
  if [ $left -lt 30 ]; then echo "QUEUE: out of time before: $*"; return 0; fi
  timeout -k 10 $left python3 run_speed.py --output-dir $D "$@"; echo "QUEUE: exit $? after $SECONDS s: $*"; save
}
[ -f /tmp/inception_stand_in.pt ] || python3 -m bench.inception_stand_in fill .gpu/inception_zero.pt.gz /tmp/inception_stand_in.pt --seed 0
C="--point-timeout 60 --full-budget 0 --eval-samples 256"
P="--point-timeout 30 --full-budget 0 --decode-steps 8 --repeats 1"
step --models omnimamba --modes best $C
step --models showo --modes best $C
step --models janusflow --modes best $C
step --models omnimamba --modes as_published $P
step --models janusflow --modes as_published $P
step --models showo --modes as_published $P
step --models showo --modes as_published+cudnn --lengths 1024,16384,23552 $P
step --models janusflow --modes as_published+cudnn --lengths 1024,100000 $P
OMNIBENCH_INCEPTION=/tmp/inception_stand_in.pt step --models omnimamba --modes best $C --eval-workloads none --fid-features 5000 --fid-workers 12
