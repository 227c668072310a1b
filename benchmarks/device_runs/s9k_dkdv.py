"""Session 9 (helper 6k): DSALT's window dK/dV kernel in Gluon (attnlab/ops/dsalt/gluon_dkdv.py) against the
Triton ``_dkdv_kernel`` on the device, one process:

1. correctness (bf16): the Gluon kernel on the very inputs the Triton kernel got inside a backward (Q, K, V,
   windows, dO, LSE, Delta, window minima: captured from the launch), outputs poisoned with NaN first; dK / dV
   rel err vs the Triton kernel's, and the whole backward with OPTS["gluon_dkdv"] vs the float32 reference
   (odd T, GQA, windows at the extremes, WG = 0 and 32);
2. the kernel alone at B=1, 16 heads, d 128, window 512, 64 landmarks, T = 32K / 16K / 4K: the Triton
   kernel (its autotuned config) vs the Gluon configs, CUDA-event medians, and the tile work's TFLOP/s;
3. (--e2e) DSALT fwd+bwd with the defaults vs with gluon_dkdv, round robin, medians.

    python benchmarks/device_runs/s9k_dkdv.py [--e2e] [--lengths 32768,16384,4096]
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
from attnlab.ops.dsalt import dsalt_attention, dsalt_reference  # noqa: E402
from attnlab.ops.dsalt import gluon_dkdv as GD  # noqa: E402
from attnlab.ops.dsalt import kernel as K  # noqa: E402
from attnlab.testing import rel_err  # noqa: E402

# call 1 also ran "rows_lean_p16": (64, 128, 3, 8, 1, 1, 1) (dK 3.6e-3 from the Triton kernel's: P rounded to bf16
# for dS; dropped). "ws" (warp-specialized, WG > 0 only; at WG = 0 it runs the rows kernel) goes last: a hang
# there leaves the other rows printed.
CONFIGS = {"rows_s3": (64, 128, 3, 8, 1), "rows_lean": (64, 128, 3, 8, 1, 1), "rows_s2": (64, 128, 2, 8, 1),
           "trans_s3": (64, 128, 3, 8, 0), "ws": (64, 128, 3, 8, 2)}


def make(b, h, hk, t, d, n_min, n_max, dtype=torch.bfloat16):
    q = torch.randn(b, h, t, d, dtype=dtype, device="cuda")
    k = torch.randn(b, hk, t, d, dtype=dtype, device="cuda")
    v = torch.randn(b, hk, t, d, dtype=dtype, device="cuda")
    win = n_min + torch.rand(b, h, t, device="cuda") * (n_max - n_min)
    e = torch.randn(b, hk, t, device="cuda")
    return [x.requires_grad_() for x in (q, k, v, win, e)]


class Spy:
    """Wraps kernel._launch: records the dK/dV launch's arguments and the Triton kernel's outputs."""

    def __init__(self):
        self.orig = K._launch
        self.rec = None

    def __call__(self, name, kernel, *a, **kw):
        out = self.orig(name, kernel, *a, **kw)
        if name == "dkdv":
            self.rec = (a, dict(kw), a[13].clone(), a[14].clone())
        return out


SPY = Spy()
K._launch = SPY


def gluon_args(a, kw):
    """(q, k, v, win, do, lse, delta, wmin, h, g, t, n_max, edge, inv_edge, qk_scale, sm_scale, wg)."""
    q, k, v, win, do, lse, delta, dk, dv, wmin = a[6:16]
    h, g, t = a[22:25]
    return (q, k, v, win, do, lse, delta, wmin, h, g, t, *a[25:30], kw["WG"])


def run_gluon(ga, cfg, dk=None, dv=None):
    q, k, v, win, do, lse, delta, wmin, h, g, t, n_max, edge, inv_edge, qks, sms, wg = ga
    dk = torch.full_like(k, float("nan")) if dk is None else dk
    dv = torch.full_like(v, float("nan")) if dv is None else dv
    GD.dkdv_gluon(q, k, v, win, do, lse, delta, dk, dv, wmin, h, g, t, n_max, edge, inv_edge, qks, sms, wg,
                  config=cfg)
    return dk, dv


CASES = [  # b, h, hk, t, n_min, n_max, edge, n_lm, wmin_min_t (1: WG = 32; big: WG = 0)
    (1, 4, 2, 1037, 48.0, 300, 4.0, 64, 1),
    (1, 4, 4, 777, 48.0, 300, 4.0, 64, 10**9),
    (2, 4, 2, 555, 1.0, 1, 0.5, 16, 1),          # window 1 (extreme)
    (1, 2, 1, 1500, 1500.0, 1500, 4.0, 0, 10**9),  # window = whole sequence, window only
    (1, 4, 1, 2049, 1.0, 600, 8.0, 64, 1),       # G = 4, windows from 1 to 600
    (1, 2, 2, 4133, 100.0, 512, 4.0, 64, 1),
]


def correctness(log):
    ok_all = True
    for ci, (b, h, hk, t, n_min, n_max, edge, n_lm, wmt) in enumerate(CASES):
        torch.manual_seed(100 + ci)
        ins = make(b, h, hk, t, 128, n_min, n_max)
        kw = dict(n_max=n_max, edge=edge, n_landmarks=n_lm, block=64, scale=128**-0.5)
        K.OPTS["wmin_min_t"] = wmt
        K.OPTS["gluon_dkdv"] = False
        out = dsalt_attention(*ins, impl="triton", **kw)
        do = torch.randn_like(out)
        g_tri = torch.autograd.grad(out, ins[:3], do)
        a, akw, dk_t, dv_t = SPY.rec
        ga = gluon_args(a, akw)
        for name, cfg in CONFIGS.items():
            try:
                dk_g, dv_g = run_gluon(ga, cfg)
                torch.cuda.synchronize()
            except Exception as e:  # noqa: BLE001
                log(f"case {ci} {name}: FAILED {type(e).__name__}: {str(e)[:600]}")
                ok_all = False
                continue
            nan = int(torch.isnan(dk_g).sum() + torch.isnan(dv_g).sum())
            ek, ev = rel_err(dk_g.float(), dk_t.float()), rel_err(dv_g.float(), dv_t.float())
            good = nan == 0 and ek < 1e-2 and ev < 1e-2
            ok_all &= good
            log(f"case {ci} {(b, h, hk, t, n_min, n_max, edge, n_lm)} WG={ga[-1]} {name}: dK rel {ek:.2e} dV rel "
                f"{ev:.2e} vs Triton kernel, NaN left {nan} {'ok' if good else 'BAD'}")
        # the whole backward with the Gluon kernel (default config) vs the float32 reference
        K.OPTS["gluon_dkdv"] = True
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            out2 = dsalt_attention(*ins, impl="triton", **kw)
            g_gl = torch.autograd.grad(out2, ins[:3], do)
        ref = dsalt_reference(*[x.float() if j < 3 else x for j, x in enumerate(ins)], **kw)
        g_ref = torch.autograd.grad(ref, ins[:3], do.float())
        errs = {n: (round(rel_err(x, r), 5), round(rel_err(y, r), 5)) for n, x, y, r in zip("qkv", g_gl, g_tri, g_ref)}
        good = all(e[0] <= 3e-2 for e in errs.values())
        ok_all &= good
        log(f"case {ci} end-to-end vs fp32 reference (gluon, triton): {errs} {'ok' if good else 'BAD'}")
        K.OPTS["gluon_dkdv"] = False
    K.OPTS["wmin_min_t"] = 8192
    return ok_all


def tile_flops(t, n_max, h, bm=64, bn=128, d=128):
    """FLOPs of the query tiles the kernels visit (4 products of BM x BN x D per tile, every head)."""
    tot = 0
    for n0 in range(0, t, bn):
        m_lo = (n0 // bm) * bm
        m_hi = min(n0 + bn - 1 + n_max, t)
        tot += -(-(m_hi - m_lo) // bm)
    return tot * h * 4 * 2 * bm * bn * d


def kernel_timing(lengths, log, rounds=3, dump=None):
    res = {}
    heads, window, n_lm = 16, 512, 64
    for t in lengths:
        torch.manual_seed(0)
        ins = make(1, heads, heads, t, 128, float(window), window)
        K.OPTS["gluon_dkdv"] = False
        out = dsalt_attention(*ins, n_max=window, edge=4.0, n_landmarks=n_lm, block=64, impl="triton")
        out.backward(torch.randn_like(out))
        a, akw, dk_t, dv_t = SPY.rec
        ga = gluon_args(a, akw)
        fns = {"triton": lambda: SPY.orig("dkdv", K._dkdv_kernel, *a, **akw)}
        outs = {}
        for name, cfg in CONFIGS.items():
            dk = torch.full_like(ga[1], float("nan"))  # poisoned: the first run must write every element
            dv = torch.full_like(ga[2], float("nan"))
            outs[name] = (dk, dv)
            fns[name] = (lambda cfg=cfg, dk=dk, dv=dv: run_gluon(ga, cfg, dk, dv))
        good = {}
        for name, fn in list(fns.items()):
            try:
                fn()
                torch.cuda.synchronize()
            except Exception as e:  # noqa: BLE001
                log(f"T={t} {name}: FAILED {type(e).__name__}: {str(e)[:300]}")
                del fns[name]
                continue
            if name != "triton":
                nan = int(torch.isnan(outs[name][0]).sum() + torch.isnan(outs[name][1]).sum())
                good[name] = (rel_err(outs[name][0].float(), dk_t.float()), rel_err(outs[name][1].float(), dv_t.float()),
                              nan)
        times = {n: [] for n in fns}
        for _ in range(rounds):
            for n, fn in fns.items():
                times[n].append(time_ms(fn, warmup=3, repeats=20))
        fl = tile_flops(t, window, heads)
        row = {}
        base = statistics.median(times["triton"])
        for n in fns:
            ms = statistics.median(times[n])
            row[n] = {"ms": ms, "rounds": times[n], "tflops": fl / ms / 1e9, "vs_triton": ms / base,
                      "rel_err_dk_dv": good.get(n)}
            log(f"T={t} {n:9s} {ms * 1e3:8.1f} us  {fl / ms / 1e9:6.1f} TFLOP/s (tile work)  {ms / base:5.3f}x triton"
                f"  rounds {[round(x * 1e3, 1) for x in times[n]]}  err {good.get(n)}")
        res[t] = row
        if dump is not None:
            dump(res)
    return res


def e2e(lengths, log, rounds=3):
    res = {}
    heads, d, window, n_lm = 16, 128, 512, 64
    for t in lengths:
        torch.manual_seed(0)
        q, k, v = (torch.randn(1, heads, t, d, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
        win = torch.full((1, heads, t), float(window), device="cuda", requires_grad=True)
        e = torch.randn(1, heads, t, device="cuda", requires_grad=True)
        do = torch.randn(1, heads, t, d, device="cuda", dtype=torch.bfloat16)

        def mk(on):
            def step():
                K.OPTS["gluon_dkdv"] = on
                dsalt_attention(q, k, v, win, e, n_max=window, n_landmarks=n_lm, edge=4.0, block=64,
                                impl="triton").backward(do)
                for x in (q, k, v, win, e):
                    x.grad = None
                K.OPTS["gluon_dkdv"] = False
            return step

        fns = {"dsalt": mk(False), "dsalt_gluon_dkdv": mk(True)}
        for fn in fns.values():
            fn()
            fn()
        times = {n: [] for n in fns}
        for _ in range(rounds):
            for n, fn in fns.items():
                times[n].append(time_ms(fn, warmup=2, repeats=10))
        row = {n: statistics.median(x) for n, x in times.items()}
        rr = statistics.median(a / b for a, b in zip(times["dsalt_gluon_dkdv"], times["dsalt"]))
        log(f"e2e T={t}: dsalt {row['dsalt']:.3f} ms, with gluon_dkdv {row['dsalt_gluon_dkdv']:.3f} ms "
            f"(per-round ratio {rr:.3f}); rounds {times}")
        res[t] = {**row, "round_ratio": rr, "rounds": times}
    return res


def ncu_once(t=16384, cfg_name="rows_s3"):
    """One launch of the Triton kernel (forced default config) and one of a Gluon config on synthetic
    inputs (for Nsight Compute: -k regex:_dkdv -c 2)."""
    torch.manual_seed(0)
    h, d, n_max = 16, 128, 512
    q, k, v, do = (torch.randn(1, h, t, d, device="cuda", dtype=torch.bfloat16) for _ in range(4))
    win = torch.full((1, h, t), float(n_max), device="cuda")
    lse = torch.full((1, h, t), 12.0, device="cuda")
    delta = torch.randn(1, h, t, device="cuda")
    wg = 32
    wmin = torch.full((h * (-(-t // wg)),), float(n_max), device="cuda")
    dk, dv = torch.empty_like(k), torch.empty_like(v)
    sc = d**-0.5
    args = (q, k, v, win, do, lse, delta, dk, dv, wmin, q.stride(0), q.stride(1), q.stride(2), k.stride(0),
            k.stride(1), k.stride(2), h, 1, t, n_max, 4.0, 0.25, sc * 1.4426950408889634, sc)
    K._dkdv_kernel[(t // 128, h)](*args, D=d, BLOCK_M=64, BLOCK_N=128, PREC="tf32", TRANS=1, WG=wg, num_warps=8,
                                   num_stages=2)
    run_gluon((q, k, v, win, do, lse, delta, wmin, h, 1, t, n_max, 4.0, 0.25, sc * 1.4426950408889634, sc, wg),
              CONFIGS[cfg_name], dk, dv)
    torch.cuda.synchronize()


def ws_check():
    """The warp-specialized config on two shapes against the Triton kernel (exit status 0: correct); run
    under a timeout before anything else uses it (a hang stays in this process)."""
    K.OPTS["wmin_min_t"] = 1
    ok = True
    for ci, (b, h, hk, t, n_min, n_max, edge, n_lm, _) in enumerate([CASES[0], CASES[4],
                                                                       (1, 16, 16, 8192, 512.0, 512, 4.0, 64, 1)]):
        torch.manual_seed(300 + ci)
        ins = make(b, h, hk, t, 128, n_min, n_max)
        K.OPTS["gluon_dkdv"] = False
        out = dsalt_attention(*ins, n_max=n_max, edge=edge, n_landmarks=n_lm, block=64, scale=128**-0.5,
                              impl="triton")
        out.backward(torch.randn_like(out))
        a, akw, dk_t, dv_t = SPY.rec
        dk, dv = run_gluon(gluon_args(a, akw), CONFIGS["ws"])
        torch.cuda.synchronize()
        nan = int(torch.isnan(dk).sum() + torch.isnan(dv).sum())
        ek, ev = rel_err(dk.float(), dk_t.float()), rel_err(dv.float(), dv_t.float())
        good = nan == 0 and ek < 1e-2 and ev < 1e-2
        ok &= good
        print(f"ws check T={t} G={h // hk}: dK rel {ek:.2e} dV rel {ev:.2e} NaN {nan} {'ok' if good else 'BAD'}",
              flush=True)
    sys.exit(0 if ok else 1)


def main():
    if "--ncu" in sys.argv:
        return ncu_once()
    if "--ws-check" in sys.argv:
        return ws_check()
    ap = argparse.ArgumentParser()
    ap.add_argument("--lengths", default="32768,16384,4096")
    ap.add_argument("--e2e", action="store_true")
    ap.add_argument("--no-correct", action="store_true")
    ap.add_argument("--out", default=os.environ.get("ATTNLAB_BENCH_DIR", "."))
    args = ap.parse_args()
    lines = []

    def log(s):
        print(s, flush=True)
        lines.append(s)

    log(f"device {torch.cuda.get_device_name()}, torch {torch.__version__}, available={GD.available}")
    t0 = time.time()
    lengths = [int(x) for x in args.lengths.split(",")]
    out = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "command": " ".join(sys.argv)}
    Path(args.out).mkdir(parents=True, exist_ok=True)

    def dump(res, key="kernel"):
        out[key] = res
        with open(Path(args.out) / "s9k_dkdv.json", "w") as f:
            json.dump(out, f, indent=1, default=str)

    try:
        out["kernel"] = kernel_timing(lengths, log, dump=dump)
    except Exception as e:  # noqa: BLE001
        log(f"kernel timing FAILED {type(e).__name__}: {str(e)[:800]}")
    log(f"[{time.time() - t0:.0f} s]")
    if not args.no_correct:
        try:
            out["correct"] = correctness(log)
        except Exception as e:  # noqa: BLE001
            log(f"correctness FAILED {type(e).__name__}: {str(e)[:800]}")
        log(f"[{time.time() - t0:.0f} s]")
    if args.e2e:
        out["e2e"] = e2e(lengths, log)
        log(f"[{time.time() - t0:.0f} s]")
    dump(out.get("kernel"))


if __name__ == "__main__":
    main()
