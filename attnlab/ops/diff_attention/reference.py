"""Differential attention in plain PyTorch: the explicit reference and the two-SDPA path.

    out_h = softmax(s1 * Q1_h K1_h^T) V_h  -  lam_h * softmax(s2 * Q2_h K2_h^T) V_h      (causal)

Shapes (the training path: queries and keys cover the same positions, or the queries are the
last T of S cached positions with ``q_start = S - T``):

- q1 [B, H, T, D1], k1 [B, Hk, S, D1], v [B, Hk, S, DV]; Hk divides H (GQA: query head h reads
  key/value head h // (H / Hk)).
- q2 [B, H2, T, D2] with H2 in {H, 1}; k2 [B, Hk2, S, D2] with Hk2 in {Hk, 1}. H2 = Hk2 = 1 is the
  common-mode (CMD) case: ONE noise head shared by every signal head.
- lam: a tensor broadcastable to [H] (a scalar per layer or one value per head).

``diff_attention_reference`` builds both softmax maps explicitly in float32 (tests only).
``diff_attention_sdpa`` never builds a T x T map: two SDPA calls that share V; in the CMD case
the noise head is expanded (a stride-0 view) to every head, which is what SDPA needs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..attention import causal_attention, causal_mask


def _heads(x: torch.Tensor, h: int) -> torch.Tensor:
    return x if x.shape[1] == h else x.repeat_interleave(h // x.shape[1], dim=1)


def lam_per_head(lam, h: int, device=None) -> torch.Tensor:
    """lam as a float32 [H] tensor (a Python float, a scalar tensor, [1] or [H])."""
    lam = torch.as_tensor(lam, dtype=torch.float32, device=device).reshape(-1)
    return lam.expand(h) if lam.numel() == 1 else lam


def diff_attention_reference(q1, k1, q2, k2, v, lam, scale1=None, scale2=None, q_start: int = 0,
                             return_maps: bool = False):
    """Explicit float32 softmax maps A, B [B, H, T, S]; returns (A - lam B) V in q1's dtype."""
    b, h, t, _ = q1.shape
    s = k1.shape[-2]
    scale1 = q1.shape[-1] ** -0.5 if scale1 is None else scale1
    scale2 = q2.shape[-1] ** -0.5 if scale2 is None else scale2
    mask = causal_mask(t, s, q_start, None, q1.device)
    a = (q1.float() @ _heads(k1, h).float().transpose(-1, -2) * scale1).masked_fill(~mask, float("-inf")).softmax(-1)
    q2e, k2e = _heads(q2, h), _heads(k2, h)
    bm = (q2e.float() @ k2e.float().transpose(-1, -2) * scale2).masked_fill(~mask, float("-inf")).softmax(-1)
    lam = lam_per_head(lam, h, q1.device).to(q1.device).view(1, h, 1, 1)
    out = ((a - lam * bm) @ _heads(v, h).float()).to(q1.dtype)
    return (out, a, bm) if return_maps else out


def diff_attention_sdpa(q1, k1, q2, k2, v, lam, scale1=None, scale2=None, q_start: int = 0):
    """Two flash-style SDPA calls sharing V; no T x T map is materialised."""
    h, dv = q1.shape[1], v.shape[-1]
    # SDPA's flash kernels want V as wide as Q/K (MLA: dn+dr vs dv): pad V once and share it.
    def padded(q):
        return F.pad(v, (0, q.shape[-1] - dv)) if q.is_cuda and dv < q.shape[-1] else v

    v1 = padded(q1)
    v2 = v1 if q2.shape[-1] == q1.shape[-1] else padded(q2)
    o1 = causal_attention(q1, k1, v1, q_start=q_start, scale=scale1)[..., :dv]
    if q2.shape[1] != h:  # CMD: one noise query head for all heads (stride-0 view)
        q2 = q2.expand(-1, h, -1, -1)
    if k2.shape[1] != v.shape[1]:
        k2 = k2.expand(-1, v.shape[1], -1, -1)
    o2 = causal_attention(q2, k2, v2, q_start=q_start, scale=scale2)[..., :dv]
    lam = lam_per_head(lam, h, q1.device).to(device=q1.device, dtype=o1.dtype).view(1, h, 1, 1)
    return torch.addcmul(o1, lam, o2, value=-1.0)
