"""Session 7: compile the v2 spectral block kernel (its default launch at B = 1, 8K: split 2, 4 slices, 64-token
tiles) for sm_90 on the CPU machine with Triton 3.6 and compare rank-major and token-major value coefficients
(registers, single-byte shared loads, SASS lines): v2 (impl="auto" up to 16 blocks per (b, h)) was not timed on the
GPU in session 7.

    PYTHONPATH=/tmp/tr36/site:$PWD python benchmarks/device_runs/session7_v2_regs.py
"""
import sys, os, re, subprocess, tempfile, inspect
sys.path.insert(0, os.getcwd()); sys.path.insert(0, 'benchmarks/device_runs')
import torch, triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from attnlab.ops.spectral import jit_v2
from attnlab.ops.spectral.kernel import default_config_v2, _fit_v2
import session6b_spectral_regs as m
TYPES = m.TYPES
for rk, rv in ((16, 32), (32, 32)):
  for cvt in (False, True):
    cfg = default_config_v2(8, 16, 512, 132, 2)
    sp, nw, tw = _fit_v2(512, cfg["split"], cfg["warp_slices"], cfg["slice_tile"])
    p2 = lambda x: max(16, 1 << (x - 1).bit_length())
    consts = dict(G=4, GP=16, GQ=4, D=128, DP=128, DV=128, DVP=128, RK=rk, RKP=p2(rk), RV=rv, RVP=p2(rv), BS=512, SPLIT=sp,
                  BPP=1 if sp > 1 else cfg["blocks_per_program"], NW=nw, TW=tw, HOT_PER_SPLIT=256, HT=64, QUANT=True, LOWP=True, PREC="tf32",
                  FUSED=cfg["fused_merge"], GRP=cfg["merge_group"], SCH=8, FASTCVT=True, I64=False, PDL=False, CVT=cvt)
    fn = jit_v2._spectral_v2
    names = inspect.signature(fn.fn).parameters
    sig = {n: ("constexpr" if n in consts else TYPES.get(n, "i32")) for n in names}
    div = {(i,): [["tt.divisibility", 16]] for i, n in enumerate(names) if sig[n].startswith("*") or n in ("nb_cap", "n_comp", "hot_cap")}
    c = triton.compile(ASTSource(fn=fn, signature=sig, constexprs=consts, attrs=div), target=GPUTarget("cuda", 90, 32),
                       options={"num_warps": cfg["num_warps"], "num_stages": cfg["num_stages"]})
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(c.asm["cubin"])
    out = subprocess.run([os.path.join(m.BIN, "cuobjdump"), "--dump-resource-usage", f.name], capture_output=True, text=True).stdout
    sass = subprocess.run([os.path.join(m.BIN, "cuobjdump"), "-sass", f.name], capture_output=True, text=True).stdout
    reg = [ln for ln in out.splitlines() if "REG:" in ln][0].strip().split(" CONSTANT")[0]
    print(rk, rv, "CVT", cvt, cfg, reg, "LDS.U8", len(re.findall("LDS.U8", sass)), "lines", sass.count("\n"))
