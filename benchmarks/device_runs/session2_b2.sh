# Session-2 GPU check (b2), run from the repo root on the device: bash benchmarks/device_runs/b2.sh (writes under $OUT)
set -o pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD ATTNLAB_BENCH_DIR=/tmp/res
mkdir -p /tmp/res
L=$OUT/log.txt
nvidia-smi --query-gpu=name --format=csv,noheader | tee $L
T0=$(date +%s)
g() { echo "== gpu tests $1 (t=$(( $(date +%s)-T0 ))s)" | tee -a $L; shift; timeout "$@" 2>&1 | grep -E "PASSED|FAILED|ERROR|Error|error|assert|passed|failed|skipped" | tail -60 | tee -a $L; }
P="python -m pytest -v -m gpu -p no:cacheprovider -rA --tb=short"
g A 90 $P tests/test_fused_kernels.py tests/test_gpu_foundation.py tests/test_diff_latent.py tests/test_rope_kernel.py
g B 70 $P tests/test_spectral.py
g C 90 $P tests/test_dsalt_kernels.py
g D 80 $P tests/test_diff_kernel.py tests/test_gated_delta.py tests/test_gdn_triton.py
echo "== train eager (t=$(( $(date +%s)-T0 ))s)" | tee -a $L
timeout 55 python benchmarks/bench_train_step.py --mixers mha,mla,diff-mla,cmd-mla --name train_s2_final 2>&1 | tail -8 | tee -a $L
echo "== dsalt 32K (t=$(( $(date +%s)-T0 ))s)" | tee -a $L
timeout 90 python benchmarks/bench_dsalt.py --variants attnlab_dsalt,attnlab_window,flex_window --lengths 32768 --phases --name dsalt_s2_final32k 2>&1 | tail -14 | tee -a $L
echo "== spectral (t=$(( $(date +%s)-T0 ))s)" | tee -a $L
timeout 60 python benchmarks/bench_spectral.py --batch 1 8 --lengths 32768 --repeats 30 --name spectral_s2_final 2>&1 | grep "^|" | tee -a $L
echo "== end (t=$(( $(date +%s)-T0 ))s)" | tee -a $L
tar czf $OUT/res.tgz -C /tmp/res .
