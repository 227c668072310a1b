"""Compile hopper.py's kernels for sm_90 on a machine without a GPU (Triton's bundled ptxas) and
print registers / spills / shared memory per launch config: free resource reports before a device call.

    python benchmarks/device_runs/session6_diff_regs.py [--desc 0|1]
"""
import argparse
import inspect
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from attnlab.ops.diff_attention import hopper as Hp  # noqa: E402

BIN = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")


def sig_of(fn, types, consts):
    names = inspect.signature(fn.fn).parameters
    sig = {}
    for n in names:
        if n in consts:
            sig[n] = "constexpr"
        else:
            sig[n] = types.get(n, "i32")
    return sig


def usage(c):
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(c.asm["cubin"])
    out = subprocess.run([os.path.join(BIN, "cuobjdump"), "--dump-resource-usage", f.name],
                         capture_output=True, text=True).stdout
    line = [ln for ln in out.splitlines() if "REG:" in ln][0].strip()
    return line.split(" CONSTANT")[0], c.metadata.shared, c.asm["ptx"].count("wgmma.mma_async")


def compile_fwd(bm, bn, w, s, ns, seq, desc, d=128):
    fn = Hp._h_fwd_kernel
    tensors = ["Q1", "K1", "Q2", "K2", "V", "O", "O2"]
    types = {}
    for t in tensors:
        rows = bm if t in ("Q1", "Q2", "O", "O2") else bn
        types[t] = f"tensordesc<bf16[1,1,{rows},{d}]>" if desc else "*bf16"
    types.update({"LAM": "*fp32", "LSE1": "*fp32", "LSE2": "*fp32", "qk1": "fp32", "qk2": "fp32"})
    consts = dict(D1=d, D2=d, DV=d, BD1=d, BD2=d, BDV=d, BM=bm, BN=bn, NS=ns, SEQ=seq, AUX=True, DESC=desc)
    src = ASTSource(fn=fn, signature=sig_of(fn, types, consts), constexprs=consts)
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": w, "num_stages": s})


def compile_bwd(bm, bn, w, s, ns, desc, atomic=True, d=128, reload=False):
    fn = Hp._h_bwd_kv_kernel
    types = {}
    for t in ["Q1", "K1", "Q2", "K2", "V", "DO"]:
        rows = bm if t in ("Q1", "Q2", "DO") else bn
        types[t] = f"tensordesc<bf16[1,1,{rows},{d}]>" if desc else "*bf16"
    for t in ["LAM", "LSE1", "LSE2", "DL1", "DL2"]:
        types[t] = "*fp32"
    for t, dt, rows in [("DK1", "bf16", bn), ("DK2", "bf16", bn), ("DV", "bf16", bn), ("DVIN", "fp32", bn),
                        ("DQ1", "fp32", bm), ("DQ2", "fp32", bm)]:
        types[t] = f"tensordesc<{dt}[1,1,{rows},{d}]>" if desc else f"*{dt}"
    types.update({k: "fp32" for k in ("qk1", "qk2", "scale1", "scale2")})
    consts = dict(D1=d, D2=d, DV_=d, BD1=d, BD2=d, BDV=d, BM=bm, BN=bn, NS=ns, NEG=False, ADD_DV=False,
                  ATOMIC=atomic, DESC=desc, RELOAD=reload, DQ_DESC=desc)
    src = ASTSource(fn=fn, signature=sig_of(fn, types, consts), constexprs=consts)
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": w, "num_stages": s})


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--desc", type=int, default=1)
    ap.add_argument("--what", default="fwd,bwd")
    a = ap.parse_args()
    desc = bool(a.desc)
    if "fwd" in a.what:
        for (bm, bn, w, s), ns, seq in [((128, 64, 8, 3), 2, False), ((128, 64, 8, 2), 2, False),
                                        ((128, 128, 8, 3), 2, False), ((128, 128, 8, 3), 2, True),
                                        ((128, 64, 8, 3), 2, True), ((128, 128, 8, 3), 1, False),
                                        ((128, 64, 4, 3), 1, False), ((64, 64, 4, 3), 2, False)]:
            try:
                print("fwd", (bm, bn, w, s), f"ns={ns} seq={seq}", *usage(compile_fwd(bm, bn, w, s, ns, seq, desc)), flush=True)
            except Exception as e:
                print("fwd", (bm, bn, w, s), ns, seq, "FAILED", str(e)[:200], flush=True)
    ap2 = a
    if "bwd" in a.what:
        for (bm, bn, w, s), ns, at in [((64, 64, 8, 2), 2, True), ((64, 64, 8, 2), 2, False), ((64, 128, 8, 2), 1, True),
                                       ((32, 128, 8, 2), 1, True), ((64, 128, 8, 2), 1, False), ((64, 64, 4, 2), 1, True)]:
            try:
                for rl in (False, True):
                    print("bwd", (bm, bn, w, s), f"ns={ns} atomic={at} reload={rl}", *usage(compile_bwd(bm, bn, w, s, ns, desc, at, reload=rl)), flush=True)
            except Exception as e:
                print("bwd", (bm, bn, w, s), ns, "FAILED", str(e)[:200], flush=True)
