"""The Gluon dV kernel of the noise-once CMD path (noise_dv_gluon.py). Gluon has no interpreter: on CPU
only the dispatch is tested (GLUON_DV on falls back to the Triton dV kernel, same results; a failing
kernel switches itself off; the recorded launch binds every parameter); the kernel itself runs in the
tests marked gpu (bf16 on a Hopper GPU, vs the fp32 reference and the Triton kernel, the full op's
forward and every gradient, the launch replay)."""

import pytest
import torch

pytest.importorskip("triton")

from attnlab.ops.diff_attention import noise_dv_gluon as NG  # noqa: E402
from attnlab.ops.diff_attention import noise_once as NO  # noqa: E402
from attnlab.testing import rel_err  # noqa: E402

DEV = "cuda" if torch.cuda.is_available() else "cpu"


def _hopper():
    return DEV == "cuda" and torch.cuda.get_device_capability()[0] == 9 and NG.HAVE_GLUON


def test_gluon_dv_unavailable_falls_back(monkeypatch):
    """Where Gluon cannot run (CPU / interpreter / other widths), GLUON_DV on takes the Triton dV kernel:
    the same outputs and gradients as with it off."""
    if DEV == "cuda":
        x = torch.zeros(1, 4, 16, dtype=torch.float32, device=DEV)
        assert not NG.available(x, x, x[:, None], x[:, None], 16, 16)  # fp32, 16-wide: never Gluon
        return
    x = torch.zeros(1, 256, 128)
    assert not NG.available(x, x, x[:, None], x[:, None], 128, 128)
    torch.manual_seed(0)
    q2, k2 = torch.randn(1, 1, 21, 16, requires_grad=True), torch.randn(1, 1, 21, 16, requires_grad=True)
    v = torch.randn(1, 3, 21, 16, requires_grad=True)
    g = torch.randn(1, 3, 21, 16)
    res = []
    for flag in (False, True):
        monkeypatch.setattr(NO, "GLUON_DV", flag)
        out = NO.shared_noise_attention(q2, k2, v)
        res.append([out, *torch.autograd.grad(out, (q2, k2, v), g)])
    for a, b in zip(*res):
        assert torch.equal(a, b)


def test_gluon_dv_failure_falls_back(monkeypatch):
    """A Gluon dV kernel that fails (e.g. another Triton's Gluon API) is switched off with a warning and the
    backward takes the Triton dV kernel (``_gluon_dv`` returns False)."""
    def boom(*a, **k):
        raise RuntimeError("no such Gluon op")

    monkeypatch.setattr(NG, "available", lambda *a, **k: True)
    monkeypatch.setattr(NG, "noise_bwd_dv_gluon", boom)
    monkeypatch.setattr(NG, "BROKEN", "")
    x = torch.zeros(1, 8, 128)
    v = torch.zeros(1, 2, 8, 128)
    with pytest.warns(UserWarning, match="Gluon dV kernel failed"):
        assert NO._gluon_dv(None, x, x, v, None, v, None, None, 2, 8, 1024, 0.1, True) is False
    assert "no such Gluon op" in NG.BROKEN


@pytest.mark.skipif(not NG.HAVE_GLUON, reason="this Triton has no Gluon")
@pytest.mark.parametrize("config", [None, (2, 64, 128, 3, 8, 0), (4, 64, 64, 2, 8)])
def test_gluon_dv_launch_binds_every_parameter(config):
    """The recorded launch passes one positional argument per kernel parameter (what the launch replay
    hands the launcher) and the grid covers (batch x head groups, key blocks). CPU: descriptors of CPU
    tensors, a stand-in launcher."""
    seen = []
    q = torch.zeros(2, 200, 128, dtype=torch.bfloat16)
    dn = torch.zeros(2, 5, 200, 128, dtype=torch.bfloat16)
    f = torch.zeros(64)
    NG.noise_bwd_dv_gluon(q, q, dn, f, dn, f, q, 5, 200, 2 * 200 * 128, 0.1, config=config,
                          go=lambda kernel, grid, args, **opts: seen.append((kernel, grid, args, opts)))
    kernel, grid, args, opts = seen[0]
    g, _, bn, _, w, *_ = config or NG.GLUON_DV_CONFIG
    assert len(args) == len(kernel.arg_names) and opts == {"num_warps": w}
    assert grid == (2 * -(-5 // g), -(-200 // bn))


def test_bench_noise_dv_gluon_quick(tmp_path):
    """The kernel benchmark runs at a tiny size (CPU: the Triton dV kernel vs the reference only)."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "ATTNLAB_BENCH_DIR": str(tmp_path), "PYTHONPATH": str(root)}
    subprocess.run([sys.executable, str(root / "benchmarks" / "bench_noise_dv_gluon.py"), "--quick"], check=True,
                   env=env, cwd=root, capture_output=True, timeout=600)
    rows = json.loads((tmp_path / "bench_noise_dv_gluon.json").read_text())["rows"]
    tri = next(r for r in rows if r["kernel"].startswith("triton"))
    if DEV == "cpu":
        assert tri["dv rel vs fp32"] < 1e-5 and tri["cast rel"] < 1e-6


@pytest.mark.gpu
@pytest.mark.skipif(not _hopper(), reason="Gluon kernel: Hopper GPU only")
@pytest.mark.parametrize("t", [1024, 999])
def test_gluon_dv_kernel_gpu(t, tmp_path, monkeypatch):
    """The kernel alone, every config: dV vs the float32 reference and vs the Triton kernel (bf16), the
    dQ2/dK2 cast."""
    import importlib.util, pathlib  # noqa: E401
    path = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "bench_noise_dv_gluon.py"
    spec = importlib.util.spec_from_file_location("bench_noise_dv_gluon", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    monkeypatch.setenv("ATTNLAB_BENCH_DIR", str(tmp_path))
    rows = mod.main(["--T", str(t), "--repeats", "2", "--name", f"test_noise_dv_gluon_{t}"])
    gl = [r for r in rows if r["kernel"].startswith("gluon")]
    tri = next(r for r in rows if r["kernel"].startswith("triton"))
    assert len(gl) == len(NG.CONFIGS), "a Gluon config did not run"
    for r in gl + [tri]:
        assert r["finite"] and r["cast rel"] < 1e-2, r
        assert r["dv rel vs fp32 (worst head)"] < 1e-2, r
    for r in gl:
        assert r["dv rel vs fp32"] <= 1.5 * tri["dv rel vs fp32"] + 1e-3, r


@pytest.mark.gpu
@pytest.mark.skipif(not _hopper(), reason="Gluon kernel: Hopper GPU only")
@pytest.mark.parametrize("shape", [(1, 16, 1024), (2, 5, 777)])
@pytest.mark.parametrize("gluon_dk", [False, True])
def test_gluon_dv_op_gpu(monkeypatch, shape, gluon_dk):
    """The CMD op with GLUON_DV on vs off (bf16, 128-wide heads; with and without the Gluon dK/dQ
    kernel): forward and every gradient vs the float32 reference, no worse than the Triton kernel's."""
    from attnlab.ops.diff_attention import diff_attention_reference

    b, h, t = shape
    mk = lambda *s: torch.randn(*s, device=DEV, dtype=torch.bfloat16)  # noqa: E731
    ins = [mk(b, h, t, 128), mk(b, h, t, 128), mk(b, 1, t, 128), mk(b, 1, t, 128), mk(b, h, t, 128),
           0.2 + torch.rand(h, device=DEV)]
    ins = [x.requires_grad_() for x in ins]
    ref = diff_attention_reference(*[x.float() for x in ins])
    g = torch.randn_like(ref)
    want = torch.autograd.grad(ref, ins, g)
    errs, calls, real = {}, [], NG.noise_bwd_dv_gluon
    monkeypatch.setattr(NG, "noise_bwd_dv_gluon", lambda *a, **k: calls.append(1) or real(*a, **k))
    monkeypatch.setattr(NO, "GLUON_DK", gluon_dk)
    for flag in (False, True):
        monkeypatch.setattr(NO, "GLUON_DV", flag)
        out = NO.cmd_attention_noise_once(*ins)
        got = torch.autograd.grad(out, ins, g.to(torch.bfloat16))
        errs[flag] = [rel_err(out, ref)] + [rel_err(x, y) for x, y in zip(got, want)]
    assert calls, "the Gluon dV kernel did not run"
    for name, e, e0 in zip(("out", "q1", "k1", "q2", "k2", "v", "lam"), errs[True], errs[False]):
        assert e <= max(1e-2, 1.5 * e0), (name, e, e0)


@pytest.mark.gpu
@pytest.mark.skipif(not _hopper(), reason="Gluon kernel: Hopper GPU only")
def test_gluon_dv_replay_equals_slow_path_gpu(monkeypatch):
    """GLUON_DV and GLUON_DK on, launch replay on: a replayed backward on NEW tensors (new pointers in the
    rebuilt descriptors) gives the slow path's gradients on those tensors, and the replay ran."""
    from attnlab.ops.diff_attention import latent as K

    monkeypatch.setattr(NO, "GLUON_DV", True)
    monkeypatch.setattr(NO, "GLUON_DK", True)
    monkeypatch.setattr(K, "_FAST", True)
    monkeypatch.setattr(K, "_PLANS", {})
    replays, real = [], K._replay
    monkeypatch.setattr(K, "_replay", lambda plan, roots: replays.append(real(plan, roots)) or replays[-1])

    def inputs():
        mk = lambda *s: torch.randn(*s, device=DEV, dtype=torch.bfloat16)  # noqa: E731
        ins = [mk(1, 6, 515, 128), mk(1, 6, 515, 128), mk(1, 1, 515, 128), mk(1, 1, 515, 128),
               mk(1, 6, 515, 128), 0.2 + torch.rand(6, device=DEV)]
        return [x.requires_grad_() for x in ins], mk(1, 6, 515, 128)

    def run(ins, dout):
        out = NO.cmd_attention_noise_once(*ins)
        return [out, *torch.autograd.grad(out, ins, dout)]

    run(*inputs())  # records the plans
    ins, dout = inputs()
    fast = run(ins, dout)
    assert replays and all(replays), f"the replay did not run: {replays}"
    assert not NG.BROKEN, NG.BROKEN
    monkeypatch.setattr(K, "_FAST", False)
    slow = run(ins, dout)
    assert torch.equal(fast[0], slow[0])
    for name, x, y in zip(("q1", "k1", "q2", "k2", "v", "lam"), fast[1:], slow[1:]):
        assert rel_err(x, y) <= 1e-2, name
    assert torch.equal(fast[5], slow[5])  # dV: no atomics, bit-identical
