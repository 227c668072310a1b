"""Session-6 round-2 DSALT A/B on the device: one process, every variant on the same inputs, round
robin (median of rounds, each the median of 10 CUDA-event timings after 2 warm-ups), host enqueue
times, peak memory, the selection kernel alone, and the kernel timeline at the longest length.

Variants: flex window-only, attnlab window-only, DSALT with this tree's defaults, and (--set
call1) the selection's bulk merge (OPTS["sel_bulk"] = the fewest candidates above the set's minimum that take
the one-step merge; OPTS["sel_warps"]; OPTS["sel_sorted"] 1 = by sorts, 0 = by rank matrices), or
(--set final) the sets stored row by row (OPTS["sel_rowst"]) and the selection on a side stream
beside the window forward (OPTS["fwd_split"] = 3).

    python benchmarks/device_runs/dsalt_s6b_ab.py --lengths 32768,16384,4096 --rounds 3 --timeline
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import time
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

SEQ = {"sel_bulk": 0, "sel_warps": 1, "sel_sorted": 1, "sel_rowst": 0}
CANDS = {"bulk1": {"sel_bulk": 1}, "bulk2": {"sel_bulk": 2}, "bulk4": {"sel_bulk": 4}, "bulk8": {"sel_bulk": 8},
         "bulk1_w2": {"sel_bulk": 1, "sel_warps": 2}, "bulk4_mat": {"sel_bulk": 4, "sel_sorted": 0},
         "bulk1_mat_w4": {"sel_bulk": 1, "sel_sorted": 0, "sel_warps": 4}}
# --set final: the row-by-row set stores (1 / 2 warps), the selection beside the window forward
# (session-6 option fwd_split 3, where T >= 8192), both
FINAL = {"rowst": {"sel_rowst": 1}, "rowst_w2": {"sel_rowst": 1, "sel_warps": 2}, "split3": {"fwd_split": 3},
         "split3_rowst": {"fwd_split": 3, "sel_rowst": 1}}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lengths", default="32768,16384,4096")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default=os.environ.get("ATTNLAB_BENCH_DIR", "."))
    ap.add_argument("--set", default="call1", choices=["call1", "final"])
    ap.add_argument("--timeline", action="store_true")
    ap.add_argument("--quick", action="store_true", help="tiny CPU smoke run (interpreter), no timing")
    args = ap.parse_args()
    if args.quick:
        return quick()
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    flex = torch.compile(flex_attention, dynamic=False)
    heads, d, window, n_lm, block = 16, 128, 512, 64, 64
    base_opts = dict(K.OPTS)
    res = {}
    cands = CANDS if args.set == "call1" else FINAL
    for t in [int(x) for x in args.lengths.split(",")]:
        torch.manual_seed(0)
        q, k, v = (torch.randn(1, heads, t, d, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
        win = torch.full((1, heads, t), float(window), device="cuda", requires_grad=True)
        e = torch.randn(1, heads, t, device="cuda", requires_grad=True)
        do = torch.randn(1, heads, t, d, device="cuda", dtype=torch.bfloat16)
        bm = create_block_mask(lambda b, h, qi, kv: (kv <= qi) & (qi - kv < window), 1, 1, t, t, device="cuda",
                               BLOCK_SIZE=128)

        def with_opts(fn, opts):
            def step():
                if opts:
                    K.OPTS.update(opts)
                try:
                    return fn()
                finally:
                    if opts:
                        K.OPTS.clear()
                        K.OPTS.update(base_opts)
            return step

        def mk(n, opts=None):
            def fn():
                out = dsalt_attention(q, k, v, win, e, n_max=window, n_landmarks=n, edge=4.0, block=block,
                                      impl="triton")
                out.backward(do)
                for x in (q, k, v, win, e):
                    x.grad = None
            return with_opts(fn, opts)

        def sel(opts):
            ed = e.detach()
            return with_opts(lambda: K._select_stable(ed, n_lm, 64, block), opts)

        def flex_step():
            flex(q, k, v, block_mask=bm).backward(do)
            for x in (q, k, v):
                x.grad = None

        variants = {"flex_window": flex_step, "window": mk(0), "dsalt": mk(n_lm), "dsalt_seq": mk(n_lm, SEQ)}
        for name, o in cands.items():
            variants[name] = mk(n_lm, o)
        sels = {"sel_default": sel(None), "sel_seq": sel(SEQ)}
        for name, o in cands.items():
            sels["sel_" + name] = sel(o)
        for name, st in list(variants.items()) + list(sels.items()):
            t0 = time.time()
            try:
                st()
                st()
                torch.cuda.synchronize()
            except Exception as ex:  # noqa: BLE001 - a failing candidate is reported and dropped
                print(f"T={t} {name} FAILED: {type(ex).__name__}: {str(ex)[:300]}", flush=True)
                variants.pop(name, None)
                sels.pop(name, None)
                continue
            print(f"T={t} warm {name}: {time.time() - t0:.1f} s", flush=True)
        peaks = {}
        for name in ("flex_window", "window", "dsalt"):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            variants[name]()
            torch.cuda.synchronize()
            peaks[name] = (torch.cuda.max_memory_allocated() - base) / 2**20
        print(f"  peak MiB above inputs: {({a: round(b, 1) for a, b in peaks.items()})}", flush=True)
        times = {name: [] for name in variants}
        hosts = {name: [] for name in variants}
        for _ in range(args.rounds):
            for name, st in variants.items():
                times[name].append(time_ms(st, warmup=2, repeats=10))
                hosts[name].append(host_ms(st, 5))
        row = {"peak_MiB": peaks}
        for name in variants:
            row[name] = statistics.median(times[name])
            row[name + "_host"] = statistics.median(hosts[name])
        for name, st in sels.items():
            row[name] = time_ms(st, warmup=2, repeats=20)
            row[name + "_host"] = host_ms(st, 10)
        fl = row["flex_window"]
        print(f"== T={t}", flush=True)
        for name in variants:
            print(f"  {name:16s} {row[name]:7.3f} ms ({row[name] / fl:5.2f}x flex)  host {row[name + '_host']:6.3f} ms"
                  f"  rounds {[round(x, 3) for x in times[name]]}", flush=True)
        for name in sels:
            print(f"  {name:16s} {row[name]:7.3f} ms  host {row[name + '_host']:6.3f} ms", flush=True)
        print(f"  options: {K.OPTS}; autotuned: {K.tuned_configs()}", flush=True)
        if t == max(int(x) for x in args.lengths.split(",")) and args.timeline:
            best = min(cands, key=lambda n: row.get(n, 1e9)) if cands else None
            for name in ("dsalt", best, "split3", "window"):
                if name in variants:
                    row["timeline_" + name] = timeline(variants[name], f"{name} T={t}")
        res[t] = row
        Path(args.out).mkdir(parents=True, exist_ok=True)
        with open(Path(args.out) / f"dsalt_s6b_{args.set}.json", "w") as f:
            json.dump({"rows": res, "device": torch.cuda.get_device_name(), "torch": torch.__version__,
                       "command": " ".join(sys.argv)}, f, indent=1, default=str)


def quick():
    """CPU smoke run: the bulk-merge selection once at a tiny size (interpreter)."""
    os.environ.setdefault("TRITON_INTERPRET", "1")
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 2, 40, 16, requires_grad=True) for _ in range(3))
    win = torch.full((1, 2, 40), 8.0, requires_grad=True)
    e = torch.randn(1, 2, 40, requires_grad=True)
    for opts in (SEQ, {"sel_bulk": 1}):
        base = dict(K.OPTS)
        K.OPTS.update(opts)
        out = dsalt_attention(q, k, v, win, e, n_max=8, n_landmarks=4, edge=2.0, block=16, impl="triton")
        out.sum().backward()
        K.OPTS.clear()
        K.OPTS.update(base)
        print(opts, float(out.detach().float().abs().mean()))


if __name__ == "__main__":
    main()
