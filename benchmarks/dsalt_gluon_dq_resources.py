"""Offline sm_90 compile of the Gluon DSALT dQ kernel (attnlab/ops/dsalt/gluon_dq.py), no GPU needed:
registers, stack (spill) bytes, shared memory, and per loop of the SASS its instruction count, local
loads/stores and HGMMA ops; ptxas warnings (C7514 / C7513: async wgmma serialised) printed.

    PYTHONPATH=/tmp/tr36/site:. python benchmarks/dsalt_gluon_dq_resources.py [config names]

Needs a Triton with Gluon (3.6: the GPU machine's; later versions compile it too, with other register counts);
--quick (CI): the default config only (exits early where Gluon is missing).
"""

from __future__ import annotations

import os
import sys

os.environ.pop("TRITON_INTERPRET", None)
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def compile_dq(config, wg=32):
    import torch
    import triton
    from triton.experimental.gluon._runtime import GluonASTSource
    from triton.runtime.jit import mangle_type

    from attnlab.ops.dsalt import gluon_dq as GD
    from benchmarks.noise_once_resources import TARGET, _report

    bm, bn, stages, defer = config[:4]
    x = torch.empty(1, 2, 256, 128, dtype=torch.bfloat16)
    qd, kd, vd, dd = GD.descriptors(x, x, x, x, bm, bn)
    kern = GD._dq_gluon_kernel
    types = {"q_desc": mangle_type(qd), "k_desc": mangle_type(kd), "v_desc": mangle_type(vd),
             "do_desc": mangle_type(dd), "O": "*bf16", "DO": "*bf16", "W": "*fp32", "LSE": "*fp32",
             "DELTA": "*fp32", "DQ": "*bf16", "DW": "*fp32", "WMIN": "*fp32", "edge": "fp32", "inv_edge": "fp32",
             "qk_scale": "fp32", "sm_scale": "fp32"}
    consts = {"D": 128, "BM": bm, "BN": bn, "STAGES": stages, "WG": wg, "DEFER": defer}
    sig = {n: ("constexpr" if n in consts else types.get(n, "i32")) for n in kern.arg_names}
    k = triton.compile(GluonASTSource(fn=kern, signature=sig, constexprs=consts), target=TARGET,
                       options={"num_warps": bm // 16})
    out = _report(k)
    out["ptxas"] = ptxas_warnings(k)
    out["depbar"] = sum("WARPGROUP.DEPBAR" in ln for ln in sass(k).splitlines())
    return out


def sass(k):
    import subprocess
    import tempfile

    from benchmarks.noise_once_resources import BIN

    with tempfile.NamedTemporaryFile("wb", suffix=".cubin", delete=False) as f:
        f.write(k.asm["cubin"])
    out = subprocess.run([os.path.join(BIN, "cuobjdump"), "-sass", f.name], capture_output=True, text=True).stdout
    os.unlink(f.name)
    return out


def ptxas_warnings(k):
    """ptxas -v on the kernel's PTX (sm_90a): its warning lines (C7514 / C7513 = serialised wgmma)."""
    import subprocess
    import tempfile

    from benchmarks.noise_once_resources import BIN

    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "k.ptx")
        with open(src, "w") as f:
            f.write(k.asm["ptx"])
        r = subprocess.run([os.path.join(BIN, "ptxas"), "-arch=sm_90a", "-v", src, "-o", os.path.join(tmp, "k.o")],
                           capture_output=True, text=True)
    return [ln for ln in (r.stdout + r.stderr).splitlines() if "arning" in ln or "C75" in ln]


def main():
    from attnlab.ops.gluon_compat import HAVE_GLUON

    if not HAVE_GLUON:
        print("no Gluon in this triton: nothing to compile")
        return
    from attnlab.ops.dsalt import gluon_dq as GD

    names = [a for a in sys.argv[1:] if not a.startswith("-")] or list(GD.CONFIGS)
    if "--quick" in sys.argv:  # CI smoke run: the default config only
        names = [n for n, c in GD.CONFIGS.items() if c == GD.GLUON_DQ_CONFIG][:1]
    for n in names:
        r = compile_dq(GD.CONFIGS[n])
        print(n, GD.CONFIGS[n], {k: v for k, v in r.items() if k != "loops"}, flush=True)
        for lp in r["loops"]:
            print("   loop", lp, flush=True)


if __name__ == "__main__":
    main()
