"""Building blocks shared by the model and the mixers.

RMSNorm and SwiGLU can run fused Triton kernels on CUDA in eager mode (attnlab.ops.rmsnorm,
attnlab.ops.swiglu); both are opt-in (``ENABLED``): at dim 384 they measured slower than the
PyTorch ops (benchmarks/RESULTS.md). Otherwise, and on CPU and under torch.compile, they run the
plain PyTorch code.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .ops.rmsnorm import rms_norm_triton, use_rms_kernel
from .ops.swiglu import swiglu


class RMSNorm(nn.Module):
    """``lowp_out``: the output only feeds linear layers, so under autocast it may be written in
    the autocast dtype directly (the linear would cast it anyway: same values, one launch less
    each way). Otherwise the output keeps x's dtype."""

    def __init__(self, dim: int, eps: float = 1e-6, lowp_out: bool = False):
        super().__init__()
        self.eps = eps
        self.lowp_out = lowp_out
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if use_rms_kernel(x):
            out_dtype = x.dtype
            if self.lowp_out and torch.is_autocast_enabled("cuda"):
                out_dtype = torch.get_autocast_dtype("cuda")
            return rms_norm_triton(x, self.weight, self.eps, out_dtype)
        # Same dtype as x keeps the fused kernel under autocast (bf16 x, fp32 weight).
        return F.rms_norm(x, (x.shape[-1],), self.weight.to(x.dtype), self.eps)


class SwiGLU(nn.Module):
    """out_proj(silu(x W_gate) * x W_up), gate and up fused into one matmul."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.gate_up = nn.Linear(dim, 2 * hidden, bias=False)
        self.out_proj = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out_proj(swiglu(self.gate_up(x)))
