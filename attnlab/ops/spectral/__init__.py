"""Spectral (per-block truncated-SVD) KV compression: PyTorch reference and Triton decode kernel.

The kernel module (and triton) is imported on first use, so ``import attnlab`` stays light and
works without triton.
"""

import importlib.util

from .reference import (KERNEL_TILE, CompressedBlocks, compressed_partial, dense_partial,
                        quantize_rows, spectral_attention, truncated_svd)

HAS_TRITON = importlib.util.find_spec("triton") is not None


def spectral_decode(*args, **kwargs):
    """Triton decode kernel (see ``attnlab.ops.spectral.kernel.spectral_decode``)."""
    from .kernel import spectral_decode as _decode

    return _decode(*args, **kwargs)


__all__ = ["HAS_TRITON", "KERNEL_TILE", "spectral_decode", "CompressedBlocks", "compressed_partial",
           "dense_partial", "quantize_rows", "spectral_attention", "truncated_svd"]
