# Session-4 spectral decode GPU check (call 1): v2 kernel sweep vs v1 at 32K, GPU tests, 4K table.
# Run from the tree root on the device: bash benchmarks/device_runs/session4_spectral_1.sh (writes under $OUT)
set -o pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD ATTNLAB_BENCH_DIR=$OUT/res
mkdir -p $OUT/res
L=$OUT/log.txt
T0=$(date +%s)
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm --format=csv,noheader | tee $L
python -c "import torch,triton;print(torch.__version__,triton.__version__)" | tee -a $L
echo "== sweep 32K (t=$(( $(date +%s)-T0 ))s)" | tee -a $L
timeout 200 python benchmarks/bench_spectral.py --batch 1 8 --lengths 32768 --configs sweep --no-ref --repeats 30 \
  --name s4_sweep32k 2>&1 | grep -v Warning | tee -a $L
echo "== gpu tests (t=$(( $(date +%s)-T0 ))s)" | tee -a $L
timeout 130 python -m pytest -v -m gpu -p no:cacheprovider -rA --tb=short tests/test_spectral.py 2>&1 \
  | grep -E "PASSED|FAILED|ERROR|Error|error|assert|passed|failed" | tail -60 | tee -a $L
echo "== 4K (t=$(( $(date +%s)-T0 ))s)" | tee -a $L
timeout 60 python benchmarks/bench_spectral.py --batch 1 8 --lengths 4096 --no-ref --repeats 30 --name s4_4k 2>&1 \
  | grep -v Warning | tail -8 | tee -a $L
echo "== done (t=$(( $(date +%s)-T0 ))s)" | tee -a $L
