#!/bin/bash
# Session 6, device call 1 (issue 3 diff kernel): run from the carried tree's root.
#   run: cd .carry/issue3d && bash benchmarks/device_runs/session6_diff_1.sh
set -o pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
OUT=${OUT:-/tmp/s6out}; mkdir -p $OUT
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,power.draw,temperature.gpu,utilization.gpu --format=csv 2>&1 | tee $OUT/log
timeout ${LIMIT:-225} python benchmarks/device_runs/session6_diff_1.py --out $OUT 2>&1 | tee -a $OUT/log
