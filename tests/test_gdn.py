"""gdn / sdla mixers, hybrids with mla/mha, constant-size decode state, presets, benchmark smoke."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from attnlab import ConfigError, ModelConfig, build_model
from attnlab.caches.recurrent import RecurrentCache
from attnlab.layers.gdn import GatedDeltaNet
from attnlab.layers.sdla import SelectiveDifferentialLinearAttention
from attnlab.ops.gated_delta import gated_delta_rule
from attnlab.presets import preset
from attnlab.testing import decode_vs_forward, mixer_decode_vs_forward, rel_err

MLA = {"kv_lora_rank": 16, "q_lora_rank": 24, "qk_rope_head_dim": 8}


# many tiny ops: one intra-op thread (fixture in conftest.py)
pytestmark = pytest.mark.usefixtures("one_thread")



def small(mixer, n_layers=2, **opts):
    cfg = ModelConfig(vocab_size=97, dim=64, n_layers=n_layers, n_heads=4, max_seq_len=1100, mixer=mixer,
                      mixer_options={"mla": MLA, **opts})
    return build_model(cfg).eval()


VARIANTS = {
    "gdn": dict(mixer="gdn", gdn={"chunk_size": 8}),
    "gdn-noconv-naive": dict(mixer="gdn", gdn={"conv_size": 0, "impl": "naive"}),
    "gdn-latent-sharedqk": dict(mixer="gdn", gdn={"q_lora_rank": 16, "kv_lora_rank": 24, "o_lora_rank": 16,
                                                  "shared_qk": True, "chunk_size": 16, "conv_size": 3}),
    "gdn-heads": dict(mixer="gdn", gdn={"n_heads": 2, "head_dim": 12, "v_head_dim": 20, "output_gate": False}),
    "sdla": dict(mixer="sdla", sdla={"chunk_size": 8}),
    "sdla-latent": dict(mixer="sdla", sdla={"q_lora_rank": 16, "kv_lora_rank": 24, "conv_size": 0,
                                            "output_gate": False, "lambda_init": 0.5}),
    "hybrid-gdn-mla": dict(mixer="gdn,gdn,mla", n_layers=3, gdn={"chunk_size": 8}),
    "hybrid-all": dict(mixer="sdla,gdn,mha,mla", n_layers=4, gdn={"chunk_size": 4}, sdla={"chunk_size": 16}),
}


@pytest.mark.parametrize("name", list(VARIANTS))
@pytest.mark.parametrize("prompt_len,chunk", [(1, 1), (13, 3), (20, 9)])
def test_decode_equals_forward(name, prompt_len, chunk):
    kw = dict(VARIANTS[name])
    model = small(kw.pop("mixer"), kw.pop("n_layers", 2), **kw)
    ids = torch.randint(0, 97, (2, 37))
    assert decode_vs_forward(model, ids, prompt_len, chunk) <= 1e-5


def test_mixer_decode_and_cache_types():
    model = small("gdn,sdla,mla", n_layers=3)
    kinds = [type(c).__name__ for c in model.new_cache(1, 8)]
    assert kinds == ["RecurrentCache", "RecurrentCache", "LatentCache"]
    x = torch.randn(2, 29, 64)
    for m in (model.blocks[0].mixer, model.blocks[1].mixer):
        assert mixer_decode_vs_forward(m, x, 5) <= 1e-5
        assert mixer_decode_vs_forward(m, x, 3, chunk=7) <= 1e-5


@pytest.mark.parametrize("mixer", ["gdn", "sdla"])
def test_state_bytes_constant_over_1k_tokens(mixer):
    model = small(mixer)
    m = model.blocks[0].mixer
    cache = m.new_cache(1, None)  # unbounded
    assert cache.max_len is None
    nb, ptrs = cache.nbytes(), [t.data_ptr() for t in cache.tensors()]
    x = torch.randn(1, 1000, 64)
    with torch.no_grad():
        m(x[:, :10], cache)
        for i in range(10, 1000):
            m(x[:, i:i + 1], cache)
            assert cache.nbytes() == nb
    assert cache.seen == 1000 and [t.data_ptr() for t in cache.tensors()] == ptrs
    heads = m.n_heads * (2 if mixer == "sdla" else 1)
    assert nb == heads * m.dk * m.dv * 4 + m.conv_channels * (m.opts.conv_size - 1) * 4
    # a model cache over 1k decoded tokens: the same bytes after 1 and after 1000 tokens
    mc = model.new_cache(1, 1001)
    before = mc.nbytes()
    ids = torch.randint(0, 97, (1, 1001))
    with torch.no_grad():
        model(ids[:, :1], cache=mc)
        for i in range(1, 1001):
            model(ids[:, i:i + 1], cache=mc)
    assert mc.nbytes() == before and mc.seen == 1001


def test_cache_reset_and_bounds():
    m = small("gdn").blocks[0].mixer
    cache = m.new_cache(2, 6)
    x = torch.randn(2, 6, 64)
    with torch.no_grad():
        a = m(x, cache)
        assert cache.state.abs().sum() > 0
        with pytest.raises(Exception, match="do not fit"):
            m(x[:, :1], cache)
        cache.reset()
        assert cache.seen == 0 and cache.state.abs().sum() == 0
        b = m(x, cache)
    assert torch.equal(a, b)


def test_sdla_lambda_zero_is_one_stream():
    model = small("sdla", sdla={"chunk_size": 8})
    m = model.blocks[1].mixer
    with torch.no_grad():
        m.layer_scale.zero_()
    assert torch.all(m.lambdas() == 0)
    x = torch.randn(2, 21, 64)
    with torch.no_grad():
        y = m(x)
        q, k, v, g, beta = m.streams(x)
        h = m.n_heads
        one = gated_delta_rule(q[:, :h], k[:, :h], v[:, :h], g[:, :h], beta[:, :h], scale=m.dk ** -0.5,
                               impl="naive")[0]
        b, _, t, _ = one.shape
        ref = m.o_norm(one.transpose(1, 2)) * (1 - m.lambda_init)
        ref = ref * torch.nn.functional.silu(m.g_proj(x)).view(b, t, h, m.dv)
        ref = m.out_proj(ref.reshape(b, t, -1))
    assert rel_err(y, ref) <= 1e-5


def test_sdla_lambda_reparameterisation():
    m = small("sdla", sdla={"lambda_init": 0.3}).blocks[0].mixer
    lq1, lk1, lq2, lk2 = m.lambda_q1, m.lambda_k1, m.lambda_q2, m.lambda_k2
    with torch.no_grad():
        m.layer_scale.fill_(2.0)
    want = 2.0 * (torch.exp((lq1 * lk1).sum(-1)) - torch.exp((lq2 * lk2).sum(-1)) + 0.3)
    assert torch.allclose(m.lambdas(), want)
    assert small("sdla").blocks[1].mixer.lambda_init == pytest.approx(0.8 - 0.6 * torch.exp(torch.tensor(-0.3)).item())


def test_hybrid_generate_equals_repeated_forward():
    m = small("gdn,gdn,mla", n_layers=3, gdn={"chunk_size": 4})
    prompt = torch.randint(0, 97, (2, 6))
    out = m.generate(prompt, max_new_tokens=10)
    ids = prompt
    with torch.no_grad():
        for _ in range(10):
            ids = torch.cat([ids, m(ids)[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(out, ids)
    s = small("sdla,mha", n_layers=2).generate(prompt, 5, temperature=0.7, top_k=10)
    assert s.shape == (2, 11)


def test_training_backward_finite():
    m = small("gdn,sdla,mla", n_layers=3).train()
    ids = torch.randint(0, 97, (2, 70))
    loss = m.loss(ids[:, :-1], ids[:, 1:])
    loss.backward()
    grads = [p.grad for p in m.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    mix = m.blocks[0].mixer
    assert mix.gates.A_log.grad.abs().sum() > 0 and mix.gates.dt_bias.grad.abs().sum() > 0
    assert m.blocks[1].mixer.layer_scale.grad != 0


def test_gdn_fla_requested_on_cpu_warns_and_runs(monkeypatch):
    from attnlab.ops import gated_delta as gd

    monkeypatch.setattr(gd, "_warned", set())
    a = small("gdn", gdn={"impl": "fla", "chunk_size": 16})
    b = small("gdn", gdn={"chunk_size": 16})
    b.load_state_dict(a.state_dict())
    ids = torch.randint(0, 97, (1, 40))
    with pytest.warns(RuntimeWarning, match="portable chunked"):
        out = a(ids)
    assert rel_err(out, b(ids)) == 0.0


@pytest.mark.parametrize("mixer,opts,field", [
    ("gdn", {"n_heads": 5}, "mixer_options.gdn.head_dim"),
    ("gdn", {"head_dim": 0}, "mixer_options.gdn.head_dim"),
    ("gdn", {"chunk_size": 48}, "mixer_options.gdn.chunk_size"),
    ("gdn", {"chunk_size": 512}, "mixer_options.gdn.chunk_size"),
    ("gdn", {"conv_size": 1}, "mixer_options.gdn.conv_size"),
    ("gdn", {"impl": "cuda"}, "mixer_options.gdn.impl"),
    ("gdn", {"q_lora_rank": 65}, "mixer_options.gdn.q_lora_rank"),
    ("gdn", {"shared_qk": "yes"}, "mixer_options.gdn.shared_qk"),
    ("gdn", {"bogus": 1}, "mixer_options.gdn.bogus"),
    ("sdla", {"lambda_init": 1.5}, "mixer_options.sdla.lambda_init"),
    ("sdla", {"v_head_dim": -2}, "mixer_options.sdla.v_head_dim"),
    ("sdla", {"kv_lora_rank": 100}, "mixer_options.sdla.kv_lora_rank"),
    ("sdla", {"chunk_size": 6}, "mixer_options.sdla.chunk_size"),
])
def test_bad_config_names_field(mixer, opts, field, monkeypatch):
    allocated = []
    monkeypatch.setattr(torch.nn.Linear, "__init__", lambda *a, **k: allocated.append(1))
    with pytest.raises(ConfigError) as e:
        build_model(ModelConfig(vocab_size=97, dim=64, n_layers=2, n_heads=4, mixer=mixer,
                                mixer_options={mixer: opts}))
    assert e.value.field == field
    assert not allocated


def test_hybrid_presets():
    for size in ("small", "base", "large"):
        d = preset(f"hybrid-{size}")
        dense = preset(size)
        assert d["mixer"] == "gdn,gdn,mla" and d["dim"] == dense["dim"] and d["n_layers"] == dense["n_layers"]
        cfg = ModelConfig(**d)
        assert cfg.layer_mixers[:3] == ["gdn", "gdn", "mla"]
    cfg = ModelConfig(**preset("hybrid-small"))
    assert (cfg.n_layers, cfg.dim, cfg.n_heads) == (12, 1024, 16)
    with torch.device("meta"):
        from attnlab.model import LanguageModel

        m = LanguageModel(cfg)
    assert isinstance(m.blocks[0].mixer, GatedDeltaNet) and m.blocks[2].mixer_name == "mla"
    assert "gdn" in preset("hybrid-base")["mixer_options"] and "mla" in preset("hybrid-base")["mixer_options"]


def test_cli_info_reports_constant_state():
    from attnlab.cli.info import measure_cache

    cfg = ModelConfig(vocab_size=97, dim=64, n_layers=2, n_heads=4, mixer="gdn,sdla")
    for name, cls in (("gdn", GatedDeltaNet), ("sdla", SelectiveDifferentialLinearAttention)):
        r = measure_cache(cfg, name, 16)
        assert r["cache"] == RecurrentCache.__name__ and r["bytes/token (fp32)"] == 0 and r["fixed bytes (fp32)"] > 0


def test_bench_gdn_quick(tmp_path):
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, ATTNLAB_BENCH_DIR=str(tmp_path), PYTHONPATH=str(root), OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, str(root / "benchmarks" / "bench_gdn.py"), "--quick"],
                       cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert (tmp_path / "gdn_op.json").exists() and (tmp_path / "decode_memory.json").exists()
    assert (tmp_path / "decode_memory.png").exists()
