#!/bin/bash
# Session-4 lead check, call B (H100): training step compiled (mla, diff-mla, cmd-mla), eager
# interleaved with the launch replay on, and spectral decode at 32K with the replayed launcher.
set -o pipefail
O=${OUT:-/tmp/out}; mkdir -p $O/res
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD ATTNLAB_BENCH_DIR=$O/res
L=$O/log.txt; T0=$(date +%s)
t() { echo "== $1 (t=$(( $(date +%s)-T0 ))s)" | tee -a $L; }
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm --format=csv,noheader | tee $L
t "spectral 32K"
timeout 80 python benchmarks/bench_spectral.py --batch 1 8 --lengths 32768 --no-ref --repeats 30 --name spectral_s4_lead 2>&1 | grep -v Warning | tail -14 | tee -a $L
t "train step eager, interleaved, replay on"
ATTNLAB_FAST_LAUNCH=1 timeout 90 python benchmarks/bench_train_step.py --mixers mla,diff-mla,cmd-mla --interleave 3 --repeats 10 --name train_s4_lead_interleaved 2>&1 | tail -6 | tee -a $L
t "train step compiled"
timeout 300 python benchmarks/bench_train_step.py --mixers mla,diff-mla,cmd-mla,mha --compile --name train_s4_lead_compiled 2>&1 | tail -8 | tee -a $L
t "done"
