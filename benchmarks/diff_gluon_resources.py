"""Compile the Gluon diff backward (attnlab/ops/diff_attention/diff_gluon.py) for an H100 (sm_90) on any
machine, no GPU needed: registers, stack (spill) bytes, shared memory, per-loop SASS counts (HGMMA, LDL/STL),
setmaxnreg values, and ptxas warnings (C7514/C7513: serialised wgmma). Needs Triton 3.6 with Gluon
(the GPU machine's; ``PYTHONPATH=/tmp/tr36/site:.`` on the CPU machine).

    python benchmarks/diff_gluon_resources.py [--regs 168,24] [--stages 2]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile

os.environ.pop("TRITON_INTERPRET", None)
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402

TARGET = GPUTarget("cuda", 90, 32)
BIN = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")


def compile_diff_gluon(regs=None, stages=None, maxnreg=None, vec=None, pipe=False):
    from triton.experimental.gluon._runtime import GluonASTSource
    from triton.runtime.jit import mangle_type

    from attnlab.ops.diff_attention import diff_gluon as G

    regs = regs or G.REGS
    x = torch.empty(1, 2, 64, 128, dtype=torch.bfloat16)
    descs = G.descriptors(x, x, x, x, x, x)
    kernel = G._diff_bwd_gluon_kernel
    types = {n: mangle_type(dsc) for n, dsc in zip(("q1_desc", "k1_desc", "q2_desc", "k2_desc", "v_desc", "do_desc"),
                                                     descs)}
    xf = torch.empty(1, 2, 64, 128, dtype=torch.float32)
    for n in ("dq1_desc", "dq2_desc"):
        types[n] = mangle_type(G.TensorDescriptor(xf, list(xf.shape), list(xf.stride()), [1, 1, G.BM, 64],
                                                  G.gl.NVMMASharedLayout.get_default_for([1, 1, G.BM, 64], G.gl.float32)))
    for n in ("LAM", "LSE1", "LSE2", "DL1", "DL2", "DQ1", "DQ2"):
        types[n] = "*fp32"
    for n in ("DK1", "DK2", "DV"):
        types[n] = "*bf16"
    for n in ("qk1", "qk2", "scale1", "scale2"):
        types[n] = "fp32"
    consts = {"D": 128, "BM": G.BM, "BN": G.BN, "STAGES": stages or G.STAGES, "R_STREAM": regs[0], "R_LOAD": regs[1], "DQ_ON": True, "VEC": vec if vec is not None else G.DQ_VEC, "PIPE": bool(pipe)}
    sig = {n: ("constexpr" if n in consts else types.get(n, "i32")) for n in kernel.arg_names}
    k = triton.compile(GluonASTSource(fn=kernel, signature=sig, constexprs=consts), target=TARGET,
                       options={"num_warps": 4, "maxnreg": maxnreg or G.MAXNREG})
    return k


def report(k):
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "k.cubin")
        with open(path, "wb") as f:
            f.write(k.asm["cubin"])
        res = subprocess.run([os.path.join(BIN, "cuobjdump"), "-res-usage", path], capture_output=True, text=True,
                             check=True).stdout
        sass = subprocess.run([os.path.join(BIN, "cuobjdump"), "-sass", path], capture_output=True, text=True,
                              check=True).stdout
    m = re.search(r"REG:(\d+) STACK:(\d+)", res)
    lines = [l for l in sass.splitlines() if re.match(r"\s+/\*[0-9a-f]{4,6}\*/", l)]
    cnt = lambda op: sum(op in l for l in lines)  # noqa: E731
    return {"registers": int(m[1]), "stack_bytes": int(m[2]), "shared_bytes": k.metadata.shared,
            "HGMMA": cnt("HGMMA"), "LDL": cnt("LDL"), "STL": cnt("STL"), "BAR": cnt("BAR."),
            "setmaxnreg": re.findall(r"USETMAXREG[^;]*", sass), "bar_lines": sorted({re.sub(r"^.*?\*/\s*", "", l).split(";")[0]
                                                                                      for l in lines if "BAR." in l}),
            "sass": sass}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--regs", default=None)
    ap.add_argument("--stages", type=int, default=None)
    ap.add_argument("--maxnreg", type=int, default=None)
    ap.add_argument("--vec", type=int, default=None)
    ap.add_argument("--pipe", action="store_true")
    ap.add_argument("--sass", default=None, help="write the SASS here")
    a = ap.parse_args(argv)
    regs = tuple(int(v) for v in a.regs.split(",")) if a.regs else None
    k = compile_diff_gluon(regs, a.stages, a.maxnreg, a.vec, a.pipe)
    r = report(k)
    if a.sass:
        with open(a.sass, "w") as f:
            f.write(r["sass"])
    print({kk: v for kk, v in r.items() if kk != "sass"})


if __name__ == "__main__":
    main()
