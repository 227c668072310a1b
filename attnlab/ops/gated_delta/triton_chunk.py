"""Chunked gated delta rule with attnlab's Triton kernels (``impl="triton"``).

Same contract and chunk algebra as ``chunked.py`` (see its docstring), every step in Triton
(``triton_kernels.py``), as ONE custom op ``attnlab::gdn_triton`` with a hand-written backward
``attnlab::gdn_triton_bwd`` (so ``torch.compile`` traces around it):

forward  ``_wy_fwd``    per (chunk, batch*head): gam = cumsum g, L, Ti = (I + L)^-1 by forward
                        substitution (float32), w = Ti diag(beta e^gam) K, u = Ti diag(beta) V;
         ``_fwd_h``     the sequential recurrence over chunks, one program per (batch*head, value
                        tile), state in registers; stores each chunk's start state and vn = u - w S;
         ``_fwd_o``     outputs, per (value tile, chunk, batch*head);
backward ``_bwd_dv_local``, ``_bwd_dh`` (reverse recurrence of dS, chunks in reverse),
         ``_bwd_dqkw`` (dq, dk, dw, d gam per chunk) and ``_wy_bwd`` (the UT transform's backward,
         dk, dv, dbeta and dg).

So fwd+bwd is 7 kernel launches whatever T (the PyTorch chunked path launches two small matmuls
per chunk plus ~120 batched ops). Matmuls run in the input dtype with float32 accumulation (bf16
on GPU), the UT transform in float32 (TF32 matmuls for half inputs); the state is float32
(``final``); per-chunk states are kept in the input dtype for the backward.
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


def _stages(t: Tensor, bk: int) -> int:
    """Software-pipelining depth of the sequential kernels: 3 fits shared memory for 16-bit
    inputs up to head dim 128; float32 (or larger tiles) needs fewer (H100: 232 KB per block)."""
    row_bytes = t.element_size() * bk
    return 3 if row_bytes <= 256 else 2 if row_bytes <= 512 else 1


def _bv_seq(bh: int, dv: int, bk: int, device) -> int:
    """Value tile of the sequential kernels: small enough to fill the GPU at small batch*heads."""
    bv = min(_pow2(dv), 64 if bk <= 64 else 32)
    if device.type == "cuda":
        sms = torch.cuda.get_device_properties(device).multi_processor_count
        while bv > 16 and bh * triton.cdiv(dv, bv) < sms:
            bv //= 2
    return max(bv, 16)


def _core_fwd(q, k, w, u, g, gam, gk, h0, scale, chunk):
    """Sequential recurrence + outputs -> (o, final f32, states, vn)."""
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
                                         num_warps=4 if bk * bv <= 4096 else 8, num_stages=_stages(q, bk))
    o = torch.empty_like(u, dtype=q.dtype)
    bvo = min(_pow2(dv), 64)
    tk._fwd_o[(triton.cdiv(dv, bvo), n, bh)](q, k, gam, g, states, vn, o, scale, t, n, K=dk, V=dv, C=chunk,
                                             BK=bk, BV=bvo, PREC=prec, num_warps=4)
    return o, final, states, vn


def _core_bwd(q, k, w, g, gam, gk, states, vn, do, dfinal, scale, chunk):
    """-> (dq, dk_core f32, dw f32, du f32, dgam, dgk, dh0)."""
    bh, t, dk, dv, n = _dims(q, vn, chunk)
    bk = max(_pow2(dk), 16)
    prec = _prec(q)
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
                                          PREC=prec, num_warps=4 if bk * bv <= 4096 else 8, num_stages=_stages(q, bk))
    bk2 = min(bk, 64)
    nk = triton.cdiv(dk, bk2)
    f32 = torch.float32
    dq = torch.empty_like(q)
    dkc, dw = torch.empty_like(k, dtype=f32), torch.empty_like(w, dtype=f32)
    dg = torch.empty(nk, bh, t, device=q.device, dtype=f32)
    dgk = torch.empty_like(dg)
    tk._bwd_dqkw[(nk, n, bh)](q, k, gam, g, gk, states, gs, vn, do, dvn, dq, dkc, dw, dg, dgk, scale, t, n, bh * t,
                              K=dk, V=dv, C=chunk, BK=bk2, BV=min(_pow2(dv), 64), PREC=prec, num_warps=4)
    if nk > 1:
        dg, dgk = dg.sum(0), dgk.sum(0)
    return dq, dkc, dw, dvn, dg.view(bh, t), dgk.view(bh, t), dh0


@torch.library.custom_op("attnlab::gdn_triton", mutates_args=())
def gdn_triton(q: Tensor, k: Tensor, v: Tensor, g: Tensor, beta: Tensor, h0: Tensor | None, scale: float,
               chunk: int) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """q, k [BH, T, K], v [BH, T, V] (T a multiple of chunk), g, beta [BH, T] float32,
    h0 [BH, K, V] float32 or None -> (o [BH, T, V], final [BH, K, V] float32, and for the backward:
    w, Ti [BH, T, C] f32, gam, gk [BH, T] f32, states [BH, N, K, V], vn [BH, T, V])."""
    bh, t, dk, dv, n = _dims(q, v, chunk)
    bk = max(_pow2(dk), 16)
    w = torch.empty_like(k)
    u = torch.empty_like(v, dtype=q.dtype)
    ti = q.new_empty(bh, t, chunk, dtype=torch.float32)
    gam = torch.empty_like(g)
    gk = torch.empty_like(g)
    tk._wy_fwd[(n, bh)](k, v, beta, g, w, u, ti, gam, gk, t, K=dk, V=dv, C=chunk, BK=bk,
                        BV=min(_pow2(dv), 64), PREC=_prec(q), num_warps=4 if bk <= 64 else 8)
    o, final, states, vn = _core_fwd(q, k, w, u, g, gam, gk, h0, scale, chunk)
    return o, final, w, ti, gam, gk, states, vn


@gdn_triton.register_fake
def _(q, k, v, g, beta, h0, scale, chunk):
    bh, t, dk, dv, n = _dims(q, v, chunk)
    f32 = torch.float32
    return (q.new_empty(bh, t, dv), q.new_empty(bh, dk, dv, dtype=f32), torch.empty_like(k),
            q.new_empty(bh, t, chunk, dtype=f32), torch.empty_like(g), torch.empty_like(g),
            q.new_empty(bh, n, dk, dv), q.new_empty(bh, t, dv))


@torch.library.custom_op("attnlab::gdn_triton_bwd", mutates_args=())
def gdn_triton_bwd(q: Tensor, k: Tensor, v: Tensor, g: Tensor, beta: Tensor, w: Tensor, ti: Tensor, gam: Tensor,
                   gk: Tensor, states: Tensor, vn: Tensor, do: Tensor, dfinal: Tensor | None, scale: float,
                   chunk: int) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """-> (dq, dk, dv, dg, dbeta, dh0)."""
    bh, t, dk, dv, n = _dims(q, v, chunk)
    bk = max(_pow2(dk), 16)
    do = do.contiguous()
    dq, dkc, dw, du, dgam, dgk, dh0 = _core_bwd(q, k, w, g, gam, gk, states, vn, do, dfinal, scale, chunk)
    dkk = torch.empty_like(k)
    dvv = torch.empty_like(v)
    dg = torch.empty_like(g)
    db = torch.empty_like(g)
    tk._wy_bwd[(n, bh)](k, v, beta, g, ti, dw, du, dkc, dgam, dgk, dkk, dvv, db, dg, t, K=dk, V=dv, C=chunk,
                        BK=bk, BV=min(_pow2(dv), 64), PREC=_prec(q), num_warps=4 if bk <= 64 else 8)
    return dq, dkk, dvv, dg, db, dh0


@gdn_triton_bwd.register_fake
def _(q, k, v, g, beta, w, ti, gam, gk, states, vn, do, dfinal, scale, chunk):
    bh, t, dk, dv, n = _dims(q, v, chunk)
    return (torch.empty_like(q), torch.empty_like(k), torch.empty_like(v), torch.empty_like(g),
            torch.empty_like(g), q.new_empty(bh, dk, dv, dtype=torch.float32))


def _setup(ctx, inputs, output):
    q, k, v, g, beta, h0, scale, chunk = inputs
    o, final, w, ti, gam, gk, states, vn = output
    ctx.save_for_backward(q, k, v, g, beta, w, ti, gam, gk, states, vn)
    ctx.scale, ctx.chunk, ctx.has_h0 = scale, chunk, h0 is not None


def _backward(ctx, do, dfinal, *_unused):
    q, k, v, g, beta, w, ti, gam, gk, states, vn = ctx.saved_tensors
    if do is None:
        do = torch.zeros(vn.shape, device=vn.device, dtype=q.dtype)
    dq, dk, dv, dg, db, dh0 = gdn_triton_bwd(q, k, v, g, beta, w, ti, gam, gk, states, vn, do.to(q.dtype),
                                             dfinal, ctx.scale, ctx.chunk)
    return dq, dk, dv, dg, db, (dh0 if ctx.has_h0 else None), None, None


gdn_triton.register_autograd(_backward, setup_context=_setup)


def chunk_gated_delta_rule_triton(q: Tensor, k: Tensor, v: Tensor, g: Tensor, beta: Tensor,
                                  scale: float | None = None, initial_state: Tensor | None = None,
                                  output_final_state: bool = False, chunk_size: int = 64):
    """Same contract as ``chunk_gated_delta_rule_torch`` (layout [B, H, T, D]).

    Returns (o [B, H, T, V] in q's dtype, final state [B, H, K, V] float32 or None)."""
    b, h, t, dk = q.shape
    dv = v.shape[-1]
    scale = dk ** -0.5 if scale is None else scale
    if t == 0:  # nothing to launch: no output, the state passes through
        s = (torch.zeros(b, h, dk, dv, device=q.device, dtype=torch.float32) if initial_state is None
             else initial_state.to(torch.float32))
        return q.new_zeros(b, h, 0, dv), (s if output_final_state else None)
    c = max(chunk_size, 16)  # tl.dot needs tiles of >= 16 rows; any power of two >= 16 is exact
    pad = (-t) % c
    if pad:  # padded tokens have k = 0, beta = 0, g = 0: they leave the state unchanged
        q, k, v = (torch.nn.functional.pad(x, (0, 0, 0, pad)) for x in (q, k, v))
        g, beta = (torch.nn.functional.pad(x, (0, pad)) for x in (g, beta))
    tp = t + pad
    bh, f32 = b * h, torch.float32
    v = v.to(q.dtype)
    flat = lambda x, d: x.reshape(bh, tp, d).contiguous()  # noqa: E731
    h0 = None if initial_state is None else initial_state.reshape(bh, dk, dv).to(f32).contiguous()
    o, final, *_ = gdn_triton(flat(q, dk), flat(k.to(q.dtype), dk), flat(v, dv),
                              g.reshape(bh, tp).to(f32).contiguous(), beta.reshape(bh, tp).to(f32).contiguous(),
                              h0, float(scale), c)
    o = o.reshape(b, h, tp, dv)[:, :, :t]
    return o, (final.reshape(b, h, dk, dv) if output_final_state else None)
