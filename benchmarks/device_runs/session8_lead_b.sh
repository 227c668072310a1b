# Session 8, the lead's third call: the lean landmark backward (OPTS["lm_lean"], helper 6b's offline patch)
# A/B against the defaults in one process (7 rounds, every length, kernel timeline at 32K), then the DSALT
# GPU tests that run it (bf16, every _lm_bwd_t_kernel launch config).
# (At the call "dsalt" was the non-lean default; lm_lean is the default since, and set s8c adds dsalt_notlean.)
#   bash benchmarks/device_runs/session8_lead_b.sh      (from the tree root; $OUT from the device tool)
set -o pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD ATTNLAB_BENCH_DIR=$OUT/res
mkdir -p $OUT/res
L=$OUT/lead_b.log
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv,noheader | tee $L
echo "== dsalt s8c" | tee -a $L
timeout 200 python benchmarks/device_runs/dsalt_s6_ab.py --set s8c --lengths 32768,16384,4096 --rounds 7 \
  --full-from 0 --timeline --out $OUT/res 2>&1 | grep -v -i warn | grep -v "autotuned\|options:" | tee -a $L
echo "== gpu tests" | tee -a $L
timeout 120 python -m pytest -m gpu -n 6 -p no:cacheprovider -q -rfE --tb=short tests/test_dsalt_kernels.py 2>&1 \
  | grep -v -i "warning: \|warnings.warn" | tail -15 | tee -a $L
