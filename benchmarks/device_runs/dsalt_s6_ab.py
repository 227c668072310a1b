"""Session-6 DSALT A/B on the device: one process, every variant on the same inputs, round robin
(median of rounds, each the median of 10 CUDA-event timings after 2 warm-ups), host enqueue times,
peak memory, optionally the 32K kernel timeline.

--set call1: the session-5 defaults vs the session-6 candidates: the transposed landmark backward
kernel (lm_bwd "trans", its launch configs), the landmark dQ moved into it (lm_dq), the forward's
landmark pass as its own kernel (fwd_split 1) with the selection on a side stream (fwd_split 2),
dK/dV launch configs with 3 stages. --set final: flex window-only, attnlab window-only, DSALT with
the defaults of this tree and its options (the selection on a side stream after the window kernel's
launch: fwd_split 3, with _fwd_lm_kernel configs; no flush skip; dQ rows loaded early; window dQ
tiles of 128 rows; the phased dK/dV kernel), and with the session-5 defaults, timed together.

    python benchmarks/device_runs/dsalt_s6_ab.py --set call1 --lengths 32768,16384 --rounds 3
"""

from __future__ import annotations

import argparse
import importlib.util
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

_spec = importlib.util.spec_from_file_location("dsalt_s5_ab", Path(__file__).with_name("dsalt_s5_ab.py"))
_s5 = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_s5)
host_ms, timeline = _s5.host_ms, _s5.timeline

S5 = {"lm_bwd": "atomic", "lm_dq": False, "fwd_split": 0}
CORE = ("flex_window", "window", "dsalt", "dsalt_split3", "dsalt_phased", "dsalt_combo", "window_combo", "dsalt_s5",
        "t", "tdq", "combo")  # the session-5 defaults (landmark options)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lengths", default="32768,16384,4096")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default=os.environ.get("ATTNLAB_BENCH_DIR", "."))
    ap.add_argument("--set", default="call1", choices=["call1", "final", "lead"])
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

        tr = {"lm_bwd": "trans", "lm_dq": False, "fwd_split": 0}
        trdq = {"lm_bwd": "trans", "lm_dq": True, "fwd_split": 0}
        combo = {"lm_bwd": "trans", "lm_dq": True, "fwd_split": 2}
        LT = K.LM_BWD_T_CONFIGS
        if args.set == "call1":
            variants = {
                "flex_window": flex_step,
                "window": mk(0),
                "dsalt_s5": mk(n_lm, S5),
                "t": mk(n_lm, tr),
                "t_seg8": mk(n_lm, tr, {"lm_bwd_t": LT[1]}),
                "t_seg32": mk(n_lm, tr, {"lm_bwd_t": LT[2]}),
                "t_w4": mk(n_lm, tr, {"lm_bwd_t": LT[3]}),
                "t_bm32": mk(n_lm, tr, {"lm_bwd_t": LT[4]}),
                "t_lc32w4": mk(n_lm, tr, {"lm_bwd_t": LT[5]}),
                "tdq": mk(n_lm, trdq),
                "split1": mk(n_lm, {**S5, "fwd_split": 1}),
                "split2": mk(n_lm, {**S5, "fwd_split": 2}),
                "split2_lc64": mk(n_lm, {**S5, "fwd_split": 2}, {"fwd_lm": K.FWD_LM_CONFIGS[1]}),
                "split2_lc64w8": mk(n_lm, {**S5, "fwd_split": 2}, {"fwd_lm": K.FWD_LM_CONFIGS[2]}),
                "combo": mk(n_lm, combo),
                "window_dkdv3": mk(0, None, {"dkdv": (64, 128, 8, 3, 1)}),
                "combo_dkdv3": mk(n_lm, combo, {"dkdv": (64, 128, 8, 3, 1)}),
                "window_dkdv64": mk(0, None, {"dkdv": (64, 64, 4, 3, 1)}),
            }
        elif args.set == "lead":  # the lead's check: this tree's defaults against flex, window-only, session 5
            variants = {
                "flex_window": flex_step,
                "window": mk(0),
                "dsalt": mk(n_lm),  # this tree's defaults
                "tdq": mk(n_lm, trdq),  # session 6 round 1's default
                "dsalt_s5": mk(n_lm, S5),
            }
        else:
            variants = {
                "flex_window": flex_step,
                "window": mk(0),
                "dsalt": mk(n_lm),  # this tree's defaults
                "dsalt_split3": mk(n_lm, {"fwd_split": 3}),
                "dsalt_noskip": mk(n_lm, {"lm_skip": False}),
                "dsalt_dqearly": mk(n_lm, {"lm_dq_early": True}),
                "dsalt_split3_flm32": mk(n_lm, {"fwd_split": 3}, {"fwd_lm": K.FWD_LM_CONFIGS[3]}),
                "dsalt_split3_flm32r128": mk(n_lm, {"fwd_split": 3}, {"fwd_lm": K.FWD_LM_CONFIGS[4]}),
                "window_phased": mk(0, {"dkdv_phased": True}),
                "dsalt_phased": mk(n_lm, {"dkdv_phased": True}),
                "window_dq128": mk(0, None, {"dq": (128, 64, 8, 3)}),
                "dsalt_dq128": mk(n_lm, None, {"dq": (128, 64, 8, 3)}),
                "window_combo": mk(0, {"dkdv_phased": True}, {"dq": (128, 64, 8, 3)}),
                "dsalt_combo": mk(n_lm, {"dkdv_phased": True, "fwd_split": 3}, {"dq": (128, 64, 8, 3)}),
                "dsalt_lmt_st3": mk(n_lm, None, {"lm_bwd_t": (64, 64, 16, 8, 3)}),
                "dsalt_s5": mk(n_lm, S5),
            }
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
            for name in ("flex_window", "window", "dsalt", "dsalt_split3", "dsalt_s5", "combo", "tdq"):
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
        fl = row["flex_window"]
        print(f"== T={t}", flush=True)
        for name in variants:
            print(f"  {name:16s} {row[name]:7.3f} ms ({row[name] / fl:5.2f}x flex)  host {row[name + '_host']:6.3f} ms"
                  f"  rounds {[round(x, 3) for x in times[name]]}", flush=True)
        print(f"  options: {K.OPTS}; autotuned: {K.tuned_configs()}", flush=True)
        if t == max(int(x) for x in args.lengths.split(",")) and args.timeline:
            for name in ("dsalt_s5", "combo", "dsalt", "dsalt_split3", "dsalt_combo", "window"):
                if name in variants:
                    row["timeline_" + name] = timeline(variants[name], f"{name} T={t}")
        res[t] = row
        Path(args.out).mkdir(parents=True, exist_ok=True)
        with open(Path(args.out) / f"dsalt_s6_{args.set}.json", "w") as f:
            json.dump({"rows": res, "device": torch.cuda.get_device_name(), "torch": torch.__version__,
                       "command": " ".join(sys.argv)}, f, indent=1, default=str)


def quick():
    """CPU smoke run: the session-6 paths once each at a tiny size (interpreter)."""
    os.environ.setdefault("TRITON_INTERPRET", "1")
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 2, 40, 16, requires_grad=True) for _ in range(3))
    win = torch.full((1, 2, 40), 8.0, requires_grad=True)
    e = torch.randn(1, 2, 40, requires_grad=True)
    for opts in (S5, {"lm_bwd": "trans", "lm_dq": True, "fwd_split": 1}):
        K.OPTS.update(opts)
        out = dsalt_attention(q, k, v, win, e, n_max=8, n_landmarks=4, edge=2.0, block=16, impl="triton")
        out.sum().backward()
        print(opts, float(out.detach().float().abs().mean()))
    K.OPTS.update(S5)


if __name__ == "__main__":
    main()
