"""Session 8: the DSALT selection beside the forward (OPTS["sel_pdl"]): the selection kernel publishes
its finished rows per (batch, kv head), the forward's tiles wait for their own block's set (at the
tile's start, 1, or after the window blocks, 2), launched with programmatic dependent launch on the
GPU. Outputs and every gradient equal the reference (interpreter on CPU: stream order, the waits
exit at once; GPU: bf16, the forward really overlapping the selection), the published counts, CUDA
graph capture and replay."""

import warnings

import pytest
import torch

from attnlab.ops.dsalt import dsalt_attention, dsalt_reference, triton_available
from attnlab.testing import rel_err

pytestmark = pytest.mark.skipif(not triton_available(), reason="triton not installed")
ON_GPU = torch.cuda.is_available()


def make(b, h, hk, t, d, n_min, n_max, dtype, device="cpu"):
    q = torch.randn(b, h, t, d, dtype=dtype, device=device)
    k = torch.randn(b, hk, t, d, dtype=dtype, device=device)
    v = torch.randn(b, hk, t, d, dtype=dtype, device=device)
    win = n_min + torch.rand(b, h, t, device=device) * (n_max - n_min)
    e = torch.randn(b, hk, t, device=device)
    return [x.requires_grad_() for x in (q, k, v, win, e)]


def check(ins, kw, tol_out, tol_grad, up=False):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback to another path
        out = dsalt_attention(*ins, impl="triton", **kw)
        do = torch.randn_like(out)
        ga = torch.autograd.grad(out, ins, do)
    ref_in = [x.float() if up and j < 3 else x for j, x in enumerate(ins)]
    ref = dsalt_reference(*ref_in, **kw)
    gr = torch.autograd.grad(ref, ref_in, do.float() if up else do)
    assert rel_err(out, ref) <= tol_out
    for name, a, r in zip("q k v win energy".split(), ga, gr):
        assert rel_err(a, r) <= tol_grad, (name, rel_err(a, r))


CPU_CASES = [  # b, h, hk, t, d, n_min, n_max, edge, k, block, dtype, forward tile rows, sel_pdl
    (1, 2, 1, 75, 16, 2.0, 30, 2.0, 6, 16, torch.float32, None, 1),   # odd length, GQA, count at start
    (2, 2, 2, 53, 16, 1.0, 12, 2.0, 20, 16, torch.float32, None, 2),  # batch 2, count after the window
    (1, 2, 1, 75, 16, 2.0, 30, 2.0, 6, 16, torch.float32, 32, 3),     # a tile over two blocks, sets polled
    (1, 4, 2, 61, 16, 3.0, 24, 2.0, 20, 32, torch.float16, None, 4),  # fp16, GQA, sets after the window
    (1, 2, 1, 45, 16, 2.0, 30, 2.0, 40, 16, torch.float32, None, 3),  # four landmark chunks per tile
]


@pytest.mark.skipif(ON_GPU, reason="interpreter cases; the GPU tests below cover the GPU")
@pytest.mark.parametrize("case", CPU_CASES)
def test_sel_pdl_matches_reference(case, monkeypatch):
    from attnlab.ops.dsalt import kernel

    b, h, hk, t, d, n_min, n_max, edge, k, block, dtype, bm, mode = case
    monkeypatch.setitem(kernel.OPTS, "sel_pdl", mode)
    if bm:
        monkeypatch.setitem(kernel._FWD_BM_OVERRIDE, "bm", bm)
    torch.manual_seed(hash(case[3:6]) % 1000)
    ins = make(b, h, hk, t, d, n_min, n_max, dtype)
    tol = 1e-5 if dtype == torch.float32 else 3e-3
    check(ins, dict(n_max=n_max, edge=edge, n_landmarks=k, block=block, scale=d**-0.5), tol, 3 * tol)


@pytest.mark.parametrize("block", [16, 64])
def test_publishing_selection_equals_selection(block):
    """The publishing selection kernel writes the same sets as the plain one and ends with every
    (batch, kv head)'s count at the number of blocks."""
    from attnlab.ops.dsalt import kernel

    dev = "cuda" if ON_GPU else "cpu"
    if not ON_GPU:
        import os

        if os.environ.get("TRITON_INTERPRET") != "1":
            pytest.skip("needs CUDA or the interpreter")
    e = torch.randn(2, 3, 1000, device=dev)
    nb = -(-1000 // block)
    out = torch.empty(2, 3, nb, 64, dtype=torch.int32, device=dev)
    prog = torch.zeros(2 * 3 + 3, dtype=torch.int32, device=dev)
    kernel._select_publish(e, 64, 64, block, out, prog, ON_GPU and kernel._pdl_possible(e))
    assert torch.equal(out, kernel._select_stable(e, 64, 64, block))
    assert prog[:6].tolist() == [nb] * 6


def _gpu_case(seed, h, hk, t, n_lm, mode, monkeypatch, cfg=None):
    from attnlab.ops.dsalt import kernel

    monkeypatch.setitem(kernel.OPTS, "sel_pdl", mode)
    monkeypatch.setitem(kernel.OPTS, "pdl_stats", True)
    monkeypatch.setenv("ATTNLAB_DSALT_AUTOTUNE", "0")  # one config per kernel: compile time (session 8 call 2)
    if cfg:
        monkeypatch.setattr(kernel, "FORCE_CONFIG", cfg)
    torch.manual_seed(seed)
    ins = make(1, h, hk, t, 128, 48.0, 300, torch.bfloat16, "cuda")
    check(ins, dict(n_max=300, edge=4.0, n_landmarks=n_lm, block=64, scale=128**-0.5), 1e-2, 3e-2, up=True)
    return kernel.PDL_STATS["last"].tolist()


@pytest.mark.gpu
@pytest.mark.parametrize("i", range(8))
def test_gpu_bf16_sel_pdl_matches_reference(i, monkeypatch):
    """bf16, head dim 128, every forward launch config (i % 4; BLOCK_M 128: tiles over two selection
    blocks), sel_pdl 1 + i % 4 (the published count / the sets polled, at the tile's start / after
    the window), GQA (odd i), 64 landmarks (i = 3, 7: 5; i = 6: 16, sets sharing a 128-byte line)."""
    from attnlab.ops.dsalt import kernel

    cfg = {"fwd": kernel.FWD_CONFIGS[i % len(kernel.FWD_CONFIGS)]}
    n_lm = {3: 5, 7: 5, 6: 16}.get(i, 64)
    _gpu_case(80 + i, 4, 2 if i % 2 else 4, 1000 + 37 * i, n_lm, 1 + i % 4, monkeypatch, cfg)


@pytest.mark.gpu
@pytest.mark.parametrize("mode", [1, 2, 3, 4])
def test_gpu_bf16_sel_pdl_slow_selection(mode, monkeypatch):
    """A selection slow against the forward (one head, T = 6000: the forward's tiles run ahead and
    wait): still the reference; with PDL the wait counters show tiles that waited."""
    from attnlab.ops.dsalt import kernel

    _gpu_case(90 + mode, 1, 1, 6000, 64, mode, monkeypatch)  # compiles (the selection ends first)
    st = _gpu_case(90 + mode, 1, 1, 6000, 64, mode, monkeypatch)
    if kernel._pdl_possible(torch.empty(1, device="cuda")):
        assert st[0] > 0, st  # some tiles waited for their set: the forward overlapped the selection


@pytest.mark.gpu
@pytest.mark.parametrize("mode", [1, 3])
def test_gpu_sel_pdl_cuda_graph_replay(mode, monkeypatch):
    """The PDL path captured in a CUDA graph (the zeroed counters / the sets filled with -2, the selection, the forward
    launched with launch_pdl, the backward) and replayed on new inputs equals the eager step."""
    from attnlab.ops.dsalt import kernel

    monkeypatch.setitem(kernel.OPTS, "sel_pdl", mode)
    monkeypatch.setenv("ATTNLAB_DSALT_AUTOTUNE", "0")
    torch.manual_seed(7)
    ins = make(1, 4, 2, 3000, 128, 48.0, 300, torch.bfloat16, "cuda")
    do = torch.randn(1, 4, 3000, 128, device="cuda", dtype=torch.bfloat16)
    kw = dict(n_max=300, edge=4.0, n_landmarks=64, block=64)

    def step():
        out = dsalt_attention(*ins, impl="triton", **kw)
        return (out,) + torch.autograd.grad(out, ins, do)

    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):  # compile / autotune / record the replayed launches
            step()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        static = step()
    for _ in range(2):
        with torch.no_grad():
            for x in ins:
                x.copy_(torch.randn_like(x))
            ins[3].copy_(48.0 + torch.rand_like(ins[3]) * 252)
        g.replay()
        eager = step()
        for j, (a, r) in enumerate(zip(static, eager)):
            assert (a.float() - r.float()).norm() <= 1e-2 * r.float().norm(), j


@pytest.mark.parametrize("t,k,block,key32", [(1000, 64, 64, True), (300, 5, 16, False), (333, 16, 16, True),
                                             (50, 64, 64, True), (40, 10, 16, True)])
def test_selection_first_block_sorted_fill(t, k, block, key32, monkeypatch):
    """OPTS["sel_fill"]: block 0's candidates sorted into the empty set at once give the very sets
    (slots included) of the one-by-one insertion; ties in the energies, lengths not a multiple of
    the block, fewer tokens than landmarks, int64 keys."""
    from attnlab.ops.dsalt import kernel

    if not ON_GPU:
        import os

        if os.environ.get("TRITON_INTERPRET") != "1":
            pytest.skip("needs CUDA or the interpreter")
    kp = max(16, kernel._pow2(k))
    e = torch.randn(2, 2, t, device="cuda" if ON_GPU else "cpu")
    e[1, 0, 3:20] = 0.25  # ties
    monkeypatch.setitem(kernel.OPTS, "sel_fill", False)
    want = kernel._select_stable(e, k, kp, block, key32)
    monkeypatch.setitem(kernel.OPTS, "sel_fill", True)
    assert kernel._fill(kp, block) == int(kernel._pow2(block) == kp)
    assert torch.equal(kernel._select_stable(e, k, kp, block, key32), want)
