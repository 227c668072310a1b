"""Chunked gated delta rule with attnlab's Triton kernels (``impl="triton"``).

Same contract and chunk algebra as ``chunked.py`` (see its docstring), split differently:

- chunk-local part in batched PyTorch (autograd): gam = local cumulative log decay, the UT
  transform (I + A)^-1 with A_ij = beta_i e^(gam_i - gam_j) k_i.k_j (j < i) by one batched
  triangular solve, w = (I + A)^-1 diag(beta e^gam) K, u = (I + A)^-1 diag(beta) V;
- the rest in Triton (``triton_kernels.py``), as the custom op ``attnlab::gdn_triton_fwd`` with a
  hand-written backward ``attnlab::gdn_triton_bwd``: the sequential state recurrence over chunks
  (state in registers, one program per (batch*head, value tile)), the outputs, and in the
  backward the reverse recurrence of dS plus the parallel dq/dk/dw/d gam kernel.

So a forward is 2 Triton launches plus ~25 batched PyTorch ops whatever T (the PyTorch chunked
path launches two small matmuls per chunk). Inputs of any float dtype: the solve is float32,
w and u are cast to the input dtype, the kernels multiply in that dtype with float32
accumulation; the state is float32 (``final``), the per-chunk states are kept in the input dtype
for the backward.
"""

from __future__ import annotations

import torch
import triton
from torch import Tensor

from . import triton_kernels as tk


def _pow2(x: int) -> int:
    return 1 << (max(int(x), 1) - 1).bit_length()


def _prec(t: Tensor) -> str:
    return "ieee" if t.dtype == torch.float32 else "tf32"


def _dims(q, u, chunk):
    bh, t, dk = q.shape
    dv = u.shape[-1]
    return bh, t, dk, dv, t // chunk


def _bv_seq(bh: int, dv: int, bk: int, device) -> int:
    """Value tile of the sequential kernels: small enough to fill the GPU at small batch*heads."""
    bv = min(_pow2(dv), 64 if bk <= 64 else 32)
    if device.type == "cuda":
        sms = torch.cuda.get_device_properties(device).multi_processor_count
        while bv > 16 and bh * triton.cdiv(dv, bv) < sms:
            bv //= 2
    return max(bv, 16)


@torch.library.custom_op("attnlab::gdn_triton_fwd", mutates_args=())
def gdn_triton_fwd(q: Tensor, k: Tensor, w: Tensor, u: Tensor, g: Tensor, gam: Tensor, gk: Tensor,
                   h0: Tensor | None, scale: float, chunk: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """q, k, w [BH, T, K], u [BH, T, V], g (raw log decay), gam (its cumulative sum inside each
    chunk), gk (sum of g over the later tokens of the chunk) [BH, T] f32, h0 [BH, K, V] f32 or None ->
    (o [BH, T, V], final [BH, K, V] f32, states [BH, N, K, V], vn [BH, T, V])."""
    bh, t, dk, dv, n = _dims(q, u, chunk)
    bk = max(_pow2(dk), 16)
    states = q.new_empty(bh, n, dk, dv)
    vn = torch.empty_like(u)
    final = q.new_empty(bh, dk, dv, dtype=torch.float32)
    prec = _prec(q)
    bv = _bv_seq(bh, dv, bk, q.device)
    h0_ = h0.contiguous() if h0 is not None else final
    tk._fwd_h[(triton.cdiv(dv, bv), bh)](k, w, u, gam, gk, h0_, states, vn, final, t, n, K=dk, V=dv, C=chunk,
                                         BK=bk, BV=bv, HAS_H0=h0 is not None, PREC=prec,
                                         num_warps=4 if bk * bv <= 4096 else 8)
    o = torch.empty_like(u, dtype=q.dtype)
    bvo = min(_pow2(dv), 64)
    tk._fwd_o[(triton.cdiv(dv, bvo), n, bh)](q, k, gam, g, states, vn, o, scale, t, n, K=dk, V=dv, C=chunk,
                                             BK=bk, BV=bvo, PREC=prec, num_warps=4)
    return o, final, states, vn


@gdn_triton_fwd.register_fake
def _(q, k, w, u, g, gam, gk, h0, scale, chunk):
    bh, t, dk, dv, n = _dims(q, u, chunk)
    return (torch.empty_like(u, dtype=q.dtype), q.new_empty(bh, dk, dv, dtype=torch.float32),
            q.new_empty(bh, n, dk, dv), torch.empty_like(u))


@torch.library.custom_op("attnlab::gdn_triton_bwd", mutates_args=())
def gdn_triton_bwd(q: Tensor, k: Tensor, w: Tensor, g: Tensor, gam: Tensor, gk: Tensor, states: Tensor, vn: Tensor, do: Tensor,
                   dfinal: Tensor | None, scale: float, chunk: int
                   ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """-> (dq, dk, dw, du, dgam, dgk, dh0)."""
    bh, t, dk, dv, n = _dims(q, vn, chunk)
    bk = max(_pow2(dk), 16)
    prec = _prec(q)
    do = do.contiguous()
    bvl = min(_pow2(dv), 64)
    dvl = torch.empty(bh, t, dv, device=q.device, dtype=torch.float32)
    tk._bwd_dv_local[(triton.cdiv(dv, bvl), n, bh)](q, k, g, do, dvl, scale, t, K=dk, V=dv, C=chunk,
                                                    BK=bk, BV=bvl, PREC=prec, num_warps=4)
    gs = torch.empty_like(states)
    dvn = torch.empty_like(dvl)
    dh0 = q.new_empty(bh, dk, dv, dtype=torch.float32)
    bv = _bv_seq(bh, dv, bk, q.device)
    dfin = dfinal.contiguous() if dfinal is not None else dh0
    tk._bwd_dh[(triton.cdiv(dv, bv), bh)](q, k, w, gam, gk, do, dvl, dfin, gs, dvn, dh0, scale, t, n,
                                          K=dk, V=dv, C=chunk, BK=bk, BV=bv, HAS_DFIN=dfinal is not None,
                                          PREC=prec, num_warps=4 if bk * bv <= 4096 else 8)
    bk2 = min(bk, 64)
    nk = triton.cdiv(dk, bk2)
    dq, dkk, dw = torch.empty_like(q), torch.empty_like(k), torch.empty_like(w)
    dg = torch.empty(nk, bh, t, device=q.device, dtype=torch.float32)
    dgk = torch.empty_like(dg)
    tk._bwd_dqkw[(nk, n, bh)](q, k, gam, g, gk, states, gs, vn, do, dvn, dq, dkk, dw, dg, dgk, scale, t, n, bh * t,
                              K=dk, V=dv, C=chunk, BK=bk2, BV=min(_pow2(dv), 64), PREC=prec, num_warps=4)
    dg, dgk = dg.sum(0), dgk.sum(0)  # over K tiles (fresh tensors: op outputs must not be views)
    return dq, dkk, dw, dvn.to(vn.dtype), dg, dgk, dh0


@gdn_triton_bwd.register_fake
def _(q, k, w, g, gam, gk, states, vn, do, dfinal, scale, chunk):
    bh, t, dk, dv, n = _dims(q, vn, chunk)
    return (torch.empty_like(q), torch.empty_like(k), torch.empty_like(w), torch.empty_like(vn),
            gam.new_empty(bh, t), gam.new_empty(bh, t), q.new_empty(bh, dk, dv, dtype=torch.float32))


def _setup(ctx, inputs, output):
    q, k, w, u, g, gam, gk, h0, scale, chunk = inputs
    o, final, states, vn = output
    ctx.save_for_backward(q, k, w, g, gam, gk, states, vn)
    ctx.scale, ctx.chunk, ctx.has_h0 = scale, chunk, h0 is not None


def _backward(ctx, do, dfinal, _dstates, _dvn):
    q, k, w, g, gam, gk, states, vn = ctx.saved_tensors
    if do is None:
        do = torch.zeros(vn.shape, device=vn.device, dtype=q.dtype)
    dq, dk, dw, du, dgam, dgk, dh0 = gdn_triton_bwd(q, k, w, g, gam, gk, states, vn, do.to(q.dtype), dfinal,
                                                    ctx.scale, ctx.chunk)
    # g itself only feeds the in-kernel segment sums of D = e^(gam_i - gam_j): its gradient
    # flows through gam (and gk), of which it is the cumulative sum
    return dq, dk, dw, du, None, dgam, dgk, (dh0 if ctx.has_h0 else None), None, None


gdn_triton_fwd.register_autograd(_backward, setup_context=_setup)


def chunk_gated_delta_rule_triton(q: Tensor, k: Tensor, v: Tensor, g: Tensor, beta: Tensor,
                                  scale: float | None = None, initial_state: Tensor | None = None,
                                  output_final_state: bool = False, chunk_size: int = 64):
    """Same contract as ``chunk_gated_delta_rule_torch`` (layout [B, H, T, D]).

    Returns (o [B, H, T, V] in q's dtype, final state [B, H, K, V] float32 or None)."""
    b, h, t, dk = q.shape
    dv = v.shape[-1]
    scale = dk ** -0.5 if scale is None else scale
    c = max(chunk_size, 16)  # tl.dot needs tiles of >= 16 rows; any power of two >= 16 is exact
    pad = (-t) % c
    if pad:  # padded tokens have k = 0, beta = 0, g = 0: they leave the state unchanged
        q, k, v = (torch.nn.functional.pad(x, (0, 0, 0, pad)) for x in (q, k, v))
        g, beta = (torch.nn.functional.pad(x, (0, pad)) for x in (g, beta))
    tp = t + pad
    n, bh, f32 = tp // c, b * h, torch.float32
    dt = q.dtype
    qf = q.reshape(bh, tp, dk)
    kf = k.reshape(bh, tp, dk)
    kc = kf.view(bh, n, c, dk).to(f32)
    vc = v.reshape(bh, n, c, dv).to(f32)
    gc = g.reshape(bh, n, c).to(f32)
    bc = beta.reshape(bh, n, c).to(f32)
    gam = gc.cumsum(-1)
    # sum_{m>i} g_m inside the chunk (decay from token i to the chunk end), a cumulative sum of
    # the shifted gates from the end: no cancellation
    gk = torch.nn.functional.pad(gc[..., 1:], (0, 1)).flip(-1).cumsum(-1).flip(-1)
    idx = torch.arange(c, device=q.device)
    strict = idx[:, None] > idx[None, :]
    # gam_i - gam_j as segment sums (accurate gate gradients under strong decay, see chunked.py)
    seg = gc[..., :, None].expand(bh, n, c, c).masked_fill(~strict, 0.0).cumsum(-2)
    a = (kc @ kc.transpose(-1, -2)) * seg.exp() * bc[..., :, None]
    a = a.masked_fill(~strict, 0.0)
    rhs = torch.cat([kc * (bc * gam.exp())[..., None], vc * bc[..., None]], dim=-1)
    sol = torch.linalg.solve_triangular(a, rhs, upper=False, unitriangular=True)
    w, u = sol.split([dk, dv], dim=-1)
    w = w.reshape(bh, tp, dk).to(dt).contiguous()
    u = u.reshape(bh, tp, dv).to(dt).contiguous()
    h0 = None if initial_state is None else initial_state.reshape(bh, dk, dv).to(f32)
    flat = lambda x: x.reshape(bh, tp).contiguous()  # noqa: E731
    o, final, _, _ = gdn_triton_fwd(qf.contiguous(), kf.contiguous(), w, u, flat(gc.detach()), flat(gam), flat(gk),
                                    h0, float(scale), c)
    o = o.reshape(b, h, tp, dv)[:, :, :t]
    return o, (final.reshape(b, h, dk, dv) if output_final_state else None)
