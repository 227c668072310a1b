#!/bin/bash
# Session-4 lead check, call A (H100): the merged tree's GPU tests for what changed this session
# (spectral replay fix, diff latent launch replay, DSALT final kernels), the diff launch-replay A/B in
# one process, and DSALT's final code at 32K/4K. Run from the repo root: bash benchmarks/device_runs/session4_lead_a.sh
set -o pipefail
O=${OUT:-/tmp/out}; mkdir -p $O/res
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD ATTNLAB_BENCH_DIR=$O/res
L=$O/log.txt; T0=$(date +%s)
t() { echo "== $1 (t=$(( $(date +%s)-T0 ))s)" | tee -a $L; }
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm --format=csv,noheader | tee $L
python -c "import torch,triton;print('torch',torch.__version__,'triton',triton.__version__)" | tee -a $L
F="PASSED|FAILED|ERROR|Error|assert|passed|failed"
t "gpu tests: diff latent launch replay (ATTNLAB_FAST_LAUNCH=1)"
ATTNLAB_FAST_LAUNCH=1 timeout 70 python -m pytest -v -m gpu -p no:cacheprovider -rA --tb=short tests/test_diff_latent_launch.py tests/test_diff_latent.py 2>&1 | grep -E "$F" | tail -15 | tee -a $L
t "replay A/B (training step)"
ATTNLAB_FAST_LAUNCH=1 timeout 60 python benchmarks/device_runs/replay_ab.py --rounds 3 2>&1 | tail -8 | tee -a $L
t "gpu tests: spectral"
timeout 110 python -m pytest -v -m gpu -p no:cacheprovider -rA --tb=short tests/test_spectral.py 2>&1 | grep -E "$F" | tail -40 | tee -a $L
t "gpu tests: dsalt"
timeout 110 python -m pytest -v -m gpu -p no:cacheprovider -rA --tb=short tests/test_dsalt_kernels.py tests/test_dsalt.py 2>&1 | grep -E "$F" | tail -25 | tee -a $L
t "dsalt bench"
timeout 130 python benchmarks/bench_dsalt.py --variants attnlab_dsalt,attnlab_window,flex_window --lengths 32768,4096 --phases --name dsalt_s4_lead 2>&1 | grep -vE "Warning|^\{" | tail -30 | tee -a $L
t "done"
