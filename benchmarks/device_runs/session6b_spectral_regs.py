"""Compile the v3 spectral block kernel for sm_90 without a GPU (Triton's bundled ptxas) and print
registers, spills, shared memory, barriers and cp.async counts per launch configuration (B = 1, 32K, d = 128,
G = 4, block 512, int8 coefficients, bf16): a free resource report before a device call.
(Session 6 round 2 also compiled the experimental v4 / v5 kernels with it; they were removed in the session's
review, their figures are in benchmarks/RESULTS.md.)

    python benchmarks/device_runs/session6b_spectral_regs.py v3:16:16:1:2:4:2 v3:32:32:1:2:4:2 ...
    (kernel:rk:rv:split:bpp:warps:stages[:slices[:l2pf]][:NAME=int constexpr, e.g. CVT=1, MAXNREG=168]; session 7:
    CVT = token-major value coefficients (PRE, CVWORDS and LATE_VPROJ need the commits that had them, see RESULTS.md);
    ``benchmarks/device_runs/session7_loop_sass.py`` counts the block loop's instructions per step)
"""
import inspect
import os
import re
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from attnlab.ops.spectral import jit_v3  # noqa: E402

BIN = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
TYPES = dict(Q="*bf16", CK="*i8", SK="*fp32", BK="*bf16", CV="*i8", SV="*fp32", BV="*bf16", HKP="*bf16", HVP="*bf16",
             PM="*fp32", PL="*fp32", PACC="*fp32", CNT="*i32", O="*bf16", PM2="*fp32", PL2="*fp32", PACC2="*fp32",
             qk_scale="fp32")


def compile_one(spec):
    extra = {kv.split("=")[0]: int(kv.split("=")[1]) for kv in spec.split(":") if "=" in kv}  # e.g. CKT=1
    parts = [x for x in spec.split(":") if "=" not in x]
    opts_extra = {"maxnreg": extra.pop("MAXNREG")} if "MAXNREG" in extra else {}
    kern, rk, rv, sp, bpp, w, st = parts[0], *map(int, parts[1:7])
    l2pf = bool(int(parts[8])) if len(parts) > 8 else True
    if kern != "v3":
        raise SystemExit(f"only v3 is compiled here (v4 / v5 were removed); got {kern!r}")
    fn = jit_v3._spectral_v3
    tpp = 512 // sp
    p2 = lambda x: max(16, 1 << (x - 1).bit_length())  # noqa: E731
    nsl, tw = 4, tpp // 4
    consts = dict(G=4, GP=16, GQ=4, D=128, DP=128, DV=128, DVP=128, RK=rk, RKP=p2(rk), RV=rv, RVP=p2(rv), BS=512,
                  SPLIT=sp, BPP=bpp, NW=nsl, TW=tw, HOT_PER_SPLIT=256, HT=64, QUANT=True, LOWP=True, PREC="tf32",
                  FUSED=False, GRP=8, SCH=8, FASTCVT=True, I64=False, PDL=True, L2PF=l2pf, **extra)
    names = inspect.signature(fn.fn).parameters
    for opt in ("PRE", "CVWORDS", "CVT", "LATE_VPROJ"):  # options of some versions of the kernel: off unless named
        if opt in names:
            consts.setdefault(opt, False)
    opts = {"num_warps": w, "num_stages": st, **opts_extra}
    names = inspect.signature(fn.fn).parameters
    sig = {n: ("constexpr" if n in consts else TYPES.get(n, "i32")) for n in names}
    # as launched: every pointer 16-byte aligned, and the 16-divisible ints (nb_cap = 64, n_comp = 32 at 32K)
    # specialized so by the JIT (without these hints the loads are not vectorized)
    div = {(i,): [["tt.divisibility", 16]] for i, n in enumerate(names)
           if sig[n].startswith("*") or n in ("nb_cap", "n_comp", "hot_cap")}
    src = ASTSource(fn=fn, signature=sig, constexprs=consts, attrs=div)
    c = triton.compile(src, target=GPUTarget("cuda", 90, 32), options=opts)
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(c.asm["cubin"])
    out = subprocess.run([os.path.join(BIN, "cuobjdump"), "--dump-resource-usage", f.name], capture_output=True,
                         text=True).stdout
    reg = [ln for ln in out.splitlines() if "REG:" in ln][0].strip().split(" CONSTANT")[0]
    sass = subprocess.run([os.path.join(BIN, "cuobjdump"), "-sass", f.name], capture_output=True, text=True).stdout
    ptx = c.asm["ptx"]
    print(f"{spec:28s} NW={nsl} TW={tw} {reg} smem={c.metadata.shared} BAR={len(re.findall(r'BAR.SYNC', sass))} "
          f"LDGSTS={len(re.findall(r'LDGSTS', sass))} LDG={len(re.findall(r' LDG', sass))} "
          f"HMMA={len(re.findall(r'HMMA', sass))} LDSU8={len(re.findall(r'LDS.U8', sass))} LDS={len(re.findall(r' LDS', sass))} LDSM={len(re.findall(r'LDSM', sass))} STL={len(re.findall(r'STL', sass))} sass_lines={sass.count(chr(10))}",
          flush=True)
    return c


if __name__ == "__main__":
    for s in sys.argv[1:]:
        try:
            compile_one(s)
        except Exception as e:  # noqa: BLE001
            print(s, "FAILED", str(e)[-1500:], flush=True)
