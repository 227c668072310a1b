#!/bin/bash
# Session 7 DSALT device call: the A/B benchmark first (one process: flex window-only, attnlab
# window-only, this tree's defaults, the session-5 landmark path and session 7's candidates), then
# the DSALT GPU tests, each part under its own time limit.
#   bash benchmarks/device_runs/dsalt_s7.sh OUT LENGTHS BENCH_S TEST_S [pytest -k expression]
set -o pipefail
OUT=${1:-.}; LENGTHS=${2:-32768,16384,4096}; BS=${3:-180}; TS=${4:-90}; KEXPR=${5:-}
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm --format=csv,noheader
timeout $BS python benchmarks/device_runs/dsalt_s6_ab.py --set s7 --lengths $LENGTHS --rounds 3 --timeline \
    --out $OUT 2>&1 | grep -v "Warning\|warn(" | tee $OUT/bench.log
echo "bench rc=$?"
if [ -n "$KEXPR" ]; then
  timeout $TS python -m pytest -m gpu -x -v -p no:cacheprovider tests/test_dsalt_kernels.py tests/test_dsalt.py -k "$KEXPR" 2>&1 | tail -40 | tee $OUT/tests.log
else
  timeout $TS python -m pytest -m gpu -n ${XDIST:-6} -v -p no:cacheprovider tests/test_dsalt_kernels.py tests/test_dsalt.py tests/test_launch_replay.py 2>&1 | grep -v "Warning\|warn" | tail -60 | tee $OUT/tests.log
fi
echo "tests rc=$?"
