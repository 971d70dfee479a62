#!/usr/bin/env bash
# Device call D (after the batch MMU embeddings, 2026-12-03): every OmniMamba best point (long generation,
# the Table 3 image batch, evaluation throughput), then the baselines' best image and evaluation points
# (and their 1k context point) in the same run, OmniMamba's evaluation and text-to-image profile, then
# OmniMamba's as_published points. The store is copied to $OUT after each sweep command.
set -x
D=/tmp/speed; mkdir -p $D; cp .gpu/speed_points.jsonl .gpu/speed_runs.jsonl $D/
save() { cp $D/speed_points.jsonl $D/speed_runs.jsonl $OUT/; }
python3 run_speed.py --models omnimamba --modes best --output-dir $D --point-timeout 60 --full-budget 0 --eval-samples 128; save
python3 run_speed.py --models showo,janusflow --modes best --lengths 1024 --output-dir $D --point-timeout 60 --full-budget 0 --eval-samples 128; save
python3 -m bench.eval_profile --out $OUT --models omnimamba --pipeline-samples 256
python3 run_speed.py --models omnimamba --modes as_published --output-dir $D --point-timeout 30 --full-budget 0 --decode-steps 8 --repeats 1; save
