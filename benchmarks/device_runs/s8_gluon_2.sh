#!/bin/bash
# Session 8, issue 3 (Gluon dK/dQ kernel), device call 2: the CMD benchmark default vs Gluon (launch replay
# now rebuilding the Gluon kernel's tensor descriptors), the kernel alone (CUDA-graph timing), then the GPU
# tests: the Gluon file, and the noise-once / latent replay files with the Gluon kernel switched on by env.
set -o pipefail
OUT=${OUT:-/tmp/out}; mkdir -p $OUT
export ATTNLAB_BENCH_DIR=$OUT
nvidia-smi --query-gpu=name,clocks.sm,power.draw,temperature.gpu --format=csv | tee $OUT/smi.txt
timeout 110 python benchmarks/bench_diff_kernel.py --groups cmd --T 16384 4096 --skip-fused --rounds 5 --paired 30 \
  --cooldown 1 --profile-noise --profile-variants --name s8_gluon_e2e_2 \
  --noise-variants "gluon=:GLUON_DK=true" 2>&1 | tee $OUT/e2e.log | tail -30
timeout 60 python benchmarks/bench_noise_gluon.py --T 1024 999 4096 16384 --configs 64,4,8,0,0 64,3,8,0,1 \
  2>&1 | tee $OUT/micro.log | tail -14
timeout 45 python -m pytest -m gpu -x -v tests/test_diff_noise_gluon.py 2>&1 | tail -12 | tee $OUT/tests_gluon.log
ATTNLAB_NOISE_GLUON=1 timeout 60 python -m pytest -m gpu -x -q tests/test_diff_noise_once.py tests/test_diff_latent_launch.py \
  2>&1 | tail -8 | tee $OUT/tests_noise_once_gluon_on.log
