#!/bin/bash
# RECORD: the Gluon diff backward and its scripts were removed at the session-9 merge (code at merge ad87269).
# Session 9, diff Gluon backward, device call 2: the four dQ variants (float32 atomics, red.v2, TMA
# reduce-add, TMA + pipelined streams): bf16 checks at T = 1000 / 1024 and kernel times at 4K / 16K (diff_gluon_check.py), then the
# diff group of bench_diff_kernel.py with hopper.py's default vs hopper.py + the Gluon backward (the fastest
# checked dQ reduction; also the pipelined TMA variant) in one process, then the GPU tests.
set -o pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD ATTNLAB_BENCH_DIR=${OUT:-/tmp}
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,temperature.gpu --format=csv
timeout 135 python benchmarks/diff_gluon_check.py --T 4096 16384 --check-T 1000 1024 2>&1 | tee $OUT/check.log
echo "check rc=$?"
BEST=$(grep -o "^BEST_DQ [a-z0-9-]*" $OUT/check.log | awk '{print $2}')
echo "best dQ reduction: ${BEST:=default}"
timeout 85 python benchmarks/bench_diff_kernel.py --groups diff --T 4096 16384 --rounds 3 --skip-fused \
    --gluon-bwd $BEST 2>&1 | tail -12 | tee $OUT/bench.log
echo "bench rc=$?"
timeout 40 python -m pytest -x -v -m gpu tests/test_diff_gluon.py 2>&1 | tail -14 | tee $OUT/tests.log
