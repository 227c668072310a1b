#!/bin/bash
# (Record: the Gluon kernel this ran was removed after session 8, measured slower; code at its branch merge.)
# Session 8 round 2, issue 3 (Gluon noise forward, 4-head groups), device call 1: the kernel alone (every
# output vs the fp32 reference and the Triton kernel; CUDA-graph timing at 1K-16K; EARLY rescale on/off),
# the GPU tests of the new file, then a short CMD benchmark: default, Gluon dK/dQ, Gluon dK/dQ + forward.
set -o pipefail
OUT=${OUT:-/tmp/out}; mkdir -p $OUT
export ATTNLAB_BENCH_DIR=$OUT
nvidia-smi --query-gpu=name,clocks.sm,power.draw,temperature.gpu --format=csv | tee $OUT/smi.txt
timeout 60 python benchmarks/bench_noise_fwd_gluon.py --T 1024 999 4096 16384 --configs 64,64,2,8,0 \
  --name s8f_fwd_micro_1 2>&1 | tee $OUT/micro.log | tail -16
timeout 55 python -m pytest -m gpu -x -v tests/test_diff_noise_fwd_gluon.py 2>&1 | tail -14 | tee $OUT/tests.log
timeout 90 python benchmarks/bench_diff_kernel.py --groups cmd --T 16384 4096 --skip-fused --rounds 3 --paired 10 \
  --cooldown 1 --profile-noise --profile-variants --name s8f_e2e_1 \
  --noise-variants "gluon dk=:GLUON_DK=true" "gluon dk+fwd=:GLUON_DK=true:GLUON_FWD=true" 2>&1 | tee $OUT/e2e.log | tail -45
