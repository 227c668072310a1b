set -o pipefail
cd .carry/issue3 && export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD ATTNLAB_BENCH_DIR=$OUT
{
nvidia-smi --query-gpu=name --format=csv,noheader
echo "== gpu tests (latent)"
timeout 50 python -m pytest -q -x -m gpu tests/test_diff_latent.py 2>&1 | tail -5
echo "== latent bench sweep"
timeout 70 python benchmarks/bench_diff_latent.py --sweep --name diff_latent_s2_run1 2>&1 | grep -v "^{" | tail -40
echo "== train step"
timeout 45 python benchmarks/bench_train_step.py --preset shakespeare-384 --mixers mla,diff-mla,cmd-mla --name train_diff_s2_run1 --model.mixer_options.diff-mla.impl=triton --model.mixer_options.cmd-mla.impl=triton 2>&1 | tail -8
echo "== generic kernel: atomic-dQ sweep"
timeout 40 python benchmarks/bench_diff_kernel.py --sweep --sweep-kernels bwd_kv_atomic,modes --T 4096 --name diff_kernel_s2_run1 2>&1 | grep -v "^{" | tail -20
echo "== profile diff-mla triton"
timeout 20 python prof.py diff-mla triton 2>&1 | tail -26
} 2>&1 | tee $OUT/log
