# Session 9 (helper 6q), device call 2: the warp-specialised Gluon dQ configs checked one by one (own process,
# timeout: a hang is a failure), the kernel alone for the passing ones, then the DSALT A/B (--set s9q: flex
# window-only, the defaults, gluon_dq on, and the first passing ws config) with the timeline at 32K, then the
# Gluon dQ GPU tests.      bash benchmarks/device_runs/s9q_2.sh   (from the tree root; $OUT from the device tool)
set -o pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD ATTNLAB_BENCH_DIR=$OUT/res
mkdir -p $OUT/res
L=$OUT/log
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv,noheader | tee $L
for c in ws3 ws4; do
  echo "== check $c" | tee -a $L
  T=30; [ $c = ws3 ] && T=45
  timeout $T python benchmarks/device_runs/s9q_2.py --out $OUT/res --check $c 2>&1 | grep -v -i "warn" | tail -4 | tee -a $L
done
echo "== kernel alone (ws passing: $(cat $OUT/res/ws_ok 2>/dev/null | tr '\n' ' '))" | tee -a $L
timeout 40 python benchmarks/device_runs/s9q_2.py --out $OUT/res --time bm64_s2$(sed 's/^/,/' $OUT/res/ws_ok 2>/dev/null | tr -d '\n') 2>&1 \
  | grep -v -i "warn" | tail -6 | tee -a $L
OK=$(cat $OUT/res/ws_best 2>/dev/null)
echo "== dsalt s9q (ws: ${OK:-none})" | tee -a $L
timeout 115 python benchmarks/device_runs/dsalt_s6_ab.py --set s9q ${OK:+--gq-ws $OK} --lengths 32768,16384,4096 --rounds 5 \
  --full-from 0 --timeline --out $OUT/res 2>&1 | grep -v -i warn | grep -v "autotuned\|options:" | tee -a $L
echo "== gpu tests" | tee -a $L
K="not ws3"; grep -q ws3 $OUT/res/ws_ok 2>/dev/null && K="ws3 or not ws3"
timeout 35 python -m pytest -m gpu -x -p no:cacheprovider -q -rfE --tb=short -k "$K" tests/test_dsalt_gluon_dq.py 2>&1 \
  | grep -v -i "warning: \|warnings.warn" | tail -8 | tee -a $L
