"""The warp-specialised Gluon backward of the fused differential attention (diff_gluon.py). Gluon has no
interpreter: on CPU only the dispatch is tested (hopper.GLUON_BWD on falls back to the Triton kernels, same
results); the kernel itself runs in the tests marked gpu (bf16 on a Hopper GPU: vs the float32 reference
and hopper.py's Triton backward, every gradient incl. lam, odd T)."""

import pytest
import torch

pytest.importorskip("triton")

from attnlab.ops.diff_attention import diff_gluon as G  # noqa: E402
from attnlab.ops.diff_attention import hopper as Hp  # noqa: E402
from attnlab.ops.diff_attention.reference import diff_attention_reference  # noqa: E402
from attnlab.testing import rel_err  # noqa: E402

DEV = "cuda" if torch.cuda.is_available() else "cpu"
NAMES = ("q1", "k1", "q2", "k2", "v", "lam")


def _hopper():
    return DEV == "cuda" and torch.cuda.get_device_capability()[0] == 9 and G.HAVE_GLUON


def _inputs(b, h, t, d, dtype, h2=None):
    mk = lambda hh: torch.randn(b, hh, t, d, device=DEV, dtype=dtype)  # noqa: E731
    ins = [mk(h), mk(h), mk(h2 or h), mk(h2 or h), mk(h), 0.2 + 0.5 * torch.rand(h, device=DEV)]
    return [x.requires_grad_() for x in ins]


def _grads(fn, ins, g, *scales):
    out = fn(*ins, *scales)
    return [out] + list(torch.autograd.grad(out, ins, g))


def test_available_rejects():
    """Never Gluon on CPU / the interpreter, fp32, other head dims or shared (CMD) heads."""
    x = torch.zeros(1, 2, 64, 128, device=DEV)
    assert not G.available(x, x, x, x, x, x)  # fp32
    y = torch.zeros(1, 2, 64, 64, device=DEV, dtype=torch.bfloat16)
    assert not G.available(y, y, y, y, y, y)  # head dim 64
    z = torch.zeros(1, 2, 64, 128, device=DEV, dtype=torch.bfloat16)
    assert not G.available(z, z, z[:, :1], z[:, :1], z, z)  # CMD: one noise head
    if not _hopper():
        assert not G.available(z, z, z, z, z, z)


def test_gluon_flag_falls_back(monkeypatch):
    """GLUON_BWD on where the kernel cannot run: hopper.py's Triton backward, the same gradients."""
    torch.manual_seed(0)
    ins = _inputs(1, 2, 19, 16, torch.float32)
    g = torch.randn(1, 2, 19, 16, device=DEV)
    res = []
    for flag in (False, True):
        monkeypatch.setattr(Hp, "GLUON_BWD", flag)
        res.append(_grads(Hp.diff_attention_hopper, ins, g))
    for name, a, b in zip(("out",) + NAMES, *res):
        assert torch.equal(a, b), name


@pytest.mark.gpu
@pytest.mark.skipif(not _hopper(), reason="needs a Hopper GPU and Gluon")
@pytest.mark.parametrize("t,vec", [(1024, None), (1000, None), (64, None), (130, 1), (130, 2), (130, 3), (1000, 3),
                                   (130, "pipe"), (1000, "pipe")])
def test_gluon_bwd_bf16_gpu(monkeypatch, t, vec):
    """bf16: every gradient (q1, k1, q2, k2, v, lam) vs the float32 reference and vs the Triton backward;
    T not a multiple of the 64-key block included; non-default scales; each dQ reduction (vec: 1 float32
    atomics, 2 8-byte red.v2, 3 TMA reduce-add, pipe: 3 with the pipelined stream partitions; None: the default)."""
    torch.manual_seed(t)
    if vec == "pipe":
        monkeypatch.setattr(G, "DQ_VEC", 3)
        monkeypatch.setattr(G, "PIPE", True)
    elif vec is not None:
        monkeypatch.setattr(G, "DQ_VEC", vec)
        monkeypatch.setattr(G, "PIPE", False)
    ins = _inputs(1, 4, t, 128, torch.bfloat16)
    g = torch.randn(1, 4, t, 128, device=DEV, dtype=torch.bfloat16)
    s1, s2 = 0.8 * 128 ** -0.5, 1.2 * 128 ** -0.5
    ref = _grads(diff_attention_reference, [x.detach().float().requires_grad_() for x in ins], g.float(), s1, s2)
    monkeypatch.setattr(Hp, "GLUON_BWD", False)
    tri = _grads(Hp.diff_attention_hopper, ins, g, s1, s2)
    monkeypatch.setattr(Hp, "GLUON_BWD", True)
    assert G.available(*ins[:5], g)
    glu = _grads(Hp.diff_attention_hopper, ins, g, s1, s2)
    assert not G.BROKEN
    for name, a, b, r in zip(("out",) + NAMES, glu, tri, ref):
        assert a.shape == r.shape and a.dtype == b.dtype, name
        assert torch.isfinite(a).all(), name
        e, e_tri = rel_err(a.float(), r), rel_err(b.float(), r)
        assert e <= max(2e-2, 1.5 * e_tri), (name, e, e_tri)


def test_gluon_scripts_quick(tmp_path):
    """diff_gluon_check.py --quick (the fallback on CPU) and the benchmark's --gluon-bwd row run end to end."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "ATTNLAB_BENCH_DIR": str(tmp_path), "PYTHONPATH": str(root)}
    subprocess.run([sys.executable, str(root / "benchmarks" / "diff_gluon_check.py"), "--quick"], check=True,
                   env=env, cwd=root, capture_output=True, timeout=600)
    assert json.loads((tmp_path / "diff_gluon_check.json").read_text())["rows"][0]["fallback_ok"]
    subprocess.run([sys.executable, str(root / "benchmarks" / "bench_diff_kernel.py"), "--quick", "--groups", "diff",
                    "--skip-fused", "--gluon-bwd", "tma"], check=True, env=env, cwd=root, capture_output=True,
                   timeout=600)
    rows = json.loads((tmp_path / "bench_diff_kernel.json").read_text())["rows"]
    row = next(r for r in rows if r["variant"] == "fused triton hopper.py + Gluon bwd (dQ tma)")
    assert row["rel_err_vs_sdpa"] < 1e-4
