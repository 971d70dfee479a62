#!/usr/bin/env bash
# Device call M (issue 15): the whole sweep of queueF.txt on ONE machine from an empty store, in back-to-back
# calls to one warm machine: `bash reports/speed/callM.sh N SECONDS` from the repository root after the
# wheel install and exports (README.md), N = 1, 2, ... and SECONDS what the call may use. Before call 1 the
# store in .gpu/ is emptied (`: > .gpu/speed_points.jsonl; : > .gpu/speed_runs.jsonl; rm -f
# .gpu/done_lines.txt`); later calls continue from /tmp/speed (or, on a fresh machine, from the store the last
# call returned, copied to .gpu/). Once per machine, before any point, `bench.kernel_check` runs the decode
# kernels compiled on this GPU against the PyTorch path; if they fail, the kernels of 25b46eb (before the
# shared conv helper; copies in .gpu/pre_D1/, made by `git show 25b46eb:models/omnimamba/F.py` for F = fused,
# persistent, ssd) are put back, on this and every later call, and the log says so.
set -x
exec > $OUT/callM$1.log 2>&1
nvidia-smi --query-gpu=name,uuid,driver_version --format=csv,noheader
python3 -c "import sys, torch, triton, transformers; print(sys.version.split()[0], torch.__version__, torch.version.cuda, triton.__version__, transformers.__version__)"
if [ ! -f /tmp/kernel_check.rc ]; then
  timeout -k 5 150 python3 -m bench.kernel_check; echo $? > /tmp/kernel_check.rc
fi
if [ "$(cat /tmp/kernel_check.rc)" != 0 ]; then
  echo "KERNEL CHECK FAILED: sweeping with the kernels of 25b46eb"
  cp .gpu/pre_D1/*.py models/omnimamba/; rm -f models/omnimamba/triton_conv.py
fi
bash reports/speed/sweep_queue.sh reports/speed/queueF.txt $(($2 - SECONDS))
