#!/usr/bin/env bash
# The H200 sweep of issue 15 as a queue: `bash reports/speed/sweep_queue.sh QUEUE SECONDS` runs the
# `run_speed.py` flag lines of the file QUEUE in order, from the repository root on the device machine
# (after the wheel install and exports of README.md), with .gpu/ holding the store to continue. Each line
# runs in its own process, resumes from the store (points already measured with the same code and flags
# are kept) and is cut at the deadline, SECONDS from the start; the next device call continues the queue
# with the store this one left. `$C` and `$P` in a line stand for the best and as_published flags below; a
# line may start with VAR=value settings for its process. The store is copied to $OUT every 20 s and after
# each line. A call on the machine the last one used (still warm) continues from the store that call left
# in /tmp/speed, which is at least as new as the copy returned from it. A line that exited 0 is written to
# $D/done_lines.txt with a digest of the tree's Python sources, and a later call with the same sources skips
# it without starting a process (each start loads the model to find its points stored: 10-20 s a line).
set -x
QUEUE=$1; D=/tmp/speed; mkdir -p $D
[ -f $D/speed_points.jsonl ] || cp .gpu/speed_points.jsonl .gpu/speed_runs.jsonl $D/
[ -f $D/done_lines.txt ] || cp .gpu/done_lines.txt $D/ 2>/dev/null
END=$((SECONDS + ${2:-560}))
save() { cp $D/speed_points.jsonl $D/speed_runs.jsonl $D/done_lines.txt $OUT/ 2>/dev/null; }
TREE=$(find . -name '*.py' -not -path './.*' -not -path './build/*' | LC_ALL=C sort | xargs cat | sha256sum | cut -c1-16)
(set +x; while sleep 20; do save; done) >/dev/null 2>&1 &
SAVER=$!; trap 'kill $SAVER 2>/dev/null; save' EXIT
C="--point-timeout 60 --full-budget 0 --eval-samples 256"
P="--point-timeout 30 --full-budget 0 --decode-steps 8 --repeats 1"
if grep -q OMNIBENCH_INCEPTION=/tmp/inception_stand_in.pt "$QUEUE" && [ ! -f /tmp/inception_stand_in.pt ]; then
  python3 -m bench.inception_stand_in fill .gpu/inception_zero.pt.gz /tmp/inception_stand_in.pt --seed 0
fi
grep -v '^#' "$QUEUE" | while read -r line; do
  [ -n "$line" ] || continue
  if grep -qxF "$TREE $line" $D/done_lines.txt 2>/dev/null; then echo "QUEUE: done before: $line"; continue; fi
  left=$((END - SECONDS))
  if [ $left -lt 30 ]; then echo "QUEUE: out of time before: $line"; continue; fi
  eval "timeout -k 10 $left env ${line%%--*} python3 run_speed.py --output-dir $D --${line#*--}" </dev/null
  rc=$?; echo "QUEUE: exit $rc after $SECONDS s: $line"
  [ $rc -eq 0 ] && echo "$TREE $line" >> $D/done_lines.txt; save
done
