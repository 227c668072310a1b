#!/usr/bin/env bash
# Session-6 DSALT device call 2, from the repo root on the device:
#   bash benchmarks/device_runs/dsalt_s6.sh OUT [BENCH_SECONDS] [TEST_SECONDS]
# 1. the final A/B (dsalt_s6_ab.py --set final: flex window-only, attnlab window-only, DSALT with this
#    tree's defaults and its variants, session-5 defaults; 32K / 16K / 4K, 3 rounds, 32K timeline);
# 2. `pytest -m gpu -x -v tests/test_dsalt_kernels.py tests/test_launch_replay.py` split into four
#    groups run side by side (the Triton compiles are CPU bound; 16 cores).
set -u
OUT=$1; BS=${2:-145}; TS=${3:-85}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 ATTNLAB_BENCH_DIR="$OUT"
T0=$(date +%s)
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,temperature.gpu,power.draw --format=csv,noheader
python -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"
echo "== final A/B (t=$(( $(date +%s)-T0 ))s)"
timeout "$BS" python benchmarks/device_runs/dsalt_s6_ab.py --set final --lengths 32768,16384,4096 --rounds 3 \
  --timeline --out "$OUT"
echo "== A/B rc=$? (t=$(( $(date +%s)-T0 ))s)"
P="python -m pytest -x -v -p no:cacheprovider -rA --tb=short -m gpu"
timeout "$TS" $P tests/test_dsalt_kernels.py -k "every_launch" > "$OUT/tests_a.log" 2>&1 &
timeout "$TS" $P tests/test_dsalt_kernels.py -k "session6" > "$OUT/tests_b.log" 2>&1 &
timeout "$TS" $P tests/test_dsalt_kernels.py -k "latency_options or flex or parallel_selection" > "$OUT/tests_c.log" 2>&1 &
timeout "$TS" $P tests/test_dsalt_kernels.py tests/test_launch_replay.py \
  -k "not every_launch and not session6 and not latency_options and not flex and not parallel_selection" \
  > "$OUT/tests_d.log" 2>&1 &
wait
for f in a b c d; do
  echo "== tests $f"; grep -E "PASSED|FAILED|ERROR|Error|assert|passed|failed|skipped" "$OUT/tests_$f.log" | tail -25
done
echo "== done (t=$(( $(date +%s)-T0 ))s)"
