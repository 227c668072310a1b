"""Compile the noise-once kernels for an H100 (sm_90) on any machine, no GPU needed, and report what
the compiler made of them: registers and stack (spill) bytes per thread, shared memory, and per loop
of the SASS its instruction count, local loads/stores, matrix (HGMMA) and copy (LDGSTS / TMA) ops.

    python benchmarks/noise_once_resources.py                 # every dK/dQ form (+ Gluon's) + forward + dV
    python benchmarks/noise_once_resources.py --quick         # one kernel (CI smoke run)

Uses Triton's own compiler and its bundled ptxas / cuobjdump, with the arguments specialised as the
JIT specialises them at B=1, H=16, T=16384, d=128, bf16 (16-byte divisibility of pointers and
strides, integers equal to 1 as constants). The figures depend on the Triton version: the H100 machine
has 3.6 (session 6 installed triton==3.6.0 in a venv on the CPU machine to match it, and found session
5's dK kernel at 255 registers with a 632-byte stack that way before spending device time; Triton 3.9
compiles the same kernel with a 136-byte stack). Writes noise_once_resources.json
(attnlab.bench.write_results).
"""

from __future__ import annotations

import argparse
import inspect
import os
import re
import subprocess
import sys
import tempfile

os.environ.pop("TRITON_INTERPRET", None)  # compile, do not interpret
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from attnlab.bench import write_results  # noqa: E402
from attnlab.ops.diff_attention import noise_once as NO  # noqa: E402

TARGET = GPUTarget("cuda", 90, 32)
BIN = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
T, H, D = 16384, 16, 128


def C(v):
    return ("c", v)


def compile_sm90(kernel, args, num_warps, num_stages, **options):
    """args: parameter -> "bf16"/"fp32"/"i32" (a pointer), an int, a float, or C(value) (constexpr)."""
    names = list(inspect.signature(kernel.fn).parameters)
    sig, consts, attrs = {}, {}, {}
    for i, n in enumerate(names):
        v = args[n]
        if isinstance(v, tuple):
            sig[n], consts[n] = "constexpr", v[1]
        elif isinstance(v, str):
            sig[n], attrs[(i,)] = "*" + v, [["tt.divisibility", 16]]
        elif isinstance(v, int) and v == 1:
            sig[n], consts[n] = "constexpr", 1
        elif isinstance(v, int):
            sig[n] = "i32"
            if v % 16 == 0:
                attrs[(i,)] = [["tt.divisibility", 16]]
        else:
            sig[n] = "fp32"
    k = triton.compile(ASTSource(fn=kernel, signature=sig, constexprs=consts, attrs=attrs), target=TARGET,
                       options=dict(num_warps=num_warps, num_stages=num_stages, **options))
    return _report(k)


def compile_gluon_sm90(config):
    """The Gluon dK/dQ kernel (noise_gluon.py) at config (KC, STAGES, num_warps, EARLY_Q, ROWS): its host
    tensor descriptors' signatures taken from CPU stand-in tensors of the benchmark's shape."""
    import torch
    from triton.experimental.gluon._runtime import GluonASTSource
    from triton.runtime.jit import mangle_type

    from attnlab.ops.diff_attention import noise_gluon as NG

    kc, stages, w, early_q, rows = config
    q = torch.empty(1, 64, D, dtype=torch.bfloat16)  # shapes do not enter the signature, only block + layout
    v = torch.empty(1, 2, 64, D, dtype=torch.bfloat16)
    qd, kd, vd, dd = NG.descriptors(q, q, v, v, 128, 128, kc)
    kernel = NG._noise_bwd_dk_gluon_kernel
    types = {"q_desc": mangle_type(qd), "k_desc": mangle_type(kd), "v_desc": mangle_type(vd),
             "dn_desc": mangle_type(dd), "LSE": "*fp32", "DELTA": "*fp32", "DK": "*fp32", "DQ": "*fp32",
             "TBL": "*i32", "qk": "fp32", "scale": "fp32"}
    consts = {"D": D, "DV": D, "BM": 128, "BN": 128, "KC": kc, "STAGES": stages, "EARLY_Q": bool(early_q),
              "ROWS": bool(rows)}
    sig = {n: ("constexpr" if n in consts else types.get(n, "i32")) for n in kernel.arg_names}
    k = triton.compile(GluonASTSource(fn=kernel, signature=sig, constexprs=consts), target=TARGET,
                       options={"num_warps": w})
    return _report(k)


def _report(k):
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "k.cubin")
        with open(path, "wb") as f:
            f.write(k.asm["cubin"])
        res = subprocess.run([os.path.join(BIN, "cuobjdump"), "-res-usage", path], capture_output=True,
                             text=True, check=True).stdout
        sass = subprocess.run([os.path.join(BIN, "cuobjdump"), "-sass", path], capture_output=True,
                              text=True, check=True).stdout
    m = re.search(r"REG:(\d+) STACK:(\d+)", res)
    return {"registers": int(m[1]), "stack_bytes": int(m[2]), "shared_bytes": k.metadata.shared,
            "loops": sass_loops(sass)}


def sass_loops(sass):
    """Per backward branch (a loop): instructions, local loads/stores, HGMMA, cp.async, TMA loads."""
    ins = []
    for line in sass.splitlines():
        m = re.match(r"\s+/\*([0-9a-f]{4,6})\*/\s+(.*?);", line)
        if m:
            ins.append((int(m[1], 16), m[2]))
    loops = []
    for a, text in ins:
        m = re.search(r"BRA\s+0x([0-9a-f]+)", text)
        if m and int(m[1], 16) < a and "@" in text.split("BRA")[0]:  # conditional backward branch
            body = [x for y, x in ins if int(m[1], 16) <= y <= a]
            count = lambda op: sum(op in x for x in body)  # noqa: E731
            loops.append({"instructions": len(body), "LDL": count("LDL"), "STL": count("STL"),
                          "HGMMA": count("HGMMA"), "LDGSTS": count("LDGSTS"), "UTMALDG": count("UTMALDG")})
    return loops


def dk_args(lean: bool, bm=128, bn=128, nt=1, kc=64, early=False, acc=False):
    a = dict(Q="bf16", K="bf16", V="bf16", DN="bf16", LSE="fp32", DELTA="fp32", DK="fp32", DQ="fp32", TBL="i32",
             sqb=T * D, sqt=D, skb=T * D, skt=D, svb=H * T * D, svh=T * D, svt=D)
    a.update(H=H, HS=H, SPLIT=1, T=T, qk=0.1, scale=0.1, D=C(D), BD=C(D), DV=C(D), BDV=C(D), BM=C(bm), BN=C(bn))
    if lean:
        a.update(NT=C(nt), KC=C(kc), EARLY_K=C(early), ACC=C(acc))
    else:  # session 5's kernel at its config
        a.update(CHUNK=C(128), KC=C(kc))
    return a


def fwd_args(bm=128, bn=64, g=2):
    return dict(Q="bf16", K="bf16", V="bf16", A="bf16", LAM="fp32", O="bf16", N="bf16", LSE="fp32", WS="fp32",
                sqb=T * D, sqt=D, skb=T * D, skt=D, svb=H * T * D, svh=T * D, svt=D, sab=H * T * D, sah=T * D, sat=D,
                sob=H * T * D, soh=T * D, sot=D, snb=H * T * D, snh=T * D, snt=D, H=H, NG=H // g, T=T, BTD=T * D,
                qk=0.1, D=C(D), BD=C(D), DV=C(D), BDV=C(D), G=C(g), BM=C(bm), BN=C(bn), COMBINE=C(True),
                MAJOR=C(True), ZERO=C(True))


def dv_args(bm=64, bn=128, g=2):
    return dict(Q="bf16", K="bf16", DN="bf16", LSE="fp32", DVO="bf16", DQK="fp32", DQK16="bf16",
                sqb=T * D, sqt=D, skb=T * D, skt=D, sdvb=H * T * D, sdvh=T * D, sdvt=D, H=H, NG=H // g, T=T,
                BTD=T * D, qk=0.1, D=C(D), BD=C(D), DV=C(D), BDV=C(D), G=C(g), BM=C(bm), BN=C(bn), CAST=C(True),
                MAJOR=C(True))


def cases(quick: bool):
    lean = NO.CONFIGS["lean"]
    bm, bn, nt, w, s, _, kc, _, early, acc = lean[:10]
    out = [("dK lean (default config)", NO._noise_bwd_dk_lean_kernel,
            dk_args(True, bm, bn, nt, kc, early, acc), w, s, {})]
    if quick:
        return out
    out += [
        ("dK session 5 (wide heads)", NO._noise_bwd_dk_kernel, dk_args(False), 8, 3, {}),
        ("dK lean NT=1", NO._noise_bwd_dk_lean_kernel, dk_args(True), 8, 3, {}),
        ("dK lean BM 64 NT=2 maxnreg 128", NO._noise_bwd_dk_lean_kernel, dk_args(True, bm=64, nt=2), 8, 3,
         {"maxnreg": 128}),
        ("noise forward", NO._noise_fwd_kernel, fwd_args(*NO.CONFIGS["fwd"][:3]), *NO.CONFIGS["fwd"][3:5], {}),
        ("noise dV", NO._noise_bwd_dv_kernel, dv_args(*NO.CONFIGS["dv"][:3]), *NO.CONFIGS["dv"][3:5], {}),
    ]
    from attnlab.ops.diff_attention import noise_gluon as NG
    if NG.HAVE_GLUON:  # session 8: the Gluon dK/dQ kernel at its default and the other measured configs
        for cfg in (NG.GLUON_CONFIG, (64, 2, 8, 1, 1), (64, 2, 8, 1, 0), (32, 5, 8, 1, 1), (64, 3, 8, 0, 1)):
            out.append((f"dK Gluon {tuple(cfg)}", "gluon", cfg, cfg[2], cfg[1], {}))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="one kernel (CI smoke run)")
    ap.add_argument("--name", default="noise_once_resources")
    args = ap.parse_args(argv)
    rows = []
    for label, kernel, kargs, warps, stages, opts in cases(args.quick):
        try:
            r = compile_gluon_sm90(kargs) if kernel == "gluon" else compile_sm90(kernel, kargs, warps, stages, **opts)
        except Exception as e:  # noqa: BLE001 - Gluon's API moves between Triton versions
            if kernel != "gluon":
                raise
            print(f"{label}: not compiled with triton {triton.__version__}: {type(e).__name__}: {str(e)[:300]}")
            continue
        row = {"kernel": label, "num_warps": warps, "num_stages": stages, **opts,
               **{k: v for k, v in r.items() if k != "loops"}, "loops": r["loops"]}
        rows.append(row)
        mm = [x for x in r["loops"] if x["HGMMA"]]
        inner = min(mm, key=lambda x: x["instructions"]) if mm else {}
        print(f"{label:34s} regs {r['registers']:3d}  stack {r['stack_bytes']:5d} B  smem {r['shared_bytes']:6d} B  "
              f"innermost loop: {inner}", flush=True)
    write_results(args.name, rows, {"target": "sm_90", "triton": triton.__version__, "shape": {"T": T, "H": H, "d": D}})


if __name__ == "__main__":
    main()
