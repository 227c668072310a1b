set -o pipefail
cd .carry/issue3 && export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD ATTNLAB_BENCH_DIR=$OUT
{
nvidia-smi --query-gpu=name --format=csv,noheader
echo "== train step (impl auto)"
timeout 45 python benchmarks/bench_train_step.py --preset shakespeare-384 --mixers mla,diff-mla,cmd-mla --name train_diff_s2_final 2>&1 | tail -6
echo "== train step (impl sdpa, same machine)"
timeout 30 python benchmarks/bench_train_step.py --preset shakespeare-384 --mixers diff-mla,cmd-mla --name train_diff_s2_sdpa --model.mixer_options.diff-mla.impl=sdpa --model.mixer_options.cmd-mla.impl=sdpa 2>&1 | tail -4
echo "== latent kernel at larger shapes"
timeout 40 python benchmarks/bench_diff_latent.py --batch 2 --T 4096 --heads 16 --dims 128 64 128 --name diff_latent_s2_large 2>&1 | grep -v "^{" | tail -6
echo "== gpu tests"
timeout 120 python -m pytest -q -m gpu tests/test_diff_kernel.py tests/test_diff_latent.py 2>&1 | tail -8
} 2>&1 | tee $OUT/log
