#!/usr/bin/env bash
# Device call B: re-measure every OmniMamba point, every image point (Table 3) and the evaluation
# throughput of all three models; the baselines' long-generation points stay from the store.
set -x
D=/tmp/speed; mkdir -p $D; cp .gpu/speed_points.jsonl .gpu/speed_runs.jsonl $D/
python3 run_speed.py --models omnimamba,showo,janusflow --modes best --output-dir $D --point-timeout 60 --full-budget 0 --eval-samples 128
python3 run_speed.py --models omnimamba,showo,janusflow --modes as_published --output-dir $D --point-timeout 30 --full-budget 0 --decode-steps 8 --repeats 1
python3 run_speed.py --models showo --modes as_published+cudnn --lengths 1024,16384,23552 --output-dir $D --point-timeout 30 --full-budget 0 --decode-steps 8 --repeats 1
python3 run_speed.py --models janusflow --modes as_published+cudnn --lengths 1024,100000 --output-dir $D --point-timeout 30 --full-budget 0 --decode-steps 8 --repeats 1
