# Session 7, issue 3 (CMD noise-once), device call 1: the benchmark (rounds in alternating order plus
# interleaved pairs against the notebook) with the persistent dK kernel and config candidates,
# per-kernel profile, then the GPU tests.
# The persistent dK kernel (DK_PERSIST, CONFIGS["persist"]), NT = 0 (auto) and CONFIGS["pre"] named here were
# measured slower or not faster in call 2 and removed afterwards (benchmarks/RESULTS.md, issue 3, session 7).
set -o pipefail
P=persist
ATTNLAB_BENCH_DIR=$OUT timeout 200 python benchmarks/bench_diff_kernel.py --groups cmd --T 16384 4096 --skip-fused --rounds 5 --paired 40 \
  --cooldown 1 --host --profile-noise --name s7_cmd_1 --noise-variants \
  "persistent dK=:DK_PERSIST=true" \
  "persistent dK, no acc, 2 stages=:DK_PERSIST=true:${P}=[128,128,2,8,2,8,64,1,false,1]" \
  "persistent dK, NT=1=:DK_PERSIST=true:${P}=[128,128,1,8,3,8,64,1,false,1]" \
  "lean 4 stages=:lean=[128,128,2,8,4,8,64,1,true,true]" \
  "pre 16 rows=:pre=[16,4]" 2>&1 | tee $OUT/bench.log
timeout 90 python -m pytest -m gpu -x -v tests/test_diff_noise_once.py -k "persist or shape0 or shape2 or replay_equals" 2>&1 | tail -20 | tee $OUT/tests.log
nvidia-smi --query-gpu=clocks.sm,power.draw,temperature.gpu --format=csv | tee -a $OUT/tests.log
