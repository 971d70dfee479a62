#!/usr/bin/env bash
# Planned device call (not yet run; about 5 device minutes after the start), from the repository root after
# the wheel install and exports of ../speed/README.md:
#  1. bench.persistent_variants --set programs: whether more programs an SM (launched once a phase, no
#     barrier, so it cannot hang) or Triton-pipelined tile loops make the persistent kernel's phases fast;
#     call K had 1.906 ms/token for one program an SM without barriers against 1.265 for fused.py's step.
#  2. bench.eval_cpu --all-on-worker: the old evaluation pipeline's parts, to find which part of a
#     main-thread model call ends its slow state (../speed/README.md; the fix does not depend on it).
set -x
exec > $OUT/callN.log 2>&1
nvidia-smi --query-gpu=name,uuid,driver_version --format=csv,noheader
timeout -k 5 240 python3 -m bench.persistent_variants --out $OUT --set programs
timeout -k 5 140 python3 -m bench.eval_cpu --out $OUT --all-on-worker
