# Session-5 spectral decode, device call 1: launch floor, per-kernel device times (profiler), and the
# v3 kernel's configurations vs v1/v2/dense at 32K, single-call graphs and 16-call graphs (per call).
# Run from the tree root: bash benchmarks/device_runs/session5_spectral_1.sh
set -o pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD ATTNLAB_BENCH_DIR=$OUT/res
mkdir -p $OUT/res
L=$OUT/log.txt
T0=$(date +%s)
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm --format=csv,noheader | tee $L
python -c "import torch,triton;print(torch.__version__,triton.__version__)" | tee -a $L
timeout 290 python benchmarks/bench_spectral.py --batch 1 8 --lengths 32768 --no-ref --no-cold --no-eager --repeats 20 \
  --multi 16 --profile --floor --name s5_run1 \
  --configs v1,v2,v3:2:4:1:0,v3:4:4:1:0,v3:2:4:1:1,v3:1:8:1:0,v3:8:4:1:0,v3:2:4:1:0:1:128,v3:2:4:2:0:2,v3:2:4:2:0:4,v3:4:4:2:0:4,v3:1:8:2:0:2,v1:128:8:1:4:2 \
  2>&1 | grep -v Warning | tee -a $L
echo "== done (t=$(( $(date +%s)-T0 ))s)" | tee -a $L
cp $ATTNLAB_BENCH_DIR/*.json $OUT/ 2>/dev/null; true
