"""Session 6, device call 1 (issue 3, diff fused kernel speed goal): the gap and the ceiling.

(a) two SDPA calls vs kernel.py's fused kernel vs one SDPA call, 4K / 16K, fwd and fwd+bwd;
(b) per-kernel GPU times (torch.profiler) of kernel.py's fused kernel and of the two SDPA calls;
(c) the ceiling: hopper.py's kernels on ONE stream (plain causal attention) vs one SDPA call;
(d) hopper.py's diff candidates (forward modes, backward modes, launch configs), each checked
    against the SDPA path (output and all gradients) before it is timed.

    python benchmarks/device_runs/session6_diff_1.py --out DIR [--T 4096 16384] [--sections a,b,c,d]
"""

import argparse
import json
import os
import sys
import time
import traceback

import torch
import torch.nn.functional as F

CUDA = torch.cuda.is_available()
if not CUDA:  # CPU smoke run (tiny sizes, interpreter)
    os.environ.setdefault("TRITON_INTERPRET", "1")
DEV = "cuda" if CUDA else "cpu"
DT = torch.bfloat16 if CUDA else torch.float32
H, D = (16, 128) if CUDA else (2, 16)

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from attnlab.bench import time_ms  # noqa: E402
from attnlab.ops.diff_attention import diff_attention_sdpa  # noqa: E402
from attnlab.ops.diff_attention import hopper as Hp  # noqa: E402
from attnlab.ops.diff_attention import kernel as K  # noqa: E402
from attnlab.testing import rel_err  # noqa: E402

ROWS = []
T0 = time.time()


def log(*a):
    print(f"[{time.time() - T0:6.1f}s]", *a, flush=True)


def make(b, h, t, d, dtype, device):
    g = lambda: torch.randn(b, h, t, d, device=device, dtype=dtype, requires_grad=True)  # noqa: E731
    ins = [g(), g(), g(), g(), g()]
    lam = (0.2 + 0.5 * torch.rand(h, device=device)).requires_grad_()
    return ins + [lam]


def fwd_bwd(fn, ins, dout):
    def run():
        out = fn(*ins)
        torch.autograd.grad(out, ins, dout, allow_unused=True)
    return run


def measure(fn, ins, dout, warmup=5, repeats=20):
    fb = time_ms(fwd_bwd(fn, ins, dout), warmup, repeats)
    with torch.no_grad():
        fw = time_ms(lambda: fn(*ins), warmup, repeats)
    if not CUDA:
        return fb, fw, None
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fwd_bwd(fn, ins, dout)()
    torch.cuda.synchronize()
    return fb, fw, (torch.cuda.max_memory_allocated() - base) / 2**20


def check(fn, ref_fn, ins, dout):
    out = fn(*ins)
    got = [out] + list(torch.autograd.grad(out, ins, dout, allow_unused=True))
    ref = ref_fn(*ins)
    want = [ref] + list(torch.autograd.grad(ref, ins, dout, allow_unused=True))
    return max(rel_err(x.float(), y.float()) for x, y in zip(got, want) if x is not None and y is not None)


def profile(fn, ins, dout, n=3):
    from torch.profiler import ProfilerActivity, profile as prof

    if not CUDA:
        return []

    run = fwd_bwd(fn, ins, dout)
    run()
    torch.cuda.synchronize()
    with prof(activities=[ProfilerActivity.CUDA]) as p:
        for _ in range(n):
            run()
        torch.cuda.synchronize()
    rows = sorted(((e.key[:70], e.self_device_time_total / n / 1e3, e.count // n) for e in p.key_averages()
                   if e.self_device_time_total > 0), key=lambda r: -r[1])
    return rows


OUT = ["."]


def dump():
    with open(os.path.join(OUT[0], "session6_diff_1.json"), "w") as f:
        json.dump({"device": torch.cuda.get_device_name() if CUDA else "cpu", "torch": torch.__version__,
                   "triton": __import__("triton").__version__, "rows": ROWS}, f, indent=1, default=str)


def add(row):
    ROWS.append(row)
    log(json.dumps(row))
    dump()


def sdpa1(q1, k1, q2, k2, v, lam):
    return F.scaled_dot_product_attention(q1, k1, v, is_causal=True)


def sdpa2_flash(*ins):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        return diff_attention_sdpa(*ins)


def single(q1, k1, q2, k2, v, lam):
    return Hp.flash_single(q1, k1, v)


def section_a(Ts, out_dir):
    for t in Ts:
        ins = make(1, H, t, D, DT, DEV)
        dout = torch.randn(1, H, t, D, device=DEV, dtype=DT)
        base = None
        for label, fn in [("sdpa x2", diff_attention_sdpa), ("sdpa x2 (flash backend)", sdpa2_flash),
                          ("kernel.py fused (sessions 1-5)", K.diff_attention_triton),
                          ("sdpa x1 (plain attention)", sdpa1)]:
            try:
                fb, fw, pk = measure(fn, ins, dout)
            except Exception as e:
                log(label, "FAILED", repr(e)[:300])
                continue
            base = base or (fb, fw)
            add({"section": "a", "T": t, "variant": label, "fwd_bwd_ms": fb, "fwd_ms": fw, "peak_MiB": pk,
                 "ratio_fwd_bwd": fb / base[0], "ratio_fwd": fw / base[1]})
        for label, fn in [("sdpa x2", diff_attention_sdpa), ("kernel.py fused", K.diff_attention_triton)]:
            rows = profile(fn, ins, dout)
            log(f"profile T={t} {label}: total {sum(r[1] for r in rows):.3f} ms")
            for k, ms, c in rows[:10]:
                log(f"    {ms:8.3f} x{c} {k}")
            ROWS.append({"section": "profile", "T": t, "variant": label, "kernels": rows})


def section_c(Ts, cands):
    """ceiling: hopper.py's kernels on one stream vs one SDPA call"""
    for t in Ts:
        ins = make(1, H, t, D, DT, DEV)
        dout = torch.randn(1, H, t, D, device=DEV, dtype=DT)
        fb0, fw0, _ = measure(sdpa1, ins, dout)
        add({"section": "c", "T": t, "variant": "sdpa x1", "fwd_bwd_ms": fb0, "fwd_ms": fw0})
        for fwd_cfg, bwd_cfg, reload in cands:
            Hp.CONFIGS["fwd_single"], Hp.CONFIGS["bwd_single"], Hp.RELOAD = fwd_cfg, bwd_cfg, reload
            label = f"triton single fwd{fwd_cfg} bwd{bwd_cfg} reload={reload}"
            try:
                err = check(single, sdpa1, ins[:5] + [ins[5]], dout) if t == Ts[0] else None
                fb, fw, pk = measure(single, ins, dout)
            except Exception as e:
                log(label, "FAILED", repr(e)[:300])
                continue
            add({"section": "c", "T": t, "variant": label, "fwd_bwd_ms": fb, "fwd_ms": fw, "bwd_ms": fb - fw,
                 "ratio_fwd_bwd": fb / fb0, "ratio_fwd": fw / fw0, "ratio_bwd": (fb - fw) / (fb0 - fw0), "err": err})
        Hp.RELOAD = False


def section_d(Ts, fwd_cands, bwd_cands, prof_best=True):
    """hopper.py diff candidates vs two SDPA calls"""
    for t in Ts:
        ins = make(1, H, t, D, DT, DEV)
        dout = torch.randn(1, H, t, D, device=DEV, dtype=DT)
        fb0, fw0, pk0 = measure(diff_attention_sdpa, ins, dout)
        add({"section": "d", "T": t, "variant": "sdpa x2", "fwd_bwd_ms": fb0, "fwd_ms": fw0, "peak_MiB": pk0})
        # forward candidates (forward only), backward at its default
        best_fwd = None
        for mode, cfg in fwd_cands:
            Hp.FWD_MODE = mode
            Hp.CONFIGS["fwd_seq" if mode == "sequential" else "fwd"] = cfg
            label = f"fwd {mode} {cfg}"
            try:
                with torch.no_grad():
                    err = rel_err(Hp.diff_attention_hopper(*ins).float(), diff_attention_sdpa(*ins).float())
                    fw = time_ms(lambda: Hp.diff_attention_hopper(*ins), 5, 20)
            except Exception as e:
                log(label, "FAILED", repr(e)[:300])
                continue
            add({"section": "d-fwd", "T": t, "variant": label, "fwd_ms": fw, "ratio_fwd": fw / fw0, "err": err})
            if best_fwd is None or fw < best_fwd[1]:
                best_fwd = ((mode, cfg), fw)
        if best_fwd:
            (mode, cfg), _ = best_fwd
            Hp.FWD_MODE = mode
            Hp.CONFIGS["fwd_seq" if mode == "sequential" else "fwd"] = cfg
        best = None
        for mode, cfg, reload in bwd_cands:
            Hp.BWD_MODE, Hp.RELOAD = mode, reload
            Hp.CONFIGS["bwd_split" if mode == "split" else "bwd_fused"] = cfg
            label = f"diff fwd {Hp.FWD_MODE} bwd {mode} {cfg} reload={reload}"
            try:
                err = check(Hp.diff_attention_hopper, diff_attention_sdpa, ins, dout) if t == Ts[0] else None
                fb, fw, pk = measure(Hp.diff_attention_hopper, ins, dout)
            except Exception as e:
                log(label, "FAILED", repr(e)[:300])
                traceback.print_exc()
                continue
            add({"section": "d", "T": t, "variant": label, "fwd_bwd_ms": fb, "fwd_ms": fw, "peak_MiB": pk,
                 "ratio_fwd_bwd": fb / fb0, "ratio_fwd": fw / fw0, "err_max_vs_sdpa": err})
            if best is None or fb < best[1]:
                best = ((mode, cfg, reload), fb)
        if best and prof_best:
            mode, cfg, reload = best[0]
            Hp.BWD_MODE, Hp.RELOAD = mode, reload
            Hp.CONFIGS["bwd_split" if mode == "split" else "bwd_fused"] = cfg
            rows = profile(Hp.diff_attention_hopper, ins, dout)
            log(f"profile T={t} hopper best {best[0]}: total {sum(r[1] for r in rows):.3f} ms")
            for k, ms, c in rows[:10]:
                log(f"    {ms:8.3f} x{c} {k}")
            ROWS.append({"section": "profile", "T": t, "variant": f"hopper {best[0]}", "kernels": rows})


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=".")
    ap.add_argument("--T", type=int, nargs="+", default=[4096, 16384])
    ap.add_argument("--sections", default="a,c,d")
    a = ap.parse_args()
    OUT[0] = a.out
    torch.manual_seed(0)
    dev_name = torch.cuda.get_device_name() if CUDA else "cpu"
    log(dev_name, torch.__version__, __import__("triton").__version__)
    secs = a.sections.split(",")
    if True:
        if "a" in secs:
            section_a(a.T, a.out)
            dump()
        if "c" in secs:
            section_c(a.T, [((128, 128, 8, 3), (32, 128, 8, 2), False), ((128, 64, 8, 3), (64, 64, 8, 2), True),
                            ((128, 128, 8, 2), (64, 128, 8, 2), False)])
        if "d" in secs:
            section_d(a.T,
                      [("interleaved", (128, 64, 8, 3)), ("interleaved", (128, 64, 8, 2)),
                       ("sequential", (128, 64, 8, 3)), ("sequential", (128, 64, 8, 4)),
                       ("sequential", (128, 128, 8, 2))],
                      [("fused", (64, 64, 8, 2), False), ("fused-separate", (64, 64, 8, 2), True),
                       ("split", (32, 128, 8, 2), False), ("split", (64, 64, 8, 2), True),
                       ("split", (64, 128, 8, 2), False)])
    dump()


if __name__ == "__main__":
    main()
