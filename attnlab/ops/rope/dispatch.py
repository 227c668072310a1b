import torch

from .reference import rope_reference

try:
    from .kernel import rope_triton
except ImportError:  # triton is optional
    rope_triton = None


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x [..., T, D] (rotate-half layout) by cos/sin [T, D/2]. The fused Triton kernel on
    CUDA (fewer launches: training at small widths is launch-bound), the reference elsewhere."""
    if x.is_cuda and rope_triton is not None and x.dim() in (3, 4):
        return rope_triton(x, cos, sin)
    return rope_reference(x, cos, sin)
