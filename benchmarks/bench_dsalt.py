"""DSALT kernel vs SDPA causal vs FlexAttention (window-only, window + landmarks): fwd+bwd time
and peak memory vs sequence length.

    python benchmarks/bench_dsalt.py            # B=1, 16 heads, head dim 128, bf16, T = 4K/16K/32K
    python benchmarks/bench_dsalt.py --quick    # tiny CPU smoke run (interpreter, flex forward only)
    python benchmarks/bench_dsalt.py --phases --profile --variants attnlab_dsalt,attnlab_window
        # also: per-phase times of the attnlab rows (landmark selection, forward, backward =
        # fwd+bwd - forward) and a torch.profiler kernel table (device us per fwd+bwd) at every T

Variants (same q, k, v; window 512 = n_min = n_max, 64 landmarks per head, selection block 64):
  sdpa_causal        F.scaled_dot_product_attention(is_causal=True)  (dense reference point)
  flex_window        compiled flex_attention, sliding window 512, no score_mod
  flex_dsalt         compiled flex_attention with the DSALT score_mod + block mask (window + landmarks)
  attnlab_dsalt      the attnlab Triton kernel, including landmark selection and gathers
  attnlab_window     the attnlab kernel with 0 landmarks
  attnlab_dsalt_var  the kernel with learned-size windows in [128, 512] (random), 64 landmarks
  attnlab_dsalt_old, attnlab_window_old
                     a previous version of the kernel module for a same-run comparison, if a copy
                     is at attnlab/ops/dsalt/kernel_old.py (not in the repository: copied there by
                     the device script; launched with the configs its autotuner picked on the H100)
Flex block masks are built outside the timed region (their build time is reported separately);
the attnlab rows include everything (selection, gathers, scatter of landmark gradients).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # CPU smoke run: kernels in the interpreter

from attnlab.bench import time_ms, write_results  # noqa: E402
from attnlab.ops.dsalt import dsalt_attention  # noqa: E402


def _extra(heads, d, window, n_lm, block, dtype, cuda):
    return {"config": dict(batch=1, heads=heads, head_dim=d, window=window, n_landmarks=n_lm, block=block,
                           edge=4.0, dtype=str(dtype), timed="fwd+bwd" if cuda else "cpu smoke (flex: fwd only)")}


# launch configs the session-2/3 kernel's autotuner picked on the H100 at every T (RESULTS.md)
OLD_CONFIGS = {"fwd": (64, 64, 4, 3), "dq": (32, 4, 3), "dkdv": (32, 128, 8, 2, 1), "reduce": (32, 32, 2)}


def _old_kernel():
    """The previous kernel module (attnlab/ops/dsalt/kernel_old.py), if present."""
    try:
        from attnlab.ops.dsalt import kernel_old
    except ImportError:
        return None
    kernel_old.FORCE_CONFIG.update(OLD_CONFIGS)
    return kernel_old


def _phases(name, q, k, v, w, energy, n, window, kw, warmup, reps):
    """Times of the parts of one attnlab call: landmark selection alone, the forward alone."""
    from attnlab.ops.dsalt.kernel import landmark_slots

    out = {}
    if n:
        out["select"] = time_ms(lambda: landmark_slots(energy.detach(), n, kw["block"]), warmup=warmup, repeats=reps)

    def fwd():
        with torch.no_grad():
            dsalt_attention(q, k, v, w, energy, n_max=window, n_landmarks=n, impl="triton", **kw)

    out["fwd"] = time_ms(fwd, warmup=warmup, repeats=reps)
    return out


def _profile(q, k, v, w, energy, do, n, window, kw, cuda, iters=3):
    """Device time per fwd+bwd of each kernel of the attnlab call (torch.profiler), printed as a
    short table; returns {kernel: us per iteration}."""
    from torch.profiler import ProfilerActivity, profile

    def step():
        dsalt_attention(q, k, v, w, energy, n_max=window, n_landmarks=n, impl="triton", **kw).backward(do)

    step()
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=acts) as prof:
        for _ in range(iters):
            step()
        if cuda:
            torch.cuda.synchronize()
    out = {}
    for e in prof.key_averages():
        dev = getattr(e, "self_device_time_total", None)
        if dev is None:
            dev = getattr(e, "self_cuda_time_total", 0)
        if not cuda:
            dev = e.self_cpu_time_total
        if dev > 0 and not e.key.startswith(("_DSALTFn", "Activity", "aten::")):
            out[e.key[:60]] = dev / iters
    print(f"profile: device us per fwd+bwd of attnlab (landmarks {n}) at T={q.shape[2]}: "
          f"total {sum(out.values()):.0f} us", flush=True)
    for name, us in sorted(out.items(), key=lambda kv: -kv[1])[:12]:
        print(f"  {us:9.1f}  {name}", flush=True)
    return out


def _host_ms(step, n=10):
    """Host (enqueue) milliseconds per step: no synchronisation inside, so where this is close to
    the event time the step is launch-bound (CPU), not GPU-bound."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(n):
        step()
    dt = (time.perf_counter() - t0) * 1e3 / n
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return dt


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes (CPU smoke test)")
    ap.add_argument("--lengths", type=str, default=None, help="comma-separated T values")
    ap.add_argument("--variants", type=str, default=None, help="comma-separated subset of variants")
    ap.add_argument("--block", type=int, default=None, help="landmark selection block (default 64)")
    ap.add_argument("--name", type=str, default="dsalt", help="results file name (JSON/PNG)")
    ap.add_argument("--phases", action="store_true", help="attnlab rows: also time selection and forward alone")
    ap.add_argument("--profile", action="store_true", help="kernel tables of attnlab_dsalt / attnlab_window at every T")
    args = ap.parse_args(argv)
    cuda = torch.cuda.is_available()
    dev = "cuda" if cuda else "cpu"
    if args.quick or not cuda:
        heads, d, window, n_lm, block, dtype = 2, 16, 16, 4, 16, torch.float32
        lengths = [64]
        warmup, reps = 0, 1
    else:
        heads, d, window, n_lm, block, dtype = 16, 128, 512, 64, 64, torch.bfloat16
        lengths = [4096, 16384, 32768]
        warmup, reps = 5, 20
    if args.block:
        block = args.block
    if args.lengths:
        lengths = [int(x) for x in args.lengths.split(",")]
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    from attnlab.ops.dsalt.flex import dsalt_block_mask, dsalt_mods

    flex = torch.compile(flex_attention, dynamic=False) if cuda else flex_attention
    names = ["attnlab_dsalt", "attnlab_window", "attnlab_dsalt_var", "sdpa_causal", "flex_window", "flex_dsalt",
             "attnlab_dsalt_old", "attnlab_window_old"]
    if args.variants:
        names = [n for n in names if n in args.variants.split(",")]
    rows = []
    profiles = {}  # kernel tables (device us per fwd+bwd), stored in the JSON's extra
    for t in lengths:
        torch.manual_seed(0)
        q, k, v = (torch.randn(1, heads, t, d, device=dev, dtype=dtype, requires_grad=True) for _ in range(3))
        win_fixed = torch.full((1, heads, t), float(window), device=dev, requires_grad=True)
        win_var = (window / 4 + torch.rand(1, heads, t, device=dev) * (window * 3 / 4)).requires_grad_()
        energy = torch.randn(1, heads, t, device=dev, requires_grad=True)
        do = torch.randn(1, heads, t, d, device=dev, dtype=dtype)
        kw = dict(edge=4.0, block=block)
        row = {"T": t}
        for name in names:
            extra_ms = None
            fwd_only = False
            if name == "sdpa_causal":
                def f():
                    return F.scaled_dot_product_attention(q, k, v, is_causal=True)
            elif name == "flex_window":
                def wmask(b, h, qi, kv):
                    return (kv <= qi) & (qi - kv < window)
                t0 = time.perf_counter()
                bm = create_block_mask(wmask, 1, 1, t, t, device=dev, BLOCK_SIZE=128 if cuda else 16)
                extra_ms = (time.perf_counter() - t0) * 1e3

                def f(bm=bm):
                    if not cuda:  # CPU: forward only, and flex refuses inputs that require grad
                        return flex(q.detach(), k.detach(), v.detach(), block_mask=bm)
                    return flex(q, k, v, block_mask=bm)
                fwd_only = not cuda
            elif name == "flex_dsalt":
                t0 = time.perf_counter()
                # captured windows/energies without grad: the timing compares masks (as the anchors)
                smod, mmod = dsalt_mods(win_fixed.detach(), energy.detach(), n_max=window, n_landmarks=n_lm, groups=1, **kw)
                bm = dsalt_block_mask(mmod, 1, heads, t, dev, 128 if cuda else 16)
                if cuda:
                    torch.cuda.synchronize()
                extra_ms = (time.perf_counter() - t0) * 1e3

                def f(bm=bm, smod=smod):
                    if not cuda:
                        return flex(q.detach(), k.detach(), v.detach(), score_mod=smod, block_mask=bm)
                    return flex(q, k, v, score_mod=smod, block_mask=bm)
                fwd_only = not cuda
            elif name.endswith("_old"):
                old = _old_kernel()
                if old is None:
                    print(f"{name}: no attnlab/ops/dsalt/kernel_old.py here: skipped", flush=True)
                    continue
                n = 0 if name == "attnlab_window_old" else n_lm

                def f(n=n, old=old):
                    return old.dsalt_triton(q, k, v, win_fixed, energy, n_max=window, n_landmarks=n, **kw)
            else:
                n = 0 if name == "attnlab_window" else n_lm
                w = win_var if name == "attnlab_dsalt_var" else win_fixed

                def f(n=n, w=w):
                    return dsalt_attention(q, k, v, w, energy, n_max=window, n_landmarks=n, impl="triton", **kw)

            def step(f=f, fwd_only=fwd_only):
                if fwd_only:  # CPU: flex has no backward there
                    with torch.no_grad():
                        f()
                    return
                out = f()
                out.backward(do)
                for x in (q, k, v, win_fixed, win_var, energy):
                    x.grad = None

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:
                    step()  # compile / warm
                    if cuda:
                        torch.cuda.synchronize()
                        torch.cuda.reset_peak_memory_stats()
                        base = torch.cuda.memory_allocated()
                        step()
                        torch.cuda.synchronize()
                        peak = (torch.cuda.max_memory_allocated() - base) / 2**20
                    else:
                        peak = float("nan")
                    ms = time_ms(step, warmup=warmup, repeats=reps)
                    if cuda:
                        row[f"{name}_host_ms"] = _host_ms(step)
                except Exception as e:  # report, keep going
                    print(f"{name} T={t}: failed: {type(e).__name__}: {str(e)[:300]}", flush=True)
                    ms, peak = float("nan"), float("nan")
            row[f"{name}_ms"] = ms
            row[f"{name}_peak_MiB"] = peak
            if args.phases and name.startswith("attnlab") and not name.endswith("_old") and ms == ms:
                ph = _phases(name, q, k, v, win_var if name == "attnlab_dsalt_var" else win_fixed, energy,
                             0 if name == "attnlab_window" else n_lm, window, kw, warmup, reps)
                for key, val in ph.items():
                    row[f"{name}_{key}_ms"] = val
                print(f"T={t} {name} phases: " + ", ".join(f"{a} {b:.3f} ms" for a, b in ph.items())
                      + f", bwd {ms - ph['fwd']:.3f} ms", flush=True)
            if extra_ms is not None:
                row[f"{name}_mask_build_ms"] = extra_ms
            if fwd_only:
                row[f"{name}_note"] = "forward only (no flex backward on CPU)"
            print(f"T={t} {name}: {ms:.3f} ms (host {row.get(f'{name}_host_ms', float('nan')):.3f} ms), "
                  f"peak {peak:.1f} MiB", flush=True)
            if args.profile and name in ("attnlab_dsalt", "attnlab_window") and ms == ms:
                prof = _profile(q, k, v, win_fixed, energy, do, 0 if name == "attnlab_window" else n_lm, window,
                                kw, cuda)
                profiles[f"{name} T={t}"] = {a: round(b, 1) for a, b in prof.items()}
        if "attnlab_dsalt_ms" in row and "flex_window_ms" in row:
            row["dsalt_vs_flex_window"] = row["attnlab_dsalt_ms"] / row["flex_window_ms"]
        if "attnlab_window_ms" in row and "flex_window_ms" in row:
            row["window_vs_flex_window"] = row["attnlab_window_ms"] / row["flex_window_ms"]
        if "attnlab_dsalt_old_ms" in row and "attnlab_dsalt_ms" in row:
            row["dsalt_old_vs_new"] = row["attnlab_dsalt_old_ms"] / row["attnlab_dsalt_ms"]
        if "attnlab_dsalt_ms" in row and "flex_dsalt_ms" in row:
            row["dsalt_vs_flex_dsalt"] = row["attnlab_dsalt_ms"] / row["flex_dsalt_ms"]
        if "attnlab_dsalt_ms" in row and "sdpa_causal_ms" in row:
            row["sdpa_vs_dsalt"] = row["sdpa_causal_ms"] / row["attnlab_dsalt_ms"]
        rows.append(row)
        write_results(args.name, rows, {**_extra(heads, d, window, n_lm, block, dtype, cuda),
                                        "profiles": profiles})  # partial results
    if cuda:
        from attnlab.ops.dsalt.kernel import tuned_configs

        print("autotuned launch configs:", tuned_configs(), flush=True)
    extra = _extra(heads, d, window, n_lm, block, dtype, cuda)
    if cuda:
        from attnlab.ops.dsalt.kernel import tuned_configs

        extra["tuned_configs"] = tuned_configs()
    path = write_results(args.name, rows, {**extra, "profiles": profiles})
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        for name in names:
            ts = [r["T"] for r in rows]
            if f"{name}_ms" not in rows[0]:
                continue
            axes[0].plot(ts, [r.get(f"{name}_ms", float("nan")) for r in rows], marker="o", label=name)
            axes[1].plot(ts, [r.get(f"{name}_peak_MiB", float("nan")) for r in rows], marker="o", label=name)
        for ax, lab in zip(axes, ["fwd+bwd time (ms)", "peak memory above inputs (MiB)"]):
            ax.set_xlabel("sequence length T")
            ax.set_ylabel(lab)
            ax.set_xscale("log", base=2)
            ax.grid(alpha=0.3)
        axes[0].legend(fontsize=7)
        fig.suptitle(f"DSALT: B=1, H={heads}, D={d}, window {window}, {n_lm} landmarks, {dtype}")
        fig.tight_layout()
        png = Path(path).with_suffix(".png")
        fig.savefig(png, dpi=120)
        print(f"wrote {png}")
    except ImportError:
        print("matplotlib missing: no plot")
    return rows


if __name__ == "__main__":
    main()
