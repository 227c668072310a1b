"""The noise-once dV kernel alone: the Triton dV kernel (2-head groups) vs the Gluon dV kernel
(noise_dv_gluon.py; 4-head groups, and 2-head groups as the TMA-ring pipeline alone).

Per T: every kernel on the same inputs (q2, k2 [B, T, D]; dN [B, H, T, DV]; the causal noise map's LSE
(log2 units); the float32 dQ2/dK2 workspace the kernels cast), its dV vs the Triton kernel's and vs a
float32 PyTorch reference (T <= --ref-max), the cast dQ2/dK2 vs the workspace, then the kernel time
(CUDA events, median; "ms": replays of a CUDA graph of 10 launches, "ms eager": plain launches, host
cost included) and TFLOP/s counted in each kernel's own work units (one unit = a causal T x T x d
product = T^2 d FLOP: H + H/G units, 24 at G = 2 and 20 at G = 4 with 16 heads) and in the Triton
kernel's 24 ("eff", the same work for every kernel: its rate is the time ratio's inverse). Without a
Hopper GPU (``--quick`` on CPU) the Gluon kernel is reported unavailable and only the Triton kernel
runs (in the interpreter) against the reference.

    python benchmarks/bench_noise_dv_gluon.py --T 1024 999 4096 16384
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import torch  # noqa: E402

LOG2E = 1.4426950408889634


def make_inputs(b, h, t, d, dv, dtype, device, seed=0):
    g = torch.Generator(device="cpu").manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g).to(device=device, dtype=dtype)  # noqa: E731
    q2, k2, dn = r(b, t, d), r(b, t, d), r(b, h, t, dv) * 0.1
    scale = d ** -0.5
    s = (q2.float() @ k2.float().transpose(-1, -2)) * scale
    mask = torch.ones(t, t, dtype=torch.bool, device=device).tril()
    s = s.masked_fill(~mask, float("-inf"))
    lse = torch.logsumexp(s, -1)  # natural log
    p = torch.exp(s - lse[..., None])
    ws = torch.randn(2 * b * t * d, generator=g).to(device=device, dtype=torch.float32)
    return q2, k2, dn.contiguous(), (lse * LOG2E).contiguous(), ws, scale, p


def rel(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-30)).item()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--T", type=int, nargs="*", default=[1024, 999, 4096, 16384])
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--ref-max", type=int, default=4096)
    ap.add_argument("--repeats", type=int, default=50)
    ap.add_argument("--configs", nargs="*", default=None,
                    help="Gluon configs 'G,BM,BN,STAGES,WARPS' (default: noise_dv_gluon.CONFIGS)")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--name", default="bench_noise_dv_gluon")
    args = ap.parse_args(argv)
    from attnlab.bench import time_ms, write_results
    from attnlab.ops.diff_attention import noise_dv_gluon as ng
    from attnlab.ops.diff_attention import noise_once as NO

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from bench_noise_gluon import graph_ms

    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    dtype = torch.bfloat16 if cuda else torch.float32
    d = dv = 128
    if args.quick:
        args.T, args.heads, args.repeats, d, dv = [40], 2, 2, 16, 16
    configs = ([tuple(int(x) for x in c.split(",")) for c in args.configs] if args.configs is not None
               else list(ng.CONFIGS))
    rows = []
    for t in args.T:
        b, h = args.batch, args.heads
        q2, k2, dn, lse, ws, scale, p = make_inputs(b, h, t, d, dv, dtype, device)
        btd = b * t * d
        bm, bn, g, w, s, major = NO._config("dv", h, dv)
        ngr = -(-h // g)
        grid = (b * ngr, -(-t // bn)) if major else (-(-t // bn), b * ngr)
        outs = {}

        def triton_dv(dvo, dqk16):
            NO._noise_bwd_dv_kernel[grid](
                q2, k2, dn, lse, dvo, ws, dqk16, q2.stride(0), q2.stride(1), k2.stride(0), k2.stride(1),
                *NO._vstr(dvo), h, ngr, t, btd, scale * LOG2E, d, NO._pow2(d), dv, NO._pow2(dv), g, bm, bn, True,
                bool(major), num_warps=w, num_stages=s)

        variants = [(f"triton G={g}", triton_dv, g)]
        dv0 = torch.empty(b, h, t, dv, device=device, dtype=dtype)
        if ng.available(q2, k2, dn, dv0, d, dv):
            for cfg in configs:
                variants.append((f"gluon {cfg}", lambda dvo, dqk16, cfg=cfg: ng.noise_bwd_dv_gluon(
                    q2, k2, dn, lse, dvo, ws, dqk16, h, t, btd, scale * LOG2E, config=cfg), cfg[0]))
        else:
            print(f"T={t}: Gluon dV kernel unavailable here (needs a Hopper GPU, bf16/fp16, 128-wide heads)")
        ref = (p.transpose(-1, -2)[:, None] @ dn.float()) if t <= args.ref_max else None
        ref_cast = ws.view(2, b, t, d)
        for name, fn, gg in variants:
            dvo = torch.full((b, h, t, dv), float("nan"), device=device, dtype=dtype)
            dqk16 = torch.full((2, b, t, d), float("nan"), device=device, dtype=dtype)
            try:
                fn(dvo, dqk16)
                if cuda:
                    torch.cuda.synchronize()
            except Exception as e:  # noqa: BLE001 - report and go on with the other variants
                print(f"T={t} {name}: FAILED {type(e).__name__}: {str(e)[:2000]}")
                continue
            outs[name] = (dvo, dqk16, fn, gg)
        base = outs.get(variants[0][0])
        for name, (dvo, dqk16, fn, gg) in outs.items():
            row = {"T": t, "kernel": name, "finite": bool(torch.isfinite(dvo).all() and torch.isfinite(dqk16).all()),
                   "cast rel": rel(dqk16, ref_cast)}
            if ref is not None:
                row["dv rel vs fp32"] = rel(dvo, ref)
                row["dv rel vs fp32 (worst head)"] = max(rel(dvo[:, i], ref[:, i]) for i in range(h))
            if base is not None:
                row["dv rel vs triton"] = rel(dvo, base[0])
            dvt = torch.empty_like(dvo)
            dqt = torch.empty_like(dqk16)
            ms_eager = time_ms(lambda: fn(dvt, dqt), warmup=5, repeats=args.repeats)
            ms = graph_ms(lambda: fn(dvt, dqt), args.repeats) if cuda else ms_eager
            row["ms"], row["ms eager"] = ms, ms_eager
            units = h + -(-h // gg)
            row["units"] = units
            row["TFLOP/s (own units)"] = units * b * t * t * d / (ms * 1e-3) / 1e12
            rows.append(row)
        tms = [r["ms"] for r in rows if r["T"] == t and r["kernel"] == variants[0][0]]
        for r in rows:
            if r["T"] == t and tms:
                r["vs triton"] = r["ms"] / tms[0]
                r["TFLOP/s (eff, triton's units)"] = (h + -(-h // g)) * b * t * t * d / (r["ms"] * 1e-3) / 1e12
            if r["T"] == t:
                print({k: (round(v, 5) if isinstance(v, float) else v) for k, v in r.items()}, flush=True)
        del q2, k2, dn, p, ref, outs
        if cuda:
            torch.cuda.empty_cache()
    write_results(args.name, rows, {"gluon_dv_config": list(ng.GLUON_DV_CONFIG), "have_gluon": ng.HAVE_GLUON})
    return rows


if __name__ == "__main__":
    main()
