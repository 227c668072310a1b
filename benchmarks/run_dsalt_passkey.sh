#!/usr/bin/env bash
# DSALT vs MHA passkey retrieval at 1x/2x/4x the training length, in one bounded GPU call.
#   bash benchmarks/run_dsalt_passkey.sh OUTDIR [BUDGET_S] [extra args of benchmarks/dsalt_passkey.py]
# The Python driver stops starting new phases (seeds, YaRN runs) once BUDGET_S (default 200) of
# its own wall time is used; `timeout` is the hard stop (BUDGET_S + 30 s). Writes OUTDIR/
# dsalt_passkey.{json,md}, passkey_vs_length.png, passkey/ (compare.json, compare.md, plots,
# runs/*/summary.json, metrics), passkey_wide/ and passkey_yarn/; the log is OUTDIR/log.txt. Checkpoints are
# deleted at the end (they are the bulk of the bytes) unless KEEP_CKPT=1.
set -u -o pipefail
OUT=${1:?usage: run_dsalt_passkey.sh OUTDIR [BUDGET_S] [args]}; shift
BUDGET=${1:-200}; [ $# -gt 0 ] && shift
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 ATTNLAB_DSALT_AUTOTUNE=0
t0=$(date +%s)
{
  nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
  timeout $((${BUDGET%.*} + 30)) python benchmarks/dsalt_passkey.py --out "$OUT" --budget-s "$BUDGET" "$@"
  echo "rc=$? wall $(( $(date +%s) - t0 ))s"
} 2>&1 | tee "$OUT/log.txt"
[ "${KEEP_CKPT:-0}" = 1 ] || find "$OUT" -type d -name checkpoints -prune -exec rm -rf {} +
