#!/usr/bin/env bash
# Device call K (at b2713f3 + this script), from the repository root after the wheel install and exports,
# with call J's store copied to .gpu/: the rest of the sweep queue (call J ran out of time in OmniMamba's
# as_published points, which the model-code change of b2713f3 made new), then bench.persistent_variants (the device budget left no room for bench.eval_cpu --all-on-worker).
set -x
exec > $OUT/callK.log 2>&1
nvidia-smi --query-gpu=name,uuid,driver_version --format=csv,noheader
bash reports/speed/sweep_queue.sh reports/speed/queueK.txt 220
timeout -k 5 150 python3 -m bench.persistent_variants --out $OUT
