"""Multi-head latent attention (DeepSeek-V2/V3).

Keys and values come from a per-token latent c = RMSNorm(x W_dkv) of rank kv_lora_rank, expanded
per head by W_ukv = [W_uk; W_uv]; a decoupled rope key (qk_rope_head_dim, one shared by all heads)
carries position. Queries optionally go through their own low-rank latent (q_lora_rank > 0).

Training expands K/V and calls SDPA. Decoding is *absorbed*: the cache holds only [c | k_rope]
per token, W_uk is folded into the query (q_nope W_uk lives in latent space) and W_uv is applied
after attention, so attention runs directly over the latent cache, which acts as a single
shared key/value head of width kv_lora_rank + qk_rope_head_dim. ``decode="naive"`` keeps the
expand-then-attend path over the same cache as a reference.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..caches.kv import LatentCache
from ..errors import ConfigError
from ..modules import RMSNorm
from ..ops import attention
from ..ops.attention import causal_attention, causal_mask
from ..ops.rope import expand_latent_kv, rope_heads
from ..positions import RotaryEmbedding, apply_rope
from .base import Mixer
from .registry import register_mixer


@dataclass
class MLAOptions:
    q_lora_rank: int = 0  # 0: full-rank query projection
    kv_lora_rank: int = 64
    qk_nope_head_dim: int | None = None  # None: the model's head_dim
    qk_rope_head_dim: int = 32
    v_head_dim: int | None = None  # None: the model's head_dim
    decode: str = "absorbed"  # "absorbed" | "naive"


def validate_mla_options(cfg, opts, where: str = "mixer_options.mla") -> None:
    if not isinstance(opts.q_lora_rank, int) or not 0 <= opts.q_lora_rank <= cfg.dim:
        raise ConfigError(f"{where}.q_lora_rank", f"must be 0 (off) or in 1..dim={cfg.dim}; got {opts.q_lora_rank}")
    if not isinstance(opts.kv_lora_rank, int) or not 1 <= opts.kv_lora_rank <= cfg.dim:
        raise ConfigError(f"{where}.kv_lora_rank", f"must be in 1..dim={cfg.dim}; got {opts.kv_lora_rank}")
    r = opts.qk_rope_head_dim
    if not isinstance(r, int) or r < 2 or r % 2:
        raise ConfigError(f"{where}.qk_rope_head_dim", f"must be a positive even integer; got {r}")
    for f in ("qk_nope_head_dim", "v_head_dim"):
        v = getattr(opts, f)
        if v is not None and (not isinstance(v, int) or v < 1):
            raise ConfigError(f"{where}.{f}", f"must be a positive integer or None; got {v!r}")
    if opts.decode not in ("absorbed", "naive"):
        raise ConfigError(f"{where}.decode", f"must be 'absorbed' or 'naive'; got {opts.decode!r}")


class LatentProjections(nn.Module):
    """The MLA projections shared by the latent family (MLA, Diff-MLA, CMD-MLA).

    Everything computed from x is ONE matmul, ``down`` = [W_dkv; W_kr; W_dq] (the KV latent, the
    rope key, then the query latent, or the full query when q_lora_rank = 0): eager training at
    small widths is launch-bound, and this also casts x once under autocast. ``q_out`` widens the
    query (the differential mixers append their noise-stream rows after the signal rows)."""

    def __init__(self, cfg, opts, q_heads: int, q_out: int | None = None):
        super().__init__()
        self.dn = opts.qk_nope_head_dim or cfg.attn_head_dim
        self.dr = opts.qk_rope_head_dim
        self.dv = opts.v_head_dim or cfg.attn_head_dim
        self.rank = opts.kv_lora_rank
        self.q_heads = q_heads
        self.q_rank = opts.q_lora_rank
        self.q_out = q_heads * (self.dn + self.dr) if q_out is None else q_out
        self.down = nn.Linear(cfg.dim, self.rank + self.dr + (self.q_rank or self.q_out), bias=False)
        if self.q_rank:
            self.q_norm = RMSNorm(self.q_rank, cfg.norm_eps)
            self.q_up = nn.Linear(self.q_rank, self.q_out, bias=False)
        self.kv_norm = RMSNorm(self.rank, cfg.norm_eps)
        self.rope = RotaryEmbedding.from_config(cfg, self.dr)

    def project(self, x):
        """Before RoPE: q [B, T, q_out], the normed latent c [B, T, rank], the rope key [B, T, dr]."""
        c, k_rope, q = self.down(x).split([self.rank, self.dr, self.down.out_features - self.rank - self.dr], -1)
        if self.q_rank:
            q = self.q_up(self.q_norm(q))
        return q, self.kv_norm(c), k_rope

    def forward(self, x, start: int):
        """q_nope [B, H, T, dn], q_rope [B, H, T, dr], latent [B, T, rank + dr] (normed c | roped k)."""
        b, t, _ = x.shape
        q, c, k_rope = self.project(x)
        q = q.view(b, t, self.q_heads, self.dn + self.dr).transpose(1, 2)
        q_nope, q_rope = q.split([self.dn, self.dr], dim=-1)
        cos, sin = self.rope.cos_sin(start, t)
        latent = torch.cat([c, apply_rope(k_rope, cos, sin)], dim=-1)
        return q_nope, apply_rope(q_rope, cos, sin), latent


def absorbed_attention(q_lat, q_rope, latent, rank: int, scale: float, q_start: int,
                       n_valid: int | None = None):
    """Attention of q = [q_lat | q_rope] [B, H, T, rank+dr] over latent [B, S, rank+dr] as a single
    shared K/V head: keys are the whole latent row, values its first ``rank`` columns.
    Rows at index >= n_valid (alignment padding) are masked. Returns [B, H, T, rank].
    Batched matmuls over (H*T) rows never copy the cache per head."""
    b, h, t, _ = q_lat.shape
    s = latent.shape[1]
    q = torch.cat([q_lat, q_rope], dim=-1).reshape(b, h * t, -1)
    scores = torch.bmm(q, latent.transpose(1, 2)).view(b, h, t, s).float() * scale
    if t > 1:  # causal mask also hides padding rows: they lie after the last query position
        scores = scores.masked_fill(~causal_mask(t, s, q_start, None, q.device), float("-inf"))
    elif n_valid is not None and n_valid < s:
        scores[..., n_valid:] = float("-inf")
    p = scores.softmax(-1).to(latent.dtype)
    return torch.bmm(p.view(b, h * t, s), latent[:, :, :rank]).view(b, h, t, rank)


@register_mixer("mla")
class MultiHeadLatentAttention(Mixer):
    """DeepSeek multi-head latent attention: low-rank KV latent cache, decoupled RoPE, absorbed decode."""

    cache_kinds = ("latent",)
    supports_segments = True
    lowp_input = True
    Options = MLAOptions

    @classmethod
    def validate(cls, cfg, opts) -> None:
        validate_mla_options(cfg, opts)

    def __init__(self, cfg, opts, layer_idx):
        super().__init__(cfg, opts, layer_idx)
        self.n_heads = cfg.n_heads
        self.proj = LatentProjections(cfg, opts, cfg.n_heads)
        p = self.proj
        self.kv_up = nn.Linear(p.rank, self.n_heads * (p.dn + p.dv), bias=False)
        self.out_proj = nn.Linear(self.n_heads * p.dv, cfg.dim, bias=False)
        self.scale = (p.dn + p.dr) ** -0.5 * p.rope.attention_scale

    def expand_kv(self, latent):
        """Naive path: k [B, H, S, dn+dr], v [B, H, S, dv] from latent rows [B, S, rank+dr]."""
        p = self.proj
        b, s, _ = latent.shape
        c, k_rope = latent.split([p.rank, p.dr], dim=-1)
        kv = self.kv_up(c).view(b, s, self.n_heads, p.dn + p.dv).transpose(1, 2)
        k_nope, v = kv.split([p.dn, p.dv], dim=-1)
        k = torch.cat([k_nope, k_rope[:, None].expand(b, self.n_heads, s, p.dr)], dim=-1)
        return k, v

    def absorbed(self, q_nope, q_rope, cache, q_start):
        p = self.proj
        w = self.kv_up.weight.view(self.n_heads, p.dn + p.dv, p.rank)
        q_lat = torch.einsum("bhtd,hdr->bhtr", q_nope, w[:, : p.dn])
        o_lat = absorbed_attention(q_lat, q_rope, cache.aligned_view(), p.rank, self.scale, q_start,
                                   n_valid=cache.seen)
        return torch.einsum("bhtr,hvr->bhtv", o_lat, w[:, p.dn:])

    def forward(self, x, cache=None, segments=None):
        if cache is None:
            return self.forward_train(x, segments)
        b, t, _ = x.shape
        start = cache.seen
        q_nope, q_rope, latent = self.proj(x, start)
        latent = cache.append(latent)
        if self.opts.decode == "absorbed":
            o = self.absorbed(q_nope, q_rope, cache, start)
        else:
            k, v = self.expand_kv(latent)
            q = torch.cat([q_nope, q_rope], dim=-1)
            o = causal_attention(q, k, v, q_start=start, scale=self.scale)
        return self.out_proj(o.transpose(1, 2).reshape(b, t, -1))

    def forward_train(self, x, segments=None):
        """The full sequence without a cache: no latent row is built; q = [q_nope | rope(q_rope)]
        and k = [k_nope | rope(k_rope)], v come from one fused launch each (``rope_heads``,
        ``expand_latent_kv``), in the token-major layout SDPA's flash kernels prefer."""
        p = self.proj
        b, t, _ = x.shape
        q, c, k_rope = p.project(x)
        cos, sin = p.rope.cos_sin(0, t)
        q = rope_heads(q.view(b, t, self.n_heads, p.dn + p.dr), cos, sin, rope_dim=p.dr)
        kv = self.kv_up(c).view(b, t, self.n_heads, p.dn + p.dv)
        # v padded to q's width in the same launch where SDPA wants it (causal_attention would pad)
        k, v = expand_latent_kv(kv, k_rope, cos, sin, p.dn, p.dn + p.dr if attention.pads_v(q, p.dv) else None)
        o = causal_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), scale=self.scale,
                             segments=segments)
        if o.shape[-1] != p.dv:
            o = o[..., : p.dv]
        return self.out_proj(o.transpose(1, 2).reshape(b, t, -1))

    def new_cache(self, batch_size, max_len, device=None, dtype=None, kind=None, **kwargs):
        if kind not in (None, "latent"):
            raise ConfigError("cache kind", f"mla supports 'latent'; got {kind!r}")
        return LatentCache(batch_size, max_len, self.proj.rank + self.proj.dr, device, dtype)
