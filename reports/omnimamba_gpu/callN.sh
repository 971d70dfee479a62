#!/usr/bin/env bash
# Device call N (seventh session), from the repository root after the wheel install and exports of
# ../speed/README.md:
#  0. bench.l2_prefetch: GEMVs with their weights cold / L2-hot / bulk-prefetched; fused.py's CUDA-core
#     GEMVs at 16 rows against the norm kernel + cuBLAS (+ conv) the batch-16 step runs; the batch-1 and
#     batch-16 steps with the next layer's weights prefetched into L2 from a side stream.
#  1. bench.persistent_variants --set programs: whether more programs an SM (launched once a phase, no
#     barrier, so it cannot hang) or Triton-pipelined tile loops make the persistent kernel's phases fast;
#     call K had 1.906 ms/token for one program an SM without barriers against 1.265 for fused.py's step.
#  2. bench.eval_cpu --all-on-worker: the old evaluation pipeline's parts, to find which part of a
#     main-thread model call ends its slow state (../speed/README.md; the fix does not depend on it).
set -x
exec > $OUT/callN.log 2>&1
nvidia-smi --query-gpu=name,uuid,driver_version --format=csv,noheader
timeout -k 5 200 python3 -m bench.l2_prefetch --out $OUT
timeout -k 5 200 python3 -m bench.persistent_variants --out $OUT --set programs
timeout -k 5 120 python3 -m bench.eval_cpu --out $OUT --all-on-worker
