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
