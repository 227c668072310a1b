# Session 6, issue 3 (CMD noise-once), device call 1. Run from the carry dir, which holds
# noise_once_s5.py = `git show 3b9a62d:attnlab/ops/diff_attention/noise_once.py`.
set -o pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
nvidia-smi -L
nvidia-smi --query-gpu=timestamp,clocks.sm,clocks.mem,power.draw,temperature.gpu,clocks_throttle_reasons.active \
  --format=csv -lms 200 > $OUT/smi.csv 2>&1 &
SMI=$!
timeout 165 python benchmarks/device_runs/session6_cmd_1.py noise_once_s5.py 2>&1 | grep -v Warning | tee $OUT/s6_cmd_1.log
kill $SMI
timeout 55 ncu --clock-control none --section SpeedOfLight --section MemoryWorkloadAnalysis --section WarpStateStats \
  --section Occupancy --section LaunchStats -k regex:_noise_bwd_dk -c 3 \
  python benchmarks/device_runs/session6_cmd_ncu.py > $OUT/ncu.txt 2>&1
grep -E "_noise_bwd_dk|Duration|Throughput|L2 Hit|Registers|Achieved Occupancy|Warp Cycles Per Issued|Stall|ok$|ERR" $OUT/ncu.txt | head -60
