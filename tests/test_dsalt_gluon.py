"""DSALT's window dK/dV kernel in Gluon (attnlab/ops/dsalt/gluon_dkdv.py, OPTS["gluon_dkdv"]).

Gluon has no interpreter: on CPU these tests check only the dispatch (the Gluon kernel is never picked
there, the Triton kernel gives the same gradients with the option on) and the fallback (a kernel that
raises switches itself off with a warning and the Triton kernel's result is used). The kernel itself is
tested on the GPU (marked gpu: bf16 / fp16 against the Triton kernel on the same inputs and against the
float32 reference, odd lengths, GQA, windows at the extremes, with and without the stored window minima).
"""

import warnings

import pytest
import torch

from attnlab.ops.dsalt import dsalt_attention, dsalt_reference, triton_available
from attnlab.testing import rel_err
from test_dsalt_kernels import make  # noqa: E402 - the DSALT kernel tests' input maker

needs_triton = pytest.mark.skipif(not triton_available(), reason="triton not installed")


def test_not_available_on_cpu():
    from attnlab.ops.dsalt import gluon_dkdv as GD

    x = torch.randn(1, 2, 64, 128, dtype=torch.bfloat16)
    assert not GD.available(x, x, x, x)


@needs_triton
def test_option_on_cpu_runs_the_triton_kernel(monkeypatch):
    """OPTS["gluon_dkdv"] on where the Gluon kernel cannot run: the Triton dK/dV kernel, same result."""
    from attnlab.ops.dsalt import kernel

    monkeypatch.setitem(kernel.OPTS, "gluon_dkdv", True)
    monkeypatch.setitem(kernel.OPTS, "gluon_dkdv_min_t", 0)
    torch.manual_seed(0)
    ins = make(1, 2, 1, 37, 16, 2.0, 20, torch.float32)
    kw = dict(n_max=20, edge=3.0, n_landmarks=5, block=16)
    out = dsalt_attention(*ins, impl="triton", **kw)
    ref = dsalt_reference(*ins, **kw)
    do = torch.randn_like(out)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ga = torch.autograd.grad(out, ins[:3], do)
    for a, r in zip(ga, torch.autograd.grad(ref, ins[:3], do)):
        assert rel_err(a, r) <= 1e-4


def test_length_gate(monkeypatch):
    """On by default, from OPTS["gluon_dkdv_min_t"] (16384) on, where the H100 A/B measured it faster (session 9
    lead); shorter sequences never ask whether the Gluon kernel is available."""
    from attnlab.ops.dsalt import gluon_dkdv as GD
    from attnlab.ops.dsalt import kernel

    assert kernel.OPTS["gluon_dkdv"] and kernel.OPTS["gluon_dkdv_min_t"] == 16384
    asked = []
    monkeypatch.setattr(GD, "available", lambda *a: asked.append(1) or False)
    x = torch.zeros(1, 1, 8, 128)
    fargs = (8, 1.0, 1.0, 1.0, 1.0)
    assert not kernel._gluon_dkdv(x, x, x, None, x, None, None, None, None, None, 1, 1, 8, fargs, 0)
    assert not asked
    monkeypatch.setitem(kernel.OPTS, "gluon_dkdv_min_t", 8)
    assert not kernel._gluon_dkdv(x, x, x, None, x, None, None, None, None, None, 1, 1, 8, fargs, 0)
    assert asked


@needs_triton
def test_gluon_failure_falls_back_with_a_warning(monkeypatch):
    """A Gluon kernel that fails to compile / launch: one warning, BROKEN set, the Triton kernel's dK/dV."""
    from attnlab.ops.dsalt import gluon_dkdv as GD
    from attnlab.ops.dsalt import kernel

    calls = []

    def boom(*a, **kw):
        calls.append(1)
        raise RuntimeError("no sm_90 here")

    monkeypatch.setitem(kernel.OPTS, "gluon_dkdv", True)
    monkeypatch.setitem(kernel.OPTS, "gluon_dkdv_min_t", 0)
    monkeypatch.setattr(GD, "available", lambda *a: not GD.BROKEN)
    monkeypatch.setattr(GD, "dkdv_gluon", boom)
    monkeypatch.setattr(GD, "BROKEN", "")
    torch.manual_seed(1)
    ins = make(1, 2, 2, 29, 16, 1.0, 12, torch.float32)
    kw = dict(n_max=12, edge=2.0, n_landmarks=0, block=16)
    ref = dsalt_reference(*ins, **kw)
    do = torch.randn_like(ref)
    gr = torch.autograd.grad(ref, ins[:3], do)
    for rep in range(2):
        out = dsalt_attention(*ins, impl="triton", **kw)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ga = torch.autograd.grad(out, ins[:3], do)
        msgs = [str(w.message) for w in caught if "Gluon dK/dV" in str(w.message)]
        assert len(msgs) == (1 if rep == 0 else 0)
        for a, r in zip(ga, gr):
            assert rel_err(a, r) <= 1e-4
    assert calls == [1] and "no sm_90" in GD.BROKEN


# ---- GPU (Hopper): the kernel itself ----

GPU_CASES = [  # b, h, hk, t, n_min, n_max, edge, n_lm, wmin_min_t (1: window minima from the dQ kernel)
    (1, 4, 2, 1037, 48.0, 300, 4.0, 64, 1),
    (1, 4, 4, 777, 48.0, 300, 4.0, 64, 10**9),
    (2, 4, 2, 555, 1.0, 1, 0.5, 16, 1),            # window 1 (extreme)
    (1, 2, 1, 1500, 1500.0, 1500, 4.0, 0, 10**9),  # window = whole sequence, window only
    (1, 4, 1, 2049, 1.0, 600, 8.0, 64, 1),         # 4 heads per kv head, windows 1 .. 600
]


def _hopper():
    return torch.cuda.is_available() and torch.cuda.get_device_capability()[0] == 9


@pytest.mark.gpu
@pytest.mark.parametrize("i", range(len(GPU_CASES)))
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_gpu_gluon_dkdv_matches_triton_and_reference(i, dtype, monkeypatch):
    if not _hopper():
        pytest.skip("the Gluon kernel is for Hopper (sm_90)")
    from attnlab.ops.dsalt import gluon_dkdv as GD
    from attnlab.ops.dsalt import kernel

    if dtype == torch.float16 and i % 2:
        pytest.skip("fp16: every other case")
    b, h, hk, t, n_min, n_max, edge, n_lm, wmt = GPU_CASES[i]
    monkeypatch.setitem(kernel.OPTS, "wmin_min_t", wmt)
    torch.manual_seed(200 + i)
    ins = make(b, h, hk, t, 128, n_min, n_max, dtype, "cuda")
    kw = dict(n_max=n_max, edge=edge, n_landmarks=n_lm, block=64, scale=128**-0.5)
    launched = []
    orig = GD.dkdv_gluon
    monkeypatch.setattr(GD, "dkdv_gluon", lambda *a, **k: launched.append(1) or orig(*a, **k))
    res = {}
    for on in (False, True):
        monkeypatch.setitem(kernel.OPTS, "gluon_dkdv", on)
        monkeypatch.setitem(kernel.OPTS, "gluon_dkdv_min_t", 0)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no fallback
            out = dsalt_attention(*ins, impl="triton", **kw)
            if not on:
                do = torch.randn_like(out)
            res[on] = torch.autograd.grad(out, ins[:3], do)
    assert launched, "the Gluon kernel did not run"
    # a second backward: the launch replay (same key) gives the same gradients
    n0 = GD._GO.stats["replayed"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = dsalt_attention(*ins, impl="triton", **kw)
        again = torch.autograd.grad(out, ins[:3], do)
    assert GD._GO.stats["replayed"] > n0, "the launch was not replayed"
    for a, b2 in zip(res[True], again):
        if n_lm:  # the landmark backward adds into dK/dV by atomics: the order of the adds varies
            assert rel_err(a.float(), b2.float()) <= 2e-3
        else:
            assert torch.equal(a, b2)
    ref = dsalt_reference(*[x.float() if j < 3 else x for j, x in enumerate(ins)], **kw)
    gr = torch.autograd.grad(ref, ins[:3], do.float())
    for name, a, tr, r in zip("qkv", res[True], res[False], gr):
        assert torch.isfinite(a).all(), name
        assert rel_err(a.float(), tr.float()) <= 1e-2, (name, rel_err(a.float(), tr.float()))
        assert rel_err(a.float(), r) <= 3e-2, (name, rel_err(a.float(), r))


def test_launch_replay_rebuilds_pointers_and_descriptors(monkeypatch):
    """The Gluon launch replay (CPU, a stand-in compiled kernel): the first launch builds host descriptors
    and records a plan, the second replays it with the new tensors' pointers in the pointer slots and
    descriptors (base pointer, [B*H, T, D] shape and strides) equal to what descriptors() would build."""
    from attnlab.ops import launch_replay
    from attnlab.ops.dsalt import gluon_dkdv as GD

    if not GD.HAVE_GLUON:
        pytest.skip("Gluon not importable")
    real = GD._dkdv_gluon_rows_kernel
    calls = {"normal": [], "run": []}

    class Compiled:
        function, packed_metadata = "fn", "meta"

        @staticmethod
        def run(*a):
            calls["run"].append(a)

    class Kern:
        def __init__(self):
            self.fn, self.arg_names = real.fn, real.arg_names  # instance attributes (not bound methods)

        def __getitem__(self, grid):
            def go(*args, **opts):
                calls["normal"].append((grid, args, opts))
                return Compiled()
            return go

    kern = Kern()
    monkeypatch.setattr(launch_replay, "available", lambda: True)
    monkeypatch.setattr(launch_replay, "hooks_set", lambda: False)
    monkeypatch.setattr(launch_replay, "_stream", lambda: 7)
    go = launch_replay.DescLauncher("test")

    def inputs():
        q = torch.randn(1, 4, 96, 128, dtype=torch.bfloat16)
        k = torch.randn(1, 2, 96, 128, dtype=torch.bfloat16)
        small = [torch.randn(4 * 96) for _ in range(6)]
        return (q, k, k.clone(), q.clone()), tuple(small)

    scal = (4, 2, 96, 64, 4.0, 0.25, 0.1, 0.08, 128, 64, 128, 3, 32)
    for rep in range(2):
        descs, tensors = inputs()
        go(kern, (1, 2), *GD._descs(*descs, 64, 128), *tensors, *scal, True, False, num_warps=8)
    assert len(calls["normal"]) == 1 and len(calls["run"]) == 1 and go.stats == {"normal": 1, "replayed": 1}
    a = calls["run"][0]
    assert a[:9] == (1, 2, 1, 7, "fn", "meta", None, None, None)
    full = a[9:]
    assert len(full) == len(real.arg_names)
    ref = GD.descriptors(*descs, 64, 128)
    for i in range(4):  # the descriptors, on the second call's tensors
        assert full[i].base.data_ptr() == descs[i].data_ptr() == ref[i].base.data_ptr()
        assert list(full[i].shape) == list(ref[i].shape) and list(full[i].strides) == list(ref[i].strides)
        assert full[i].padding == ref[i].padding
    assert list(full[4:10]) == [x.data_ptr() for x in tensors]
    assert tuple(full[10:23]) == scal and tuple(full[23:25]) == (True, False)


def test_resource_script_quick(tmp_path, monkeypatch):
    """benchmarks/dsalt_gluon_resources.py --quick (the offline sm_90 compile of the default config; with a
    Triton whose Gluon API differs it prints that and goes on)."""
    import importlib.util
    import os

    monkeypatch.setenv("ATTNLAB_BENCH_DIR", str(tmp_path))
    # the script drops TRITON_INTERPRET from the environment (it compiles): put it back after the test
    monkeypatch.setenv("TRITON_INTERPRET", os.environ.get("TRITON_INTERPRET", "0"))
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks",
                        "dsalt_gluon_resources.py")
    spec = importlib.util.spec_from_file_location("dsalt_gluon_resources", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    mod.main(["--quick"])
