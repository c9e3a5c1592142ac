#!/usr/bin/env bash
# The GPU checks, on a machine with a CUDA device and torch installed: the CUDA tests, the whole
# suite (whose training tests then run on CUDA: tiny_config leaves train.device at auto), then
# the GPU benchmark. Logs go to OUT_DIR.
#   bash scripts/gpu_check.sh [OUT_DIR]
set -uo pipefail
out=${1:-gpu-check}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
nvidia-smi -L
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version())"
timeout 90 python3 -m pytest -q -rA tests/test_cuda.py -s -p no:cacheprovider 2>&1 | tee "$out/test_cuda.log"
timeout 170 python3 -m pytest -q -rfE --durations=8 --ignore=tests/test_cuda.py -p no:cacheprovider 2>&1 | tee "$out/suite.log"
timeout 150 python3 scripts/bench_gpu.py --utterances 300 --out "$out/bench_gpu.md" 2>&1 | tee "$out/bench_gpu.log"
