"""Decode-step attention for one layer: spectral KV cache (Triton kernel, and its plain PyTorch
reference) vs dense SDPA decode, with compression ratio and fidelity beside the speed.

GPU default: B = 1 and 8, 8 KV heads, 32 query heads, head dim 128, T = 4K/8K/16K/32K, block 512,
(key_rank, value_rank) in {(16, 16), (32, 32)}, bf16. Times are medians of CUDA events
after warm-up (attnlab.bench.time_ms), for every variant alike: launched eagerly, replayed from a
CUDA graph, and replayed after flushing the L2 cache ("cold": a compressed B = 1 cache fits in
L2 and would otherwise be re-read from it). The K/V are synthetic, with a decaying spectrum over
time (rank-structured like trained models' caches, plus noise); fidelity on real models is in
benchmarks/spectral_fidelity.py. --configs times several kernel launch configurations per row
(default: the launcher's default and the session-2 kernel "v1" as the baseline, both in the
same run; the row reports both, the JSON's "sweep" holds every configuration). The roofline
columns give the time each path needs to stream the bytes it must read at HBM_TBPS (2.5 TB/s).

Besides the single-call graph figure (which includes the fixed cost of launching a graph, 13-19 us on
an H100 even for an empty kernel: --floor measures it), --multi N times N calls captured in one graph
over N/2 copies of the cache (per call; as a model's decode graph runs its layers) and --profile
records each kernel's device time (torch.profiler).

    python benchmarks/bench_spectral.py                                   # GPU, default launch
    python benchmarks/bench_spectral.py --lengths 32768 --multi 16 --profile --floor --configs default,v1,v2
    python benchmarks/bench_spectral.py --lengths 32768 --configs sweep   # GPU, config sweep
    python benchmarks/bench_spectral.py --quick                           # CPU smoke test (interpreter)
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch.nn.functional as F  # noqa: E402

from attnlab.bench import time_ms, write_results  # noqa: E402
from attnlab.caches.spectral import SpectralCache  # noqa: E402
from attnlab.ops.spectral import HAS_TRITON, spectral_attention, spectral_decode  # noqa: E402
from attnlab.testing import rel_err  # noqa: E402


def synthetic_kv(b, h, t, d, device, dtype, rank=24, decay=1.0, noise=0.05, seed=0):
    """[b, h, t, d]: a few slowly varying directions per head with a decaying spectrum, plus noise."""
    g = torch.Generator(device=device).manual_seed(seed)
    basis = torch.linalg.qr(torch.randn(b * h, d, d, device=device, generator=g)).Q[..., :rank].transpose(-1, -2)
    w = torch.arange(1, rank + 1, device=device).float() ** -decay * 2.0
    out = torch.empty(b, h, t, d, device=device, dtype=dtype)
    step = 4096
    for a in range(0, t, step):
        n = min(step, t - a)
        coef = torch.randn(b * h, n, rank, device=device, generator=g) * w
        x = coef @ basis + noise * torch.randn(b * h, n, d, device=device, generator=g)
        out[:, :, a:a + n] = x.view(b, h, n, d).to(dtype)
    return out


def corr(a, b):
    a, b = a.double().flatten(), b.double().flatten()
    a, b = a - a.mean(), b - b.mean()
    return (a @ b / (a.norm() * b.norm())).item()


def graphed(fn):
    """Capture fn in a CUDA graph; return a replay closure (fn must be warm)."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    return g.replay


def kernel_times_us(fn, calls: int = 10) -> dict:
    """Device microseconds per call of each kernel fn launches (torch.profiler, CUDA activity)."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
    out = {}
    for e in prof.key_averages():
        t = getattr(e, "self_device_time_total", None) or getattr(e, "self_cuda_time_total", 0)
        if t > 0:
            out[e.key[:60]] = round(t / calls, 2)
    return out


def launch_floor(warmup: int, repeats: int) -> dict:
    """The fixed cost of this timing method: graphs of 1, 2 and 16 empty Triton kernel launches,
    timed like every variant (CUDA events around one replay), in microseconds."""
    import triton
    import triton.language as tl

    @triton.jit
    def _empty(x):
        pid = tl.program_id(0)
        if pid < 0:  # never: the kernel does nothing, but keeps its argument
            tl.store(x, 0.0)

    x = torch.zeros(1, device="cuda")
    out = {}
    for n, grid in ((1, 1), (2, 1), (1, 528), (2, 528), (16, 528)):
        fn = lambda n=n, grid=grid: [_empty[(grid,)](x) for _ in range(n)]  # noqa: E731
        out[f"graph_{n}x{grid}_us"] = round(time_ms(graphed(fn), warmup, repeats) * 1e3, 2)
    out["per_launch_in_graph16_us"] = round(out["graph_16x528_us"] / 16, 2)
    return out


def multi_graph_ms(one, n: int, warmup: int, repeats: int) -> float:
    """Median ms per call of one(0) .. one(n-1) captured back to back in one CUDA graph: the
    graph's launch cost is shared by n calls, as in a model's decode step that captures every
    layer; one(i) reads its own copy of the data (i modulo the copies), so no call re-reads what
    the previous one left in L2."""
    fn = lambda: [one(i) for i in range(n)]  # noqa: E731
    return time_ms(graphed(fn), warmup, repeats) / n


def time_cold_ms(fn, flush: torch.Tensor, warmup: int, repeats: int) -> float:
    """Median ms of fn() with the L2 cache flushed before every call (a write of `flush`, larger
    than L2, then a sync; the events then time fn alone, launch included, as time_ms does).
    Decode of a real model streams every other layer's cache and weights between two calls of
    one layer, so this is the realistic figure; time_ms repeats over L2-resident data when the
    compressed cache fits in L2 (B = 1: 15-27 MB vs 50 MB of L2 on an H100)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        flush.add_(1)
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def host_time_us(fn, n: int) -> float:
    """Host (CPU) microseconds per call: n calls back to back without synchronizing (the GPU queue
    absorbs them; for a launcher slower than its kernel this is the eager step's floor)."""
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    t = (time.perf_counter() - t0) / n * 1e6
    torch.cuda.synchronize()
    return t


def in_layout(cv: torch.Tensor, layout: str | None) -> torch.Tensor:
    """cv [B, Hk, NBcap, bs, rv] stored token-major ("token": a transposed view of a contiguous
    [.., rv, bs] tensor) or rank-major ("rank": contiguous); None: as given (a copy only if it differs)."""
    if layout is None:
        return cv
    if layout == "rank":
        return cv.contiguous()
    if cv.transpose(-1, -2).is_contiguous() and not cv.is_contiguous():
        return cv
    return cv.transpose(-1, -2).contiguous().transpose(-1, -2)


def parse_configs(spec: str):
    """Comma list of kernel configurations:
    "default"                                   the launcher's defaults (impl="auto": v2 or v1 by length)
    "v1", "v2"                                  one kernel with its defaults (v1: the session-2 baseline)
    "v2:split:slices:tile[:warps[:stages[:fused[:fastcvt[:group[:blocks[:maxnreg]]]]]]]"   v2 launch parameters
    "v1:tile:blocks_per_program:fused[:warps[:stages[:maxnreg[:vmerge]]]]"   v1 launch parameters
    "v3:split[:warps[:stages[:fused[:blocks[:maxnreg[:group[:pdl[:prefetch[:l2pf]]]]]]]]]"   v3 launch parameters
    (0 or absent = the launcher's default; fused, pdl: 0 = off, 1 = on, absent = default; prefetch: 0 only (the
    slot of session 6's register prefetch, removed in session 7); l2pf: 1 = the program's blocks requested from L2
    at its start).
    Any item may end in "@token" or "@rank" (session 7): the value coefficients handed to the kernel in that
    storage layout (``SpectralCache(value_layout=...)``; without it: the cache's default layout)."""
    out = []
    for item in spec.split(","):
        item, _, layout = item.partition("@")
        if layout not in ("", "token", "rank"):
            raise SystemExit(f"--configs: bad layout {layout!r} in {item!r} (token or rank)")
        lay = {"_cv_layout": layout} if layout else {}
        if item == "default":
            out.append(lay)
            continue
        if item in ("v1", "v2", "v3"):
            out.append({"impl": item, **lay})
            continue
        head, _, rest = item.partition(":")
        if head == "v2":
            vals = [int(x) for x in rest.split(":")] + [-1] * 10
            sp, nw, tw, warps, stages, fused, fast, group, bpp, maxnreg = vals[:10]
            kw = {}
            for key, val in (("split", sp), ("warp_slices", nw), ("slice_tile", tw), ("num_warps", warps),
                             ("num_stages", stages), ("merge_group", group), ("blocks_per_program", bpp),
                             ("maxnreg", maxnreg)):
                if val > 0:
                    kw[key] = val
            for key, val in (("fused_merge", fused), ("fast_cvt", fast)):
                if val >= 0:
                    kw[key] = bool(val)
            out.append({**kw, **lay})
            continue
        if head == "v3":
            vals = [int(x) for x in rest.split(":")] + [-1] * 11
            kw = {"impl": head}
            flags = ("fused_merge", "pdl", "l2_prefetch")
            for key, val in zip(("split", "num_warps", "num_stages", "fused_merge", "blocks_per_program", "maxnreg",
                                 "merge_group", "pdl", "prefetch", "l2_prefetch"), vals[:10]):
                if key == "prefetch":  # the register prefetch was removed in session 7: its slot stays, 0 only
                    if val > 0:
                        raise SystemExit(f"--configs: {item!r}: the register prefetch was removed (session 7); use 0")
                    continue
                if val > 0 or (key in flags and val == 0):
                    kw[key] = bool(val) if key in flags else val
            out.append({**kw, **lay})
            continue
        if head != "v1":
            raise SystemExit(f"--configs: bad item {item!r} (see --help)")
        vals = [int(x) for x in rest.split(":")] + [0] * 7
        tile, bpp, fused, warps, stages, maxnreg, vmerge = vals[:7]
        kw = {"impl": "v1", "fused_merge": bool(fused)}
        if vmerge:
            kw["value_proj"] = "merge"
        for key, val in (("block_tile", tile), ("blocks_per_program", bpp), ("num_warps", warps),
                         ("num_stages", stages), ("maxnreg", maxnreg)):
            if val:
                kw[key] = val
        out.append({**kw, **lay})
    return out


def config_name(kw: dict) -> str:
    if "_cv_layout" in kw:
        return config_name({k: v for k, v in kw.items() if k != "_cv_layout"}) + "@" + kw["_cv_layout"]
    if not kw:
        return "default"
    if kw in ({"impl": "v1"}, {"impl": "v2"}, {"impl": "v3"}):
        return kw["impl"]
    if kw.get("impl") == "v3":
        return kw["impl"] + ":" + ":".join(str(int(kw[key])) if key in kw else "-" for key in (
            "split", "num_warps", "num_stages", "fused_merge", "blocks_per_program", "maxnreg", "merge_group")) + (
            f":{int(kw['pdl'])}" if "pdl" in kw else "") + (":0" if "l2_prefetch" in kw else "") + (
            f":{int(kw['l2_prefetch'])}" if "l2_prefetch" in kw else "")
    if kw.get("impl") == "v1":
        return "v1:" + ":".join(str(int(kw.get(key, dflt))) for key, dflt in (
            ("block_tile", 0), ("blocks_per_program", 0), ("fused_merge", False), ("num_warps", 0),
            ("num_stages", 0), ("maxnreg", 0))) + (":1" if kw.get("value_proj") == "merge" else "")
    return "v2:" + ":".join(str(int(kw[key])) if key in kw else "-" for key in (
        "split", "warp_slices", "slice_tile", "num_warps", "num_stages", "fused_merge", "fast_cvt", "merge_group",
        "blocks_per_program", "maxnreg"))


# v2 sweep around the default, plus the v1 baseline (its session-2 defaults)
SWEEP = ("default,v1,"
         "v2:2:4:64:4:2:1,v2:2:4:64:8:2:1,v2:2:4:64:4:2:1:1:8:1:168,v2:4:4:32:4:2:1,v2:1:8:64:8:2:1,"
         "v2:2:4:64:4:1:1,v2:2:4:64:4:2:0,v2:1:8:64:8:2:0:1:8:4,v2:1:8:64:8:2:0:1:8:2,"
         "v2:1:8:64:8:2:0:1:8:4:128,v2:1:8:64:8:3:0:1:8:4")

HBM_TBPS = 2.5  # the rate the roofline columns assume (an H100 SXM streams ~2.5-3 TB/s in practice)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny CPU sizes (smoke test)")
    p.add_argument("--batch", type=int, nargs="*", default=None)
    p.add_argument("--lengths", type=int, nargs="*", default=None)
    p.add_argument("--ranks", default=None, help="comma list of key:value ranks, e.g. 16:16,32:32")
    p.add_argument("--block-size", type=int, default=None)
    p.add_argument("--configs", default="default,v1",
                   help=f"kernel configs, comma separated (see parse_configs); 'sweep' = {SWEEP}")
    p.add_argument("--no-graphs", action="store_true", help="eager timings only")
    p.add_argument("--no-cold", action="store_true", help="skip the L2-flushed timings")
    p.add_argument("--no-ref", action="store_true", help="skip timing the PyTorch reference")
    p.add_argument("--repeats", type=int, default=50)
    p.add_argument("--multi", type=int, default=0,
                   help="also time N calls captured in one CUDA graph, cycling over N/2 copies of the cache "
                        "(as a model's layers are: no L2 reuse between calls); reported per call (graphN_ms)")
    p.add_argument("--no-eager", action="store_true", help="skip the eager and host timings")
    p.add_argument("--profile", action="store_true",
                   help="device time per kernel (torch.profiler, 10 eager calls) of dense and every config")
    p.add_argument("--floor", action="store_true",
                   help="first time empty Triton kernels replayed from CUDA graphs (the fixed cost of a launch)")
    p.add_argument("--name", default="bench_spectral")
    args = p.parse_args(argv)

    cuda = torch.cuda.is_available()
    dev = torch.device("cuda" if cuda else "cpu")
    if args.quick:
        hk, hq, d, dtype = 2, 4, 32, torch.float32
        batches, lengths, bs = args.batch or [2], args.lengths or [96], args.block_size or 32
        ranks = args.ranks or "8:16"
        repeats, warmup = 2, 1
        configs = parse_configs("default,v1,v2:2:2:16:0:0:0,v3:2,v3:2@rank,v3:1:4:2:0:2:0:8:1:0:0")
    else:
        hk, hq, d, dtype = 8, 32, 128, torch.bfloat16
        batches, lengths, bs = args.batch or [1, 8], args.lengths or [4096, 8192, 16384, 32768], args.block_size or 512
        ranks = args.ranks or "16:16,32:32"
        repeats, warmup = args.repeats, 10
        configs = parse_configs(SWEEP if args.configs == "sweep" else args.configs)
    rank_pairs = [tuple(int(x) for x in r.split(":")) for r in ranks.split(",")]
    use_graphs = cuda and not args.no_graphs
    cold = cuda and not args.no_cold
    flush = torch.zeros(64 << 20, device=dev, dtype=torch.float32) if cold else None  # 256 MB > L2
    scale = d**-0.5
    rows, sweep = [], []
    floor = launch_floor(warmup, repeats) if args.floor and cuda else None
    if floor:
        print("launch floor (us):", floor, flush=True)
    for b in batches:
        for t in lengths:
            k = synthetic_kv(b, hk, t + 1, d, dev, dtype, seed=1)
            v = synthetic_kv(b, hk, t + 1, d, dev, dtype, seed=2)
            q = torch.randn(b, hq, 1, d, device=dev, dtype=dtype) * 2.0
            dense = lambda: F.scaled_dot_product_attention(q, k, v, scale=scale, enable_gqa=True)
            exact = dense().float()
            t_dense = time_ms(dense, warmup, repeats)
            dense_host = host_time_us(dense, 200) if cuda else None
            dense_g = graphed(dense) if use_graphs else None
            t_dense_g = time_ms(dense_g, warmup, repeats) if use_graphs else None
            t_dense_cold = time_cold_ms(dense_g or dense, flush, warmup, repeats) if cold else None
            dense_prof = kernel_times_us(dense) if args.profile and cuda else None
            dense_bytes = 2 * k.numel() * k.element_size()
            n_multi = args.multi if use_graphs else 0
            t_dense_multi = None
            if n_multi:
                copies = [(k, v)] + [(k.clone(), v.clone()) for _ in range(max(2, n_multi // 2) - 1)]
                t_dense_multi = multi_graph_ms(
                    lambda i: F.scaled_dot_product_attention(q, *copies[i % len(copies)], scale=scale, enable_gqa=True),
                    n_multi, warmup, repeats)
                del copies
            for rk, rv in rank_pairs:
                cache = SpectralCache(b, t + 1, hk, d, device=dev, dtype=dtype, key_rank=rk, value_rank=rv,
                                      block_size=bs)
                if cuda:
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                cache.append(k[:, :, :t], v[:, :, :t])
                if cuda:
                    torch.cuda.synchronize()
                fill_s = time.perf_counter() - t0
                cache.append(k[:, :, t:], v[:, :, t:])  # the decoded token: in the hot part
                st = cache.stats()
                blocks = cache.blocks()
                hot_k, hot_v = cache.hot_k[:, :, :cache.hot_len], cache.hot_v[:, :, :cache.hot_len]
                ref = lambda: spectral_attention(q, blocks, hot_k, hot_v, t, scale)
                out_ref = ref().float()
                row = {"B": b, "T": t, "key_rank": rk, "value_rank": rv, "block": bs, "dense_ms": t_dense,
                       "dense_host_us": dense_host}
                if use_graphs:
                    row["dense_graph_ms"] = t_dense_g
                if cold:
                    row["dense_cold_ms"] = t_dense_cold
                if dense_prof:
                    row["dense_kernels_us"] = dense_prof
                if n_multi:
                    row[f"dense_graph{n_multi}_ms"] = t_dense_multi
                    bufs = (cache.ck, cache.sk, cache.bk, cache.cv, cache.sv, cache.bv, cache.hot_k, cache.hot_v)
                    ccopies = [bufs] + [tuple(x.clone() if x is not None else None for x in bufs)
                                        for _ in range(max(2, n_multi // 2) - 1)]
                if HAS_TRITON:
                    for kw in configs:
                        name = config_name(kw)
                        kw = dict(kw)
                        lay = kw.pop("_cv_layout", None)
                        try:
                            kern = functools.partial(
                                spectral_decode, q, cache.ck, cache.sk, cache.bk, in_layout(cache.cv, lay), cache.sv,
                                cache.bv, cache.n_blocks, cache.hot_k, cache.hot_v, cache.hot_len, scale, **kw)
                            err = rel_err(kern().float(), out_ref)
                            ms = None if args.no_eager else time_ms(kern, warmup, repeats)
                            host_us = host_time_us(kern, 200) if cuda and not args.no_eager else None
                            kern_g = graphed(kern) if use_graphs else None
                            ms_g = time_ms(kern_g, warmup, repeats) if use_graphs else None
                            ms_c = time_cold_ms(kern_g or kern, flush, warmup, repeats) if cold else None
                            ms_m = None
                            if n_multi:
                                cvs = [in_layout(c[3], lay) for c in ccopies]

                                def one(i, kw=kw, cvs=cvs):
                                    ck_, sk_, bk_, _, sv_, bv_, hk_, hv_ = ccopies[i % len(ccopies)]
                                    return spectral_decode(q, ck_, sk_, bk_, cvs[i % len(ccopies)], sv_, bv_,
                                                           cache.n_blocks, hk_, hv_, cache.hot_len, scale, **kw)
                                ms_m = multi_graph_ms(one, n_multi, warmup, repeats)
                        except Exception as e:  # keep measuring the other variants
                            print(f"kernel config {name} failed: {e!r}", flush=True)
                            continue
                        rec = {"B": b, "T": t, "key_rank": rk, "value_rank": rv, "config": name, "err": err,
                               "eager_ms": ms, "graph_ms": ms_g, "cold_ms": ms_c, "host_us": host_us}
                        if args.profile and cuda:
                            rec["kernels_us"] = kernel_times_us(kern)
                        if n_multi:
                            rec[f"graph{n_multi}_ms"] = ms_m
                            rec[f"x_dense_graph{n_multi}"] = t_dense_multi / ms_m
                        if use_graphs:
                            rec["x_dense_graph"] = t_dense_g / ms_g
                        sweep.append(rec)
                        if len(configs) > 1:
                            print("  ", rec, flush=True)
                        if kw == {"impl": "v1"} and lay is None:  # the baseline: session 2's kernel and launch defaults
                            row["v1_ms"] = ms
                            row["v1_host_us"] = host_us
                            if use_graphs:
                                row["v1_graph_ms"] = ms_g
                                row["v1_speedup_graph"] = t_dense_g / ms_g
                            if cold:
                                row["v1_cold_ms"] = ms_c
                        if (not kw and lay is None) or "kernel_ms" not in row:  # the launcher's default config
                            row["kernel_ms"] = ms
                            row["kernel_host_us"] = host_us
                            row["speedup_eager"] = t_dense / ms if ms else None
                            if n_multi:
                                row[f"kernel_graph{n_multi}_ms"] = ms_m
                                row[f"speedup_graph{n_multi}"] = t_dense_multi / ms_m
                            if use_graphs:
                                row["kernel_graph_ms"] = ms_g
                                row["speedup_graph"] = t_dense_g / ms_g
                            if cold:
                                row["kernel_cold_ms"] = ms_c
                                row["speedup_cold"] = t_dense_cold / ms_c
                                # bytes the kernel must read (compressed blocks + hot tokens), per cold ms
                                row["kernel_TBps_cold"] = st["bytes_used"] / (ms_c * 1e-3) / 1e12
                            row["kernel_vs_ref_err"] = err
                    mine = [r for r in sweep if (r["B"], r["T"], r["key_rank"], r["value_rank"]) == (b, t, rk, rv)]
                    if len(mine) > 1 and use_graphs:
                        best = min(mine, key=lambda r: r["graph_ms"])
                        row["best_config"], row["best_graph_ms"] = best["config"], best["graph_ms"]
                        if n_multi:
                            best = min(mine, key=lambda r: r[f"graph{n_multi}_ms"])
                            row[f"best_config_graph{n_multi}"] = best["config"]
                            row[f"best_graph{n_multi}_ms"] = best[f"graph{n_multi}_ms"]
                if not args.no_ref:
                    row["torch_ref_ms"] = time_ms(ref, warmup, max(3, repeats // 5))
                row["compression"] = st["compression_ratio"]
                row["bytes_ratio"] = dense_bytes / st["bytes_used"]
                # roofline: the bytes each path must read, streamed at HBM_TBPS (partials and q ignored)
                row["kernel_MB"] = st["bytes_used"] / 1e6
                row["dense_MB"] = dense_bytes / 1e6
                row["kernel_roof_ms"] = st["bytes_used"] / (HBM_TBPS * 1e12) * 1e3
                row["dense_roof_ms"] = dense_bytes / (HBM_TBPS * 1e12) * 1e3
                row["out_rel_err"] = rel_err(out_ref, exact)
                row["out_corr"] = corr(out_ref, exact)
                row["fill_s"] = fill_s
                rows.append(row)
                print(row, flush=True)
                partial = Path(os.environ.get("ATTNLAB_BENCH_DIR", "benchmarks/results")) / f"{args.name}.partial.json"
                partial.parent.mkdir(parents=True, exist_ok=True)
                partial.write_text(json.dumps({"rows": rows, "sweep": sweep}, indent=1))
                del cache
                ccopies = None
            del k, v
            if cuda:
                torch.cuda.empty_cache()
    extra = {"config": {"kv_heads": hk, "q_heads": hq, "head_dim": d, "dtype": str(dtype), "block_size": bs,
                        "graphs": use_graphs, "cold_l2": cold, "kernel_configs": [config_name(c) for c in configs],
                        "data": "synthetic rank-structured K/V (see docstring)"},
             "sweep": sweep, "launch_floor_us": floor}
    try:
        from attnlab.ops.spectral.kernel import LAUNCH_STATS
        extra["launch_stats"] = dict(LAUNCH_STATS)
        print("v2 launches:", LAUNCH_STATS, flush=True)
    except ImportError:
        pass
    write_results(args.name, rows, extra)
    partial = Path(os.environ.get("ATTNLAB_BENCH_DIR", "benchmarks/results")) / f"{args.name}.partial.json"
    partial.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
