"""Fused RoPE: one read and one write of x per pass (the eager version launches ~9 kernels
forward and as many backward). Backward is the rotation by -theta, the same kernel."""

import torch
import triton
import triton.language as tl


@triton.jit
def _rope_kernel(x_ptr, cos_ptr, sin_ptr, out_ptr, H, T,
                 sxb, sxh, sxt, sob, soh, sot, sign,
                 HALF: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr):
    pid_bh = tl.program_id(0)
    pid_t = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    t = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)[:, None]
    d = tl.arange(0, BLOCK_D)[None, :]
    mask = (t < T) & (d < HALF)
    xb = x_ptr + b * sxb + h * sxh + t * sxt
    x1 = tl.load(xb + d, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(xb + HALF + d, mask=mask, other=0.0).to(tl.float32)
    c = tl.load(cos_ptr + t * HALF + d, mask=mask, other=0.0)
    s = tl.load(sin_ptr + t * HALF + d, mask=mask, other=0.0) * sign
    ob = out_ptr + b * sob + h * soh + t * sot
    tl.store(ob + d, (x1 * c - x2 * s).to(out_ptr.dtype.element_ty), mask=mask)
    tl.store(ob + HALF + d, (x2 * c + x1 * s).to(out_ptr.dtype.element_ty), mask=mask)


def _launch(x4: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, sign: float) -> torch.Tensor:
    b, h, t, d = x4.shape
    out = torch.empty((b, h, t, d), device=x4.device, dtype=x4.dtype)
    if x4.stride(-1) != 1:
        x4 = x4.contiguous()
    half = d // 2
    block_d = triton.next_power_of_2(half)
    block_t = max(1, min(64, 4096 // block_d, triton.next_power_of_2(t)))
    grid = (b * h, triton.cdiv(t, block_t))
    _rope_kernel[grid](x4, cos, sin, out, h, t, x4.stride(0), x4.stride(1), x4.stride(2),
                       out.stride(0), out.stride(1), out.stride(2), sign,
                       HALF=half, BLOCK_T=block_t, BLOCK_D=block_d)
    return out


def _as4d(x):
    return x if x.dim() == 4 else x.reshape(-1, 1, *x.shape[-2:])


class RopeFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, cos, sin):
        cos, sin = cos.float().contiguous(), sin.float().contiguous()
        ctx.save_for_backward(cos, sin)
        ctx.shape = x.shape
        return _launch(_as4d(x), cos, sin, 1.0).view(x.shape)

    @staticmethod
    def backward(ctx, grad):
        cos, sin = ctx.saved_tensors
        return _launch(_as4d(grad), cos, sin, -1.0).view(ctx.shape), None, None


def rope_triton(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    return RopeFunction.apply(x, cos, sin)
