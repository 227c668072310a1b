"""Spectral KV cache: exactness at full rank, truncation/quantization behaviour, compressed-space
attention vs the reconstructed cache, attnlab models, the Triton decode kernel (interpreter on
CPU), and stock Hugging Face models."""

import pytest
import torch

from attnlab import ConfigError, InputError, ModelConfig, build_model
from attnlab.caches.spectral import SpectralCache, cache_stats
from attnlab.caches.base import held_bytes
from attnlab.ops.attention import attention_reference
from attnlab.ops.spectral import HAS_TRITON, spectral_attention, spectral_decode, truncated_svd
from attnlab.testing import decode_vs_forward, rel_err


@pytest.fixture(autouse=True)
def _one_thread():
    # tiny matmuls: OpenMP threads only add contention on shared 2-core CI machines
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def structured_kv(b, h, t, d, decay=0.5, dtype=torch.float32):
    """Keys/values with a decaying spectrum over time (like trained models'), plus noise."""
    r = min(t, d)
    basis = torch.linalg.qr(torch.randn(b, h, d, d)).Q[..., :r].transpose(-1, -2)  # [b,h,r,d]
    coef = torch.randn(b, h, t, r) * (torch.arange(1, r + 1).float() ** -decay * 3)
    return (coef @ basis).to(dtype)


def make_cache(b, t, hk, d, **kw):
    kw.setdefault("dtype", torch.float32)
    return SpectralCache(b, t, hk, d, **kw)


# -- exactness and truncation ---------------------------------------------------------------
@pytest.mark.parametrize("t,hot_window", [(15, 0), (16, 0), (17, 0), (70, 0), (70, 5)])
def test_full_rank_unquantized_is_exact(t, hot_window):
    b, hq, hk, d = 2, 6, 2, 16
    q, k, v = torch.randn(b, hq, t, d), torch.randn(b, hk, t, d), torch.randn(b, hk, t, d)
    ref = attention_reference(q, k, v, scale=0.3)
    cache = make_cache(b, t, hk, d, key_rank=16, value_rank=16, block_size=16, quantize=False,
                       hot_window=hot_window)
    out = cache.attend(q, k, v, scale=0.3)  # one prefill across block boundaries
    assert rel_err(out, ref) <= 1e-5
    assert cache.seen == t and cache.n_blocks == max(0, t - hot_window) // 16
    cache.reset()  # token by token
    steps = [cache.attend(q[:, :, i:i + 1], k[:, :, i:i + 1], v[:, :, i:i + 1], scale=0.3) for i in range(t)]
    assert rel_err(torch.cat(steps, 2), ref) <= 1e-5


def test_error_decreases_with_rank():
    b, hq, hk, d, t = 1, 4, 2, 32, 96
    k, v = structured_kv(b, hk, t, d), structured_kv(b, hk, t, d)
    q = torch.randn(b, hq, 1, d)
    kf, vf = torch.cat([k, torch.randn(b, hk, 1, d)], 2), torch.cat([v, torch.randn(b, hk, 1, d)], 2)
    ref = attention_reference(q, kf, vf, q_start=t)
    errs, recon = [], []
    for r in (1, 2, 4, 8, 16, 32):
        c = make_cache(b, t + 1, hk, d, key_rank=r, value_rank=r, block_size=32, quantize=False)
        c.append(k, v)
        out = c.attend(q, kf[:, :, t:], vf[:, :, t:])
        errs.append(rel_err(out, ref))
        recon.append(rel_err(c.reconstruct()[0], kf))
    assert all(a > b_ for a, b_ in zip(errs, errs[1:])), errs
    assert all(a > b_ for a, b_ in zip(recon, recon[1:])), recon
    assert errs[-1] < 1e-5
    # int8 coefficients: error stays at the quantization floor, small
    c = make_cache(b, t + 1, hk, d, key_rank=32, value_rank=32, block_size=32)
    c.append(k, v)
    assert rel_err(c.attend(q, kf[:, :, t:], vf[:, :, t:]), ref) < 2e-2


@pytest.mark.parametrize("svd", ["exact", "randomized"])
@pytest.mark.parametrize("quantize", [True, False])
def test_compressed_space_equals_reconstructed(svd, quantize):
    b, hq, hk, d, t = 2, 6, 2, 24, 83
    k, v = structured_kv(b, hk, t, d), structured_kv(b, hk, t, d)
    c = make_cache(b, t + 12, hk, d, key_rank=5, value_rank=7, block_size=16, hot_window=3,
                   quantize=quantize, svd=svd)
    c.append(k, v)
    kr, vr = c.reconstruct()
    assert kr.shape == (b, hk, t, d)
    # a decode step and a 4-token chunk (no block boundary inside)
    for n in (1, 4):
        q, kn, vn = torch.randn(b, hq, n, d), torch.randn(b, hk, n, d), torch.randn(b, hk, n, d)
        blocks_before = c.n_blocks
        out = c.attend(q, kn, vn, scale=0.25)
        assert c.n_blocks == blocks_before
        ref = attention_reference(q, torch.cat([kr, kn], 2), torch.cat([vr, vn], 2), q_start=kr.shape[2], scale=0.25)
        assert rel_err(out, ref) <= 1e-5
        kr, vr = c.reconstruct()


def test_randomized_svd_close_to_exact():
    x = structured_kv(1, 4, 64, 32, decay=1.0)[0]
    ce, be = truncated_svd(x, 8, "exact")
    cr, br = truncated_svd(x, 8, "randomized", generator=torch.Generator().manual_seed(0))
    e_exact, e_rand = rel_err(ce @ be, x), rel_err(cr @ br, x)
    assert e_rand <= e_exact * 1.05 + 1e-6


def test_windowed_attention_and_batch():
    b, hq, hk, d, t = 3, 4, 4, 16, 60
    q, k, v = torch.randn(b, hq, t, d), torch.randn(b, hk, t, d), torch.randn(b, hk, t, d)
    ref = attention_reference(q, k, v, window=21)
    c = make_cache(b, t, hk, d, key_rank=16, value_rank=16, block_size=16, quantize=False)
    assert rel_err(c.attend(q, k, v, window=21), ref) <= 1e-5


# -- attnlab models ---------------------------------------------------------------------------
def tiny_model(**kw):
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=64, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=128, **kw)
    return build_model(cfg).eval()


@pytest.mark.parametrize("prompt_len,chunk", [(37, 1), (16, 5), (5, 7)])
def test_decode_equals_forward_full_rank(prompt_len, chunk):
    model = tiny_model()
    ids = torch.randint(0, 64, (2, 59))
    err = decode_vs_forward(model, ids, prompt_len, chunk=chunk, kind="spectral", key_rank=16,
                            value_rank=16, block_size=16, quantize=False, hot_window=2)
    assert err <= 1e-5


def test_prefill_equals_decode_when_truncated():
    """Compression happens at the same points whatever the chunking: identical outputs."""
    model = tiny_model()
    ids = torch.randint(0, 64, (2, 50))
    opts = dict(kind="spectral", key_rank=[3, 6], value_rank=lambda i: 4 + i, block_size=16)
    with torch.no_grad():
        full = model(ids, cache=model.new_cache(2, 50, **opts))
        cache = model.new_cache(2, 50, **opts)
        steps = torch.cat([model(ids[:, i:i + 1], cache=cache) for i in range(50)], 1)
    assert rel_err(steps, full) <= 1e-5
    st = cache_stats(cache)
    assert st["key_ranks"] == [3, 6] and st["value_ranks"] == [4, 5]
    assert cache.nbytes() == sum(held_bytes(c.tensors()) for c in cache)


def test_sliding_window_model():
    model = tiny_model(mixer_options={"mha": {"sliding_window": 20}})
    ids = torch.randint(0, 64, (1, 50))
    err = decode_vs_forward(model, ids, 18, kind="spectral", key_rank=16, value_rank=16, block_size=16,
                            quantize=False)
    assert err <= 1e-5


def test_stats_and_compression():
    c = SpectralCache(2, 512, 2, 64, dtype=torch.bfloat16, key_rank=8, value_rank=16, block_size=128)
    c.append(torch.randn(2, 2, 300, 64, dtype=torch.bfloat16), torch.randn(2, 2, 300, 64, dtype=torch.bfloat16))
    s = c.stats()
    assert s["compressed_blocks"] == 2 and s["hot_tokens"] == 44 and s["seen"] == 300
    # int8 C [128, r] + fp32 scale per token + bf16 basis [r, 64], keys and values, vs 2*128*64 bf16
    per_head = (128 * 8 + 128 * 4 + 8 * 64 * 2) + (128 * 16 + 128 * 4 + 16 * 64 * 2)
    assert c.bytes_per_block() == 2 * 2 * per_head
    assert s["block_compression_ratio"] == pytest.approx(2 * 128 * 64 * 2 / per_head)
    assert s["compression_ratio"] > 2
    assert c.bk.dtype == torch.bfloat16 and c.ck.dtype == torch.int8
    assert c.nbytes() == held_bytes(c.tensors())


def test_unbounded_storage_grows():
    c = SpectralCache(1, None, 1, 16, key_rank=4, value_rank=4, block_size=16)
    k = torch.randn(1, 1, 200, 16)
    c.append(k, k)
    assert c.n_blocks == 12 and c.block_capacity >= 12 and c.seen == 200


@pytest.mark.parametrize("quantize", [True, False])
def test_value_layouts_agree(quantize):
    """value_layout "token" (C_V^T stored per block) and "rank" hold the same coefficients and give the same
    attention, through growth of unbounded storage, batch > 1 and a hot window; "token" stores cv transposed."""
    torch.manual_seed(3)
    k, v = structured_kv(2, 2, 150, 16), structured_kv(2, 2, 150, 16)
    q = torch.randn(2, 4, 1, 16)
    caches = [SpectralCache(2, None, 2, 16, key_rank=4, value_rank=6, block_size=16, hot_window=5, quantize=quantize,
                            value_layout=lay) for lay in ("token", "rank")]
    for c in caches:
        c.append(k[:, :, :149], v[:, :, :149])
    tok, rank = caches
    assert tok.cv.shape == rank.cv.shape and tok.cv.transpose(-1, -2).is_contiguous() and rank.cv.is_contiguous()
    assert tok.block_capacity >= 8 and torch.equal(tok.cv, rank.cv) and tok.nbytes() == rank.nbytes()
    o1, o2 = (c.attend(q, k[:, :, 149:], v[:, :, 149:]) for c in caches)
    assert rel_err(o1, o2) <= 1e-6


def test_bad_options():
    model = tiny_model()
    with pytest.raises(ConfigError, match="key_rank"):
        model.new_cache(1, 64, kind="spectral", key_rank=17, block_size=32)  # > head_dim 16
    with pytest.raises(ConfigError, match="value_rank"):
        SpectralCache(1, 64, 1, 64, value_rank=32, block_size=16)  # > block_size
    with pytest.raises(ConfigError, match="block_size.*kernel tile"):
        model.new_cache(1, 64, kind="spectral", key_rank=4, value_rank=4, block_size=24)
    with pytest.raises(ConfigError, match="key_rank"):
        model.new_cache(1, 64, kind="spectral", key_rank=[4], value_rank=4, block_size=16)  # no layer 1
    with pytest.raises(ConfigError, match="svd"):
        SpectralCache(1, 64, 1, 16, key_rank=4, value_rank=4, block_size=16, svd="qr")
    with pytest.raises(ConfigError, match="allowed: key_rank"):
        SpectralCache(1, 64, 1, 16, key_rank=4, value_rank=4, block_size=16, rank=3)
    with pytest.raises(ConfigError, match="value_layout.*'token', 'rank'"):
        SpectralCache(1, 64, 1, 16, key_rank=4, value_rank=4, block_size=16, value_layout="col")
    c = SpectralCache(1, 20, 1, 16, key_rank=4, value_rank=4, block_size=16)
    with pytest.raises(InputError):
        c.append(torch.randn(1, 1, 21, 16), torch.randn(1, 1, 21, 16))
    with pytest.raises(InputError):
        c.append(torch.randn(1, 2, 3, 16), torch.randn(1, 2, 3, 16))


# -- Triton decode kernel (interpreter on CPU) ------------------------------------------------
@pytest.mark.skipif(not HAS_TRITON, reason="triton not installed")
@pytest.mark.parametrize("dtype,quantize,shape,kw", [
    # v2 (default kernel)
    (torch.float32, False, dict(b=2, hq=4, hk=2, d=32, rk=32, rv=32, bs=32, t=70, hw=0), {}),
    (torch.float32, True, dict(b=1, hq=6, hk=2, d=24, rk=5, rv=7, bs=16, t=75, hw=9), {"fused_merge": False}),
    (torch.float16, True, dict(b=2, hq=4, hk=1, d=64, rk=16, rv=32, bs=32, t=100, hw=0), {}),
    (torch.float32, True, dict(b=2, hq=8, hk=2, d=32, rk=8, rv=16, bs=64, t=300, hw=20),
     {"split": 2, "warp_slices": 2, "slice_tile": 16}),
    (torch.float16, False, dict(b=1, hq=4, hk=1, d=32, rk=8, rv=16, bs=32, t=170, hw=0), {"fused_merge": False}),
    (torch.float16, True, dict(b=1, hq=2, hk=2, d=32, rk=8, rv=16, bs=64, t=170, hw=0),
     {"warp_slices": 4, "slice_tile": 16, "split": 1}),
    (torch.float16, True, dict(b=1, hq=4, hk=2, d=32, rk=8, rv=16, bs=64, t=150, hw=3),  # 2 steps per slice
     {"warp_slices": 2, "slice_tile": 16, "split": 1, "fused_merge": False}),
    (torch.float32, True, dict(b=1, hq=2, hk=1, d=16, rk=4, rv=8, bs=64, t=140, hw=0),  # 4 steps per slice
     {"warp_slices": 1, "slice_tile": 16, "split": 1}),
    (torch.float16, True, dict(b=2, hq=4, hk=2, d=32, rk=8, rv=16, bs=32, t=170, hw=0),  # 3 blocks per program
     {"split": 1, "blocks_per_program": 3, "warp_slices": 2, "slice_tile": 16}),
    # v3 (slices packed into the dot rows): padded slices (G = 3, 6; 1 slice), 2-4 slices per program,
    # odd block counts with blocks_per_program, fused merge, G = 1 and 8, fp32 / fp16, quantized or not
    (torch.float32, True, dict(b=1, hq=6, hk=2, d=24, rk=5, rv=7, bs=16, t=75, hw=9), {"impl": "v3"}),
    (torch.float32, False, dict(b=2, hq=4, hk=2, d=32, rk=32, rv=32, bs=32, t=70, hw=0), {"impl": "v3", "split": 2}),
    (torch.float16, True, dict(b=2, hq=8, hk=2, d=32, rk=8, rv=16, bs=64, t=330, hw=5),
     {"impl": "v3", "split": 2, "blocks_per_program": 3}),
    (torch.float32, True, dict(b=2, hq=8, hk=2, d=32, rk=8, rv=16, bs=64, t=330, hw=5),
     {"impl": "v3", "split": 2, "blocks_per_program": 2, "fused_merge": True}),
    (torch.float16, True, dict(b=2, hq=16, hk=2, d=32, rk=8, rv=16, bs=64, t=200, hw=5), {"impl": "v3", "split": 1}),
    (torch.float32, True, dict(b=1, hq=2, hk=2, d=16, rk=4, rv=8, bs=64, t=140, hw=0), {"impl": "v3", "split": 4}),
    (torch.float16, False, dict(b=1, hq=3, hk=1, d=32, rk=8, rv=16, bs=32, t=170, hw=0), {"impl": "v3"}),
    # v3: odd block counts per program, padded ranks / slices, fp32 / fp16, quantized or not, one stage; and the
    # one-level fused merge (merge_group >= the splits of a (b, h))
    (torch.float16, True, dict(b=2, hq=8, hk=2, d=32, rk=8, rv=16, bs=64, t=330, hw=5),
     {"impl": "v3", "split": 2, "blocks_per_program": 3, "num_stages": 1}),
    (torch.float32, True, dict(b=1, hq=6, hk=2, d=24, rk=5, rv=7, bs=16, t=75, hw=9),
     {"impl": "v3", "blocks_per_program": 2}),
    (torch.float32, False, dict(b=1, hq=4, hk=2, d=32, rk=16, rv=8, bs=32, t=130, hw=0),
     {"impl": "v3", "fused_merge": True, "merge_group": 64, "blocks_per_program": 4}),
    (torch.float16, True, dict(b=2, hq=8, hk=2, d=32, rk=8, rv=16, bs=64, t=330, hw=5),
     {"impl": "v3", "split": 2, "fused_merge": True, "merge_group": 64}),
    (torch.float16, True, dict(b=1, hq=4, hk=1, d=32, rk=8, rv=16, bs=64, t=140, hw=0),
     {"impl": "v3", "l2_prefetch": True}),
    # session 7: value coefficients stored token-major (the cache's value_layout="token"): v3 on the session-5
    # path (split 2, padded ranks, G = 3), whole-block programs (split 1, one stage), v2 and v1 (a rank-major
    # copy), fp32 / fp16, quantized or not
    (torch.float32, True, dict(b=1, hq=6, hk=2, d=24, rk=5, rv=7, bs=16, t=75, hw=9), {"impl": "v3", "_layout": "token"}),
    (torch.float16, True, dict(b=2, hq=8, hk=2, d=32, rk=8, rv=16, bs=64, t=330, hw=5),
     {"impl": "v3", "split": 2, "blocks_per_program": 3, "_layout": "token"}),
    (torch.float16, False, dict(b=1, hq=3, hk=1, d=32, rk=8, rv=16, bs=32, t=170, hw=0),
     {"impl": "v3", "split": 1, "_layout": "token"}),
    (torch.float32, True, dict(b=1, hq=4, hk=2, d=32, rk=8, rv=32, bs=64, t=330, hw=0),
     {"impl": "v3", "split": 1, "blocks_per_program": 2, "num_stages": 1, "_layout": "token"}),
    (torch.float16, True, dict(b=2, hq=4, hk=2, d=32, rk=8, rv=16, bs=32, t=170, hw=0),
     {"split": 1, "blocks_per_program": 3, "warp_slices": 2, "slice_tile": 16, "_layout": "token"}),
    (torch.float32, False, dict(b=2, hq=4, hk=2, d=32, rk=32, rv=24, bs=32, t=70, hw=0), {"_layout": "token"}),
    (torch.float16, True, dict(b=2, hq=4, hk=1, d=64, rk=16, rv=32, bs=32, t=100, hw=0), {"impl": "v1", "_layout": "token"}),
    # v1 (the session-2 kernel, kept as the baseline)
    (torch.float32, True, dict(b=1, hq=6, hk=2, d=24, rk=5, rv=7, bs=16, t=75, hw=9), {"impl": "v1", "fused_merge": True}),
    (torch.float16, True, dict(b=2, hq=4, hk=1, d=64, rk=16, rv=32, bs=32, t=100, hw=0), {"impl": "v1"}),
    (torch.float32, True, dict(b=2, hq=8, hk=2, d=32, rk=8, rv=16, bs=64, t=300, hw=20),
     {"impl": "v1", "block_tile": 16, "blocks_per_program": 2}),
    (torch.float16, False, dict(b=1, hq=4, hk=1, d=32, rk=8, rv=16, bs=32, t=170, hw=0),
     {"impl": "v1", "blocks_per_program": 3, "fused_merge": True}),
])
def test_kernel_matches_reference(dtype, quantize, shape, kw):
    s = shape
    kw = dict(kw)
    layout = kw.pop("_layout", "rank")
    k = structured_kv(s["b"], s["hk"], s["t"], s["d"], dtype=dtype)
    v = structured_kv(s["b"], s["hk"], s["t"], s["d"], dtype=dtype)
    c = make_cache(s["b"], s["t"] + 1, s["hk"], s["d"], dtype=dtype, key_rank=s["rk"], value_rank=s["rv"],
                   block_size=s["bs"], hot_window=s["hw"], quantize=quantize, value_layout=layout)
    assert c.cv.is_contiguous() == (layout == "rank")
    c.append(k, v)
    q = torch.randn(s["b"], s["hq"], 1, s["d"], dtype=dtype)
    kn, vn = torch.randn(s["b"], s["hk"], 1, s["d"], dtype=dtype), torch.randn(s["b"], s["hk"], 1, s["d"], dtype=dtype)
    c.append(kn, vn)
    assert c.n_blocks >= 2 and c.hot_len >= 1
    ref = spectral_attention(q.float(), c.blocks(), c.hot_k[:, :, :c.hot_len].float(),
                             c.hot_v[:, :, :c.hot_len].float(), c.seen - 1, 0.2)
    out = spectral_decode(q, c.ck, c.sk, c.bk, c.cv, c.sv, c.bv, c.n_blocks, c.hot_k, c.hot_v, c.hot_len, 0.2,
                          hot_per_split=32, **kw)
    assert out.dtype == dtype
    assert rel_err(out, ref) <= (1e-5 if dtype == torch.float32 else 2e-3)


def _small_decode_case():
    """(spectral_decode arguments, reference output) of a small GQA cache: 2 compressed blocks + hot part."""
    b, hq, hk, d, t = 1, 4, 2, 32, 150
    c = make_cache(b, t + 1, hk, d, key_rank=8, value_rank=16, block_size=64)
    c.append(torch.randn(b, hk, t + 1, d), torch.randn(b, hk, t + 1, d))
    q = torch.randn(b, hq, 1, d)
    ref = spectral_attention(q, c.blocks(), c.hot_k[:, :, :c.hot_len], c.hot_v[:, :, :c.hot_len], c.seen - 1, 0.3)
    args = (q, c.ck, c.sk, c.bk, c.cv, c.sv, c.bv, c.n_blocks, c.hot_k, c.hot_v, c.hot_len, 0.3)
    return args, ref


@pytest.mark.skipif(not HAS_TRITON, reason="triton not installed")
@pytest.mark.parametrize("merge_launch", [(16, 2), (8, 1)])
def test_merge_launch_variants(monkeypatch, merge_launch):
    """Session 7 round 2: the v2/v3 merge launch with other value-column chunks per program and warps
    (``kernel.MERGE_LAUNCH``) merges the partials the same."""
    from attnlab.ops.spectral import kernel as K

    monkeypatch.setattr(K, "MERGE_LAUNCH", merge_launch)
    monkeypatch.setattr(K, "_V2_PLANS", {})
    args, ref = _small_decode_case()
    out = spectral_decode(*args, impl="v3", fused_merge=False, hot_per_split=32)
    assert rel_err(out, ref) <= 1e-5


@pytest.mark.skipif(not HAS_TRITON, reason="triton not installed")
def test_kernel_falls_back_when_out_of_shared_memory(monkeypatch):
    """A launch configuration the GPU cannot fit (large ranks) falls back to smaller ones, and the
    choice is remembered (simulated: the interpreter never runs out of shared memory)."""
    from attnlab.ops.spectral import kernel as K

    real, tried = K._launch, []

    def launch(*args):
        bt, stages = args[-5], args[-2]
        tried.append((bt, stages))
        if bt > 16:
            raise K.OutOfResources(300000, 232448, "shared memory")
        return real(*args)

    monkeypatch.setattr(K, "_launch", launch)
    monkeypatch.setattr(K, "_FALLBACK", {})
    args, ref = _small_decode_case()
    out = spectral_decode(*args, impl="v1")
    assert rel_err(out, ref) <= 1e-5
    assert tried[-1][0] == 16 and len(tried) >= 2
    n = len(tried)
    out = spectral_decode(*args, impl="v1")  # remembered: straight to the configuration that fitted
    assert len(tried) == n + 1 and tried[-1][0] == 16
    assert rel_err(out, ref) <= 1e-5


@pytest.mark.skipif(not HAS_TRITON, reason="triton not installed")
def test_kernel_v2_falls_back_when_out_of_shared_memory(monkeypatch):
    from attnlab.ops.spectral import kernel as K

    real, tried = K._launch_v2, []

    def launch(*args):
        tw = args[-9]  # (..., split, slices, tile, warps, stages, fused, fast, group, blocks, maxnreg, pdl)
        tried.append(tw)
        if tw > 16:
            raise K.OutOfResources(300000, 232448, "shared memory")
        return real(*args)

    monkeypatch.setattr(K, "_launch_v2", launch)
    monkeypatch.setattr(K, "_FALLBACK", {})
    args, ref = _small_decode_case()
    out = spectral_decode(*args, warp_slices=1, slice_tile=64)
    assert rel_err(out, ref) <= 1e-5
    assert tried == [64, 32, 16]
    out = spectral_decode(*args, warp_slices=1, slice_tile=64)  # remembered
    assert tried == [64, 32, 16, 16]
    assert rel_err(out, ref) <= 1e-5


@pytest.mark.skipif(not HAS_TRITON, reason="triton not installed")
def test_kernel_v3_falls_back_when_out_of_shared_memory(monkeypatch):
    from attnlab.ops.spectral import kernel as K

    real, tried = K._launch_v3, []

    def launch(*args):
        sp, stages = args[-12], args[-8]  # (..., split, slices, tile, warps, stages, fused, fast, group, blocks, maxnreg,
        #                                    pdl, l2_prefetch)
        tried.append((sp, stages))
        if sp < 4:
            raise K.OutOfResources(300000, 232448, "shared memory")
        return real(*args)

    monkeypatch.setattr(K, "_launch_v3", launch)
    monkeypatch.setattr(K, "_FALLBACK", {})
    args, ref = _small_decode_case()
    out = spectral_decode(*args, impl="v3", split=1, num_stages=2)
    assert rel_err(out, ref) <= 1e-5
    assert tried == [(1, 2), (1, 1), (2, 1), (4, 1)]
    out = spectral_decode(*args, impl="v3", split=1, num_stages=2)  # remembered
    assert tried[-1] == (4, 1) and len(tried) == 5
    assert rel_err(out, ref) <= 1e-5


@pytest.mark.skipif(not HAS_TRITON, reason="triton not installed")
def test_launch_replay_patches_the_arguments(monkeypatch):
    """The replayed launch (a shape's second call onwards) passes the compiled launcher exactly the
    arguments Triton's JIT launch would get for that call (new tensors, hot_len, scale), checked
    on CPU with stand-ins for the kernels and launcher (the GPU test checks the real launcher)."""
    from attnlab.ops.spectral import kernel as K

    calls = []

    class Compiled:
        function, packed_metadata = "fn", "meta"

        def __init__(self, name):
            self.name = name

        def run(self, g0, g1, g2, stream, fn, meta, lm, enter, exit_, *args):
            calls.append(("replay", self.name, (g0, g1), args))

    class JIT:
        def __init__(self, name):
            self.name = name

        def __getitem__(self, grid):
            def launch(*args, **opts):
                calls.append(("jit", self.name, tuple(grid), args))
                return Compiled(self.name)
            return launch

    monkeypatch.setattr(K, "_spectral_v2", JIT("split"))
    monkeypatch.setattr(K, "_spectral_v3", JIT("split"))
    monkeypatch.setattr(K, "_merge_v2_kernel", JIT("merge"))
    monkeypatch.setattr(K, "_replay_ok", lambda dev: True)
    monkeypatch.setattr(K, "_current_stream", lambda dev: 7)
    monkeypatch.setattr(K, "_hooks_active", lambda: False)
    monkeypatch.setattr(K, "_FAST_LAUNCH", True)
    monkeypatch.setattr(K, "_V2_PLANS", {})
    b, hq, hk, d, t = 1, 4, 2, 32, 150
    caches = []
    for i in range(2):
        c = make_cache(b, t + 1 + i, hk, d, key_rank=8, value_rank=16, block_size=64, hot_window=8)
        c.append(torch.randn(b, hk, t + i, d), torch.randn(b, hk, t + i, d))
        caches.append(c)
    assert caches[0].n_blocks == caches[1].n_blocks and caches[0].hot_len != caches[1].hot_len

    def call(c, q, scale, fused, impl):
        return spectral_decode(q, c.ck, c.sk, c.bk, c.cv, c.sv, c.bv, c.n_blocks, c.hot_k, c.hot_v, c.hot_len, scale,
                               fused_merge=fused, impl=impl)

    for fused, impl in ((True, "v2"), (False, "v2"), (False, "v3")):
        calls.clear()
        call(caches[0], torch.randn(b, hq, 1, d), 0.3, fused, impl)
        q = torch.randn(b, hq, 1, d)
        out = call(caches[1], q, 0.4, fused, impl)
        assert [x[0] for x in calls] == ["jit"] * (1 if fused else 2) + ["replay"] * (1 if fused else 2)
        replayed = [x for x in calls if x[0] == "replay"]
        monkeypatch.setattr(K, "_V2_PLANS", {})  # the JIT launch of the same call, for comparison
        calls.clear()
        out2 = call(caches[1], q, 0.4, fused, impl)
        for (_, name, grid, args), (_, name2, grid2, args2) in zip(replayed, calls):
            assert name == name2 and grid == grid2 and len(args) == len(args2)
            for x, y in zip(args, args2):
                if isinstance(x, torch.Tensor):
                    same = x is y or (x.data_ptr() == y.data_ptr() and x.shape == y.shape) or (x is out and y is out2)
                    assert same
                else:
                    assert x == y


def test_auto_picks_the_kernel(monkeypatch):
    from attnlab.ops.spectral import kernel as K

    picked = []
    monkeypatch.setattr(K, "_spectral_decode_v1", lambda *a, **kw: picked.append("v1"))
    monkeypatch.setattr(K, "_launch_v2", lambda *a: picked.append("v2"))
    monkeypatch.setattr(K, "HAS_TRITON", True)
    q = torch.zeros(1, 2, 1, 16)
    z = torch.zeros(1, 1, 40, 32, 4)
    h = torch.zeros(1, 1, 32, 16)
    monkeypatch.setattr(K, "_launch_v3", lambda *a: picked.append("v3"))
    for n, kw, want in ((16, {}, "v2"), (17, {}, "v3"), (17, {"split": 2}, "v3"), (17, {"slice_tile": 16}, "v2"),
                        (3, {"block_tile": 16}, "v1"), (3, {"fused_merge": True}, "v2"), (40, {"impl": "v1"}, "v1"),
                        (3, {"impl": "v3"}, "v3")):
        spectral_decode(q, z, None, z, z, None, z, n, h, h, 1, **kw)
        assert picked[-1] == want, (n, kw)


def test_default_config_v3_session6():
    """The session-6 launch rules (benchmarks/RESULTS.md "Session 6"): B = 1 at 32K (one wave, <= 2 programs
    per SM) takes whole blocks per program, half as many blocks each, and the L2 prefetch; B = 8 keeps the
    session-5 launch, plus the L2 prefetch at ranks <= 16; fp32 and unmeasured shapes keep the old launch."""
    from attnlab.ops.spectral.kernel import default_config_v3 as cfg

    b1 = cfg(8, 64, 512, 132, 2, 16, 32, 128, 4)
    assert (b1["split"], b1["blocks_per_program"], b1["l2_prefetch"], b1["num_stages"]) == (1, 2, True, 2)
    b1 = cfg(8, 32, 512, 132, 2, 16, 32, 128, 4)  # B = 1 at 16K: 2-block programs, not measured: session-5 launch
    assert (b1["split"], b1["blocks_per_program"], b1["l2_prefetch"]) == (2, 2, False)
    for rk, rv, l2 in ((16, 16, True), (16, 32, False), (32, 32, False)):
        b8 = cfg(64, 64, 512, 132, 2, rk, rv, 128, 4)
        assert (b8["split"], b8["blocks_per_program"], b8["l2_prefetch"]) == (2, 4, l2)
    for args in ((8, 64, 512, 132, 4, 16, 32, 128, 4), (8, 64, 512, 132, 2, 64, 64, 128, 4),
                 (8, 64, 512, 132, 2, 16, 32, 128, 8), (8, 64, 512, 132, 2, 16, 32, 256, 4)):
        c = cfg(*args)
        assert not c["l2_prefetch"] and c["split"] == (4 if args[4] == 4 else 2)
    # session 7: token-major value coefficients at B = 8: 168 registers at ranks > 16; B = 1 and ranks 16 unchanged
    for rk, rv, l2, mr in ((16, 16, True, None), (16, 32, False, 168), (32, 32, False, 168)):
        b8 = cfg(64, 64, 512, 132, 2, rk, rv, 128, 4, True)
        assert (b8["split"], b8["blocks_per_program"], b8["l2_prefetch"], b8.get("maxnreg")) == (2, 4, l2, mr)
        assert cfg(64, 64, 512, 132, 2, rk, rv, 128, 4, False).get("maxnreg") is None
        b1 = cfg(8, 64, 512, 132, 2, rk, rv, 128, 4, True)
        assert (b1["split"], b1["blocks_per_program"], b1["l2_prefetch"], b1.get("maxnreg")) == (1, 2, True, None)


@pytest.mark.skipif(not HAS_TRITON, reason="triton not installed")
def test_pdl_falls_back_off_gpu():
    """pdl=True where programmatic dependent launch is impossible (CPU, the interpreter) launches
    ordinarily: same result as pdl=False."""
    from attnlab.ops.spectral import kernel as K

    assert not K._pdl_ok(torch.device("cpu"), True) and not K._pdl_ok(torch.device("cpu"), False)
    b, hq, hk, d, t = 1, 4, 2, 16, 40
    c = make_cache(b, t + 1, hk, d, key_rank=4, value_rank=8, block_size=16)
    c.append(torch.randn(b, hk, t, d), torch.randn(b, hk, t, d))
    q = torch.randn(b, hq, 1, d)
    outs = [spectral_decode(q, c.ck, c.sk, c.bk, c.cv, c.sv, c.bv, c.n_blocks, c.hot_k, c.hot_v, c.hot_len,
                            impl="v3", pdl=pdl) for pdl in (False, True)]
    assert torch.equal(outs[0], outs[1])


def test_kernel_options_are_checked():
    q = torch.zeros(1, 2, 1, 16)
    z = torch.zeros(1, 1, 1, 16, 4)
    with pytest.raises(ValueError, match="impl='v1'"):
        spectral_decode(q, z, None, z, z, None, z, 1, z[..., 0, :], z[..., 0, :], 0, block_tile=16, impl="v2")
    with pytest.raises(ValueError, match="impl must be"):
        spectral_decode(q, z, None, z, z, None, z, 1, z[..., 0, :], z[..., 0, :], 0, impl="v9")
    with pytest.raises(ValueError, match="l2_prefetch belongs"):
        spectral_decode(q, z, None, z, z, None, z, 1, z[..., 0, :], z[..., 0, :], 0, l2_prefetch=True, impl="v2")
    with pytest.raises(ValueError, match="impl='v2'"):
        spectral_decode(q, z, None, z, z, None, z, 1, z[..., 0, :], z[..., 0, :], 0, warp_slices=2, impl="v3")
    with pytest.raises(ValueError, match="impl='v2'"):
        spectral_decode(q, z, None, z, z, None, z, 1, z[..., 0, :], z[..., 0, :], 0, slice_tile=16, impl="v3")
    with pytest.raises(TypeError, match="unexpected"):
        spectral_decode(q, z, None, z, z, None, z, 1, z[..., 0, :], z[..., 0, :], 0, tile=16)


@pytest.mark.skipif(not HAS_TRITON, reason="triton not installed")
def test_cache_uses_kernel_backend():
    b, hq, hk, d, t = 1, 4, 2, 16, 40
    k, v = torch.randn(b, hk, t, d), torch.randn(b, hk, t, d)
    outs = []
    for backend in ("torch", "triton"):
        c = make_cache(b, t + 1, hk, d, key_rank=4, value_rank=8, block_size=16, backend=backend)
        assert c.use_kernel(torch.zeros(b, hq, 1, d), None) == (backend == "triton")
        c.append(k, v)
        torch.manual_seed(1)
        outs.append(c.attend(torch.randn(b, hq, 1, d), torch.randn(b, hk, 1, d), torch.randn(b, hk, 1, d)))
    assert rel_err(outs[1], outs[0]) <= 1e-5


_GPU_KW = [{}, {"fused_merge": False}, {"split": 2, "num_stages": 1}, {"split": 4, "slice_tile": 32},
           {"split": 1, "warp_slices": 8, "num_warps": 8, "blocks_per_program": 3, "num_stages": 2,
            "fused_merge": False},
           {"split": 1, "warp_slices": 4, "slice_tile": 32, "blocks_per_program": 2},  # 2 steps per slice
           {"maxnreg": 128}, {"fast_cvt": False},
           {"impl": "v3"}, {"impl": "v3", "fused_merge": True}, {"impl": "v3", "split": 1, "num_warps": 8},
           {"impl": "v3", "split": 4, "blocks_per_program": 3, "num_stages": 1}, {"impl": "v3", "maxnreg": 128},
           {"impl": "v3", "fast_cvt": False},
           {"pdl": True}, {"impl": "v3", "pdl": True}, {"impl": "v3", "pdl": True, "fused_merge": True},
           # session 6: L2 bulk prefetch, and the session-5 launch without it (the default turns it on for
           # one-wave grids like this one)
           {"impl": "v3", "l2_prefetch": True, "num_stages": 2},
           {"impl": "v3", "l2_prefetch": True, "num_stages": 1, "blocks_per_program": 3},
           {"impl": "v3", "l2_prefetch": True, "split": 1, "blocks_per_program": 2},
           {"impl": "v3", "l2_prefetch": False, "num_stages": 2},
           {"impl": "v1"}, {"impl": "v1", "fused_merge": True},
           {"impl": "v1", "blocks_per_program": 4, "block_tile": 128, "num_warps": 4, "num_stages": 2},
           {"impl": "v1", "value_proj": "merge"}]


def _gpu_cache(t, ranks, **cache_kw):
    """A bf16 spectral cache on the GPU (B = 2, 8 kv heads, head dim 128, blocks of 512) holding t
    structured tokens as one prefill plus one decode append."""
    dev = torch.device("cuda")
    b, hk, d = 2, 8, 128
    c = SpectralCache(b, t + 1, hk, d, device=dev, dtype=torch.bfloat16, key_rank=ranks[0], value_rank=ranks[1],
                      block_size=512, **cache_kw)
    c.append(structured_kv(b, hk, t, d).to(dev, torch.bfloat16), structured_kv(b, hk, t, d).to(dev, torch.bfloat16))
    c.append(torch.randn(b, hk, 1, d, device=dev, dtype=torch.bfloat16),
             torch.randn(b, hk, 1, d, device=dev, dtype=torch.bfloat16))
    return c


def _gpu_decode_matches_reference(c, kw, hq=32):
    """The kernel (launch options kw) against the PyTorch reference over the same compressed blocks,
    fresh queries each call (the fused merge's counters and scratch are reused between calls)."""
    b, d = c.hot_k.shape[0], c.hot_k.shape[-1]
    for _ in range(3):
        q = torch.randn(b, hq, 1, d, device=c.hot_k.device, dtype=torch.bfloat16)
        ref = spectral_attention(q.float(), c.blocks(), c.hot_k[:, :, :c.hot_len].float(),
                                 c.hot_v[:, :, :c.hot_len].float(), c.seen - 1, d**-0.5)
        out = spectral_decode(q, c.ck, c.sk, c.bk, c.cv, c.sv, c.bv, c.n_blocks, c.hot_k, c.hot_v, c.hot_len,
                              d**-0.5, **kw)
        assert torch.isfinite(out).all()
        assert rel_err(out, ref) <= 1e-2


@pytest.mark.gpu
@pytest.mark.parametrize("kw,ranks", [(kw, (16, 32)) for kw in _GPU_KW] + [({}, (32, 32)), ({"impl": "v3"}, (32, 32)),
                                                                          ({"impl": "v3"}, (16, 16)),
                                                                          ({"impl": "v3",
                                                                            "l2_prefetch": True}, (16, 16)),
                                                                          ({"impl": "v3",
                                                                            "l2_prefetch": True}, (32, 32))])
def test_kernel_bf16_gpu(kw, ranks):
    _gpu_decode_matches_reference(_gpu_cache(2100, ranks), kw)


# session 7: the value coefficients stored token-major (value_layout="token"): the launches the defaults pick at B = 1
# and 8 (32K: split 1 / 2 blocks + L2 prefetch; split 2 / 4 blocks with and without it, at 168 registers), 3 stages,
# the session-5 path, 4 programs per SM (split 2, 128 registers), v2 and v1 (a rank-major copy), at ranks 16/16, 16/32,
# 32/32
_GPU_TOKEN_KW = [{}, {"impl": "v3"},
                 {"impl": "v3", "split": 1, "blocks_per_program": 2, "l2_prefetch": True},
                 {"impl": "v3", "split": 1, "blocks_per_program": 2, "l2_prefetch": True, "num_stages": 3},
                 {"impl": "v3", "split": 2, "blocks_per_program": 4, "l2_prefetch": True, "maxnreg": 168},
                 {"impl": "v3", "split": 2, "blocks_per_program": 4, "l2_prefetch": False, "maxnreg": 168},
                 {"impl": "v3", "split": 2, "blocks_per_program": 2, "l2_prefetch": True, "maxnreg": 128},
                 {"impl": "v2"}, {"impl": "v1"}]


@pytest.mark.gpu
@pytest.mark.parametrize("ranks", [(16, 16), (16, 32), (32, 32)])
@pytest.mark.parametrize("kw", _GPU_TOKEN_KW)
def test_kernel_bf16_token_major_gpu(kw, ranks):
    c = _gpu_cache(9000, ranks, value_layout="token")
    assert not c.cv.is_contiguous() and c.cv.transpose(-1, -2).is_contiguous()
    _gpu_decode_matches_reference(c, kw)


@pytest.mark.gpu
@pytest.mark.parametrize("quantize", [True, False])
@pytest.mark.parametrize("value_proj", ["v2", "v3", "block", "merge"])
def test_kernel_fp32_gpu(quantize, value_proj):
    """fp32 caches on the GPU (IEEE dots; launch parameters that fit in shared memory)."""
    dev = torch.device("cuda")
    b, hq, hk, d, t = 2, 8, 2, 128, 1100
    k, v = structured_kv(b, hk, t, d).to(dev), structured_kv(b, hk, t, d).to(dev)
    c = SpectralCache(b, t + 1, hk, d, device=dev, dtype=torch.float32, key_rank=16, value_rank=32, block_size=256,
                      quantize=quantize)
    c.append(k, v)
    c.append(torch.randn(b, hk, 1, d, device=dev), torch.randn(b, hk, 1, d, device=dev))
    q = torch.randn(b, hq, 1, d, device=dev)
    ref = spectral_attention(q, c.blocks(), c.hot_k[:, :, :c.hot_len], c.hot_v[:, :, :c.hot_len], c.seen - 1, d**-0.5)
    kw = {"impl": value_proj} if value_proj in ("v2", "v3") else {"impl": "v1", "value_proj": value_proj}
    out = spectral_decode(q, c.ck, c.sk, c.bk, c.cv, c.sv, c.bv, c.n_blocks, c.hot_k, c.hot_v, c.hot_len, d**-0.5,
                          **kw)
    assert rel_err(out, ref) <= 1e-4


@pytest.mark.gpu
@pytest.mark.parametrize("impl", ["auto", "v3"])
@pytest.mark.parametrize("quantize", [True, False])
def test_kernel_full_rank_bf16_gpu(quantize, impl):
    """Ranks = head dim: the default launch needs more shared memory than an H100 has and must
    fall back to a smaller configuration."""
    dev = torch.device("cuda")
    b, hq, hk, d, t = 8, 32, 8, 128, 4200
    k = structured_kv(b, hk, t, d).to(dev, torch.bfloat16)
    v = structured_kv(b, hk, t, d).to(dev, torch.bfloat16)
    c = SpectralCache(b, t + 1, hk, d, device=dev, dtype=torch.bfloat16, key_rank=128, value_rank=128,
                      block_size=512, quantize=quantize)
    c.append(k, v)
    c.append(torch.randn(b, hk, 1, d, device=dev, dtype=torch.bfloat16), torch.randn(b, hk, 1, d, device=dev, dtype=torch.bfloat16))
    q = torch.randn(b, hq, 1, d, device=dev, dtype=torch.bfloat16)
    ref = spectral_attention(q.float(), c.blocks(), c.hot_k[:, :, :c.hot_len].float(),
                             c.hot_v[:, :, :c.hot_len].float(), c.seen - 1, d**-0.5)
    out = spectral_decode(q, c.ck, c.sk, c.bk, c.cv, c.sv, c.bv, c.n_blocks, c.hot_k, c.hot_v, c.hot_len, d**-0.5,
                          impl=impl)
    assert rel_err(out, ref) <= 1e-2


@pytest.mark.gpu
@pytest.mark.parametrize("impl", ["auto", "v3"])
def test_kernel_replay_and_cuda_graph_gpu(impl):
    """Replayed launches (second call of a shape onwards) take the new tensors' pointers: two
    caches of one shape, called alternately; and a CUDA-graph capture replays with new queries."""
    dev = torch.device("cuda")
    b, hq, hk, d, t = 1, 32, 8, 128, 1600
    caches = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        c = SpectralCache(b, t + 1, hk, d, device=dev, dtype=torch.bfloat16, key_rank=16, value_rank=16,
                          block_size=512)
        c.append(structured_kv(b, hk, t + 1, d).to(dev, torch.bfloat16),
                 structured_kv(b, hk, t + 1, d).to(dev, torch.bfloat16))
        caches.append(c)

    def call(c, q):
        return spectral_decode(q, c.ck, c.sk, c.bk, c.cv, c.sv, c.bv, c.n_blocks, c.hot_k, c.hot_v, c.hot_len,
                               d**-0.5, impl=impl)

    def ref(c, q):
        return spectral_attention(q.float(), c.blocks(), c.hot_k[:, :, :c.hot_len].float(),
                                  c.hot_v[:, :, :c.hot_len].float(), c.seen - 1, d**-0.5)

    from attnlab.ops.spectral import kernel as K

    n0 = K.LAUNCH_STATS["replayed"]
    for i in range(4):
        c = caches[i % 2]
        q = torch.randn(b, hq, 1, d, device=dev, dtype=torch.bfloat16)
        assert rel_err(call(c, q), ref(c, q)) <= 1e-2, i
    assert K.LAUNCH_STATS["replay_unavailable"] == 0
    assert K.LAUNCH_STATS["replayed"] >= n0 + 3  # every call after the first of its shape
    c = caches[0]
    q_static = torch.randn(b, hq, 1, d, device=dev, dtype=torch.bfloat16)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        call(c, q_static)
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        out_static = call(c, q_static)
    for _ in range(3):
        q_static.copy_(torch.randn_like(q_static))
        g.replay()
        torch.cuda.synchronize()
        assert rel_err(out_static, ref(c, q_static)) <= 1e-2


@pytest.mark.gpu
@pytest.mark.parametrize("impl,extra", [("v2", {}), ("v3", {}),
                                        ("v3", {"l2_prefetch": True, "num_stages": 2}),
                                        ("v3", {"_layout": "token"}), ("v2", {"_layout": "token"}),
                                        ("v3", {"l2_prefetch": True, "split": 1,
                                                "blocks_per_program": 2, "_layout": "token"})])
def test_kernel_pdl_chain_gpu(impl, extra):
    """Programmatic dependent launch: each call's query is the previous call's output, so a split
    kernel that read q before the previous merge finished (or a merge that read partials before
    its split kernel finished) would differ from the ordinary launches. Eager (JIT then replayed)
    and in one CUDA graph of 4 chained calls. The session-6 L2 prefetch (every block, before the PDL wait)
    reads only the cache there, never q. Both value-coefficient layouts."""
    dev = torch.device("cuda")
    b, hq, hk, d, t = 1, 32, 8, 128, 9000
    torch.manual_seed(0)
    extra = dict(extra)
    c = SpectralCache(b, t + 1, hk, d, device=dev, dtype=torch.bfloat16, key_rank=16, value_rank=32,
                      block_size=512, value_layout=extra.pop("_layout", "rank"))
    c.append(structured_kv(b, hk, t + 1, d).to(dev, torch.bfloat16) * 4,
             structured_kv(b, hk, t + 1, d).to(dev, torch.bfloat16) * 4)

    def chain(q, pdl, n=4):
        outs = []
        for _ in range(n):
            q = spectral_decode(q, c.ck, c.sk, c.bk, c.cv, c.sv, c.bv, c.n_blocks, c.hot_k, c.hot_v, c.hot_len,
                                d**-0.5, impl=impl, pdl=pdl, **extra) * 8
            outs.append(q)
        return outs

    q0 = torch.randn(b, hq, 1, d, device=dev, dtype=torch.bfloat16)
    ref = chain(q0, False)
    for _ in range(3):  # JIT launch, then replayed launches
        got = chain(q0, True)
        for x, y in zip(got, ref):
            assert rel_err(x, y) <= 1e-3
    q_static = q0.clone()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        chain(q_static, True)
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        outs = chain(q_static, True)
    for _ in range(3):
        q_static.copy_(torch.randn_like(q_static))
        g.replay()
        torch.cuda.synchronize()
        for x, y in zip(outs, chain(q_static, False)):
            assert rel_err(x, y) <= 1e-3


@pytest.mark.gpu
def test_cache_decode_steps_gpu():
    """Token-by-token decode on the GPU through the cache (kernel) vs the PyTorch path, across a
    block boundary (a block is compressed mid-way)."""
    dev = torch.device("cuda")
    b, hq, hk, d, t = 3, 8, 2, 64, 1000
    k = structured_kv(b, hk, t + 40, d).to(dev, torch.bfloat16)
    v = structured_kv(b, hk, t + 40, d).to(dev, torch.bfloat16)
    caches = [SpectralCache(b, t + 40, hk, d, device=dev, dtype=torch.bfloat16, key_rank=16, value_rank=16,
                            block_size=256, hot_window=10, backend=be) for be in ("triton", "torch")]
    for c in caches:
        c.append(k[:, :, :t], v[:, :, :t])
    for i in range(t, t + 40):
        q = torch.randn(b, hq, 1, d, device=dev, dtype=torch.bfloat16)
        o1, o2 = (c.attend(q, k[:, :, i:i + 1], v[:, :, i:i + 1]) for c in caches)
        assert rel_err(o1, o2) <= 1e-2, i
    assert caches[0].n_blocks == caches[1].n_blocks == 4


# -- Hugging Face -----------------------------------------------------------------------------
transformers = pytest.importorskip("transformers")


def hf_model(kind="llama", **kw):
    from transformers import LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM, Qwen2Config, Qwen2ForCausalLM

    cls = {"llama": (LlamaConfig, LlamaForCausalLM), "mistral": (MistralConfig, MistralForCausalLM),
           "qwen2": (Qwen2Config, Qwen2ForCausalLM)}[kind]
    torch.manual_seed(0)
    cfg = cls[0](vocab_size=96, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=256, pad_token_id=0, **kw)
    return cls[1](cfg).eval()


@pytest.mark.parametrize("kind,kw", [
    ("llama", {}),
    ("mistral", {"sliding_window": 8}),  # window shorter than the text: windowed compressed attention
    ("qwen2", {"sliding_window": 8, "use_sliding_window": True, "max_window_layers": 1}),  # full + sliding layers
])
def test_hf_generate_full_rank_equals_dynamic_cache(kind, kw):
    from transformers import DynamicCache

    from attnlab.integrations.hf_spectral import SpectralHFCache, enable_spectral_attention

    model = hf_model(kind, **kw)
    ids = torch.randint(1, 96, (2, 21))
    mask = torch.ones_like(ids)
    ref = model.generate(ids, attention_mask=mask, max_new_tokens=14, do_sample=False,
                         past_key_values=DynamicCache(config=model.config))
    enable_spectral_attention(model)
    cache = SpectralHFCache(model, key_rank=16, value_rank=16, block_size=16, quantize=False)
    out = model.generate(ids, attention_mask=mask, max_new_tokens=14, do_sample=False, past_key_values=cache)
    assert torch.equal(out, ref)
    assert cache.get_seq_length() == 21 + 13  # the last token is produced, not fed back
    assert cache.spectral_caches()[0].n_blocks == 2


def test_hf_forward_compressed_and_errors():
    from transformers import GPT2Config

    from attnlab.integrations.hf_spectral import SpectralHFCache, enable_spectral_attention

    model = hf_model("llama")
    ids = torch.randint(1, 96, (2, 40))
    with torch.no_grad():
        exact = model(ids).logits
        with pytest.raises(RuntimeError, match="enable_spectral_attention"):
            c = SpectralHFCache(model, key_rank=4, value_rank=8, block_size=16)
            model(ids[:, :3], past_key_values=c)
            model(ids[:, 3:4], past_key_values=c)
        enable_spectral_attention(model)
        assert rel_err(model(ids).logits, exact) <= 1e-5  # "spectral" without the cache = SDPA
        c = SpectralHFCache(model, key_rank=[4, 8], value_rank=8, block_size=16)
        approx = model(ids, past_key_values=c).logits
        assert 0 < rel_err(approx, exact) < 0.5
        st = c.stats()
        assert st["key_ranks"] == [4, 8] and st["compression_ratio"] > 1
        assert c.get_seq_length() == 40
        pad = torch.ones_like(ids)
        pad[0, :3] = 0
        with pytest.raises(InputError, match="padded"):
            model(ids, attention_mask=pad, past_key_values=SpectralHFCache(model, key_rank=4, value_rank=8, block_size=16))
    with pytest.raises(ConfigError, match="llama, mistral, qwen2"):
        SpectralHFCache(GPT2Config())
    with pytest.raises(ConfigError, match="key_rank"):
        SpectralHFCache(model, key_rank=32, block_size=16)


def test_bulk_append_equals_incremental():
    b, hk, d, t = 2, 2, 16, 90
    k, v = torch.randn(b, hk, t, d), torch.randn(b, hk, t, d)
    bulk = make_cache(b, t, hk, d, key_rank=4, value_rank=6, block_size=16, hot_window=7)
    bulk.append(k, v)
    inc = make_cache(b, t, hk, d, key_rank=4, value_rank=6, block_size=16, hot_window=7)
    for i in range(0, t, 11):
        inc.append(k[:, :, i:i + 11], v[:, :, i:i + 11])
    assert (bulk.n_blocks, bulk.hot_len, bulk.seen) == (inc.n_blocks, inc.hot_len, inc.seen) == (5, 10, 90)
    for a, c in zip(bulk.reconstruct(), inc.reconstruct()):
        assert rel_err(a, c) <= 1e-6
