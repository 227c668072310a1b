#!/bin/bash
# (Record: the Gluon kernel this ran was removed after session 8, measured slower; code at its branch merge.)
# Session 8 round 2, issue 3 (Gluon dV kernel), device call 2: the kernel alone (every config incl. the
# overlapped pipeline, after call 1's kernels were found serialised by ptxas (C7514)), the GPU tests, then the
# CMD op: default / Gluon dK/dQ / Gluon dK/dQ + the fastest Gluon dV config at 16K (G = 4 and G = 2).
set -o pipefail
OUT=${OUT:-/tmp/out}; mkdir -p $OUT
export ATTNLAB_BENCH_DIR=$OUT
nvidia-smi --query-gpu=name,clocks.sm,power.draw,temperature.gpu --format=csv | tee $OUT/smi.txt
timeout 55 python benchmarks/bench_noise_dv_gluon.py --T 1024 999 4096 16384 --name s8v_micro_2 \
  --configs 4,64,64,2,8,0 4,32,64,4,8,1 4,32,64,5,8,1 2,64,128,3,8,0 2,64,128,4,8,0 2,64,128,3,8,1 2,64,128,4,8,1 \
  2>&1 | tee $OUT/micro.log | tail -32
BEST=$(python - <<'PY'
import json, os
rows = json.load(open(os.environ["ATTNLAB_BENCH_DIR"] + "/s8v_micro_2.json"))["rows"]
r16 = [r for r in rows if r["T"] == 16384 and r["kernel"].startswith("gluon") and r["finite"]]
out = []
for g in (4, 2):
    c = [r for r in r16 if r["kernel"].startswith(f"gluon ({g},")]
    if c:
        best = min(c, key=lambda r: r["ms"])["kernel"][6:]
        out.append(f'"gluon dk+dv G{g}=:GLUON_DK=true:GLUON_DV=true:GLUON_DV_CONFIG={json.dumps(list(eval(best)))}"')
print(" ".join(out))
PY
)
echo "op variants: $BEST" | tee $OUT/best.txt
timeout 50 python -m pytest -m gpu -x -v tests/test_diff_noise_dv_gluon.py 2>&1 | tail -12 | tee $OUT/tests_dv_gluon.log
eval timeout 125 python benchmarks/bench_diff_kernel.py --groups cmd --T 16384 4096 --skip-fused --rounds 5 --paired 30 \
  --cooldown 1 --profile-noise --profile-variants --name s8v_e2e_2 \
  --noise-variants '"gluon dk=:GLUON_DK=true"' $BEST 2>&1 | tee $OUT/e2e.log | tail -60
