# Session 6 round 2, issue 3 (CMD noise-once), device call 1: gradient check of every candidate against the
# round-1 form, then the candidates vs the round-1 form vs the notebook (5 rounds round robin, one process)
# with the per-kernel profile of the default, then the GPU tests of the new options and the replay tests.
set -o pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD ATTNLAB_BENCH_DIR=$OUT
nvidia-smi -L
timeout 50 python benchmarks/device_runs/s6b_cmd_check.py --T 4096 1000 --set 1 2>&1 | grep -v -i warn | tee $OUT/check.log
nvidia-smi --query-gpu=timestamp,clocks.sm,power.draw,clocks_throttle_reasons.active --format=csv -lms 500 \
  > $OUT/smi1.csv 2>&1 &
SMI=$!
L='lean='
timeout 140 python benchmarks/bench_diff_kernel.py --groups cmd --T 16384 4096 --skip-fused --rounds 5 --host \
  --profile-noise --noise-variants \
  "round-1 form (two nodes, memset)=:FUSE_SIGNAL=false:ZERO_IN_FWD=false" \
  "fused, memset=:ZERO_IN_FWD=false" \
  "two nodes, zero in fwd=:FUSE_SIGNAL=false" \
  "fused + overlap=:OVERLAP=true" \
  "fused + overlap, lean 4 stages=:OVERLAP=true:${L}[128,128,2,8,4,8,64,1,true,true]" \
  "fused, lean 4 stages=:${L}[128,128,2,8,4,8,64,1,true,true]" \
  "fused, fwd 4-head groups bm64 8 warps=:fwd=[64,64,4,8,3,1]" \
  "fused, dV 4-head groups bn64 8 warps=:dv=[64,64,4,8,3,1]" \
  --name s6b_cmd_call1 2>&1 | grep -v -i warn | tee $OUT/bench.log | grep -E "^T=|kernels|^ +[0-9]"
kill $SMI
timeout 38 python -m pytest -m gpu -v -x tests/test_diff_noise_once.py -k "two-nodes or memset or overlap or replay" 2>&1 | tee $OUT/tests.log | grep -E "PASS|FAIL|Error|passed|failed"
