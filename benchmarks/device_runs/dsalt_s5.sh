#!/usr/bin/env bash
# Session-5 DSALT device call, from the repo root on the device:
#   bash benchmarks/device_runs/dsalt_s5.sh OUT MODE
# MODE ab: the A/B script (call-1 set, forced launch configs) first, then the launch-replay and DSALT
# GPU tests; MODE final: the A/B script's call-2 set (autotuned: flex window-only, attnlab window-only,
# DSALT and its landmark-backward / delta variants, host times, 32K kernel timeline), then the tests;
# MODE bench: bench_dsalt.py (DSALT, attnlab window-only, flex window-only; phases, profile), then tests.
set -u
OUT=$1; MODE=${2:-ab}; BS=${3:-200}; TS=${4:-130}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 ATTNLAB_BENCH_DIR="$OUT"
T0=$(date +%s)
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,temperature.gpu,power.draw --format=csv,noheader
python -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"
if [ "$MODE" = ab ]; then
  echo "== A/B (t=$(( $(date +%s)-T0 ))s)"
  ATTNLAB_DSALT_AUTOTUNE=0 timeout "$BS" python benchmarks/device_runs/dsalt_s5_ab.py --set call1 --timeline --lengths 32768,4096,16384 --rounds 3 --out "$OUT"
  echo "== A/B rc=$? (t=$(( $(date +%s)-T0 ))s)"
elif [ "$MODE" = final ]; then
  echo "== A/B, autotuned (t=$(( $(date +%s)-T0 ))s)"
  timeout "$BS" python benchmarks/device_runs/dsalt_s5_ab.py --set call2 --lengths 32768,16384,4096 --rounds 3 \
    --timeline --out "$OUT"
  echo "== A/B rc=$? (t=$(( $(date +%s)-T0 ))s)"
else
  echo "== bench (t=$(( $(date +%s)-T0 ))s)"
  timeout "$BS" python benchmarks/bench_dsalt.py --variants attnlab_dsalt,attnlab_window,flex_window \
    --lengths 32768,16384,4096 --phases --profile --name dsalt_s5
  echo "== bench rc=$? (t=$(( $(date +%s)-T0 ))s)"
fi
echo "== gpu tests (t=$(( $(date +%s)-T0 ))s)"
timeout "$TS" python -m pytest -x -v -p no:cacheprovider -rA --tb=short -m gpu tests/test_launch_replay.py \
  tests/test_dsalt_kernels.py 2>&1 | grep -E "PASSED|FAILED|ERROR|Error|assert|passed|failed|skipped" | tail -30
echo "== cuda kernel tests (t=$(( $(date +%s)-T0 ))s)"
timeout 40 python -m pytest -v -p no:cacheprovider -rA --tb=short tests/test_dsalt_kernels.py \
  -k "stable_slot or fallback or causal" 2>&1 | grep -E "PASSED|FAILED|ERROR|Error|assert|passed|failed|skipped" | tail -25
echo "== done (t=$(( $(date +%s)-T0 ))s)"
