"""attnlab's Triton path of the gated delta rule vs the naive recurrence.

On CPU the kernels run under TRITON_INTERPRET=1 (set by conftest.py): float32, small sizes. The
bf16 check runs on a GPU (marked gpu)."""

import pytest
import torch
import torch.nn.functional as F

from attnlab.errors import InputError
from attnlab.ops import gated_delta as gd
from attnlab.ops.gated_delta import (chunk_gated_delta_rule_torch, gated_delta_rule, naive_gated_delta_rule,
                                     resolve_impl, triton_available)
from attnlab.testing import mixer_decode_vs_forward, rel_err

pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.skipif(not triton_available(), reason="triton not installed")]
NAMES = ["q", "k", "v", "g", "beta", "h0"]


def make_inputs(b, h, t, dk, dv, decay, dtype=torch.float32, device="cpu", h0=True):
    q = torch.randn(b, h, t, dk, device=device)
    k = F.normalize(torch.randn(b, h, t, dk, device=device), dim=-1)
    v = torch.randn(b, h, t, dv, device=device)
    # weak: a_t ~ 0.95..0.999; strong: g_t ~ -10 (a_t ~ 5e-5)
    shift = {"weak": 4.0, "strong": -2.0}[decay]
    g = F.logsigmoid(torch.randn(b, h, t, device=device) + shift) * (5.0 if decay == "strong" else 1.0)
    beta = torch.rand(b, h, t, device=device)
    s0 = torch.randn(b, h, dk, dv, device=device) if h0 else None
    return [None if x is None else x.to(dtype).requires_grad_() for x in (q, k, v, g, beta, s0)]


def triton_rule(*args, **kw):
    return gated_delta_rule(*args, impl="triton", **kw)


@pytest.mark.parametrize("decay", ["weak", "strong"])
@pytest.mark.parametrize("t,chunk,dk,dv", [(77, 16, 16, 12), (40, 32, 32, 16), (21, 8, 16, 16)])
def test_triton_matches_naive_fwd_bwd(decay, t, chunk, dk, dv):
    q, k, v, g, beta, s0 = make_inputs(2, 2, t, dk, dv, decay)
    o_ref, s_ref = naive_gated_delta_rule(q, k, v, g, beta, 0.3, s0, True)
    o, s = triton_rule(q, k, v, g, beta, scale=0.3, initial_state=s0, output_final_state=True, chunk_size=chunk)
    assert o.shape == o_ref.shape and s.dtype == torch.float32
    assert rel_err(o, o_ref) <= 1e-5
    assert rel_err(s, s_ref) <= 1e-5
    do, ds = torch.randn_like(o), torch.randn_like(s)
    inputs = [q, k, v, g, beta, s0]
    g_ref = torch.autograd.grad((o_ref * do).sum() + (s_ref * ds).sum(), inputs)
    g_tri = torch.autograd.grad((o * do).sum() + (s * ds).sum(), inputs)
    for name, a, r in zip(NAMES, g_tri, g_ref):
        assert rel_err(a, r) <= 1e-5, name


def test_triton_without_initial_state_output_only():
    """No initial state, final state not used: the backward runs with dS_final = None."""
    q, k, v, g, beta, _ = make_inputs(1, 2, 45, 16, 16, "weak", h0=False)
    o_ref, _ = naive_gated_delta_rule(q, k, v, g, beta)
    o, s = triton_rule(q, k, v, g, beta, chunk_size=16)
    assert s is None and rel_err(o, o_ref) <= 1e-5
    do = torch.randn_like(o)
    g_ref = torch.autograd.grad((o_ref * do).sum(), [q, k, v, g, beta])
    g_tri = torch.autograd.grad((o * do).sum(), [q, k, v, g, beta])
    for name, a, r in zip(NAMES, g_tri, g_ref):
        assert rel_err(a, r) <= 1e-5, name


def test_triton_final_state_only_gradient():
    """A loss on the final state alone (prefill for decode): gradients through dS_final."""
    q, k, v, g, beta, s0 = make_inputs(1, 1, 33, 16, 16, "weak")
    _, s_ref = naive_gated_delta_rule(q, k, v, g, beta, None, s0, True)
    _, s = triton_rule(q, k, v, g, beta, initial_state=s0, output_final_state=True, chunk_size=16)
    ds = torch.randn_like(s)
    inputs = [k, v, g, beta, s0]
    for name, a, r in zip(NAMES[1:], torch.autograd.grad((s * ds).sum(), inputs),
                          torch.autograd.grad((s_ref * ds).sum(), inputs)):
        assert rel_err(a, r) <= 1e-5, name


def test_triton_state_continues_across_calls():
    """Two calls chained through the state equal one call (prefill + continue), as in decode."""
    q, k, v, g, beta, s0 = make_inputs(2, 2, 50, 16, 16, "weak")
    o, s = triton_rule(q, k, v, g, beta, initial_state=s0, output_final_state=True, chunk_size=16)
    o1, s1 = triton_rule(*(x[:, :, :21] for x in (q, k, v, g, beta)), initial_state=s0, output_final_state=True,
                         chunk_size=16)
    o2, s2 = triton_rule(*(x[:, :, 21:] for x in (q, k, v, g, beta)), initial_state=s1, output_final_state=True,
                         chunk_size=16)
    assert rel_err(torch.cat([o1, o2], 2), o) <= 1e-5 and rel_err(s2, s) <= 1e-5


@pytest.mark.parametrize("t", [0, 1])
def test_triton_empty_and_single_token(t):
    q, k, v, g, beta, s0 = make_inputs(1, 2, t, 16, 16, "weak")
    o, s = triton_rule(q, k, v, g, beta, initial_state=s0, output_final_state=True)
    o_ref, s_ref = naive_gated_delta_rule(q, k, v, g, beta, None, s0, True)
    assert o.shape == o_ref.shape and rel_err(s, s_ref) <= 1e-6
    if t:
        assert rel_err(o, o_ref) <= 1e-6


def test_triton_fp16_inputs():
    """Half-precision inputs: matmuls in fp16 with fp32 accumulation; fp32 state; usable accuracy."""
    q, k, v, g, beta, s0 = make_inputs(1, 2, 40, 16, 16, "weak")
    o_ref, s_ref = naive_gated_delta_rule(q, k, v, g, beta, None, s0, True)
    lo = [x.detach().half().requires_grad_() for x in (q, k, v)] + [g.detach().requires_grad_(),
                                                                    beta.detach().requires_grad_()]
    o, s = triton_rule(*lo, initial_state=s0, output_final_state=True, chunk_size=16)
    assert o.dtype == torch.float16 and s.dtype == torch.float32
    assert rel_err(o, o_ref) <= 1e-2 and rel_err(s, s_ref) <= 1e-2
    gq_ref = torch.autograd.grad(o_ref.square().sum(), q)[0]
    o.float().square().sum().backward()
    assert lo[0].grad.dtype == torch.float16 and rel_err(lo[0].grad, gq_ref) <= 2e-2


def test_triton_dispatch(monkeypatch):
    q = torch.zeros(1, 1, 4, 16)
    assert resolve_impl("auto", q, q) == "chunked"  # CPU: the PyTorch path
    assert resolve_impl("triton", q, q) == "triton"  # under the interpreter (conftest)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(InputError, match="CUDA"):
        resolve_impl("triton", q, q)
    monkeypatch.setattr(gd, "triton_available", lambda: False)
    with pytest.raises(InputError, match="needs triton"):
        resolve_impl("triton", q, q)


def test_triton_compiles_fullgraph():
    """The Triton path is a custom op: torch.compile traces around it without graph breaks."""
    q, k, v, g, beta, s0 = make_inputs(1, 2, 24, 16, 16, "weak")
    fn = torch.compile(lambda *a: triton_rule(*a, output_final_state=True, chunk_size=16),
                       backend="aot_eager", fullgraph=True)
    o, s = fn(q, k, v, g, beta, None, s0)
    o_ref, s_ref = naive_gated_delta_rule(q, k, v, g, beta, None, s0, True)
    assert rel_err(o, o_ref) <= 1e-5 and rel_err(s, s_ref) <= 1e-5
    gq = torch.autograd.grad(o.sum(), q)[0]
    assert rel_err(gq, torch.autograd.grad(o_ref.sum(), q)[0]) <= 1e-5


def test_gdn_mixer_triton_decode_equals_forward():
    from attnlab import ModelConfig, build_model

    cfg = ModelConfig(vocab_size=64, dim=32, n_layers=1, n_heads=2, max_seq_len=64, mixer="gdn",
                      mixer_options={"gdn": {"impl": "triton", "chunk_size": 16}})
    mixer = build_model(cfg).eval().blocks[0].mixer
    x = torch.randn(1, 35, 32)
    assert mixer_decode_vs_forward(mixer, x, 19, 8) <= 1e-5
    mixer.opts.impl = "chunked"
    with torch.no_grad():
        ref = mixer(x)
    mixer.opts.impl = "triton"
    with torch.no_grad():
        assert rel_err(mixer(x), ref) <= 1e-5


@pytest.mark.gpu
def test_gpu_triton_bf16_and_fp32():
    q, k, v, g, beta, s0 = make_inputs(2, 4, 1000, 128, 128, "weak", device="cuda")
    assert resolve_impl("auto", q.bfloat16(), v.bfloat16()) in ("triton", "fla")
    o_ref, s_ref = naive_gated_delta_rule(q, k, v, g, beta, None, s0, True)
    do, ds = torch.randn_like(o_ref), torch.randn_like(s_ref)
    inputs = [q, k, v, g, beta, s0]
    g_ref = torch.autograd.grad((o_ref * do).sum() + (s_ref * ds).sum(), inputs)
    # fp32 on the GPU (ieee matmuls): as tight as on CPU up to the accumulation order
    o, s = triton_rule(q, k, v, g, beta, initial_state=s0, output_final_state=True)
    assert rel_err(o, o_ref) <= 1e-4 and rel_err(s, s_ref) <= 1e-4
    for name, a, r in zip(NAMES, torch.autograd.grad((o * do).sum() + (s * ds).sum(), inputs), g_ref):
        assert rel_err(a, r) <= 1e-4, name
    # bf16 q/k/v (fp32 gates and state), as in training; the PyTorch chunked path for comparison
    lo = [x.detach().bfloat16().requires_grad_() for x in (q, k, v)] + \
         [x.detach().requires_grad_() for x in (g, beta, s0)]
    o, s = triton_rule(*lo[:5], initial_state=lo[5], output_final_state=True)
    assert o.dtype == torch.bfloat16 and s.dtype == torch.float32
    oc, sc = chunk_gated_delta_rule_torch(*lo[:5], None, lo[5], True)
    errs = {"o": rel_err(o, o_ref), "s": rel_err(s, s_ref), "o_chunked": rel_err(oc, o_ref)}
    assert errs["o"] <= 2e-2 and errs["s"] <= 2e-2, errs
    grads = torch.autograd.grad((o.float() * do).sum() + (s * ds).sum(), lo)
    grads_c = torch.autograd.grad((oc.float() * do).sum() + (sc * ds).sum(), lo)
    for name, a, ac, r in zip(NAMES, grads, grads_c, g_ref):
        errs[f"d{name}"], errs[f"d{name}_chunked"] = rel_err(a, r), rel_err(ac, r)
    print("bf16 rel errors vs fp32 naive (triton, chunked):", {n: f"{e:.2e}" for n, e in errs.items()})
    for name, a in zip(NAMES, grads):
        assert torch.isfinite(a).all(), name
        assert errs[f"d{name}"] <= 5e-2, (name, errs)
