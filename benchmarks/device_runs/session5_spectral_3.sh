# Session-5 spectral decode: the check NOT yet run (the helper's two device calls were used). It measures
# the final v3 kernel code (the one of call 1; call 2 timed a variant with flat tile loads, reverted
# after it measured slower) with the final launcher and merge, at 32K for ranks 16/16, 32/32 and the
# cache's default 16/32, and re-runs the GPU tests. Run from the tree root:
#   bash benchmarks/device_runs/session5_spectral_3.sh
set -o pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD ATTNLAB_BENCH_DIR=$OUT/res
mkdir -p $OUT/res
L=$OUT/log.txt
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm --format=csv,noheader | tee $L
timeout 150 python benchmarks/bench_spectral.py --batch 1 8 --lengths 32768 --ranks 16:16,32:32,16:32 --no-ref --repeats 30 \
  --multi 16 --profile --name s5_check32k --configs default,v1,v2 2>&1 | grep -v Warning | grep -v "^   {" | tee -a $L
timeout 120 python -m pytest -v -m gpu -p no:cacheprovider -rA --tb=short tests/test_spectral.py 2>&1 \
  | grep -E "PASSED|FAILED|ERROR|Error|error|assert|passed|failed" | tail -60 | tee -a $L
cp $ATTNLAB_BENCH_DIR/*.json $OUT/ 2>/dev/null; true
