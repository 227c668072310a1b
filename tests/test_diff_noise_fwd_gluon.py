"""The Gluon noise forward (noise_fwd_gluon.py: 2-head groups, the default, and 4-head groups). Gluon has no interpreter: on CPU only
the dispatch and fallback are tested (GLUON_FWD on takes the Triton forward kernel, same results; a failing
Gluon launch is switched off with a warning; the recorded launch binds every parameter positionally); the
kernel itself runs in the tests marked gpu (bf16 on a Hopper GPU: every output vs the fp32 reference and the
Triton kernel, the op's forward and every gradient, the launch replay)."""

import pytest
import torch

pytest.importorskip("triton")

from attnlab.ops.diff_attention import noise_fwd_gluon as NF  # noqa: E402
from attnlab.ops.diff_attention import noise_once as NO  # noqa: E402
from attnlab.testing import rel_err  # noqa: E402

DEV = "cuda" if torch.cuda.is_available() else "cpu"


def _hopper():
    return DEV == "cuda" and torch.cuda.get_device_capability()[0] == 9 and NF.HAVE_GLUON


def _bench():
    import importlib.util
    import pathlib
    path = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "bench_noise_fwd_gluon.py"
    spec = importlib.util.spec_from_file_location("bench_noise_fwd_gluon", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_gluon_fwd_unavailable_falls_back(monkeypatch):
    """Where Gluon cannot run (CPU / interpreter / fp32 / other widths), GLUON_FWD on takes the Triton
    forward kernel: the same output and gradients as with it off."""
    x = torch.zeros(1, 4, 16, device=DEV)
    assert not NF.available(x, x, x[:, None])  # fp32, 16-wide: never Gluon
    if DEV == "cuda":
        return
    torch.manual_seed(0)
    q2, k2 = torch.randn(1, 1, 21, 16, requires_grad=True), torch.randn(1, 1, 21, 16, requires_grad=True)
    v = torch.randn(1, 5, 21, 16, requires_grad=True)
    g = torch.randn(1, 5, 21, 16)
    res = []
    for flag in (False, True):
        monkeypatch.setattr(NO, "GLUON_FWD", flag)
        out = NO.shared_noise_attention(q2, k2, v)
        res.append([out, *torch.autograd.grad(out, (q2, k2, v), g)])
    for a, b in zip(*res):
        assert torch.equal(a, b)


def test_gluon_fwd_failure_falls_back(monkeypatch):
    """A Gluon forward that fails (e.g. another Triton's Gluon API) is switched off with a warning
    (``_gluon_fwd`` returns False: the Triton kernel runs)."""
    def boom(*a, **k):
        raise RuntimeError("no such Gluon op")

    monkeypatch.setattr(NF, "available", lambda *a, **k: True)
    monkeypatch.setattr(NF, "noise_fwd_gluon", boom)
    monkeypatch.setattr(NF, "BROKEN", "")
    x = torch.zeros(1, 8, 128)
    with pytest.warns(UserWarning, match="Gluon forward failed"):
        assert NO._gluon_fwd(None, x, x, x[:, None], None, None, None, None, None, None, 0.1, False, False) is False
    assert "no such Gluon op" in NF.BROKEN


@pytest.mark.skipif(not NF.HAVE_GLUON, reason="this Triton has no Gluon")
def test_gluon_fwd_launch_binds_every_parameter():
    """The recorded launch passes one positional argument per kernel parameter (what the launch replay
    hands the launcher) and only num_warps by keyword; the grid is (B x 4-head groups, query blocks).
    CPU: descriptors of CPU tensors, a stand-in launcher."""
    seen = []
    q = torch.zeros(2, 64, 128, dtype=torch.bfloat16)
    v = torch.zeros(2, 5, 64, 128, dtype=torch.bfloat16)
    f = torch.zeros(64)
    go = lambda kernel, grid, args, **opts: seen.append((kernel, grid, args, opts))  # noqa: E731
    NF.noise_fwd_gluon(q, q, v, v, f, v, v, f, f, 0.1, True, True, go=go)  # default: 2-head groups
    NF.noise_fwd_gluon(q, q, v, v, f, v, v, f, f, 0.1, True, True, config=NF.G4_CONFIG, go=go)
    for (kernel, grid, args, opts), want in zip(seen, [(2 * 3, 1), (2 * 2, 1)]):
        assert len(args) == len(kernel.arg_names) and set(opts) == {"num_warps"}
        assert grid == want
    assert seen[0][0] is NF._noise_fwd_gluon2_kernel and seen[1][0] is NF._noise_fwd_gluon_kernel
    with pytest.raises(ValueError, match="BM"):
        NF.noise_fwd_gluon(q, q, v, v, f, v, v, f, f, 0.1, True, True, config=(128, 64, 2, 8, 0, 4), go=go)


def test_bench_noise_fwd_gluon_quick(tmp_path):
    """The kernel benchmark runs at a tiny size (CPU: the Triton kernel vs the reference only)."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "ATTNLAB_BENCH_DIR": str(tmp_path), "PYTHONPATH": str(root)}
    subprocess.run([sys.executable, str(root / "benchmarks" / "bench_noise_fwd_gluon.py"), "--quick"], check=True,
                   env=env, cwd=root, capture_output=True, timeout=600)
    rows = json.loads((tmp_path / "bench_noise_fwd_gluon.json").read_text())["rows"]
    tri = next(r for r in rows if r["kernel"] == "triton G=2")
    assert tri["finite"] and tri["workspace zeroed"]
    if DEV == "cpu":
        assert tri["N rel vs fp32"] < 1e-5 and tri["out rel vs fp32"] < 1e-5 and tri["lse max abs err"] < 1e-4


@pytest.mark.gpu
@pytest.mark.skipif(not _hopper(), reason="Gluon kernel: Hopper GPU only")
@pytest.mark.parametrize("t,h,b", [(1024, 16, 1), (999, 5, 2)])
def test_gluon_fwd_kernel_gpu(t, h, b, tmp_path, monkeypatch):
    """The kernel alone: N, out, LSE vs the float32 reference and the Triton kernel (bf16), workspace zeroed
    (both forms; odd T, heads not a multiple of the group, two batches)."""
    monkeypatch.setenv("ATTNLAB_BENCH_DIR", str(tmp_path))
    rows = _bench().main(["--T", str(t), "--heads", str(h), "--batch", str(b), "--repeats", "2",
                          "--configs", ",".join(map(str, NF.G4_CONFIG)), "--name", f"test_noise_fwd_gluon_{t}"])
    by = {r["kernel"]: r for r in rows}
    gl = [r for k, r in by.items() if k.startswith("gluon")]
    assert gl, "Gluon kernel did not run"
    tri = by["triton G=2"]
    for r in gl + [tri]:
        assert r["finite"] and r["workspace zeroed"], r
        assert r["N rel vs fp32"] < 1e-2 and r["out rel vs fp32"] < 1e-2 and r["lse max abs err"] < 1e-3, r
    for r in gl:
        assert r["N rel vs fp32"] <= 1.5 * tri["N rel vs fp32"] + 1e-3, r
        assert r["out rel vs fp32"] <= 1.5 * tri["out rel vs fp32"] + 1e-3, r


@pytest.mark.gpu
@pytest.mark.skipif(not _hopper(), reason="Gluon kernel: Hopper GPU only")
@pytest.mark.parametrize("shape", [(1, 16, 1024), (2, 5, 777)])
def test_gluon_fwd_op_gpu(monkeypatch, shape):
    """The CMD op with GLUON_FWD on vs off (bf16, 128-wide heads): forward and every gradient vs the
    float32 reference (the backward reads the forward's LSE and zeroed workspace), no worse than off."""
    from attnlab.ops.diff_attention import diff_attention_reference

    b, h, t = shape
    mk = lambda *s: torch.randn(*s, device=DEV, dtype=torch.bfloat16)  # noqa: E731
    ins = [mk(b, h, t, 128), mk(b, h, t, 128), mk(b, 1, t, 128), mk(b, 1, t, 128), mk(b, h, t, 128),
           0.2 + torch.rand(h, device=DEV)]
    ins = [x.requires_grad_() for x in ins]
    ref = diff_attention_reference(*[x.float() for x in ins])
    g = torch.randn_like(ref)
    want = torch.autograd.grad(ref, ins, g)
    errs, calls, real = {}, [], NF.noise_fwd_gluon
    monkeypatch.setattr(NF, "noise_fwd_gluon", lambda *a, **k: calls.append(1) or real(*a, **k))
    for flag in (False, True):
        monkeypatch.setattr(NO, "GLUON_FWD", flag)
        out = NO.cmd_attention_noise_once(*ins)
        got = torch.autograd.grad(out, ins, g.to(torch.bfloat16))
        errs[flag] = [rel_err(out, ref)] + [rel_err(x, y) for x, y in zip(got, want)]
    assert calls, "the Gluon forward did not run"
    for name, e, e0 in zip(("out", "q1", "k1", "q2", "k2", "v", "lam"), errs[True], errs[False]):
        assert e <= max(1e-2, 1.5 * e0), (name, e, e0)


@pytest.mark.gpu
@pytest.mark.skipif(not _hopper(), reason="Gluon kernel: Hopper GPU only")
def test_gluon_fwd_replay_equals_slow_path_gpu(monkeypatch):
    """GLUON_FWD (and GLUON_DK) on, launch replay on: a replayed op on NEW tensors (new pointers in the
    rebuilt descriptors) gives the slow path's output and gradients on those tensors, and the replay ran."""
    from attnlab.ops.diff_attention import latent as K

    monkeypatch.setattr(NO, "GLUON_FWD", True)
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
    assert len(replays) >= 2 and all(replays), f"the replay did not run: {replays}"
    monkeypatch.setattr(K, "_FAST", False)
    slow = run(ins, dout)
    assert torch.equal(fast[0], slow[0])
    for name, x, y in zip(("q1", "k1", "q2", "k2", "v", "lam"), fast[1:], slow[1:]):
        assert rel_err(x, y) <= 1e-2, name
