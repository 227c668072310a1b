"""The latent family's fused training kernel (ops/diff_attention/latent.py) against its plain
PyTorch reference: forward and the gradients of every input (q_all, kvu, the rope key, lam), the
three noise-rope modes, one and per-head noise heads, odd lengths and widths. CPU: the Triton
interpreter in fp32/fp16; GPU (marked): bf16, no worse than the two-SDPA path."""

import pytest
import torch

pytest.importorskip("triton")

from attnlab.ops.diff_attention import LatentGeometry, latent_diff_attention, latent_diff_reference  # noqa: E402
from attnlab.ops.diff_attention.latent_reference import _views  # noqa: E402
from attnlab.ops.diff_attention.reference import diff_attention_sdpa  # noqa: E402
from attnlab.ops.rope import apply_rope  # noqa: E402
from attnlab.positions import RotaryEmbedding  # noqa: E402
from attnlab.testing import rel_err  # noqa: E402

DEV = "cuda" if torch.cuda.is_available() else "cpu"

# heads, noise heads, dn, dr, dv, dn2, rope2, scale1, scale2
GEOMS = {
    "diff-mla": LatentGeometry(3, 3, 12, 8, 20, 12, 1, 0.3, 0.3),
    "cmd-mla": LatentGeometry(3, 1, 16, 8, 16, 24, 0, 0.25, 0.2),
    "cmd-mla-noise-rope": LatentGeometry(2, 1, 16, 8, 16, 10, 2, 0.25, 0.2),
    "one-head": LatentGeometry(1, 1, 16, 4, 8, 16, 1, 0.25, 0.25),
}


def _inputs(g, b, t, dtype):
    mk = lambda *s: torch.randn(*s, device=DEV, dtype=dtype, requires_grad=True)  # noqa: E731
    lam = (0.2 + torch.rand(g.heads, device=DEV)).requires_grad_()
    cos, sin = RotaryEmbedding(g.dr).to(DEV).cos_sin(0, t)
    return [mk(b, t, g.q_width), mk(b, t, g.kv_width), mk(b, t, g.dr), lam], cos, sin


def _errors(g, b, t, dtype):
    ins, cos, sin = _inputs(g, b, t, dtype)
    out = latent_diff_attention(*ins, cos, sin, g)
    ref = latent_diff_reference(*[x.double() for x in ins], cos.double(), sin.double(), g)
    assert out.shape == (b, t, g.heads, g.dv) and out.dtype == dtype
    gr = torch.randn_like(ref)
    got = torch.autograd.grad(out, ins, gr.to(dtype))
    want = torch.autograd.grad(ref, ins, gr)
    return [rel_err(out, ref)] + [rel_err(x, y) for x, y in zip(got, want)], (ins, cos, sin, gr, ref, want)


@pytest.mark.skipif(DEV == "cuda", reason="fp32 tl.dot is TF32 on the GPU")
@pytest.mark.parametrize("geom", list(GEOMS))
def test_latent_kernel_fp32(geom):
    errs, _ = _errors(GEOMS[geom], 2, 21, torch.float32)
    assert max(errs) <= 1e-5, errs


@pytest.mark.skipif(DEV == "cuda", reason="the interpreter test; the GPU runs bf16 below")
@pytest.mark.parametrize("geom", ["diff-mla", "cmd-mla-noise-rope"])
def test_latent_kernel_fp16(geom):
    errs, _ = _errors(GEOMS[geom], 1, 19, torch.float16)
    assert max(errs) <= 5e-3, errs


def test_latent_kernel_bad_widths():
    g = GEOMS["diff-mla"]
    ins, cos, sin = _inputs(g, 1, 5, torch.float32)
    with pytest.raises(ValueError, match="widths do not match"):
        latent_diff_attention(ins[0][..., 1:], *ins[1:], cos, sin, g)


def _sdpa_path(q_all, kvu, kr_pre, lam, cos, sin, g):
    """The same function through PyTorch's own ops in the inputs' dtype: RoPE, concatenations and
    two SDPA calls (what the mixers run with impl="sdpa")."""
    q1, qr_pre, q2, qr2_pre, k1, v, k2 = _views(q_all, kvu, g)
    b, t, h = q_all.shape[0], q_all.shape[1], g.heads
    qr, kr = apply_rope(qr_pre, cos, sin), apply_rope(kr_pre.unsqueeze(1), cos, sin)
    q1f, k1f = torch.cat([q1, qr], -1), torch.cat([k1, kr.expand(b, h, t, g.dr)], -1)
    if g.rope2 == 0:
        q2f, k2f = q2, k2
    else:
        q2f = torch.cat([q2, qr if g.rope2 == 1 else apply_rope(qr2_pre, cos, sin)], -1)
        k2f = torch.cat([k2, kr.expand(b, k2.shape[1], t, g.dr)], -1)
    return diff_attention_sdpa(q1f, k1f, q2f, k2f, v, lam, g.scale1, g.scale2).transpose(1, 2)


GPU_GEOMS = {  # the shakespeare-384 widths (dn 64, dr 32, dv 64, 6 heads) and wider ones
    "diff-mla-384": (LatentGeometry(6, 6, 64, 32, 64, 64, 1, 96**-0.5, 96**-0.5), 4, 1023),
    "cmd-mla-384": (LatentGeometry(6, 1, 64, 32, 64, 64, 0, 96**-0.5, 64**-0.5), 4, 1000),
    "cmd-mla-rope-wide": (LatentGeometry(8, 1, 128, 64, 128, 96, 2, 192**-0.5, 160**-0.5), 1, 777),
}


@pytest.mark.gpu
@pytest.mark.parametrize("geom", list(GPU_GEOMS))
def test_latent_kernel_bf16_gpu(geom):
    """bf16: the kernel's error vs the float64 reference is small, or no worse than twice that of
    the two-SDPA path on the same inputs."""
    g, b, t = GPU_GEOMS[geom]
    errs, (ins, cos, sin, gr, ref, want) = _errors(g, b, t, torch.bfloat16)
    out = _sdpa_path(*ins, cos, sin, g)
    got = torch.autograd.grad(out, ins, gr.to(torch.bfloat16))
    sdpa = [rel_err(out, ref)] + [rel_err(x, y) for x, y in zip(got, want)]
    for name, e, e_sdpa in zip(("out", "q_all", "kvu", "k_rope", "lam"), errs, sdpa):
        assert e <= max(2e-2, 2 * e_sdpa), (name, e, e_sdpa)


@pytest.mark.skipif(DEV == "cuda", reason="interpreter block shapes")
@pytest.mark.parametrize("blocks", [(16, 32), (32, 16)])
def test_latent_kernel_block_shapes(blocks, monkeypatch):
    """Query and key blocks of different sizes (the masked/unmasked loop split of every kernel)."""
    from attnlab.ops.diff_attention import latent as K

    bm, bn = blocks
    monkeypatch.setattr(K, "INTERPRET_CONFIGS", {k: (bm, bn, 1, 1) for k in ("fwd", "bwd_kv", "bwd_q")})
    errs, _ = _errors(GEOMS["diff-mla"], 1, 45, torch.float32)
    assert max(errs) <= 1e-5, errs
    errs, _ = _errors(GEOMS["cmd-mla-noise-rope"], 1, 37, torch.float32)
    assert max(errs) <= 1e-5, errs


def test_auto_picks_the_fused_latent_kernel_by_width():
    from types import SimpleNamespace

    from attnlab.ops.diff_attention import use_fused_latent

    cuda, cpu = SimpleNamespace(is_cuda=True), SimpleNamespace(is_cuda=False)
    narrow = LatentGeometry(6, 6, 64, 32, 64, 64, 1, 0.1, 0.1)
    wide = LatentGeometry(16, 1, 128, 64, 128, 128, 0, 0.1, 0.1)
    assert use_fused_latent("auto", cuda, narrow) and not use_fused_latent("auto", cuda, wide)
    assert not use_fused_latent("auto", cpu, narrow) and not use_fused_latent("sdpa", cuda, narrow)
    assert use_fused_latent("triton", cpu, wide)


@pytest.mark.skipif(DEV == "cuda", reason="fp32 tl.dot is TF32 on the GPU")
@pytest.mark.parametrize("mixer,opts", [
    ("cmd-mla", {"noise_rope": True, "noise_head_dim": 12, "lambda_scale": True}),
    ("diff-mla", {"q_lora_rank": 0, "lambda_mode": "head"}),
])
def test_mixer_fused_latent_equals_sdpa(mixer, opts):
    """The mixers' fused training path (every parameter's gradient) equals their SDPA path."""
    from attnlab import ModelConfig, build_model

    lat = {"kv_lora_rank": 16, "q_lora_rank": 24, "qk_rope_head_dim": 8, "qk_nope_head_dim": 8, "v_head_dim": 16}
    cfg = ModelConfig(vocab_size=50, dim=36, n_layers=1, n_heads=3, mixer=mixer, max_seq_len=32,
                      mixer_options={mixer: {**lat, **opts}})
    m = build_model(cfg).blocks[0].mixer
    with torch.no_grad():
        for n, p in m.named_parameters():
            if ".lam." in n or n.startswith("lam.") or n.endswith("head_norm"):
                p.add_(0.3 * torch.randn_like(p))
    x = torch.randn(2, 17, 36, requires_grad=True)
    res = []
    for impl in ("sdpa", "triton"):
        m.opts.impl = impl
        y = m(x)
        res.append((y, torch.autograd.grad(y.square().sum(), [x] + list(m.parameters()))))
    (ya, ga), (yb, gb) = res
    assert rel_err(yb, ya) <= 1e-5
    for (name, _), a, b in zip([("x", None)] + list(m.named_parameters()), ga, gb):
        assert rel_err(b, a) <= 1e-4, name
