#!/bin/bash
# Session 8, issue 3: the check NOT yet run on a device (two calls per helper were used): the Gluon
# kernel's launch replay (num_warps no longer a kernel parameter), then the CMD benchmark default vs
# Gluon with the replay working. Switch GLUON_DK on by default only if the replay test passes and the
# Gluon variant is not slower at 4K and 16K.
set -o pipefail
OUT=${OUT:-/tmp/out}; mkdir -p $OUT
export ATTNLAB_BENCH_DIR=$OUT
timeout 60 python -m pytest -m gpu -x -v tests/test_diff_noise_gluon.py 2>&1 | tail -12 | tee $OUT/tests_gluon.log
timeout 110 python benchmarks/bench_diff_kernel.py --groups cmd --T 16384 4096 --skip-fused --rounds 5 --paired 30 \
  --cooldown 1 --profile-noise --profile-variants --name s8_gluon_e2e_3 \
  --noise-variants "gluon=:GLUON_DK=true" 2>&1 | tee $OUT/e2e.log | tail -30
ATTNLAB_NOISE_GLUON=1 timeout 240 python -m pytest -m gpu -x -q tests/test_diff_noise_once.py tests/test_diff_latent_launch.py \
  2>&1 | tail -8 | tee $OUT/tests_noise_once_gluon_on.log
