"""Gluon (Triton's explicit-layout dialect) imports shared by attnlab's Gluon kernels.

Gluon ships with triton >= 3.5 and compiles only for NVIDIA GPUs (no interpreter): CPU-only installs
and older tritons import attnlab without it (``HAVE_GLUON`` False) and run the Triton kernels. The
kernels are written for Triton 3.6 (the GPU machine's); names that moved in later versions are
aliased here once: ``tma_load`` (``tma.async_copy_global_to_shared`` in 3.6, ``tma.async_load``
later) and ``cta_barrier`` (``gl.barrier`` in 3.6, ``gl.thread_barrier`` later).
"""

from __future__ import annotations

import os

import torch

try:
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.language.nvidia.hopper import (fence_async_shared, mbarrier, tma,
                                                                  warpgroup_mma, warpgroup_mma_wait)
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

    tma_load = tma.async_load if hasattr(tma, "async_load") else tma.async_copy_global_to_shared
    cta_barrier = gl.thread_barrier if hasattr(gl, "thread_barrier") else gl.barrier
    HAVE_GLUON = True
except Exception:  # pragma: no cover - depends on the installed triton
    gluon = gl = fence_async_shared = mbarrier = tma = warpgroup_mma = warpgroup_mma_wait = None
    TensorDescriptor = tma_load = cta_barrier = None
    HAVE_GLUON = False


_MAJOR: dict = {}  # device index -> compute capability major (asked once: host time on launch-bound steps)


def hopper_ready(x: torch.Tensor) -> bool:
    """Whether a Gluon Hopper kernel may run on x's device: Gluon importable, not the Triton
    interpreter, a CUDA tensor on an sm_90 GPU."""
    if not HAVE_GLUON or not x.is_cuda or os.environ.get("TRITON_INTERPRET", "0") == "1":
        return False
    i = x.device.index if x.device.index is not None else torch.cuda.current_device()
    if i not in _MAJOR:
        _MAJOR[i] = torch.cuda.get_device_capability(i)[0]
    return _MAJOR[i] == 9


def tma_ok(*xs: torch.Tensor) -> bool:
    """Whether tensors can back TMA descriptors: same dtype, last dim contiguous, 16-byte aligned base
    and strides."""
    for x in xs:
        if x.dtype != xs[0].dtype or x.stride(-1) != 1 or x.data_ptr() % 16:
            return False
        if any((s * x.element_size()) % 16 for s in x.stride()[:-1]):
            return False
    return True


def nvmma_layout(block, dtype: torch.dtype):
    """The default NVMMA shared-memory layout of a TMA block of a bf16/fp16 tensor."""
    return gl.NVMMASharedLayout.get_default_for(block, gl.bfloat16 if dtype == torch.bfloat16 else gl.float16)
