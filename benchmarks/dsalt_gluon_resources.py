"""Compile DSALT's Gluon dK/dV kernel (gluon_dkdv.py) for an H100 (sm_90) on any machine, no GPU needed, and
report registers, stack (spill) bytes, shared memory and per loop of the SASS its instruction count,
local loads/stores, HGMMA and TMA ops, plus ptxas warnings (C7514 / C7513: serialised wgmma).

    PYTHONPATH=/tmp/tr36/site:. python benchmarks/dsalt_gluon_resources.py   # Triton 3.6, the H100's
    python benchmarks/dsalt_gluon_resources.py --quick                      # CI smoke (skips without Gluon)

Writes dsalt_gluon_resources.json (attnlab.bench.write_results).
"""

from __future__ import annotations

import argparse
import inspect
import os
import sys

os.environ.pop("TRITON_INTERPRET", None)  # compile, do not interpret
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from attnlab.bench import write_results  # noqa: E402
from attnlab.ops.dsalt import gluon_dkdv as GD  # noqa: E402


def compile_dkdv_sm90(config, wg=32, dtype="bf16", **flags):
    """The Gluon dK/dV kernel at config (BM, BN, STAGES, num_warps[, form[, LEAN_BAR[, P16]]]) (form 1, the
    rows form: the transposed and warp-specialised forms were removed at the session-9 merge, code at merge
    da6482d), WG rows per window minimum (0: none); flags: other constexpr switches by name. The host
    descriptors' signatures come from CPU stand-in tensors."""
    import torch
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.experimental.gluon._runtime import GluonASTSource
    from triton.runtime.jit import mangle_type

    from noise_once_resources import _report  # noqa: E402 - the shared cuobjdump report

    bm, bn, stages, w = config[:4]
    flags = dict(flags)
    for name, val in zip(("LEAN_BAR", "P16"), config[5:]):
        flags[name] = bool(val)
    tdt = torch.bfloat16 if dtype == "bf16" else torch.float16
    x = torch.empty(1, 2, 256, 128, dtype=tdt)
    qd, kd, vd, dd = GD.descriptors(x, x, x, x, bm, bn)
    kernel = GD._dkdv_gluon_rows_kernel
    types = {"q_desc": mangle_type(qd), "k_desc": mangle_type(kd), "v_desc": mangle_type(vd),
             "do_desc": mangle_type(dd), "W": "*fp32", "LSE": "*fp32", "DELTA": "*fp32", "DK": "*" + dtype,
             "DV": "*" + dtype, "WMIN": "*fp32", "edge": "fp32", "inv_edge": "fp32", "qk_scale": "fp32",
             "sm_scale": "fp32"}
    consts = {"D": 128, "BM": bm, "BN": bn, "STAGES": stages, "WG": wg, **flags}
    consts = {a: b for a, b in consts.items() if a in kernel.arg_names}
    for name, prm in inspect.signature(kernel.fn).parameters.items():  # constexprs left at their defaults
        if name not in consts and prm.default is not inspect.Parameter.empty:
            consts[name] = prm.default
    sig = {n: ("constexpr" if n in consts else types.get(n, "i32")) for n in kernel.arg_names}
    k = triton.compile(GluonASTSource(fn=kernel, signature=sig, constexprs=consts),
                       target=GPUTarget("cuda", 90, 32),
                       options={"num_warps": w})
    return _report(k)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="the default config only (CI smoke run)")
    ap.add_argument("--name", default="dsalt_gluon_resources")
    args = ap.parse_args(argv)
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    if not GD.HAVE_GLUON:
        print("Gluon not importable here: nothing compiled")
        return
    cases = [(GD.GLUON_CONFIG, 32)] if args.quick else [
        (GD.GLUON_CONFIG, 32), (GD.GLUON_CONFIG, 0), ((64, 128, 3, 8, 1, 1), 32), ((64, 128, 2, 8, 1), 32)]
    rows = []
    for cfg, wg in cases:
        try:
            r = compile_dkdv_sm90(cfg, wg)
        except Exception as e:  # noqa: BLE001 - Gluon's API moves between Triton versions
            print(f"{cfg} WG={wg}: not compiled: {type(e).__name__}: {str(e)[:400]}")
            continue
        mm = [x for x in r["loops"] if x["HGMMA"]]
        print(f"config {cfg} WG={wg}: regs {r['registers']} stack {r['stack_bytes']} B smem {r['shared_bytes']} B "
              f"loops with HGMMA: {mm}", flush=True)
        rows.append({"config": list(cfg), "WG": wg, **r})
    write_results(args.name, rows, {"target": "sm_90"})


if __name__ == "__main__":
    main()
