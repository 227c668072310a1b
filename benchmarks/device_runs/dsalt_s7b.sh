#!/bin/bash
# Session 7 round 2 DSALT device call: the A/B benchmark first (one process: flex window-only, attnlab
# window-only, this tree's defaults and round 2's candidates, --set s7b), then the DSALT GPU tests
# (xdist), each part under its own time limit.
#   bash benchmarks/device_runs/dsalt_s7b.sh OUT LENGTHS BENCH_S TEST_S [pytest -k expression]
set -o pipefail
OUT=${1:-.}; LENGTHS=${2:-32768,16384,4096}; BS=${3:-120}; TS=${4:-100}; KEXPR=${5:-}
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm --format=csv,noheader
timeout $BS python benchmarks/device_runs/dsalt_s6_ab.py --set s7b --lengths $LENGTHS --rounds ${ROUNDS:-5} --full-from 0 --timeline \
    --out $OUT 2>&1 | grep -v "Warning\|warn(" | tee $OUT/bench.log
echo "bench rc=$?"
timeout $TS python -m pytest -m gpu -x -n ${XDIST:-8} -v -p no:cacheprovider tests/test_dsalt_kernels.py tests/test_dsalt.py \
    tests/test_launch_replay.py ${KEXPR:+-k "$KEXPR"} 2>&1 | grep -v "Warning\|warn" | tail -60 | tee $OUT/tests.log
echo "tests rc=$?"
