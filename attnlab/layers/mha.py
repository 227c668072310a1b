"""Multi-head softmax attention (MHA / GQA / MQA) with RoPE and an optional sliding window."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..caches.kv import kv_cache_kinds, new_kv_cache
from ..errors import ConfigError
from ..ops.attention import causal_attention
from ..ops.rope import rope_heads
from ..positions import RotaryEmbedding
from .base import Mixer
from .registry import register_mixer


@register_mixer("mha")
class MultiHeadAttention(Mixer):
    """n_heads query heads over n_kv_heads key/value heads (GQA; 1 = MQA) through SDPA."""

    @dataclass
    class Options:
        sliding_window: int | None = None  # attend to the last W tokens only (None: full causal)
        qkv_bias: bool = False

    @classmethod
    def validate(cls, cfg, opts) -> None:
        w = opts.sliding_window
        if w is not None and (not isinstance(w, int) or w < 1):
            raise ConfigError("mixer_options.mha.sliding_window", f"must be a positive int or None; got {w!r}")

    def __init__(self, cfg, opts, layer_idx):
        super().__init__(cfg, opts, layer_idx)
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.kv_heads, cfg.attn_head_dim
        q, kv = self.n_heads * self.head_dim, self.n_kv_heads * self.head_dim
        self.qkv_proj = nn.Linear(cfg.dim, q + 2 * kv, bias=opts.qkv_bias)
        self.out_proj = nn.Linear(q, cfg.dim, bias=False)
        self.rope = RotaryEmbedding.from_config(cfg, self.head_dim)
        self.scale = self.head_dim**-0.5 * self.rope.attention_scale

    supports_segments = True
    lowp_input = True

    @property
    def cache_kinds(self):
        return tuple(["dense"] + [k for k in kv_cache_kinds() if k != "dense"])

    def project(self, x: torch.Tensor, start: int):
        """q [B, H, T, D] and k, v [B, Hk, T, D], RoPE applied at positions start..start+T-1."""
        b, t, _ = x.shape
        h, hk = self.n_heads, self.n_kv_heads
        qkv = self.qkv_proj(x).view(b, t, h + 2 * hk, self.head_dim)
        cos, sin = self.rope.cos_sin(start, t)
        # one launch ropes the q and k heads and passes v through (token-major, as flash prefers)
        qkv = rope_heads(qkv, cos, sin, n_rot=h + hk)
        q, k, v = qkv.split([h, hk, hk], dim=2)
        return q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)

    def forward(self, x, cache=None, segments=None):
        b, t, _ = x.shape
        q, k, v = self.project(x, cache.seen if cache is not None else 0)
        window = self.opts.sliding_window
        if cache is None:
            o = causal_attention(q, k, v, window=window, scale=self.scale, segments=segments)
        else:
            o = cache.attend(q, k, v, scale=self.scale, window=window)
        return self.out_proj(o.transpose(1, 2).reshape(b, t, -1))

    def new_cache(self, batch_size, max_len, device=None, dtype=None, kind=None, **kwargs):
        return new_kv_cache(kind or "dense", batch_size=batch_size, max_len=max_len,
                            n_kv_heads=self.n_kv_heads, head_dim=self.head_dim,
                            device=device, dtype=dtype, layer_idx=self.layer_idx, **kwargs)
