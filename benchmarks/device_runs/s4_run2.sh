#!/bin/bash
# Session 4, issue 3, device call 2 (H100): noise-once variants (grouped dK, merged backward, 128
# blocks) in bf16, the launch-config sweep of both backward strategies with a per-kernel profile,
# the microbenchmark vs the notebook's expanded calls and the per-head fused kernel, the latent
# bench at wide heads (sdpa vs fused latent vs noise-once), host diagnosis and the interleaved step.
set -o pipefail
O=${OUT:-/tmp}
export ATTNLAB_BENCH_DIR=$O PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm --format=csv,noheader
echo "== GPU tests: noise-once"; timeout 80 python -m pytest -x -v -m gpu tests/test_diff_noise_once.py 2>&1 | grep -E "PASS|FAIL|Error|passed|failed" | tail -12
echo "== kernel bench"; timeout 170 python benchmarks/bench_diff_kernel.py --sweep-noise --profile-noise --groups cmd --T 4096 16384 --name diff_kernel_s4b 2>&1 | grep -v "^{"
echo "== host diagnosis"; timeout 45 python benchmarks/device_runs/s4_host.py 'mla,diff-mla,cmd-mla,diff-mla!noreplay,diff-mla@sdpa' 2>&1
echo "== train step, interleaved"; timeout 50 python benchmarks/bench_train_step.py --mixers mla,diff-mla,cmd-mla --interleave 3 --repeats 10 --name train_diff_s4b_interleaved 2>&1 | tail -5
echo "== latent bench, wide heads"; timeout 35 python benchmarks/bench_diff_latent.py --batch 2 --T 4096 --heads 16 --dims 128 64 128 --name diff_latent_s4_wide 2>&1 | grep -v "^{"
echo "== GPU tests: fused kernels"; timeout 40 python -m pytest -x -v -m gpu tests/test_fused_kernels.py 2>&1 | grep -E "PASS|FAIL|Error|passed|failed" | tail -8
echo "== done"
