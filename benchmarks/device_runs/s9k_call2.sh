# Session 9, helper 6k, device call 2: DSALT with the Gluon window dK/dV kernel (OPTS["gluon_dkdv"]) against
# flex window-only and the defaults (set s9k: 5 rounds, every length, kernel timeline at 32K), the Gluon GPU
# tests, then the dK/dV kernel alone (Triton vs the Gluon configs, forced launch configs; the warp-specialized
# config last).
#   bash benchmarks/device_runs/s9k_call2.sh      (from the tree root; $OUT from the device tool)
set -o pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD ATTNLAB_BENCH_DIR=$OUT/res
mkdir -p $OUT/res
L=$OUT/s9k_2.log
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv,noheader | tee $L
echo "== ws check" | tee -a $L
if ATTNLAB_DSALT_AUTOTUNE=0 timeout 35 python benchmarks/device_runs/s9k_dkdv.py --ws-check 2>&1 | grep -v -i "warn" \
  | tee -a $L; then export S9K_WS=1; fi
echo "S9K_WS=${S9K_WS:-0}" | tee -a $L
echo "== dsalt s9k" | tee -a $L
timeout 120 python benchmarks/device_runs/dsalt_s6_ab.py --set s9k --lengths 32768,16384,4096 --rounds 5 \
  --full-from 0 --timeline --out $OUT/res 2>&1 | grep -v -i "warn" | grep -v "autotuned\|options:" | tee -a $L
echo "== gpu tests" | tee -a $L
ATTNLAB_DSALT_AUTOTUNE=0 timeout 45 python -m pytest -m gpu -n 4 -p no:cacheprovider -q -rfE --tb=short \
  tests/test_dsalt_gluon.py 2>&1 | grep -v -i "warning: \|warnings.warn" | tail -15 | tee -a $L
echo "== dK/dV kernel alone" | tee -a $L
ATTNLAB_DSALT_AUTOTUNE=0 timeout 60 python benchmarks/device_runs/s9k_dkdv.py --no-correct --out $OUT/res \
  --lengths 32768,16384,4096 2>&1 | grep -v -i "warn" | tee -a $L
