# Session 5 lead check, call C (merged tree after round 2: spectral PDL on by default for v3, DSALT options
# off by default): the spectral, DSALT and launch-replay GPU tests. bash benchmarks/device_runs/session5_lead_c.sh
set -o pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
L=$OUT/lead_c.log
T0=$(date +%s)
nvidia-smi --query-gpu=name --format=csv,noheader | tee $L
for f in tests/test_spectral.py tests/test_dsalt_kernels.py tests/test_launch_replay.py; do
  echo "== $f (t=$(( $(date +%s)-T0 ))s)" | tee -a $L
  timeout 160 python -m pytest -v -m gpu -p no:cacheprovider -rA --tb=short $f 2>&1 \
    | grep -E "PASSED|FAILED|ERROR|Error|assert|passed|failed" | grep -v "^PASSED" | tail -60 | tee -a $L
done
echo "== done (t=$(( $(date +%s)-T0 ))s)" | tee -a $L
