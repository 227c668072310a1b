#!/bin/bash
# Session-4 lead check, call B (H100), launch replay of the latent diff kernel ON (the new default):
# the issue-3 training-step table (mla, diff-mla, cmd-mla, diff-mha, mha in one run, with peak
# memory), the same round robin in one process, the compiled step, and spectral decode at 32K.
set -o pipefail
O=${OUT:-/tmp/out}; mkdir -p $O/res
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD ATTNLAB_BENCH_DIR=$O/res
L=$O/log.txt; T0=$(date +%s)
t() { echo "== $1 (t=$(( $(date +%s)-T0 ))s)" | tee -a $L; }
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm --format=csv,noheader | tee $L
t "train step eager, one run (peak memory)"
timeout 100 python benchmarks/bench_train_step.py --mixers mla,diff-mla,cmd-mla,diff-mha,mha --name train_s4_lead 2>&1 | tail -9 | tee -a $L
t "train step eager, round robin"
timeout 90 python benchmarks/bench_train_step.py --mixers mla,diff-mla,cmd-mla --interleave 4 --repeats 10 --name train_s4_lead_interleaved 2>&1 | tail -6 | tee -a $L
t "spectral 32K"
timeout 70 python benchmarks/bench_spectral.py --batch 1 8 --lengths 32768 --no-ref --repeats 30 --name spectral_s4_lead 2>&1 | grep -v Warning | tail -14 | tee -a $L
t "train step compiled"
timeout 240 python benchmarks/bench_train_step.py --mixers mla,diff-mla,cmd-mla --compile --name train_s4_lead_compiled 2>&1 | tail -7 | tee -a $L
t "done"
