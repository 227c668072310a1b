"""Session 9 (helper 6q), device call 1: the Gluon window dQ kernel (attnlab/ops/dsalt/gluon_dq.py).

1. bf16 correctness of kernel.window_dq (dQ, dW, delta, WMIN) with the Gluon kernel (every config in
   gluon_dq.CONFIGS) vs the Triton _dq_kernel on the same inputs and vs the float64 reference (small T):
   odd T, GQA, random windows, windows at the extremes (all 1, all n_max); outputs poisoned with NaN.
2. The whole DSALT op (64 landmarks) with OPTS["gluon_dq"] off / on: every gradient.
3. The kernel alone at T = 4K/16K/32K (B=1, 16 heads, d 128, window 512): median of CUDA-graph replays of
   10 launches, Triton _dq_kernel vs each Gluon config; then DSALT fwd+bwd off / on (3 rounds).

    python benchmarks/device_runs/s9q_1.py --out DIR
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from attnlab.bench import time_ms  # noqa: E402
from attnlab.ops.dsalt import dsalt_attention, dsalt_reference  # noqa: E402
from attnlab.ops.dsalt import gluon_dq as GD  # noqa: E402
from attnlab.ops.dsalt import kernel as K  # noqa: E402
from attnlab.testing import rel_err  # noqa: E402

OUT: dict = {"check": [], "e2e": [], "kernel": [], "step": []}
POISON = {"on": True}


def inputs(b, h, hk, t, n_max, wmode, seed, dtype=torch.bfloat16):
    g = torch.Generator(device="cuda").manual_seed(seed)
    q = torch.randn(b, h, t, 128, device="cuda", dtype=dtype, generator=g)
    k = torch.randn(b, hk, t, 128, device="cuda", dtype=dtype, generator=g)
    v = torch.randn(b, hk, t, 128, device="cuda", dtype=dtype, generator=g)
    do = torch.randn(b, h, t, 128, device="cuda", dtype=dtype, generator=g)
    e = torch.randn(b, hk, t, device="cuda", generator=g)
    if wmode == "rand":
        win = torch.rand(b, h, t, device="cuda", generator=g) * (n_max - 1) + 1
    elif wmode == "one":
        win = torch.ones(b, h, t, device="cuda")
    else:
        win = torch.full((b, h, t), float(n_max), device="cuda")
    return q, k, v, do, e, win


def check(b, h, hk, t, n_max, wmode, seed, ref=False, cfgs=None):
    edge = 4.0
    q, k, v, do, e, win = inputs(b, h, hk, t, n_max, wmode, seed)
    o, lse, _ = K.forward_saved(q, k, v, win, e, n_max=n_max, edge=edge, n_landmarks=0, block=64)
    tri = K.window_dq(q, k, v, win, do, lse, o, n_max=n_max, edge=edge, wg=32, gluon=False)
    rows = []
    rdq = rdw = None
    if ref:
        qq, kk, vv, ww = (x.detach().double().requires_grad_() for x in (q, k, v, win))
        r = dsalt_reference(qq, kk, vv, ww, e.double(), n_max=n_max, edge=edge, n_landmarks=0, block=64)
        r.backward(do.double())
        rdq, rdw = qq.grad, ww.grad
    for name, cfg in GD.CONFIGS.items():
        if cfgs is not None and name not in cfgs:
            continue
        K.FORCE_CONFIG["gluon_dq"] = cfg
        try:
            glu = K.window_dq(q, k, v, win, do, lse, o, n_max=n_max, edge=edge, wg=32, gluon=True)
            # the second launch of the key goes through the launch replay: the same bits
            glu2 = K.window_dq(q, k, v, win, do, lse, o, n_max=n_max, edge=edge, wg=32, gluon=True)
            torch.cuda.synchronize()
        except Exception as ex:
            rows.append({"cfg": name, "error": f"{type(ex).__name__}: {ex}"[:400]})
            GD.BROKEN = ""
            continue
        finally:
            K.FORCE_CONFIG["gluon_dq"] = None
        nt = -(-t // 32)
        row = {"cfg": name, "shape": (b, h, hk, t, n_max, wmode),
               "nan": [bool(torch.isnan(x[:b * h * nt] if i == 3 else x).any()) for i, x in enumerate(glu)],
               "dq_vs_tri": rel_err(glu[0], tri[0]), "dw_vs_tri": rel_err(glu[1], tri[1]),
               "delta_vs_tri": rel_err(glu[2], tri[2]),
               "wmin_eq": bool(torch.equal(glu[3][:b * h * nt], tri[3][:b * h * nt])),
               "replay_eq": all(bool(torch.equal(x, y)) for x, y in zip(glu[:3], glu2[:3]))}
        if ref:
            row.update(dq_ref=rel_err(glu[0], rdq), dq_ref_tri=rel_err(tri[0], rdq),
                       dw_ref=rel_err(glu[1], rdw), dw_ref_tri=rel_err(tri[1], rdw))
        rows.append(row)
        print("check", row, flush=True)
    OUT["check"] += rows


def e2e(b, h, hk, t, seed):
    q, k, v, do, e, win = inputs(b, h, hk, t, 512, "rand", seed)
    res = {}
    for on in (False, True):
        K.OPTS["gluon_dq"] = on
        xs = [x.detach().clone().requires_grad_() for x in (q, k, v, win, e)]
        out = dsalt_attention(*xs, n_max=512, n_landmarks=64, edge=4.0, block=64, impl="triton")
        out.backward(do)
        res[on] = [out] + [x.grad for x in xs]
    K.OPTS["gluon_dq"] = False
    row = {"shape": (b, h, hk, t), "rel": [rel_err(a, c) for a, c in zip(res[True], res[False])],
           "nan": [bool(torch.isnan(a).any()) for a in res[True]]}
    print("e2e (out, dq, dk, dv, dwin, de) gluon vs triton", row, flush=True)
    OUT["e2e"].append(row)


def graph_ms(fn, n=10, reps=20):
    fn()
    torch.cuda.synchronize()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        fn()
    torch.cuda.current_stream().wait_stream(s)
    gr = torch.cuda.CUDAGraph()
    with torch.cuda.graph(gr):
        for _ in range(n):
            fn()
    return time_ms(gr.replay, warmup=3, repeats=reps) / n


def kernel_times(t, cfgs=None):
    q, k, v, do, e, win = inputs(1, 16, 16, t, 512, "full", 1)
    o, lse, _ = K.forward_saved(q, k, v, win, e, n_max=512, edge=4.0, n_landmarks=0, block=64)
    row = {"T": t}
    pz = POISON["on"]  # call 1: the NaN fills inside the timed region (both kernels); call 2: without
    row["triton"] = graph_ms(lambda: K.window_dq(q, k, v, win, do, lse, o, n_max=512, edge=4.0, wg=32, gluon=False,
                                                 poison=pz))
    for name, cfg in GD.CONFIGS.items():
        if cfgs is not None and name not in cfgs:
            continue
        K.FORCE_CONFIG["gluon_dq"] = cfg
        try:
            row[name] = graph_ms(lambda: K.window_dq(q, k, v, win, do, lse, o, n_max=512, edge=4.0, wg=32,
                                                     gluon=True, poison=pz))
        except Exception as ex:
            row[name] = f"{type(ex).__name__}: {ex}"[:200]
            GD.BROKEN = ""
        K.FORCE_CONFIG["gluon_dq"] = None
    # tile FLOP rate of the triton kernel's useful work: 3 products of 2*T*512*128 per head
    row["useful_tflop"] = 16 * 3 * 2 * t * 512 * 128 / 1e12
    print("kernel ms", row, flush=True)
    OUT["kernel"].append(row)


def step_times(t, rounds=3, cfgs=("default",)):
    q, k, v, do, e, win = inputs(1, 16, 16, t, 512, "full", 2)
    xs = [x.detach().clone().requires_grad_() for x in (q, k, v, win, e)]

    def mk(on, cfg=None):
        def step():
            K.OPTS["gluon_dq"], K.FORCE_CONFIG["gluon_dq"] = on, cfg
            out = dsalt_attention(*xs, n_max=512, n_landmarks=64, edge=4.0, block=64, impl="triton")
            out.backward(do)
            for x in xs:
                x.grad = None
            K.OPTS["gluon_dq"], K.FORCE_CONFIG["gluon_dq"] = False, None
        return step

    variants = {"dsalt": mk(False)}
    for c in cfgs:
        variants["gluon_" + c] = mk(True, None if c == "default" else GD.CONFIGS[c])
    res = {n: [] for n in variants}
    for _ in range(rounds):
        for n, f in variants.items():
            res[n].append(time_ms(f, warmup=2, repeats=10))
    row = {"T": t, **{n: sorted(v)[len(v) // 2] for n, v in res.items()}, "all": res}
    print("fwd+bwd ms", {k: v for k, v in row.items() if k != "all"}, flush=True)
    OUT["step"].append(row)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=".")
    ap.add_argument("--skip", default="")
    args = ap.parse_args()
    t0 = time.time()
    print(torch.cuda.get_device_name(), torch.__version__, flush=True)
    for f, a in [(check, (1, 4, 4, 1000, 512, "rand", 0, True)), (check, (2, 4, 2, 777, 100, "rand", 1, True)),
                 (check, (1, 2, 1, 333, 64, "one", 2, True)), (check, (1, 2, 2, 1030, 1030, "full", 3, True)),
                 (check, (1, 16, 16, 4096, 512, "full", 4, False)), (e2e, (1, 8, 4, 4096, 5)), (e2e, (1, 3, 3, 1111, 6)),
                 (kernel_times, (32768,)), (kernel_times, (16384,)), (kernel_times, (4096,)),
                 (step_times, (32768, 3, ("default", "bm128"))), (step_times, (16384, 3, ("default", "bm128"))),
                 (step_times, (4096, 3, ("default", "bm128")))]:
        if f.__name__ in args.skip:
            continue
        try:
            f(*a)
        except Exception:
            traceback.print_exc()
        print(f"[{time.time() - t0:.0f}s]", flush=True)
        Path(args.out).mkdir(parents=True, exist_ok=True)
        Path(args.out, "s9q_1.json").write_text(json.dumps(OUT, indent=1, default=str))
    print("== summary")
    for r in OUT["check"]:
        print({k: (round(v, 5) if isinstance(v, float) else v) for k, v in r.items()})
    for r in OUT["e2e"]:
        print(r)
    for r in OUT["kernel"]:
        print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()})
    for r in OUT["step"]:
        print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items() if k != "all"})


if __name__ == "__main__":
    main()
