# Session 9, the lead's first call on the merged tree: DSALT with both Gluon backward passes (dQ: gluon_dq.py, on
# from 32K; dK/dV: gluon_dkdv.py, off) alone and together at every length against flex window-only (7 rounds,
# one process, kernel timeline), then every GPU-marked test of the repo (the helpers' Gluon GPU tests included).
#   bash benchmarks/device_runs/session9_lead_a.sh      (from the tree root; $OUT from the device tool)
set -o pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD ATTNLAB_BENCH_DIR=$OUT/res
mkdir -p $OUT/res
L=$OUT/lead_a.log
T0=$(date +%s)
stamp() { echo "== $1 (t=$(( $(date +%s)-T0 ))s)" | tee -a $L; }
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv,noheader | tee $L
python -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)" | tee -a $L
stamp "dsalt s9"
timeout ${DSALT_S:-300} python benchmarks/device_runs/dsalt_s6_ab.py --set s9 --lengths 32768,16384,4096 --rounds 7 \
  --full-from 0 --timeline --out $OUT/res 2>&1 | grep -v -i warn | grep -v "autotuned\|options:" | tee -a $L
stamp "gpu tests"
timeout ${TESTS_S:-240} python -m pytest -m gpu -n 12 -p no:cacheprovider -q -rfE --tb=short tests/ 2>&1 \
  | grep -v -i "warning: \|warnings.warn" | tail -60 | tee -a $L
stamp "done"
cp $OUT/res/*.json $OUT/ 2>/dev/null; true
