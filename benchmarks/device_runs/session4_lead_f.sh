#!/bin/bash
# Session-4 lead check, call F (H100): the latent kernel as a torch.library op under torch.compile:
# its tests in bf16 on the GPU, then the compiled training step with the SDPA path (auto) and the op (@triton).
set -o pipefail
O=${OUT:-/tmp/out}; mkdir -p $O/res
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD ATTNLAB_BENCH_DIR=$O/res
L=$O/log.txt; T0=$(date +%s)
t() { echo "== $1 (t=$(( $(date +%s)-T0 ))s)" | tee -a $L; }
nvidia-smi --query-gpu=name --format=csv,noheader | tee $L
t "latent op tests (bf16, GPU)"
timeout 80 python -m pytest -q -p no:cacheprovider -rfE --tb=short tests/test_diff_latent_op.py 2>&1 | tail -6 | tee -a $L
t "train step compiled: auto (SDPA path) vs the op"
timeout 330 python benchmarks/bench_train_step.py --compile --mixers mla,diff-mla,diff-mla@triton,cmd-mla,cmd-mla@triton \
  --name train_s4_lead_compiled_op 2>&1 | tail -9 | tee -a $L
t "done"
