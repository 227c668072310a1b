#!/bin/bash
# Session 8 device call: A/B (--set s8, round robin) with the 32K timeline, the session-8 GPU tests,
# then Nsight Compute on the two landmark backward kernels at 32K (one launch each).
#   bash benchmarks/device_runs/dsalt_s8.sh OUTDIR AB_SECONDS ROUNDS
set -o pipefail
OUT=${1:-.}; AB=${2:-170}; ROUNDS=${3:-5}
export ATTNLAB_BENCH_DIR=$OUT
timeout $AB python benchmarks/device_runs/dsalt_s6_ab.py --set s8 --lengths 32768,16384,4096 --rounds $ROUNDS \
    --timeline --full-from 4096 --out $OUT 2>&1 | tee $OUT/ab.log
timeout ${TESTS:-45} python -m pytest -m gpu -x -v tests/test_dsalt_kernels.py -k "session8" 2>&1 | tail -12 | tee $OUT/tests.log
for mode in trans pipe; do
  ATTNLAB_DSALT_AUTOTUNE=0 timeout ${NCU:-40} ncu --clock-control none --section WarpStateStats --section LaunchStats \
      --section Occupancy --section SpeedOfLight --section MemoryWorkloadAnalysis --section SchedulerStats \
      -k regex:_lm_bwd -s 1 -c 1 -o $OUT/ncu_$mode python benchmarks/device_runs/dsalt_s8_ncu.py $mode > $OUT/ncu_$mode.log 2>&1
  echo "ncu $mode rc=$?"; tail -3 $OUT/ncu_$mode.log
  if [ -f $OUT/ncu_$mode.ncu-rep ]; then
    ncu -i $OUT/ncu_$mode.ncu-rep --page details --print-details all > $OUT/ncu_${mode}_details.txt 2>&1
    ncu -i $OUT/ncu_$mode.ncu-rep --page raw --csv > $OUT/ncu_${mode}_raw.csv 2>&1
    grep -E "Duration|Registers|Shared Memory Config|Achieved Occupancy|Warp Cycles Per Issued|Issue Slots Busy|Memory Throughput|DRAM Throughput|Stall|stall" $OUT/ncu_${mode}_details.txt | head -40
  fi
done
