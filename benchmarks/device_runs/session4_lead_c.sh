#!/bin/bash
# Session-4 lead check, call C (H100): the DSALT tests call A's time limit cut (the tight fp32 GPU
# test alone, then the kernel tests that run on CUDA) and DSALT at 16K.
set -o pipefail
O=${OUT:-/tmp/out}; mkdir -p $O/res
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD ATTNLAB_BENCH_DIR=$O/res
L=$O/log.txt; T0=$(date +%s)
t() { echo "== $1 (t=$(( $(date +%s)-T0 ))s)" | tee -a $L; }
F="PASSED|FAILED|ERROR|Error|assert|passed|failed"
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm --format=csv,noheader | tee $L
t "dsalt fp32 GPU test"
timeout 170 python -m pytest -v -m gpu -p no:cacheprovider -rA --tb=short tests/test_dsalt_kernels.py -k fp32 2>&1 | grep -E "$F" | tail -6 | tee -a $L
t "dsalt kernel tests on CUDA"
timeout 100 python -m pytest -v -p no:cacheprovider -rA --tb=short tests/test_dsalt_kernels.py -k "segments or stable_slot or fallback or causal" 2>&1 | grep -E "$F" | tail -14 | tee -a $L
t "dsalt bench 16K"
timeout 90 python benchmarks/bench_dsalt.py --variants attnlab_dsalt,attnlab_window,flex_window --lengths 16384 --phases --name dsalt_s4_lead16k 2>&1 | grep -E "^T=|^\| 16" | tee -a $L
t "done"
