# Session 6, issue 3 (CMD noise-once), device call 2: the final table (every lean dK candidate, session 5's
# Note: the "tma" DK_MODE named below was removed in session 6's review (measured no faster); this script
# records the call as it ran (at commit a3f8573) and needs that commit to run again.
# module and the notebook in one process, 5 rounds round robin) first, then the GPU tests. Run from the
# carry dir, which holds noise_once_s5.py = `git show 3b9a62d:attnlab/ops/diff_attention/noise_once.py`.
set -o pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD ATTNLAB_BENCH_DIR=$OUT
nvidia-smi -L
nvidia-smi --query-gpu=timestamp,clocks.sm,power.draw,clocks_throttle_reasons.active --format=csv -lms 500 \
  > $OUT/smi2.csv 2>&1 &
SMI=$!
L='lean:lean='
M='tma:lean='
timeout 150 python benchmarks/bench_diff_kernel.py --groups cmd --T 16384 4096 --skip-fused --rounds 5 --host \
  --profile-noise --compare-module noise_once_s5.py --compare-label "noise-once, session 5 (3b9a62d)" \
  --noise-variants "loop dK (session 5's, this tree)=loop" \
  "lean nt1=${L}[128,128,1,8,3,8,64,1,false,false]" \
  "lean nt1 4 stages=${L}[128,128,1,8,4,8,64,1,false,false]" \
  "lean nt2 early-k acc=${L}[128,128,2,8,3,8,64,1,true,true]" \
  "lean bm64 nt2 maxnreg128=${L}[64,128,2,8,3,8,64,1,false,false,128]" \
  "lean bm64 nt1 maxnreg128=${L}[64,128,1,8,4,8,64,1,false,false,128]" \
  "lean nt1 kc32 6 stages=${L}[128,128,1,8,6,8,32,1,false,false]" \
  "lean nt2 early-k 4 stages=${L}[128,128,2,8,4,8,64,1,true,false]" \
  "tma nt1=${M}[128,128,1,8,3,8,64,1,false,false]" \
  "tma nt1 4 stages=${M}[128,128,1,8,4,8,64,1,false,false]" \
  "tma nt2 early-k acc=${M}[128,128,2,8,3,8,64,1,true,true]" \
  --name s6_cmd_final 2>&1 | grep -v -i warn | tee $OUT/bench.log | grep -E "^T=|kernels|^ +[0-9]"
kill $SMI
timeout 62 python -m pytest -m gpu -v tests/test_diff_noise_once.py -k "tma or lean or loop-dk or (bf16_gpu and not variants) or replay" 2>&1 | tee $OUT/tests.log | grep -E "PASS|FAIL|Error|passed|failed"
timeout 20 python -m pytest -m gpu -x -v tests/test_diff_latent_launch.py 2>&1 | tee $OUT/tests_latent.log | grep -E "PASS|FAIL|Error|passed|failed"
