#!/usr/bin/env bash
# Session-4 DSALT device check, one call, from the repo root on the device:
#   bash benchmarks/device_runs/dsalt_s4.sh OUT NAME [BENCH_SECONDS] [TEST_SECONDS] [LENGTHS]
# 1. benchmark: new kernel vs the previous kernel module (attnlab/ops/dsalt/kernel_old.py, copied in
#    by the caller when wanted) vs compiled flex_attention window-only, phases + kernel profile;
# 2. the GPU tests of tests/test_dsalt*.py (gpu-marked), then the kernel tests that run on CUDA
#    (segments, stable-slot selection, fallback path). Each part under its own time limit.
set -u
OUT=$1; NAME=$2; BS=${3:-220}; TS=${4:-150}; LEN=${5:-32768,16384,4096}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 ATTNLAB_BENCH_DIR="$OUT"
T0=$(date +%s)
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,temperature.gpu,power.draw --format=csv,noheader
python -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"
V=attnlab_dsalt,attnlab_window,flex_window
[ -f attnlab/ops/dsalt/kernel_old.py ] && V=$V,attnlab_dsalt_old,attnlab_window_old
echo "== bench (t=$(( $(date +%s)-T0 ))s)"
timeout "$BS" python benchmarks/bench_dsalt.py --variants $V --lengths "$LEN" --phases --profile --name "$NAME"
echo "== bench rc=$? (t=$(( $(date +%s)-T0 ))s)"
echo "== gpu tests (t=$(( $(date +%s)-T0 ))s)"
timeout "$TS" python -m pytest -v -p no:cacheprovider -rA --tb=short -m gpu tests/test_dsalt_kernels.py tests/test_dsalt.py \
  2>&1 | grep -E "PASSED|FAILED|ERROR|Error|assert|passed|failed|skipped" | tail -40
echo "== cuda kernel tests (t=$(( $(date +%s)-T0 ))s)"
timeout 60 python -m pytest -v -p no:cacheprovider -rA --tb=short tests/test_dsalt_kernels.py \
  -k "segments or stable_slot or fallback or causal" 2>&1 | grep -E "PASSED|FAILED|ERROR|Error|assert|passed|failed|skipped" | tail -30
echo "== done (t=$(( $(date +%s)-T0 ))s)"
