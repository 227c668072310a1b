# Session 8, the lead's first call after round 1: the checks the helpers could not run.
# 1. the Gluon dK/dQ kernel's GPU tests (incl. the launch replay fixed after call 2),
# 2. the CMD benchmark, default (Triton lean dK/dQ) vs Gluon, with the replay working,
# 3. the DSALT follow-up set s8b (fused forward after the selection, PDL modes, sorted fill),
# 4. the noise-once and latent-launch GPU tests with the Gluon kernel switched on (xdist).
#   bash benchmarks/device_runs/session8_lead_a.sh      (from the tree root; $OUT from the device tool)
set -o pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD ATTNLAB_BENCH_DIR=$OUT/res
mkdir -p $OUT/res
L=$OUT/lead_a.log
T0=$(date +%s)
stamp() { echo "== $1 (t=$(( $(date +%s)-T0 ))s)" | tee -a $L; }
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv,noheader | tee $L
stamp "gluon tests"
timeout 70 python -m pytest -m gpu -x -v -p no:cacheprovider tests/test_diff_noise_gluon.py 2>&1 | grep -E "PASS|FAIL|ERROR|passed|failed" | tail -15 | tee -a $L
stamp "cmd default vs gluon"
timeout 120 python benchmarks/bench_diff_kernel.py --groups cmd --T 16384 4096 --skip-fused --rounds 5 --paired 30 \
  --cooldown 1 --profile-noise --profile-variants --name s8_lead_a_cmd --noise-variants "gluon=:GLUON_DK=true" 2>&1 \
  | grep -v -i warn | grep -E "^T=|^\||paired|pair|TFLOP" | tee -a $L
stamp "dsalt s8b"
timeout 150 python benchmarks/device_runs/dsalt_s6_ab.py --set s8b --lengths 32768,16384,4096 --rounds 5 \
  --out $OUT/res 2>&1 | grep -v -i warn | tee -a $L
stamp "noise-once tests with gluon on"
ATTNLAB_NOISE_GLUON=1 timeout 100 python -m pytest -m gpu -n 8 -q -p no:cacheprovider tests/test_diff_noise_once.py \
  tests/test_diff_latent_launch.py tests/test_dsalt_pdl.py 2>&1 | grep -v -i "warning: \|warnings.warn" | tail -15 | tee -a $L
stamp "done"
