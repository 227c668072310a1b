#!/bin/bash
# Session-4 lead check, call E (H100): spectral impl="auto" now picks v2 (replayed launch) when
# launched eagerly up to 2048 blocks in all: GPU tests, then eager + graph timings of default vs v1 vs v2.
set -o pipefail
O=${OUT:-/tmp/out}; mkdir -p $O/res
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD ATTNLAB_BENCH_DIR=$O/res
L=$O/log.txt; T0=$(date +%s)
t() { echo "== $1 (t=$(( $(date +%s)-T0 ))s)" | tee -a $L; }
nvidia-smi --query-gpu=name --format=csv,noheader | tee $L
t "gpu tests: spectral"
timeout 120 python -m pytest -q -m gpu -p no:cacheprovider -rfE --tb=short tests/test_spectral.py 2>&1 | grep -E "PASSED|FAILED|ERROR|passed|failed" | tail -8 | tee -a $L
t "spectral eager and graph, default vs v1 vs v2"
timeout 150 python benchmarks/bench_spectral.py --batch 1 8 --lengths 16384 32768 --configs default,v1,v2 --no-ref --no-cold \
  --repeats 20 --name spectral_s4_auto_eager 2>&1 | grep -E "^   \{" | python -c "
import sys, ast
for l in sys.stdin:
    r = ast.literal_eval(l.strip())
    print(r['B'], r['T'], r['key_rank'], r['config'], 'eager %.1f us' % (r['eager_ms'] * 1e3), 'graph %.1f us' % (r['graph_ms'] * 1e3), 'host %.0f us' % r['host_us'])
" | tee -a $L
python -c "
import json; d = json.load(open('$O/res/spectral_s4_auto_eager.json'))
for r in d['rows']: print('B', r['B'], 'T', r['T'], 'ranks', r['key_rank'], 'dense eager %.1f us' % (r['dense_ms'] * 1e3), 'graph %.1f us' % (r['dense_graph_ms'] * 1e3))
" 2>&1 | tee -a $L
t "done"
