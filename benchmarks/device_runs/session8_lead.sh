# Session 8 lead check (merged tree), one device call: the open speed goals timed on the final defaults, each
# against its baseline in the same process, then every GPU-marked test of the repo (12 pytest workers).
#   bash benchmarks/device_runs/session8_lead.sh      (from the tree root; $OUT from the device tool)
set -o pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD ATTNLAB_BENCH_DIR=$OUT/res
mkdir -p $OUT/res
L=$OUT/lead.log
T0=$(date +%s)
stamp() { echo "== $1 (t=$(( $(date +%s)-T0 ))s)" | tee -a $L; }
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv,noheader | tee $L
python -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)" | tee -a $L
stamp "cmd"
timeout 150 python benchmarks/bench_diff_kernel.py --groups cmd --T 16384 4096 --skip-fused --rounds 5 --paired 30 \
  --cooldown 1 --profile-noise --profile-variants --name s8_lead_cmd --noise-variants "${CMD_VARIANTS:-lean=:GLUON_DK=false}" 2>&1 \
  | grep -v -i warn | grep -E "^T=|^\||paired|pair|TFLOP" | tee -a $L
stamp "dsalt"
timeout 170 python benchmarks/device_runs/dsalt_s6_ab.py --set lead --lengths 32768,16384,4096 --rounds 7 \
  --out $OUT/res 2>&1 | grep -v -i warn | grep -v "autotuned\|options:" | tee -a $L
stamp "diff"
timeout 60 python benchmarks/bench_diff_kernel.py --groups diff --T 4096 16384 --rounds 3 --name s8_lead_diff 2>&1 \
  | grep -v -i warn | grep -E "^T=|^\{" | tee -a $L
stamp "gpu tests"
timeout ${TESTS_S:-200} python -m pytest -m gpu -n 12 -p no:cacheprovider -q -rfE --tb=short tests/ 2>&1 \
  | grep -v -i "warning: \|warnings.warn" | tail -60 | tee -a $L
stamp "done"
cp $OUT/res/*.json $OUT/ 2>/dev/null; true
