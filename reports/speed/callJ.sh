#!/usr/bin/env bash
# Device call J (planned, not yet run): the next session's first call, from the repository root after the
# wheel install and exports, with this report's store copied to .gpu/. About 9 minutes:
# 1. bench.eval_cpu with the pipeline as it is (OneAhead's first call on the caller's thread): is the fresh
#    evaluation point fast now? 2. the old pipeline (--all-on-worker): which part of a main-thread call
#    ends the slow state; 3. the text-to-image projections at 16/32 rows (bench.skinny_gemm); 4. the sweep's
#    evaluation points again (the only points whose code version the OneAhead change moved).
set -x
exec > $OUT/callJ.log 2>&1  # one log: at most 8 files come back from $OUT
timeout -k 5 120 python3 -m bench.eval_cpu --out $OUT --sequence first
timeout -k 5 150 python3 -m bench.eval_cpu --out $OUT --all-on-worker
timeout -k 5 120 python3 -m bench.skinny_gemm --out $OUT
bash reports/speed/sweep_queue.sh reports/speed/queueF.txt $((570 - SECONDS))  # what is left of ~9.5 min
