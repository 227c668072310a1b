# Session 6 lead check, call B (merged tree): the three speed goals timed on the final defaults, each against its
# baseline in the same process. Run from the tree root: bash benchmarks/device_runs/session6_lead_b.sh
set -o pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD ATTNLAB_BENCH_DIR=$OUT/res
mkdir -p $OUT/res
L=$OUT/lead_b.log
T0=$(date +%s)
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm --format=csv,noheader | tee $L
python -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a $L
echo "== spectral 32K, B = 1 and 8 (t=$(( $(date +%s)-T0 ))s)" | tee -a $L
timeout 130 python benchmarks/bench_spectral.py --batch 1 8 --lengths 32768 --ranks 16:16,32:32,16:32 --no-ref \
  --repeats 30 --multi 16 --profile --configs default --name s6_lead_spectral32k 2>&1 | grep -v -i warning \
  | grep -v "^   {" | tee -a $L
echo "== dsalt (t=$(( $(date +%s)-T0 ))s)" | tee -a $L
timeout 130 python benchmarks/device_runs/dsalt_s6_ab.py --set lead --lengths 32768,16384,4096 --rounds 3 \
  --out $OUT/res 2>&1 | grep -v -i warning | tee -a $L
echo "== cmd (t=$(( $(date +%s)-T0 ))s)" | tee -a $L
timeout 110 python benchmarks/bench_diff_kernel.py --groups cmd --T 16384 4096 --skip-fused --rounds 5 \
  --name s6_lead_cmd 2>&1 | grep -v -i warning | grep -E "^T=|^\{" | tee -a $L
echo "== diff (t=$(( $(date +%s)-T0 ))s)" | tee -a $L
timeout 90 python benchmarks/bench_diff_kernel.py --groups diff --T 4096 16384 --rounds 3 \
  --name s6_lead_diff 2>&1 | grep -v -i warning | grep -E "^T=|^\{" | tee -a $L
echo "== done (t=$(( $(date +%s)-T0 ))s)" | tee -a $L
cp $OUT/res/*.json $OUT/ 2>/dev/null; true
