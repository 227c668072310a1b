"""SwiGLU activation silu(gate) * up on a fused [gate | up] projection: a plain PyTorch reference
and a Triton kernel (one launch forward, one backward; opt-in through ``ENABLED``, CUDA and eager
only; under torch.compile inductor fuses the reference itself)."""

import torch

from .reference import swiglu_reference

try:
    from .kernel import swiglu_triton
except ImportError:  # triton is optional
    swiglu_triton = None


# Off by default: measured slower on an H100 in eager training at dim 384 (MHA 14.0 -> 16.3 ms
# per step, MLA 20.6 -> 22.3 ms; it saves ~10% peak memory): the step is launch-bound and a
# Python-side Triton launch costs more than the launches it saves. Set True to use it (A/B:
# ``bench_train_step.py --kernels "default;+swiglu"``).
ENABLED = False


def swiglu(gate_up: torch.Tensor) -> torch.Tensor:
    """[..., 2H] -> [..., H]: silu(gate_up[..., :H]) * gate_up[..., H:]."""
    if (ENABLED and gate_up.is_cuda and swiglu_triton is not None and 0 < gate_up.numel() < 2**30
            and not torch.compiler.is_compiling()):
        return swiglu_triton(gate_up)
    return swiglu_reference(gate_up)


__all__ = ["swiglu", "swiglu_reference"]
