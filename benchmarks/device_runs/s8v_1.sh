#!/bin/bash
# (Record: the Gluon kernel this ran was removed after session 8, measured slower; code at its branch merge.)
# Session 8 round 2, issue 3 (Gluon dV kernel, 4-head groups), device call 1: the kernel alone vs the Triton dV
# kernel (correctness vs fp32 and vs Triton, CUDA-graph timing, every config), the GPU tests of the new file,
# then a short CMD op read at 16K (default / Gluon dK/dQ / Gluon dK/dQ + Gluon dV).
set -o pipefail
OUT=${OUT:-/tmp/out}; mkdir -p $OUT
export ATTNLAB_BENCH_DIR=$OUT
nvidia-smi --query-gpu=name,clocks.sm,power.draw,temperature.gpu --format=csv | tee $OUT/smi.txt
timeout 70 python benchmarks/bench_noise_dv_gluon.py --T 1024 999 4096 16384 --name s8v_micro_1 \
  --configs 4,64,64,2,8 4,32,64,4,8 2,64,128,3,8 2,64,128,4,8 2>&1 | tee $OUT/micro.log | tail -16
timeout 80 python -m pytest -m gpu -x -v tests/test_diff_noise_dv_gluon.py 2>&1 | tail -14 | tee $OUT/tests_dv_gluon.log
timeout 75 python benchmarks/bench_diff_kernel.py --groups cmd --T 16384 --skip-fused --rounds 3 --paired 16 \
  --cooldown 1 --profile-noise --profile-variants --name s8v_e2e_1 \
  --noise-variants "gluon dk=:GLUON_DK=true" "gluon dk+dv=:GLUON_DK=true:GLUON_DV=true" 2>&1 | tee $OUT/e2e.log | tail -40
