#!/bin/bash
# Session 6, device call 2 (issue 3 diff kernel): hopper.py's sweep + the final table, then GPU tests.
#   run: cd .carry/issue3d && bash benchmarks/device_runs/session6_diff_2.sh
set -o pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
OUT=${OUT:-/tmp/s6out}; mkdir -p $OUT
export ATTNLAB_BENCH_DIR=$OUT
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,power.draw,temperature.gpu,utilization.gpu --format=csv 2>&1 | tee $OUT/log
# 1. sweep hopper.py's modes/configs at T=16K (each candidate checked vs the SDPA path), then the
#    table at 4K and 16K: two SDPA calls, kernel.py, hopper.py, one SDPA call, hopper.py on one stream
timeout ${LIMIT_BENCH:-135} python benchmarks/bench_diff_kernel.py --groups diff --T 4096 16384 --sweep-hopper \
  --profile --host --name s6_diff_final 2>&1 | tee -a $OUT/log
# 2. GPU tests (bf16; fp32 through the descriptors; replay == normal launches)
timeout ${LIMIT_TEST:-70} python -m pytest -m gpu -x -v -p no:cacheprovider tests/test_diff_hopper.py 2>&1 \
  | tee $OUT/test_hopper.log | grep -E "PASS|FAIL|ERROR|passed|failed|Error" | tee -a $OUT/log
timeout ${LIMIT_TEST2:-25} python -m pytest -m gpu -x -v -p no:cacheprovider tests/test_diff_kernel.py -k mixer 2>&1 \
  | tee $OUT/test_kernel_mixer.log | grep -E "PASS|FAIL|ERROR|passed|failed|Error" | tee -a $OUT/log
# 3. stall reasons of one launch of the key-block backward kernel (if time is left)
timeout ${LIMIT_NCU:-30} ncu --clock-control none --section WarpStateStats --section Occupancy --section LaunchStats \
  -k regex:_h_bwd_kv -c 1 python benchmarks/device_runs/session6_diff_ncu.py > $OUT/ncu_bwd_kv.txt 2>&1
tail -60 $OUT/ncu_bwd_kv.txt | tee -a $OUT/log
exit 0
