"""Fused RoPE kernel vs its reference (interpreter on CPU in fp32/fp16; bf16 on the GPU)."""

import pytest
import torch

from attnlab.ops.rope import rope_reference
from attnlab.positions import RotaryEmbedding
from attnlab.testing import rel_err

kernel = pytest.importorskip("attnlab.ops.rope.kernel")
DEV = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("shape,transposed", [((2, 3, 7, 10), False), ((1, 4, 13, 32), True), ((3, 5, 8), False)])
def test_rope_kernel_matches_reference(dtype, shape, transposed):
    t, d = shape[-2], shape[-1]
    if transposed:  # [B, T, H, D] storage viewed as [B, H, T, D], as the mixers produce it
        x = torch.randn(shape[0], t, shape[1], d, device=DEV, dtype=dtype).transpose(1, 2)
    else:
        x = torch.randn(shape, device=DEV, dtype=dtype)
    cos, sin = RotaryEmbedding(d).to(DEV).cos_sin(5, t)
    x1, x2 = x.detach().clone().requires_grad_(), x.detach().clone().requires_grad_()
    out, ref = kernel.rope_triton(x1, cos, sin), rope_reference(x2, cos, sin)
    tol = 1e-6 if dtype == torch.float32 else 2e-3
    assert rel_err(out, ref) <= tol
    g = torch.randn_like(ref)
    out.backward(g)
    ref.backward(g)
    assert rel_err(x1.grad, x2.grad) <= tol


@pytest.mark.gpu
def test_rope_kernel_bf16_gpu():
    x = torch.randn(4, 8, 1000, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    cos, sin = RotaryEmbedding(64).cuda().cos_sin(3, 1000)
    out = kernel.rope_triton(x, cos, sin)
    ref = rope_reference(x.detach().float(), cos, sin)
    assert rel_err(out, ref) <= 1e-2
    out.float().sum().backward()
    assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("n,n_rot,d,r", [(5, 3, 10, 10), (3, 3, 14, 6), (4, 2, 12, 4)])
def test_rope_heads_kernel_matches_reference(dtype, n, n_rot, d, r):
    from attnlab.ops.rope import rope_heads_reference
    b, t = 2, 11
    # a strided view, as a fused projection's output split into heads gives it
    x = torch.randn(b, t, n * d + 3, device=DEV, dtype=dtype)[..., 3:].view(b, t, n, d)
    cos, sin = RotaryEmbedding(r).to(DEV).cos_sin(4, t)
    x1, x2 = x.detach().clone().requires_grad_(), x.detach().clone().requires_grad_()
    out, ref = kernel.rope_heads_triton(x1, cos, sin, n_rot, r), rope_heads_reference(x2, cos, sin, n_rot, r)
    assert out.is_contiguous()
    tol = 1e-6 if dtype == torch.float32 else 2e-3
    assert rel_err(out, ref) <= tol
    g = torch.randn_like(ref).transpose(1, 2).contiguous().transpose(1, 2)  # a head-major gradient
    out.backward(g)
    ref.backward(g)
    assert rel_err(x1.grad, x2.grad) <= tol


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("h,dn,dv,dr,v_width", [(3, 6, 10, 4, None), (2, 12, 8, 8, 20), (4, 5, 7, 6, 11)])
def test_expand_latent_kv_kernel_matches_reference(dtype, h, dn, dv, dr, v_width):
    from attnlab.ops.rope import expand_latent_kv_reference
    b, t = 2, 13
    kv = torch.randn(b, t, h, dn + dv, device=DEV, dtype=dtype)
    k_rope = torch.randn(b, t, dr + 5, device=DEV, dtype=dtype)[..., 5:]  # a strided slice
    cos, sin = RotaryEmbedding(dr).to(DEV).cos_sin(2, t)
    a = [z.detach().clone().requires_grad_() for z in (kv, k_rope)]
    r = [z.detach().clone().requires_grad_() for z in (kv, k_rope)]
    k, v = kernel.expand_latent_kv_triton(*a, cos, sin, dn, v_width)
    k_ref, v_ref = expand_latent_kv_reference(*r, cos, sin, dn, v_width)
    tol = 1e-6 if dtype == torch.float32 else 2e-3
    assert k.shape == k_ref.shape and v.shape == v_ref.shape
    assert rel_err(k, k_ref) <= tol and rel_err(v, v_ref) <= tol
    gk, gv = torch.randn_like(k_ref).transpose(1, 2).contiguous().transpose(1, 2), torch.randn_like(v_ref)
    torch.autograd.backward([k, v], [gk, gv])
    torch.autograd.backward([k_ref, v_ref], [gk, gv])
    assert rel_err(a[0].grad, r[0].grad) <= tol and rel_err(a[1].grad, r[1].grad) <= tol
