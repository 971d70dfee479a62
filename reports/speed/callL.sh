#!/usr/bin/env bash
# Device call L (planned, not yet run), from the repository root after the wheel install and exports, with
# this report's store copied to .gpu/ (cp reports/speed/speed_points.jsonl reports/speed/speed_runs.jsonl
# .gpu/): OmniMamba's points at the current model code (about 4 minutes: its best line re-measures 9
# context points, the image point and 3 evaluation points; as_published its 9 context points and the
# image point), the kept lines, then the old pipeline's parts (bench.eval_cpu --all-on-worker: which part
# of a main-thread call ended the slow state). It leaves the ratios dividing numbers of two machines; a
# sweep all on one machine is queueF.txt from an empty store in three back-to-back calls (calls I1-I3:
# about 25 device minutes).
set -x
exec > $OUT/callL.log 2>&1
nvidia-smi --query-gpu=name,uuid,driver_version --format=csv,noheader
bash reports/speed/sweep_queue.sh reports/speed/queueL.txt 420
timeout -k 5 140 python3 -m bench.eval_cpu --out $OUT --all-on-worker
