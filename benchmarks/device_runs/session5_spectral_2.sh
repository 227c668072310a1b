# Session-5 spectral decode, device call 2: final code. 32K B=1 sweep (auto = v3 default, v1, v2, v3
# variants; single-call graphs, 16-call graphs, L2-flushed, eager; per-kernel device times), the GPU
# tests, 32K B=8 sweep, then 4K-16K (the auto rule). Run from the tree root:
#   bash benchmarks/device_runs/session5_spectral_2.sh
set -o pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD ATTNLAB_BENCH_DIR=$OUT/res
mkdir -p $OUT/res
L=$OUT/log.txt
T0=$(date +%s)
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm --format=csv,noheader | tee $L
python -c "import torch,triton;print(torch.__version__,triton.__version__)" | tee -a $L
echo "== 32K B=1 (t=$(( $(date +%s)-T0 ))s)" | tee -a $L
timeout 105 python benchmarks/bench_spectral.py --batch 1 --lengths 32768 --ranks 16:16,32:32,16:32 --no-ref --repeats 30 \
  --multi 16 --profile --floor --name s5_final32k_b1 \
  --configs default,v1,v2,v3:2:8:2:0:4,v3:2:8:2:0:2,v3:1:8:2:0:4,v3:2:4:3:0:4,v3:2:4:2:0:8,v3:2:4:2:1:4,v3:2:4:2:1:4:0:16 \
  2>&1 | grep -v Warning | grep -v "^   {" | tee -a $L
echo "== gpu tests (t=$(( $(date +%s)-T0 ))s)" | tee -a $L
timeout 115 python -m pytest -v -m gpu -p no:cacheprovider -rA --tb=short tests/test_spectral.py 2>&1 \
  | grep -E "PASSED|FAILED|ERROR|Error|error|assert|passed|failed" | tail -60 | tee -a $L
echo "== 32K B=8 (t=$(( $(date +%s)-T0 ))s)" | tee -a $L
timeout 85 python benchmarks/bench_spectral.py --batch 8 --lengths 32768 --ranks 16:16,32:32,16:32 --no-ref --repeats 30 \
  --multi 16 --profile --name s5_final32k_b8 --configs default,v1,v2,v3:2:8:2:0:4,v3:2:4:3:0:4,v3:2:4:2:0:8,v3:2:4:2:1:4 \
  2>&1 | grep -v Warning | grep -v "^   {" | tee -a $L
echo "== 4K-16K (t=$(( $(date +%s)-T0 ))s)" | tee -a $L
timeout 40 python benchmarks/bench_spectral.py --batch 1 8 --lengths 4096 8192 16384 --ranks 16:16,32:32 --no-ref --no-cold \
  --no-eager --repeats 20 --multi 16 --name s5_final4k16k --configs default,v2,v3 2>&1 | grep -v Warning | tail -14 | tee -a $L
echo "== done (t=$(( $(date +%s)-T0 ))s)" | tee -a $L
cp $ATTNLAB_BENCH_DIR/*.json $OUT/ 2>/dev/null; true
