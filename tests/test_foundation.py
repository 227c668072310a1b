"""Foundation: config validation, mixer/cache protocol, MHA/GQA/MQA, MLA, generation."""

import math

import pytest
import torch

from attnlab import ConfigError, InputError, ModelConfig, build_model, mixer_names
from attnlab.caches import ModelCache
from attnlab.layers.mla import absorbed_attention
from attnlab.ops.attention import attention_reference, causal_attention
from attnlab.testing import decode_vs_forward, rel_err

MLA_OPTS = {"mla": {"kv_lora_rank": 24, "q_lora_rank": 40, "qk_rope_head_dim": 8,
                    "qk_nope_head_dim": 12, "v_head_dim": 20}}


def small(mixer="mha", **kw):
    base = dict(vocab_size=97, dim=64, n_layers=2, n_heads=4, max_seq_len=64, mixer=mixer,
                mixer_options=MLA_OPTS)
    base.update(kw)
    return build_model(ModelConfig(**base)).eval()


VARIANTS = {
    "mha": dict(mixer="mha"),
    "gqa": dict(mixer="mha", n_kv_heads=2),
    "mqa": dict(mixer="mha", n_kv_heads=1),
    "mha-window": dict(mixer="mha", mixer_options={"mha": {"sliding_window": 5}}),
    "mla": dict(mixer="mla"),
    "mla-noq": dict(mixer="mla", mixer_options={"mla": {"kv_lora_rank": 16, "qk_rope_head_dim": 4}}),
    "mla-naive": dict(mixer="mla", mixer_options={"mla": {**MLA_OPTS["mla"], "decode": "naive"}}),
    "hybrid": dict(mixer="mha,mla", n_layers=3, n_kv_heads=2),
    "yarn": dict(mixer="mha,mla", yarn_factor=4.0, yarn_original_max_len=16),
}


@pytest.mark.parametrize("name", list(VARIANTS))
@pytest.mark.parametrize("prompt_len,chunk", [(1, 1), (7, 1), (13, 3), (4, 8)])
def test_decode_equals_forward(name, prompt_len, chunk):
    model = small(**VARIANTS[name])
    ids = torch.randint(0, 97, (2, 23))
    assert decode_vs_forward(model, ids, prompt_len, chunk) <= 1e-5


def test_absorbed_mla_equals_naive():
    torch.manual_seed(0)
    a = small("mla")
    b = small("mla", mixer_options={"mla": {**MLA_OPTS["mla"], "decode": "naive"}})
    b.load_state_dict(a.state_dict())
    ids = torch.randint(0, 97, (3, 19))
    outs = []
    for m in (a, b):
        cache = m.new_cache(3, 19)
        with torch.no_grad():
            outs.append(torch.cat([m(ids[:, :5], cache=cache)] + [m(ids[:, i:i + 1], cache=cache) for i in range(5, 19)], 1))
    assert rel_err(outs[0], outs[1]) <= 1e-5


def test_absorbed_attention_matches_explicit():
    b, h, t, s, r, dr = 2, 3, 4, 9, 10, 6
    q_lat, q_rope = torch.randn(b, h, t, r), torch.randn(b, h, t, dr)
    latent = torch.randn(b, s, r + dr)
    out = absorbed_attention(q_lat, q_rope, latent, r, 0.3, q_start=s - t)
    k = latent[:, None].expand(b, h, s, r + dr)
    ref = attention_reference(torch.cat([q_lat, q_rope], -1), k, latent[:, None, :, :r].expand(b, h, s, r),
                              q_start=s - t, scale=0.3)
    assert rel_err(out, ref) <= 1e-6


@pytest.mark.parametrize("hq,hk,window", [(4, 4, None), (4, 2, None), (4, 1, 3), (2, 2, 1)])
@pytest.mark.parametrize("t,s", [(5, 5), (3, 11), (1, 7)])
def test_causal_attention_matches_reference(hq, hk, window, t, s):
    q, k, v = torch.randn(2, hq, t, 8), torch.randn(2, hk, s, 8), torch.randn(2, hk, s, 6)
    out = causal_attention(q, k, v, q_start=s - t, window=window, scale=0.4)
    ref = attention_reference(q, k, v, q_start=s - t, window=window, scale=0.4)
    assert rel_err(out, ref) <= 1e-6


def test_cache_bytes_measured():
    for dtype, es in ((torch.float32, 4), (torch.bfloat16, 2)):
        m = small("mla").to(dtype)
        L = 16
        cache = m.new_cache(1, L)
        with torch.no_grad():
            m(torch.randint(0, 97, (1, L)), cache=cache)
        per_layer = cache.nbytes() / L / m.config.n_layers
        assert per_layer == (24 + 8) * es
        for kv in (4, 2, 1):
            g = small("mha", n_kv_heads=kv).to(dtype)
            cache = g.new_cache(1, L)
            with torch.no_grad():
                g(torch.randint(0, 97, (1, L)), cache=cache)
            assert cache.nbytes() / L / g.config.n_layers == 2 * kv * 16 * es


def test_cache_seen_and_reset():
    m = small("mha,mla", n_layers=2)
    cache = m.new_cache(2, 10)
    assert isinstance(cache, ModelCache) and cache.seen == 0
    with torch.no_grad():
        m(torch.randint(0, 97, (2, 6)), cache=cache)
    assert cache.seen == 6 and all(c.seen == 6 for c in cache)
    nb = cache.nbytes()
    cache.reset()
    assert cache.seen == 0 and cache.nbytes() == nb
    with pytest.raises(InputError, match="do not fit"):
        m(torch.randint(0, 97, (2, 11)), cache=cache)
    assert cache.seen == 0  # refused before any work


def test_greedy_generate_equals_repeated_forward():
    m = small("mha,mla", n_layers=3, n_kv_heads=2)
    prompt = torch.randint(0, 97, (2, 5))
    out = m.generate(prompt, max_new_tokens=9)
    ids = prompt
    with torch.no_grad():
        for _ in range(9):
            ids = torch.cat([ids, m(ids)[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(out, ids)


def test_sampling_options_and_eos():
    m = small("mha")
    prompt = torch.randint(0, 97, (3, 4))
    g = torch.Generator().manual_seed(0)
    out = m.generate(prompt, 6, temperature=0.8, top_k=5, top_p=0.9, generator=g)
    assert out.shape == (3, 10) and out.max() < 97
    with torch.no_grad():
        first = m(prompt)[:, -1].argmax(-1)
    eos = int(first[0])
    out = m.generate(prompt, 6, eos_token_id=eos)
    assert (out[0, 4:] == eos).all()


def test_yarn_factor_one_is_plain_rope_and_ramp():
    from attnlab.positions import RotaryEmbedding, rope_inv_freq, yarn_inv_freq, yarn_temperature

    d, theta, L = 64, 10000.0, 2048
    plain = rope_inv_freq(d, theta)
    assert torch.equal(yarn_inv_freq(d, theta, 1.0, L, 32, 1), plain)
    assert RotaryEmbedding(d, theta, 1.0, L).attention_scale == 1.0
    s = 8.0
    got = yarn_inv_freq(d, theta, s, L, 32.0, 1.0)
    for i in range(d // 2):
        th = theta ** (-2 * i / d)
        r = L / (2 * math.pi / th)
        gamma = 0.0 if r < 1 else 1.0 if r > 32 else (r - 1) / 31
        assert got[i].item() == pytest.approx((1 - gamma) * th / s + gamma * th, rel=1e-12)
    # high frequencies kept, lowest interpolated by s
    assert got[0].item() == pytest.approx(plain[0].item())
    assert got[-1].item() == pytest.approx(plain[-1].item() / s)
    assert yarn_temperature(s) == pytest.approx(0.1 * math.log(s) + 1)
    assert RotaryEmbedding(d, theta, s, L).attention_scale == pytest.approx((0.1 * math.log(s) + 1) ** 2)


def test_registry_and_public_api():
    assert {"mha", "mla"} <= set(mixer_names())
    m = small("mla")
    assert m(torch.randint(0, 97, (2, 8))).shape == (2, 8, 97)
    assert m.num_parameters() > m.num_parameters(exclude_embeddings=True)
    tied = small("mha", tie_embeddings=True)
    assert tied.head.weight is tied.embed.weight


@pytest.mark.parametrize("kw,field", [
    (dict(dim=65), "n_heads"),
    (dict(n_kv_heads=3), "n_kv_heads"),
    (dict(mixer="nope"), "mixer"),
    (dict(yarn_factor=0.5), "yarn_factor"),
    (dict(head_dim=7), "head_dim"),
    (dict(mixer="mla", mixer_options={"mla": {"kv_lora_rank": 65}}), "mixer_options.mla.kv_lora_rank"),
    (dict(mixer="mla", mixer_options={"mla": {"q_lora_rank": 100}}), "mixer_options.mla.q_lora_rank"),
    (dict(mixer="mla", mixer_options={"mla": {"qk_rope_head_dim": 7}}), "mixer_options.mla.qk_rope_head_dim"),
    (dict(mixer="mla", mixer_options={"mla": {"bogus": 1}}), "mixer_options.mla.bogus"),
    (dict(mixer_options={"mha": {"sliding_window": 0}}), "mixer_options.mha.sliding_window"),
    (dict(vocab_size=0), "vocab_size"),
])
def test_bad_config_names_field(kw, field, monkeypatch):
    allocated = []
    monkeypatch.setattr(torch.nn.Linear, "__init__", lambda *a, **k: allocated.append(1))
    base = dict(vocab_size=97, dim=64, n_layers=2, n_heads=4)
    base.update(kw)
    with pytest.raises(ConfigError) as e:
        build_model(ModelConfig(**base))
    assert e.value.field == field
    assert not allocated


def test_bad_input():
    m = small("mha")
    with pytest.raises(InputError, match="int64"):
        m(torch.randn(1, 4))
    with pytest.raises(InputError, match="tokens >= 1"):
        m(torch.zeros(1, 0, dtype=torch.long))
    with pytest.raises(InputError, match="max_seq_len"):
        m(torch.zeros(1, 65, dtype=torch.long))
    with pytest.raises(InputError, match="max_len"):
        m.new_cache(1, 1000)
    with pytest.raises(ConfigError, match="cache kind"):
        m.new_cache(1, 8, kind="nonexistent")


def test_cli_info(capsys):
    from attnlab.cli.main import main

    assert main(["info", "--model.mixer", "mha,mla", "--model.n_kv_heads", "2"]) == 0
    out = capsys.readouterr().out
    assert "mla" in out and "LatentCache" in out
    assert main(["info", "--model.n_heads", "5"]) == 2


def test_cache_reuse_after_reset_matches_fresh():
    m = small("mha,mla", n_layers=2)
    ids = torch.randint(0, 97, (2, 13))
    cache = m.new_cache(2, 13)
    with torch.no_grad():
        m(torch.randint(0, 97, (2, 13)), cache=cache)  # stale values left in the buffers
        cache.reset()
        a = torch.cat([m(ids[:, :6], cache=cache)] + [m(ids[:, i:i + 1], cache=cache) for i in range(6, 13)], 1)
    assert rel_err(a, m(ids).detach()) <= 1e-5
