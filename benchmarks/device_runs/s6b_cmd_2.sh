# Session 6 round 2, issue 3 (CMD noise-once), device call 2: gradient check of the lean dK kernel's untried
# configs against the round-1 form, the final table (default now = two autograd nodes, workspace zeroed by
# the forward kernel; vs the round-1 form, the fused node, the dK candidates and the notebook; 5 rounds round
# robin, one process), then the GPU tests that round 1's timeout skipped (256-wide heads, replay, latent launch).
set -o pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD ATTNLAB_BENCH_DIR=$OUT
nvidia-smi -L
timeout 50 python benchmarks/device_runs/s6b_cmd_check.py --T 4096 1000 --set 2 2>&1 | grep -v -i warn | tee $OUT/check.log
nvidia-smi --query-gpu=timestamp,clocks.sm,power.draw,clocks_throttle_reasons.active --format=csv -lms 500 \
  > $OUT/smi2.csv 2>&1 &
SMI=$!
L='lean='
timeout 125 python benchmarks/bench_diff_kernel.py --groups cmd --T 16384 4096 --skip-fused --rounds 5 --host \
  --profile-noise --noise-variants \
  "round-1 form (two nodes, memset)=:ZERO_IN_FWD=false" \
  "fused node (signal dV summed in the dV kernel)=:FUSE_SIGNAL=true" \
  "lean kc128 2 stages=:${L}[128,128,2,8,2,8,128,1,true,true]" \
  "lean bm64 nt2 no cap=:${L}[64,128,2,8,3,8,64,1,true,true]" \
  "lean bn64=:${L}[128,64,2,8,3,8,64,1,true,true]" \
  "lean order 4=:${L}[128,128,2,8,3,4,64,1,true,true]" \
  "lean order 16=:${L}[128,128,2,8,3,16,64,1,true,true]" \
  "lean 4 warps bn64 2 stages=:${L}[128,64,2,4,2,8,64,1,true,true]" \
  "lean 4 warps bm64 3 stages=:${L}[64,128,2,4,3,8,64,1,true,true]" \
  --name s6b_cmd_final 2>&1 | grep -v -i warn | tee $OUT/bench.log | grep -E "^T=|kernels|^ +[0-9]"
kill $SMI
timeout 55 python -m pytest -m gpu -v -n 4 tests/test_diff_noise_once.py tests/test_diff_latent_launch.py \
  -k "not variants_bf16_gpu or fused or overlap" 2>&1 | tee $OUT/tests.log | grep -E "PASS|FAIL|Error|passed|failed"
