"""Softmax attention over a causal (optionally windowed) prefix, through SDPA.

Queries are the last T of S positions (``q_start = S - T`` when a cache holds earlier tokens).
The fast fused kernels of ``F.scaled_dot_product_attention`` are used where the mask allows
(``is_causal`` for a fresh sequence, no mask for a single decoded token); otherwise an explicit
boolean mask is built.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def causal_mask(t: int, s: int, q_start: int, window: int | None, device) -> torch.Tensor:
    """Boolean [t, s]: True where query q_start+i may attend key j."""
    qi = torch.arange(q_start, q_start + t, device=device)[:, None]
    kj = torch.arange(s, device=device)[None, :]
    allowed = kj <= qi
    if window is not None:
        allowed = allowed & (kj > qi - window)
    return allowed


def same_segment(segments: torch.Tensor) -> torch.Tensor:
    """[B, T] document ids -> [B, 1, T, T] True where query and key share a document."""
    return (segments[:, :, None] == segments[:, None, :])[:, None]


def pads_v(q: torch.Tensor, v_dim: int) -> bool:
    """Whether SDPA on q's device wants V zero-padded to q's head dim (CUDA flash kernels need
    equal q/k/v head dims, e.g. MLA's dn+dr vs dv; padding costs less than the fallback kernel)."""
    return q.is_cuda and v_dim < q.shape[-1]


def causal_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    q_start: int = 0,
    window: int | None = None,
    scale: float | None = None,
    segments: torch.Tensor | None = None,
) -> torch.Tensor:
    """q [B, Hq, T, D], k [B, Hk, S, D], v [B, Hk, S, Dv] with Hk | Hq -> [B, Hq, T, Dv].
    ``segments`` [B, T] (training, q_start = 0): document ids of packed sequences; a query
    attends only to keys of its own document."""
    t, s = q.shape[-2], k.shape[-2]
    dv = v.shape[-1]
    if pads_v(q, dv):
        v = F.pad(v, (0, q.shape[-1] - dv))
        return causal_attention(q, k, v, q_start=q_start, window=window, scale=scale,
                                segments=segments)[..., :dv]
    if q.is_cuda:  # cuDNN's SDPA sizes its output like q and rejects stride-0 (expanded) heads
        q, k, v = (x.contiguous() if x.stride(-1) != 1 or 0 in x.stride() else x for x in (q, k, v))
    gqa = q.shape[1] != k.shape[1]
    if segments is not None:
        mask = causal_mask(t, s, q_start, window, q.device) & same_segment(segments)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, enable_gqa=gqa)
    if window is None and q_start == 0 and s == t:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, enable_gqa=gqa)
    if window is None and t == 1:
        return F.scaled_dot_product_attention(q, k, v, scale=scale, enable_gqa=gqa)
    mask = causal_mask(t, s, q_start, window, q.device)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, enable_gqa=gqa)


def attention_reference(q, k, v, *, q_start=0, window=None, scale=None, segments=None) -> torch.Tensor:
    """Explicit softmax(QK^T)V with the same masking; for tests."""
    hq, hk = q.shape[1], k.shape[1]
    if hq != hk:
        k = k.repeat_interleave(hq // hk, dim=1)
        v = v.repeat_interleave(hq // hk, dim=1)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    scores = (q.float() @ k.float().transpose(-1, -2)) * scale
    mask = causal_mask(q.shape[-2], k.shape[-2], q_start, window, q.device)
    if segments is not None:
        mask = mask & same_segment(segments)
    scores = scores.masked_fill(~mask, float("-inf"))
    return (scores.softmax(-1) @ v.float()).to(q.dtype)
