"""Triton decode kernel for the spectral KV cache (one query token per sequence).

Split-K ("flash-decoding") layout: program (b*Hk + h, s) handles either a range of compressed
blocks of kv head h, or a chunk of the exact hot tokens, for all G query heads of that kv head at
once (GQA folded into the rows of the tile, K/V never repeated). Per compressed block:

    qb  = q @ B_K^T                      [G, rk]   query projected into the block's key basis
    s   = (qb @ C_K^T) * scale_K         [G, tile] scores over int8 coefficients, per-row scales
    online softmax (running max m, sum l)
    pc += (p * scale_V) @ C_V            [G, rv]   aggregation in coefficient space
    acc += pc @ B_V                      [G, dv]   once per block

A second small kernel merges the splits by log-sum-exp. Ranks and head dims are padded to powers
of two >= 16 (masked loads), so any rank <= head dim works.
"""

from __future__ import annotations

import functools
import math

import torch

try:
    import triton
    import triton.language as tl

    HAS_TRITON = True
except ImportError:  # pragma: no cover - CPU users without triton
    HAS_TRITON = False

from .reference import KERNEL_TILE, next_pow2


def _p2(x: int) -> int:
    return max(16, next_pow2(x))


if HAS_TRITON:

    @triton.jit
    def _spectral_decode_split(
        Q, CK, SK, BK, CV, SV, BV, HKP, HVP, PM, PL, PACC,
        n_blocks, nb_cap, hot_len, hot_cap, blocks_per_split, n_comp_splits, n_splits, qk_scale,
        HKV: tl.constexpr, G: tl.constexpr, GP: tl.constexpr,
        D: tl.constexpr, DP: tl.constexpr, DV: tl.constexpr, DVP: tl.constexpr,
        RK: tl.constexpr, RKP: tl.constexpr, RV: tl.constexpr, RVP: tl.constexpr,
        BS: tl.constexpr, BT: tl.constexpr, HOT_PER_SPLIT: tl.constexpr,
        QUANT: tl.constexpr, PREC: tl.constexpr,
    ):
        pid_bh = tl.program_id(0)
        pid_s = tl.program_id(1)
        b = pid_bh // HKV
        h = pid_bh % HKV

        offs_g = tl.arange(0, GP)
        offs_d = tl.arange(0, DP)
        offs_dv = tl.arange(0, DVP)
        offs_t = tl.arange(0, BT)
        gmask = offs_g < G
        dmask = offs_d < D
        dvmask = offs_dv < DV

        q_rows = (b * HKV + h) * G + offs_g
        q = tl.load(Q + q_rows[:, None] * D + offs_d[None, :], mask=gmask[:, None] & dmask[None, :], other=0.0)
        q = q.to(tl.float32) * qk_scale  # qk_scale includes log2(e): exp2 below

        m_i = tl.full([GP], -1.0e30, tl.float32)
        l_i = tl.zeros([GP], tl.float32)
        acc = tl.zeros([GP, DVP], tl.float32)

        if pid_s < n_comp_splits:
            offs_rk = tl.arange(0, RKP)
            offs_rv = tl.arange(0, RVP)
            rkmask = offs_rk < RK
            rvmask = offs_rv < RV
            n0 = pid_s * blocks_per_split
            n1 = tl.minimum(n0 + blocks_per_split, n_blocks)
            for n in range(n0, n1):
                blk = (b * HKV + h) * nb_cap + n
                bk = tl.load(BK + blk * (RK * D) + offs_rk[:, None] * D + offs_d[None, :],
                             mask=rkmask[:, None] & dmask[None, :], other=0.0).to(tl.float32)
                qb = tl.dot(q, tl.trans(bk), input_precision=PREC)  # [GP, RKP]
                pc = tl.zeros([GP, RVP], tl.float32)
                for t0 in range(0, BS, BT):
                    tok = blk * BS + t0 + offs_t
                    ck = tl.load(CK + tok[:, None] * RK + offs_rk[None, :], mask=rkmask[None, :], other=0)
                    s = tl.dot(qb, tl.trans(ck.to(tl.float32)), input_precision=PREC)  # [GP, BT]
                    if QUANT:
                        s = s * tl.load(SK + tok)[None, :]
                    m_new = tl.maximum(m_i, tl.max(s, 1))
                    alpha = tl.exp2(m_i - m_new)
                    p = tl.exp2(s - m_new[:, None])
                    l_i = l_i * alpha + tl.sum(p, 1)
                    if QUANT:
                        p = p * tl.load(SV + tok)[None, :]
                    cv = tl.load(CV + tok[:, None] * RV + offs_rv[None, :], mask=rvmask[None, :], other=0)
                    pc = pc * alpha[:, None] + tl.dot(p, cv.to(tl.float32), input_precision=PREC)
                    acc = acc * alpha[:, None]
                    m_i = m_new
                bv = tl.load(BV + blk * (RV * DV) + offs_rv[:, None] * DV + offs_dv[None, :],
                             mask=rvmask[:, None] & dvmask[None, :], other=0.0).to(tl.float32)
                acc += tl.dot(pc, bv, input_precision=PREC)
        else:
            j0 = (pid_s - n_comp_splits) * HOT_PER_SPLIT
            j1 = tl.minimum(j0 + HOT_PER_SPLIT, hot_len)
            row0 = (b * HKV + h) * hot_cap
            for j in range(j0, j1, BT):
                tok = j + offs_t
                tmask = tok < j1
                k = tl.load(HKP + (row0 + tok)[:, None] * D + offs_d[None, :],
                            mask=tmask[:, None] & dmask[None, :], other=0.0).to(tl.float32)
                s = tl.dot(q, tl.trans(k), input_precision=PREC)
                s = tl.where(tmask[None, :], s, float("-inf"))
                m_new = tl.maximum(m_i, tl.max(s, 1))
                alpha = tl.exp2(m_i - m_new)
                p = tl.exp2(s - m_new[:, None])
                l_i = l_i * alpha + tl.sum(p, 1)
                v = tl.load(HVP + (row0 + tok)[:, None] * DV + offs_dv[None, :],
                            mask=tmask[:, None] & dvmask[None, :], other=0.0).to(tl.float32)
                acc = acc * alpha[:, None] + tl.dot(p, v, input_precision=PREC)
                m_i = m_new

        part = pid_bh * n_splits + pid_s
        tl.store(PM + part * GP + offs_g, m_i)
        tl.store(PL + part * GP + offs_g, l_i)
        tl.store(PACC + (part * GP + offs_g)[:, None] * DVP + offs_dv[None, :], acc)

    @triton.jit
    def _spectral_decode_merge(
        PM, PL, PACC, O, n_splits,
        HKV: tl.constexpr, G: tl.constexpr, GP: tl.constexpr, DV: tl.constexpr, DVP: tl.constexpr,
    ):
        pid_bh = tl.program_id(0)
        b = pid_bh // HKV
        h = pid_bh % HKV
        offs_g = tl.arange(0, GP)
        offs_dv = tl.arange(0, DVP)
        m = tl.full([GP], -1.0e30, tl.float32)
        for s in range(0, n_splits):
            m = tl.maximum(m, tl.load(PM + (pid_bh * n_splits + s) * GP + offs_g))
        l = tl.zeros([GP], tl.float32)
        acc = tl.zeros([GP, DVP], tl.float32)
        for s in range(0, n_splits):
            part = pid_bh * n_splits + s
            w = tl.exp2(tl.load(PM + part * GP + offs_g) - m)
            l += w * tl.load(PL + part * GP + offs_g)
            acc += w[:, None] * tl.load(PACC + (part * GP + offs_g)[:, None] * DVP + offs_dv[None, :])
        o = acc / l[:, None]
        rows = (b * HKV + h) * G + offs_g
        mask = (offs_g < G)[:, None] & (offs_dv < DV)[None, :]
        tl.store(O + rows[:, None] * DV + offs_dv[None, :], o.to(O.dtype.element_ty), mask=mask)


@functools.lru_cache(maxsize=None)
def _num_sms_cuda(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def _num_sms(device: torch.device) -> int:
    if device.type == "cuda":
        return _num_sms_cuda(device.index if device.index is not None else torch.cuda.current_device())
    return 2


def spectral_decode(q: torch.Tensor, ck, sk, bk, cv, sv, bv, n_blocks: int, hot_k: torch.Tensor,
                    hot_v: torch.Tensor, hot_len: int, scale: float | None = None, *,
                    block_tile: int | None = None, hot_per_split: int = 256,
                    splits_per_sm: int = 2, num_warps: int = 4) -> torch.Tensor:
    """Decode attention of q [B, Hq, 1, d] over a spectral cache's buffers.

    ck [B, Hk, NBcap, bs, rk] int8 (or float when sk is None), sk [B, Hk, NBcap, bs] float32,
    bk [B, Hk, NBcap, rk, d]; cv/sv/bv likewise for values; the first n_blocks blocks are used.
    hot_k/hot_v [B, Hk, hot_cap, d] hold hot_len exact tokens after the blocks.
    Returns [B, Hq, 1, dv] in q's dtype.
    """
    if not HAS_TRITON:
        raise RuntimeError("the spectral decode kernel needs triton (pip install triton)")
    b, hq, t, d = q.shape
    if t != 1:
        raise ValueError(f"spectral_decode takes one query token; got {t}")
    _, hk, nb_cap, bs, rk = ck.shape
    rv, dv = cv.shape[-1], bv.shape[-1]
    hot_cap = hot_k.shape[2]
    g = hq // hk
    quant = sk is not None
    for name, x in (("ck", ck), ("bk", bk), ("cv", cv), ("bv", bv), ("hot_k", hot_k), ("hot_v", hot_v)):
        if not x.is_contiguous():
            raise ValueError(f"spectral_decode: {name} must be contiguous")
    if bs % KERNEL_TILE:
        raise ValueError(f"block_size {bs} must be a multiple of the kernel tile {KERNEL_TILE}")
    bt = block_tile or next(c for c in (64, 32, 16) if bs % c == 0)
    if bs % bt or bt % KERNEL_TILE:
        raise ValueError(f"block_tile {bt} must divide block_size {bs} and be a multiple of {KERNEL_TILE}")
    scale = d**-0.5 if scale is None else scale
    qc = q.reshape(b, hq, d).contiguous()
    gp, dp, dvp = _p2(g), _p2(d), _p2(dv)

    n_bh = b * hk
    want = max(1, math.ceil(splits_per_sm * _num_sms(q.device) / n_bh))
    bps = max(1, math.ceil(n_blocks / want)) if n_blocks else 1
    n_comp = math.ceil(n_blocks / bps) if n_blocks else 0
    n_hot = math.ceil(hot_len / hot_per_split)
    n_splits = max(1, n_comp + n_hot)

    dev = q.device
    n_part = n_bh * n_splits * gp
    work = torch.empty(n_part * (2 + dvp), device=dev, dtype=torch.float32)  # one allocation
    pm, pl, pacc = work[:n_part], work[n_part:2 * n_part], work[2 * n_part:]
    dummy = pm  # placeholder pointer when unquantized
    prec = "ieee" if q.dtype == torch.float32 else "tf32"
    _spectral_decode_split[(n_bh, n_splits)](
        qc, ck, sk if quant else dummy, bk, cv, sv if quant else dummy, bv, hot_k, hot_v, pm, pl, pacc,
        n_blocks, nb_cap, hot_len, hot_cap, bps, n_comp, n_splits, scale * 1.4426950408889634,
        HKV=hk, G=g, GP=gp, D=d, DP=dp, DV=dv, DVP=dvp, RK=rk, RKP=_p2(rk), RV=rv, RVP=_p2(rv),
        BS=bs, BT=bt, HOT_PER_SPLIT=hot_per_split, QUANT=quant, PREC=prec, num_warps=num_warps,
    )
    out = torch.empty(b, hq, 1, dv, device=dev, dtype=q.dtype)
    _spectral_decode_merge[(n_bh,)](pm, pl, pacc, out, n_splits, HKV=hk, G=g, GP=gp, DV=dv, DVP=dvp,
                                    num_warps=num_warps)
    return out
