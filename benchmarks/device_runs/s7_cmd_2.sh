# Session 7, issue 3 (CMD noise-once), device call 2: the benchmark (5 rounds in alternating order plus 30
# interleaved pairs per candidate against the notebook, 1 s cool-downs) with the persistent dK kernel and
# config candidates, per-kernel profiles with TFLOP/s, then the GPU tests not run in call 1.
# (Call 1, s7_cmd_1.sh, ran the GPU tests of the persistent kernel; its benchmark stopped at a label parse.)
# The persistent dK kernel (DK_PERSIST, CONFIGS["persist"]), NT = 0 (auto) and CONFIGS["pre"] named here were
# measured slower or not faster in call 2 and removed afterwards (benchmarks/RESULTS.md, issue 3, session 7).
set -o pipefail
P=persist
ATTNLAB_BENCH_DIR=$OUT timeout 225 python benchmarks/bench_diff_kernel.py --groups cmd --T 16384 4096 --skip-fused \
  --rounds 5 --paired 30 --cooldown 1 --host --profile-noise --profile-variants --name s7_cmd_2 --noise-variants \
  "lean, auto NT (1 or 2 by waves)=:lean=[128,128,0,8,3,8,64,1,true,true]" \
  "lean, NT=1=:lean=[128,128,1,8,3,8,64,1,false,false]" \
  "persistent dK=:DK_PERSIST=true" \
  "persistent dK, no acc, 2 stages=:DK_PERSIST=true:${P}=[128,128,2,8,2,8,64,1,false,1]" \
  "persistent dK, NT=1=:DK_PERSIST=true:${P}=[128,128,1,8,3,8,64,1,false,1]" 2>&1 | tee $OUT/bench.log
timeout 55 python -m pytest -m gpu -x -v tests/test_diff_noise_once.py \
  -k "persistent_bf16 or default or memset or wide-head or shape1 or auto" 2>&1 | tail -22 | tee $OUT/tests.log
nvidia-smi --query-gpu=clocks.sm,power.draw,temperature.gpu --format=csv | tee -a $OUT/tests.log
