"""The noise-once dK/dQ kernel alone: Triton lean kernel vs the Gluon kernel (noise_gluon.py).

Per T: both kernels on the same inputs (q2, k2 [B, T, D]; v, dN [B, H, T, DV]; the softmax LSE of the
causal noise map; Delta = sum_h rowsum(dN_h N_h)), their float32 dQ2 / dK2 vs each other and vs a float32
PyTorch reference (T <= --ref-max), then the kernel time (CUDA events, median; "ms": replays of a CUDA
graph of 10 launches, "ms eager": plain launches, host cost included) and TFLOP/s ("ms") counted as
19 matmul units (one unit = a causal T x T x d product = T^2 d FLOP; RESULTS.md, issue 3). Without a
Hopper GPU (``--quick`` on CPU) the Gluon kernel is reported unavailable and only the lean kernel runs
(in the interpreter) against the reference.

    python benchmarks/bench_noise_gluon.py --T 1024 999 4096 16384
"""

from __future__ import annotations

import argparse
import math
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import torch  # noqa: E402

LOG2E = 1.4426950408889634


def make_inputs(b, h, t, d, dv, dtype, device, seed=0):
    g = torch.Generator(device="cpu").manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g).to(device=device, dtype=dtype)  # noqa: E731
    q2, k2, v, dn = r(b, t, d), r(b, t, d), r(b, h, t, dv), r(b, h, t, dv) * 0.1
    scale = d ** -0.5
    s = (q2.float() @ k2.float().transpose(-1, -2)) * scale
    mask = torch.ones(t, t, dtype=torch.bool, device=device).tril()
    s = s.masked_fill(~mask, float("-inf"))
    lse = torch.logsumexp(s, -1)  # natural log
    p = torch.exp(s - lse[..., None])
    n = p[:, None] @ v.float()
    delta = (dn.float() * n).sum(-1).sum(1)[:, None].contiguous()  # [B, 1 split, T]
    return q2, k2, v, dn, (lse * LOG2E).contiguous(), delta, scale, p


def reference(q2, k2, v, dn, delta, scale, p):
    dp = (dn.float() @ v.float().transpose(-1, -2)).sum(1)  # [B, T, T]
    ds = p * (dp - delta[:, 0, :, None])
    return ds @ k2.float() * scale, ds.transpose(-1, -2) @ q2.float() * scale  # dQ2, dK2


def rel(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-30)).item()


def graph_ms(fn, repeats, per_graph=10):
    """Median ms per call of fn replayed from a CUDA graph of per_graph calls (no host launch cost:
    at small T the eager launch path, not the kernel, sets the time)."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        fn()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(per_graph):
            fn()
    for _ in range(3):
        g.replay()
    times = []
    for _ in range(max(3, repeats // per_graph * 2)):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        g.replay()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b) / per_graph)
    times.sort()
    return times[len(times) // 2]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--T", type=int, nargs="*", default=[1024, 999, 4096, 16384])
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--ref-max", type=int, default=4096)
    ap.add_argument("--repeats", type=int, default=50)
    ap.add_argument("--configs", nargs="*", default=[], help="more Gluon configs 'KC,STAGES,WARPS,EARLY_Q,ROWS'")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--name", default="bench_noise_gluon")
    args = ap.parse_args(argv)
    from attnlab.bench import time_ms, write_results
    from attnlab.ops.diff_attention import noise_gluon as ng
    from attnlab.ops.diff_attention import noise_once as NO

    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    dtype = torch.bfloat16 if cuda else torch.float32
    d = dv = 128
    if args.quick:
        args.T, args.heads, args.repeats, d, dv = [40], 2, 2, 16, 16
    configs = [ng.GLUON_CONFIG] + [tuple(int(x) for x in c.split(",")) for c in args.configs]
    rows = []
    for t in args.T:
        q2, k2, v, dn, lse, delta, scale, p = make_inputs(args.batch, args.heads, t, d, dv, dtype, device)
        h = args.heads
        hs, split, tb = NO._bwd_plan(h, dv, d)
        assert split == 1
        tbl = NO._dk_table(t, *tb, device)
        bm, bn, nt, w, s, _, kc, _, early, acc, _ = NO._config("lean", h, dv, d)
        kc = NO._pow2(dv) if kc <= 0 else min(kc, NO._pow2(dv))
        btd = args.batch * t * d
        ws = torch.empty(2 * btd, device=device, dtype=torch.float32)

        def lean():
            NO._noise_bwd_dk_lean_kernel[(tbl.numel() // 2, args.batch * split)](
                q2, k2, v, dn, lse, delta, ws[btd:], ws[:btd], tbl, q2.stride(0), q2.stride(1), k2.stride(0),
                k2.stride(1), *NO._vstr(v), h, hs, split, t, scale * LOG2E, scale, d, NO._pow2(d), dv,
                NO._pow2(dv), bm, bn, nt, kc, bool(early), bool(acc), num_warps=w, num_stages=s)

        variants = [("triton lean", lean)]
        if ng.available(q2, v, d, dv, bm, bn, nt):
            for cfg in configs:
                variants.append((f"gluon {cfg}", lambda cfg=cfg: ng.noise_bwd_dk_gluon(
                    q2, k2, v, dn, lse, delta, ws[btd:], ws[:btd], tbl, h, hs, split, t, scale * LOG2E, scale,
                    bm, bn, config=cfg)))
        else:
            print(f"T={t}: Gluon kernel unavailable here (needs a Hopper GPU, bf16/fp16, 128-wide heads)")
        ref = reference(q2, k2, v, dn, delta, scale, p) if t <= args.ref_max else None
        outs = {}
        for name, fn in variants:
            ws.zero_()
            try:
                fn()
                if cuda:
                    torch.cuda.synchronize()
            except Exception as e:  # noqa: BLE001 - report and go on with the other variants
                print(f"T={t} {name}: FAILED {type(e).__name__}: {str(e)[:2000]}")
                continue
            outs[name] = (ws[:btd].view(args.batch, t, d).clone(), ws[btd:].view(args.batch, t, d).clone())
        base = outs.get("triton lean")
        for name, fn in variants:
            if name not in outs:
                continue
            dq, dk = outs[name]
            row = {"T": t, "kernel": name, "finite": bool(torch.isfinite(dq).all() and torch.isfinite(dk).all())}
            if ref is not None:
                row["dq rel vs fp32"], row["dk rel vs fp32"] = rel(dq, ref[0]), rel(dk, ref[1])
            if base is not None:
                row["dq rel vs lean"], row["dk rel vs lean"] = rel(dq, base[0]), rel(dk, base[1])
            ms_eager = time_ms(fn, warmup=5, repeats=args.repeats)
            ms = graph_ms(fn, args.repeats) if cuda else ms_eager
            row["ms"], row["ms eager"] = ms, ms_eager
            row["TFLOP/s (19 units)"] = 19 * args.batch * t * t * d / (ms * 1e-3) / 1e12 if h == 16 else None
            rows.append(row)
        lean_ms = [r["ms"] for r in rows if r["T"] == t and r["kernel"] == "triton lean"]
        for r in rows:
            if r["T"] == t and lean_ms:
                r["vs lean"] = r["ms"] / lean_ms[0]
        del q2, k2, v, dn, p, ref
        if cuda:
            torch.cuda.empty_cache()
    write_results(args.name, rows, {"gluon_config": list(ng.GLUON_CONFIG), "have_gluon": ng.HAVE_GLUON})
    return rows


if __name__ == "__main__":
    main()
