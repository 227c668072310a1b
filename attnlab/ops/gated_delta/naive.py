"""Reference gated delta rule: the token-by-token recurrence (any device, float32 math).

Layout: q, k [B, H, T, K], v [B, H, T, V], g (log decay, <= 0) and beta [B, H, T], state [B, H, K, V].
For each token t:

    S <- exp(g_t) * S                              decay
    u  = beta_t * (v_t - S^T k_t)                  delta-rule correction (write strength beta_t)
    S <- S + k_t u^T                               i.e. S_t = a_t (I - b_t k_t k_t^T) S_{t-1} + b_t k_t v_t^T
    o_t = S^T (scale * q_t)

This is the paper's S_t = a_t S_{t-1} (I - b_t k_t k_t^T) + b_t v_t k_t^T written for S^T (K x V).
"""

from __future__ import annotations

import torch


def naive_gated_delta_rule(q, k, v, g, beta, scale=None, initial_state=None, output_final_state=False):
    """Returns (o [B, H, T, V] in q's dtype, final state [B, H, K, V] float32 or None)."""
    b, h, t, dk = q.shape
    dv = v.shape[-1]
    scale = dk ** -0.5 if scale is None else scale
    ct = torch.promote_types(q.dtype, torch.float32)  # float32 math (float64 stays float64)
    qf, kf, vf, gf, bf = (x.to(ct) for x in (q, k, v, g, beta))
    s = (torch.zeros(b, h, dk, dv, device=q.device, dtype=ct) if initial_state is None
         else initial_state.to(ct))
    outs = []
    for i in range(t):
        s = s * gf[:, :, i, None, None].exp()
        ki = kf[:, :, i]
        u = bf[:, :, i, None] * (vf[:, :, i] - torch.einsum("bhk,bhkv->bhv", ki, s))
        s = s + ki[..., :, None] * u[..., None, :]
        outs.append(torch.einsum("bhk,bhkv->bhv", qf[:, :, i] * scale, s))
    o = torch.stack(outs, dim=2).to(q.dtype) if outs else q.new_zeros(b, h, 0, dv)
    return o, (s if output_final_state else None)
