#!/usr/bin/env bash
# DSALT on the GPU in one call: kernel tests, benchmark (phases + kernel profile), quality runs.
#   bash benchmarks/run_dsalt_device.sh OUTDIR PART[:SECONDS] ...
# PART: tests | flextest | bench | benchflex | shakespeare | passkey (each bounded by its timeout).
# TinyShakespeare is looked up under $ATTNLAB_DATA (tinyshakespeare/input.txt).
set -u
OUT=$1; shift
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 ATTNLAB_BENCH_DIR="$OUT"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
python -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"
DS='{"n_min": 16, "n_max": 256, "edge": 4.0, "n_landmarks": 32, "block": 64}'
PK='{"n_min": 8, "n_max": 32, "edge": 2.0, "n_landmarks": 16, "block": 16}'
for item in "$@"; do
  part=${item%%:*}; secs=${item#*:}; [ "$secs" = "$item" ] && secs=120
  echo "== $part (timeout ${secs}s) $(date -u +%T)"
  t0=$(date +%s)
  case $part in
    tests) timeout "$secs" python -m pytest -q -p no:cacheprovider tests/test_dsalt_kernels.py \
             -k "gpu and not flex or stable_slot or fallback" 2>&1 | tail -25 ;;
    flextest) timeout "$secs" python -m pytest -q -p no:cacheprovider tests/test_dsalt_kernels.py -k "flex" 2>&1 | tail -25 ;;
    bench) timeout "$secs" python benchmarks/bench_dsalt.py --variants attnlab_dsalt,attnlab_window,attnlab_dsalt_var \
             --phases --profile --name dsalt_s2 2>&1 | tail -60 ;;
    benchflex) timeout "$secs" python benchmarks/bench_dsalt.py --variants flex_window,sdpa_causal --lengths 32768 \
             --name dsalt_s2_flex 2>&1 | tail -20 ;;
    shakespeare) ATTNLAB_DSALT_AUTOTUNE=0 timeout "$secs" python -c "from attnlab.cli.main import main; main()" compare \
             --config configs/shakespeare-384.toml --mixers mha,dsalt --steps 300 --seeds 2 --no-plots \
             --train.eval_every 100 --out "$OUT/compare_shakespeare" "--model.mixer_options.dsalt=$DS" 2>&1 | tail -20 ;;
    passkey) ATTNLAB_DSALT_AUTOTUNE=0 timeout "$secs" python -c "from attnlab.cli.main import main; main()" compare \
             --task passkey --mixers mha,dsalt --model.max_seq_len 512 --steps 1000 --seeds 2 --no-plots \
             --out "$OUT/compare_passkey" "--model.mixer_options.dsalt=$PK" 2>&1 | tail -20 ;;
  esac
  echo "== $part done rc=$? in $(( $(date +%s) - t0 ))s"
done
