#!/usr/bin/env bash
# Reproduce the research notebooks' TinyShakespeare comparisons on one GPU (docs/reproduction.md).
#
#   scripts/reproduce_gpu.sh OUT_DIR [INPUT_TXT] [TIME_LIMIT_S]
#
# Three `attnlab compare` processes share the GPU (eager training at these widths is launch-bound,
# so one process leaves the GPU half idle):
#   r384      MHA vs Diff-MLA, preset shakespeare-384 (the Diff-MLA notebook)
#   r512      MLA vs CMD-MLA,  preset shakespeare-512 (the CMD-MLA notebook)
#   r384-mla  MLA at dim 384 (the latent baseline for Diff-MLA)
# Every run: 1000 steps x 16 x 1024 tokens, seeds 0,1,2, bf16 autocast, AdamW (configs/*.toml).
# Losses do not depend on the sharing; tokens/s and decode ms/token do (they are then indicative).
# Each process is bounded by TIME_LIMIT_S; OUT_DIR/reproduction.tar.gz holds the results without
# checkpoints and token files.
# A CPU check of the commands (seconds per run):
#   REPRO_EXTRA='--steps 2 --preset tiny --train.seq_len 64 --train.batch_size 2 --train.eval_batches 1' \
#     scripts/reproduce_gpu.sh /tmp/repro ../shared/data/tinyshakespeare/input.txt
set -uo pipefail
out=${1:?usage: reproduce_gpu.sh OUT_DIR [INPUT_TXT] [TIME_LIMIT_S]}
data=${2:-}
limit=${3:-480}
mkdir -p "$out"
common=(--seeds 3 --decode-context 512 --train.progress false --train.log_every 1)
if [ -n "$data" ]; then common+=(--data.path "$data"); fi
# REPRO_EXTRA: more overrides, e.g. a tiny CPU check: "--steps 2 --preset tiny --train.seq_len 64"
read -r -a extra <<<"${REPRO_EXTRA:-}"
common+=("${extra[@]}")
python3 -c 'import torch; print("torch", torch.__version__, torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu")'
run() {  # name config mixers
    local name=$1 cfg=$2 mixers=$3
    timeout "$limit" python3 -m attnlab.cli.main compare --config "$cfg" --mixers "$mixers" \
        "${common[@]}" --out "$out/$name" >"$out/$name.log" 2>&1
    echo "$name: exit $? after ${SECONDS}s"
}
run r384 configs/shakespeare-384.toml mha,diff-mla &
run r512 configs/shakespeare-512.toml mla,cmd-mla &
run r384-mla configs/shakespeare-384.toml mla &
wait
nvidia-smi --query-gpu=name,memory.used --format=csv || true
tar czf "$out/reproduction.tar.gz" -C "$out" --exclude=checkpoints --exclude=data --exclude='*.bin' \
    r384 r512 r384-mla r384.log r512.log r384-mla.log
ls -la "$out"
