# Session 5, issue 3, device call 2 (run from the carry dir; noise_once_s4.py = git show 9803b85:attnlab/ops/diff_attention/noise_once.py)
set -o pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD ATTNLAB_BENCH_DIR=$OUT
nvidia-smi -L
timeout 110 python -m pytest -x -v -m gpu tests/test_diff_noise_once.py 2>&1 | tee $OUT/s5_run2_tests.log
timeout 165 python benchmarks/bench_diff_kernel.py --groups cmd --T 4096 16384 --sweep-noise --sweep-T 16384 \
  --profile-noise --host --skip-fused --compare-module noise_once_s4.py --compare-label "noise-once, session 4 (9803b85)" \
  --name diff_kernel_s5 2>&1 | tee $OUT/s5_run2_bench.log
timeout 75 python benchmarks/bench_diff_latent.py --groups cmd-mla --batch 2 --T 4096 --heads 16 --dims 128 64 128 \
  --name diff_latent_s5_wide 2>&1 | tee $OUT/s5_run2_latent.log
