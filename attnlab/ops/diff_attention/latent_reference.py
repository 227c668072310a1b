"""The latent family's fused differential attention (``latent.py``): its geometry, the column
views of its inputs, and the same function in plain PyTorch (explicit maps; tests). No triton."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..rope.reference import rope_reference
from .reference import diff_attention_reference


@dataclass(frozen=True)
class LatentGeometry:
    heads: int  # H signal heads
    noise_heads: int  # H2: H or 1
    dn: int
    dr: int
    dv: int
    dn2: int  # the noise head's nope width
    rope2: int  # 0: no rope in the noise stream; 1: shared with the signal stream; 2: own query rope
    scale1: float
    scale2: float

    @property
    def own(self) -> int:
        return self.dr if self.rope2 == 2 else 0

    @property
    def q_width(self) -> int:
        return self.heads * (self.dn + self.dr) + self.noise_heads * (self.dn2 + self.own)

    @property
    def kv_width(self) -> int:
        return self.heads * (self.dn + self.dv) + self.noise_heads * self.dn2


def _views(q_all, kvu, g: LatentGeometry):
    """[B, H, T, d] views of the column blocks of q_all / kvu (or of their gradients)."""
    b, t, _ = q_all.shape
    h, h2 = g.heads, g.noise_heads
    qs = q_all[..., : h * (g.dn + g.dr)].view(b, t, h, g.dn + g.dr).transpose(1, 2)
    qn = q_all[..., h * (g.dn + g.dr):].view(b, t, h2, g.dn2 + g.own).transpose(1, 2)
    kv = kvu[..., : h * (g.dn + g.dv)].view(b, t, h, g.dn + g.dv).transpose(1, 2)
    k2 = kvu[..., h * (g.dn + g.dv):].view(b, t, h2, g.dn2).transpose(1, 2)
    return (qs[..., : g.dn], qs[..., g.dn:], qn[..., : g.dn2], qn[..., g.dn2:],
            kv[..., : g.dn], kv[..., g.dn:], k2)


def latent_diff_reference(q_all, kvu, kr_pre, lam, cos, sin, g: LatentGeometry) -> torch.Tensor:
    """The same function in plain PyTorch (explicit float32 softmax maps), for tests."""
    q1, qr_pre, q2, qr2_pre, k1, v, k2 = _views(q_all, kvu, g)
    b, h = q_all.shape[0], g.heads
    qr = rope_reference(qr_pre, cos, sin)
    kr = rope_reference(kr_pre.unsqueeze(1), cos, sin)
    t = q_all.shape[1]
    q1f = torch.cat([q1, qr], -1)
    k1f = torch.cat([k1, kr.expand(b, h, t, g.dr)], -1)
    if g.rope2 == 1:
        q2f, k2f = torch.cat([q2, qr], -1), torch.cat([k2, kr.expand(b, k2.shape[1], t, g.dr)], -1)
    elif g.rope2 == 2:
        q2f = torch.cat([q2, rope_reference(qr2_pre, cos, sin)], -1)
        k2f = torch.cat([k2, kr.expand(b, k2.shape[1], t, g.dr)], -1)
    else:
        q2f, k2f = q2, k2
    o = diff_attention_reference(q1f, k1f, q2f, k2f, v, lam, g.scale1, g.scale2)
    return o.transpose(1, 2)
