# Session 7 round 2, call 2 (issue 7, B = 1 at 32K, ranks 32/32 below 3x): the L2 prefetch of each program's first
# block only before the PDL wait (l2pf 2: the others after it; 3: not at all) and two (or four) steps per block (sub_steps:
# 256-token steps, smaller last step after the data arrives), against the default (timed first and last), B = 1 and
# B = 8, one process each; then every spectral GPU test of this tree.
# Note: sub_steps and the l2_prefetch modes 2 / 3 (the configurations' 11th field and l2pf values 2 / 3) were removed
# after this call (slower everywhere); this script records the call as it ran and needs commit 8ef644b to run again.
# From the tree root: OUT=... bash benchmarks/device_runs/session7b_spectral_2.sh
set -o pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD ATTNLAB_BENCH_DIR=$OUT
L=$OUT/s7b_run2.log
T0=$(date +%s)
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm --format=csv,noheader | tee $L
python -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a $L
echo "== bench B=1 (t=$(( $(date +%s)-T0 ))s)" | tee -a $L
timeout 75 python benchmarks/bench_spectral.py --batch 1 --lengths 32768 --ranks 32:32,16:32,16:16 --no-ref --no-cold \
  --no-eager --repeats 30 --multi 16 --profile --name s7b_run2_b1 \
  --configs default,v3:1:4:2:0:2:0:0:1:0:2,v3:1:4:2:0:2:0:0:1:0:3,v3:1:4:2:0:2:0:0:1:0:1:2,v3:1:4:2:0:2:0:0:1:0:2:2,v3:1:4:3:0:2:0:0:1:0:1:2,v3:1:4:2:0:2:0:0:1:0:2:4,default \
  2>&1 | grep -v -i warn >> $L
echo "== bench rc=$? (t=$(( $(date +%s)-T0 ))s)" | tee -a $L
timeout 45 python benchmarks/bench_spectral.py --batch 8 --lengths 32768 --ranks 32:32,16:32,16:16 --no-ref --no-eager \
  --no-cold --repeats 20 --multi 16 --profile --name s7b_run2_b8 \
  --configs default,v3:2:4:2:0:4:168:0:1:0:0:2 2>&1 | grep -v -i warn >> $L
echo "== bench B=8 rc=$? (t=$(( $(date +%s)-T0 ))s)" | tee -a $L
timeout 100 python -m pytest -m gpu -x -q -n 8 -p no:cacheprovider tests/test_spectral.py 2>&1 | tail -15 >> $L
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
    print(d['B'], d['key_rank'], d['value_rank'], 'dense g16', round(d['dense_graph16_ms']*1e3,2), 'compression', round(d['compression'],2), 'corr', round(d['out_corr'],4))
" | tee -a $L
echo "== done (t=$(( $(date +%s)-T0 ))s)" | tee -a $L
