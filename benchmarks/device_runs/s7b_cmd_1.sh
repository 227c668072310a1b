# Session 7 round 2, issue 3 (CMD noise-once), device call 1: the benchmark (rounds in alternating order + 30
# interleaved pairs per candidate against the notebook), candidates: the backward's P cache (the dK kernel
# stores P2^T tiles, the dV kernel reads them), the forward's P cache (P2 written once, then N = P2 V), both;
# per-kernel profiles; then the GPU tests of the new paths (bf16, T = 1024, vs fp32 reference and SDPA path).
set -o pipefail
ATTNLAB_BENCH_DIR=$OUT timeout 160 python benchmarks/bench_diff_kernel.py --groups cmd --T 16384 4096 --skip-fused \
  --rounds 4 --paired 30 --cooldown 1 --host --profile-noise --profile-variants --name s7b_cmd_1 --noise-variants \
  "bwd P cache=:P_CACHE=true" \
  "bwd P cache, dV 128x128 2 stages=:P_CACHE=true:dv=[128,128,2,8,2,1]" \
  "fwd P cache=:FWD_P_CACHE=true" \
  "both P caches=:FWD_P_CACHE=true:P_CACHE=true" 2>&1 | tee $OUT/bench.log
timeout 65 python -m pytest -m gpu -x -v tests/test_diff_noise_once.py \
  -k "p-cache or p-caches or default" 2>&1 | tail -12 | tee $OUT/tests.log
nvidia-smi --query-gpu=clocks.sm,power.draw,temperature.gpu --format=csv | tee -a $OUT/tests.log
