# Session 5 lead check, call A (merged tree): spectral v3 final kernel (timings at 32K for ranks 16/16,
# 32/32 and the default 16/32, GPU tests), then DSALT's final defaults timed together with flex
# window-only and the launch-replay GPU tests. Run from the tree root: bash benchmarks/device_runs/session5_lead_a.sh
set -o pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD ATTNLAB_BENCH_DIR=$OUT/res
mkdir -p $OUT/res
L=$OUT/lead_a.log
T0=$(date +%s)
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm --format=csv,noheader | tee $L
python -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a $L
echo "== spectral bench (t=$(( $(date +%s)-T0 ))s)" | tee -a $L
timeout 150 python benchmarks/bench_spectral.py --batch 1 8 --lengths 32768 --ranks 16:16,32:32,16:32 --no-ref --repeats 30 \
  --multi 16 --profile --name s5_lead_spectral32k --configs default,v1,v2 2>&1 | grep -v Warning | grep -v "^   {" | tee -a $L
echo "== spectral gpu tests (t=$(( $(date +%s)-T0 ))s)" | tee -a $L
timeout 120 python -m pytest -v -m gpu -p no:cacheprovider -rA --tb=short tests/test_spectral.py 2>&1 \
  | grep -E "PASSED|FAILED|ERROR|Error|assert|passed|failed" | tail -45 | tee -a $L
echo "== dsalt final A/B (t=$(( $(date +%s)-T0 ))s)" | tee -a $L
timeout 110 python benchmarks/device_runs/dsalt_s5_ab.py --set final --lengths 32768,16384,4096 --rounds 3 \
  --out $OUT/res 2>&1 | grep -v Warning | tee -a $L
echo "== replay tests (t=$(( $(date +%s)-T0 ))s)" | tee -a $L
timeout 60 python -m pytest -v -m gpu -p no:cacheprovider -rA --tb=short tests/test_launch_replay.py 2>&1 \
  | grep -E "PASSED|FAILED|ERROR|Error|assert|passed|failed" | tail -8 | tee -a $L
echo "== done (t=$(( $(date +%s)-T0 ))s)" | tee -a $L
cp $OUT/res/*.json $OUT/ 2>/dev/null; true
