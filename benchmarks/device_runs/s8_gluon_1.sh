#!/bin/bash
# Session 8, issue 3 (Gluon dK/dQ kernel), device call 1: the kernel alone (correctness + timing vs the
# Triton lean kernel, several Gluon configs), then the GPU tests, then a short end-to-end CMD run.
set -o pipefail
OUT=${OUT:-/tmp/out}; mkdir -p $OUT
export ATTNLAB_BENCH_DIR=$OUT
nvidia-smi --query-gpu=name,clocks.sm,power.draw,temperature.gpu --format=csv | tee $OUT/smi.txt
timeout 130 python benchmarks/bench_noise_gluon.py --T 1024 999 4096 16384 \
  --configs 64,2,8,1,1 64,2,8,1,0 32,5,8,1,1 64,3,8,0,1 32,8,8,0,1 2>&1 | tee $OUT/micro.log
timeout 50 python -m pytest -m gpu -x -v tests/test_diff_noise_gluon.py 2>&1 | tail -15 | tee $OUT/tests.log
timeout 100 python benchmarks/bench_diff_kernel.py --groups cmd --T 16384 4096 --skip-fused --rounds 3 --paired 20 \
  --cooldown 1 --profile-noise --profile-variants --name s8_gluon_e2e_1 \
  --noise-variants "gluon=:GLUON_DK=true" "gluon 32x5 early Q=:GLUON_DK=true:GLUON_DK_CONFIG=[32,5,8,1,1]" 2>&1 | tail -45 | tee $OUT/e2e.log
