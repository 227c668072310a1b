"""The noise-once forward kernel alone: Triton (2-head groups) vs Gluon (noise_fwd_gluon.py: 2 or 4-head groups).

Per T: both kernels on the same inputs (q2, k2 [B, T, D]; v, a [B, H, T, DV]; lam [H]), every output
(N, out = A - lam N, the log2-unit LSE, the zeroed float32 workspace) vs each other and vs a float32
PyTorch reference (T <= --ref-max), then the kernel time (CUDA events, median; "ms": replays of a CUDA
graph of 10 launches, "ms eager": plain launches, host cost included) and TFLOP/s ("ms") counted at
the Triton kernel's work, H + H/2 matmul units (one unit = a causal T x T x d product = T^2 d FLOP), so
that the two kernels' figures compare as rates of the same job. Without a Hopper GPU (``--quick`` on
CPU) the Gluon kernel is reported unavailable and only the Triton kernel runs (in the interpreter).

    python benchmarks/bench_noise_fwd_gluon.py --T 1024 999 4096 16384
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # bench_noise_gluon's CUDA-graph timer

import torch  # noqa: E402

LOG2E = 1.4426950408889634


def _direct(kernel, grid, args, **opts):
    return kernel[grid](*args, **opts)


def rel(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-30)).item()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--T", type=int, nargs="*", default=[1024, 999, 4096, 16384])
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--ref-max", type=int, default=4096)
    ap.add_argument("--repeats", type=int, default=50)
    ap.add_argument("--configs", nargs="*", default=[], help="more Gluon configs 'BM,BN,STAGES,WARPS,EARLY,G'")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--name", default="bench_noise_fwd_gluon")
    args = ap.parse_args(argv)
    from attnlab.bench import time_ms, write_results
    from attnlab.ops.diff_attention import noise_fwd_gluon as nf
    from attnlab.ops.diff_attention import noise_once as NO
    from bench_noise_gluon import graph_ms

    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    dtype = torch.bfloat16 if cuda else torch.float32
    d = dv = 128
    if args.quick:
        args.T, args.heads, args.repeats, d, dv = [40], 2, 2, 16, 16
    configs = [nf.GLUON_FWD_CONFIG] + [tuple(int(x) for x in c.split(",")) for c in args.configs]
    rows = []
    for t in args.T:
        b, h = args.batch, args.heads
        g = torch.Generator(device="cpu").manual_seed(t)
        r = lambda *s: torch.randn(*s, generator=g).to(device=device, dtype=dtype)  # noqa: E731
        q2, k2, v, a = r(b, t, d), r(b, t, d), r(b, h, t, dv), r(b, h, t, dv)
        lam = (0.2 + torch.rand(h, generator=g)).to(device)
        scale = d ** -0.5
        btd = b * t * d
        outs = {}
        n_buf = torch.empty(b, h, t, dv, device=device, dtype=dtype)
        o_buf = torch.empty_like(n_buf)
        lse = torch.empty(b, t, device=device, dtype=torch.float32)
        ws = torch.empty(2 * btd + h, device=device, dtype=torch.float32)

        def triton_fwd():
            NO._fwd_body(_direct, q2, k2, v, a, lam, o_buf, n_buf, lse, ws, scale, True, True)

        variants = [("triton G=2", triton_fwd)]
        if nf.available(q2, k2, v, a):
            for cfg in configs:
                variants.append((f"gluon G={cfg[5]} {cfg}", lambda cfg=cfg: nf.noise_fwd_gluon(
                    q2, k2, v, a, lam, o_buf, n_buf, lse, ws, scale * LOG2E, True, True, config=cfg)))
        else:
            print(f"T={t}: Gluon forward unavailable here (needs a Hopper GPU, bf16/fp16, 128-wide heads)")
        ref = None
        if t <= args.ref_max:
            s = (q2.float() @ k2.float().transpose(-1, -2)) * scale
            s = s.masked_fill(~torch.ones(t, t, dtype=torch.bool, device=device).tril(), float("-inf"))
            lse_ref = torch.logsumexp(s, -1) * LOG2E
            n_ref = torch.softmax(s, -1)[:, None] @ v.float()
            ref = (n_ref, a.float() - lam[:, None, None] * n_ref, lse_ref)
            del s
        for name, fn in variants:
            for x in (n_buf, o_buf, lse, ws):
                x.fill_(float("nan"))
            try:
                fn()
                if cuda:
                    torch.cuda.synchronize()
            except Exception as e:  # noqa: BLE001 - report and go on with the other variants
                print(f"T={t} {name}: FAILED {type(e).__name__}: {str(e)[:2000]}")
                continue
            outs[name] = (n_buf.clone(), o_buf.clone(), lse.clone(), ws.clone())
        base = outs.get("triton G=2")
        for name, fn in variants:
            if name not in outs:
                continue
            n, o, ls, w = outs[name]
            row = {"T": t, "kernel": name, "finite": bool(torch.isfinite(n).all() and torch.isfinite(o).all()
                                                          and torch.isfinite(ls).all()),
                   "workspace zeroed": bool((w == 0).all())}
            if ref is not None:
                row["N rel vs fp32"], row["out rel vs fp32"] = rel(n, ref[0]), rel(o, ref[1])
                row["lse max abs err"] = (ls - ref[2]).abs().max().item()
            if base is not None:
                row["N rel vs triton"], row["out rel vs triton"] = rel(n, base[0]), rel(o, base[1])
                row["lse max abs vs triton"] = (ls - base[2]).abs().max().item()
            ms_eager = time_ms(fn, warmup=5, repeats=args.repeats)
            ms = graph_ms(fn, args.repeats) if cuda else ms_eager
            row["ms"], row["ms eager"] = ms, ms_eager
            row["TFLOP/s (H + H/2 units)"] = (h + h / 2) * b * t * t * d / (ms * 1e-3) / 1e12
            rows.append(row)
            print({k: (round(x, 5) if isinstance(x, float) else x) for k, x in row.items()}, flush=True)
        base_ms = [x["ms"] for x in rows if x["T"] == t and x["kernel"] == "triton G=2"]
        for x in rows:
            if x["T"] == t and base_ms:
                x["vs triton"] = x["ms"] / base_ms[0]
        del q2, k2, v, a, ref, outs
        if cuda:
            torch.cuda.empty_cache()
    write_results(args.name, rows, {"gluon_fwd_config": list(nf.GLUON_FWD_CONFIG), "have_gluon": nf.HAVE_GLUON})
    return rows


if __name__ == "__main__":
    main()
