# Session 6, call 1 (issue 7, B = 1 decode speed): candidates timed against the session-5b default in one
# process (32K, B = 1, ranks 16/16, 32/32, 16/32; graph16 + profiler), then Nsight Compute counters of one
# launch per rank configuration (the v3 block kernel and the merge kernel), then the compiled kernels
# (ttgir, cubin) of the Triton cache. From the tree root: OUT=... bash benchmarks/device_runs/session6_spectral_1.sh
set -o pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD ATTNLAB_BENCH_DIR=$OUT TRITON_CACHE_DIR=/tmp/s6_tcache
L=$OUT/s6_run1.log
T0=$(date +%s)
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm --format=csv,noheader | tee $L
python -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a $L
echo "== bench (t=$(( $(date +%s)-T0 ))s)" | tee -a $L
timeout 110 python benchmarks/bench_spectral.py --batch 1 --lengths 32768 --ranks 16:16,32:32,16:32 --no-ref \
  --no-cold --no-eager --repeats 30 --multi 16 --profile --name s6_run1 \
  --configs default,v3:2:4:3:0:4:0:8:1,v3:2:4:1:0:4:0:8:1:1,v3:2:4:1:0:4:0:8:1:2,v3:2:4:2:1:4:0:64:1,v3:2:4:1:1:4:0:64:1:2,v3:2:4:3:1:4:0:64:1,v3:2:4:4:0:4:0:8:1,v3:2:4:2:0:2:128:8:1,v3:2:4:2:0:4:0:8:1 \
  2>&1 | grep -v -i warn >> $L
echo "== bench rc=$? (t=$(( $(date +%s)-T0 ))s)" | tee -a $L
NCU=$(command -v ncu || ls /usr/local/cuda*/bin/ncu 2>/dev/null | head -1)
echo "== ncu $NCU (t=$(( $(date +%s)-T0 ))s)" | tee -a $L
timeout 100 $NCU --clock-control none --set full -k regex:"_spectral_v3|_merge_v2" -c 10 -f -o $OUT/s6_ncu \
  python benchmarks/device_runs/session6_spectral_ncu.py 16:16:base 32:32:base 16:32:base 16:16:pre2 16:16:s3 2>&1 \
  | grep -v -i warn | tail -20 >> $L
echo "== ncu rc=$? (t=$(( $(date +%s)-T0 ))s)" | tee -a $L
$NCU -i $OUT/s6_ncu.ncu-rep --csv --page details > $OUT/s6_ncu_details.csv 2>&1
$NCU -i $OUT/s6_ncu.ncu-rep --csv --page source --print-source sass 2>&1 | gzip > $OUT/s6_ncu_source.csv.gz
echo "== ncu export (t=$(( $(date +%s)-T0 ))s)" | tee -a $L
mkdir -p /tmp/s6_kern && find /tmp/s6_tcache -name "_spectral_v3*" \( -name "*.ttgir" -o -name "*.cubin" -o -name "*.json" \) \
  | head -60 | while read f; do cp "$f" /tmp/s6_kern/$(basename $(dirname $f))_$(basename $f); done
tar czf $OUT/s6_kern.tgz -C /tmp/s6_kern .
grep -E "Duration|DRAM Throughput|Memory Throughput|Achieved Occupancy|Registers Per|Issue Slots Busy|Executed Ipc A" $OUT/s6_ncu_details.csv | cut -c1-200 | head -60
grep -E "x_dense_graph16|'config'" $L | python -c "
import sys, ast
for line in sys.stdin:
    line=line.strip()
    if line.startswith('{') and 'config' in line:
        d=ast.literal_eval(line)
        if 'err' not in d: continue
        print(d['key_rank'], d['value_rank'], d['config'], 'g16', round(d.get('graph16_ms',0)*1e3,2), 'graph', round(d.get('graph_ms',0)*1e3,2), d.get('kernels_us'), 'err', round(d['err'],5))
"
echo "== done (t=$(( $(date +%s)-T0 ))s)" | tee -a $L
