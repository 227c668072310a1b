"""Register report of the DSALT Triton kernels for every listed launch config, without a GPU.

Compiles each kernel for sm_90 (``triton.compile`` with a CUDA target; no device needed) and
reads registers / stack frame (spills) / shared memory from the cubin with the ``cuobjdump``
that ships with triton (figures from the installed triton; the GPU machine may run another
version). Used to choose ``FWD_CONFIGS``, ``DQ_CONFIGS``, ``DKDV_CONFIGS`` and the landmark
kernels' config lists in ``attnlab/ops/dsalt/kernel.py`` (a stack frame > 0 means spills).

    python benchmarks/dsalt_registers.py            # all kernels, head dim 128, bf16, 64 landmarks
    python benchmarks/dsalt_registers.py --quick    # the selection kernel only (CI smoke test)
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="selection kernel only")
    ap.add_argument("--only", type=str, default=None, help="comma-separated subset: fwd,dq,dkdv,lm_bwd,lm_bwd_t,fwd_lm")
    ap.add_argument("--arch", type=int, default=90, help="CUDA compute capability (default 90)")
    args = ap.parse_args(argv)
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from attnlab.ops.dsalt import kernel as K

    cuobjdump = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    target = GPUTarget("cuda", args.arch, 32)
    rows = []

    def report(fn, consts, types, opts, label):
        sig = {n: ("constexpr" if n in consts else types.get(n, "i32")) for n in fn.arg_names}
        # what the launcher specialises at the benchmark's sizes: pointers and strides divisible by
        # 16 (without these hints the loads are not vectorised and the counts are too high: session 7)
        attrs = {(i,): [["tt.divisibility", 16]] for i, n in enumerate(fn.arg_names)
                 if n not in consts and (sig[n].startswith("*") or n.startswith(("sq_", "sk_", "so_")))}
        c = triton.compile(ASTSource(fn=fn, signature=sig, constexprs=consts, attrs=attrs), target=target,
                           options=opts)
        usage = "(no cuobjdump)"
        if cuobjdump.exists():
            with tempfile.NamedTemporaryFile("wb", suffix=".cubin", delete=False) as f:
                f.write(c.asm["cubin"])
            out = subprocess.run([str(cuobjdump), "--dump-resource-usage", f.name], capture_output=True, text=True)
            os.unlink(f.name)
            usage = " ".join(w for line in out.stdout.splitlines() if "REG" in line
                             for w in line.split() if w.split(":")[0] in ("REG", "STACK", "SHARED"))
        rows.append((fn.__name__, label, opts, usage))
        print(f"{fn.__name__:18s} {label:40s} warps {opts['num_warps']} stages {opts.get('num_stages', '-')}: {usage}",
              flush=True)

    report(K._select_kernel, {"K": 64, "KP": 64, "BS": 64, "CB": 16, "KEY32": True},
           {"E": "*fp32", "LPOS": "*i32"}, {"num_warps": 1}, "int32 keys")
    if args.quick:
        return rows
    fl = {"edge": "fp32", "inv_edge": "fp32", "qk_scale": "fp32", "sm_scale": "fp32"}
    only = set(args.only.split(",")) if args.only else None
    want = (lambda name: only is None or name in only)  # noqa: E731
    ptr = {"Q": "*bf16", "K": "*bf16", "V": "*bf16", "W": "*fp32", "GT": "*fp32", "LPOS": "*i32", "DO": "*bf16",
           "LSE": "*fp32", "DELTA": "*fp32", "DQ": "*bf16", "DK": "*bf16", "DV": "*bf16", "DGT": "*fp32",
           "PK": "*fp32", "PV": "*fp32", "PG": "*fp32"}
    for bm, bn, w, st, lp in [c + (lp,) for c in K.FWD_CONFIGS for lp in (0, 1)] if want("fwd") else []:
        report(K._fwd_kernel, {"D": 128, "BLOCK_M": bm, "BLOCK_N": bn, "KP": 64, "HAS_LM": True, "PREC": "tf32",
                               "NSET": max(1, bm // 64), "LC": 32, "LOOP1": lp},
               {"Q": "*bf16", "K": "*bf16", "V": "*bf16", "W": "*fp32", "GT": "*fp32", "LPOS": "*i32", "O": "*bf16",
                "LSE": "*fp32", **fl}, {"num_warps": w, "num_stages": st}, f"BLOCK_M {bm} BLOCK_N {bn} one loop {lp}")
    for bm, bn, w, st in K.DQ_CONFIGS if want("dq") else []:
        for has_lm in (0, 1):  # the default (window only: the landmark dQ is in _lm_bwd_t_kernel); "atomic"
            report(K._dq_kernel, {"D": 128, "BLOCK_M": bm, "BLOCK_N": bn, "KP": 64, "HAS_LM": has_lm, "PREC": "tf32",
                                  "LC": 32, "FUSE_DELTA": 1, "WG": 32},
                   {"Q": "*bf16", "K": "*bf16", "V": "*bf16", "W": "*fp32", "GT": "*fp32", "LPOS": "*i32",
                    "DO": "*bf16", "LSE": "*fp32", "DELTA": "*fp32", "DQ": "*bf16", "DW": "*fp32", "O": "*bf16", "WMIN": "*fp32",
                    **fl}, {"num_warps": w, "num_stages": st}, f"BLOCK_M {bm} BLOCK_N {bn} landmarks {has_lm}")
    for bm, lc, seg, w, st in K.LM_BWD_CONFIGS if want("lm_bwd") else []:
        report(K._lm_bwd_kernel, {"D": 128, "BLOCK_M": bm, "KP": 64, "LC": lc, "SEG": seg, "PREC": "tf32"},
               {"Q": "*bf16", "K": "*bf16", "V": "*bf16", "W": "*fp32", "E": "*fp32", "LPOS": "*i32", "DO": "*bf16",
                "LSE": "*fp32", "DELTA": "*fp32", "DK": "*bf16", "DV": "*bf16", "DGT": "*fp32", **fl},
               {"num_warps": w, "num_stages": st}, f"BLOCK_M {bm} LC {lc} SEG {seg}")
    lm_t = {"Q": "*bf16", "K": "*bf16", "V": "*bf16", "W": "*fp32", "E": "*fp32", "LPOS": "*i32", "DO": "*bf16",
            "LSE": "*fp32", "DELTA": "*fp32", "DK": "*bf16", "DV": "*bf16", "DGT": "*fp32", "DQ": "*bf16", **fl}
    for bm, lc, seg, w, st in K.LM_BWD_T_CONFIGS if want("lm_bwd_t") else []:  # session 6
        for add_dq in ((0, 1) if lc == 64 else (0,)):
            report(K._lm_bwd_t_kernel, {"D": 128, "BLOCK_M": bm, "KP": 64, "LC": lc, "SEG": seg, "PREC": "tf32",
                                        "ADD_DQ": add_dq, "FLAT": int(bm == 64)},
                   lm_t, {"num_warps": w, "num_stages": st}, f"BLOCK_M {bm} LC {lc} SEG {seg} dQ {add_dq}")
    for bm, lc, w, st in K.FWD_LM_CONFIGS if want("fwd_lm") else []:
        report(K._fwd_lm_kernel, {"D": 128, "BLOCK_M": bm, "KP": 64, "PREC": "tf32", "LC": lc},
               {"Q": "*bf16", "K": "*bf16", "V": "*bf16", "W": "*fp32", "GT": "*fp32", "LPOS": "*i32", "O": "*bf16",
                "LSE": "*fp32", "inv_edge": "fp32", "qk_scale": "fp32"}, {"num_warps": w, "num_stages": st},
               f"BLOCK_M {bm} LC {lc}")
    for bm, bn, w, st, tr in K.DKDV_CONFIGS if want("dkdv") else []:
        report(K._dkdv_kernel, {"D": 128, "BLOCK_M": bm, "BLOCK_N": bn, "PREC": "tf32", "TRANS": tr, "WG": 32},
               {"Q": "*bf16", "K": "*bf16", "V": "*bf16", "W": "*fp32", "DO": "*bf16", "LSE": "*fp32",
                "DELTA": "*fp32", "DK": "*bf16", "DV": "*bf16", "WMIN": "*fp32", **fl},
               {"num_warps": w, "num_stages": st}, f"BLOCK_M {bm} BLOCK_N {bn} TRANS {tr}")
    return rows


if __name__ == "__main__":
    main()
