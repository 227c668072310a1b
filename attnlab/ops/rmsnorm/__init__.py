"""RMSNorm: a plain PyTorch reference and a fused Triton kernel that reads the weight in its own
dtype and writes its output in the dtype asked for (the autocast dtype when the consumer is a
linear layer), so eager training launches no casts around it. The kernel is opt-in (``ENABLED``)."""

import torch

from .reference import rms_norm_reference

try:
    from .kernel import rms_norm_triton
except ImportError:  # triton is optional
    rms_norm_triton = None


# Off by default: measured SLOWER on an H100 in eager training at dim 384 (MLA 22.3 -> 30.7 ms per
# step, MHA 16.3 -> 17.4 ms; benchmarks/RESULTS.md): the step is launch-bound and a Python-side
# Triton launch costs more than the cast launches it saves. Set True to use it (A/B:
# ``bench_train_step.py --kernels "default;+rmsnorm"``).
ENABLED = False


def use_rms_kernel(x: torch.Tensor) -> bool:
    """CUDA, eager, a row that fits one block (<= 8192), a non-empty input within 32-bit offsets."""
    return (ENABLED and x.is_cuda and rms_norm_triton is not None and 0 < x.shape[-1] <= 8192
            and 0 < x.numel() < 2**30 and not torch.compiler.is_compiling())


__all__ = ["rms_norm_reference", "rms_norm_triton", "use_rms_kernel"]
