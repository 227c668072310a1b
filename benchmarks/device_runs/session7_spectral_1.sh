# Session 7, call 1 (issue 7, decode speed at 32K): the value coefficients stored token-major ("@token": C_V^T per
# block, the aggregation dot's operand with its K axis contiguous) against the current default ("@rank") in one
# process, B = 1 then B = 8, ranks 16/16, 32/32, 16/32 (graph16 + profiler; every output checked against the
# PyTorch reference); the new GPU tests; Nsight Compute of the B = 1 default in both layouts at 32/32.
# From the tree root: OUT=... bash benchmarks/device_runs/session7_spectral_1.sh
set -o pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD ATTNLAB_BENCH_DIR=$OUT
L=$OUT/s7_run1.log
T0=$(date +%s)
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm --format=csv,noheader | tee $L
python -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a $L
echo "== bench B=1 (t=$(( $(date +%s)-T0 ))s)" | tee -a $L
timeout 100 python benchmarks/bench_spectral.py --batch 1 --lengths 32768 --ranks 16:16,32:32,16:32 --no-ref --no-cold \
  --no-eager --repeats 30 --multi 16 --profile --name s7_run1_b1 \
  --configs default@rank,default@token,v3:1:4:3:0:2:0:8:1:0:1@token,v3:2:4:2:0:4:168:8:1:0:1@token,v3:2:4:2:0:2:128:8:1:0:1@token,default@token,default@rank \
  2>&1 | grep -v -i warn >> $L
echo "== bench rc=$? (t=$(( $(date +%s)-T0 ))s)" | tee -a $L
echo "== bench B=8 (t=$(( $(date +%s)-T0 ))s)" | tee -a $L
timeout 70 python benchmarks/bench_spectral.py --batch 8 --lengths 32768 --ranks 16:16,32:32,16:32 --no-ref --no-eager \
  --no-cold --repeats 20 --multi 16 --profile --name s7_run1_b8 \
  --configs default@rank,default@token,v3:2:4:2:0:4:168:8:1:0:1@token,v3:2:4:2:0:4:168:8:1:0:0@token,default@rank \
  2>&1 | grep -v -i warn >> $L
echo "== bench B=8 rc=$? (t=$(( $(date +%s)-T0 ))s)" | tee -a $L
echo "== spectral gpu tests (t=$(( $(date +%s)-T0 ))s)" | tee -a $L
timeout 60 python -m pytest -v -x -n 8 -m gpu -p no:cacheprovider --tb=short tests/test_spectral.py -k "token or pdl_chain" 2>&1 \
  | grep -E "PASSED|FAILED|ERROR|Error|assert|passed|failed" | tail -60 >> $L
echo "== tests rc=$? (t=$(( $(date +%s)-T0 ))s)" | tee -a $L
grep -E "passed|failed" $L | tail -2
NCU=$(command -v ncu || ls /usr/local/cuda*/bin/ncu 2>/dev/null | head -1)
REM=$(( 270 - ($(date +%s)-T0) ))
if [ $REM -gt 25 ]; then
  timeout $REM $NCU --clock-control none --section SpeedOfLight --section WarpStateStats --section Occupancy \
    --section LaunchStats --section SchedulerStats -k regex:"_spectral_v" -c 2 -f -o $OUT/s7_ncu1 \
    python benchmarks/device_runs/session7_spectral_ncu.py 32:32:default@rank 32:32:default@token 2>&1 \
    | grep -v -i warn | tail -6 >> $L
  $NCU -i $OUT/s7_ncu1.ncu-rep --csv --page details > $OUT/s7_ncu1_details.csv 2>&1
  grep -E "\"Duration\"|Registers Per|Achieved Occupancy|Issue Slots Busy|Eligible Warps|Active Warps Per|No Eligible|Warp Cycles Per Issued|DRAM Throughput\"" $OUT/s7_ncu1_details.csv | awk -F'","' '{print $5" | "$(NF-2)" "$(NF-1)" "$NF}' | tee -a $L
  rm -f $OUT/s7_ncu1.ncu-rep
else
  echo "no time left for ncu" | tee -a $L
fi
echo "== ncu done (t=$(( $(date +%s)-T0 ))s)" | tee -a $L
grep "^   {" $L | python -c "
import sys, ast
for line in sys.stdin:
    d=ast.literal_eval(line.strip())
    print(d['B'], d['key_rank'], d['value_rank'], d['config'], 'g16', round((d.get('graph16_ms') or 0)*1e3,2), 'x', round(d.get('x_dense_graph16') or 0,3), 'graph', round((d.get('graph_ms') or 0)*1e3,2), d.get('kernels_us'), 'err', round(d['err'],5))
" | tee -a $L
grep "^{" $L | python -c "
import sys, ast
for line in sys.stdin:
    d=ast.literal_eval(line.strip())
    print(d['B'], d['key_rank'], d['value_rank'], 'dense g16', round(d['dense_graph16_ms']*1e3,2), 'compression', round(d['compression'],2), 'corr', round(d['out_corr'],4))
" | tee -a $L
echo "== done (t=$(( $(date +%s)-T0 ))s)" | tee -a $L
