# Session 7, call 2 (issue 7, decode speed at 32K): with the token-major value coefficients (the cache default after
# call 1), the value bases applied once per program ("late": ...:1) on the B = 1 launch, with 3 stages, and in
# token-split programs (split 2, 2 blocks, 128 registers: 4 programs per SM, one wave of 520 programs), against the
# default and the session-6 layout ("@rank"), one process, B = 1 then B = 8, ranks 16/16, 32/32, 16/32 (graph16 +
# profiler; every output checked against the PyTorch reference); then every spectral GPU test.
# Note: the late value projection (the configurations ending in ":1" after the l2pf field, ``late_vproj``) was removed
# after this call (no faster); this script records the call as it ran (commit c61f89f) and needs that commit to run again.
# From the tree root: OUT=... bash benchmarks/device_runs/session7_spectral_2.sh
set -o pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD ATTNLAB_BENCH_DIR=$OUT
L=$OUT/s7_run2.log
T0=$(date +%s)
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm --format=csv,noheader | tee $L
python -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a $L
echo "== bench B=1 (t=$(( $(date +%s)-T0 ))s)" | tee -a $L
timeout 100 python benchmarks/bench_spectral.py --batch 1 --lengths 32768 --ranks 16:16,32:32,16:32 --no-ref --no-cold \
  --no-eager --repeats 30 --multi 16 --profile --name s7_final32k_b1 \
  --configs default,default@rank,v3:1:4:2:0:2:0:8:1:0:1:1,v3:1:4:3:0:2:0:8:1:0:1:1,v3:2:4:2:0:2:128:8:1:0:1:1,v3:2:4:2:0:2:128:8:1:0:0:1,v3:1:4:2:0:2:0:8:1:0:1:1,default \
  2>&1 | grep -v -i warn >> $L
echo "== bench rc=$? (t=$(( $(date +%s)-T0 ))s)" | tee -a $L
echo "== bench B=8 (t=$(( $(date +%s)-T0 ))s)" | tee -a $L
timeout 75 python benchmarks/bench_spectral.py --batch 8 --lengths 32768 --ranks 16:16,32:32,16:32 --no-ref --no-eager \
  --no-cold --repeats 20 --multi 16 --profile --name s7_final32k_b8 \
  --configs default,default@rank,v3:2:4:2:0:4:168:8:1:0:0:1,v3:2:4:2:0:4:168:8:1:0:1:1,v3:2:4:2:0:4:128:8:1:0:1:1,default \
  2>&1 | grep -v -i warn >> $L
echo "== bench B=8 rc=$? (t=$(( $(date +%s)-T0 ))s)" | tee -a $L
echo "== spectral gpu tests (t=$(( $(date +%s)-T0 ))s)" | tee -a $L
timeout 130 python -m pytest -v -x -n 8 -m gpu -p no:cacheprovider --tb=short tests/test_spectral.py 2>&1 \
  | grep -E "PASSED|FAILED|ERROR|Error|assert|passed|failed" | tail -150 >> $L
echo "== tests rc=$? (t=$(( $(date +%s)-T0 ))s)" | tee -a $L
grep -E "passed|failed" $L | tail -2
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
