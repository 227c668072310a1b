# Session 6 round 2, call 1 (issue 7, B = 1 decode speed): candidates timed against the session-6 round-1 default in
# Note: the v4 / v5 configurations named below were removed in session 6's review (measured slower); this
# script records the call as it ran (at commit d8d6fae) and needs that commit to run again.
# one process (32K, B = 1, ranks 16/16, 32/32, 16/32; graph16 + profiler; every output checked against the PyTorch
# reference), then Nsight Compute (a few sections) of the default and the 8-warp candidate.
# From the tree root: OUT=... bash benchmarks/device_runs/session6b_spectral_1.sh
set -o pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD ATTNLAB_BENCH_DIR=$OUT
L=$OUT/s6b_run1.log
T0=$(date +%s)
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm --format=csv,noheader | tee $L
python -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a $L
echo "== bench B=1 (t=$(( $(date +%s)-T0 ))s)" | tee -a $L
timeout 130 python benchmarks/bench_spectral.py --batch 1 --lengths 32768 --ranks 16:16,32:32,16:32 --no-ref --no-cold \
  --no-eager --repeats 30 --multi 16 --profile --name s6b_run1 \
  --configs default,v3:1:8:2:0:2:128:8:1:0:1,v3:1:8:3:0:2:128:8:1:0:1,v3:1:8:2:0:4:0:8:1:0:1,v3:1:8:2:0:2:128:8:1:0:0,v3:2:8:2:0:4:128:8:1:0:1,v5:1:4:2:0:2:0:8:1:0:1,v5:1:8:2:0:2:128:8:1:0:1,default \
  2>&1 | grep -v -i warn >> $L
echo "== bench rc=$? (t=$(( $(date +%s)-T0 ))s)" | tee -a $L
NCU=$(command -v ncu || ls /usr/local/cuda*/bin/ncu 2>/dev/null | head -1)
REM=$(( 215 - ($(date +%s)-T0) ))
if [ $REM -gt 25 ]; then
  timeout $REM $NCU --clock-control none --section SpeedOfLight --section WarpStateStats --section Occupancy \
    --section LaunchStats --section SchedulerStats -k regex:"_spectral_v" -c 4 -f -o $OUT/s6b_ncu1 \
    python benchmarks/device_runs/session6b_spectral_ncu.py 16:32:default 16:32:v3:1:8:2:0:2:128:8:1:0:1 \
    32:32:default 32:32:v3:1:8:2:0:2:128:8:1:0:1 2>&1 | grep -v -i warn | tail -12 >> $L
  $NCU -i $OUT/s6b_ncu1.ncu-rep --csv --page details > $OUT/s6b_ncu1_details.csv 2>&1
  grep -E "\"Duration\"|Registers Per|Achieved Occupancy|Issue Slots Busy|Eligible Warps|Active Warps Per|No Eligible|Warp Cycles Per Issued|DRAM Throughput\"" $OUT/s6b_ncu1_details.csv | awk -F'","' '{print $5" | "$(NF-2)" "$(NF-1)" "$NF}' | tee -a $L
else
  echo "no time left for ncu" | tee -a $L
fi
echo "== ncu done (t=$(( $(date +%s)-T0 ))s)" | tee -a $L
grep "^   {" $L | python -c "
import sys, ast
for line in sys.stdin:
    d=ast.literal_eval(line.strip())
    print(d['B'], d['key_rank'], d['value_rank'], d['config'], 'g16', round((d.get('graph16_ms') or 0)*1e3,2), 'graph', round((d.get('graph_ms') or 0)*1e3,2), d.get('kernels_us'), 'err', round(d['err'],5))
" | tee -a $L
grep "^{" $L | python -c "
import sys, ast
for line in sys.stdin:
    d=ast.literal_eval(line.strip())
    print(d['B'], d['key_rank'], d['value_rank'], 'dense g16', round(d['dense_graph16_ms']*1e3,2), 'compression', round(d['compression'],2), 'corr', round(d['out_corr'],4))
" | tee -a $L
echo "== done (t=$(( $(date +%s)-T0 ))s)" | tee -a $L
