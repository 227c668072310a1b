# Session 6 round 2, call 2 (issue 7, B = 1 decode speed): the final table (int32-word value coefficients beside the
# session-6 round-1 default, one process, 32K, B = 1: graph16 + profiler), the spectral GPU tests on the final
# code, then B = 8 (the L2 prefetch + words against the session-5b launch the default keeps there).
# From the tree root: OUT=... bash benchmarks/device_runs/session6b_spectral_2.sh
set -o pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD ATTNLAB_BENCH_DIR=$OUT
L=$OUT/s6b_run2.log
T0=$(date +%s)
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm --format=csv,noheader | tee $L
python -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a $L
echo "== bench B=1 (t=$(( $(date +%s)-T0 ))s)" | tee -a $L
timeout 75 python benchmarks/bench_spectral.py --batch 1 --lengths 32768 --ranks 16:16,32:32,16:32 --no-ref --no-cold \
  --no-eager --repeats 30 --multi 16 --profile --name s6b_final32k_b1 \
  --configs default,v3:1:4:2:0:2:0:8:1:0:1:1,v3:1:4:2:0:2:0:8:1:0:1:0,v3:1:4:1:0:2:0:8:1:1:1:1,v3:1:4:2:0:2:0:8:1:0:1:1,default \
  2>&1 | grep -v -i warn >> $L
echo "== bench rc=$? (t=$(( $(date +%s)-T0 ))s)" | tee -a $L
echo "== spectral gpu tests (t=$(( $(date +%s)-T0 ))s)" | tee -a $L
timeout 80 python -m pytest -v -x -n 6 -m gpu -p no:cacheprovider --tb=short tests/test_spectral.py 2>&1 \
  | grep -E "PASSED|FAILED|ERROR|Error|assert|passed|failed" | tail -100 >> $L
echo "== tests rc=$? (t=$(( $(date +%s)-T0 ))s)" | tee -a $L
grep -E "passed|failed" $L | tail -2
echo "== bench B=8 (t=$(( $(date +%s)-T0 ))s)" | tee -a $L
timeout 45 python benchmarks/bench_spectral.py --batch 8 --lengths 32768 --ranks 16:16,32:32,16:32 --no-ref --no-eager \
  --no-cold --repeats 20 --multi 16 --profile --name s6b_final32k_b8 \
  --configs default,v3:2:4:2:0:4:0:8:1:0:1:1,v3:2:4:2:0:4:168:8:1:0:1:1,v3:2:4:2:0:4:0:8:1:0:0 \
  2>&1 | grep -v -i warn >> $L
echo "== bench B=8 rc=$? (t=$(( $(date +%s)-T0 ))s)" | tee -a $L
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
