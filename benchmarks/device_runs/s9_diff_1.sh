#!/bin/bash
# RECORD: the Gluon diff backward and its scripts were removed at the session-9 merge (code at merge ad87269).
# Session 9, diff Gluon backward, device call 1: correctness (bf16 vs fp32 reference and hopper.py's Triton
# backward, T = 1024 / 1000) and backward / fwd+bwd times at T = 4K / 16K (B=1, 16 heads, d 128), then the
# GPU tests of tests/test_diff_gluon.py. Run from the repository root (the carried tree).
set -o pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD ATTNLAB_BENCH_DIR=${OUT:-/tmp}
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,temperature.gpu --format=csv
python -c "import torch, triton; print(torch.__version__, triton.__version__)"
timeout 170 python benchmarks/diff_gluon_check.py --T 4096 16384 --check-T 1024 1000 2>&1 | tee $OUT/check.log
echo "check rc=$?"
timeout 60 python -m pytest -x -v -m gpu tests/test_diff_gluon.py 2>&1 | tail -15 | tee $OUT/tests.log
