"""The latent family's fused training kernel vs PyTorch's path, at the mixers' own shapes.

    python benchmarks/bench_diff_latent.py              # shakespeare-384 shapes: B=16, T=1024, 6 heads,
                                                        # dn 64, dr 32, dv 64 (diff-mla and cmd-mla)
    python benchmarks/bench_diff_latent.py --sweep      # try launch configs first (keeps the best)
    python benchmarks/bench_diff_latent.py --quick      # tiny CPU smoke run (CI)

Both variants start from the projection outputs (q_all, kvu, the rope key) and end with the
[B, T, H, dv] output, forward + backward:
- "sdpa path": RoPE, the q/k concatenations, two SDPA calls sharing (padded) V, the subtraction
  and the transpose, as the mixers run with impl="sdpa";
- "fused latent": ops/diff_attention/latent.py (one forward kernel, three backward kernels);
- "noise-once path" (cmd-mla): the SDPA path whose noise stream is computed once for all heads
  (ops/diff_attention/noise_once.py), cmd-mla's impl="noise-once".
Writes benchmarks/results/bench_diff_latent.json (or $ATTNLAB_BENCH_DIR).
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

if not torch.cuda.is_available():  # CPU smoke runs: Triton kernels through the interpreter
    os.environ.setdefault("TRITON_INTERPRET", "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from attnlab.bench import time_ms, write_results  # noqa: E402
from attnlab.ops.diff_attention import LatentGeometry, latent_diff_attention  # noqa: E402
from attnlab.ops.diff_attention.latent_reference import _views  # noqa: E402
from attnlab.ops.diff_attention.reference import diff_attention_sdpa  # noqa: E402
from attnlab.ops.rope import apply_rope  # noqa: E402
from attnlab.positions import RotaryEmbedding  # noqa: E402
from attnlab.testing import rel_err  # noqa: E402


def sdpa_path(q_all, kvu, kr_pre, lam, cos, sin, g, attend=diff_attention_sdpa):
    q1, qr_pre, q2, qr2_pre, k1, v, k2 = _views(q_all, kvu, g)
    b, t, h = q_all.shape[0], q_all.shape[1], g.heads
    qr, kr = apply_rope(qr_pre, cos, sin), apply_rope(kr_pre.unsqueeze(1), cos, sin)
    q1f, k1f = torch.cat([q1, qr], -1), torch.cat([k1, kr.expand(b, h, t, g.dr)], -1)
    if g.rope2 == 0:
        q2f, k2f = q2, k2
    else:
        q2f = torch.cat([q2, qr if g.rope2 == 1 else apply_rope(qr2_pre, cos, sin)], -1)
        k2f = torch.cat([k2, kr.expand(b, k2.shape[1], t, g.dr)], -1)
    return attend(q1f, k1f, q2f, k2f, v, lam, g.scale1, g.scale2).transpose(1, 2)


def noise_once_path(q_all, kvu, kr_pre, lam, cos, sin, g):
    """cmd-mla's impl="noise-once": the SDPA path with the noise stream computed once (noise_once.py)."""
    from attnlab.ops.diff_attention.noise_once import cmd_attention_noise_once

    return sdpa_path(q_all, kvu, kr_pre, lam, cos, sin, g, cmd_attention_noise_once)


def geometries(h, dn, dr, dv):
    s = (dn + dr) ** -0.5
    return {"diff-mla": LatentGeometry(h, h, dn, dr, dv, dn, 1, s, s),
            "cmd-mla": LatentGeometry(h, 1, dn, dr, dv, dn, 0, s, dn**-0.5)}


def make(g, b, t, dtype, device):
    mk = lambda *s: torch.randn(*s, device=device, dtype=dtype, requires_grad=True)  # noqa: E731
    lam = (0.2 + 0.5 * torch.rand(g.heads, device=device)).requires_grad_()
    cos, sin = RotaryEmbedding(g.dr).to(device).cos_sin(0, t)
    return [mk(b, t, g.q_width), mk(b, t, g.kv_width), mk(b, t, g.dr), lam], cos, sin


def fwd_bwd(fn, ins, cos, sin, g, dout):
    def run():
        out = fn(*ins, cos, sin, g)
        torch.autograd.grad(out, ins, dout)
    return run


SWEEP = {
    "fwd": [(64, 64, 4, 2), (64, 64, 4, 3), (128, 64, 8, 2), (128, 32, 4, 2), (64, 32, 4, 2)],
    "bwd_kv": [(64, 64, 4, 2), (32, 64, 4, 2), (64, 128, 8, 2), (32, 128, 8, 2), (64, 64, 8, 3)],
    "bwd_q": [(64, 64, 4, 2), (64, 32, 4, 2), (128, 64, 8, 2), (128, 32, 8, 2), (64, 64, 4, 3)],
}


def sweep(K, g, b, t, dtype, device, warmup, repeats):
    log = []
    ins, cos, sin = make(g, b, t, dtype, device)
    dout = torch.randn(b, t, g.heads, g.dv, device=device, dtype=dtype)
    for name, cands in SWEEP.items():
        best = None
        for cfg in cands:
            K.CONFIGS[name] = cfg
            try:
                if name == "fwd":
                    with torch.no_grad():
                        ms = time_ms(lambda: latent_diff_attention(*ins, cos, sin, g), warmup, repeats)
                else:
                    ms = time_ms(fwd_bwd(latent_diff_attention, ins, cos, sin, g, dout), warmup, repeats)
            except Exception as e:  # out of resources etc.
                print(f"sweep {name} {cfg}: failed ({type(e).__name__}: {str(e)[:100]})", flush=True)
                continue
            print(f"sweep {name} {cfg}: {ms:.3f} ms", flush=True)
            log.append({"kernel": name, "config": list(cfg), "ms": ms})
            if best is None or ms < best[1]:
                best = (cfg, ms)
        if best:
            K.CONFIGS[name] = best[0]
    return log


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--T", type=int, nargs="+", default=[1024])
    ap.add_argument("--heads", type=int, default=6)
    ap.add_argument("--dims", type=int, nargs=3, default=[64, 32, 64], metavar=("DN", "DR", "DV"))
    ap.add_argument("--sweep", action="store_true")
    ap.add_argument("--groups", default="diff-mla,cmd-mla", help="comma list of mixers to time")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--name", default="bench_diff_latent")
    args = ap.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    warmup, repeats = 5, 20
    if args.quick:
        args.batch, args.T, args.heads, args.dims, warmup, repeats = 1, [24], 2, [16, 8, 16], 1, 2
    from attnlab.ops.diff_attention import latent as K

    sweep_log = []
    if args.sweep and device == "cuda":
        g = geometries(args.heads, *args.dims)["diff-mla"]
        sweep_log = sweep(K, g, args.batch, min(args.T), dtype, device, warmup, repeats)
    rows = []
    for t in args.T:
        for group, g in geometries(args.heads, *args.dims).items():
            if group not in args.groups.split(","):
                continue
            ins, cos, sin = make(g, args.batch, t, dtype, device)
            dout = torch.randn(args.batch, t, g.heads, g.dv, device=device, dtype=dtype)
            with torch.no_grad():
                ref = sdpa_path(*ins, cos, sin, g)
            base = None
            variants = [("sdpa path", sdpa_path), ("fused latent", latent_diff_attention)]
            if group == "cmd-mla":
                variants.append(("noise-once path", noise_once_path))
            for label, fn in variants:
                fb = time_ms(fwd_bwd(fn, ins, cos, sin, g, dout), warmup, repeats)
                with torch.no_grad():
                    fw = time_ms(lambda: fn(*ins, cos, sin, g), warmup, repeats)
                    err = rel_err(fn(*ins, cos, sin, g), ref)
                base = base or (fb, fw)
                row = {"T": t, "group": group, "variant": label, "fwd_bwd_ms": fb, "fwd_ms": fw,
                       "ratio_fwd_bwd": fb / base[0], "ratio_fwd": fw / base[1], "rel_err_vs_sdpa": err}
                rows.append(row)
                print(row, flush=True)
    extra = {"shape": {"B": args.batch, "H": args.heads, "dn_dr_dv": args.dims, "dtype": str(dtype)},
             "configs": {k: list(v) for k, v in K.CONFIGS.items()}, "sweep": sweep_log}
    write_results(args.name, rows, extra)


if __name__ == "__main__":
    main()
