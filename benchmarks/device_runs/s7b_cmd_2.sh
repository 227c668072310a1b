# Session 7 round 2, issue 3 (CMD noise-once), device call 2: GPU tests of DK_TMA (the lean dK kernel's dQ2 / dK2
# by TMA bulk reduce-add) and the default, then the benchmark: rounds in alternating order + 40 interleaved
# pairs per candidate against the notebook, per-kernel profiles. (Call 1, s7b_cmd_1.sh, measured the P caches,
# slower, removed.)
set -o pipefail
timeout 60 python -m pytest -m gpu -x -v tests/test_diff_noise_once.py \
  -k "tma or variants_bf16_gpu and default or replay_equals_slow_path_gpu and lean" 2>&1 | tail -12 | tee $OUT/tests.log
ATTNLAB_BENCH_DIR=$OUT timeout 165 python benchmarks/bench_diff_kernel.py --groups cmd --T 16384 4096 --skip-fused \
  --rounds 5 --paired 40 --cooldown 1 --host --profile-noise --profile-variants --name s7b_cmd_2 --noise-variants \
  "DK_TMA=:DK_TMA=true" \
  "DK_TMA, 4 stages=:DK_TMA=true:lean=[128,128,2,8,4,8,64,1,true,true]" 2>&1 | tee $OUT/bench.log
nvidia-smi --query-gpu=clocks.sm,power.draw,temperature.gpu --format=csv | tee -a $OUT/tests.log
