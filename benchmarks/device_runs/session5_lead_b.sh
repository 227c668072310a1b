# Session 5 lead check, call B (merged tree): DSALT GPU tests with the final defaults, the CMD noise-once
# GPU tests and kernel benchmark (final configs), the latent kernel's replay test (hook check now shared
# with launch_replay.py), and the training step of all five mixers. bash benchmarks/device_runs/session5_lead_b.sh
set -o pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD ATTNLAB_BENCH_DIR=$OUT/res
mkdir -p $OUT/res
L=$OUT/lead_b.log
T0=$(date +%s)
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm --format=csv,noheader | tee $L
echo "== latent replay + noise-once gpu tests (t=$(( $(date +%s)-T0 ))s)" | tee -a $L
timeout 150 python -m pytest -v -m gpu -p no:cacheprovider -rA --tb=short tests/test_diff_latent_launch.py \
  tests/test_diff_noise_once.py 2>&1 | grep -E "PASSED|FAILED|ERROR|Error|assert|passed|failed" | tail -25 | tee -a $L
echo "== cmd kernel bench (t=$(( $(date +%s)-T0 ))s)" | tee -a $L
timeout 100 python benchmarks/bench_diff_kernel.py --groups cmd --T 4096 16384 --host --skip-fused \
  --name s5_lead_cmd 2>&1 | grep -v Warning | tail -14 | tee -a $L
echo "== train step (t=$(( $(date +%s)-T0 ))s)" | tee -a $L
timeout 100 python benchmarks/bench_train_step.py --mixers mla,diff-mla,cmd-mla,diff-mha,mha --name s5_lead_train 2>&1 \
  | grep -v Warning | tail -10 | tee -a $L
echo "== dsalt gpu tests (t=$(( $(date +%s)-T0 ))s)" | tee -a $L
timeout 170 python -m pytest -v -m gpu -p no:cacheprovider -rA --tb=short tests/test_dsalt_kernels.py 2>&1 \
  | grep -E "PASSED|FAILED|ERROR|Error|assert|passed|failed" | tail -15 | tee -a $L
echo "== done (t=$(( $(date +%s)-T0 ))s)" | tee -a $L
cp $OUT/res/*.json $OUT/ 2>/dev/null; true
