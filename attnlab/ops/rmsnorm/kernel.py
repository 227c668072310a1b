"""Fused RMSNorm that takes the weight in its own dtype and writes the output in the dtype the
next layer wants (under autocast: bf16), so no cast launches surround it. Forward: one launch.
Backward: one launch for dx and per-program partial weight gradients, plus one sum."""

import torch
import triton
import triton.language as tl


@triton.jit
def _rms_fwd_kernel(x_ptr, w_ptr, out_ptr, rstd_ptr, M, N, sxm, som, eps,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)[:, None]
    n = tl.arange(0, BLOCK_N)[None, :]
    mask = (m < M) & (n < N)
    x = tl.load(x_ptr + m * sxm + n, mask=mask, other=0.0).to(tl.float32)
    w = tl.load(w_ptr + n, mask=n < N, other=0.0).to(tl.float32)
    rstd = 1.0 / tl.sqrt(tl.sum(x * x, axis=1) / N + eps)  # [BLOCK_M]
    y = x * rstd[:, None] * w
    tl.store(out_ptr + m * som + n, y.to(out_ptr.dtype.element_ty), mask=mask)
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    tl.store(rstd_ptr + rows, rstd, mask=rows < M)


@triton.jit
def _rms_bwd_kernel(x_ptr, w_ptr, dy_ptr, rstd_ptr, dx_ptr, dw_ptr, M, N, sxm, sdym, sdxm, ROWS,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    pid = tl.program_id(0)
    n = tl.arange(0, BLOCK_N)[None, :]
    nm = n < N
    w = tl.load(w_ptr + n, mask=nm, other=0.0).to(tl.float32)
    dw = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for start in range(pid * ROWS, tl.minimum(pid * ROWS + ROWS, M), BLOCK_M):
        rows = start + tl.arange(0, BLOCK_M)
        m = rows[:, None]
        mask = (m < M) & nm
        x = tl.load(x_ptr + m * sxm + n, mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(dy_ptr + m * sdym + n, mask=mask, other=0.0).to(tl.float32)
        rstd = tl.load(rstd_ptr + rows, mask=rows < M, other=0.0)[:, None]
        xhat = x * rstd
        wdy = w * dy
        c = tl.sum(xhat * wdy, axis=1)[:, None] / N
        dx = (wdy - xhat * c) * rstd
        tl.store(dx_ptr + m * sdxm + n, dx.to(dx_ptr.dtype.element_ty), mask=mask)
        dw += dy * xhat
    tl.store(dw_ptr + pid * N + tl.arange(0, BLOCK_N), tl.sum(dw, axis=0), mask=tl.arange(0, BLOCK_N) < N)


def _rows(x):
    x2 = x.reshape(-1, x.shape[-1])
    return x2 if x2.stride(-1) == 1 else x2.contiguous()


def _block_m(n):
    return max(1, min(16, 4096 // triton.next_power_of_2(n)))


class RMSNormFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, eps, out_dtype):
        x2 = _rows(x)
        m, n = x2.shape
        out = torch.empty((m, n), device=x.device, dtype=out_dtype)
        rstd = torch.empty((m,), device=x.device, dtype=torch.float32)
        bm = _block_m(n)
        _rms_fwd_kernel[(triton.cdiv(m, bm),)](x2, weight, out, rstd, m, n, x2.stride(0), out.stride(0), eps,
                                               BLOCK_M=bm, BLOCK_N=triton.next_power_of_2(n))
        ctx.save_for_backward(x2, weight, rstd)
        ctx.shape = x.shape
        return out.view(x.shape)

    @staticmethod
    def backward(ctx, dy):
        x2, weight, rstd = ctx.saved_tensors
        m, n = x2.shape
        dy2 = _rows(dy)
        dx = torch.empty_like(x2)
        bm = _block_m(n)
        rows = max(bm, triton.cdiv(triton.cdiv(m, 512), bm) * bm)  # at most ~512 programs
        grid = triton.cdiv(m, rows)
        dw = torch.empty((grid, n), device=x2.device, dtype=torch.float32)
        _rms_bwd_kernel[(grid,)](x2, weight, dy2, rstd, dx, dw, m, n, x2.stride(0), dy2.stride(0), dx.stride(0),
                                 rows, BLOCK_M=bm, BLOCK_N=triton.next_power_of_2(n))
        return dx.view(ctx.shape), dw.sum(0).to(weight.dtype), None, None


def rms_norm_triton(x: torch.Tensor, weight: torch.Tensor, eps: float,
                    out_dtype: torch.dtype | None = None) -> torch.Tensor:
    return RMSNormFunction.apply(x, weight, eps, out_dtype or x.dtype)
