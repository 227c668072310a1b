"""Chunked gated delta rule in plain PyTorch: WY/UT form inside chunks, recurrence across chunks.

The portable path (CPU, and GPUs where fla cannot run). Split the sequence into chunks of C
tokens. Inside a chunk, with gamma_i = sum_{j<=i} g_j (local cumulative log decay), Gamma_i =
exp(gamma_i) and S_0 the state at the chunk start, the delta-rule corrections
u_i = beta_i (v_i - exp(g_i) S_{i-1}^T k_i) satisfy a unit-lower-triangular system

    (I + A) U = diag(beta) V - diag(beta Gamma) K S_0,   A_ij = beta_i exp(gamma_i - gamma_j) k_i.k_j  (j < i)

so U = U' - W S_0 with the UT-transform terms W = (I+A)^-1 diag(beta Gamma) K and
U' = (I+A)^-1 diag(beta) V, which do not depend on S_0: they are computed for all chunks at once
(batched matmuls and one batched triangular solve). Then

    O     = diag(Gamma) Q S_0 + (Q K^T * D) U              D_ij = exp(gamma_i - gamma_j), j <= i
    S_C   = Gamma_C S_0 + (K * exp(gamma_C - gamma))^T U

Only the state depends on the previous chunk: S_C = M S_0 + B with M = Gamma_C I - K_d^T W and
B = K_d^T U' (K_d = K * exp(gamma_C - gamma)), both built for all chunks at once.
``chunk_scan`` runs that recurrence, one batched matmul per chunk, as an opaque custom op
(torch.compile traces around it and never unrolls the loop) with a hand-written backward loop of
one batched matmul per chunk. Everything else is
batched over chunks and differentiated by autograd. All math is float32 whatever the input dtype
(bf16 inputs are upcast; the output is cast back). Decay ratios exp(gamma_i - gamma_j) come
from segment sums, not differences of cumulative sums, which keeps the gate gradients accurate
under strong decay.
"""

from __future__ import annotations

import torch
from torch import Tensor


# --------------------------------------------------------------------------------------------
# The cross-chunk recurrence, folded into one affine map per chunk:
#   S_{n+1} = gc_n S_n + kd_n^T (u_n - w_n S_n) = M_n S_n + B_n,
#   M_n = gc_n I - kd_n^T w_n  [K, K],   B_n = kd_n^T u_n  [K, V]
# (M and B are built for all chunks at once). Layout chunk-major: m [N, BH, K, K],
# b [N, BH, K, V], s0 [BH, K, V] -> states [N+1, BH, K, V] (states[0] = s0). One batched matmul
# per chunk forward, one per chunk backward.
# --------------------------------------------------------------------------------------------
@torch.library.custom_op("attnlab::gdn_chunk_scan", mutates_args=())
def chunk_scan(m: Tensor, b: Tensor, s0: Tensor) -> Tensor:
    n = m.shape[0]
    states = s0.new_empty((n + 1,) + tuple(s0.shape))
    states[0].copy_(s0)
    ms, bs, ss = m.unbind(0), b.unbind(0), states.unbind(0)
    for i in range(n):
        torch.baddbmm(bs[i], ms[i], ss[i], out=ss[i + 1])
    return states


@chunk_scan.register_fake
def _(m, b, s0):
    return s0.new_empty((m.shape[0] + 1,) + tuple(s0.shape))


@torch.library.custom_op("attnlab::gdn_chunk_scan_bwd", mutates_args=())
def chunk_scan_bwd(m: Tensor, states: Tensor, d_states: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    n = m.shape[0]
    ds = torch.empty_like(states)  # ds[i] = dL/d states[i], through every later state
    ds[n].copy_(d_states[n])
    mts, dsi, dsl = m.transpose(-1, -2).unbind(0), d_states.unbind(0), ds.unbind(0)
    for i in range(n - 1, -1, -1):
        torch.baddbmm(dsi[i], mts[i], dsl[i + 1], out=dsl[i])
    dm = ds[1:] @ states[:n].transpose(-1, -2)
    return dm, ds[1:].clone(), ds[0].clone()


@chunk_scan_bwd.register_fake
def _(m, states, d_states):
    return (torch.empty_like(m), states.new_empty((m.shape[0],) + tuple(states.shape[1:])),
            states.new_empty(states.shape[1:]))


def _setup(ctx, inputs, output):
    m, b, s0 = inputs
    ctx.save_for_backward(m, output)


def _backward(ctx, d_states):
    m, states = ctx.saved_tensors
    return chunk_scan_bwd(m, states, d_states.contiguous())


chunk_scan.register_autograd(_backward, setup_context=_setup)


# --------------------------------------------------------------------------------------------
def _masks(c: int, device):
    idx = torch.arange(c, device=device)
    incl = idx[:, None] >= idx[None, :]
    return incl, idx[:, None] > idx[None, :]


def chunk_gated_delta_rule_torch(q: Tensor, k: Tensor, v: Tensor, g: Tensor, beta: Tensor,
                                 scale: float | None = None, initial_state: Tensor | None = None,
                                 output_final_state: bool = False, chunk_size: int = 64):
    """Same contract as ``naive_gated_delta_rule`` (layout [B, H, T, D]); chunk_size a power of 2.

    Returns (o [B, H, T, V] in q's dtype, final state [B, H, K, V] float32 or None)."""
    b, h, t, dk = q.shape
    dv = v.shape[-1]
    scale = dk ** -0.5 if scale is None else scale
    c = chunk_size
    pad = (-t) % c
    if pad:  # padded tokens have k = 0, beta = 0, g = 0: they leave the state unchanged
        q, k, v = (torch.nn.functional.pad(x, (0, 0, 0, pad)) for x in (q, k, v))
        g, beta = (torch.nn.functional.pad(x, (0, pad)) for x in (g, beta))
    n = (t + pad) // c
    bh = b * h
    f32 = torch.float32

    def chunked(x):  # [B, H, T, D] -> [N, BH, C, D] float32, contiguous
        return x.reshape(bh, n, c, x.shape[-1]).transpose(0, 1).to(f32).contiguous()

    qc, kc, vc = chunked(q), chunked(k), chunked(v)
    gc_ = g.reshape(bh, n, c).transpose(0, 1).to(f32)                     # [N, BH, C]
    gcum = gc_.cumsum(-1)                                                  # local gamma_i
    grev = gc_.flip(-1).cumsum(-1).flip(-1) - gc_                          # gamma_C - gamma_i
    bc = beta.reshape(bh, n, c).transpose(0, 1).to(f32)                   # [N, BH, C]
    incl, strict = _masks(c, q.device)
    # gamma_i - gamma_j as segment sums sum_{j<m<=i} g_m (not a difference of two large
    # cumulative sums: under strong decay that loses the gradient of g to cancellation)
    seg = gc_[..., :, None].expand(*gc_.shape, c).masked_fill(~strict, 0.0).cumsum(-2)
    decay = torch.exp(seg.masked_fill(~incl, float("-inf")))              # 0 above the diagonal
    a = (kc @ kc.transpose(-1, -2)) * decay * bc[..., :, None]
    a = a.masked_fill(~strict, 0.0)
    gam = gcum.exp()
    rhs = torch.cat([kc * (bc * gam)[..., None], vc * bc[..., None]], dim=-1)
    sol = torch.linalg.solve_triangular(a, rhs, upper=False, unitriangular=True)
    w, u = sol.split([dk, dv], dim=-1)
    kd = kc * torch.exp(grev)[..., None]
    s0 = (torch.zeros(bh, dk, dv, device=q.device, dtype=f32) if initial_state is None
          else initial_state.reshape(bh, dk, dv).to(f32))
    kdt = kd.transpose(-1, -2)
    eye = torch.eye(dk, device=q.device, dtype=f32)
    m = gcum[..., -1, None, None].exp() * eye - kdt @ w                  # [N, BH, K, K]
    states = chunk_scan(m, kdt @ u, s0)                                   # [N+1, BH, K, V]
    un = u - w @ states[:n]                                               # corrections U
    qs = qc * scale
    p = (qs @ kc.transpose(-1, -2)) * decay
    o = (qs * gam[..., None]) @ states[:n] + p @ un                       # [N, BH, C, V]
    o = o.transpose(0, 1).reshape(b, h, n * c, dv)[:, :, :t].to(q.dtype)
    final = states[n].reshape(b, h, dk, dv) if output_final_state else None
    return o, final
