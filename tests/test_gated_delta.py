"""The gated delta rule op: chunked PyTorch path vs the naive recurrence; fla dispatch (mocked)."""

import sys
import types
import warnings

import pytest
import torch
import torch.nn.functional as F

from attnlab import ConfigError
from attnlab.ops import gated_delta as gd
from attnlab.ops.gated_delta import fla_backend
from attnlab.ops.gated_delta import (chunk_gated_delta_rule_torch, fla_verdict, gated_delta_rule,
                                     naive_gated_delta_rule)
from attnlab.testing import rel_err


# many tiny ops: one intra-op thread (fixture in conftest.py)
pytestmark = pytest.mark.usefixtures("one_thread")



def make_inputs(b, h, t, dk, dv, decay, dtype=torch.float32, device="cpu", h0=True):
    q = torch.randn(b, h, t, dk, device=device)
    k = F.normalize(torch.randn(b, h, t, dk, device=device), dim=-1)
    v = torch.randn(b, h, t, dv, device=device)
    # weak: a_t ~ 0.95..0.999; strong: g_t ~ -10 (a_t ~ 5e-5): the state forgets within a token
    shift = {"weak": 4.0, "strong": -2.0}[decay]
    g = F.logsigmoid(torch.randn(b, h, t, device=device) + shift) * (5.0 if decay == "strong" else 1.0)
    beta = torch.rand(b, h, t, device=device)
    s0 = torch.randn(b, h, dk, dv, device=device) if h0 else None
    xs = [q, k, v, g, beta, s0]
    return [None if x is None else x.to(dtype).requires_grad_() for x in xs]


@pytest.mark.parametrize("decay", ["weak", "strong"])
@pytest.mark.parametrize("t,chunk", [(77, 16), (64, 64), (130, 64), (5, 8), (33, 1)])
def test_chunked_matches_naive_fwd_bwd(decay, t, chunk):
    q, k, v, g, beta, s0 = make_inputs(2, 3, t, 16, 12, decay)
    o_ref, s_ref = naive_gated_delta_rule(q, k, v, g, beta, 0.3, s0, True)
    o, s = chunk_gated_delta_rule_torch(q, k, v, g, beta, 0.3, s0, True, chunk_size=chunk)
    assert rel_err(o, o_ref) <= 1e-5
    assert rel_err(s, s_ref) <= 1e-5
    do, ds = torch.randn_like(o), torch.randn_like(s)
    inputs = [q, k, v, g, beta, s0]
    g_ref = torch.autograd.grad((o_ref * do).sum() + (s_ref * ds).sum(), inputs)
    g_chk = torch.autograd.grad((o * do).sum() + (s * ds).sum(), inputs)
    for name, a, r in zip(["q", "k", "v", "g", "beta", "h0"], g_chk, g_ref):
        assert rel_err(a, r) <= 1e-5, name


def test_chunked_without_initial_state_and_output_only():
    q, k, v, g, beta, _ = make_inputs(1, 2, 45, 8, 8, "weak", h0=False)
    o_ref, _ = naive_gated_delta_rule(q, k, v, g, beta)
    o, s = chunk_gated_delta_rule_torch(q, k, v, g, beta, chunk_size=16)
    assert s is None and rel_err(o, o_ref) <= 1e-5
    gq_ref, gg_ref = torch.autograd.grad(o_ref.square().sum(), [q, g])
    gq, gg = torch.autograd.grad(o.square().sum(), [q, g])
    assert rel_err(gq, gq_ref) <= 1e-5 and rel_err(gg, gg_ref) <= 1e-5


def test_state_continues_across_calls():
    """Two chunked calls chained through the state equal one call (prefill + continue)."""
    q, k, v, g, beta, s0 = make_inputs(2, 2, 50, 8, 6, "weak")
    o, s = chunk_gated_delta_rule_torch(q, k, v, g, beta, None, s0, True, chunk_size=16)
    o1, s1 = chunk_gated_delta_rule_torch(*(x[:, :, :21] for x in (q, k, v, g, beta)), None, s0, True, chunk_size=16)
    o2, s2 = chunk_gated_delta_rule_torch(*(x[:, :, 21:] for x in (q, k, v, g, beta)), None, s1, True, chunk_size=16)
    assert rel_err(torch.cat([o1, o2], 2), o) <= 1e-5 and rel_err(s2, s) <= 1e-5


def test_bf16_is_usable():
    q, k, v, g, beta, s0 = make_inputs(1, 2, 100, 32, 32, "weak")
    o_ref, _ = naive_gated_delta_rule(q, k, v, g, beta, None, s0)
    lo = [x.detach().bfloat16() for x in (q, k, v, g, beta)]
    o, s = chunk_gated_delta_rule_torch(*lo, None, s0, True, chunk_size=32)
    assert o.dtype == torch.bfloat16 and s.dtype == torch.float32
    assert rel_err(o, o_ref) <= 2e-2


def test_compiles_fullgraph():
    q, k, v, g, beta, _ = make_inputs(1, 2, 40, 8, 8, "weak", h0=False)
    f = torch.compile(chunk_gated_delta_rule_torch, fullgraph=True, dynamic=False)
    with torch.no_grad():
        o, _ = f(q, k, v, g, beta, chunk_size=16)
        o_ref, _ = naive_gated_delta_rule(q, k, v, g, beta)
    assert rel_err(o, o_ref) <= 1e-5


def test_bad_arguments():
    q, k, v, g, beta, _ = make_inputs(1, 1, 8, 4, 4, "weak", h0=False)
    with pytest.raises(ConfigError, match="power of two"):
        gated_delta_rule(q, k, v, g, beta, chunk_size=48)
    with pytest.raises(ConfigError, match="auto, chunked, naive, fla, triton"):
        gated_delta_rule(q, k, v, g, beta, impl="cuda")
    with pytest.raises(ValueError, match="expected q,k"):
        gated_delta_rule(q, k[..., :2], v, g, beta)


# -- fla dispatch ------------------------------------------------------------------------------
@pytest.mark.parametrize("facts,ok,why", [
    (("cuda", (9, 0), None, "3.6.0"), False, "not installed"),
    (("cpu", None, "0.6.1", "3.6.0"), False, "CUDA"),
    (("cuda", (9, 0), "0.6.0", "3.6.0"), False, "refuses Hopper"),
    (("cuda", (9, 0), "0.6.2", "3.7.0"), False, "refuses Hopper"),
    (("cuda", (9, 0), "0.6.2", "3.7.1"), True, ""),
    (("cuda", (9, 0), "0.5.0", "3.6.0"), True, ""),
    (("cuda", (8, 0), "0.6.0", "3.6.0"), True, ""),
    (("cuda", (10, 0), "0.6.0", "3.5.1"), True, ""),
])
def test_fla_verdict(facts, ok, why):
    got, reason = fla_verdict(*facts)
    assert got == ok and why in reason


@pytest.fixture
def fake_fla(monkeypatch):
    """A fake fla package whose kernels are the naive recurrence in fla's [B, T, H, D] layout."""
    calls = []

    def kernel(name):
        def fn(q, k, v, g, beta, scale=None, initial_state=None, output_final_state=False):
            calls.append(name)
            assert q.shape[1] > 0 and g.dim() == 3 and g.shape == q.shape[:3]  # [B, T, H]
            tr = lambda x: x.transpose(1, 2)  # noqa: E731
            o, s = naive_gated_delta_rule(tr(q), tr(k), tr(v), tr(g), tr(beta), scale, initial_state,
                                          output_final_state)
            return tr(o), s
        return fn

    pkg = types.ModuleType("fla")
    pkg.__version__ = "0.6.1"
    ops = types.ModuleType("fla.ops")
    mod = types.ModuleType("fla.ops.gated_delta_rule")
    mod.chunk_gated_delta_rule = kernel("chunk")
    mod.fused_recurrent_gated_delta_rule = kernel("recurrent")
    for name, m in (("fla", pkg), ("fla.ops", ops), ("fla.ops.gated_delta_rule", mod)):
        monkeypatch.setitem(sys.modules, name, m)
    monkeypatch.setattr(gd, "_warned", set())
    fla_backend.fla_status.cache_clear()
    yield calls
    fla_backend.fla_status.cache_clear()


def _patch_device(monkeypatch, capability, triton_version):
    """Pretend CPU tensors live on a CUDA device of this capability with this triton."""
    real = fla_backend.fla_verdict
    monkeypatch.setattr(gd, "fla_status", lambda dt, di, hd: real("cuda", capability, "0.6.1", triton_version, hd))


def test_fla_used_when_usable(fake_fla, monkeypatch):
    _patch_device(monkeypatch, (9, 0), "3.7.1")
    q, k, v, g, beta, s0 = make_inputs(2, 2, 19, 8, 8, "weak", dtype=torch.bfloat16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        o, s = gated_delta_rule(q, k, v, g, beta, initial_state=s0, output_final_state=True)
        o1, _ = gated_delta_rule(q[:, :, :1], k[:, :, :1], v[:, :, :1], g[:, :, :1], beta[:, :, :1],
                                 initial_state=s0, recurrent=True)
    assert fake_fla == ["chunk", "recurrent"]
    o_ref, s_ref = naive_gated_delta_rule(q, k, v, g, beta, None, s0, True)
    assert rel_err(o, o_ref) <= 1e-6 and rel_err(s, s_ref) <= 1e-6
    with pytest.warns(RuntimeWarning, match="bf16/fp16"):  # fp32 inputs: portable path
        gated_delta_rule(*(x.float() for x in (q, k, v, g, beta)), impl="fla")
    assert fake_fla == ["chunk", "recurrent"]


def test_fla_on_old_triton_hopper_warns_once_and_falls_back(fake_fla, monkeypatch):
    _patch_device(monkeypatch, (9, 0), "3.6.0")
    q, k, v, g, beta, _ = make_inputs(1, 2, 30, 8, 8, "weak", h0=False, dtype=torch.float16)
    with pytest.warns(RuntimeWarning, match="refuses Hopper") as rec:
        o, _ = gated_delta_rule(q, k, v, g, beta, impl="fla")
        gated_delta_rule(q, k, v, g, beta, impl="fla")
    assert len([w for w in rec if "fla" in str(w.message)]) == 1
    assert fake_fla == []
    assert rel_err(o, chunk_gated_delta_rule_torch(q, k, v, g, beta)[0]) == 0.0
    with warnings.catch_warnings():  # auto: silent fallback
        warnings.simplefilter("error")
        gated_delta_rule(q, k, v, g, beta, impl="auto")


def test_fla_runtime_failure_falls_back(fake_fla, monkeypatch):
    _patch_device(monkeypatch, (8, 0), "3.6.0")
    mod = sys.modules["fla.ops.gated_delta_rule"]

    def broken(*a, **kw):
        raise RuntimeError("no kernel for this GPU")

    monkeypatch.setattr(mod, "chunk_gated_delta_rule", broken)
    q, k, v, g, beta, _ = make_inputs(1, 2, 12, 8, 8, "weak", h0=False, dtype=torch.bfloat16)
    with pytest.warns(RuntimeWarning, match="no kernel"):
        o, _ = gated_delta_rule(q, k, v, g, beta)
    assert rel_err(o, naive_gated_delta_rule(q, k, v, g, beta)[0]) <= 1e-5


def test_fla_not_installed_here():
    gd.fla_status.cache_clear()
    ok, reason = gd.fla_status("cpu", None, (8, 8))
    assert not ok


@pytest.mark.gpu
def test_gpu_bf16_chunked():
    q, k, v, g, beta, s0 = make_inputs(2, 4, 1000, 128, 128, "weak", device="cuda")
    o_ref, s_ref = naive_gated_delta_rule(q, k, v, g, beta, None, s0, True)
    of, sf = chunk_gated_delta_rule_torch(q, k, v, g, beta, None, s0, True)
    assert rel_err(of, o_ref) <= 1e-4 and rel_err(sf, s_ref) <= 1e-4
    gr = torch.autograd.grad(o_ref.square().sum(), [q, g])
    gc = torch.autograd.grad(of.square().sum(), [q, g])
    assert all(rel_err(a, b) <= 1e-4 for a, b in zip(gc, gr))
    lo = [x.detach().bfloat16().requires_grad_() for x in (q, k, v)] + [g.detach().requires_grad_(),
                                                                        beta.detach().requires_grad_()]
    o, s = chunk_gated_delta_rule_torch(*lo, None, s0, True)
    assert o.dtype == torch.bfloat16
    assert rel_err(o, o_ref) <= 2e-2 and rel_err(s, s_ref) <= 2e-2
    o.float().square().sum().backward()
    for x, ref in zip(lo[:2], gr[:1] + (None,)):
        assert torch.isfinite(x.grad).all()
    assert rel_err(lo[0].grad, gr[0]) <= 3e-2


@pytest.mark.gpu
def test_gpu_models_decode_and_generate():
    from attnlab import ModelConfig, build_model
    from attnlab.testing import decode_vs_forward

    for mixer in ("gdn", "sdla", "gdn,gdn,mla"):
        cfg = ModelConfig(vocab_size=97, dim=128, n_layers=3, n_heads=4, max_seq_len=256, mixer=mixer,
                          mixer_options={"mla": {"kv_lora_rank": 32, "qk_rope_head_dim": 16}})
        m = build_model(cfg, device="cuda").eval()
        ids = torch.randint(0, 97, (2, 150), device="cuda")
        assert decode_vs_forward(m, ids, 70, 1) <= 1e-4
        assert decode_vs_forward(m, ids, 33, 16) <= 1e-4
        mb = m.to(torch.bfloat16)
        assert mb.generate(ids[:, :20], 30).shape == (2, 50)
