# Session 9, the lead's third call: the final tree (the slower Gluon forms removed, launch_replay.DescArg shared):
# every GPU-marked test of the repo, then the DSALT A/B set once more (both Gluon passes on from 16K by default).
#   bash benchmarks/device_runs/session9_lead_c.sh      (from the tree root; $OUT from the device tool)
set -o pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD ATTNLAB_BENCH_DIR=$OUT/res
mkdir -p $OUT/res
L=$OUT/lead_c.log
T0=$(date +%s)
stamp() { echo "== $1 (t=$(( $(date +%s)-T0 ))s)" | tee -a $L; }
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv,noheader | tee $L
python -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)" | tee -a $L
stamp "gpu tests"
timeout ${TESTS_S:-240} python -m pytest -m gpu -n 12 -p no:cacheprovider -q -rfE --tb=short tests/ 2>&1 \
  | grep -v -i "warning: \|warnings.warn\|PytestBenchmarkWarning" | tail -40 | tee -a $L
stamp "dsalt s9"
timeout ${DSALT_S:-300} python benchmarks/device_runs/dsalt_s6_ab.py --set s9 --lengths 32768,16384,4096 --rounds 5 \
  --full-from 0 --out $OUT/res 2>&1 | grep -v -i warn | grep -v "autotuned\|options:" | tee -a $L
stamp "done"
cp $OUT/res/*.json $OUT/ 2>/dev/null; true
