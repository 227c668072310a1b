#!/bin/bash
# Session 8 device call: the DSALT A/B (round robin, --set SET) with the 32K kernel timeline, GPU tests
# (pytest -k TESTK), then Nsight Compute on the landmark backward kernel at 32K for each OPTS["lm_bwd"]
# mode in MODES (one launch each; the text reports packed in ncu.tgz).
#   bash benchmarks/device_runs/dsalt_s8.sh OUTDIR AB_SECONDS ROUNDS SET "MODES"
# Session 8 ran it as `... $OUT 165 5 s8 "trans pipe"` and `... $OUT 140 5 s8b "trans runs"` with the sets and
# modes of commit 3ef7b56 (removed since: benchmarks/RESULTS.md, "Session 8: DSALT landmark backward").
set -o pipefail
OUT=${1:-.}; AB=${2:-170}; ROUNDS=${3:-5}; SET=${4:-lead}; MODES=${5:-"trans"}
export ATTNLAB_BENCH_DIR=$OUT
timeout $AB python benchmarks/device_runs/dsalt_s6_ab.py --set $SET --lengths 32768,16384,4096 --rounds $ROUNDS \
    --timeline --full-from 4096 --out $OUT 2>&1 | tee $OUT/ab.log
timeout ${TESTS:-45} python -m pytest -m gpu -x -v tests/test_dsalt_kernels.py -k "${TESTK:-session6}" 2>&1 \
    | grep -E "PASS|FAIL|Error|passed|failed|assert" | tee $OUT/tests.log
mkdir -p $OUT/ncu
for mode in $MODES; do
  ATTNLAB_DSALT_AUTOTUNE=0 timeout ${NCU:-40} ncu --clock-control none --section WarpStateStats --section LaunchStats \
      --section Occupancy --section SpeedOfLight --section MemoryWorkloadAnalysis --section SchedulerStats \
      --section InstructionStats -k regex:_lm_bwd -s 1 -c 1 -o $OUT/ncu/$mode python benchmarks/device_runs/dsalt_s8_ncu.py $mode \
      > $OUT/ncu/$mode.log 2>&1
  echo "ncu $mode rc=$?"
  if [ -f $OUT/ncu/$mode.ncu-rep ]; then
    ncu -i $OUT/ncu/$mode.ncu-rep --page details --print-details all > $OUT/ncu/${mode}_details.txt 2>&1
    grep -E "^  _lm|Duration|Registers Per|Dynamic Shared|Achieved Occupancy|Warp Cycles Per Issued|Instructions Executed|Local Memory Spilling Requests  |DRAM Throughput|Stall (Barrier|Long|Wait|Short|Math|MIO|LG)" \
        $OUT/ncu/${mode}_details.txt | sed 's/^ */  /' | head -24
  fi
done
rm -f $OUT/ncu/*.ncu-rep
tar czf $OUT/ncu.tgz -C $OUT ncu && rm -rf $OUT/ncu
