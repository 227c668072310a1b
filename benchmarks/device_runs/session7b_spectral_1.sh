# Session 7 round 2, call 1 (issue 7, B = 1 at 32K, ranks 32/32 below 3x): 8 warps per program at 128 registers
# ("8w": 2 programs / 16 warps per SM instead of 2 / 8) against the default, B = 1 and 8, one process each;
# the merge launch's cost on the critical path (session7b_merge_cost.py: graph16 with and without the merge launch,
# merge launch variants); then every spectral GPU test of this tree.
# ("8w" is plain launch options: v3:1:8:2:0:2:128:0:1:0:1; measured slower, its GPU test entry was removed after call 2.)
# From the tree root: OUT=... bash benchmarks/device_runs/session7b_spectral_1.sh
set -o pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD ATTNLAB_BENCH_DIR=$OUT
L=$OUT/s7b_run1.log
T0=$(date +%s)
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm --format=csv,noheader | tee $L
python -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a $L
echo "== bench B=1 (t=$(( $(date +%s)-T0 ))s)" | tee -a $L
timeout 55 python benchmarks/bench_spectral.py --batch 1 --lengths 32768 --ranks 32:32,16:32,16:16 --no-ref --no-cold \
  --no-eager --repeats 30 --multi 16 --profile --name s7b_run1_b1 \
  --configs default,v3:1:8:2:0:2:128:0:1:0:1,default,v3:1:8:2:0:2:128:0:1:0:1 2>&1 | grep -v -i warn >> $L
echo "== bench rc=$? (t=$(( $(date +%s)-T0 ))s)" | tee -a $L
timeout 40 python benchmarks/device_runs/session7b_merge_cost.py --ranks 32:32 \
  --configs default,v3:1:8:2:0:2:128:0:1:0:1 --merge-launch 32:4,16:4,128:4,16:2 2>&1 | grep -v -i warn >> $L
echo "== merge cost rc=$? (t=$(( $(date +%s)-T0 ))s)" | tee -a $L
timeout 50 python benchmarks/bench_spectral.py --batch 8 --lengths 32768 --ranks 32:32,16:32,16:16 --no-ref --no-eager \
  --no-cold --repeats 20 --multi 16 --profile --name s7b_run1_b8 \
  --configs default,v3:2:8:2:0:4:128:0:1:0:0,v3:2:8:2:0:4:128:0:1:0:1 2>&1 | grep -v -i warn >> $L
echo "== bench B=8 rc=$? (t=$(( $(date +%s)-T0 ))s)" | tee -a $L
timeout 90 python -m pytest -m gpu -x -q -n 8 -p no:cacheprovider tests/test_spectral.py 2>&1 | tail -15 >> $L
echo "== tests rc=$? (t=$(( $(date +%s)-T0 ))s)" | tee -a $L
grep "^   {" $L | python -c "
import sys, ast
for line in sys.stdin:
    d=ast.literal_eval(line.strip())
    print(d['B'], d['key_rank'], d['value_rank'], d['config'], 'g16', round((d.get('graph16_ms') or 0)*1e3,2), 'x', round(d.get('x_dense_graph16') or 0,3), d.get('kernels_us'), 'err', round(d['err'],5))
" | tee -a $L
grep "^{" $L | python -c "
import sys, ast
for line in sys.stdin:
    d=ast.literal_eval(line.strip())
    print(d) if 'full_us' in d or 'dense_graph16_us_same_copy' in d else print(d['B'], d['key_rank'], d['value_rank'], 'dense g16', round(d['dense_graph16_ms']*1e3,2), 'compression', round(d['compression'],2), 'corr', round(d['out_corr'],4))
" | tee -a $L
echo "== done (t=$(( $(date +%s)-T0 ))s)" | tee -a $L
