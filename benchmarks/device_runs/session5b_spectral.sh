# Session 5b, spectral launch cost (one device call): v3 with programmatic dependent launch (pdl) against
# the current default, dense SDPA in the same run (32K, B = 1 and 8, ranks 16/16, 32/32, 16/32, graph16
# and kernel profile), then the spectral GPU tests with pdl as the v2/v3 default (ATTNLAB_SPECTRAL_PDL=1:
# every v2/v3 test launches through PDL; the chain test compares with ordinary launches).
# From the tree root: OUT=... bash benchmarks/device_runs/session5b_spectral.sh
set -o pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD ATTNLAB_BENCH_DIR=$OUT
L=$OUT/s5b.log
T0=$(date +%s)
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm --format=csv,noheader | tee $L
python -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a $L
echo "== spectral bench (t=$(( $(date +%s)-T0 ))s)" | tee -a $L
timeout 125 python benchmarks/bench_spectral.py --batch 1 8 --lengths 32768 --ranks 16:16,32:32,16:32 --no-ref \
  --repeats 30 --multi 16 --profile --name s5b_spectral32k \
  --configs default,v3:2:4:2:0:4:0:8:1,v3:2:4:2:0:8:0:8:1,v3:2:4:2:0:2:0:8:1 2>&1 | grep -v Warning >> $L
echo "== bench rc=$? (t=$(( $(date +%s)-T0 ))s)" | tee -a $L
grep -E "failed|Error" $L | head -5
echo "== spectral gpu tests, pdl default on (t=$(( $(date +%s)-T0 ))s)" | tee -a $L
ATTNLAB_SPECTRAL_PDL=1 timeout 160 python -m pytest -v -m gpu -p no:cacheprovider -rA --tb=short tests/test_spectral.py 2>&1 \
  | grep -E "PASSED|FAILED|ERROR|Error|assert|passed|failed" | tail -60 | tee -a $L
echo "== done (t=$(( $(date +%s)-T0 ))s)" | tee -a $L
