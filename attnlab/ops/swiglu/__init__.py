"""SwiGLU activation silu(gate) * up on a fused [gate | up] projection: a plain PyTorch reference
and a Triton kernel (one launch forward, one backward; used on CUDA in eager mode, where training
at small widths is launch-bound; under torch.compile inductor fuses the reference itself)."""

import torch

from .reference import swiglu_reference

try:
    from .kernel import swiglu_triton
except ImportError:  # triton is optional
    swiglu_triton = None


ENABLED = True  # set False to use the reference everywhere (A/B timing)


def swiglu(gate_up: torch.Tensor) -> torch.Tensor:
    """[..., 2H] -> [..., H]: silu(gate_up[..., :H]) * gate_up[..., H:]."""
    if (ENABLED and gate_up.is_cuda and swiglu_triton is not None and 0 < gate_up.numel() < 2**30
            and not torch.compiler.is_compiling()):
        return swiglu_triton(gate_up)
    return swiglu_reference(gate_up)


__all__ = ["swiglu", "swiglu_reference"]
