# Session-2 GPU check (b3), run from the repo root on the device: bash benchmarks/device_runs/b3.sh (writes under $OUT)
set -o pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD ATTNLAB_BENCH_DIR=/tmp/res
mkdir -p /tmp/res
L=$OUT/log.txt
nvidia-smi --query-gpu=name --format=csv,noheader | tee $L
T0=$(date +%s)
g() { echo "== gpu tests $1 (t=$(( $(date +%s)-T0 ))s)" | tee -a $L; shift; timeout "$@" 2>&1 | grep -E "PASSED|FAILED|ERROR|Error|error|assert|passed|failed|skipped|Warning" | tail -60 | tee -a $L; }
P="python -m pytest -v -m gpu -p no:cacheprovider -rA --tb=short"
g diff 120 $P tests/test_diff_latent_launch.py tests/test_diff_latent.py tests/test_diff_kernel.py
echo "== train (t=$(( $(date +%s)-T0 ))s)" | tee -a $L
timeout 50 python benchmarks/bench_train_step.py --mixers mla,diff-mla,cmd-mla --name train_diff_s3 2>&1 | grep -v "^wrote" | tail -6 | tee -a $L
echo "== train, replay off (t=$(( $(date +%s)-T0 ))s)" | tee -a $L
ATTNLAB_FAST_LAUNCH=0 timeout 40 python benchmarks/bench_train_step.py --mixers diff-mla,cmd-mla --name train_diff_s3_noreplay 2>&1 | grep -v "^wrote" | tail -5 | tee -a $L
echo "== passkey (t=$(( $(date +%s)-T0 ))s)" | tee -a $L
timeout 240 bash benchmarks/run_dsalt_passkey.sh /tmp/pk 200 2>&1 | tail -25 | tee -a $L
g rest 80 $P tests/test_gdn_triton.py tests/test_dsalt_kernels.py::test_gpu_fp32_triton_matches_reference_tightly
echo "== end (t=$(( $(date +%s)-T0 ))s)" | tee -a $L
tar czf $OUT/res.tgz -C /tmp res pk
