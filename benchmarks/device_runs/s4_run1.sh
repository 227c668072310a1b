#!/bin/bash
# Session 4, issue 3, device call 1 (H100): noise-once CMD kernel (bf16 tests, launch-config sweep,
# microbenchmark vs the notebook's expanded calls and the per-head fused kernel), the shared
# two-stream helper's bf16 tests, interleaved training step and a step profile.
set -o pipefail
O=${OUT:-/tmp}
export ATTNLAB_BENCH_DIR=$O PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm --format=csv,noheader
python -c "import torch, triton; print(torch.__version__, triton.__version__)"
echo "== GPU tests: noise-once"; timeout 75 python -m pytest -x -v -m gpu tests/test_diff_noise_once.py 2>&1 | tail -6
echo "== kernel bench"; timeout 150 python benchmarks/bench_diff_kernel.py --sweep-noise --T 4096 16384 --name diff_kernel_s4 2>&1 | grep -v "^{"
echo "== GPU tests: generic kernel (shared helper)"; timeout 70 python -m pytest -x -v -m gpu tests/test_diff_kernel.py 2>&1 | tail -14
echo "== train step, interleaved"; timeout 60 python benchmarks/bench_train_step.py --mixers mla,diff-mla,cmd-mla --interleave 3 --repeats 10 --name train_diff_s4_interleaved 2>&1 | tail -6
echo "== profile"; timeout 45 python benchmarks/device_runs/s4_prof.py mla,diff-mla,cmd-mla 2>&1
echo "== latent bench"; timeout 40 python benchmarks/bench_diff_latent.py --name diff_latent_s4 2>&1 | grep -v "^{"
echo "== GPU tests: latent"; timeout 60 python -m pytest -x -v -m gpu tests/test_diff_latent.py tests/test_diff_latent_launch.py 2>&1 | tail -8
echo "== done"
