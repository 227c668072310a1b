"""Device check of the Gluon diff backward (diff_gluon.py): correctness in bf16 against hopper.py's Triton
backward and the float32 reference, then backward times against hopper.py's default backward and cuDNN's
(two SDPA backward calls), with TFLOP/s per unit of work (one unit: a causal T x T x d product per head,
H T^2 d FLOP). Also the fwd+bwd op times (hopper.py default vs with the Gluon backward vs two SDPA calls).

    python benchmarks/diff_gluon_check.py [--T 4096 16384] [--check-T 1024 1000] [--quick]

--quick: CPU smoke run (no Gluon there: checks that the op falls back to the Triton kernels).
Writes diff_gluon_check.json (attnlab.bench.write_results).
"""

from __future__ import annotations

import argparse
import os
import sys

import torch
import torch.nn.functional as F

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from attnlab.bench import time_ms, write_results  # noqa: E402
from attnlab.ops.diff_attention import diff_gluon as G  # noqa: E402
from attnlab.ops.diff_attention import hopper as Hp  # noqa: E402
from attnlab.ops.diff_attention.reference import diff_attention_reference, diff_attention_sdpa  # noqa: E402
from attnlab.testing import rel_err  # noqa: E402

NAMES = ("q1", "k1", "q2", "k2", "v", "lam")
# the dQ reductions (diff_gluon.DQ_VEC, diff_gluon.PIPE): float32 atomics, 8-byte red.v2, TMA reduce-add,
# TMA reduce-add with the stream partitions software-pipelined
VARIANTS = {"atomic": (1, False), "v2": (2, False), "tma": (3, False), "tma-pipe": (3, True)}
DEFAULT = (G.DQ_VEC, G.PIPE)


def set_variant(name):
    G.DQ_VEC, G.PIPE = VARIANTS[name] if name else DEFAULT


def variant_name():
    return next((k for k, v in VARIANTS.items() if v == (G.DQ_VEC, G.PIPE)), f"{G.DQ_VEC}/{G.PIPE}")


def make(b, h, t, d, dtype, device):
    g = lambda: torch.randn(b, h, t, d, device=device, dtype=dtype, requires_grad=True)  # noqa: E731
    ins = [g(), g(), g(), g(), g()]
    ins.append((0.2 + 0.5 * torch.rand(h, device=device)).requires_grad_())
    return ins


def grads(fn, ins, dout):
    out = fn(*ins)
    return [out.detach()] + list(torch.autograd.grad(out, ins, dout))


def with_gluon(flag):
    Hp.GLUON_BWD = flag


def check(b, h, t, d, dtype, device, variant=None):
    ins = make(b, h, t, d, dtype, device)
    dout = torch.randn(b, h, t, d, device=device, dtype=dtype)
    ref_in = [x.detach().float().requires_grad_() for x in ins]
    ref = grads(diff_attention_reference, ref_in, dout.float())
    with_gluon(False)
    tri = grads(Hp.diff_attention_hopper, ins, dout)
    set_variant(variant)
    name = variant_name()
    with_gluon(True)
    glu = grads(Hp.diff_attention_hopper, ins, dout)
    glu2 = grads(Hp.diff_attention_hopper, ins, dout)
    with_gluon(False)
    set_variant(None)
    rows = []
    for i, n in enumerate(("out",) + NAMES):
        r = {"T": t, "variant": name, "tensor": n, "gluon_vs_ref": rel_err(glu[i].float(), ref[i]),
             "triton_vs_ref": rel_err(tri[i].float(), ref[i]), "gluon_vs_triton": rel_err(glu[i].float(), tri[i].float()),
             "gluon_rerun": rel_err(glu2[i].float(), glu[i].float()),
             "finite": bool(torch.isfinite(glu[i]).all())}
        rows.append(r)
        print(f"check T={t} {name:8s} {n:4s} gluon/ref {r['gluon_vs_ref']:.2e}  triton/ref {r['triton_vs_ref']:.2e}  "
              f"gluon/triton {r['gluon_vs_triton']:.2e}  rerun {r['gluon_rerun']:.1e}  finite {r['finite']}", flush=True)
    return rows


def bwd_timer(fn, ins, dout):
    out = fn(*ins)

    def run():
        torch.autograd.grad(out, ins, dout, retain_graph=True)
    return run


def fwd_bwd(fn, ins, dout):
    def run():
        out = fn(*ins)
        torch.autograd.grad(out, ins, dout)
    return run


def sdpa2_bwd(ins, dout):
    """cuDNN's backward alone: one SDPA call's backward (timed), twice."""
    q1, k1, q2, k2, v, _ = [x.detach().requires_grad_() for x in ins]
    out = F.scaled_dot_product_attention(q1, k1, v, is_causal=True)

    def run():
        torch.autograd.grad(out, (q1, k1, v), dout, retain_graph=True)
    return run


def timing(b, h, t, d, dtype, device, warmup, repeats):
    ins = make(b, h, t, d, dtype, device)
    dout = torch.randn(b, h, t, d, device=device, dtype=dtype)
    unit = b * h * t * t * d  # FLOP of one causal T x T x d product per head (2 T^2 d / 2)
    rows = []

    def add(label, ms, units=None):
        tf = units * unit / ms / 1e9 if units else None
        rows.append({"T": t, "what": label, "ms": ms, "units": units, "TFLOPs_per_unit_rate": tf})
        print(f"time T={t} {label:44s} {ms:8.3f} ms" + (f"  {tf:5.0f} TFLOP/s ({units} units)" if tf else ""),
              flush=True)

    with_gluon(False)
    add("bwd hopper.py default (split-separate)", time_ms(bwd_timer(Hp.diff_attention_hopper, ins, dout), warmup, repeats), 13)
    with_gluon(True)
    add("bwd hopper.py + Gluon fused", time_ms(bwd_timer(Hp.diff_attention_hopper, ins, dout), warmup, repeats), 8)
    add("bwd two SDPA (autograd of diff_attention_sdpa)", time_ms(bwd_timer(diff_attention_sdpa, ins, dout), warmup, repeats), 10)
    one = time_ms(sdpa2_bwd(ins, dout), warmup, repeats)
    add("bwd cuDNN one SDPA call x 2", 2 * one, 10)
    # the kernel alone (inputs from one forward + preprocess)
    if G.available(*ins[:5], dout):
        q1, k1, q2, k2, v = [x.detach() for x in ins[:5]]
        lam = ins[5].detach().float()
        out, o2, lse1, lse2 = Hp._forward(q1, k1, q2, k2, v, lam, d ** -0.5, d ** -0.5, True)
        from attnlab.ops.diff_attention.kernel import _diff_bwd_pre_kernel, _pow2
        dl1, dl2 = torch.empty_like(lse1), torch.empty_like(lse1)
        _diff_bwd_pre_kernel[(-(-t // 64), b * h)](dout, out, o2, lam, dl1, dl2, h, t, d, _pow2(d), 64)
        dk1, dk2, dv = torch.empty_like(q1), torch.empty_like(q1), torch.empty_like(q1)
        dq = torch.zeros(2, b, h, G.dq_rows(t), d, device=device, dtype=torch.float32)

        def kern():
            G.diff_bwd_gluon(q1, k1, q2, k2, v, lam, dout, lse1, lse2, dl1, dl2, dk1, dk2, dv, dq[0], dq[1],
                             d ** -0.5, d ** -0.5)
        for name in VARIANTS:
            set_variant(name)
            add(f"Gluon kernel alone, dQ by {name}", time_ms(kern, warmup, repeats), 8)
        set_variant(None)

        def kern_nodq():
            G.diff_bwd_gluon(q1, k1, q2, k2, v, lam, dout, lse1, lse2, dl1, dl2, dk1, dk2, dv, dq[0], dq[1],
                             d ** -0.5, d ** -0.5, dq_on=False)
        add("Gluon kernel, dQ atomics off (probe)", time_ms(kern_nodq, warmup, repeats), 8)
    with_gluon(False)
    fb = time_ms(fwd_bwd(diff_attention_sdpa, ins, dout), warmup, repeats)
    add("fwd+bwd two SDPA calls", fb)
    a = time_ms(fwd_bwd(Hp.diff_attention_hopper, ins, dout), warmup, repeats)
    add(f"fwd+bwd hopper.py default ({a / fb:.3f}x)", a)
    with_gluon(True)
    g = time_ms(fwd_bwd(Hp.diff_attention_hopper, ins, dout), warmup, repeats)
    add(f"fwd+bwd hopper.py + Gluon bwd ({g / fb:.3f}x)", g)
    with_gluon(False)
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--T", type=int, nargs="+", default=[4096, 16384])
    ap.add_argument("--check-T", type=int, nargs="+", default=[1024, 1000])
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--skip-check", action="store_true")
    ap.add_argument("--name", default="diff_gluon_check")
    a = ap.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    rows = []
    if a.quick or device == "cpu":
        dtype = torch.float32 if device == "cpu" else torch.bfloat16
        ins = make(1, 2, 40, 16, dtype, device)
        assert not G.available(*ins[:5], ins[0])  # no Gluon backward on the CPU / interpreter
        with_gluon(True)
        out = grads(Hp.diff_attention_hopper, ins, torch.randn_like(ins[0]))
        with_gluon(False)
        rows.append({"quick": True, "fallback_ok": all(torch.isfinite(x).all().item() for x in out)})
        print(rows[-1])
    else:
        dtype = torch.bfloat16
        print("device:", torch.cuda.get_device_name(), "gluon:", G.HAVE_GLUON, flush=True)
        if not a.skip_check:
            for t in a.check_T:
                for name in VARIANTS:
                    rows += check(1, a.heads, t, 128, dtype, device, name)
        print("BROKEN:", repr(G.BROKEN), flush=True)
        for t in a.T:
            rows += timing(1, a.heads, t, 128, dtype, device, 5 if t > 8192 else 10, 15 if t > 8192 else 30)
        # the fastest dQ reduction at the largest T whose check passed (rel err vs reference <= 2e-2, finite)
        ok = {r["variant"] for r in rows if "tensor" in r} - {
            r["variant"] for r in rows if "tensor" in r and (not r["finite"] or r["gluon_vs_ref"] > 2e-2)}
        tk = [r for r in rows if r.get("what", "").startswith("Gluon kernel alone, dQ by") and r["T"] == max(a.T)]
        best = min((r for r in tk if r["what"].rsplit(" ", 1)[-1] in ok), key=lambda r: r["ms"], default=None)
        if best is not None:
            print("BEST_DQ", best["what"].rsplit(" ", 1)[-1], flush=True)
    write_results(a.name, rows, {"kernel": "diff_gluon", "BM": G.BM, "BN": G.BN, "STAGES": G.STAGES, "REGS": G.REGS,
                                 "default": variant_name()})


if __name__ == "__main__":
    main()
