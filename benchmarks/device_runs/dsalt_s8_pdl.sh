#!/bin/bash
# (Record: after session 8 the sets s8 / s8b and OPTS["sel_pdl"] were removed; code at merge commit 1560476.)
# Session 8 DSALT device call (the selection beside the forward through PDL): the A/B benchmark first
# (one process: flex window-only, attnlab window-only, this tree's defaults, the fused forward after
# the selection and the PDL variants; --set s8 = call 1's variants, s8b = the follow-up: the forward
# polling the sets themselves, the sorted first-block fill), then the PDL GPU tests (xdist), each
# part under its own time limit.
#   bash benchmarks/device_runs/dsalt_s8_pdl.sh OUT SET LENGTHS BENCH_S TEST_S
set -o pipefail
OUT=${1:-.}; SET=${2:-s8b}; LENGTHS=${3:-32768,16384,4096}; BS=${4:-160}; TS=${5:-100}
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm --format=csv,noheader
timeout $BS python benchmarks/device_runs/dsalt_s6_ab.py --set $SET --lengths $LENGTHS --rounds ${ROUNDS:-5} \
    --timeline --timeline-at 32768,16384 --out $OUT 2>&1 \
    | grep -Ev "Warning|warn\(|^   .*(elementwise|Memset|Memcpy|reduce|fill|copy)" | tee $OUT/bench.log
echo "bench rc=$?"
timeout $TS python -m pytest -m gpu -x -n ${XDIST:-8} -v -p no:cacheprovider tests/test_dsalt_pdl.py 2>&1 \
    | grep -v "Warning\|warn" | tail -40 | tee $OUT/tests.log
echo "tests rc=$?"
