"""Session-5 DSALT A/B on the device, one process (same inputs, round robin), host enqueue times.
--set call1: flex window-only vs attnlab window-only / DSALT with launch replay on and off,
landmark chunk widths (LC) 16/32 in the forward and dQ kernels, delta-pass configs (run with
ATTNLAB_DSALT_AUTOTUNE=0; --timeline: kernel timeline of one synchronised 32K step).
--set call2: the landmark backward kernel (_lm_bwd_kernel, its launch configs) vs the per-tile
partials + reduction path. --set final: flex window-only, attnlab window-only, DSALT with the
final defaults and DSALT with the separate delta pass, timed together (the lead's check).
--set s5b (session 5b): the landmark-latency options (positions / gates / K-V rows loaded ahead:
lm_pre_*) and the parallel selection (sel_chunk) vs the session-5 defaults, plus the selection
alone (serial vs parallel, kernel time).

    python benchmarks/device_runs/dsalt_s5_ab.py --lengths 32768,16384,4096 --rounds 3
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

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from attnlab.bench import time_ms  # noqa: E402
from attnlab.ops.dsalt import dsalt_attention  # noqa: E402
from attnlab.ops.dsalt import kernel as K  # noqa: E402


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
    rows = [(e.name[:40], e.time_range.start - cpu0, e.time_range.end - e.time_range.start) for e in evs]
    busy = sum(r[2] for r in rows)
    span = rows[-1][1] + rows[-1][2] if rows else 0
    print(f"timeline {label}: first kernel at {rows[0][1]:.0f} us, last end {span:.0f} us, busy {busy:.0f} us",
          flush=True)
    prev = 0.0
    for name, st, du in rows:
        print(f"   {st:8.0f} (+gap {st - prev:6.0f}) {du:7.0f}  {name}", flush=True)
        prev = st + du
    return {"first": rows[0][1], "span": span, "busy": busy, "kernels": rows}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lengths", default="32768,16384,4096")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default=os.environ.get("ATTNLAB_BENCH_DIR", "."))
    ap.add_argument("--set", default="call2", choices=["call1", "call2", "final", "s5b"])
    ap.add_argument("--timeline", action="store_true")
    args = ap.parse_args()
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    flex = torch.compile(flex_attention, dynamic=False)
    heads, d, window, n_lm, block = 16, 128, 512, 64, 64
    res = {}
    for t in [int(x) for x in args.lengths.split(",")]:
        torch.manual_seed(0)
        q, k, v = (torch.randn(1, heads, t, d, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
        win = torch.full((1, heads, t), float(window), device="cuda", requires_grad=True)
        e = torch.randn(1, heads, t, device="cuda", requires_grad=True)
        do = torch.randn(1, heads, t, d, device="cuda", dtype=torch.bfloat16)
        bm = create_block_mask(lambda b, h, qi, kv: (kv <= qi) & (qi - kv < window), 1, 1, t, t, device="cuda",
                               BLOCK_SIZE=128)

        def mk(n, env=None, opts=None):
            def step():
                if env is not None:
                    os.environ["ATTNLAB_FAST_LAUNCH"] = env
                if opts:
                    K.OPTS.update(opts)
                out = dsalt_attention(q, k, v, win, e, n_max=window, n_landmarks=n, edge=4.0, block=block,
                                      impl="triton")
                out.backward(do)
                for x in (q, k, v, win, e):
                    x.grad = None
                if opts:
                    K.OPTS.update(BASE)
                if env is not None:
                    os.environ["ATTNLAB_FAST_LAUNCH"] = "1"
            return step

        def flex_step():
            flex(q, k, v, block_mask=bm).backward(do)
            for x in (q, k, v):
                x.grad = None

        BASE = dict(K.OPTS)
        def lm(cfg):
            def step():
                K.FORCE_CONFIG["lm_bwd"] = cfg
                mk(n_lm)()
                K.FORCE_CONFIG.pop("lm_bwd", None)
            return step

        if args.set == "call1":  # session-5 call 1 (forced configs)
            variants = {
                "flex_window": flex_step,
                "window": mk(0),
                "window_noreplay": mk(0, env="0"),
                "dsalt": mk(n_lm),
                "dsalt_noreplay": mk(n_lm, env="0"),
                "dsalt_lcfwd32": mk(n_lm, opts={"lc_fwd": 32}),
                "dsalt_lcdq32": mk(n_lm, opts={"lc_dq": 32}),
                "dsalt_delta128x8": mk(n_lm, opts={"delta": (128, 8)}),
                "dsalt_delta32x4": mk(n_lm, opts={"delta": (32, 4)}),
            }
        elif args.set == "final":  # the lead's check of the final defaults, timed together
            variants = {
                "flex_window": flex_step,
                "window": mk(0),
                "dsalt": mk(n_lm),
                "dsalt_separate_delta": mk(n_lm, opts={"fuse_delta": False}),
            }
        elif args.set == "s5b":  # session 5b: every option off = the session-5 defaults
            off = {"lm_pre_fwd": 0, "lm_pre_dq": 0, "lm_pre_bwd": 0, "sel_chunk": 0}
            pre1 = {"lm_pre_fwd": 1, "lm_pre_dq": 1, "lm_pre_bwd": 1}
            pre2 = {"lm_pre_fwd": 2, "lm_pre_dq": 2, "lm_pre_bwd": 2}
            par = {"sel_chunk": 32, "sel_par_min_t": 0}
            variants = {
                "flex_window": flex_step,
                "window": mk(0),
                "dsalt": mk(n_lm, opts=off),
                "dsalt_pre1": mk(n_lm, opts={**off, **pre1}),
                "dsalt_pre2": mk(n_lm, opts={**off, **pre2}),
                "dsalt_prebwd1": mk(n_lm, opts={**off, "lm_pre_bwd": 1}),
                "dsalt_prebwd2": mk(n_lm, opts={**off, "lm_pre_bwd": 2}),
                "dsalt_par32": mk(n_lm, opts={**off, **par}),
                "dsalt_par16": mk(n_lm, opts={**off, **par, "sel_chunk": 16}),
                "dsalt_pre1_par32": mk(n_lm, opts={**off, **pre1, **par}),
                "dsalt_pre2_par32": mk(n_lm, opts={**off, **pre2, **par}),
            }
        else:  # call 2: the landmark backward (atomic kernel, its configs) vs partials + reduction
            variants = {
                "flex_window": flex_step,
                "window": mk(0),
                "dsalt": mk(n_lm),
                "dsalt_reduce": mk(n_lm, opts={"lm_bwd": "reduce"}),
                "dsalt_lm1": lm(K.LM_BWD_CONFIGS[1]),
                "dsalt_lm_seg64": lm((32, 32, 64, 8, 2)),
                "dsalt_fusedelta": mk(n_lm, opts={"fuse_delta": True}),
            }
        times = {name: [] for name in variants}
        hosts = {name: [] for name in variants}
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for name, st in variants.items():
                t0 = time.time()
                st()
                st()
                torch.cuda.synchronize()
                print(f"T={t} warm {name}: {time.time() - t0:.1f} s", flush=True)
            peaks = {}
            for name in ("flex_window", "window", "dsalt", "dsalt_reduce"):
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
            if args.set == "s5b":  # the selection alone: serial vs parallel (kernel time)
                ed = e.detach().contiguous()  # the step's energies (16 kv heads)
                for ch in (0, 32, 16, 8):
                    sel = lambda ch=ch: K._select_stable(ed, n_lm, 64, block, chunk=ch)  # noqa: E731
                    times["select_chunk%d" % ch] = [time_ms(sel, warmup=3, repeats=20)]
                    hosts["select_chunk%d" % ch] = [host_ms(sel, 5)]
                    variants["select_chunk%d" % ch] = sel
        msgs = sorted({str(w.message)[:200] for w in caught if "dsalt" in str(w.message)})
        print(f"  dsalt warnings: {msgs if msgs else 'none'}", flush=True)
        row = {"warnings": msgs, "peak_MiB": peaks}
        for name in variants:
            row[name] = statistics.median(times[name])
            row[name + "_host"] = statistics.median(hosts[name])
        fl = row["flex_window"]
        print(f"== T={t}", flush=True)
        for name in variants:
            print(f"  {name:20s} {row[name]:7.3f} ms ({row[name] / fl:5.2f}x flex)  host {row[name + '_host']:6.3f} ms"
                  f"  rounds {[round(x, 3) for x in times[name]]}", flush=True)
        print(f"  replay stats {K._LAUNCH.stats}", flush=True)
        print(f"  options after the run: {K.OPTS}", flush=True)
        if t == 32768 and args.timeline:
            row["timeline_dsalt"] = timeline(variants["dsalt"], f"dsalt T={t}")
            row["timeline_window"] = timeline(variants["window"], f"window T={t}")
            row["timeline_flex"] = timeline(flex_step, f"flex T={t}")
        res[t] = row
        Path(args.out).mkdir(parents=True, exist_ok=True)
        with open(Path(args.out) / "dsalt_s5_ab.json", "w") as f:
            json.dump({"rows": res, "device": torch.cuda.get_device_name(), "torch": torch.__version__}, f, indent=1,
                      default=str)


if __name__ == "__main__":
    main()
