# Session-4 spectral decode GPU check (call 2): v2 (one load round per block, pipelined blocks) vs v1,
# sweep at 4K and 32K, GPU tests. Run from the tree root: bash benchmarks/device_runs/session4_spectral_2.sh
set -o pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD ATTNLAB_BENCH_DIR=$OUT/res
mkdir -p $OUT/res
L=$OUT/log.txt
T0=$(date +%s)
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm --format=csv,noheader | tee $L
python -c "import torch,triton;print(torch.__version__,triton.__version__)" | tee -a $L
echo "== sweep 32K (t=$(( $(date +%s)-T0 ))s)" | tee -a $L
timeout 160 python benchmarks/bench_spectral.py --batch 1 8 --lengths 32768 --configs sweep --no-ref --repeats 30 \
  --name s4_final32k 2>&1 | grep -v Warning | tee -a $L
echo "== gpu tests (t=$(( $(date +%s)-T0 ))s)" | tee -a $L
timeout 100 python -m pytest -v -m gpu -p no:cacheprovider -rA --tb=short tests/test_spectral.py 2>&1 \
  | grep -E "PASSED|FAILED|ERROR|Error|error|assert|passed|failed" | tail -40 | tee -a $L
echo "== sweep 4K (t=$(( $(date +%s)-T0 ))s)" | tee -a $L
timeout 90 python benchmarks/bench_spectral.py --batch 1 8 --lengths 4096 --configs sweep --no-ref --repeats 30 \
  --name s4_final4k 2>&1 | grep -v Warning | tail -8 | tee -a $L
echo "== 8K/16K, fewer configs (t=$(( $(date +%s)-T0 ))s)" | tee -a $L
timeout 55 python benchmarks/bench_spectral.py --batch 1 8 --lengths 8192 16384 --no-ref --repeats 30 --name s4_final8k16k \
  --configs default,v1,v2:2:4:64:4:2:1,v2:4:4:32:4:2:1,v2:1:8:64:8:2:0:1:8:4,v2:2:4:64:4:2:0 2>&1 | grep -v Warning | tail -12 | tee -a $L
echo "== done (t=$(( $(date +%s)-T0 ))s)" | tee -a $L
