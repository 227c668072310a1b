"""Fused differential attention kernel vs SDPA calls: forward + backward, causal.

    python benchmarks/bench_diff_kernel.py                 # B=1, 16 heads, head dim 128, T=4K,16K, bf16
    python benchmarks/bench_diff_kernel.py --sweep         # also try launch configs first (picks the best)
    python benchmarks/bench_diff_kernel.py --quick         # tiny CPU smoke run (CI)
    python benchmarks/bench_diff_kernel.py --sweep-noise --groups cmd   # noise-once launch configs first
    python benchmarks/bench_diff_kernel.py --groups diff --sweep-hopper --profile   # hopper.py modes/configs first

Variants, one run, ratios against the baseline of their group:
- diff: fused kernels (two full streams, K/V streamed once) vs two SDPA calls sharing V: kernel.py
        (sessions 1-5, "fused triton") and hopper.py (session 6: TMA descriptors, separate or
        atomic dQ; "fused triton hopper.py"), plus hopper.py's kernels on ONE stream next to one
        SDPA call (the rate this Triton reaches on plain attention: the fused kernels' ceiling);
- cmd:  the research notebook's version (two SDPA calls with the noise head expanded to every
        head) vs attnlab's fused per-head kernel (noise head read in place, its map recomputed per
        head) vs noise-once (noise_once.py: signal by SDPA, the shared noise stream computed ONCE
        for all heads by its own kernels, out = A - lam N fused into its epilogue);
- mha:  one SDPA call (the cost of plain attention, for scale).
Writes benchmarks/results/bench_diff_kernel.json (or $ATTNLAB_BENCH_DIR).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

if not torch.cuda.is_available():  # CPU smoke runs: Triton kernels through the interpreter
    os.environ.setdefault("TRITON_INTERPRET", "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from attnlab.bench import time_ms, write_results  # noqa: E402
from attnlab.ops.diff_attention import diff_attention_sdpa  # noqa: E402
from attnlab.testing import rel_err  # noqa: E402


def make(b, h, t, d, dtype, device, cmd):
    g = lambda hh: torch.randn(b, hh, t, d, device=device, dtype=dtype, requires_grad=True)  # noqa: E731
    q1, k1, v = g(h), g(h), g(h)
    q2, k2 = (g(1), g(1)) if cmd else (g(h), g(h))
    lam = (0.2 + 0.5 * torch.rand(h, device=device)).requires_grad_()
    return [q1, k1, q2, k2, v, lam]


def fwd_bwd(fn, ins, dout):
    def run():
        out = fn(*ins)
        torch.autograd.grad(out, ins, dout, allow_unused=True)
    return run


def host_ms(fn, repeats=20):
    """Host time to issue one call of fn (no synchronisation inside the loop; the GPU queue is
    deep enough for these sizes): what bounds a short op when the GPU would be faster."""
    import time

    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    t1 = time.perf_counter()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return (t1 - t0) * 1e3 / repeats


def load_module(path, name="noise_once_compare"):
    """A noise_once.py of another commit (e.g. `git show 9803b85:attnlab/ops/diff_attention/noise_once.py`),
    loaded as a sibling module of attnlab.ops.diff_attention (its relative imports resolve there)."""
    import importlib.util

    full = "attnlab.ops.diff_attention." + name
    spec = importlib.util.spec_from_file_location(full, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[full] = mod
    spec.loader.exec_module(mod)
    return mod


def measure(fn, ins, dout, warmup, repeats, host=False):
    fb = time_ms(fwd_bwd(fn, ins, dout), warmup, repeats)
    with torch.no_grad():
        fw = time_ms(lambda: fn(*ins), warmup, repeats)
    peak = None
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fwd_bwd(fn, ins, dout)()
        torch.cuda.synchronize()
        peak = (torch.cuda.max_memory_allocated() - base) / 2**20
    if host:
        return fb, fw, peak, host_ms(fwd_bwd(fn, ins, dout), repeats=max(repeats, 20) if torch.cuda.is_available() else 2)
    return fb, fw, peak


SWEEP = {
    "fwd": [(128, 64, 8, 3), (64, 64, 4, 3), (128, 32, 8, 3), (128, 64, 8, 2)],
    "bwd_kv": [(32, 64, 4, 2), (64, 64, 8, 2), (32, 128, 8, 2), (16, 64, 4, 2)],
    "bwd_q": [(64, 32, 4, 2), (128, 32, 8, 2), (64, 64, 4, 2), (128, 64, 8, 2)],
    "bwd_kv_atomic": [(32, 128, 8, 2), (64, 64, 8, 2), (64, 128, 8, 2), (64, 64, 4, 3)],
    "cmd_fwd": [(64, 64, 8, 2), (64, 32, 8, 2), (128, 64, 8, 2), (64, 64, 4, 3)],
    "cmd_bwd": [(32, 32, 8, 1), (32, 64, 8, 1), (16, 32, 4, 1), (32, 32, 4, 2)],
}


SWEEP_NOISE = {  # noise_once.py: fwd/dv (BM, BN, G, warps, stages, major),
    # dk (BM, BN, S, CHUNK, warps, stages, order, kc; session 5's kernel, swept only where it runs: wide heads),
    # lean (BM, BN, NT, warps, stages, order, kc, split, early_k, acc; the default dK kernel); the first of
    # each list is the default (session 5, call 1, H100: benchmarks/results/s5/s5_run1.json; lean: session 6)
    "fwd": [(128, 64, 2, 8, 3, 1), (64, 64, 4, 16, 3, 1), (128, 128, 2, 16, 2, 1), (128, 64, 2, 8, 4, 1)],
    "dk": [(128, 128, 1, 128, 8, 3, 8, 64), (256, 128, 1, 256, 16, 2, 8, 64),
           (256, 128, 1, 256, 16, 3, 8, 32), (256, 128, 1, 512, 16, 2, 8, 64), (128, 128, 1, 128, 8, 4, 8, 32)],
    "dv": [(64, 128, 2, 8, 3, 1), (64, 64, 4, 16, 3, 1), (128, 128, 2, 16, 2, 1), (64, 128, 2, 8, 4, 1)],
    "lean": [(128, 128, 2, 8, 3, 8, 64, 1, True, True), (128, 128, 2, 8, 4, 8, 64, 1, True, False),
             (128, 128, 1, 8, 3, 8, 64, 1, False, False), (64, 128, 2, 8, 3, 8, 64, 1, False, False, 128)],
}


class NoiseState:
    """A noise-once variant of this tree: module flags (ZERO_IN_FWD, LEAN_MAX_WIDTH) and launch configs
    held for a whole fwd+bwd (the backward reads them too), e.g. NoiseState(NO, "loop") = session 5's
    dK kernel (the wide-head path) at 128-wide heads."""

    FLAGS = ("ZERO_IN_FWD", "LEAN_MAX_WIDTH", "GLUON_DK", "GLUON_DK_CONFIG")

    def __init__(self, NO, mode=None, flags=None, **configs):
        self.NO, self.mode, self.configs = NO, mode, configs
        self.flags = dict(flags or {})
        if mode == "loop":
            self.flags["LEAN_MAX_WIDTH"] = 0
        elif mode not in (None, "lean"):
            raise ValueError(f"noise-once dK kernel {mode!r}: 'lean' (the default) or 'loop'")

    def __enter__(self):
        self.saved = {f: getattr(self.NO, f) for f in self.FLAGS if hasattr(self.NO, f)}, dict(self.NO.CONFIGS)
        for f, val in self.flags.items():
            setattr(self.NO, f, val)
        self.NO.CONFIGS.update(self.configs)

    def __exit__(self, *exc):
        for f, val in self.saved[0].items():
            setattr(self.NO, f, val)
        self.NO.CONFIGS.clear()
        self.NO.CONFIGS.update(self.saved[1])


def parse_noise_variant(NO, spec):
    """"label=MODE[:name=JSON]..." -> (label, NoiseState): MODE the dK kernel ("lean", "loop", or empty:
    the default); name a key of CONFIGS (a JSON list: its launch config) or a module flag (ZERO_IN_FWD:
    JSON true/false; LEAN_MAX_WIDTH: an int)."""
    head, *parts = spec.split(":")
    label, _, mode = head.rpartition("=")  # the label may hold "=" (e.g. "NT=1"), the mode does not
    configs, flags = {}, {}
    for part in parts:
        name, _, val = part.partition("=")
        if name in NO.CONFIGS:
            configs[name] = tuple(json.loads(val))
        elif name in NoiseState.FLAGS:
            flags[name] = json.loads(val)
        else:
            raise ValueError(f"--noise-variants: unknown field {name!r} in {spec!r}")
    return label, NoiseState(NO, mode or None, flags, **configs)


def paired(fn_a, fn_b, state_a, state_b, pairs, warmup):
    """Interleaved paired timing of two fwd+bwd callables: per pair both run back to back (CUDA events,
    synchronised after each call), in alternating order (a b, b a, ...), so that both see the same GPU
    clock and power state; returns (times a, times b) in ms."""
    def one(fn, st):
        with st:
            if not torch.cuda.is_available():
                t0 = time.perf_counter()
                fn()
                return (time.perf_counter() - t0) * 1e3
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            return start.elapsed_time(end)

    for _ in range(warmup):
        one(fn_a, state_a)
        one(fn_b, state_b)
    ta, tb = [], []
    for i in range(pairs):
        if i % 2 == 0:
            ta.append(one(fn_a, state_a))
            tb.append(one(fn_b, state_b))
        else:
            tb.append(one(fn_b, state_b))
            ta.append(one(fn_a, state_a))
    return ta, tb


def quantiles(xs):
    """(25th percentile, median, 75th percentile)."""
    q = statistics.quantiles(xs, n=4) if len(xs) > 1 else [xs[0]] * 3
    return q[0], statistics.median(xs), q[2]


def sweep_noise(NO, b, h, t, d, dtype, device, warmup, repeats):
    """Try noise-once launch configs, one kernel family at a time, by fwd+bwd time of the whole op;
    a config whose gradients differ from the default's by more than 2e-2 (rel. err) is rejected."""
    log = []
    ins = make(b, h, t, d, dtype, device, True)
    dout = torch.randn(b, h, t, d, device=device, dtype=dtype)
    fn = NO.cmd_attention_noise_once
    out = fn(*ins)
    want = [out.detach()] + list(torch.autograd.grad(out, ins, dout))
    for name, cands in SWEEP_NOISE.items():
        if (name == "dk") != (NO._dk_mode(d, d) == "loop"):  # only the configs of the dK kernel in use
            continue
        best = None
        for cfg in cands:
            NO.CONFIGS[name] = cfg
            try:
                out = fn(*ins)
                got = [out.detach()] + list(torch.autograd.grad(out, ins, dout))
                err = max(rel_err(x, y) for x, y in zip(got, want))
                ms = time_ms(fwd_bwd(fn, ins, dout), warmup, repeats)
            except Exception as e:  # out of resources etc.
                print(f"sweep noise {name} {cfg}: failed ({type(e).__name__}: {str(e)[:100]})", flush=True)
                continue
            ok = err <= 2e-2
            print(f"sweep noise {name} {cfg}: {ms:.3f} ms, max rel err vs default {err:.2e}"
                  + ("" if ok else " REJECTED"), flush=True)
            log.append({"kernel": "noise_" + name, "config": list(cfg), "ms": ms, "T": t, "err_vs_default": err})
            if ok and (best is None or ms < best[1]):
                best = (cfg, ms)
        NO.CONFIGS[name] = best[0] if best else cands[0]
    return log


def profile_noise(NO, b, h, t, d, dtype, device, n=5, label="default", state=None):
    """GPU time per kernel of one noise-once fwd+bwd (torch.profiler, mean over n calls), with the
    achieved TFLOP/s of the matmul kernels (units of one causal T x T x d product, 2 T^2 d / 2 FLOP:
    cuDNN forward 2H, backward 5H; noise forward and dV H + H/G each, dK/dQ H + 3 x splits)."""
    from torch.profiler import ProfilerActivity, profile

    ins = make(b, h, t, d, dtype, device, True)
    dout = torch.randn(b, h, t, d, device=device, dtype=dtype)
    run = fwd_bwd(NO.cmd_attention_noise_once, ins, dout)
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    with state or contextlib.nullcontext():
        run()
        sync()
        with profile(activities=[ProfilerActivity.CUDA if torch.cuda.is_available() else ProfilerActivity.CPU]) as p:
            for _ in range(n):
                run()
            sync()
        g = NO._config("fwd", h, d)[2]
        split = NO._bwd_plan(h, d, d)[1]
    unit = b * t * t * d  # FLOP of one causal T x T x d product (2 T^2 d / 2)
    units = {"_noise_fwd_kernel": h + h / g, "_noise_bwd_dv_kernel": h + h / g, "_noise_bwd_dk": h + 3 * split,
             "fprop": 2 * h, "dgrad": 5 * h, "bprop": 5 * h}
    rows = sorted(((e.key[:60], e.self_device_time_total / n / 1e3, e.count // n) for e in p.key_averages()),
                  key=lambda r: -r[1])
    print(f"noise-once ({label}) kernels, T={t} (ms per fwd+bwd, total {sum(r[1] for r in rows):.3f}):")
    out = []
    for k, ms, c in rows:
        u = next((x for key, x in units.items() if key in k), None)
        tf = u * unit / (ms * 1e9) if u and ms > 0 else None
        out.append({"T": t, "variant": label, "kernel": k, "ms": ms, "count": c, "units": u, "TFLOPs": tf})
    for r in out[:12]:
        tf = f"  {r['TFLOPs']:6.0f} TFLOP/s ({r['units']:g} units)" if r["TFLOPs"] else ""
        print(f"   {r['ms']:8.3f}  x{r['count']}  {r['kernel']}{tf}")
    return out


# hopper.py candidates, tried in stages (each keeps the best so far): forward (forward-only time), then the
# backward modes with their launch configs (fwd+bwd time), then descriptors vs pointer loads.
SWEEP_HOPPER = {
    "fwd": [("interleaved", "fwd", (128, 64, 8, 3)), ("sequential", "fwd_seq", (128, 64, 8, 4)),
            ("interleaved", "fwd", (128, 32, 8, 4))],
    "bwd": [  # (mode, {config name: config}, dQ kernel); "best": keep the best so far
        ("fused-separate", {"bwd_kv": (32, 64, 8, 2), "bwd_q": (64, 32, 4, 2)}, "hopper"),
        ("fused-separate", {"bwd_kv": (16, 64, 8, 2), "bwd_q": (64, 32, 4, 2)}, "hopper"),
        ("fused-separate", {"bwd_kv": (16, 128, 8, 2), "bwd_q": (64, 32, 4, 2)}, "hopper"),
        ("fused-separate", {"bwd_kv": (32, 128, 8, 2), "bwd_q": (64, 32, 4, 2)}, "hopper"),
        ("fused-separate", {"bwd_kv": "best", "bwd_q": (128, 32, 8, 2)}, "hopper"),
        ("fused-separate", {"bwd_kv": "best", "bwd_q_v1": (64, 32, 4, 2)}, "v1"),
        ("split-separate", {"bwd_kv1": (32, 128, 8, 2), "bwd_q": "best"}, "best"),
        ("split-separate", {"bwd_kv1": (64, 128, 8, 2), "bwd_q": "best"}, "best"),
        ("split", {"bwd_split": (64, 128, 8, 2)}, "best"),
    ],
}


def sweep_hopper(Hp, b, h, t, d, dtype, device, warmup, repeats):
    """Pick hopper.py's forward mode, backward mode and launch configs by measured time (the
    module's globals are left at the winners); a candidate whose output or gradients differ from
    the SDPA path's by more than 2e-2 (rel. err) is rejected."""
    log = []
    ins = make(b, h, t, d, dtype, device, False)
    dout = torch.randn(b, h, t, d, device=device, dtype=dtype)
    fn = Hp.diff_attention_hopper
    ref = diff_attention_sdpa(*ins)
    want = [ref.detach()] + list(torch.autograd.grad(ref, ins, dout))

    def err():
        out = fn(*ins)
        got = [out.detach()] + list(torch.autograd.grad(out, ins, dout))
        return max(rel_err(x.float(), y.float()) for x, y in zip(got, want))

    best = None
    for mode, name, cfg in SWEEP_HOPPER["fwd"]:
        saved = (Hp.FWD_MODE, dict(Hp.CONFIGS))
        Hp.FWD_MODE, Hp.CONFIGS[name] = mode, cfg
        try:
            with torch.no_grad():
                ms = time_ms(lambda: fn(*ins), warmup, repeats)
        except Exception as e:
            print(f"sweep hopper fwd {mode} {cfg}: failed ({type(e).__name__}: {str(e)[:100]})", flush=True)
            Hp.FWD_MODE, Hp.CONFIGS = saved[0], saved[1]
            continue
        print(f"sweep hopper fwd {mode} {cfg}: {ms:.3f} ms (forward)", flush=True)
        log.append({"kernel": "hopper_fwd", "mode": mode, "config": list(cfg), "fwd_ms": ms, "T": t})
        if best is None or ms < best[1]:
            best = ((mode, name, cfg), ms)
        Hp.FWD_MODE, Hp.CONFIGS = saved[0], saved[1]
    if best:
        mode, name, cfg = best[0]
        Hp.FWD_MODE, Hp.CONFIGS[name] = mode, cfg
    best = None  # candidates build on the best so far ("best" keeps its value)
    for mode, cfgs, qk in SWEEP_HOPPER["bwd"]:
        saved = (Hp.BWD_MODE, Hp.Q_KERNEL, dict(Hp.CONFIGS))
        Hp.BWD_MODE = mode
        Hp.Q_KERNEL = saved[1] if qk == "best" else qk
        for k, v in cfgs.items():
            if v != "best":
                Hp.CONFIGS[k] = v
        label = f"{mode} {cfgs} dQ kernel {Hp.Q_KERNEL}"
        try:
            e = err()
            ms = time_ms(fwd_bwd(fn, ins, dout), warmup, repeats)
        except Exception as ex:
            print(f"sweep hopper bwd {label}: failed ({type(ex).__name__}: {str(ex)[:100]})", flush=True)
            Hp.BWD_MODE, Hp.Q_KERNEL, Hp.CONFIGS = saved
            continue
        ok = e <= 2e-2
        print(f"sweep hopper bwd {label}: {ms:.3f} ms fwd+bwd, max rel err vs sdpa {e:.2e}"
              + ("" if ok else " REJECTED"), flush=True)
        log.append({"kernel": "hopper_bwd", "mode": mode, "configs": {k: list(Hp.CONFIGS[k]) for k in cfgs},
                    "q_kernel": Hp.Q_KERNEL, "fwd_bwd_ms": ms, "err_vs_sdpa": e, "T": t})
        if ok and (best is None or ms < best):
            best = ms  # keep this state
        else:
            Hp.BWD_MODE, Hp.Q_KERNEL, Hp.CONFIGS = saved
    print(f"sweep hopper: kept fwd {Hp.FWD_MODE}, bwd {Hp.BWD_MODE}, dQ kernel {Hp.Q_KERNEL}, {Hp.CONFIGS}", flush=True)
    res = {}
    for desc in ("1", "0"):  # TMA descriptors vs pointer loads (host cost vs copy engine)
        Hp.USE_DESC = desc
        res[desc] = time_ms(fwd_bwd(fn, ins, dout), warmup, repeats)
        print(f"sweep hopper USE_DESC={desc}: {res[desc]:.3f} ms fwd+bwd", flush=True)
        log.append({"kernel": "hopper_desc", "config": desc, "fwd_bwd_ms": res[desc], "T": t})
    Hp.USE_DESC = "auto" if res["1"] <= res["0"] else "0"
    return log


def profile_kernels(label, fn, ins, dout, n=5):
    """GPU time per kernel of one fwd+bwd (torch.profiler, mean over n calls)."""
    from torch.profiler import ProfilerActivity, profile

    run = fwd_bwd(fn, ins, dout)
    run()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as p:
        for _ in range(n):
            run()
        torch.cuda.synchronize()
    rows = sorted(((e.key[:60], e.self_device_time_total / n / 1e3, e.count // n) for e in p.key_averages()
                   if e.self_device_time_total > 0), key=lambda r: -r[1])
    t = ins[0].shape[2]
    print(f"{label} kernels, T={t} (ms per fwd+bwd, total {sum(r[1] for r in rows):.3f}):")
    for k, ms, c in rows[:10]:
        print(f"   {ms:8.3f}  x{c}  {k}")
    return [{"T": t, "variant": label, "kernel": k, "ms": ms, "count": c} for k, ms, c in rows]


def sweep(K, b, h, t, d, dtype, device, warmup, repeats, only=None):
    """Try launch configs one kernel family at a time (others at their current setting)."""
    from attnlab.ops.diff_attention.kernel import diff_attention_triton

    log = []
    for name, cands in SWEEP.items():
        if only is not None and name not in only:
            continue
        cmd = name.startswith("cmd")
        # the dQ-by-atomics key-block kernel (8 matmuls per tile, no dQ pass) has its own config
        saved_dq = K.DQ_MODE
        K.DQ_MODE = "atomic" if name == "bwd_kv_atomic" else saved_dq
        ins = make(b, h, t, d, dtype, device, cmd)
        dout = torch.randn(b, h, t, d, device=device, dtype=dtype)
        best = None
        for cfg in cands:
            K.CONFIGS[name] = cfg
            try:
                if name.endswith("fwd"):
                    with torch.no_grad():
                        ms = time_ms(lambda: diff_attention_triton(*ins), warmup, repeats)
                else:
                    ms = time_ms(fwd_bwd(diff_attention_triton, ins, dout), warmup, repeats)
            except Exception as e:  # out of resources etc.
                print(f"sweep {name} {cfg}: failed ({type(e).__name__}: {str(e)[:100]})")
                continue
            print(f"sweep {name} {cfg}: {ms:.3f} ms", flush=True)
            log.append({"kernel": name, "config": list(cfg), "ms": ms})
            if best is None or ms < best[1]:
                best = (cfg, ms)
        K.DQ_MODE = saved_dq
        if best:
            K.CONFIGS[name] = best[0]
    # dQ strategy and CMD strategy
    if only is not None and "modes" not in only:
        return log
    for attr, opts, cmd in (("DQ_MODE", ("atomic", "separate"), False), ("CMD_MODE", ("pair", "generic"), True)):
        ins = make(b, h, t, d, dtype, device, cmd)
        dout = torch.randn(b, h, t, d, device=device, dtype=dtype)
        res = {}
        for o in opts:
            setattr(K, attr, o)
            res[o] = time_ms(fwd_bwd(diff_attention_triton, ins, dout), warmup, repeats)
            print(f"sweep {attr}={o}: {res[o]:.3f} ms", flush=True)
            log.append({"kernel": attr, "config": o, "ms": res[o]})
        setattr(K, attr, min(res, key=res.get))
    return log


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--T", type=int, nargs="+", default=[4096, 16384])
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--sweep", action="store_true", help="try launch configs first, keep the best")
    ap.add_argument("--sweep-kernels",
                    help="comma list of families to sweep (fwd,bwd_kv,bwd_kv_atomic,bwd_q,cmd_fwd,cmd_bwd,modes)")
    ap.add_argument("--sweep-noise", action="store_true", help="try noise-once launch configs first")
    ap.add_argument("--sweep-T", type=int, help="sequence length of the noise-once sweep (default: the smallest --T)")
    ap.add_argument("--profile-noise", action="store_true", help="print the noise-once kernels' GPU times")
    ap.add_argument("--profile-variants", action="store_true", help="with --profile-noise: the noise variants too")
    ap.add_argument("--sweep-hopper", action="store_true", help="pick hopper.py's modes and configs first")
    ap.add_argument("--profile", action="store_true", help="print the diff group's GPU times per kernel")
    ap.add_argument("--groups", default="diff,cmd", help="comma list of groups to time (diff, cmd)")
    ap.add_argument("--configs", help="JSON of launch configs to use (from a --sweep run)")
    ap.add_argument("--compare-module", help="path of another noise_once.py (e.g. session 4's) to time as a variant")
    ap.add_argument("--compare-label", default="noise-once, compared module")
    ap.add_argument("--host", action="store_true", help="also the host time to issue one fwd+bwd")
    ap.add_argument("--rounds", type=int, default=1,
                    help="time fwd+bwd of every variant this many times round robin; rows give the median "
                         "and the spread (fwd, memory, host from the first round)")
    ap.add_argument("--paired", type=int, default=0,
                    help="cmd group: also time each candidate against the baseline in N interleaved pairs "
                         "(alternating order, one call each); rows get the median ratio and its quartiles")
    ap.add_argument("--cooldown", type=float, default=0.0,
                    help="seconds of GPU idle between rounds and before each paired series (power-capped GPUs)")
    ap.add_argument("--noise-variants", nargs="*", default=[],
                    help='more noise-once variants of this tree, "label=MODE[:name=JSON]...", e.g. '
                         '"loop dK=loop", "lean nt1=lean:lean=[128,128,1,8,3,8,64,1,false,false]" or '
                         '"memset=:ZERO_IN_FWD=false"')
    ap.add_argument("--skip-fused", action="store_true", help="leave out the generic fused kernel (sessions 1-3)")
    ap.add_argument("--quick", action="store_true", help="tiny CPU smoke run")
    ap.add_argument("--name", default="bench_diff_kernel")
    args = ap.parse_args(argv)

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = getattr(torch, args.dtype)
    warmup, repeats = 5, 20
    if args.quick:
        args.T, args.heads, args.head_dim, warmup, repeats = [32], 2, 16, 1, 2
        if device == "cpu":
            dtype = torch.float32
    b, h, d = args.batch, args.heads, args.head_dim

    from attnlab.ops.diff_attention import triton_available

    K = None
    if triton_available():
        from attnlab.ops.diff_attention import kernel as K
        from attnlab.ops.diff_attention.kernel import diff_attention_triton
    if K is not None and args.configs:
        saved = json.load(open(args.configs))
        K.CONFIGS.update({k: tuple(v) for k, v in saved["configs"].items()})
        K.DQ_MODE, K.CMD_MODE = saved["dq_mode"], saved["cmd_mode"]
    sweep_log = []
    if K is not None and args.sweep and device == "cuda":
        only = set(args.sweep_kernels.split(",")) if args.sweep_kernels else None
        sweep_log = sweep(K, b, h, min(args.T), d, dtype, device, warmup, repeats, only)
    Hp = None
    if K is not None:
        from attnlab.ops.diff_attention import hopper as Hp
    if Hp is not None and args.sweep_hopper and device == "cuda":
        sweep_log += sweep_hopper(Hp, b, h, args.sweep_T or max(args.T), d, dtype, device, warmup, repeats)
    NO = None
    if K is not None:
        from attnlab.ops.diff_attention import noise_once as NO
    OLD = load_module(args.compare_module) if K is not None and args.compare_module else None
    if NO is not None and args.sweep_noise and device == "cuda":
        sweep_log += sweep_noise(NO, b, h, args.sweep_T or min(args.T), d, dtype, device, warmup, repeats)

    def one_sdpa(q1, k1, q2, k2, v, lam):
        return F.scaled_dot_product_attention(q1, k1, v, is_causal=True)

    def one_triton(q1, k1, q2, k2, v, lam):
        return Hp.flash_single(q1, k1, v)

    rows, profiles = [], []
    groups = [g for g in ("diff", "cmd") if g in args.groups.split(",")]
    for t, group in itertools.product(args.T, groups):
        cmd = group == "cmd"
        ins = make(b, h, t, d, dtype, device, cmd)
        dout = torch.randn(b, h, t, d, device=device, dtype=dtype)
        variants = [("sdpa x2 (noise expanded, notebook)" if cmd else "sdpa x2", diff_attention_sdpa)]
        if K is not None and not args.skip_fused:
            variants.append(("fused triton", diff_attention_triton))
        if Hp is not None and not cmd:
            variants.append(("fused triton hopper.py", Hp.diff_attention_hopper))
        if OLD is not None and cmd:
            variants.append((args.compare_label, OLD.cmd_attention_noise_once))
        states = {}
        if NO is not None and cmd:
            variants.append(("noise-once (sdpa signal + shared noise kernel)", NO.cmd_attention_noise_once))
            for spec in args.noise_variants:
                label, st = parse_noise_variant(NO, spec)
                variants.append(("noise-once, " + label, NO.cmd_attention_noise_once))
                states["noise-once, " + label] = st
        variants.append(("sdpa x1 (plain attention)", one_sdpa))
        if Hp is not None and not cmd:
            variants.append(("triton x1 (hopper.py on one stream)", one_triton))
        with torch.no_grad():
            ref = diff_attention_sdpa(*ins)
        first, times = {}, {label: [] for label, _ in variants}
        for r in range(args.rounds):
            if r and args.cooldown and device == "cuda":
                torch.cuda.synchronize()
                time.sleep(args.cooldown)
            # odd rounds in reverse order: no variant always runs right after the same neighbour
            for label, fn in (variants if r % 2 == 0 else variants[::-1]):
                with states.get(label, contextlib.nullcontext()):
                    if r == 0:
                        first[label] = measure(fn, ins, dout, warmup, repeats, host=args.host)
                        times[label].append(first[label][0])
                    else:
                        times[label].append(time_ms(fwd_bwd(fn, ins, dout), warmup, repeats))
        base = None
        for label, fn in variants:
            res = first[label]
            fb, fw, peak = statistics.median(times[label]), res[1], res[2]
            base = base or (fb, fw)
            row = {"T": t, "group": group, "variant": label, "fwd_bwd_ms": fb, "fwd_ms": fw,
                   "ratio_fwd_bwd": fb / base[0], "ratio_fwd": fw / base[1]}
            if args.rounds > 1:
                row["fwd_bwd_rounds_ms"] = times[label]
                row["fwd_bwd_min_ms"], row["fwd_bwd_max_ms"] = min(times[label]), max(times[label])
            if args.host:
                row["host_ms"] = res[3]
            if peak is not None:
                row["peak_MiB"] = peak
            if label.startswith(("fused", "noise-once")) or fn is getattr(OLD, "cmd_attention_noise_once", 0):
                with states.get(label, contextlib.nullcontext()), torch.no_grad():
                    row["rel_err_vs_sdpa"] = rel_err(fn(*ins), ref)
            rows.append(row)
            print(row, flush=True)
        if args.paired and cmd:  # each candidate against the baseline, interleaved call by call
            base_label, base_fn = variants[0]
            null = contextlib.nullcontext()
            for label, fn in variants[1:]:
                if label.startswith("sdpa x1"):
                    continue
                if args.cooldown and device == "cuda":
                    torch.cuda.synchronize()
                    time.sleep(args.cooldown)
                ta, tb = paired(fwd_bwd(fn, ins, dout), fwd_bwd(base_fn, ins, dout), states.get(label, null), null,
                                args.paired, warmup)
                ratios = [x / y for x, y in zip(ta, tb)]
                q25, med, q75 = quantiles(ratios)
                row = next(r for r in rows if r["T"] == t and r["group"] == group and r["variant"] == label)
                row.update({"paired_pairs": args.paired, "paired_ratio_median": med, "paired_ratio_q25": q25,
                            "paired_ratio_q75": q75, "paired_ms": statistics.median(ta),
                            "paired_base_ms": statistics.median(tb),
                            "paired_ratio_of_medians": statistics.median(ta) / statistics.median(tb)})
                print(f"T={t} paired x{args.paired} {label[:48]:48s} ratio median {med:.3f} (IQR {q25:.3f}-{q75:.3f}),"
                      f" {statistics.median(ta):.3f} vs {statistics.median(tb):.3f} ms", flush=True)
        if args.profile and device == "cuda" and not cmd:
            for label, fn in variants:
                if label.startswith(("sdpa x2", "fused triton")):
                    profiles.extend(profile_kernels(label, fn, ins, dout))
    if args.rounds > 1:  # the ratio per round (each round's variants ran back to back) and its spread
        for t in args.T:
            rr = [r for r in rows if r["T"] == t and r["group"] == "cmd" and "fwd_bwd_rounds_ms" in r]
            if not rr:
                continue
            nb = rr[0]["fwd_bwd_rounds_ms"]
            for r in rr[1:]:
                ratios = [x / y for x, y in zip(r["fwd_bwd_rounds_ms"], nb)]
                r["ratio_per_round"] = ratios
                r["ratio_per_round_median"] = statistics.median(ratios)
                print(f"T={t} {r['variant'][:48]:48s} median {r['fwd_bwd_ms']:8.3f} ms  ratio {r['ratio_fwd_bwd']:.3f}"
                      f"  per round {min(ratios):.3f}..{max(ratios):.3f} (median {statistics.median(ratios):.3f})",
                      flush=True)
    extra = {"shape": {"B": b, "H": h, "head_dim": d, "dtype": str(dtype)}}
    if NO is not None and args.profile_noise and device == "cuda":
        extra["noise_once_profile"] = [r for t in args.T for r in profile_noise(NO, b, h, t, d, dtype, device)]
        for spec in args.noise_variants if args.profile_variants else []:
            label, st = parse_noise_variant(NO, spec)
            extra["noise_once_profile"] += [r for t in args.T
                                            for r in profile_noise(NO, b, h, t, d, dtype, device, label=label, state=st)]
    if profiles:
        extra["profile"] = profiles
    if Hp is not None:
        extra["hopper"] = {"configs": {k: list(v) for k, v in Hp.CONFIGS.items()}, "fwd_mode": Hp.FWD_MODE,
                           "bwd_mode": Hp.BWD_MODE, "q_kernel": Hp.Q_KERNEL, "use_desc": Hp.USE_DESC}
    if K is not None:
        extra["configs"] = {k: list(v) for k, v in K.CONFIGS.items()}
        extra["dq_mode"], extra["cmd_mode"] = K.DQ_MODE, K.CMD_MODE
        extra["sweep"] = sweep_log
    if NO is not None:
        extra["noise_once_configs"] = {k: list(v) for k, v in NO.CONFIGS.items()}
    write_results(args.name, rows, extra)


if __name__ == "__main__":
    main()
