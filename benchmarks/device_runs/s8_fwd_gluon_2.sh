#!/bin/bash
# (Record: the Gluon kernel this ran was removed after session 8, measured slower; code at its branch merge.)
# Session 8 round 2, issue 3 (Gluon noise forward), device call 2: the kernel alone (Triton vs the Gluon
# 2-head form at three ring/tile configs and the 4-head form; every output checked), the GPU tests, then the
# CMD benchmark: default, Gluon dK/dQ, Gluon dK/dQ + Gluon forward (2-head form, BN 64 / BN 128).
set -o pipefail
OUT=${OUT:-/tmp/out}; mkdir -p $OUT
export ATTNLAB_BENCH_DIR=$OUT
nvidia-smi --query-gpu=name,clocks.sm,power.draw,temperature.gpu --format=csv | tee $OUT/smi.txt
timeout 55 python benchmarks/bench_noise_fwd_gluon.py --T 1024 999 4096 16384 \
  --configs 128,64,3,8,0,2 128,128,2,8,0,2 64,64,2,8,1,4 --name s8f_fwd_micro_2 2>&1 | tee $OUT/micro.log | tail -22
timeout 45 python -m pytest -m gpu -x -v tests/test_diff_noise_fwd_gluon.py 2>&1 | tail -12 | tee $OUT/tests.log
timeout 120 python benchmarks/bench_diff_kernel.py --groups cmd --T 16384 4096 --skip-fused --rounds 5 --paired 30 \
  --cooldown 1 --profile-noise --profile-variants --name s8f_e2e_2 \
  --noise-variants "gluon dk=:GLUON_DK=true" "gluon dk+fwd=:GLUON_DK=true:GLUON_FWD=true" \
  "gluon dk+fwd bn128=:GLUON_DK=true:GLUON_FWD=true:GLUON_FWD_CONFIG=[128,128,2,8,0,2]" 2>&1 | tee $OUT/e2e.log | tail -60
