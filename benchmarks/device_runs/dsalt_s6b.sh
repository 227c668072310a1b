#!/usr/bin/env bash
# Session-6 round-2 DSALT device call, from the repo root on the device:
#   bash benchmarks/device_runs/dsalt_s6b.sh OUT SET [BENCH_SECONDS] [TEST_SECONDS]
# 1. the A/B (dsalt_s6b_ab.py --set SET, 32K / 16K / 4K, 3 rounds, 32K timeline);
# 2. GPU tests: call1 the new bulk-merge tests; final the DSALT GPU test files in four groups side by side.
set -u
OUT=$1; SET=${2:-call1}; BS=${3:-150}; TS=${4:-70}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 ATTNLAB_BENCH_DIR="$OUT"
T0=$(date +%s)
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,temperature.gpu,power.draw --format=csv,noheader
python -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"
P="python -m pytest -x -v -p no:cacheprovider -rA --tb=short -m gpu"
if [ "$SET" = call1 ]; then  # first, alone (not beside the timings)
  timeout "$TS" $P tests/test_dsalt_kernels.py -k "bulk" > "$OUT/tests_bulk.log" 2>&1
fi
echo "== A/B $SET (t=$(( $(date +%s)-T0 ))s)"
timeout "$BS" python benchmarks/device_runs/dsalt_s6b_ab.py --set "$SET" --lengths 32768,16384,4096 --rounds "${ROUNDS:-3}" \
  --timeline --out "$OUT"
echo "== A/B rc=$? (t=$(( $(date +%s)-T0 ))s)"
if [ "$SET" = final ]; then
  timeout "$TS" $P tests/test_dsalt_kernels.py -k "every_launch" > "$OUT/tests_a.log" 2>&1 &
  timeout "$TS" $P tests/test_dsalt_kernels.py -k "session6 or bulk" > "$OUT/tests_b.log" 2>&1 &
  timeout "$TS" $P tests/test_dsalt_kernels.py -k "latency_options or flex or parallel_selection" > "$OUT/tests_c.log" 2>&1 &
  timeout "$TS" $P tests/test_dsalt_kernels.py tests/test_launch_replay.py \
    -k "not every_launch and not session6 and not bulk and not latency_options and not flex and not parallel_selection" \
    > "$OUT/tests_d.log" 2>&1 &
fi
wait
for f in "$OUT"/tests_*.log; do
  echo "== $f"; grep -E "PASSED|FAILED|ERROR|Error|assert|passed|failed|skipped" "$f" | tail -25
done
echo "== done (t=$(( $(date +%s)-T0 ))s)"
if [ "$SET" = final ] && command -v ncu > /dev/null; then  # stall reasons of the serial selection (one launch)
  timeout 25 ncu --clock-control none --section WarpStateStats --section SourceCounters --section LaunchStats \
    -k regex:_select_kernel -c 1 python benchmarks/device_runs/dsalt_s6b_ncu.py > "$OUT/ncu_select.txt" 2>&1
  echo "== ncu rc=$? (t=$(( $(date +%s)-T0 ))s)"; grep -E "Stall|Warp Cycles|Issued|Duration|Registers" "$OUT/ncu_select.txt" | head -30
fi
