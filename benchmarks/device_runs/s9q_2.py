"""Session 9 (helper 6q), device call 2, part 1: the warp-specialised Gluon dQ configs (gluon_dq.CONFIGS ws*).

--check NAME: bf16 correctness of one config vs the Triton kernel and the float64 reference (run in its own
process with a timeout by s9q_2.sh: a wrong mbarrier protocol would hang, not fail); appends NAME to
OUT/ws_ok when every output matches. --time NAMES: the kernel alone at T = 32K/16K/4K (CUDA-graph replays,
as call 1) for the Triton kernel and the named configs, plus host enqueue times of one window_dq call.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import s9q_1 as S  # noqa: E402

from attnlab.ops.dsalt import kernel as K  # noqa: E402


def host_us(fn, n=20):
    fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    dt = (time.perf_counter() - t0) / n * 1e6
    torch.cuda.synchronize()
    return dt


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=".")
    ap.add_argument("--check", default="")
    ap.add_argument("--time", default="")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.check:
        # the Triton reference kernels' first configs (no autotuning per new shape: call 2's checks ran out of
        # time compiling them)
        os.environ["ATTNLAB_DSALT_AUTOTUNE"] = "0"
        name = args.check
        for a in [(1, 4, 4, 1000, 512, "rand", 0, True), (2, 4, 2, 777, 100, "rand", 1, True),
                  (1, 2, 1, 333, 64, "one", 2, True), (1, 2, 1, 300, 64, "rand", 3, True),
                  (1, 2, 2, 1030, 1030, "full", 4, True), (1, 16, 16, 4096, 512, "full", 5, False)]:
            S.check(*a, cfgs=[name])
        rows = S.OUT["check"]
        ok = len(rows) == 6 and all(
            "error" not in r and not any(r["nan"]) and r["wmin_eq"] and r["replay_eq"] and r["dq_vs_tri"] < 1e-3
            and r["dw_vs_tri"] < 1e-3 and r["delta_vs_tri"] < 1e-6 for r in rows)
        print(f"check {name}: {'OK' if ok else 'FAILED'}", flush=True)
        (out / f"check_{name}.json").write_text(json.dumps(rows, indent=1, default=str))
        if ok:
            with open(out / "ws_ok", "a") as f:
                f.write(name + "\n")
    if args.time:
        cfgs = [c for c in args.time.split(",") if c]
        S.POISON["on"] = False  # the kernels alone, no NaN fills in the timed region
        for t in (32768, 16384, 4096):
            S.kernel_times(t, cfgs=cfgs)
        q, k, v, do, e, win = S.inputs(1, 16, 16, 4096, 512, "full", 1)
        o, lse, _ = K.forward_saved(q, k, v, win, e, n_max=512, edge=4.0, n_landmarks=0, block=64)
        hosts = {"triton": host_us(lambda: K.window_dq(q, k, v, win, do, lse, o, n_max=512, edge=4.0, wg=32,
                                                       gluon=False, poison=False))}
        from attnlab.ops.dsalt import gluon_dq as GD

        for c in cfgs:
            K.FORCE_CONFIG["gluon_dq"] = GD.CONFIGS[c]
            hosts[c] = host_us(lambda: K.window_dq(q, k, v, win, do, lse, o, n_max=512, edge=4.0, wg=32, gluon=True,
                                                   poison=False))
            K.FORCE_CONFIG["gluon_dq"] = None
        print("host us per window_dq call (4 NaN fills included)", {a: round(b, 1) for a, b in hosts.items()},
              "replay plans", len(GD._PLANS), "replay on", GD.REPLAY["on"], flush=True)
        S.OUT["host_us"] = hosts
        ws = [c for c in cfgs if c.startswith("ws") and isinstance(S.OUT["kernel"][0].get(c), float)]
        if ws:  # the fastest warp-specialised config at 32K: the A/B's candidate
            (out / "ws_best").write_text(min(ws, key=lambda c: S.OUT["kernel"][0][c]))
        (out / "kernel_times.json").write_text(json.dumps(S.OUT, indent=1, default=str))


if __name__ == "__main__":
    main()
