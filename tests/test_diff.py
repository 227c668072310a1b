"""Differential attention family: diff-mha, diff-mla, cmd-mla (mixers, lam, decode, errors)."""

import math

import pytest
import torch

from attnlab import ConfigError, ModelConfig, build_model
from attnlab.layers.diff import DiffLambda, lambda_init_schedule
from attnlab.ops.attention import causal_attention
from attnlab.ops.diff_attention import diff_attention, diff_attention_reference, diff_attention_sdpa
from attnlab.testing import decode_vs_forward, mixer_decode_vs_forward, rel_err

LAT = dict(kv_lora_rank=24, q_lora_rank=40, qk_rope_head_dim=8, qk_nope_head_dim=12, v_head_dim=20)


def small(mixer, opts=None, **kw):
    base = dict(vocab_size=97, dim=64, n_layers=2, n_heads=4, max_seq_len=64, mixer=mixer,
                mixer_options={mixer: dict(opts or {})} if opts is not None else {})
    base.update(kw)
    return build_model(ModelConfig(**base)).eval()


VARIANTS = {
    "diff-mha": ("diff-mha", {}, {}),
    "diff-mha-gqa-head": ("diff-mha", {"lambda_mode": "head", "lambda_scale": True}, dict(n_heads=8, n_kv_heads=4, dim=96)),
    "diff-mha-mqa-pair": ("diff-mha", {}, dict(n_kv_heads=2)),
    "diff-mla": ("diff-mla", LAT, {}),
    "diff-mla-noq-head": ("diff-mla", {"kv_lora_rank": 16, "qk_rope_head_dim": 4, "lambda_mode": "head"}, {}),
    "diff-mla-naive": ("diff-mla", {**LAT, "decode": "naive"}, {}),
    "cmd-mla": ("cmd-mla", LAT, {}),
    "cmd-mla-rope-dim": ("cmd-mla", {**LAT, "noise_rope": True, "noise_head_dim": 10, "lambda_scale": True}, {}),
    "cmd-mla-naive": ("cmd-mla", {**LAT, "noise_head_dim": 6, "decode": "naive"}, {}),
    "hybrid": ("mla,diff-mla,cmd-mla,diff-mha", None, dict(n_layers=4)),
}


def _randomise(model):
    """Move lam and the head norm away from their init so the tests see every term."""
    with torch.no_grad():
        for n, p in model.named_parameters():
            if ".lam." in n or n.endswith("head_norm"):
                p.add_(0.3 * torch.randn_like(p))


@pytest.mark.parametrize("name", list(VARIANTS))
@pytest.mark.parametrize("prompt_len,chunk", [(1, 1), (7, 1), (5, 4)])
def test_decode_equals_forward(name, prompt_len, chunk):
    mixer, opts, kw = VARIANTS[name]
    if opts is None:
        kw = dict(kw, mixer_options={"mla": LAT, "diff-mla": LAT, "cmd-mla": LAT})
    model = small(mixer, opts, **kw)
    _randomise(model)
    ids = torch.randint(0, 97, (2, 19))
    assert decode_vs_forward(model, ids, prompt_len, chunk) <= 1e-5


@pytest.mark.parametrize("name", ["diff-mha", "diff-mla", "cmd-mla-rope-dim"])
def test_mixer_sdpa_equals_explicit_maps(name):
    mixer, opts, kw = VARIANTS[name]
    model = small(mixer, opts, **kw)
    _randomise(model)
    m = model.blocks[1].mixer
    x = torch.randn(2, 13, model.config.dim)
    with torch.no_grad():
        m.opts.impl = "sdpa"
        a = m(x)
        m.opts.impl = "reference"
        b = m(x)
    assert rel_err(a, b) <= 1e-5
    m.opts.impl = "sdpa"
    assert mixer_decode_vs_forward(m, x, 4, 3) <= 1e-5


def _inputs(b, h, hk, h2, hk2, t, d1, d2, dv, dtype=torch.float32, s=None):
    s = t if s is None else s
    q1, k1 = torch.randn(b, h, t, d1, dtype=dtype), torch.randn(b, hk, s, d1, dtype=dtype)
    q2, k2 = torch.randn(b, h2, t, d2, dtype=dtype), torch.randn(b, hk2, s, d2, dtype=dtype)
    v = torch.randn(b, hk, s, dv, dtype=dtype)
    lam = 0.2 + torch.rand(h)
    return q1, k1, q2, k2, v, lam


SHAPES = {
    "diff": (2, 3, 3, 3, 3, 11, 16, 16, 24),
    "gqa": (1, 4, 2, 4, 2, 9, 8, 12, 8),
    "cmd": (2, 4, 4, 1, 1, 10, 16, 8, 12),
}


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("q_start", [0, 5])
def test_two_sdpa_equals_explicit_maps_with_grads(shape, q_start):
    b, h, hk, h2, hk2, t, d1, d2, dv = SHAPES[shape]
    ins = _inputs(b, h, hk, h2, hk2, t - q_start if q_start else t, d1, d2, dv, s=t)
    ins = [x.requires_grad_() for x in ins]
    out = diff_attention_sdpa(*ins, 0.3, 0.4, q_start=q_start)
    ref = diff_attention_reference(*ins, 0.3, 0.4, q_start=q_start)
    assert rel_err(out, ref) <= 1e-5
    g = torch.randn_like(out)
    ga = torch.autograd.grad(out, ins, g)
    gb = torch.autograd.grad(ref, ins, g)
    for x, y in zip(ga, gb):
        assert rel_err(x, y) <= 1e-5


def test_reference_maps_are_differential():
    q1, k1, q2, k2, v, lam = _inputs(1, 2, 2, 1, 1, 7, 8, 8, 8)
    out, a, bm = diff_attention_reference(q1, k1, q2, k2, v, lam, return_maps=True)
    assert torch.allclose(a.sum(-1), torch.ones(1, 2, 7)) and torch.allclose(bm.sum(-1), torch.ones(1, 2, 7))
    assert torch.equal(bm[:, 0], bm[:, 1])  # CMD: one noise map for all heads
    assert (a.triu(1) == 0).all()
    diffmap = a - lam.view(1, 2, 1, 1) * bm
    assert torch.allclose(diffmap.sum(-1), (1 - lam).view(1, 2, 1).expand(1, 2, 7), atol=1e-6)


def test_lambda_init_schedule_and_parameterisation():
    for layer in range(8):
        assert lambda_init_schedule(layer) == pytest.approx(0.8 - 0.6 * math.exp(-0.3 * layer))
    assert lambda_init_schedule(0) == pytest.approx(0.2)
    lam = DiffLambda(5, 16, 0.35, per_head=False, layer_scale=False)
    want = torch.exp((lam.q1 * lam.k1).sum(-1)) - torch.exp((lam.q2 * lam.k2).sum(-1)) + 0.35
    got = lam()
    assert got.shape == (5,) and torch.allclose(got, want.expand(5)) and (got == got[0]).all()
    assert 0.05 < lam.q1.std().item() < 0.2  # N(0, 0.1)
    lam = DiffLambda(5, 16, 0.35, per_head=True, layer_scale=True)
    with torch.no_grad():
        lam.scale.fill_(0.5)
    want = 0.5 * (torch.exp((lam.q1 * lam.k1).sum(-1)) - torch.exp((lam.q2 * lam.k2).sum(-1)) + 0.35)
    assert torch.allclose(lam(), want) and len(set(lam().tolist())) == 5
    cmd = DiffLambda(3, 8, 0.5, per_head=True, layer_scale=False, kind="cmd")
    assert torch.allclose(cmd(), torch.exp((cmd.q1 * cmd.k1).sum(-1)) + 0.5) and cmd.q2 is None
    # the mixers use the depth schedule unless lambda_init is given
    model = small("diff-mla", LAT, n_layers=3)
    assert [b.mixer.lambda_init for b in model.blocks] == pytest.approx([lambda_init_schedule(i) for i in range(3)])
    model = small("cmd-mla", {**LAT, "lambda_init": 0.5})
    assert model.blocks[1].mixer.lambda_init == 0.5 and model.blocks[1].mixer.lam.q.shape == (1, 4, 20)


def test_head_norm_and_scale():
    model = small("diff-mha", {"lambda_init": 0.3})
    m = model.blocks[0].mixer
    _randomise(model)
    x = torch.randn(2, 6, 64)
    with torch.no_grad():
        q, k, v = m.project(x, 0)
        o = diff_attention_reference(q[:, :2], k[:, :2], q[:, 2:], k[:, 2:], v, m.lam(), m.scale, m.scale)
        o = o / o.pow(2).mean(-1, keepdim=True).add(m.cfg.norm_eps).sqrt() * m.head_norm * 0.7
        want = m.out_proj(o.transpose(1, 2).reshape(2, 6, 64))
        assert rel_err(m(x), want) <= 1e-5


def _zero_lambda(model):
    with torch.no_grad():
        for b in model.blocks:
            b.mixer.lam.scale.zero_()


@pytest.mark.parametrize("mixer,extra", [("diff-mla", {}), ("cmd-mla", {"noise_rope": True}), ("cmd-mla", {})])
def test_lambda_zero_reduces_to_mla(mixer, extra):
    base = small("mla", mixer_options={"mla": LAT})
    diff = small(mixer, {**LAT, **extra, "lambda_scale": True, "head_norm": False})
    # mla's weights are the first rows of the widened up-projections; the noise rows stay random
    sd = diff.state_dict()
    for name, w in base.state_dict().items():
        assert name in sd, name
        if sd[name].shape == w.shape:
            sd[name] = w
        else:
            assert name.endswith(("q_up.weight", "kv_up.weight")), name
            sd[name][: w.shape[0]] = w
    diff.load_state_dict(sd)
    _zero_lambda(diff)
    ids = torch.randint(0, 97, (2, 15))
    with torch.no_grad():
        assert rel_err(diff(ids), base(ids)) <= 1e-5
        cache_a, cache_b = diff.new_cache(2, 15), base.new_cache(2, 15)
        a = torch.cat([diff(ids[:, :6], cache=cache_a)] + [diff(ids[:, i:i + 1], cache=cache_a) for i in range(6, 15)], 1)
        b = torch.cat([base(ids[:, :6], cache=cache_b)] + [base(ids[:, i:i + 1], cache=cache_b) for i in range(6, 15)], 1)
    assert rel_err(a, b) <= 1e-5
    assert cache_a.nbytes() == cache_b.nbytes()  # the same latent cache: latent + rope key


def test_lambda_zero_diff_mha_is_signal_attention():
    model = small("diff-mha", {"lambda_scale": True, "head_norm": False}, n_kv_heads=2)
    _zero_lambda(model)
    m = model.blocks[0].mixer
    x = torch.randn(2, 9, 64)
    with torch.no_grad():
        q, k, v = m.project(x, 0)
        o = causal_attention(q[:, :2], k[:, :1], v, scale=m.scale)
        assert rel_err(m(x), m.out_proj(o.transpose(1, 2).reshape(2, 9, 64))) <= 1e-6


def test_cache_sizes():
    L = 16  # a multiple of the latent cache's 8-token alignment
    for name, per_token in (("diff-mla", 24 + 8), ("cmd-mla", 24 + 8)):
        model = small(name, LAT)
        cache = model.new_cache(1, L)
        with torch.no_grad():
            model(torch.randint(0, 97, (1, L)), cache=cache)
        assert cache.nbytes() / L / 2 == per_token * 4
    model = small("diff-mha", {}, n_kv_heads=2)  # keys 2 x 16, one value head of 32
    cache = model.new_cache(1, L)
    assert cache.nbytes() / L / 2 == (2 * 16 + 32) * 4


def test_training_grads_flow_to_lambda_and_noise():
    for name in ("diff-mha", "diff-mla", "cmd-mla"):
        model = small(name, {"lambda_scale": True}).train()
        ids = torch.randint(0, 97, (2, 10))
        model.loss(ids, ids).backward()
        m = model.blocks[1].mixer
        for p in (m.lam.q, m.lam.k, m.lam.scale, m.head_norm):
            assert p.grad is not None and p.grad.abs().sum() > 0
        if hasattr(m, "kv_up"):  # the noise rows of the widened up-projections
            assert m.kv_up.weight.grad[m.kv_split[0]:].abs().sum() > 0
            # the query rows: q_up's, or (q_lora_rank = 0) the last rows of the fused down-projection
            gq = m.proj.q_up.weight.grad if m.proj.q_rank else m.proj.down.weight.grad[m.proj.rank + m.proj.dr:]
            assert gq[m.q_split[0]:].abs().sum() > 0
        else:
            assert m.qkv_proj.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("mixer,kw,field", [
    ("diff-mha", dict(n_heads=3, dim=48), "n_heads"),
    ("diff-mha", dict(n_kv_heads=1), "n_kv_heads"),
    ("diff-mha", dict(mixer_options={"diff-mha": {"lambda_init": 1.0}}), "mixer_options.diff-mha.lambda_init"),
    ("diff-mla", dict(mixer_options={"diff-mla": {"lambda_init": 0.0}}), "mixer_options.diff-mla.lambda_init"),
    ("diff-mla", dict(mixer_options={"diff-mla": {"lambda_init": -0.2}}), "mixer_options.diff-mla.lambda_init"),
    ("diff-mla", dict(mixer_options={"diff-mla": {"lambda_mode": "token"}}), "mixer_options.diff-mla.lambda_mode"),
    ("diff-mla", dict(mixer_options={"diff-mla": {"impl": "cuda"}}), "mixer_options.diff-mla.impl"),
    ("diff-mla", dict(mixer_options={"diff-mla": {"kv_lora_rank": 0}}), "mixer_options.diff-mla.kv_lora_rank"),
    ("cmd-mla", dict(mixer_options={"cmd-mla": {"noise_head_dim": 0}}), "mixer_options.cmd-mla.noise_head_dim"),
    ("cmd-mla", dict(mixer_options={"cmd-mla": {"noise_head_dim": 300}}), "mixer_options.cmd-mla.noise_head_dim"),
    ("cmd-mla", dict(mixer_options={"cmd-mla": {"noise_head_dim": 250, "noise_rope": True}}),
     "mixer_options.cmd-mla.noise_head_dim"),
    ("cmd-mla", dict(mixer_options={"cmd-mla": {"noise_rope": "yes"}}), "mixer_options.cmd-mla.noise_rope"),
    ("cmd-mla", dict(mixer_options={"cmd-mla": {"lambda_scale": 1}}), "mixer_options.cmd-mla.lambda_scale"),
    ("cmd-mla", dict(mixer_options={"cmd-mla": {"noise_heads": 2}}), "mixer_options.cmd-mla.noise_heads"),
])
def test_bad_config_names_field(mixer, kw, field, monkeypatch):
    allocated = []
    monkeypatch.setattr(torch.nn.Linear, "__init__", lambda *a, **k: allocated.append(1))
    base = dict(vocab_size=97, dim=64, n_layers=2, n_heads=4, mixer=mixer)
    base.update(kw)
    with pytest.raises(ConfigError) as e:
        build_model(ModelConfig(**base))
    assert e.value.field == field
    assert not allocated


def test_bad_impl_and_cache_kind():
    q1, k1, q2, k2, v, lam = _inputs(1, 2, 2, 2, 2, 5, 8, 8, 8)
    with pytest.raises(ValueError, match="impl must be one of"):
        diff_attention(q1, k1, q2, k2, v, lam, impl="fast")
    with pytest.raises(ConfigError, match="cache kind"):
        small("diff-mla", LAT).new_cache(1, 8, kind="dense")


def test_latent_family_inherits_mla_options():
    cfg = dict(vocab_size=97, dim=64, n_layers=2, n_heads=4, mixer="diff-mla,cmd-mla",
               mixer_options={"mla": LAT, "cmd-mla": {"kv_lora_rank": 8}})
    model = build_model(ModelConfig(**cfg))
    d, c = model.blocks[0].mixer, model.blocks[1].mixer
    assert (d.proj.rank, d.proj.dr, d.proj.dn, d.proj.dv) == (24, 8, 12, 20)
    assert d.proj.q_rank == 40 and d.proj.down.out_features == 24 + 8 + 40
    assert (c.proj.rank, c.proj.dr) == (8, 8)  # its own option wins
    with pytest.raises(ConfigError) as e:  # inherited values are validated under the mixer's name
        build_model(ModelConfig(**dict(cfg, mixer="diff-mla", mixer_options={"mla": {"q_lora_rank": 100}})))
    assert e.value.field == "mixer_options.diff-mla.q_lora_rank"


@pytest.mark.parametrize("kind", ["diff", "cmd"])
@pytest.mark.parametrize("per_head,layer_scale", [(False, False), (True, False), (False, True), (True, True)])
def test_lambda_backward_equals_autograd(kind, per_head, layer_scale):
    """DiffLambda's hand-written backward gives autograd's values bit for bit."""
    from attnlab.layers.diff import DiffLambda

    m = DiffLambda(5, 24, 0.35, per_head, layer_scale, kind)
    if layer_scale:
        with torch.no_grad():
            m.scale.fill_(1.3)
    e = torch.exp((m.q * m.k).sum(-1))
    want = (e[0] - e[1] if kind == "diff" else e[0]) + m.lambda_init
    want = (want * m.scale if layer_scale else want).expand(5)
    g = torch.randn(5)
    got = m()
    assert torch.equal(got, want)
    for x, y in zip(torch.autograd.grad(got, list(m.parameters()), g),
                    torch.autograd.grad(want, list(m.parameters()), g)):
        assert torch.equal(x, y)
