"""CMD attention with the shared noise stream computed once (noise_once.py) against the explicit
PyTorch references: forward and every gradient (q1, k1, q2, k2, v, lam), odd lengths and head
counts, several launch configs (head groups, splits, BM != BN). Interpreter on CPU (fp32/fp16),
bf16 on the GPU."""

import pytest
import torch

pytest.importorskip("triton")

from attnlab.ops.diff_attention import diff_attention, diff_attention_reference  # noqa: E402
from attnlab.ops.diff_attention import noise_once as NO  # noqa: E402
from attnlab.testing import rel_err  # noqa: E402

DEV = "cuda" if torch.cuda.is_available() else "cpu"
TOL32 = 3e-3 if DEV == "cuda" else 1e-5  # fp32 tl.dot is TF32 on the GPU
NAMES = ("q1", "k1", "q2", "k2", "v", "lam")


def _inputs(b, h, t, d1, d2, dv, dtype):
    mk = lambda *s: torch.randn(*s, device=DEV, dtype=dtype)  # noqa: E731
    ins = [mk(b, h, t, d1), mk(b, h, t, d1), mk(b, 1, t, d2), mk(b, 1, t, d2), mk(b, h, t, dv),
           0.2 + torch.rand(h, device=DEV)]
    return [x.requires_grad_() for x in ins]


def _check(shape, dtype, tol_out, tol_grad):
    ins = _inputs(*shape, dtype)
    s1, s2 = 0.7 * shape[3] ** -0.5, 1.3 * shape[4] ** -0.5
    out = NO.cmd_attention_noise_once(*ins, s1, s2)
    ref = diff_attention_reference(*[x.float() for x in ins], s1, s2)
    assert out.dtype == dtype and out.shape == ref.shape
    assert rel_err(out, ref) <= tol_out
    g = torch.randn_like(ref)
    got = torch.autograd.grad(out, ins, g.to(dtype))
    want = torch.autograd.grad(ref, ins, g)
    for name, x, y in zip(NAMES, got, want):
        assert x.shape == y.shape, name
        assert rel_err(x, y) <= tol_grad, (name, rel_err(x, y))


# (B, H, T, D1, D2, DV)
SHAPES = {"odd": (2, 3, 37, 16, 24, 20), "four-heads": (1, 4, 33, 16, 16, 16)}


@pytest.mark.parametrize("shape", list(SHAPES))
def test_noise_once_fp32(shape):
    _check(SHAPES[shape], torch.float32, TOL32, TOL32)


@pytest.mark.skipif(DEV == "cuda", reason="interpreter launch configs")
@pytest.mark.parametrize("cfg", [
    # dk (session 5's kernel, heads wider than LEAN_MAX_WIDTH): (BM, BN, S, CHUNK, warps, stages, order, kc)
    {"fwd": (32, 16, 4, 1, 1), "dv": (16, 32, 4, 1, 1), "dk": (16, 32, 3, 64, 1, 1, 0, 0)},  # 3 head-loop splits
    {"fwd": (16, 16, 1, 1, 1), "dv": (16, 16, 1, 1, 1), "dk": (16, 16, 1, 32, 1, 1, 0, 0)},  # one split
    # pairs in tiles of 2 / 3 key blocks, one-tile chunks
    {"fwd": (32, 16, 2, 1, 1), "dv": (16, 32, 2, 1, 1), "dk": (16, 32, 1, 32, 1, 1, 2, 0)},
    {"fwd": (16, 16, 4, 1, 1), "dv": (16, 16, 4, 1, 1), "dk": (16, 16, 2, 16, 1, 1, 3, 0)},
    # the head loop's contraction in 16-column chunks (head dim 16 here: one chunk; see the next test)
    {"fwd": (16, 16, 2, 1, 1), "dv": (16, 16, 2, 1, 1), "dk": (16, 32, 1, 32, 1, 1, 2, 16)},
    # query tiles larger than the key block, chunks not multiples of either (rows masked at the chunk end)
    {"fwd": (16, 16, 2, 1, 1, 1), "dv": (16, 16, 2, 1, 1, 1), "dk": (32, 16, 1, 32, 1, 1, 2, 16)},
    {"fwd": (16, 16, 2, 1, 1, 1), "dv": (16, 16, 2, 1, 1, 1), "dk": (32, 16, 1, 48, 1, 1, 3, 0)},
    {"fwd": (16, 16, 2, 1, 1, 1), "dv": (16, 16, 2, 1, 1, 1), "dk": (16, 32, 2, 24, 1, 1, 0, 0)},
    # groups-major grids (longest blocks of every group first)
    {"fwd": (32, 16, 2, 1, 1, 1), "dv": (16, 16, 4, 1, 1, 1), "dk": (16, 32, 1, 32, 1, 1, 2, 0)},
])
def test_noise_once_configs(monkeypatch, cfg):
    monkeypatch.setattr(NO, "_INTERP", {**NO._INTERP, **cfg})
    monkeypatch.setattr(NO, "LEAN_MAX_WIDTH", 0)  # session 5's dK kernel (the wide-head path): its "dk" configs
    _check((1, 5, 45, 16, 16, 16), torch.float32, TOL32, TOL32)


@pytest.mark.skipif(DEV == "cuda", reason="interpreter launch configs")
@pytest.mark.parametrize("kc", [16, 32])
def test_noise_once_contraction_chunks(monkeypatch, kc):
    """Session 5's dK kernel with the head loop's contraction in chunks of kc columns (dv 40 -> 64
    padded: 4 or 2 chunks per head, the last partly masked)."""
    monkeypatch.setattr(NO, "LEAN_MAX_WIDTH", 0)
    monkeypatch.setitem(NO._INTERP, "dk", (16, 16, 2, 32, 1, 1, 3, kc))
    _check((1, 3, 35, 16, 24, 40), torch.float32, TOL32, TOL32)


@pytest.mark.skipif(DEV == "cuda", reason="interpreter launch configs")
@pytest.mark.parametrize("lean", [
    (16, 16, 2, 1, 1, 2, 0, 1, False),   # two query tiles per program sharing each V chunk
    (16, 32, 1, 1, 1, 3, 0, 2, True),    # one tile, key block wider than the tile, 2 head splits, early K
    (32, 16, 2, 1, 1, 0, 16, 1, False),  # query tiles wider than the key block, 16-column contraction
    (16, 16, 2, 1, 1, 8, 16, 3, True),   # 3 splits of 5 heads, chunked contraction
    (16, 16, 2, 1, 1, 2, 0, 1, True, True),   # both tiles' dK2 summed in registers, one atomic
    (16, 32, 2, 1, 1, 0, 16, 2, False, True),
])
def test_noise_once_lean_dk(monkeypatch, lean):
    """The lean dK/dQ kernel (session 6, the default): the contraction runs before its epilogue; NT=2
    query tiles share each V chunk; odd lengths (tiles past T, half-empty diagonal pairs)."""
    monkeypatch.setitem(NO._INTERP, "lean", lean)
    _check((1, 5, 45, 16, 16, 16), torch.float32, TOL32, TOL32)
    _check((2, 3, 37, 16, 24, 20), torch.float32, TOL32, TOL32)


def test_dk_mode_keeps_session_5_kernel_for_wide_heads(monkeypatch):
    """The lean kernel's configs were measured and GPU-tested at 128-wide heads; wider heads keep
    session 5's dK kernel (GPU-tested at 256). With the limit lowered, a dv-20 case runs that path."""
    assert NO._dk_mode(128, 128) == "lean" and NO._dk_mode(256, 64) == "loop" and NO._dk_mode(64, 192) == "loop"
    monkeypatch.setattr(NO, "LEAN_MAX_WIDTH", 16)
    assert NO._dk_mode(16, 20) == "loop"
    _check((1, 3, 29, 16, 16, 20), torch.float32, TOL32, TOL32)


def test_zero_in_fwd_only_up_to_the_tested_width(monkeypatch):
    """The forward kernel zeroes the backward's workspace for heads up to LEAN_MAX_WIDTH; wider heads
    keep the memset (not GPU-tested with the zeroing epilogue)."""
    monkeypatch.setattr(NO, "ZERO_IN_FWD", True)
    x = lambda d: torch.empty(1, 4, d)  # noqa: E731
    assert NO._zero_in_fwd(x(128), x(128)) and not NO._zero_in_fwd(x(128), x(256))
    monkeypatch.setattr(NO, "ZERO_IN_FWD", False)
    assert not NO._zero_in_fwd(x(64), x(64))


def test_dk_table_covers_every_pair_once():
    """The dK kernel's program table: each (key block, chunk) pair with work exactly once, any order."""
    for t, bn, chunk in ((45, 16, 32), (4096, 128, 256), (1000, 64, 64)):
        nb, nc = -(-t // bn), -(-t // chunk)
        want = {(n, c) for n in range(nb) for c in range(nc) if min(c * chunk + chunk, t) > n * bn}
        for order in (0, 1, 3, 8):
            got = NO._dk_table(t, bn, chunk, order, "cpu").view(-1, 2).tolist()
            assert len(got) == len(want) and {tuple(p) for p in got} == want


def test_noise_once_backward_twice_and_lam_without_grad():
    """The backward's float32 workspace (dQ2/dK2 atomics, dlam) is fresh per call: a second backward
    through the same graph gives the same gradients; lam without grad works."""
    ins = _inputs(1, 3, 23, 16, 16, 16, torch.float32)
    out = NO.cmd_attention_noise_once(*ins)
    g = torch.randn_like(out)
    first = torch.autograd.grad(out, ins, g, retain_graph=True)
    second = torch.autograd.grad(out, ins, g)
    for x, y in zip(first, second):
        assert torch.equal(x, y)
    lam = ins[-1].detach()
    out = NO.cmd_attention_noise_once(*ins[:-1], lam)
    ref = diff_attention_reference(*ins[:-1], lam)
    got = torch.autograd.grad(out, ins[:-1], g)
    want = torch.autograd.grad(ref, ins[:-1], g)
    for x, y in zip(got, want):
        assert rel_err(x, y) <= TOL32


@pytest.mark.parametrize("zero", [True, False])
def test_noise_once_zeroing(monkeypatch, zero):
    """The backward's workspace zeroed by the forward kernel (default), or by a memset."""
    monkeypatch.setattr(NO, "ZERO_IN_FWD", zero)
    _check((2, 3, 21, 16, 16, 16), torch.float32, TOL32, TOL32)


def test_noise_once_partial_grads():
    """Only some inputs requiring grad (q1 / v frozen), and under no_grad."""
    ins = _inputs(1, 2, 19, 16, 16, 16, torch.float32)
    for frozen in ("q1", "v", "q1v"):
        xs = [x.detach() if (n in frozen and n in ("q1", "v")) else x for n, x in zip(NAMES, ins)]
        out = NO.cmd_attention_noise_once(*xs)
        ref = diff_attention_reference(*xs)
        assert rel_err(out, ref) <= TOL32
        live = [x for x in xs if x.requires_grad]
        g = torch.randn_like(ref)
        for x, y in zip(torch.autograd.grad(out, live, g), torch.autograd.grad(ref, live, g)):
            assert rel_err(x, y) <= TOL32
    with torch.no_grad():
        assert rel_err(NO.cmd_attention_noise_once(*ins), diff_attention_reference(*ins)) <= TOL32


def test_noise_once_fp16():
    _check((1, 4, 29, 16, 16, 32), torch.float16, 3e-3, 1e-2)


def test_shared_noise_attention_alone():
    """The noise stream without the combination: N_h = softmax(Q2 K2^T) V_h for every head."""
    b, h, t, d, dv = 2, 3, 26, 16, 24
    q2, k2 = (torch.randn(b, 1, t, d, device=DEV, requires_grad=True) for _ in range(2))
    v = torch.randn(b, h, t, dv, device=DEV, requires_grad=True)
    out = NO.shared_noise_attention(q2, k2, v, 0.3)
    ref = NO.noise_once_reference(q2, k2, v, 0.3)
    assert rel_err(out, ref) <= TOL32
    g = torch.randn_like(ref)
    for x, y in zip(torch.autograd.grad(out, (q2, k2, v), g), torch.autograd.grad(ref, (q2, k2, v), g)):
        assert rel_err(x, y) <= TOL32


def test_noise_once_strided_and_scalar_lam():
    """[B, T, H, D] inputs seen as [B, H, T, D] (what the mixers produce) and a per-layer lam."""
    b, h, t, d = 1, 4, 21, 16
    mk = lambda *s: torch.randn(*s, device=DEV)  # noqa: E731
    q1, k1, v = (mk(b, t, h, d).transpose(1, 2).requires_grad_() for _ in range(3))
    qk2 = mk(b, t, 2, d).transpose(1, 2)
    q2, k2 = qk2[:, :1].detach().requires_grad_(), qk2[:, 1:].detach().requires_grad_()
    lam = torch.tensor(0.4, device=DEV, requires_grad=True)
    ins = [q1, k1, q2, k2, v, lam]
    out = NO.cmd_attention_noise_once(*ins)
    ref = diff_attention_reference(*ins)
    assert rel_err(out, ref) <= TOL32
    g = torch.randn_like(ref)
    for name, x, y in zip(NAMES, torch.autograd.grad(out, ins, g), torch.autograd.grad(ref, ins, g)):
        assert x.shape == y.shape and rel_err(x, y) <= TOL32, name


def test_noise_once_dispatch_and_errors():
    ins = _inputs(1, 2, 17, 16, 16, 16, torch.float32)
    out = diff_attention(*ins, impl="noise-once")
    assert rel_err(out, diff_attention_reference(*ins)) <= TOL32
    with pytest.raises(ValueError, match="ONE head"):
        NO.shared_noise_attention(torch.randn(1, 2, 8, 16), torch.randn(1, 2, 8, 16), torch.randn(1, 2, 8, 16))
    with pytest.raises(ValueError, match="up to 256"):
        NO.shared_noise_attention(torch.randn(1, 1, 8, 16), torch.randn(1, 1, 8, 16), torch.randn(1, 2, 8, 320))
    with pytest.raises(ValueError, match="one key/value head"):
        NO.cmd_attention_noise_once(ins[0], ins[1][:, :1], *ins[2:])


GPU_DK = {"default": None,
          "memset": {"ZERO_IN_FWD": False},
          "wide-head-path": {"LEAN_MAX_WIDTH": 0},  # session 5's dK kernel + the memset, at 128-wide heads
          **{"lean-" + k: v for k, v in {  # lean dK kernel candidates (session 6)
              "nt1": (128, 128, 1, 8, 3, 8, 64, 1, False, False),
              "nt2-early-k-4-stages": (128, 128, 2, 8, 4, 8, 64, 1, True, False),
              "bm64-nt2-maxnreg128": (64, 128, 2, 8, 3, 8, 64, 1, False, False, 128)}.items()}}


@pytest.mark.gpu
@pytest.mark.parametrize("variant", list(GPU_DK))
def test_noise_once_variants_bf16_gpu(monkeypatch, variant):
    """Other launch configurations and the wide-head path at 128-wide heads, bf16, T = 1024."""
    val = GPU_DK[variant]
    if isinstance(val, dict):
        for name, x in val.items():
            monkeypatch.setattr(NO, name, x)
    elif val is not None:
        monkeypatch.setitem(NO.CONFIGS, "lean", val)
    test_noise_once_bf16_gpu((1, 16, 1024, 128, 128, 128))


@pytest.mark.gpu
@pytest.mark.parametrize("shape", [(1, 16, 1000, 128, 128, 128), (2, 6, 777, 96, 64, 64), (1, 3, 300, 64, 64, 64),
                                   (1, 4, 300, 128, 256, 256)])  # the last: fewer stages where smem is short
def test_noise_once_bf16_gpu(shape):
    """bf16: error (vs fp32 explicit maps) small, or no worse than twice that of the notebook's
    path (two SDPA calls, noise head expanded) on the same inputs."""
    ins = _inputs(*shape, torch.bfloat16)
    s1, s2 = 0.7 * shape[3] ** -0.5, 1.3 * shape[4] ** -0.5
    ref = diff_attention_reference(*[x.float() for x in ins], s1, s2)
    g = torch.randn_like(ref)
    want = torch.autograd.grad(ref, ins, g)
    errs = {}
    for impl in ("noise-once", "sdpa"):
        out = diff_attention(*ins, s1, s2, impl=impl)
        got = torch.autograd.grad(out, ins, g.to(torch.bfloat16))
        errs[impl] = [rel_err(out, ref)] + [rel_err(x, y) for x, y in zip(got, want)]
    for name, e, e_sdpa in zip(("out",) + NAMES, errs["noise-once"], errs["sdpa"]):
        assert e <= max(2e-2, 2 * e_sdpa), (name, e, e_sdpa)


def _cmd_mixer(impl, noise_rope=False):
    from attnlab import ModelConfig, build_model

    opts = {"kv_lora_rank": 16, "q_lora_rank": 24, "qk_rope_head_dim": 8, "qk_nope_head_dim": 16,
            "v_head_dim": 16, "noise_rope": noise_rope, "impl": impl}
    cfg = ModelConfig(vocab_size=50, dim=32, n_layers=1, n_heads=4, mixer="cmd-mla", max_seq_len=32,
                      mixer_options={"cmd-mla": opts})
    torch.manual_seed(3)
    return build_model(cfg).to(DEV).blocks[0].mixer


@pytest.mark.skipif(DEV == "cuda", reason="fp32 tl.dot is TF32 on the GPU")
@pytest.mark.parametrize("noise_rope", [False, True])
def test_cmd_mla_noise_once_equals_sdpa(noise_rope):
    a, b = _cmd_mixer("sdpa", noise_rope), _cmd_mixer("noise-once", noise_rope)
    x = torch.randn(2, 19, 32, device=DEV, requires_grad=True)
    ya, yb = a(x), b(x)
    assert rel_err(yb, ya) <= 1e-5
    ga = torch.autograd.grad(ya.square().sum(), [x] + list(a.parameters()))
    gb = torch.autograd.grad(yb.square().sum(), [x] + list(b.parameters()))
    for u, w in zip(gb, ga):
        assert rel_err(u, w) <= 1e-4


def test_auto_routes_cmd_to_noise_once_on_cuda(monkeypatch):
    """impl="auto": one noise head on CUDA -> noise-once (AUTO_NOISE_ONCE); per-head noise heads,
    CPU tensors or the flag off -> sdpa."""
    import types

    import attnlab.ops.diff_attention as DA

    cuda = lambda *s: types.SimpleNamespace(is_cuda=True, shape=s, dtype=torch.bfloat16)  # noqa: E731
    cmd = (cuda(1, 4, 64, 16), cuda(1, 4, 64, 16), cuda(1, 1, 64, 16), cuda(1, 1, 64, 16), cuda(1, 4, 64, 16))
    diff = (cuda(1, 4, 64, 16), cuda(1, 4, 64, 16), cuda(1, 4, 64, 16), cuda(1, 4, 64, 16), cuda(1, 4, 64, 16))
    assert DA.resolve_impl("auto", *cmd) == "noise-once"
    assert DA.resolve_impl("auto", *diff) == "sdpa"
    assert DA.resolve_impl("auto", *cmd[:4], cuda(1, 4, 64, 320)) == "sdpa"  # beyond the kernels' head dims
    fp32 = [types.SimpleNamespace(**{**vars(x), "dtype": torch.float32}) for x in cmd]
    assert DA.resolve_impl("auto", *fp32) == "sdpa"  # TF32 in the kernels: float32 keeps SDPA
    cpu = [torch.randn(1, h, 8, 16) for h in (4, 4, 1, 1, 4)]
    assert DA.resolve_impl("auto", *cpu) == "sdpa"
    monkeypatch.setattr(DA, "AUTO_NOISE_ONCE", False)
    assert DA.resolve_impl("auto", *cmd) == "sdpa"


def test_noise_once_only_for_cmd():
    from attnlab import ModelConfig, build_model
    from attnlab.config import ConfigError

    lat = {"kv_lora_rank": 16, "q_lora_rank": 24, "qk_rope_head_dim": 8}
    for name, opts in (("diff-mla", lat), ("diff-mha", {})):
        with pytest.raises(ConfigError, match=f"{name}.impl"):
            build_model(ModelConfig(vocab_size=50, dim=32, n_layers=1, n_heads=4, mixer=name, max_seq_len=32,
                                    mixer_options={name: {**opts, "impl": "noise-once"}}))


NO_KERNELS = ("_noise_fwd_kernel", "_noise_bwd_pre_kernel", "_noise_bwd_dk_kernel", "_noise_bwd_dk_lean_kernel",
              "_noise_bwd_dv_kernel")


@pytest.mark.parametrize("combine", [True, False])
def test_noise_once_replay_passes_the_slow_paths_arguments(monkeypatch, combine):
    """noise-once launches through latent.py's replay: on CPU with fake kernels, a replayed call
    passes exactly the grid, scalars and data pointers that the slow path passes for its tensors."""
    from test_diff_latent_launch import fake_replay

    from attnlab.ops.diff_attention import latent as K

    log, roots = fake_replay(monkeypatch, NO, NO_KERNELS)
    b, h, t, d = 2, 3, 29, 16
    scale = 0.3

    def call():
        mk = lambda *s: torch.randn(*s, requires_grad=True)  # noqa: E731
        q2, k2, v = mk(b, 1, t, d), mk(b, 1, t, d), mk(b, h, t, d)
        if combine:
            q1, k1, lam = mk(b, h, t, d), mk(b, h, t, d), torch.rand(h, requires_grad=True)
            ins = [q1, k1, q2, k2, v, lam]
            out = NO.cmd_attention_noise_once(*ins, None, scale)
        else:
            ins = [q2, k2, v]
            out = NO.shared_noise_attention(*ins, scale)
        torch.autograd.grad(out, ins, torch.ones_like(out))

    call()  # records
    first = list(log)
    assert len(first) == 4 and all(e[0] == "jit" for e in first)
    log.clear()
    call()  # replays, on new tensors
    assert [e[0] for e in log] == ["replay"] * 4 and [e[1] for e in log] == [e[1] for e in first]
    assert len(roots) == 2
    replayed = list(log)
    log.clear()
    NO._fwd_body(K._Recorder(False), *roots[0], scale, combine, NO.ZERO_IN_FWD)
    hs, split, _ = NO._bwd_plan(h, d, d)
    NO._bwd_body(K._Recorder(False), *roots[1], scale, combine, (hs, split))
    assert len(log) == len(replayed)
    for (_, name, grid, args), (_, name2, grid2, args2) in zip(log, replayed):
        assert (name, grid) == (name2, grid2)
        assert args == tuple(args2), name


@pytest.mark.gpu
@pytest.mark.parametrize("mode", ["lean", "loop"])
def test_noise_once_replay_equals_slow_path_gpu(monkeypatch, mode):
    """On the GPU: replayed launches give the slow path's results (the forward and the
    deterministic gradients bit for bit; dQ2/dK2/dlam come from float32 atomics), and the replay
    ran."""
    from attnlab.ops.diff_attention import latent as K

    if mode == "loop":
        monkeypatch.setattr(NO, "LEAN_MAX_WIDTH", 0)
    monkeypatch.setattr(K, "_FAST", True)
    monkeypatch.setattr(K, "_PLANS", {})
    replays, real = [], K._replay
    monkeypatch.setattr(K, "_replay", lambda plan, roots: replays.append(real(plan, roots)) or replays[-1])
    ins = _inputs(2, 6, 333, 64, 64, 64, torch.bfloat16)
    dout = torch.randn(2, 6, 333, 64, device=DEV, dtype=torch.bfloat16)

    def run():
        out = NO.cmd_attention_noise_once(*ins)
        return [out, *torch.autograd.grad(out, ins, dout)]

    first = run()
    for _ in range(2):
        again = run()
        assert torch.equal(first[0], again[0])
        for name, x, y in zip(NAMES, first[1:], again[1:]):
            assert rel_err(x, y) <= 1e-2, name
    assert replays and all(replays), f"the replay did not run: {replays}"
    monkeypatch.setattr(K, "_FAST", False)
    slow = run()
    assert torch.equal(first[0], slow[0])
    for name, x, y in zip(NAMES, first[1:], slow[1:]):
        assert rel_err(x, y) <= 1e-2, name
