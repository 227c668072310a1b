"""Caches for softmax attention: dense K/V, and a latent buffer (MLA).

Buffers are allocated once for ``max_len`` tokens, so decoding never re-allocates; ``nbytes()``
therefore reports what is held (capacity), and bytes per token is ``nbytes() / max_len``.

The dense K/V family has pluggable kinds (``register_kv_cache``): a kind implements
``attend(q, k, v, scale=, window=)``, i.e. append the new tokens and return attention of q over
everything cached. A compressed or quantized cache is one new class registered here; mixers that
use ``attend`` get it without changes.
"""

from __future__ import annotations

import torch

from ..ops.attention import causal_attention
from .base import LayerCache

_KV_KINDS: dict[str, type] = {}


def register_kv_cache(kind: str):
    def deco(cls):
        _KV_KINDS[kind] = cls
        return cls

    return deco


def kv_cache_kinds() -> dict[str, type]:
    return dict(_KV_KINDS)


def new_kv_cache(kind: str, **kwargs) -> LayerCache:
    from ..errors import ConfigError

    if kind not in _KV_KINDS:
        raise ConfigError("cache kind", f"unknown {kind!r}; K/V cache kinds: {', '.join(sorted(_KV_KINDS))}")
    return _KV_KINDS[kind](**kwargs)


@register_kv_cache("dense")
class KVCache(LayerCache):
    """Dense keys [B, Hk, L, Dk] and values [B, Hv, L, Dv] (post-RoPE keys)."""

    def __init__(self, batch_size, max_len, n_kv_heads, head_dim, device=None, dtype=None,
                 v_heads=None, v_head_dim=None, **_unused):
        super().__init__(batch_size, max_len)
        self.k = torch.zeros(batch_size, n_kv_heads, max_len, head_dim, device=device, dtype=dtype)
        self.v = torch.zeros(batch_size, v_heads or n_kv_heads, max_len, v_head_dim or head_dim,
                             device=device, dtype=dtype)

    def tensors(self):
        return [self.k, self.v]

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k/v [B, H, T, D] at the current position; return views of all cached tokens."""
        t = k.shape[-2]
        self.check_room(t)
        end = self.seen + t
        self.k[:, :, self.seen:end] = k
        self.v[:, :, self.seen:end] = v
        self.seen = end
        return self.k[:, :, :end], self.v[:, :, :end]

    def attend(self, q, k, v, *, scale=None, window=None) -> torch.Tensor:
        start = self.seen
        keys, values = self.append(k, v)
        return causal_attention(q, keys, values, q_start=start, window=window, scale=scale)


class LatentCache(LayerCache):
    """One buffer [B, L, D] of per-token vectors shared by all heads (MLA: latent | rope key).

    Capacity is rounded up to a multiple of 8 tokens so that attention can run over an aligned
    prefix (``aligned_view``): matmuls whose token dimension is odd fall off cuBLAS's fast
    kernels (2x slower decode seen on an H100). The padding is held, so nbytes() counts it.
    """

    ALIGN = 8

    def __init__(self, batch_size, max_len, width, device=None, dtype=None):
        super().__init__(batch_size, max_len)
        capacity = -(-max_len // self.ALIGN) * self.ALIGN
        self.buf = torch.zeros(batch_size, capacity, width, device=device, dtype=dtype)

    def aligned_view(self) -> torch.Tensor:
        """The cached rows plus zero/stale padding up to the next multiple of ALIGN; rows at
        index >= seen must be masked by the caller."""
        return self.buf[:, : -(-self.seen // self.ALIGN) * self.ALIGN]

    def tensors(self):
        return [self.buf]

    def append(self, x: torch.Tensor) -> torch.Tensor:
        t = x.shape[1]
        self.check_room(t)
        end = self.seen + t
        self.buf[:, self.seen:end] = x
        self.seen = end
        return self.buf[:, :end]
