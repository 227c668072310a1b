"""DSALT window dQ pass in Gluon (attnlab/ops/dsalt/gluon_dq.py, OPTS["gluon_dq"]).

Gluon has no interpreter: on CPU these tests check the dispatch and the fallback only (the Gluon kernel
never runs there; kernel.window_dq runs the Triton _dq_kernel in the interpreter and is checked against the
reference). The tests marked gpu run the Gluon kernel itself (Hopper) against the Triton kernel and the
float64 reference, bf16."""

import warnings

import pytest
import torch

from attnlab.ops.dsalt import dsalt_attention, dsalt_reference, triton_available
from attnlab.testing import rel_err

needs_triton = pytest.mark.skipif(not triton_available(), reason="triton not installed")


def _inputs(b, h, hk, t, d, n_max, dtype, device, wmode="rand"):
    q = torch.randn(b, h, t, d, dtype=dtype, device=device)
    k = torch.randn(b, hk, t, d, dtype=dtype, device=device)
    v = torch.randn(b, hk, t, d, dtype=dtype, device=device)
    do = torch.randn(b, h, t, d, dtype=dtype, device=device)
    e = torch.randn(b, hk, t, device=device)
    if wmode == "rand":
        win = 1 + torch.rand(b, h, t, device=device) * (n_max - 1)
    elif wmode == "one":
        win = torch.ones(b, h, t, device=device)
    else:
        win = torch.full((b, h, t), float(n_max), device=device)
    return q, k, v, do, e, win


def _ref(q, k, v, do, e, win, n_max, edge, block):
    qq, kk, vv, ww = (x.detach().double().requires_grad_() for x in (q, k, v, win))
    out = dsalt_reference(qq, kk, vv, ww, e.double(), n_max=n_max, edge=edge, n_landmarks=0, block=block)
    out.backward(do.double())
    return out, qq.grad, ww.grad


@needs_triton
def test_dispatch_off_the_gpu():
    """On CPU (or the interpreter) the Gluon path is never taken, whatever OPTS says."""
    from attnlab.ops.dsalt import gluon_dq as GD
    from attnlab.ops.dsalt import kernel as K

    q, k, v, do, e, win = _inputs(1, 2, 1, 16, 128, 8, torch.bfloat16, "cpu")
    saved = K.OPTS["gluon_dq"]
    K.OPTS["gluon_dq"] = True
    try:
        assert not GD.available(q, k, v, do, q)
        assert not K.gluon_dq_ready(q, k, v, do, q)
    finally:
        K.OPTS["gluon_dq"] = saved


@needs_triton
def test_window_dq_triton_path_matches_reference():
    """kernel.window_dq (the pass the Gluon kernel replaces; here the Triton kernel in the interpreter):
    dQ, dW, delta and the 16-row window minima vs the float64 reference (window only), odd T, GQA."""
    from attnlab.ops.dsalt import kernel as K

    n_max, edge, block = 20, 3.0, 16
    q, k, v, do, e, win = _inputs(1, 2, 1, 37, 16, n_max, torch.float32, "cpu")
    o, lse, _ = K.forward_saved(q, k, v, win, e, n_max=n_max, edge=edge, n_landmarks=0, block=block)
    dq, dw, delta, wmin = K.window_dq(q, k, v, win, do, lse, o, n_max=n_max, edge=edge, wg=16, gluon=False)
    ref, rdq, rdw = _ref(q, k, v, do, e, win, n_max, edge, block)
    assert rel_err(o, ref) < 1e-5
    assert rel_err(dq, rdq) < 1e-5 and rel_err(dw, rdw) < 1e-5
    assert rel_err(delta, (ref * do.double()).sum(-1)) < 1e-5
    wpad = torch.nn.functional.pad(win, (0, 48 - 37), value=1.0).view(2, 3, 16).amin(-1)
    assert torch.equal(wmin.view(2, 3), wpad)


@needs_triton
def test_gluon_failure_falls_back(monkeypatch):
    """A Gluon compile/launch failure switches the kernel off with a warning; the backward then runs the
    Triton kernel and gives the same gradients (forced here by pretending the kernel is available)."""
    from attnlab.ops.dsalt import gluon_dq as GD
    from attnlab.ops.dsalt import kernel as K

    ins = _inputs(1, 2, 1, 37, 16, 12, torch.float32, "cpu")
    q, k, v, do, e, win = ins
    kw = dict(n_max=12, edge=2.0, n_landmarks=3, block=16)

    def grads():
        xs = [x.detach().clone().requires_grad_() for x in (q, k, v, win, e)]
        dsalt_attention(*xs, impl="triton", **kw).backward(do)
        return [x.grad for x in xs]

    base = grads()
    calls = []

    def boom(*a, **kw_):
        calls.append(1)
        raise RuntimeError("no Gluon here")

    monkeypatch.setattr(GD, "available", lambda *a: not GD.BROKEN)
    monkeypatch.setattr(GD, "dq_gluon", boom)
    monkeypatch.setattr(GD, "BROKEN", "")
    monkeypatch.setitem(K.OPTS, "gluon_dq", True)
    monkeypatch.setitem(K.OPTS, "gluon_dq_min_t", 0)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        got = grads()
        got2 = grads()  # switched off: no second try
    assert calls == [1] and "no Gluon here" in GD.BROKEN
    assert any("Gluon dQ kernel unavailable" in str(x.message) for x in w)
    for a, b in zip(got + got2, base + base):
        assert torch.equal(a, b)


@needs_triton
def test_gluon_dq_lm_part_keeps_triton(monkeypatch):
    """With the landmark dQ inside the dQ pass (lm_dq off) the Gluon kernel is not used."""
    from attnlab.ops.dsalt import kernel as K

    q, k, v, do, e, win = _inputs(1, 2, 1, 16, 128, 8, torch.bfloat16, "cpu")
    monkeypatch.setitem(K.OPTS, "gluon_dq", True)
    monkeypatch.setitem(K.OPTS, "gluon_dq_min_t", 0)
    assert not K.gluon_dq_ready(q, k, v, do, q, lm_part=True)
    monkeypatch.setitem(K.OPTS, "fuse_delta", False)
    assert not K.gluon_dq_ready(q, k, v, do, q)


@needs_triton
def test_gluon_dq_length_gate(monkeypatch):
    """On by default only from OPTS["gluon_dq_min_t"] on (where it measured faster); the explicit
    window_dq(gluon=True) entry ignores the gate (tests of short sequences)."""
    from attnlab.ops.dsalt import gluon_dq as GD
    from attnlab.ops.dsalt import kernel as K

    assert K.OPTS["gluon_dq"] and K.OPTS["gluon_dq_min_t"] == 16384
    q, k, v, do, e, win = _inputs(1, 2, 1, 16, 128, 8, torch.bfloat16, "cpu")
    monkeypatch.setattr(GD, "available", lambda *a: True)
    assert not K.gluon_dq_ready(q, k, v, do, q)
    assert K.gluon_dq_ready(q, k, v, do, q, min_t=0)
    monkeypatch.setitem(K.OPTS, "gluon_dq_min_t", 16)
    assert K.gluon_dq_ready(q, k, v, do, q)


def test_gluon_dq_resources_quick():
    """The offline sm_90 compile report of the Gluon dQ kernel (no GPU needed) runs for the default config."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    pytest.importorskip("triton")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "dsalt_gluon_dq_resources.py"
    out = subprocess.run([sys.executable, str(script), "--quick"], env=env, capture_output=True, text=True,
                         timeout=600)
    if "no Gluon" in out.stdout:
        pytest.skip("this triton has no Gluon")
    if out.returncode and ("GPUTarget" in out.stderr or "ptxas" in out.stderr):
        pytest.skip(f"triton cannot compile for sm_90 here: {out.stderr[-300:]}")
    assert out.returncode == 0, out.stderr[-2000:]
    assert "bm64_s2" in out.stdout and "registers" in out.stdout


# ---- the Gluon kernel itself (Hopper GPU) ----

GPU_CASES = [  # b, h, hk, t, n_max, window mode
    (1, 4, 4, 1000, 512, "rand"),   # odd T
    (2, 4, 2, 777, 100, "rand"),    # GQA, odd T, two batches
    (1, 2, 1, 333, 64, "one"),      # every window 1 (extreme)
    (1, 2, 2, 1030, 1030, "full"),  # window = whole sequence
    (1, 3, 3, 4096, 512, "full"),   # the benchmark's window
]


def _gluon_or_skip():
    from attnlab.ops.dsalt import gluon_dq as GD

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    x = torch.empty(1, 1, 64, 128, device="cuda", dtype=torch.bfloat16)
    if not GD.available(x, x, x, x, x):
        pytest.skip("the Gluon dQ kernel needs a Hopper GPU and triton with Gluon")
    return GD


@pytest.mark.gpu
@pytest.mark.parametrize("case", GPU_CASES)
@pytest.mark.parametrize("cfg", ["bm64_s2", "bm64_nodefer", "bm128"])
def test_gluon_dq_matches_triton_and_reference(case, cfg, monkeypatch):
    GD = _gluon_or_skip()
    from attnlab.ops.dsalt import kernel as K

    monkeypatch.setenv("ATTNLAB_DSALT_AUTOTUNE", "0")  # the Triton kernels' first configs: no autotuning per shape
    b, h, hk, t, n_max, wmode = case
    edge = 4.0
    q, k, v, do, e, win = _inputs(b, h, hk, t, 128, n_max, torch.bfloat16, "cuda", wmode)
    o, lse, _ = K.forward_saved(q, k, v, win, e, n_max=n_max, edge=edge, n_landmarks=0, block=64)
    tri = K.window_dq(q, k, v, win, do, lse, o, n_max=n_max, edge=edge, wg=32, gluon=False)
    monkeypatch.setitem(K.FORCE_CONFIG, "gluon_dq", GD.CONFIGS[cfg])
    glu = K.window_dq(q, k, v, win, do, lse, o, n_max=n_max, edge=edge, wg=32, gluon=True)
    glu2 = K.window_dq(q, k, v, win, do, lse, o, n_max=n_max, edge=edge, wg=32, gluon=True)  # replayed
    nt = b * h * -(-t // 32)
    for x in glu[:3]:
        assert not torch.isnan(x).any()
    assert torch.equal(glu[3][:nt], tri[3][:nt])
    assert rel_err(glu[2], tri[2]) < 1e-6
    assert rel_err(glu[0], tri[0]) < 1e-2 and rel_err(glu[1], tri[1]) < 2e-2
    for x, y in zip(glu[:3], glu2[:3]):
        assert torch.equal(x, y)
    if t <= 1100:
        _, rdq, rdw = _ref(q, k, v, do, e, win, n_max, edge, 64)
        assert rel_err(glu[0], rdq) <= max(1e-2, 1.5 * rel_err(tri[0], rdq))
        if rdw.abs().sum() > 0:
            assert rel_err(glu[1], rdw) <= max(2e-2, 1.5 * rel_err(tri[1], rdw))


@pytest.mark.gpu
@pytest.mark.parametrize("shape", [(1, 8, 4, 4096), (1, 3, 3, 1111), (2, 2, 1, 640)])
def test_gluon_dq_whole_op(shape, monkeypatch):
    """The DSALT op (64 landmarks) with OPTS["gluon_dq"] on vs off: output and every gradient."""
    _gluon_or_skip()
    from attnlab.ops.dsalt import kernel as K

    monkeypatch.setenv("ATTNLAB_DSALT_AUTOTUNE", "0")
    b, h, hk, t = shape
    q, k, v, do, e, win = _inputs(b, h, hk, t, 128, 512, torch.bfloat16, "cuda")
    res = {}
    for on in (False, True):
        monkeypatch.setitem(K.OPTS, "gluon_dq", on)
        monkeypatch.setitem(K.OPTS, "gluon_dq_min_t", 0)
        xs = [x.detach().clone().requires_grad_() for x in (q, k, v, win, e)]
        out = dsalt_attention(*xs, n_max=512, n_landmarks=64, edge=4.0, block=64, impl="triton")
        out.backward(do)
        res[on] = [out] + [x.grad for x in xs]
    for name, a, c in zip(["out", "q", "k", "v", "win", "energy"], res[True], res[False]):
        assert not torch.isnan(a).any(), name
        assert rel_err(a, c) < 2e-2, name
