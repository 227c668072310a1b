#!/bin/bash
# Session-4 lead check, call D (H100): GPU tests after the review refactor (spectral hot-window
# helper shared by v1/v2; noise_once importing latent's tile load), spectral decode at 32K again.
set -o pipefail
O=${OUT:-/tmp/out}; mkdir -p $O/res
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD ATTNLAB_BENCH_DIR=$O/res
L=$O/log.txt; T0=$(date +%s)
t() { echo "== $1 (t=$(( $(date +%s)-T0 ))s)" | tee -a $L; }
F="PASSED|FAILED|ERROR|Error|assert|passed|failed"
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm --format=csv,noheader | tee $L
t "gpu tests: spectral"
timeout 120 python -m pytest -q -m gpu -p no:cacheprovider -rfE --tb=short tests/test_spectral.py 2>&1 | grep -E "$F" | tail -10 | tee -a $L
t "gpu tests: noise-once"
timeout 100 python -m pytest -q -m gpu -p no:cacheprovider -rfE --tb=short tests/test_diff_noise_once.py 2>&1 | grep -E "$F" | tail -10 | tee -a $L
t "spectral 32K"
timeout 60 python benchmarks/bench_spectral.py --batch 1 8 --lengths 32768 --no-ref --no-cold --repeats 30 --name spectral_s4_lead_d 2>&1 | grep -E "^\| [18] " | tee -a $L
t "done"
