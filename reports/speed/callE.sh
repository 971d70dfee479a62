#!/usr/bin/env bash
# Device call E (2026-12-03, after the graphed T2I caption prefill and sweep flags in each point's
# identity): OmniMamba's evaluation + text-to-image profile (with the graphed-vs-eager prefill check),
# then the Table 3 image points and the evaluation-throughput table of all three models at 256 samples
# per workload, one model per command, the store copied to $OUT after each.
set -x
D=/tmp/speed; mkdir -p $D; cp .gpu/speed_points.jsonl .gpu/speed_runs.jsonl $D/
save() { cp $D/speed_points.jsonl $D/speed_runs.jsonl $OUT/; }
python3 -m bench.eval_profile --out $OUT --models omnimamba --pipeline-samples 256
for m in omnimamba showo janusflow; do
  python3 run_speed.py --models $m --modes best --lengths 1024 --output-dir $D --point-timeout 60 --full-budget 0 --eval-samples 256; save
done
