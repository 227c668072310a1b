"""DSALT A/B on the device (sessions 6-7): one process, every variant on the same inputs, round robin
(median of rounds, each the median of 10 CUDA-event timings after 2 warm-ups), host enqueue times,
peak memory, optionally the kernel timeline at the longest length (flex's kernels included).

--set lead: this tree's defaults against flex window-only, attnlab window-only and the session-5
landmark path (lm_bwd "atomic", the dQ kernel's landmark pass). --set s7: the same plus session 7's
candidates (benchmarks/RESULTS.md, "Session 7: DSALT"); --set s7b: round 2's (the dK/dV kernel with
and without the stored window minima); --set s7c: the lead's check of the T >= 32K path from 16K on; --set s8c: the lean landmark backward
(OPTS["lm_lean"], session 8); --set s9q: the window dQ pass in Gluon (OPTS["gluon_dq"], session 9; --gq-ws NAME adds a
gluon_dq.CONFIGS entry; the warp-specialised ws* entries were removed at the session-9 merge); --set s9k: the window dK/dV through the Gluon kernel
(OPTS["gluon_dkdv"], session 9; default config and the one-barrier-less "lean" config); --set s9: the lead's
session-9 A/B of both Gluon passes at every length;
session 8's sets s8 / s8b (two landmark backward kernels; then, under the same names, the selection
beside the forward through PDL) timed options that were no faster and were removed (code at commits
3ef7b56 and 1560476; figures in benchmarks/RESULTS.md, "Session 8: DSALT landmark backward" / "PDL
selection"). The session-6 sets (call1 / final) timed
options that session 7 removed; their figures stay in RESULTS.md.

    python benchmarks/device_runs/dsalt_s6_ab.py --set lead --lengths 32768,16384,4096 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from attnlab.bench import time_ms  # noqa: E402
from attnlab.ops.dsalt import dsalt_attention  # noqa: E402
from attnlab.ops.dsalt import kernel as K  # noqa: E402

S5 = {"lm_bwd": "atomic", "lm_dq": False, "fwd_split": False}  # the session-5 landmark path
CORE = ("flex_window", "window", "dsalt", "dsalt_s5", "window_4loop", "dsalt_4loop", "dsalt_u")


def host_ms(step, n=10):
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(n):
        step()
    dt = (time.perf_counter() - t0) * 1e3 / n
    torch.cuda.synchronize()
    return dt


def timeline(step, label):
    """Kernels of one synchronised step: (name, start us from the step's start, duration us)."""
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        step()
        torch.cuda.synchronize()
    evs = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    cpu0 = min(e.time_range.start for e in prof.events() if e.device_type == torch.autograd.DeviceType.CPU)
    evs.sort(key=lambda e: e.time_range.start)
    rows = [(e.name[:60], e.time_range.start - cpu0, e.time_range.end - e.time_range.start) for e in evs]
    busy = sum(r[2] for r in rows)
    span = rows[-1][1] + rows[-1][2] if rows else 0
    print(f"timeline {label}: first kernel at {rows[0][1]:.0f} us, last end {span:.0f} us, busy {busy:.0f} us",
          flush=True)
    prev = 0.0
    for name, st, du in rows:
        print(f"   {st:8.0f} (+gap {st - prev:6.0f}) {du:7.0f}  {name}", flush=True)
        prev = st + du
    return {"first": rows[0][1], "span": span, "busy": busy, "kernels": rows}


U = {"loop1_fwd": True, "fwd_split": False}  # the fused one-loop forward with its landmark iterations
TIMELINES = ("flex_window", "window", "dsalt", "dsalt_4loop", "dsalt_u", "dsalt_nowmin", "dsalt_lean",
             "dsalt_gq", "dsalt_gq_ws", "dsalt_gluon_dkdv", "dsalt_tri", "dsalt_dkdv", "dsalt_both")


def s7_variants(mk, n_lm):
    """Session 7's candidates (after call 2; the one-loop dQ kernel of calls 1-2 was removed):
    {name: step}: the four-loop window forward under the split ("4loop", the session-6 default),
    the fused one-loop forward at every T ("u")."""
    return {
        "window_4loop": mk(0, {"loop1_fwd": False}),
        "dsalt_4loop": mk(n_lm, {"loop1_fwd": False}),
        "dsalt_u": mk(n_lm, U),
    }


def s7b_variants(mk, n_lm):
    """Session 7 round 2: the dK/dV kernel without the window minima stored by the dQ kernel
    (dkdv_wmin off: the session-7 round-1 kernel). Call 1 of round 2 also timed the options
    removed after it (the log2-r dK/dV scores, forced 32 x 128 dK/dV tiles, 128-row dQ tiles):
    benchmarks/RESULTS.md, "Session 7 round 2: DSALT"."""
    off = {"dkdv_wmin": False}
    return {"window_nowmin": mk(0, off), "dsalt_nowmin": mk(n_lm, off),
            "dsalt_l1": mk(n_lm, {"loop1_fwd": True})}  # below 32K: the fused one-loop forward


def s7c_variants(mk, n_lm):
    """Session 7, lead: the T >= 32K defaults (selection on a side stream, the split forward with the one-loop
    window kernel) from 16K on ("split16"), and the fused one-loop forward ("u")."""
    return {"dsalt_split16": mk(n_lm, {"split_min_t": 16384}), "dsalt_u": mk(n_lm, U)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lengths", default="32768,16384,4096")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default=os.environ.get("ATTNLAB_BENCH_DIR", "."))
    ap.add_argument("--set", default="lead", choices=["lead", "s7", "s7b", "s7c", "s8c", "s9q", "s9k", "s9"])
    ap.add_argument("--gq-ws", default="", help="s9q: also a gluon_dq config from gluon_dq.CONFIGS (e.g. ws3)")
    ap.add_argument("--timeline", action="store_true")
    ap.add_argument("--full-from", type=int, default=8192, help="every variant only where T >= this")
    ap.add_argument("--quick", action="store_true", help="tiny CPU smoke run (interpreter), no timing")
    args = ap.parse_args()
    if args.quick:
        return quick()
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    flex = torch.compile(flex_attention, dynamic=False)
    heads, d, window, n_lm, block = 16, 128, 512, 64, 64
    base_opts = dict(K.OPTS)
    res = {}
    for t in [int(x) for x in args.lengths.split(",")]:
        torch.manual_seed(0)
        q, k, v = (torch.randn(1, heads, t, d, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
        win = torch.full((1, heads, t), float(window), device="cuda", requires_grad=True)
        e = torch.randn(1, heads, t, device="cuda", requires_grad=True)
        do = torch.randn(1, heads, t, d, device="cuda", dtype=torch.bfloat16)
        bm = create_block_mask(lambda b, h, qi, kv: (kv <= qi) & (qi - kv < window), 1, 1, t, t, device="cuda",
                               BLOCK_SIZE=128)

        def mk(n, opts=None, force=None):
            def step():
                if opts:
                    K.OPTS.update(opts)
                if force:
                    K.FORCE_CONFIG.update(force)
                out = dsalt_attention(q, k, v, win, e, n_max=window, n_landmarks=n, edge=4.0, block=block,
                                      impl="triton")
                out.backward(do)
                for x in (q, k, v, win, e):
                    x.grad = None
                if force:
                    for name in force:
                        K.FORCE_CONFIG.pop(name, None)
                if opts:
                    K.OPTS.clear()
                    K.OPTS.update(base_opts)
            return step

        def flex_step():
            flex(q, k, v, block_mask=bm).backward(do)
            for x in (q, k, v):
                x.grad = None

        variants = {
            "flex_window": flex_step,
            "window": mk(0),
            "dsalt": mk(n_lm),  # this tree's defaults
        }
        if args.set == "lead":
            variants["dsalt_s5"] = mk(n_lm, S5)
        if args.set == "s7":
            variants.update(s7_variants(mk, n_lm))
        if args.set == "s7b":
            variants.update(s7b_variants(mk, n_lm))
        if args.set == "s7c":
            variants.update(s7c_variants(mk, n_lm))
        if args.set == "s9k":  # session 9, helper 6k: the window dK/dV through the Gluon kernel (gluon_dkdv.py)
            variants["dsalt_gluon_dkdv"] = mk(n_lm, {"gluon_dkdv": True, "gluon_dkdv_min_t": 0})
            variants["dsalt_gluon_lean"] = mk(n_lm, {"gluon_dkdv": True, "gluon_dkdv_min_t": 0}, {"gluon_dkdv": (64, 128, 3, 8, 1, 1)})
            # (S9K_WS=1 added the warp-specialised form, removed at the session-9 merge: code at da6482d)
        if args.set == "s8c":  # session 8, lead: the lean landmark backward (OPTS["lm_lean"], the default since)
            variants["dsalt_lean"] = mk(n_lm, {"lm_lean": True})
            variants["dsalt_notlean"] = mk(n_lm, {"lm_lean": False})
        if args.set == "s9q":  # session 9: the window dQ pass in Gluon (OPTS["gluon_dq"], gluon_dq.py)
            variants.pop("window")  # not part of this comparison (its compile time is needed elsewhere)
            # (call 2 ran with gluon_dq off by default: "dsalt" then was the Triton dQ pass at every length)
            variants["dsalt_nogq"] = mk(n_lm, {"gluon_dq": False})
            variants["dsalt_gq"] = mk(n_lm, {"gluon_dq": True, "gluon_dq_min_t": 0})
            if args.gq_ws:
                from attnlab.ops.dsalt import gluon_dq as GD
                variants["dsalt_gq_ws"] = mk(n_lm, {"gluon_dq": True, "gluon_dq_min_t": 0},
                                             {"gluon_dq": GD.CONFIGS[args.gq_ws]})
        if args.set == "s9":  # session 9, lead: both Gluon passes, alone and together, at every length
            variants.pop("window")
            variants["dsalt_tri"] = mk(n_lm, {"gluon_dq": False, "gluon_dkdv": False})
            variants["dsalt_gq"] = mk(n_lm, {"gluon_dq": True, "gluon_dq_min_t": 0})
            variants["dsalt_dkdv"] = mk(n_lm, {"gluon_dkdv": True, "gluon_dkdv_min_t": 0})
            variants["dsalt_both"] = mk(n_lm, {"gluon_dq": True, "gluon_dq_min_t": 0, "gluon_dkdv": True,
                                                 "gluon_dkdv_min_t": 0})
        if t < args.full_from:  # short sequences (host bound): the core variants only
            variants = {a: b for a, b in variants.items() if a in CORE}
        times = {name: [] for name in variants}
        hosts = {name: [] for name in variants}
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for name, st in list(variants.items()):
                t0 = time.time()
                try:
                    st()
                    st()
                    torch.cuda.synchronize()
                except Exception as e:  # noqa: BLE001 - a failing candidate is reported and dropped
                    print(f"T={t} {name} FAILED: {type(e).__name__}: {str(e)[:300]}", flush=True)
                    K.OPTS.clear()
                    K.OPTS.update(base_opts)
                    K.FORCE_CONFIG.clear()
                    del variants[name]
                    continue
                print(f"T={t} warm {name}: {time.time() - t0:.1f} s", flush=True)
            peaks = {}
            for name in ("flex_window", "window", "dsalt", "dsalt_s5"):
                if name in variants:
                    torch.cuda.synchronize()
                    torch.cuda.reset_peak_memory_stats()
                    base = torch.cuda.memory_allocated()
                    variants[name]()
                    torch.cuda.synchronize()
                    peaks[name] = (torch.cuda.max_memory_allocated() - base) / 2**20
            print(f"  peak MiB above inputs: {({a: round(b, 1) for a, b in peaks.items()})}", flush=True)
            for _ in range(args.rounds):
                for name, st in variants.items():
                    times[name].append(time_ms(st, warmup=2, repeats=10))
                    hosts[name].append(host_ms(st, 5))
        msgs = sorted({str(w.message)[:200] for w in caught if "dsalt" in str(w.message)})
        print(f"  dsalt warnings: {msgs if msgs else 'none'}", flush=True)
        row = {"warnings": msgs, "peak_MiB": peaks}
        for name in variants:
            row[name] = statistics.median(times[name])
            row[name + "_host"] = statistics.median(hosts[name])
            # each round times every variant back to back: the per-round ratio cancels clock drift
            row[name + "_round_ratio"] = statistics.median(a / b for a, b in zip(times[name], times["flex_window"]))
        fl = row["flex_window"]
        print(f"== T={t}", flush=True)
        for name in variants:
            print(f"  {name:16s} {row[name]:7.3f} ms ({row[name] / fl:5.2f}x flex; per-round median "
                  f"{row[name + '_round_ratio']:5.3f}x)  host {row[name + '_host']:6.3f} ms"
                  f"  rounds {[round(x, 3) for x in times[name]]}", flush=True)
        print(f"  options: {K.OPTS}; autotuned: {K.tuned_configs()}", flush=True)
        if t == max(int(x) for x in args.lengths.split(",")) and args.timeline:
            for name in TIMELINES:
                if name in variants:
                    row["timeline_" + name] = timeline(variants[name], f"{name} T={t}")
        res[t] = row
        Path(args.out).mkdir(parents=True, exist_ok=True)
        with open(Path(args.out) / f"dsalt_s6_{args.set}.json", "w") as f:
            json.dump({"rows": res, "device": torch.cuda.get_device_name(), "torch": torch.__version__,
                       "command": " ".join(sys.argv)}, f, indent=1, default=str)


def quick():
    """CPU smoke run: both landmark paths and the split forward once each at a tiny size (interpreter)."""
    os.environ.setdefault("TRITON_INTERPRET", "1")
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 2, 40, 16, requires_grad=True) for _ in range(3))
    win = torch.full((1, 2, 40), 8.0, requires_grad=True)
    e = torch.randn(1, 2, 40, requires_grad=True)
    for opts in (S5, {"lm_bwd": "trans", "lm_dq": True, "fwd_split": True, "split_min_t": 1},
                 {"fwd_split": False, "loop1_fwd": True}):
        K.OPTS.update(opts)
        out = dsalt_attention(q, k, v, win, e, n_max=8, n_landmarks=4, edge=2.0, block=16, impl="triton")
        out.sum().backward()
        print(opts, float(out.detach().float().abs().mean()))
    K.OPTS.update(S5)


if __name__ == "__main__":
    main()
