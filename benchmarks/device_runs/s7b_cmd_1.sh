# Session 7 round 2, issue 3 (CMD noise-once), device call 1: GPU tests of the P cache (dK kernel stores P2^T
# tiles, the dV kernel reads them) and the default, then the benchmark: 5 rounds + 30 interleaved pairs per
# candidate against the notebook, the P cache with three dV configs, per-kernel profiles.
set -o pipefail
timeout 70 python -m pytest -m gpu -x -v tests/test_diff_noise_once.py \
  -k "p-cache or default or (bf16_gpu and 1000) or replay_equals_slow_path_gpu and lean" 2>&1 | tail -14 | tee $OUT/tests.log
ATTNLAB_BENCH_DIR=$OUT timeout 150 python benchmarks/bench_diff_kernel.py --groups cmd --T 16384 4096 --skip-fused \
  --rounds 5 --paired 30 --cooldown 1 --host --profile-noise --profile-variants --name s7b_cmd_1 --noise-variants \
  "P cache, dV 64x128 4 stages=:P_CACHE=true" \
  "P cache, dV 128x128 2 stages=:P_CACHE=true:dv=[128,128,2,8,2,1]" \
  "P cache, dV 64x128 5 stages=:P_CACHE=true:dv=[64,128,2,8,5,1]" 2>&1 | tee $OUT/bench.log
nvidia-smi --query-gpu=clocks.sm,power.draw,temperature.gpu --format=csv | tee -a $OUT/tests.log
