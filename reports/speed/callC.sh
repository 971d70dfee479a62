#!/usr/bin/env bash
# Device call C: the Inception-rate point (device resize, stand-in weights of the real architecture),
# then OmniMamba's per-phase evaluation profile (model-only; pipelined with 0 and 8 prep workers, and with
# 8 and a 0.5 ms GIL switch interval).
set -x
D=/tmp/speed; mkdir -p $D; cp .gpu/speed_points.jsonl .gpu/speed_runs.jsonl $D/
python3 -m bench.inception_stand_in fill .gpu/inception_zero.pt.gz /tmp/inception_stand_in.pt --seed 0
OMNIBENCH_INCEPTION=/tmp/inception_stand_in.pt python3 run_speed.py --models omnimamba --modes best --output-dir $D --eval-workloads none --fid-features 5000 --fid-workers 12
cp $D/speed_points.jsonl $D/speed_runs.jsonl $OUT/
python3 -m bench.eval_profile --out $OUT --models omnimamba --no-t2i --pipeline-samples 256 --switch-interval 0.0005
