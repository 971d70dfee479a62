#!/usr/bin/env bash
# Device call K (at b2713f3 + this script), from the repository root after the wheel install and exports,
# with call J's store copied to .gpu/: the rest of the sweep queue (call J ran out of time in OmniMamba's
# as_published points, which the model-code change of b2713f3 made new), then bench.persistent_variants, then the old pipeline's parts (bench.eval_cpu --all-on-worker, fixed after call J).
set -x
exec > $OUT/callK.log 2>&1
nvidia-smi --query-gpu=name,uuid,driver_version --format=csv,noheader
bash reports/speed/sweep_queue.sh reports/speed/queueK.txt 300
timeout -k 5 170 python3 -m bench.persistent_variants --out $OUT
timeout -k 5 140 python3 -m bench.eval_cpu --out $OUT --all-on-worker
