"""Fused differential attention in Triton: forward and backward, causal, one launch per pass.

Each program owns a block of queries of one head and streams the K/V tiles once, keeping TWO
online-softmax states (signal: m1, l1, acc1; noise: m2, l2, acc2) that share every V tile:

    out = acc1 / l1 - lam_h * acc2 / l2

The CMD case (one noise head shared by all heads) passes head stride 0 for q2/k2, so the noise
head is read in place (never expanded); GQA maps query head h to key/value head h // group.

Backward (FlashAttention-2 style, recomputing both maps from the saved log-sum-exps):
with dP = dO V^T shared by both streams, Delta1 = rowsum(dO * o1), Delta2 = rowsum(dO * o2):

    dV  = (P1 - lam P2)^T dO
    dS1 = P1 * (dP - Delta1)          dS2 = -lam P2 * (dP - Delta2)
    dQi = scale_i dSi Ki,  dKi = scale_i dSi^T Qi,    dlam_h = -sum_t Delta2

One kernel accumulates dK1, dK2, dV per key block, another dQ1, dQ2 per query block. Gradients of
shared heads (GQA key/value heads, the CMD noise head) are written per query head and summed.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

LOG2E = 1.4426950408889634


@triton.jit
def _load_rows(base, offs_t, stride_t, offs_d, T, D: tl.constexpr, BD: tl.constexpr):
    ptrs = base + offs_t[:, None] * stride_t + offs_d[None, :]
    if D == BD:
        return tl.load(ptrs, mask=(offs_t < T)[:, None], other=0.0)
    return tl.load(ptrs, mask=(offs_t < T)[:, None] & (offs_d < D)[None, :], other=0.0)


@triton.jit
def _pair_online_softmax(s1, s2, v, offs_m, offs_n, m1, l1, acc1, m2, l2, acc2, MASK: tl.constexpr):
    """One key tile of both streams' online softmax (scores already scaled to log2 units),
    sharing the V tile: the step the generic and the latent forward kernels have in common."""
    if MASK:
        causal = offs_m[:, None] >= offs_n[None, :]
        s1 = tl.where(causal, s1, float("-inf"))
        s2 = tl.where(causal, s2, float("-inf"))
    m1n = tl.maximum(m1, tl.max(s1, 1))
    p1 = tl.math.exp2(s1 - m1n[:, None])
    a1 = tl.math.exp2(m1 - m1n)
    l1 = l1 * a1 + tl.sum(p1, 1)
    m2n = tl.maximum(m2, tl.max(s2, 1))
    p2 = tl.math.exp2(s2 - m2n[:, None])
    a2 = tl.math.exp2(m2 - m2n)
    l2 = l2 * a2 + tl.sum(p2, 1)
    acc1 = tl.dot(p1.to(v.dtype), v, acc1 * a1[:, None])
    acc2 = tl.dot(p2.to(v.dtype), v, acc2 * a2[:, None])
    return m1n, l1, acc1, m2n, l2, acc2


@triton.jit
def _fwd_step(q1, q2, k1_base, k2_base, v_base, sk1t, sk2t, svt, start_n, offs_m, T,
              m1, l1, acc1, m2, l2, acc2, qk1, qk2,
              D1: tl.constexpr, D2: tl.constexpr, DV: tl.constexpr,
              BD1: tl.constexpr, BD2: tl.constexpr, BDV: tl.constexpr,
              BN: tl.constexpr, MASK: tl.constexpr):
    offs_n = start_n + tl.arange(0, BN)
    k1 = _load_rows(k1_base, offs_n, sk1t, tl.arange(0, BD1), T, D1, BD1)
    k2 = _load_rows(k2_base, offs_n, sk2t, tl.arange(0, BD2), T, D2, BD2)
    v = _load_rows(v_base, offs_n, svt, tl.arange(0, BDV), T, DV, BDV)
    s1 = tl.dot(q1, tl.trans(k1)) * qk1
    s2 = tl.dot(q2, tl.trans(k2)) * qk2
    return _pair_online_softmax(s1, s2, v, offs_m, offs_n, m1, l1, acc1, m2, l2, acc2, MASK)


@triton.jit
def _diff_fwd_kernel(Q1, K1, Q2, K2, V, LAM, O, O2, LSE1, LSE2,
                     sq1b, sq1h, sq1t, sk1b, sk1h, sk1t, sq2b, sq2h, sq2t, sk2b, sk2h, sk2t,
                     svb, svh, svt, sob, soh, sot,
                     H, T, GROUP1, GROUP2, qk1, qk2,
                     D1: tl.constexpr, D2: tl.constexpr, DV: tl.constexpr,
                     BD1: tl.constexpr, BD2: tl.constexpr, BDV: tl.constexpr,
                     BM: tl.constexpr, BN: tl.constexpr):
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    offs_m = pid_m * BM + tl.arange(0, BM)
    q1 = _load_rows(Q1 + b * sq1b + h * sq1h, offs_m, sq1t, tl.arange(0, BD1), T, D1, BD1)
    q2 = _load_rows(Q2 + b * sq2b + h * sq2h, offs_m, sq2t, tl.arange(0, BD2), T, D2, BD2)
    k1_base = K1 + b * sk1b + (h // GROUP1) * sk1h
    v_base = V + b * svb + (h // GROUP1) * svh
    k2_base = K2 + b * sk2b + (h // GROUP2) * sk2h
    m1 = tl.full([BM], float("-inf"), tl.float32)
    m2 = tl.full([BM], float("-inf"), tl.float32)
    l1 = tl.zeros([BM], tl.float32)
    l2 = tl.zeros([BM], tl.float32)
    acc1 = tl.zeros([BM, BDV], tl.float32)
    acc2 = tl.zeros([BM, BDV], tl.float32)
    lo = pid_m * BM
    for start_n in range(0, lo, BN):  # key blocks entirely in the past: no mask
        m1, l1, acc1, m2, l2, acc2 = _fwd_step(
            q1, q2, k1_base, k2_base, v_base, sk1t, sk2t, svt, start_n, offs_m, T,
            m1, l1, acc1, m2, l2, acc2, qk1, qk2, D1, D2, DV, BD1, BD2, BDV, BN, False)
    for start_n in range(lo, tl.minimum(lo + BM, T), BN):  # the diagonal: causal mask
        m1, l1, acc1, m2, l2, acc2 = _fwd_step(
            q1, q2, k1_base, k2_base, v_base, sk1t, sk2t, svt, start_n, offs_m, T,
            m1, l1, acc1, m2, l2, acc2, qk1, qk2, D1, D2, DV, BD1, BD2, BDV, BN, True)
    lam = tl.load(LAM + h)
    o2 = acc2 / l2[:, None]
    out = acc1 / l1[:, None] - lam * o2
    offs_v = tl.arange(0, BDV)
    optr = b * sob + h * soh + offs_m[:, None] * sot + offs_v[None, :]
    omask = (offs_m < T)[:, None] & (offs_v < DV)[None, :]
    tl.store(O + optr, out.to(O.dtype.element_ty), mask=omask)
    tl.store(O2 + optr, o2.to(O2.dtype.element_ty), mask=omask)
    tl.store(LSE1 + bh * T + offs_m, m1 + tl.math.log2(l1), mask=offs_m < T)
    tl.store(LSE2 + bh * T + offs_m, m2 + tl.math.log2(l2), mask=offs_m < T)


@triton.jit
def _bwd_kv_step(k1, k2, v, dk1, dk2, dv, q1_base, q2_base, do_base, sq1t, sq2t, sdot,
                 LSE1, LSE2, DL1, DL2, row0, start_m, offs_n, T, lam, qk1, qk2,
                 DQ1, DQ2, scale1, scale2,
                 D1: tl.constexpr, D2: tl.constexpr, DV: tl.constexpr,
                 BD1: tl.constexpr, BD2: tl.constexpr, BDV: tl.constexpr,
                 BM: tl.constexpr, MASK: tl.constexpr, ATOMIC_DQ: tl.constexpr):
    offs_m = start_m + tl.arange(0, BM)
    q1 = _load_rows(q1_base, offs_m, sq1t, tl.arange(0, BD1), T, D1, BD1)
    q2 = _load_rows(q2_base, offs_m, sq2t, tl.arange(0, BD2), T, D2, BD2)
    do = _load_rows(do_base, offs_m, sdot, tl.arange(0, BDV), T, DV, BDV)
    rmask = offs_m < T
    lse1 = tl.load(LSE1 + row0 + offs_m, mask=rmask, other=float("inf"))
    lse2 = tl.load(LSE2 + row0 + offs_m, mask=rmask, other=float("inf"))
    dl1 = tl.load(DL1 + row0 + offs_m, mask=rmask, other=0.0)
    dl2 = tl.load(DL2 + row0 + offs_m, mask=rmask, other=0.0)
    p1t = tl.math.exp2(tl.dot(k1, tl.trans(q1)) * qk1 - lse1[None, :])  # [BN, BM]
    p2t = tl.math.exp2(tl.dot(k2, tl.trans(q2)) * qk2 - lse2[None, :])
    if MASK:
        causal = offs_m[None, :] >= offs_n[:, None]
        p1t = tl.where(causal, p1t, 0.0)
        p2t = tl.where(causal, p2t, 0.0)
    dv = tl.dot((p1t - lam * p2t).to(do.dtype), do, dv)
    dpt = tl.dot(v, tl.trans(do))
    ds1t = p1t * (dpt - dl1[None, :])
    ds2t = (-lam) * p2t * (dpt - dl2[None, :])
    ds1t = ds1t.to(q1.dtype)
    ds2t = ds2t.to(q2.dtype)
    dk1 = tl.dot(ds1t, q1, dk1)
    dk2 = tl.dot(ds2t, q2, dk2)
    if ATOMIC_DQ:  # dQ += dS K, accumulated across key blocks in float32 (no recompute pass)
        o1 = tl.arange(0, BD1)
        o2 = tl.arange(0, BD2)
        rm = (offs_m < T)[:, None]
        tl.atomic_add(DQ1 + (row0 + offs_m[:, None]) * D1 + o1[None, :], tl.dot(tl.trans(ds1t), k1) * scale1,
                      mask=rm & (o1 < D1)[None, :], sem="relaxed")
        tl.atomic_add(DQ2 + (row0 + offs_m[:, None]) * D2 + o2[None, :], tl.dot(tl.trans(ds2t), k2) * scale2,
                      mask=rm & (o2 < D2)[None, :], sem="relaxed")
    return dk1, dk2, dv


@triton.jit
def _diff_bwd_kv_kernel(Q1, K1, Q2, K2, V, LAM, DO, LSE1, LSE2, DL1, DL2, DK1, DK2, DV, DQ1, DQ2,
                        sq1b, sq1h, sq1t, sk1b, sk1h, sk1t, sq2b, sq2h, sq2t, sk2b, sk2h, sk2t,
                        svb, svh, svt, sdob, sdoh, sdot,
                        H, T, GROUP1, GROUP2, qk1, qk2, scale1, scale2,
                        D1: tl.constexpr, D2: tl.constexpr, DV_: tl.constexpr,
                        BD1: tl.constexpr, BD2: tl.constexpr, BDV: tl.constexpr,
                        BM: tl.constexpr, BN: tl.constexpr, ATOMIC_DQ: tl.constexpr):
    pid_n = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    start_n = pid_n * BN
    offs_n = start_n + tl.arange(0, BN)
    k1 = _load_rows(K1 + b * sk1b + (h // GROUP1) * sk1h, offs_n, sk1t, tl.arange(0, BD1), T, D1, BD1)
    k2 = _load_rows(K2 + b * sk2b + (h // GROUP2) * sk2h, offs_n, sk2t, tl.arange(0, BD2), T, D2, BD2)
    v = _load_rows(V + b * svb + (h // GROUP1) * svh, offs_n, svt, tl.arange(0, BDV), T, DV_, BDV)
    dk1 = tl.zeros([BN, BD1], tl.float32)
    dk2 = tl.zeros([BN, BD2], tl.float32)
    dv = tl.zeros([BN, BDV], tl.float32)
    lam = tl.load(LAM + h)
    q1_base = Q1 + b * sq1b + h * sq1h
    q2_base = Q2 + b * sq2b + h * sq2h
    do_base = DO + b * sdob + h * sdoh
    row0 = bh * T
    for start_m in range(start_n, start_n + BN, BM):  # query blocks on the diagonal
        dk1, dk2, dv = _bwd_kv_step(k1, k2, v, dk1, dk2, dv, q1_base, q2_base, do_base, sq1t, sq2t, sdot,
                                    LSE1, LSE2, DL1, DL2, row0, start_m, offs_n, T, lam, qk1, qk2,
                                    DQ1, DQ2, scale1, scale2,
                                    D1, D2, DV_, BD1, BD2, BDV, BM, True, ATOMIC_DQ)
    for start_m in range(start_n + BN, T, BM):  # query blocks entirely in the future: no mask
        dk1, dk2, dv = _bwd_kv_step(k1, k2, v, dk1, dk2, dv, q1_base, q2_base, do_base, sq1t, sq2t, sdot,
                                    LSE1, LSE2, DL1, DL2, row0, start_m, offs_n, T, lam, qk1, qk2,
                                    DQ1, DQ2, scale1, scale2,
                                    D1, D2, DV_, BD1, BD2, BDV, BM, False, ATOMIC_DQ)
    # per-query-head outputs, contiguous [B, H, T, D]
    nmask = (offs_n < T)[:, None]
    o1 = tl.arange(0, BD1)
    o2 = tl.arange(0, BD2)
    ov = tl.arange(0, BDV)
    tl.store(DK1 + (bh * T + offs_n[:, None]) * D1 + o1[None, :], (dk1 * scale1).to(DK1.dtype.element_ty),
             mask=nmask & (o1 < D1)[None, :])
    tl.store(DK2 + (bh * T + offs_n[:, None]) * D2 + o2[None, :], (dk2 * scale2).to(DK2.dtype.element_ty),
             mask=nmask & (o2 < D2)[None, :])
    tl.store(DV + (bh * T + offs_n[:, None]) * DV_ + ov[None, :], dv.to(DV.dtype.element_ty),
             mask=nmask & (ov < DV_)[None, :])


@triton.jit
def _bwd_q_step(q1, q2, do, dq1, dq2, lse1, lse2, dl1, dl2, k1_base, k2_base, v_base,
                sk1t, sk2t, svt, start_n, offs_m, T, lam, qk1, qk2,
                D1: tl.constexpr, D2: tl.constexpr, DV: tl.constexpr,
                BD1: tl.constexpr, BD2: tl.constexpr, BDV: tl.constexpr,
                BN: tl.constexpr, MASK: tl.constexpr):
    offs_n = start_n + tl.arange(0, BN)
    k1 = _load_rows(k1_base, offs_n, sk1t, tl.arange(0, BD1), T, D1, BD1)
    k2 = _load_rows(k2_base, offs_n, sk2t, tl.arange(0, BD2), T, D2, BD2)
    v = _load_rows(v_base, offs_n, svt, tl.arange(0, BDV), T, DV, BDV)
    return _dq_tile(q1, q2, do, dq1, dq2, lse1, lse2, dl1, dl2, lam, k1, k2, v, offs_m, offs_n, qk1, qk2, MASK)


@triton.jit
def _dq_tile(q1, q2, do, dq1, dq2, lse1, lse2, dl1, dl2, lam, k1, k2, v, offs_m, offs_n, qk1, qk2,
             MASK: tl.constexpr):
    """One key tile's share of dQ1, dQ2 (both streams, dP = dO V^T shared); used by this file's and
    hopper.py's dQ kernels, which differ only in how they load the tiles."""
    p1 = tl.math.exp2(tl.dot(q1, tl.trans(k1)) * qk1 - lse1[:, None])
    p2 = tl.math.exp2(tl.dot(q2, tl.trans(k2)) * qk2 - lse2[:, None])
    if MASK:
        causal = offs_m[:, None] >= offs_n[None, :]
        p1 = tl.where(causal, p1, 0.0)
        p2 = tl.where(causal, p2, 0.0)
    dp = tl.dot(do, tl.trans(v))
    ds1 = p1 * (dp - dl1[:, None])
    ds2 = (-lam) * p2 * (dp - dl2[:, None])
    dq1 = tl.dot(ds1.to(k1.dtype), k1, dq1)
    dq2 = tl.dot(ds2.to(k2.dtype), k2, dq2)
    return dq1, dq2


@triton.jit
def _diff_bwd_q_kernel(Q1, K1, Q2, K2, V, LAM, DO, LSE1, LSE2, DL1, DL2, DQ1, DQ2,
                       sq1b, sq1h, sq1t, sk1b, sk1h, sk1t, sq2b, sq2h, sq2t, sk2b, sk2h, sk2t,
                       svb, svh, svt, sdob, sdoh, sdot,
                       H, T, GROUP1, GROUP2, qk1, qk2, scale1, scale2,
                       D1: tl.constexpr, D2: tl.constexpr, DV: tl.constexpr,
                       BD1: tl.constexpr, BD2: tl.constexpr, BDV: tl.constexpr,
                       BM: tl.constexpr, BN: tl.constexpr):
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    start_m = pid_m * BM
    offs_m = start_m + tl.arange(0, BM)
    rmask = offs_m < T
    q1 = _load_rows(Q1 + b * sq1b + h * sq1h, offs_m, sq1t, tl.arange(0, BD1), T, D1, BD1)
    q2 = _load_rows(Q2 + b * sq2b + h * sq2h, offs_m, sq2t, tl.arange(0, BD2), T, D2, BD2)
    do = _load_rows(DO + b * sdob + h * sdoh, offs_m, sdot, tl.arange(0, BDV), T, DV, BDV)
    lse1 = tl.load(LSE1 + bh * T + offs_m, mask=rmask, other=float("inf"))
    lse2 = tl.load(LSE2 + bh * T + offs_m, mask=rmask, other=float("inf"))
    dl1 = tl.load(DL1 + bh * T + offs_m, mask=rmask, other=0.0)
    dl2 = tl.load(DL2 + bh * T + offs_m, mask=rmask, other=0.0)
    lam = tl.load(LAM + h)
    k1_base = K1 + b * sk1b + (h // GROUP1) * sk1h
    v_base = V + b * svb + (h // GROUP1) * svh
    k2_base = K2 + b * sk2b + (h // GROUP2) * sk2h
    dq1 = tl.zeros([BM, BD1], tl.float32)
    dq2 = tl.zeros([BM, BD2], tl.float32)
    for start_n in range(0, start_m, BN):
        dq1, dq2 = _bwd_q_step(q1, q2, do, dq1, dq2, lse1, lse2, dl1, dl2, k1_base, k2_base, v_base,
                               sk1t, sk2t, svt, start_n, offs_m, T, lam, qk1, qk2,
                               D1, D2, DV, BD1, BD2, BDV, BN, False)
    for start_n in range(start_m, start_m + BM, BN):
        dq1, dq2 = _bwd_q_step(q1, q2, do, dq1, dq2, lse1, lse2, dl1, dl2, k1_base, k2_base, v_base,
                               sk1t, sk2t, svt, start_n, offs_m, T, lam, qk1, qk2,
                               D1, D2, DV, BD1, BD2, BDV, BN, True)
    o1 = tl.arange(0, BD1)
    o2 = tl.arange(0, BD2)
    tl.store(DQ1 + (bh * T + offs_m[:, None]) * D1 + o1[None, :], (dq1 * scale1).to(DQ1.dtype.element_ty),
             mask=rmask[:, None] & (o1 < D1)[None, :])
    tl.store(DQ2 + (bh * T + offs_m[:, None]) * D2 + o2[None, :], (dq2 * scale2).to(DQ2.dtype.element_ty),
             mask=rmask[:, None] & (o2 < D2)[None, :])


# ------------------------------------------------------------------------------------------
# CMD: one noise head shared by all heads. A program owns a PAIR of heads, so the noise scores,
# their exponentials and softmax state are computed once per pair (forward), and the noise
# key/query gradients are formed once per pair from the summed dS2 (backward).

@triton.jit
def _cmd_head_fwd(q1, k1_base, v_base, sk1t, svt, offs_n, offs_m, T, m1, l1, acc1, acc2, p2, a2, qk1,
                  D1: tl.constexpr, DV: tl.constexpr, BD1: tl.constexpr, BDV: tl.constexpr,
                  MASK: tl.constexpr):
    k1 = _load_rows(k1_base, offs_n, sk1t, tl.arange(0, BD1), T, D1, BD1)
    v = _load_rows(v_base, offs_n, svt, tl.arange(0, BDV), T, DV, BDV)
    s1 = tl.dot(q1, tl.trans(k1)) * qk1
    if MASK:
        s1 = tl.where(offs_m[:, None] >= offs_n[None, :], s1, float("-inf"))
    m1n = tl.maximum(m1, tl.max(s1, 1))
    p1 = tl.math.exp2(s1 - m1n[:, None])
    a1 = tl.math.exp2(m1 - m1n)
    l1 = l1 * a1 + tl.sum(p1, 1)
    acc1 = tl.dot(p1.to(v.dtype), v, acc1 * a1[:, None])
    acc2 = tl.dot(p2.to(v.dtype), v, acc2 * a2[:, None])
    return m1n, l1, acc1, acc2


@triton.jit
def _cmd_fwd_step(q1a, q1b, q2, k1a_base, k1b_base, va_base, vb_base, k2_base, sk1t, svt, sk2t,
                  start_n, offs_m, T, m1a, l1a, acc1a, acc2a, m1b, l1b, acc1b, acc2b, m2, l2, qk1, qk2,
                  D1: tl.constexpr, D2: tl.constexpr, DV: tl.constexpr,
                  BD1: tl.constexpr, BD2: tl.constexpr, BDV: tl.constexpr,
                  BN: tl.constexpr, MASK: tl.constexpr):
    offs_n = start_n + tl.arange(0, BN)
    k2 = _load_rows(k2_base, offs_n, sk2t, tl.arange(0, BD2), T, D2, BD2)
    s2 = tl.dot(q2, tl.trans(k2)) * qk2
    if MASK:
        s2 = tl.where(offs_m[:, None] >= offs_n[None, :], s2, float("-inf"))
    m2n = tl.maximum(m2, tl.max(s2, 1))
    p2 = tl.math.exp2(s2 - m2n[:, None])
    a2 = tl.math.exp2(m2 - m2n)
    l2 = l2 * a2 + tl.sum(p2, 1)
    m1a, l1a, acc1a, acc2a = _cmd_head_fwd(q1a, k1a_base, va_base, sk1t, svt, offs_n, offs_m, T,
                                           m1a, l1a, acc1a, acc2a, p2, a2, qk1, D1, DV, BD1, BDV, MASK)
    m1b, l1b, acc1b, acc2b = _cmd_head_fwd(q1b, k1b_base, vb_base, sk1t, svt, offs_n, offs_m, T,
                                           m1b, l1b, acc1b, acc2b, p2, a2, qk1, D1, DV, BD1, BDV, MASK)
    return m1a, l1a, acc1a, acc2a, m1b, l1b, acc1b, acc2b, m2n, l2


@triton.jit
def _cmd_store(O, O2, LSE1, LAM, out_base, h, bh, offs_m, T, acc1, acc2, l1, m1, l2,
               DV: tl.constexpr, BDV: tl.constexpr, sot):
    lam = tl.load(LAM + h)
    o2 = acc2 / l2[:, None]
    out = acc1 / l1[:, None] - lam * o2
    offs_v = tl.arange(0, BDV)
    optr = out_base + offs_m[:, None] * sot + offs_v[None, :]
    omask = (offs_m < T)[:, None] & (offs_v < DV)[None, :]
    tl.store(O + optr, out.to(O.dtype.element_ty), mask=omask)
    tl.store(O2 + optr, o2.to(O2.dtype.element_ty), mask=omask)
    tl.store(LSE1 + bh * T + offs_m, m1 + tl.math.log2(l1), mask=offs_m < T)


@triton.jit
def _cmd_fwd_kernel(Q1, K1, Q2, K2, V, LAM, O, O2, LSE1, LSE2,
                    sq1b, sq1h, sq1t, sk1b, sk1h, sk1t, sq2b, sq2t, sk2b, sk2t,
                    svb, svh, svt, sob, soh, sot,
                    H, T, qk1, qk2,
                    D1: tl.constexpr, D2: tl.constexpr, DV: tl.constexpr,
                    BD1: tl.constexpr, BD2: tl.constexpr, BDV: tl.constexpr,
                    BM: tl.constexpr, BN: tl.constexpr):
    pid_m = tl.program_id(0)
    bp = tl.program_id(1)  # (batch, head pair)
    b = bp // (H // 2)
    ha = (bp % (H // 2)) * 2
    hb = ha + 1
    offs_m = pid_m * BM + tl.arange(0, BM)
    q1a = _load_rows(Q1 + b * sq1b + ha * sq1h, offs_m, sq1t, tl.arange(0, BD1), T, D1, BD1)
    q1b = _load_rows(Q1 + b * sq1b + hb * sq1h, offs_m, sq1t, tl.arange(0, BD1), T, D1, BD1)
    q2 = _load_rows(Q2 + b * sq2b, offs_m, sq2t, tl.arange(0, BD2), T, D2, BD2)
    k1a_base = K1 + b * sk1b + ha * sk1h
    k1b_base = K1 + b * sk1b + hb * sk1h
    va_base = V + b * svb + ha * svh
    vb_base = V + b * svb + hb * svh
    k2_base = K2 + b * sk2b
    m1a = tl.full([BM], float("-inf"), tl.float32)
    m1b = tl.full([BM], float("-inf"), tl.float32)
    m2 = tl.full([BM], float("-inf"), tl.float32)
    l1a = tl.zeros([BM], tl.float32)
    l1b = tl.zeros([BM], tl.float32)
    l2 = tl.zeros([BM], tl.float32)
    acc1a = tl.zeros([BM, BDV], tl.float32)
    acc2a = tl.zeros([BM, BDV], tl.float32)
    acc1b = tl.zeros([BM, BDV], tl.float32)
    acc2b = tl.zeros([BM, BDV], tl.float32)
    lo = pid_m * BM
    for start_n in range(0, lo, BN):
        m1a, l1a, acc1a, acc2a, m1b, l1b, acc1b, acc2b, m2, l2 = _cmd_fwd_step(
            q1a, q1b, q2, k1a_base, k1b_base, va_base, vb_base, k2_base, sk1t, svt, sk2t,
            start_n, offs_m, T, m1a, l1a, acc1a, acc2a, m1b, l1b, acc1b, acc2b, m2, l2, qk1, qk2,
            D1, D2, DV, BD1, BD2, BDV, BN, False)
    for start_n in range(lo, tl.minimum(lo + BM, T), BN):
        m1a, l1a, acc1a, acc2a, m1b, l1b, acc1b, acc2b, m2, l2 = _cmd_fwd_step(
            q1a, q1b, q2, k1a_base, k1b_base, va_base, vb_base, k2_base, sk1t, svt, sk2t,
            start_n, offs_m, T, m1a, l1a, acc1a, acc2a, m1b, l1b, acc1b, acc2b, m2, l2, qk1, qk2,
            D1, D2, DV, BD1, BD2, BDV, BN, True)
    _cmd_store(O, O2, LSE1, LAM, b * sob + ha * soh, ha, b * H + ha, offs_m, T, acc1a, acc2a, l1a, m1a, l2, DV, BDV, sot)
    _cmd_store(O, O2, LSE1, LAM, b * sob + hb * soh, hb, b * H + hb, offs_m, T, acc1b, acc2b, l1b, m1b, l2, DV, BDV, sot)
    # the noise log-sum-exp is one per (batch, pair): stored per pair
    tl.store(LSE2 + bp * T + offs_m, m2 + tl.math.log2(l2), mask=offs_m < T)


@triton.jit
def _cmd_head_bwd(k1, v, dk1, dv, p2t, ds2t, q1_base, do_base, sq1t, sdot, LSE1, DL1, DL2, DQ1,
                  row0, offs_m, offs_n, T, lam, qk1, scale1,
                  D1: tl.constexpr, DV: tl.constexpr, BD1: tl.constexpr, BDV: tl.constexpr,
                  MASK: tl.constexpr):
    q1 = _load_rows(q1_base, offs_m, sq1t, tl.arange(0, BD1), T, D1, BD1)
    do = _load_rows(do_base, offs_m, sdot, tl.arange(0, BDV), T, DV, BDV)
    rmask = offs_m < T
    lse1 = tl.load(LSE1 + row0 + offs_m, mask=rmask, other=float("inf"))
    dl1 = tl.load(DL1 + row0 + offs_m, mask=rmask, other=0.0)
    dl2 = tl.load(DL2 + row0 + offs_m, mask=rmask, other=0.0)
    p1t = tl.math.exp2(tl.dot(k1, tl.trans(q1)) * qk1 - lse1[None, :])
    if MASK:
        p1t = tl.where(offs_m[None, :] >= offs_n[:, None], p1t, 0.0)
    dv = tl.dot((p1t - lam * p2t).to(do.dtype), do, dv)
    dpt = tl.dot(v, tl.trans(do))
    ds1t = (p1t * (dpt - dl1[None, :])).to(q1.dtype)
    ds2t += (-lam) * p2t * (dpt - dl2[None, :])
    dk1 = tl.dot(ds1t, q1, dk1)
    o1 = tl.arange(0, BD1)
    tl.atomic_add(DQ1 + (row0 + offs_m[:, None]) * D1 + o1[None, :], tl.dot(tl.trans(ds1t), k1) * scale1,
                  mask=rmask[:, None] & (o1 < D1)[None, :], sem="relaxed")
    return dk1, dv, ds2t


@triton.jit
def _cmd_bwd_step(k1a, va, k1b, vb, k2, dk1a, dva, dk1b, dvb, dk2,
                  q1a_base, q1b_base, doa_base, dob_base, q2_base, sq1t, sdot, sq2t,
                  LSE1, LSE2, DL1, DL2, DQ1, DQ2, rowa, rowb, rowp, rowq2, start_m, offs_n, T,
                  lama, lamb, qk1, qk2, scale1, scale2,
                  D1: tl.constexpr, D2: tl.constexpr, DV: tl.constexpr,
                  BD1: tl.constexpr, BD2: tl.constexpr, BDV: tl.constexpr,
                  BM: tl.constexpr, BN: tl.constexpr, MASK: tl.constexpr):
    offs_m = start_m + tl.arange(0, BM)
    rmask = offs_m < T
    q2 = _load_rows(q2_base, offs_m, sq2t, tl.arange(0, BD2), T, D2, BD2)
    lse2 = tl.load(LSE2 + rowp + offs_m, mask=rmask, other=float("inf"))
    p2t = tl.math.exp2(tl.dot(k2, tl.trans(q2)) * qk2 - lse2[None, :])
    if MASK:
        p2t = tl.where(offs_m[None, :] >= offs_n[:, None], p2t, 0.0)
    ds2t = tl.zeros([BN, BM], tl.float32)
    dk1a, dva, ds2t = _cmd_head_bwd(k1a, va, dk1a, dva, p2t, ds2t, q1a_base, doa_base, sq1t, sdot,
                                    LSE1, DL1, DL2, DQ1, rowa, offs_m, offs_n, T, lama, qk1, scale1,
                                    D1, DV, BD1, BDV, MASK)
    dk1b, dvb, ds2t = _cmd_head_bwd(k1b, vb, dk1b, dvb, p2t, ds2t, q1b_base, dob_base, sq1t, sdot,
                                    LSE1, DL1, DL2, DQ1, rowb, offs_m, offs_n, T, lamb, qk1, scale1,
                                    D1, DV, BD1, BDV, MASK)
    ds2t = ds2t.to(q2.dtype)
    dk2 = tl.dot(ds2t, q2, dk2)
    o2 = tl.arange(0, BD2)
    tl.atomic_add(DQ2 + (rowq2 + offs_m[:, None]) * D2 + o2[None, :], tl.dot(tl.trans(ds2t), k2) * scale2,
                  mask=rmask[:, None] & (o2 < D2)[None, :], sem="relaxed")
    return dk1a, dva, dk1b, dvb, dk2


@triton.jit
def _cmd_store_rows(PTR, row0, offs_n, T, x, D: tl.constexpr, BD: tl.constexpr):
    o = tl.arange(0, BD)
    tl.store(PTR + (row0 + offs_n[:, None]) * D + o[None, :], x.to(PTR.dtype.element_ty),
             mask=(offs_n < T)[:, None] & (o < D)[None, :])


@triton.jit
def _cmd_bwd_kernel(Q1, K1, Q2, K2, V, LAM, DO, LSE1, LSE2, DL1, DL2, DK1, DK2, DV, DQ1, DQ2,
                    sq1b, sq1h, sq1t, sk1b, sk1h, sk1t, sq2b, sq2t, sk2b, sk2t,
                    svb, svh, svt, sdob, sdoh, sdot,
                    H, T, qk1, qk2, scale1, scale2,
                    D1: tl.constexpr, D2: tl.constexpr, DV_: tl.constexpr,
                    BD1: tl.constexpr, BD2: tl.constexpr, BDV: tl.constexpr,
                    BM: tl.constexpr, BN: tl.constexpr):
    pid_n = tl.program_id(0)
    bp = tl.program_id(1)
    b = bp // (H // 2)
    ha = (bp % (H // 2)) * 2
    hb = ha + 1
    start_n = pid_n * BN
    offs_n = start_n + tl.arange(0, BN)
    k1a = _load_rows(K1 + b * sk1b + ha * sk1h, offs_n, sk1t, tl.arange(0, BD1), T, D1, BD1)
    k1b = _load_rows(K1 + b * sk1b + hb * sk1h, offs_n, sk1t, tl.arange(0, BD1), T, D1, BD1)
    va = _load_rows(V + b * svb + ha * svh, offs_n, svt, tl.arange(0, BDV), T, DV_, BDV)
    vb = _load_rows(V + b * svb + hb * svh, offs_n, svt, tl.arange(0, BDV), T, DV_, BDV)
    k2 = _load_rows(K2 + b * sk2b, offs_n, sk2t, tl.arange(0, BD2), T, D2, BD2)
    dk1a = tl.zeros([BN, BD1], tl.float32)
    dk1b = tl.zeros([BN, BD1], tl.float32)
    dva = tl.zeros([BN, BDV], tl.float32)
    dvb = tl.zeros([BN, BDV], tl.float32)
    dk2 = tl.zeros([BN, BD2], tl.float32)
    lama = tl.load(LAM + ha)
    lamb = tl.load(LAM + hb)
    rowa = (b * H + ha) * T
    rowb = (b * H + hb) * T
    q1a_base = Q1 + b * sq1b + ha * sq1h
    q1b_base = Q1 + b * sq1b + hb * sq1h
    doa_base = DO + b * sdob + ha * sdoh
    dob_base = DO + b * sdob + hb * sdoh
    q2_base = Q2 + b * sq2b
    for start_m in range(start_n, start_n + BN, BM):
        dk1a, dva, dk1b, dvb, dk2 = _cmd_bwd_step(
            k1a, va, k1b, vb, k2, dk1a, dva, dk1b, dvb, dk2, q1a_base, q1b_base, doa_base, dob_base, q2_base,
            sq1t, sdot, sq2t, LSE1, LSE2, DL1, DL2, DQ1, DQ2, rowa, rowb, bp * T, b * T, start_m, offs_n, T,
            lama, lamb, qk1, qk2, scale1, scale2, D1, D2, DV_, BD1, BD2, BDV, BM, BN, True)
    for start_m in range(start_n + BN, T, BM):
        dk1a, dva, dk1b, dvb, dk2 = _cmd_bwd_step(
            k1a, va, k1b, vb, k2, dk1a, dva, dk1b, dvb, dk2, q1a_base, q1b_base, doa_base, dob_base, q2_base,
            sq1t, sdot, sq2t, LSE1, LSE2, DL1, DL2, DQ1, DQ2, rowa, rowb, bp * T, b * T, start_m, offs_n, T,
            lama, lamb, qk1, qk2, scale1, scale2, D1, D2, DV_, BD1, BD2, BDV, BM, BN, False)
    _cmd_store_rows(DK1, rowa, offs_n, T, dk1a * scale1, D1, BD1)
    _cmd_store_rows(DK1, rowb, offs_n, T, dk1b * scale1, D1, BD1)
    _cmd_store_rows(DV, rowa, offs_n, T, dva, DV_, BDV)
    _cmd_store_rows(DV, rowb, offs_n, T, dvb, DV_, BDV)
    _cmd_store_rows(DK2, bp * T, offs_n, T, dk2 * scale2, D2, BD2)  # per pair, summed outside


@triton.jit
def _diff_bwd_pre_kernel(DO, O, O2, LAM, DL1, DL2, H, T, DV: tl.constexpr, BDV: tl.constexpr, BM: tl.constexpr):
    """Delta2 = rowsum(dO * o2), Delta1 = rowsum(dO * o1) = rowsum(dO * out) + lam Delta2."""
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    offs_m = pid_m * BM + tl.arange(0, BM)
    base = bh * T * DV
    do = _load_rows(DO + base, offs_m, DV, tl.arange(0, BDV), T, DV, BDV).to(tl.float32)
    o = _load_rows(O + base, offs_m, DV, tl.arange(0, BDV), T, DV, BDV).to(tl.float32)
    o2 = _load_rows(O2 + base, offs_m, DV, tl.arange(0, BDV), T, DV, BDV).to(tl.float32)
    dl2 = tl.sum(do * o2, 1)
    dl1 = tl.sum(do * o, 1) + tl.load(LAM + bh % H) * dl2
    tl.store(DL1 + bh * T + offs_m, dl1, mask=offs_m < T)
    tl.store(DL2 + bh * T + offs_m, dl2, mask=offs_m < T)


# ------------------------------------------------------------------------------------------
def _interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _pow2(d: int) -> int:
    return max(16, triton.next_power_of_2(d))


# Launch configs: (BM, BN, num_warps, num_stages). Overridable for sweeps.
# Defaults: the best of a sweep on an H100 (bf16, 16 heads, head dim 128, T=4096; see
# benchmarks/results/bench_diff_kernel_run1.json).
CONFIGS = {
    "fwd": (128, 64, 8, 2),
    "bwd_kv": (32, 128, 8, 2),
    "bwd_kv_atomic": (32, 128, 8, 2),  # the key-block kernel when it also accumulates dQ (DQ_MODE)
    "bwd_q": (64, 32, 4, 2),
    "cmd_fwd": (64, 64, 8, 2),
    "cmd_bwd": (32, 32, 8, 1),
}
# CMD with an even number of heads: "pair" runs the head-pair kernels (noise computed once per
# pair); "generic" runs the per-head kernels reading the shared noise head in place.
CMD_MODE = os.environ.get("ATTNLAB_DIFF_CMD", "generic")  # "pair" spills registers on an H100
# dQ: "atomic" accumulates dS K inside the key-block kernel (float32 atomics, no recompute);
# "separate" runs a second kernel per query block that recomputes both maps.
DQ_MODE = os.environ.get("ATTNLAB_DIFF_DQ", "separate")  # measured faster on an H100


def _config(name: str, width: int):
    if _interpret():
        return 16, 16, 1, 1
    bm, bn, w, s = CONFIGS[name]
    if width > 128 and name != "fwd":  # wide heads: keep the accumulators in registers
        bm, bn = min(bm, 32), min(bn, 32)
    elif width > 128:
        bm, bn = 64, 32
    return bm, bn, w, s


def _strides(x):
    return x.stride(0), x.stride(1), x.stride(2)


def _last_contig(x):
    return x if x.stride(-1) == 1 else x.contiguous()


class DiffAttentionFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q1, k1, q2, k2, v, lam, scale1, scale2):
        q1, k1, q2, k2, v = (_last_contig(x) for x in (q1, k1, q2, k2, v))
        b, h, t, d1 = q1.shape
        hk, d2, dv = k1.shape[1], q2.shape[-1], v.shape[-1]
        lam = lam.detach().float().reshape(-1).expand(h).contiguous()
        out = torch.empty(b, h, t, dv, device=q1.device, dtype=q1.dtype)
        o2 = torch.empty_like(out)
        lse1 = torch.empty(b, h, t, device=q1.device, dtype=torch.float32)
        lse2 = torch.empty_like(lse1)
        group1, group2 = h // hk, h // k2.shape[1]
        ctx.pair = CMD_MODE == "pair" and q2.shape[1] == 1 and k2.shape[1] == 1 and hk == h and h % 2 == 0
        ctx.scales = (scale1, scale2)
        if ctx.pair:
            lse2 = torch.empty(b, h // 2, t, device=q1.device, dtype=torch.float32)
            bm, bn, w, s = _config("cmd_fwd", max(d1, d2, dv))
            _cmd_fwd_kernel[(triton.cdiv(t, bm), b * h // 2)](
                q1, k1, q2, k2, v, lam, out, o2, lse1, lse2,
                *_strides(q1), *_strides(k1), q2.stride(0), q2.stride(2), k2.stride(0), k2.stride(2),
                *_strides(v), *_strides(out), h, t, scale1 * LOG2E, scale2 * LOG2E,
                d1, d2, dv, _pow2(d1), _pow2(d2), _pow2(dv), bm, bn, num_warps=w, num_stages=s)
            ctx.save_for_backward(q1, k1, q2, k2, v, lam, out, o2, lse1, lse2)
            return out
        sq2 = (q2.stride(0), 0 if q2.shape[1] == 1 else q2.stride(1), q2.stride(2))
        bm, bn, w, s = _config("fwd", max(d1, d2, dv))
        grid = (triton.cdiv(t, bm), b * h)
        _diff_fwd_kernel[grid](q1, k1, q2, k2, v, lam, out, o2, lse1, lse2,
                               *_strides(q1), *_strides(k1), *sq2, *_strides(k2), *_strides(v),
                               *_strides(out), h, t, group1, group2, scale1 * LOG2E, scale2 * LOG2E,
                               d1, d2, dv, _pow2(d1), _pow2(d2), _pow2(dv), bm, bn,
                               num_warps=w, num_stages=s)
        ctx.save_for_backward(q1, k1, q2, k2, v, lam, out, o2, lse1, lse2)
        return out

    @staticmethod
    def backward(ctx, dout):
        q1, k1, q2, k2, v, lam, out, o2, lse1, lse2 = ctx.saved_tensors
        scale1, scale2 = ctx.scales
        dout = dout.contiguous()
        b, h, t, d1 = q1.shape
        hk, h2, hk2, d2, dv_ = k1.shape[1], q2.shape[1], k2.shape[1], q2.shape[-1], v.shape[-1]
        dl1 = torch.empty_like(lse1)
        dl2 = torch.empty_like(lse1)
        bm = 16 if _interpret() else 64
        _diff_bwd_pre_kernel[(triton.cdiv(t, bm), b * h)](dout, out, o2, lam, dl1, dl2, h, t, dv_, _pow2(dv_), bm)
        dlam = -dl2.sum((0, 2))
        group1, group2 = h // hk, h // hk2
        f32 = torch.float32
        if ctx.pair:
            dk1 = torch.empty(b, h, t, d1, device=q1.device, dtype=q1.dtype)
            dv = torch.empty(b, h, t, dv_, device=q1.device, dtype=q1.dtype)
            dk2 = torch.empty(b, h // 2, t, d2, device=q1.device, dtype=f32)
            dq1 = torch.zeros(b, h, t, d1, device=q1.device, dtype=f32)
            dq2 = torch.zeros(b, 1, t, d2, device=q1.device, dtype=f32)
            bm, bn, w, s = _config("cmd_bwd", max(d1, d2, dv_))
            _cmd_bwd_kernel[(triton.cdiv(t, bn), b * h // 2)](
                q1, k1, q2, k2, v, lam, dout, lse1, lse2, dl1, dl2, dk1, dk2, dv, dq1, dq2,
                *_strides(q1), *_strides(k1), q2.stride(0), q2.stride(2), k2.stride(0), k2.stride(2),
                *_strides(v), *_strides(dout), h, t, scale1 * LOG2E, scale2 * LOG2E, scale1, scale2,
                d1, d2, dv_, _pow2(d1), _pow2(d2), _pow2(dv_), bm, bn, num_warps=w, num_stages=s)
            return (dq1.to(q1.dtype), dk1, dq2.to(q2.dtype), dk2.sum(1, keepdim=True).to(k2.dtype), dv,
                    dlam, None, None)
        # shared heads accumulate over query heads: write per query head (fp32) and sum
        dk1 = torch.empty(b, h, t, d1, device=q1.device, dtype=q1.dtype if group1 == 1 else f32)
        dv = torch.empty(b, h, t, dv_, device=q1.device, dtype=q1.dtype if group1 == 1 else f32)
        dk2 = torch.empty(b, h, t, d2, device=q1.device, dtype=q1.dtype if group2 == 1 else f32)
        atomic = DQ_MODE == "atomic"
        if atomic:
            dq1 = torch.zeros(b, h, t, d1, device=q1.device, dtype=f32)
            dq2 = torch.zeros(b, h, t, d2, device=q1.device, dtype=f32)
        else:
            dq1 = torch.empty(b, h, t, d1, device=q1.device, dtype=q1.dtype)  # layout the kernel writes
            dq2 = torch.empty(b, h, t, d2, device=q1.device, dtype=q1.dtype if h2 == h else f32)
        sq2 = (q2.stride(0), 0 if h2 == 1 else q2.stride(1), q2.stride(2))
        common = (*_strides(q1), *_strides(k1), *sq2, *_strides(k2), *_strides(v), *_strides(dout),
                  h, t, group1, group2, scale1 * LOG2E, scale2 * LOG2E, scale1, scale2,
                  d1, d2, dv_, _pow2(d1), _pow2(d2), _pow2(dv_))
        bm, bn, w, s = _config("bwd_kv_atomic" if atomic else "bwd_kv", max(d1, d2, dv_))
        _diff_bwd_kv_kernel[(triton.cdiv(t, bn), b * h)](
            q1, k1, q2, k2, v, lam, dout, lse1, lse2, dl1, dl2, dk1, dk2, dv, dq1, dq2, *common, bm, bn,
            atomic, num_warps=w, num_stages=s)
        if atomic:
            dq1 = dq1.to(q1.dtype)
        else:
            bm, bn, w, s = _config("bwd_q", max(d1, d2, dv_))
            _diff_bwd_q_kernel[(triton.cdiv(t, bm), b * h)](
                q1, k1, q2, k2, v, lam, dout, lse1, lse2, dl1, dl2, dq1, dq2, *common, bm, bn,
                num_warps=w, num_stages=s)

        def reduce(x, heads, like):
            if heads == h:
                return x.to(like.dtype)
            return x.view(b, heads, h // heads, t, x.shape[-1]).sum(2).to(like.dtype)

        return (dq1, reduce(dk1, hk, k1), reduce(dq2, h2, q2), reduce(dk2, hk2, k2),
                reduce(dv, hk, v), dlam, None, None)


def diff_attention_triton(q1, k1, q2, k2, v, lam, scale1=None, scale2=None):
    """Fused causal differential attention (see reference.py for shapes); differentiable in
    q1, k1, q2, k2, v and lam."""
    from .reference import lam_per_head

    b, h, t, _ = q1.shape
    if k1.shape[-2] != t:
        raise ValueError(f"the fused kernel needs keys over the query positions; got T={t}, S={k1.shape[-2]}")
    if q2.shape[1] not in (1, h) or h % k1.shape[1] or k2.shape[1] not in (1, k1.shape[1]):
        raise ValueError(f"unsupported heads: q1 {h}, k1 {k1.shape[1]}, q2 {q2.shape[1]}, k2 {k2.shape[1]}")
    scale1 = q1.shape[-1] ** -0.5 if scale1 is None else float(scale1)
    scale2 = q2.shape[-1] ** -0.5 if scale2 is None else float(scale2)
    lam = lam_per_head(lam, h, q1.device)  # [H] float32, differentiable (expanded if per layer)
    return DiffAttentionFunction.apply(q1, k1, q2, k2, v, lam, scale1, scale2)
