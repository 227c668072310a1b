"""Fused SwiGLU: silu(gate) * up from the [gate | up] projection in one launch, and its backward
writing both halves of the gradient in one launch (eager: 2 launches forward and 4 backward)."""

import torch
import triton
import triton.language as tl


@triton.jit
def _swiglu_fwd_kernel(gu_ptr, out_ptr, M, H, sgm, som, BLOCK_M: tl.constexpr, BLOCK_H: tl.constexpr):
    m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)[:, None]
    h = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)[None, :]
    mask = (m < M) & (h < H)
    g = tl.load(gu_ptr + m * sgm + h, mask=mask, other=0.0).to(tl.float32)
    u = tl.load(gu_ptr + m * sgm + H + h, mask=mask, other=0.0).to(tl.float32)
    out = g * tl.sigmoid(g) * u
    tl.store(out_ptr + m * som + h, out.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _swiglu_bwd_kernel(gu_ptr, dout_ptr, dgu_ptr, M, H, sgm, sdm, sgrm,
                       BLOCK_M: tl.constexpr, BLOCK_H: tl.constexpr):
    m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)[:, None]
    h = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)[None, :]
    mask = (m < M) & (h < H)
    g = tl.load(gu_ptr + m * sgm + h, mask=mask, other=0.0).to(tl.float32)
    u = tl.load(gu_ptr + m * sgm + H + h, mask=mask, other=0.0).to(tl.float32)
    d = tl.load(dout_ptr + m * sdm + h, mask=mask, other=0.0).to(tl.float32)
    sig = tl.sigmoid(g)
    dg = d * u * sig * (1.0 + g * (1.0 - sig))
    du = d * g * sig
    tl.store(dgu_ptr + m * sgrm + h, dg.to(dgu_ptr.dtype.element_ty), mask=mask)
    tl.store(dgu_ptr + m * sgrm + H + h, du.to(dgu_ptr.dtype.element_ty), mask=mask)


def _rows(x):
    x2 = x.reshape(-1, x.shape[-1])
    return x2 if x2.stride(-1) == 1 else x2.contiguous()


def _grid(m, h):
    bm, bh = 16, min(128, triton.next_power_of_2(h))
    return (triton.cdiv(m, bm), triton.cdiv(h, bh)), bm, bh


class SwiGLUFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, gate_up):
        gu = _rows(gate_up)
        m, h = gu.shape[0], gu.shape[1] // 2
        out = torch.empty((m, h), device=gu.device, dtype=gu.dtype)
        grid, bm, bh = _grid(m, h)
        _swiglu_fwd_kernel[grid](gu, out, m, h, gu.stride(0), out.stride(0), BLOCK_M=bm, BLOCK_H=bh)
        ctx.save_for_backward(gu)
        ctx.shape = gate_up.shape
        return out.view(*gate_up.shape[:-1], h)

    @staticmethod
    def backward(ctx, dout):
        (gu,) = ctx.saved_tensors
        m, h = gu.shape[0], gu.shape[1] // 2
        d = _rows(dout)
        dgu = torch.empty_like(gu)
        grid, bm, bh = _grid(m, h)
        _swiglu_bwd_kernel[grid](gu, d, dgu, m, h, gu.stride(0), d.stride(0), dgu.stride(0), BLOCK_M=bm, BLOCK_H=bh)
        return dgu.view(ctx.shape)


def swiglu_triton(gate_up: torch.Tensor) -> torch.Tensor:
    return SwiGLUFunction.apply(gate_up)
