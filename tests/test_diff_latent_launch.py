"""The fused latent kernel's launch replay (ops/diff_attention/latent.py): after the first call
of a shape, launches go straight to the compiled kernel's launcher with new data pointers. On
CPU the Triton kernels are replaced by fakes that log every launch, so the test checks that a
replayed launch passes exactly the arguments (grid, scalars, data pointers) that the slow path
would pass for the same tensors. The GPU test checks replay == slow path bit for bit."""

import types

import pytest
import torch

pytest.importorskip("triton")

from attnlab.ops.diff_attention import LatentGeometry, latent_diff_attention  # noqa: E402
from attnlab.ops.diff_attention import latent as K  # noqa: E402
from attnlab.positions import RotaryEmbedding  # noqa: E402

GEOMS = {
    "diff-mla": LatentGeometry(3, 3, 12, 8, 20, 12, 1, 0.3, 0.3),
    "cmd-mla": LatentGeometry(3, 1, 16, 8, 16, 24, 0, 0.25, 0.2),
    "cmd-mla-noise-rope": LatentGeometry(2, 1, 16, 8, 16, 10, 2, 0.25, 0.2),
    "diff-mla-noise-own": LatentGeometry(2, 2, 16, 8, 16, 10, 2, 0.25, 0.2),
}
KERNELS = ("_lat_fwd_kernel", "_lat_pre_kernel", "_lat_bwd_kv_kernel", "_lat_bwd_q_kernel", "_rope_kernel",
           "_head_sum_kernel")


def _ptrs(args):
    return tuple(a.data_ptr() if isinstance(a, torch.Tensor) else a for a in args)


class _FakeCompiled:
    def __init__(self, name, log):
        self.name, self.log = name, log
        self.function, self.packed_metadata = object(), object()

    @property
    def run(self):
        def run(g0, g1, g2, stream, fn, meta, launch_meta, enter, exit_, *args):
            assert fn is self.function and meta is self.packed_metadata and launch_meta is None
            self.log.append(("replay", self.name, (g0, g1, g2), args))
        return run


class _FakeKernel:
    def __init__(self, name, log):
        self.name, self.log = name, log

    def __getitem__(self, grid):
        def launch(*args, **opts):
            self.log.append(("jit", self.name, tuple(grid) + (1,) * (3 - len(grid)), _ptrs(args)))
            return _FakeCompiled(self.name, self.log)
        return launch


def fake_replay(monkeypatch, module, kernels):
    """Fake kernels (logging their launches) in ``module`` for ``kernels``, latent.py's replay forced on
    with a fake driver and no launch hooks; returns (log, roots), roots = the tensors of each replay."""
    log = []
    for k in kernels:
        monkeypatch.setattr(module, k, _FakeKernel(k, log))
    monkeypatch.setattr(K, "_PLANS", {})
    monkeypatch.setattr(K, "_fast_ok", lambda: True)
    active = types.SimpleNamespace(get_current_device=lambda: 0, get_current_stream=lambda d: 0)
    monkeypatch.setattr(K, "_driver", types.SimpleNamespace(active=active))
    monkeypatch.setattr(K, "_knobs", types.SimpleNamespace(
        runtime=types.SimpleNamespace(launch_enter_hook=None, launch_exit_hook=None)))
    roots = []
    replay = K._replay

    def spy(plan, rts):
        roots.append(rts)
        return replay(plan, rts)
    monkeypatch.setattr(K, "_replay", spy)
    return log, roots


@pytest.fixture
def fake(monkeypatch):
    return fake_replay(monkeypatch, K, KERNELS)


def _call(g, b=2, t=13, lam_shared=False):
    mk = lambda *s: torch.randn(*s, requires_grad=True)  # noqa: E731
    lam = (torch.rand(1).expand(g.heads) if lam_shared else torch.rand(g.heads)).requires_grad_()
    cos, sin = RotaryEmbedding(g.dr).cos_sin(0, t)
    ins = [mk(b, t, g.q_width), mk(b, t, g.kv_width), mk(b, t, g.dr), lam]
    out = latent_diff_attention(*ins, cos, sin, g)
    torch.autograd.grad(out, ins, torch.ones_like(out))


@pytest.mark.parametrize("geom", list(GEOMS))
@pytest.mark.parametrize("lam_shared", [False, True])
def test_replay_passes_the_slow_paths_arguments(fake, geom, lam_shared):
    log, roots = fake
    g = GEOMS[geom]
    _call(g, lam_shared=lam_shared)  # records
    first = [e for e in log if e[0] == "jit"]
    assert len(first) == len(log) >= 7
    log.clear()
    _call(g, lam_shared=lam_shared)  # replays, on new tensors
    assert [e[0] for e in log] == ["replay"] * len(first)
    assert [e[1] for e in log] == [e[1] for e in first]
    assert len(roots) == 2  # forward and backward
    replayed = list(log)
    log.clear()
    # the slow path on the very tensors of the replayed call gives the same launches
    K._fwd_body(K._Recorder(False), *roots[0], g)
    K._bwd_body(K._Recorder(False), *roots[1], g)
    assert len(log) == len(replayed)
    for (_, name, grid, args), (_, name2, grid2, args2) in zip(log, replayed):
        assert (name, grid) == (name2, grid2)
        assert args == tuple(args2), name


def test_shapes_get_their_own_plans(fake):
    log, _ = fake
    g = GEOMS["cmd-mla"]
    _call(g, t=13)
    _call(g, t=17)  # a new length: the slow path again
    assert all(e[0] == "jit" for e in log)
    log.clear()
    _call(g, t=13)
    assert log and all(e[0] == "replay" for e in log)


def test_replay_with_inputs_sharing_storage(fake):
    """Inputs that are views of one tensor (one matmul's output split in columns): replayed
    relative to the first root of that storage (the sharing pattern is part of the key)."""
    log, roots = fake
    g = GEOMS["diff-mla"]
    b, t = 2, 9

    def call():
        both = torch.randn(b, t, g.q_width + g.dr + g.kv_width, requires_grad=True)
        q_all, kr, kvu = both.split([g.q_width, g.dr, g.kv_width], -1)
        cos, sin = RotaryEmbedding(g.dr).cos_sin(0, t)
        out = latent_diff_attention(q_all, kvu, kr, torch.rand(g.heads), cos, sin, g)
        torch.autograd.grad(out, both, torch.ones_like(out))
    call()
    assert log and all(e[0] == "jit" for e in log)
    log.clear()
    call()
    assert log and all(e[0] == "replay" for e in log)
    replayed = list(log)
    log.clear()
    K._fwd_body(K._Recorder(False), *roots[0], g)
    K._bwd_body(K._Recorder(False), *roots[1], g)
    assert [(n, gr, a) for _, n, gr, a in log] == [(n, gr, tuple(a)) for _, n, gr, a in replayed]
    # a different sharing pattern (separate tensors) is another key: the slow path again
    log.clear()
    _call(g, b=b, t=t)
    assert log and all(e[0] == "jit" for e in log)


def test_launch_hook_disables_replay(fake, monkeypatch):
    log, _ = fake
    g = GEOMS["cmd-mla"]
    _call(g)
    log.clear()
    monkeypatch.setattr(K._knobs.runtime, "launch_enter_hook", lambda *a: None)
    _call(g)
    assert log and all(e[0] == "jit" for e in log)


def test_hook_chains_of_current_triton():
    """Triton >= 3.4 keeps launch hooks in HookChain objects that are never None: an empty chain is
    "no hook" (the bug that kept the replay off on every GPU run before session 4), a chain with a
    call is a hook."""
    knobs = pytest.importorskip("triton.knobs")
    from attnlab.ops.launch_replay import hook_set

    chain = getattr(knobs, "HookChain", None)
    assert not hook_set(None) and hook_set(lambda *a: None)
    if chain is not None:
        c = chain()
        assert not hook_set(c)
        c.add(print)
        assert hook_set(c)
        assert not hook_set(knobs.runtime.launch_enter_hook), "a launch hook is installed by default?"


@pytest.mark.gpu
@pytest.mark.parametrize("geom", ["diff-mla-384", "cmd-mla-384", "cmd-rope"])
def test_replay_equals_slow_path_gpu(geom, monkeypatch):
    """On the GPU: the first call (slow path, recorded) and the replayed calls give bit-identical
    outputs and gradients, and equal the path with replay switched off. Asserts that the replay
    actually ran (before session 4 it silently never did: see latent.py)."""
    monkeypatch.setattr(K, "_FAST", True)
    replays = []
    real = K._replay
    monkeypatch.setattr(K, "_replay", lambda plan, roots: replays.append(real(plan, roots)) or replays[-1])
    g = {"diff-mla-384": LatentGeometry(6, 6, 64, 32, 64, 64, 1, 96**-0.5, 96**-0.5),
         "cmd-mla-384": LatentGeometry(6, 1, 64, 32, 64, 64, 0, 96**-0.5, 64**-0.5),
         "cmd-rope": LatentGeometry(4, 1, 32, 16, 32, 24, 2, 48**-0.5, 40**-0.5)}[geom]
    monkeypatch.setattr(K, "_PLANS", {})
    b, t = 2, 333
    torch.manual_seed(0)
    mk = lambda *s: torch.randn(*s, device="cuda", dtype=torch.bfloat16, requires_grad=True)  # noqa: E731
    ins = [mk(b, t, g.q_width), mk(b, t, g.kv_width), mk(b, t, g.dr),
           (0.2 + torch.rand(1, device="cuda")).expand(g.heads).requires_grad_()]
    cos, sin = RotaryEmbedding(g.dr).cuda().cos_sin(0, t)
    dout = torch.randn(b, t, g.heads, g.dv, device="cuda", dtype=torch.bfloat16)

    def run():
        out = latent_diff_attention(*ins, cos, sin, g)
        return [out, *torch.autograd.grad(out, ins, dout)]

    first = run()
    assert any(p for p in K._PLANS.values()), "no plan was recorded"
    for _ in range(2):
        again = run()
        for x, y in zip(first, again):
            assert torch.equal(x, y)
    assert replays and all(replays), f"the replay did not run: {replays}"
    monkeypatch.setattr(K, "_FAST", False)
    for x, y in zip(first, run()):
        assert torch.equal(x, y)


def test_failed_replay_falls_back_to_the_slow_path(fake, monkeypatch):
    """If the launcher rejects a replayed call, that key runs the slow path from then on."""
    log, _ = fake
    g = GEOMS["diff-mla"]
    _call(g)

    def boom(plan, roots):
        raise TypeError("launcher rejected the arguments")
    monkeypatch.setattr(K, "_replay", boom)
    log.clear()
    with pytest.warns(UserWarning, match="replay failed"):
        _call(g)
    assert log and all(e[0] == "jit" for e in log)
    assert None in K._PLANS.values()
