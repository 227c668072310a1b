"""Fused differential attention straight from the latent family's projection outputs (the
training path of ``diff-mla`` and ``cmd-mla``): no query/key concatenation, no V padding, no
expanded noise head, no output transpose.

Inputs are the matmul outputs themselves (per token, last dim):

- ``q_all`` [B, T, H*(dn+dr) + H2*(dn2+own)]: per signal head [q_nope | q_rope (not roped)],
  then per noise head [q2_nope | q2_rope (own rope part, only if ``rope2 == 2``)];
- ``kvu`` [B, T, H*(dn+dv) + H2*dn2]: per head [k_nope | v], then per noise head k2_nope;
- ``kr_pre`` [B, T, dr]: the decoupled rope key (not roped), ONE head shared by every head.

Scores: s1 = scale1 * (q_nope.k_nope + q_rope.k_rope), and for the noise stream
s2 = scale2 * (q2_nope.k2_nope + R) with R = 0 (``rope2 == 0``, CMD default), R = q_rope.k_rope
(``rope2 == 1``, diff-mla: the rope query/key are shared by both streams, so their product is
computed once per tile), or R = q2_rope.k_rope (``rope2 == 2``, CMD with ``noise_rope``).
H2 = 1 is the CMD case (one noise head, read in place through head stride 0).

out [B, T, H, dv] = softmax(s1) V - lam_h softmax(s2) V, written in the layout the output
projection reads. The backward writes the gradients of ``q_all`` and ``kvu`` column-block by
column-block straight into one buffer each (RoPE's backward writes the rope columns); gradients
of heads shared across query heads (the rope key, the CMD noise head) are summed in float32.

The math of the backward (FlashAttention-2 style, both maps recomputed from the log-sum-exps):
dV = (P1 - lam P2)^T dO (one matmul), dP = dO V^T (one matmul, shared by both streams),
dS1 = P1 (dP - Delta1), dS2 = -lam P2 (dP - Delta2), Delta2 = rowsum(dO o2),
Delta1 = rowsum(dO out) + lam Delta2, dlam_h = -sum Delta2.
"""

from __future__ import annotations

import functools
import math
import os
import warnings

import torch
import triton
import triton.language as tl

from ..rope.kernel import _rope_kernel
from .kernel import LOG2E, _interpret, _pair_online_softmax, _pow2
from .latent_reference import LatentGeometry, _views


@triton.jit
def _rows(base, offs_t, stride_t, T, D: tl.constexpr, BD: tl.constexpr):
    offs_d = tl.arange(0, BD)
    ptrs = base + offs_t[:, None] * stride_t + offs_d[None, :]
    if D == BD:
        return tl.load(ptrs, mask=(offs_t < T)[:, None], other=0.0)
    return tl.load(ptrs, mask=(offs_t < T)[:, None] & (offs_d < D)[None, :], other=0.0)


@triton.jit
def _store(base, offs_t, stride_t, T, x, D: tl.constexpr, BD: tl.constexpr):
    offs_d = tl.arange(0, BD)
    ptrs = base + offs_t[:, None] * stride_t + offs_d[None, :]
    tl.store(ptrs, x.to(base.dtype.element_ty), mask=(offs_t < T)[:, None] & (offs_d < D)[None, :])


@triton.jit
def _scores(q1, qr, q2, qr2, k1, kr, k2, ROPE2: tl.constexpr):
    """Unscaled s1 = q1.k1 + qr.kr and s2 = q2.k2 (+ the noise rope term), [M, N]."""
    krt = tl.trans(kr)
    if ROPE2 == 1:
        r = tl.dot(qr, krt)
        s1 = tl.dot(q1, tl.trans(k1), r)
        s2 = tl.dot(q2, tl.trans(k2), r)
    elif ROPE2 == 2:
        s1 = tl.dot(qr, krt, tl.dot(q1, tl.trans(k1)))
        s2 = tl.dot(qr2, krt, tl.dot(q2, tl.trans(k2)))
    else:
        s1 = tl.dot(qr, krt, tl.dot(q1, tl.trans(k1)))
        s2 = tl.dot(q2, tl.trans(k2))
    return s1, s2


@triton.jit
def _fwd_step(q1, qr, q2, qr2, k1_base, kr_base, k2_base, v_base, sk1t, skrt, sk2t, svt, start_n, offs_m, T,
              m1, l1, acc1, m2, l2, acc2, qk1, qk2,
              D1: tl.constexpr, DR: tl.constexpr, D2: tl.constexpr, DV: tl.constexpr,
              BD1: tl.constexpr, BDR: tl.constexpr, BD2: tl.constexpr, BDV: tl.constexpr,
              ROPE2: tl.constexpr, BN: tl.constexpr, MASK: tl.constexpr):
    offs_n = start_n + tl.arange(0, BN)
    k1 = _rows(k1_base, offs_n, sk1t, T, D1, BD1)
    kr = _rows(kr_base, offs_n, skrt, T, DR, BDR)
    k2 = _rows(k2_base, offs_n, sk2t, T, D2, BD2)
    v = _rows(v_base, offs_n, svt, T, DV, BDV)
    s1, s2 = _scores(q1, qr, q2, qr2, k1, kr, k2, ROPE2)
    s1 = s1 * qk1
    s2 = s2 * qk2
    return _pair_online_softmax(s1, s2, v, offs_m, offs_n, m1, l1, acc1, m2, l2, acc2, MASK)


@triton.jit
def _lat_fwd_kernel(Q1, QR, Q2, QR2, K1, KR, K2, V, LAM, O, O2, LSE1, LSE2,
                    sq1b, sq1h, sq1t, sqrb, sqrh, sqrt_, sq2b, sq2h, sq2t, sqr2b, sqr2h, sqr2t,
                    sk1b, sk1h, sk1t, skrb, skrt, sk2b, sk2h, sk2t, svb, svh, svt, sob, soh, sot,
                    H, T, slam, qk1, qk2,
                    D1: tl.constexpr, DR: tl.constexpr, D2: tl.constexpr, DV: tl.constexpr,
                    BD1: tl.constexpr, BDR: tl.constexpr, BD2: tl.constexpr, BDV: tl.constexpr,
                    ROPE2: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr):
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    offs_m = pid_m * BM + tl.arange(0, BM)
    q1 = _rows(Q1 + b * sq1b + h * sq1h, offs_m, sq1t, T, D1, BD1)
    qr = _rows(QR + b * sqrb + h * sqrh, offs_m, sqrt_, T, DR, BDR)
    q2 = _rows(Q2 + b * sq2b + h * sq2h, offs_m, sq2t, T, D2, BD2)
    if ROPE2 == 2:
        qr2 = _rows(QR2 + b * sqr2b + h * sqr2h, offs_m, sqr2t, T, DR, BDR)
    else:
        qr2 = qr
    k1_base = K1 + b * sk1b + h * sk1h
    kr_base = KR + b * skrb
    k2_base = K2 + b * sk2b + h * sk2h
    v_base = V + b * svb + h * svh
    m1 = tl.full([BM], float("-inf"), tl.float32)
    m2 = tl.full([BM], float("-inf"), tl.float32)
    l1 = tl.zeros([BM], tl.float32)
    l2 = tl.zeros([BM], tl.float32)
    acc1 = tl.zeros([BM, BDV], tl.float32)
    acc2 = tl.zeros([BM, BDV], tl.float32)
    lo = pid_m * BM
    mid = (lo // BN) * BN  # key blocks before mid lie entirely in the past: no mask
    for start_n in range(0, mid, BN):
        m1, l1, acc1, m2, l2, acc2 = _fwd_step(
            q1, qr, q2, qr2, k1_base, kr_base, k2_base, v_base, sk1t, skrt, sk2t, svt, start_n, offs_m, T,
            m1, l1, acc1, m2, l2, acc2, qk1, qk2, D1, DR, D2, DV, BD1, BDR, BD2, BDV, ROPE2, BN, False)
    for start_n in range(mid, tl.minimum(lo + BM, T), BN):
        m1, l1, acc1, m2, l2, acc2 = _fwd_step(
            q1, qr, q2, qr2, k1_base, kr_base, k2_base, v_base, sk1t, skrt, sk2t, svt, start_n, offs_m, T,
            m1, l1, acc1, m2, l2, acc2, qk1, qk2, D1, DR, D2, DV, BD1, BDR, BD2, BDV, ROPE2, BN, True)
    lam = tl.load(LAM + h * slam)
    o2 = acc2 / l2[:, None]
    out = acc1 / l1[:, None] - lam * o2
    _store(O + b * sob + h * soh, offs_m, sot, T, out, DV, BDV)
    _store(O2 + b * sob + h * soh, offs_m, sot, T, o2, DV, BDV)
    tl.store(LSE1 + bh * T + offs_m, m1 + tl.math.log2(l1), mask=offs_m < T)
    tl.store(LSE2 + bh * T + offs_m, m2 + tl.math.log2(l2), mask=offs_m < T)


@triton.jit
def _lat_pre_kernel(DO, O, O2, LAM, DL1, DL2, sob, soh, sot, H, T, slam,
                    DV: tl.constexpr, BDV: tl.constexpr, BM: tl.constexpr):
    """Delta1 = rowsum(dO out) + lam Delta2 into DL1 and MINUS Delta2 = -rowsum(dO o2) into DL2
    (dO, out, o2 share a layout; dlam_h is then the plain sum of DL2)."""
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    offs_m = pid_m * BM + tl.arange(0, BM)
    base = b * sob + h * soh
    do = _rows(DO + base, offs_m, sot, T, DV, BDV).to(tl.float32)
    o = _rows(O + base, offs_m, sot, T, DV, BDV).to(tl.float32)
    o2 = _rows(O2 + base, offs_m, sot, T, DV, BDV).to(tl.float32)
    dl2 = tl.sum(do * o2, 1)
    dl1 = tl.sum(do * o, 1) + tl.load(LAM + h * slam) * dl2
    tl.store(DL1 + bh * T + offs_m, dl1, mask=offs_m < T)
    tl.store(DL2 + bh * T + offs_m, -dl2, mask=offs_m < T)


@triton.jit
def _kv_step(k1, kr, k2, v, dk1, dk2, dkr, dv, q1_base, qr_base, q2_base, qr2_base, do_base,
             sq1t, sqrt_, sq2t, sqr2t, sot, LSE1, LSE2, DL1, DL2, row0, start_m, offs_n, T, lam,
             qk1, qk2, scale1, scale2,
             D1: tl.constexpr, DR: tl.constexpr, D2: tl.constexpr, DV_: tl.constexpr,
             BD1: tl.constexpr, BDR: tl.constexpr, BD2: tl.constexpr, BDV: tl.constexpr,
             ROPE2: tl.constexpr, BM: tl.constexpr, MASK: tl.constexpr):
    offs_m = start_m + tl.arange(0, BM)
    rmask = offs_m < T
    q1 = _rows(q1_base, offs_m, sq1t, T, D1, BD1)
    qr = _rows(qr_base, offs_m, sqrt_, T, DR, BDR)
    q2 = _rows(q2_base, offs_m, sq2t, T, D2, BD2)
    if ROPE2 == 2:
        qr2 = _rows(qr2_base, offs_m, sqr2t, T, DR, BDR)
    else:
        qr2 = qr
    do = _rows(do_base, offs_m, sot, T, DV_, BDV)
    lse1 = tl.load(LSE1 + row0 + offs_m, mask=rmask, other=float("inf"))
    lse2 = tl.load(LSE2 + row0 + offs_m, mask=rmask, other=float("inf"))
    dl1 = tl.load(DL1 + row0 + offs_m, mask=rmask, other=0.0)
    dl2 = tl.load(DL2 + row0 + offs_m, mask=rmask, other=0.0)
    # transposed scores [BN, BM]: s^T = k q^T
    qrt = tl.trans(qr)
    if ROPE2 == 1:
        r = tl.dot(kr, qrt)
        s1t = tl.dot(k1, tl.trans(q1), r)
        s2t = tl.dot(k2, tl.trans(q2), r)
    elif ROPE2 == 2:
        s1t = tl.dot(kr, qrt, tl.dot(k1, tl.trans(q1)))
        s2t = tl.dot(kr, tl.trans(qr2), tl.dot(k2, tl.trans(q2)))
    else:
        s1t = tl.dot(kr, qrt, tl.dot(k1, tl.trans(q1)))
        s2t = tl.dot(k2, tl.trans(q2))
    p1t = tl.math.exp2(s1t * qk1 - lse1[None, :])
    p2t = tl.math.exp2(s2t * qk2 - lse2[None, :])
    if MASK:
        causal = offs_m[None, :] >= offs_n[:, None]
        p1t = tl.where(causal, p1t, 0.0)
        p2t = tl.where(causal, p2t, 0.0)
    dv = tl.dot((p1t - lam * p2t).to(do.dtype), do, dv)
    dpt = tl.dot(v, tl.trans(do))
    ds1 = p1t * (dpt - dl1[None, :]) * scale1
    ds2 = p2t * (dpt + dl2[None, :]) * (-lam * scale2)  # dl2 holds -Delta2
    ds1t = ds1.to(q1.dtype)
    ds2t = ds2.to(q2.dtype)
    dk1 = tl.dot(ds1t, q1, dk1)
    dk2 = tl.dot(ds2t, q2, dk2)
    if ROPE2 == 1:
        dkr = tl.dot((ds1 + ds2).to(qr.dtype), qr, dkr)
    elif ROPE2 == 2:
        dkr = tl.dot(ds2t, qr2, tl.dot(ds1t, qr, dkr))
    else:
        dkr = tl.dot(ds1t, qr, dkr)
    return dk1, dk2, dkr, dv


@triton.jit
def _lat_bwd_kv_kernel(Q1, QR, Q2, QR2, K1, KR, K2, V, LAM, DO, LSE1, LSE2, DL1, DL2,
                       DK1, DKR, DK2, DV,
                       sq1b, sq1h, sq1t, sqrb, sqrh, sqrt_, sq2b, sq2h, sq2t, sqr2b, sqr2h, sqr2t,
                       sk1b, sk1h, sk1t, skrb, skrt, sk2b, sk2h, sk2t, svb, svh, svt, sob, soh, sot,
                       sdk1b, sdk1h, sdk1t, sdk2b, sdk2h, sdk2t, sdvb, sdvh, sdvt,
                       H, T, slam, qk1, qk2, scale1, scale2,
                       D1: tl.constexpr, DR: tl.constexpr, D2: tl.constexpr, DV_: tl.constexpr,
                       BD1: tl.constexpr, BDR: tl.constexpr, BD2: tl.constexpr, BDV: tl.constexpr,
                       ROPE2: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr):
    pid_n = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    start_n = pid_n * BN
    offs_n = start_n + tl.arange(0, BN)
    k1 = _rows(K1 + b * sk1b + h * sk1h, offs_n, sk1t, T, D1, BD1)
    kr = _rows(KR + b * skrb, offs_n, skrt, T, DR, BDR)
    k2 = _rows(K2 + b * sk2b + h * sk2h, offs_n, sk2t, T, D2, BD2)
    v = _rows(V + b * svb + h * svh, offs_n, svt, T, DV_, BDV)
    dk1 = tl.zeros([BN, BD1], tl.float32)
    dk2 = tl.zeros([BN, BD2], tl.float32)
    dkr = tl.zeros([BN, BDR], tl.float32)
    dv = tl.zeros([BN, BDV], tl.float32)
    lam = tl.load(LAM + h * slam)
    q1_base = Q1 + b * sq1b + h * sq1h
    qr_base = QR + b * sqrb + h * sqrh
    q2_base = Q2 + b * sq2b + h * sq2h
    qr2_base = QR2 + b * sqr2b + h * sqr2h
    do_base = DO + b * sob + h * soh
    row0 = bh * T
    lo = (start_n // BM) * BM
    mid = lo + tl.cdiv(start_n + BN - lo, BM) * BM  # query blocks from mid on: no mask
    for start_m in range(lo, mid, BM):
        dk1, dk2, dkr, dv = _kv_step(k1, kr, k2, v, dk1, dk2, dkr, dv, q1_base, qr_base, q2_base, qr2_base,
                                     do_base, sq1t, sqrt_, sq2t, sqr2t, sot, LSE1, LSE2, DL1, DL2, row0,
                                     start_m, offs_n, T, lam, qk1, qk2, scale1, scale2,
                                     D1, DR, D2, DV_, BD1, BDR, BD2, BDV, ROPE2, BM, True)
    for start_m in range(mid, T, BM):
        dk1, dk2, dkr, dv = _kv_step(k1, kr, k2, v, dk1, dk2, dkr, dv, q1_base, qr_base, q2_base, qr2_base,
                                     do_base, sq1t, sqrt_, sq2t, sqr2t, sot, LSE1, LSE2, DL1, DL2, row0,
                                     start_m, offs_n, T, lam, qk1, qk2, scale1, scale2,
                                     D1, DR, D2, DV_, BD1, BDR, BD2, BDV, ROPE2, BM, False)
    _store(DK1 + b * sdk1b + h * sdk1h, offs_n, sdk1t, T, dk1, D1, BD1)
    _store(DK2 + b * sdk2b + h * sdk2h, offs_n, sdk2t, T, dk2, D2, BD2)
    _store(DV + b * sdvb + h * sdvh, offs_n, sdvt, T, dv, DV_, BDV)
    _store(DKR + bh * T * DR, offs_n, DR, T, dkr, DR, BDR)  # per query head, float32, summed outside


@triton.jit
def _q_step(q1, qr, q2, qr2, do, dq1, dq2, dqr, dqr2, lse1, lse2, dl1, dl2, k1_base, kr_base, k2_base,
            v_base, sk1t, skrt, sk2t, svt, start_n, offs_m, T, lam, qk1, qk2, scale1, scale2,
            D1: tl.constexpr, DR: tl.constexpr, D2: tl.constexpr, DV: tl.constexpr,
            BD1: tl.constexpr, BDR: tl.constexpr, BD2: tl.constexpr, BDV: tl.constexpr,
            ROPE2: tl.constexpr, BN: tl.constexpr, MASK: tl.constexpr):
    offs_n = start_n + tl.arange(0, BN)
    k1 = _rows(k1_base, offs_n, sk1t, T, D1, BD1)
    kr = _rows(kr_base, offs_n, skrt, T, DR, BDR)
    k2 = _rows(k2_base, offs_n, sk2t, T, D2, BD2)
    v = _rows(v_base, offs_n, svt, T, DV, BDV)
    s1, s2 = _scores(q1, qr, q2, qr2, k1, kr, k2, ROPE2)
    p1 = tl.math.exp2(s1 * qk1 - lse1[:, None])
    p2 = tl.math.exp2(s2 * qk2 - lse2[:, None])
    if MASK:
        causal = offs_m[:, None] >= offs_n[None, :]
        p1 = tl.where(causal, p1, 0.0)
        p2 = tl.where(causal, p2, 0.0)
    dp = tl.dot(do, tl.trans(v))
    ds1 = p1 * (dp - dl1[:, None]) * scale1
    ds2 = p2 * (dp + dl2[:, None]) * (-lam * scale2)  # dl2 holds -Delta2
    ds1c = ds1.to(k1.dtype)
    ds2c = ds2.to(k2.dtype)
    dq1 = tl.dot(ds1c, k1, dq1)
    dq2 = tl.dot(ds2c, k2, dq2)
    if ROPE2 == 1:
        dqr = tl.dot((ds1 + ds2).to(kr.dtype), kr, dqr)
    elif ROPE2 == 2:
        dqr = tl.dot(ds1c, kr, dqr)
        dqr2 = tl.dot(ds2c, kr, dqr2)
    else:
        dqr = tl.dot(ds1c, kr, dqr)
    return dq1, dq2, dqr, dqr2


@triton.jit
def _lat_bwd_q_kernel(Q1, QR, Q2, QR2, K1, KR, K2, V, LAM, DO, LSE1, LSE2, DL1, DL2,
                      DQ1, DQR, DQ2, DQR2,
                      sq1b, sq1h, sq1t, sqrb, sqrh, sqrt_, sq2b, sq2h, sq2t, sqr2b, sqr2h, sqr2t,
                      sk1b, sk1h, sk1t, skrb, skrt, sk2b, sk2h, sk2t, svb, svh, svt, sob, soh, sot,
                      sdq1b, sdq1h, sdq1t, sdq2b, sdq2h, sdq2t,
                      H, T, slam, qk1, qk2, scale1, scale2,
                      D1: tl.constexpr, DR: tl.constexpr, D2: tl.constexpr, DV: tl.constexpr,
                      BD1: tl.constexpr, BDR: tl.constexpr, BD2: tl.constexpr, BDV: tl.constexpr,
                      ROPE2: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr):
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    offs_m = pid_m * BM + tl.arange(0, BM)
    rmask = offs_m < T
    q1 = _rows(Q1 + b * sq1b + h * sq1h, offs_m, sq1t, T, D1, BD1)
    qr = _rows(QR + b * sqrb + h * sqrh, offs_m, sqrt_, T, DR, BDR)
    q2 = _rows(Q2 + b * sq2b + h * sq2h, offs_m, sq2t, T, D2, BD2)
    if ROPE2 == 2:
        qr2 = _rows(QR2 + b * sqr2b + h * sqr2h, offs_m, sqr2t, T, DR, BDR)
    else:
        qr2 = qr
    do = _rows(DO + b * sob + h * soh, offs_m, sot, T, DV, BDV)
    lse1 = tl.load(LSE1 + bh * T + offs_m, mask=rmask, other=float("inf"))
    lse2 = tl.load(LSE2 + bh * T + offs_m, mask=rmask, other=float("inf"))
    dl1 = tl.load(DL1 + bh * T + offs_m, mask=rmask, other=0.0)
    dl2 = tl.load(DL2 + bh * T + offs_m, mask=rmask, other=0.0)
    lam = tl.load(LAM + h * slam)
    k1_base = K1 + b * sk1b + h * sk1h
    kr_base = KR + b * skrb
    k2_base = K2 + b * sk2b + h * sk2h
    v_base = V + b * svb + h * svh
    dq1 = tl.zeros([BM, BD1], tl.float32)
    dq2 = tl.zeros([BM, BD2], tl.float32)
    dqr = tl.zeros([BM, BDR], tl.float32)
    dqr2 = tl.zeros([BM, BDR], tl.float32)
    lo = pid_m * BM
    mid = (lo // BN) * BN
    for start_n in range(0, mid, BN):
        dq1, dq2, dqr, dqr2 = _q_step(q1, qr, q2, qr2, do, dq1, dq2, dqr, dqr2, lse1, lse2, dl1, dl2,
                                      k1_base, kr_base, k2_base, v_base, sk1t, skrt, sk2t, svt, start_n,
                                      offs_m, T, lam, qk1, qk2, scale1, scale2,
                                      D1, DR, D2, DV, BD1, BDR, BD2, BDV, ROPE2, BN, False)
    for start_n in range(mid, tl.minimum(lo + BM, T), BN):
        dq1, dq2, dqr, dqr2 = _q_step(q1, qr, q2, qr2, do, dq1, dq2, dqr, dqr2, lse1, lse2, dl1, dl2,
                                      k1_base, kr_base, k2_base, v_base, sk1t, skrt, sk2t, svt, start_n,
                                      offs_m, T, lam, qk1, qk2, scale1, scale2,
                                      D1, DR, D2, DV, BD1, BDR, BD2, BDV, ROPE2, BN, True)
    _store(DQ1 + b * sdq1b + h * sdq1h, offs_m, sdq1t, T, dq1, D1, BD1)
    _store(DQ2 + b * sdq2b + h * sdq2h, offs_m, sdq2t, T, dq2, D2, BD2)
    _store(DQR + bh * T * DR, offs_m, DR, T, dqr, DR, BDR)  # float32 [B, H, T, dr], roped back outside
    if ROPE2 == 2:
        _store(DQR2 + bh * T * DR, offs_m, DR, T, dqr2, DR, BDR)


@triton.jit
def _head_sum_kernel(X, COS, SIN, OUT, HX, T, sob, sot, sign,
                     D: tl.constexpr, BD: tl.constexpr, ROPE: tl.constexpr, BLOCK_T: tl.constexpr):
    """OUT[b, t] = sum over the HX heads of X[b, h, t] (X float32 [B, HX, T, D] contiguous), then
    (ROPE) rotated by sign * theta_t as the RoPE kernel does; OUT any (batch, time) strides."""
    b = tl.program_id(0)
    t = tl.program_id(1) * BLOCK_T + tl.arange(0, BLOCK_T)[:, None]
    d = tl.arange(0, BD)[None, :]
    ob = OUT + b * sob + t * sot
    if ROPE:
        HALF = D // 2
        mask = (t < T) & (d < HALF)
        x1 = tl.zeros([BLOCK_T, BD], tl.float32)
        x2 = tl.zeros([BLOCK_T, BD], tl.float32)
        for h in range(HX):
            xb = X + ((b * HX + h) * T + t) * D
            x1 += tl.load(xb + d, mask=mask, other=0.0)
            x2 += tl.load(xb + HALF + d, mask=mask, other=0.0)
        c = tl.load(COS + t * HALF + d, mask=mask, other=0.0)
        sn = tl.load(SIN + t * HALF + d, mask=mask, other=0.0) * sign
        tl.store(ob + d, (x1 * c - x2 * sn).to(OUT.dtype.element_ty), mask=mask)
        tl.store(ob + HALF + d, (x2 * c + x1 * sn).to(OUT.dtype.element_ty), mask=mask)
    else:
        mask = (t < T) & (d < D)
        acc = tl.zeros([BLOCK_T, BD], tl.float32)
        for h in range(HX):
            acc += tl.load(X + ((b * HX + h) * T + t) * D + d, mask=mask, other=0.0)
        tl.store(ob + d, acc.to(OUT.dtype.element_ty), mask=mask)


# ------------------------------------------------------------------------------------------
# Launch configs (BM, BN, num_warps, num_stages); overridable for sweeps. Defaults: the best of
# a sweep on an H100 at the shakespeare-384 shapes (B=16, T=1024, 6 heads, dn 64, dr 32, dv 64;
# benchmarks/results/diff_latent_s2_run1.json).
CONFIGS = {
    "fwd": (64, 64, 4, 2),
    "bwd_kv": (32, 128, 8, 2),
    "bwd_q": (64, 64, 4, 2),
}


INTERPRET_CONFIGS = {"fwd": (16, 16, 1, 1), "bwd_kv": (16, 16, 1, 1), "bwd_q": (16, 16, 1, 1)}


def _config(name):
    bm, bn, w, s = (INTERPRET_CONFIGS if _interpret() else CONFIGS)[name]
    if name != "bwd_kv" and bm % bn and bn % bm:  # the loops split blocks at multiples of both
        raise ValueError(f"{name}: BM and BN must divide one another; got {bm}, {bn}")
    return bm, bn, w, s



# ------------------------------------------------------------------------------------------
# Launching. Eager training at the shakespeare-384 size is bound by host time, and each launch
# through ``kernel[grid](...)`` binds and specialises ~60 arguments in Python. So the first call
# of each shape (the "slow path" below: views, strides, ``kernel[grid]``) records its launches;
# later calls of that shape REPLAY them: the compiled kernel's launcher is called directly with
# the recorded scalar arguments and, for the tensor arguments, the new data pointers (root
# tensor's pointer + the recorded byte offset); no views are made. The plan's key holds every
# input shape, stride, dtype and pointer alignment that the specialisation depends on, and the
# buffers the function allocates itself are laid out from that key alone. Replaying is skipped
# under the interpreter, when a launch hook (profiler) is set, where the installed triton does not
# expose the launcher pieces used (then the slow path runs), and with ATTNLAB_FAST_LAUNCH=0.
#
# Until session 4 the hook check read ``launch_enter_hook is not None``, but Triton >= 3.4 keeps
# its hooks in ``HookChain`` objects that are never None, so the replay never ran on a GPU. With
# the check fixed, ``tests/test_diff_latent_launch.py -m gpu`` (replay output == slow path, and the
# replay ran) passed on the H100, and the replay took the shakespeare-384 step from 32.5 to 23.0 ms
# (diff-mla) and 31.4 to 22.1 ms (cmd-mla) in one process (benchmarks/device_runs/replay_ab.py),
# so it is on by default again.

try:
    from triton import knobs as _knobs
    from triton.runtime.driver import driver as _driver
except ImportError:  # older triton: no replay
    _knobs = _driver = None

_FAST = os.environ.get("ATTNLAB_FAST_LAUNCH", "1") != "0" and _knobs is not None
from ..launch_replay import DescArg as _DescArg, hook_set  # the launch-hook check shared with DSALT and spectral

_PLANS: dict = {}  # key -> list of recorded launches, or None (this shape is not replayable)
_ALIGN = 256  # byte alignment of the blocks carved out of one workspace


def _fast_ok() -> bool:
    return _FAST and not _interpret()


class _Recorder:
    """Launches ``kernel[grid](*args)`` and, when ``on``, keeps (compiled kernel, grid, args)."""

    def __init__(self, on: bool):
        self.on, self.launches = on, []

    def __call__(self, kernel, grid, args, **opts):
        compiled = kernel[grid](*args, **opts)
        if self.on:
            self.launches.append((compiled, grid, args))


def _sharing(roots):
    """None if the roots have distinct storages, else per root (index of the first root with its
    storage, pointer difference to it): part of a plan's key, so that an argument found in a
    shared storage is replayed relative to the same root with the same offset."""
    sp = [r.untyped_storage().data_ptr() for r in roots]
    if len(set(sp)) == len(sp):
        return None
    first = [sp.index(x) for x in sp]
    return tuple((j, r.data_ptr() - roots[j].data_ptr()) for j, r in zip(first, roots))


def _make_plan(launches, roots):
    """Replayable launches: per launch (launcher, function, metadata, grid, argument template,
    slots), where each slot (index, root, byte offset) is a tensor argument inside root's storage
    (the first such root). None if something is not replayable (then that key takes the slow
    path)."""
    try:
        sp = [r.untyped_storage().data_ptr() for r in roots]
        plan = []
        for compiled, grid, args in launches:
            if hasattr(compiled, "result"):
                compiled = compiled.result()
            run, fn, meta = compiled.run, compiled.function, compiled.packed_metadata
            tpl, slots, dslots = list(args), [], []
            for i, a in enumerate(args):
                if isinstance(a, torch.Tensor):
                    j = sp.index(a.untyped_storage().data_ptr())
                    slots.append((i, j, a.data_ptr() - roots[j].data_ptr()))
                    tpl[i] = None
                elif hasattr(a, "block_shape") and isinstance(getattr(a, "base", None), torch.Tensor):
                    # a host TMA descriptor (Gluon kernels): rebuilt on the new pointer at each replay
                    j = sp.index(a.base.untyped_storage().data_ptr())
                    dslots.append((i, j, a.base.data_ptr() - roots[j].data_ptr(), list(a.shape), list(a.strides),
                                   a.padding))
                    tpl[i] = None
            grid = tuple(grid) + (1, 1)
            plan.append((run, fn, meta, grid[0], grid[1], grid[2], tpl, tuple(slots), tuple(dslots)))
        return plan
    except Exception:  # noqa: BLE001 - any surprise: never replay this key
        return None


def _replay(plan, roots) -> bool:
    if hook_set(_knobs.runtime.launch_enter_hook) or hook_set(_knobs.runtime.launch_exit_hook):
        return False
    ptrs = [r.data_ptr() for r in roots]
    dev = _driver.active.get_current_device()
    stream = _driver.active.get_current_stream(dev)
    for run, fn, meta, g0, g1, g2, tpl, slots, dslots in plan:
        args = tpl.copy()
        for i, j, off in slots:
            args[i] = ptrs[j] + off
        for i, j, off, shape, strides, padding in dslots:
            args[i] = _DescArg(ptrs[j] + off, shape, strides, padding)
        run(g0, g1, g2, stream, fn, meta, None, None, None, *args)
    return True


def _launch(key, roots, body, *extra):
    """Run ``body(recorder, *roots, *extra)`` (the slow path) or replay its plan for ``key``."""
    if _fast_ok():
        plan = _PLANS.get(key, False)
        if plan:
            try:
                if _replay(plan, roots):
                    return
            except Exception as e:  # noqa: BLE001 - the launcher rejected the replay: slow path from now on
                warnings.warn(f"latent_diff_attention: launch replay failed ({e!r}); using the normal launch path")
                _PLANS[key] = plan = None
        rec = _Recorder(plan is False)
        body(rec, *roots, *extra)
        if rec.on:
            if len(_PLANS) > 256:
                _PLANS.clear()
            _PLANS[key] = _make_plan(rec.launches, roots)
        return
    body(_Recorder(False), *roots, *extra)


def _s3(x):
    """(batch, head, time) strides of a [B, H, T, D] view."""
    return x.stride(0), x.stride(1), x.stride(2)


def _rope(go, x4, cos, sin, sign, out4):
    """RoPE (sign=1) or its inverse (sign=-1) of x4 [B, H, T, D] into out4 (any strides, last 1)."""
    b, h, t, d = x4.shape
    half = d // 2
    block_d = triton.next_power_of_2(half)
    block_t = max(1, min(64, 4096 // block_d, triton.next_power_of_2(t)))
    go(_rope_kernel, (b * h, triton.cdiv(t, block_t)),
       (x4, cos, sin, out4, h, t, *_s3(x4), *_s3(out4), sign, half, block_t, block_d))


def _head_sum(go, x, cos, sin, out, rope: bool):
    """out [B, T, D] view (any batch/time strides) = sum over heads of x [B, HX, T, D] float32
    contiguous, then (rope) rotated back (inverse RoPE)."""
    b, hx, t, d = x.shape
    bd = triton.next_power_of_2(d // 2 if rope else d)
    block_t = max(1, min(64, 4096 // bd, triton.next_power_of_2(t)))
    go(_head_sum_kernel, (b, triton.cdiv(t, block_t)),
       (x, cos, sin, out, hx, t, out.stride(0), out.stride(-2), -1.0, d, bd, rope, block_t))


def _hs(x, heads):
    """Strides with the head stride zeroed for a single head shared by all query heads."""
    sb, sh, st = _s3(x)
    return sb, (0 if x.shape[1] == 1 and heads > 1 else sh), st


def _carve(ws, parts):
    """Views of one byte workspace: parts = [(shape, dtype)], each block aligned to _ALIGN."""
    views, off = [], 0
    for shape, dt in parts:
        n = math.prod(shape) * _ESIZE[dt]
        views.append(ws[off:off + n].view(dt).view(shape))
        off += -(-n // _ALIGN) * _ALIGN
    return views


@functools.lru_cache(maxsize=256)
def _ws_bytes(b, t, g, dt, which):
    """Bytes of the forward ("fwd") or backward ("bwd") workspace."""
    return _nbytes(_fwd_parts(b, t, g, dt) if which == "fwd" else _bwd_parts(b, t, g))


def _nbytes(parts):
    return sum(-(-math.prod(shape) * _ESIZE[dt] // _ALIGN) * _ALIGN for shape, dt in parts)


_ESIZE = {torch.float32: 4, torch.float16: 2, torch.bfloat16: 2, torch.float64: 8}


def _fwd_parts(b, t, g, dt):
    """The forward's workspace: qr, kr, qr2 (roped queries/key), o2, lse1, lse2."""
    h, dr = g.heads, g.dr
    f32 = torch.float32
    return [((b, h, t, dr), dt), ((b, 1, t, dr), dt), ((b, g.noise_heads if g.rope2 == 2 else 0, t, dr), dt),
            ((b, t, h, g.dv), dt), ((b, h, t), f32), ((b, h, t), f32)]


def _bwd_parts(b, t, g):
    """The backward's float32 workspace: dl1, dkr, dqr, dqr2, dk2w, dq2w (per query head)."""
    h, dr = g.heads, g.dr
    shared = g.noise_heads == 1 and h > 1
    return [((b, h, t), torch.float32), ((b, h, t, dr), torch.float32), ((b, h, t, dr), torch.float32),
            ((b, h if g.rope2 == 2 else 0, t, dr), torch.float32),
            ((b, h if shared else 0, t, g.dn2), torch.float32), ((b, h if shared else 0, t, g.dn2), torch.float32)]


def _fwd_body(go, q_all, kvu, kr_pre, lam, cos, sin, out, ws, g):
    """The forward's launches (slow path: views and strides from the tensors)."""
    b, t, _ = q_all.shape
    h, dr, dv = g.heads, g.dr, g.dv
    q1, qr_pre, q2, qr2_pre, k1, v, k2 = _views(q_all, kvu, g)
    qr, kr, qr2, o2, lse1, lse2 = _carve(ws, _fwd_parts(b, t, g, q_all.dtype))
    _rope(go, qr_pre, cos, sin, 1.0, qr)
    _rope(go, kr_pre.unsqueeze(1), cos, sin, 1.0, kr)
    if g.rope2 == 2:
        _rope(go, qr2_pre, cos, sin, 1.0, qr2)
    else:
        qr2 = qr
    o4 = out.transpose(1, 2)
    bm, bn, w, s = _config("fwd")
    go(_lat_fwd_kernel, (triton.cdiv(t, bm), b * h),
       (q1, qr, q2, qr2, k1, kr, k2, v, lam, out, o2, lse1, lse2,
        *_s3(q1), *_s3(qr), *_hs(q2, h), *_hs(qr2, h), *_s3(k1), kr.stride(0), kr.stride(2),
        *_hs(k2, h), *_s3(v), *_s3(o4), h, t, lam.stride(0), g.scale1 * LOG2E, g.scale2 * LOG2E,
        g.dn, dr, g.dn2, dv, _pow2(g.dn), _pow2(dr), _pow2(g.dn2), _pow2(dv), g.rope2, bm, bn),
       num_warps=w, num_stages=s)


def _bwd_body(go, q_all, kvu, lam, cos, sin, out, ws, dout, dq_all, dkvu, dkr_pre, dl2, bws, g):
    """The backward's launches (slow path)."""
    b, t, _ = q_all.shape
    h, h2, dr, dv = g.heads, g.noise_heads, g.dr, g.dv
    qr, kr, qr2, o2, lse1, lse2 = _carve(ws, _fwd_parts(b, t, g, q_all.dtype))
    if g.rope2 != 2:
        qr2 = qr
    dl1, dkr, dqr, dqr2, dk2w, dq2w = _carve(bws, _bwd_parts(b, t, g))
    o4 = out.transpose(1, 2)  # dout shares its layout
    bm = 16 if _interpret() else 64
    go(_lat_pre_kernel, (triton.cdiv(t, bm), b * h),
       (dout, out, o2, lam, dl1, dl2, *_s3(o4), h, t, lam.stride(0), dv, _pow2(dv), bm))
    q1, _, q2, _, k1, v, k2 = _views(q_all, kvu, g)
    dq1, dqr_pre, dq2, dqr2_pre, dk1, dv_, dk2 = _views(dq_all, dkvu, g)
    shared = h2 == 1 and h > 1  # the CMD noise head: per-query-head partial grads, summed
    dk2w = dk2w if shared else dk2
    dq2w = dq2w if shared else dq2
    dqr2 = dqr2 if g.rope2 == 2 else dqr
    common = (*_s3(q1), *_s3(qr), *_hs(q2, h), *_hs(qr2, h), *_s3(k1), kr.stride(0), kr.stride(2),
              *_hs(k2, h), *_s3(v), *_s3(o4))
    consts = (g.dn, dr, g.dn2, dv, _pow2(g.dn), _pow2(dr), _pow2(g.dn2), _pow2(dv), g.rope2)
    scales = (h, t, lam.stride(0), g.scale1 * LOG2E, g.scale2 * LOG2E, g.scale1, g.scale2)
    bm, bn, w, s = _config("bwd_kv")
    go(_lat_bwd_kv_kernel, (triton.cdiv(t, bn), b * h),
       (q1, qr, q2, qr2, k1, kr, k2, v, lam, dout, lse1, lse2, dl1, dl2, dk1, dkr, dk2w, dv_,
        *common, *_s3(dk1), *_s3(dk2w), *_s3(dv_), *scales, *consts, bm, bn), num_warps=w, num_stages=s)
    bm, bn, w, s = _config("bwd_q")
    go(_lat_bwd_q_kernel, (triton.cdiv(t, bm), b * h),
       (q1, qr, q2, qr2, k1, kr, k2, v, lam, dout, lse1, lse2, dl1, dl2, dq1, dqr, dq2w, dqr2,
        *common, *_s3(dq1), *_s3(dq2w), *scales, *consts, bm, bn), num_warps=w, num_stages=s)
    _rope(go, dqr, cos, sin, -1.0, dqr_pre)
    if g.rope2 == 2:
        if shared:
            _head_sum(go, dqr2, cos, sin, dqr2_pre[:, 0], True)
        else:
            _rope(go, dqr2, cos, sin, -1.0, dqr2_pre)
    _head_sum(go, dkr, cos, sin, dkr_pre, True)
    if shared:
        _head_sum(go, dk2w, cos, sin, dk2[:, 0], False)
        _head_sum(go, dq2w, cos, sin, dq2[:, 0], False)


def _align(x):
    return x.data_ptr() % 16


def _forward(q_all, kvu, kr_pre, lam, cos, sin, g: LatentGeometry):
    """Forward launches; returns (out [B, T, H, dv], the workspace the backward reads, the launch
    key, which the backward's key extends)."""
    b, t, _ = q_all.shape
    dev, dt = q_all.device, q_all.dtype
    key = (q_all.shape, q_all.stride(), kvu.shape, kvu.stride(), kr_pre.stride(), dt, dev, g, lam.stride(0),
           cos.shape, _align(q_all), _align(kvu), _align(kr_pre), _align(lam), _align(cos), _align(sin),
           CONFIGS["fwd"], _sharing((q_all, kvu, kr_pre, lam, cos, sin)))
    out = torch.empty(b, t, g.heads, g.dv, device=dev, dtype=dt)
    ws = torch.empty(_ws_bytes(b, t, g, dt, "fwd"), device=dev, dtype=torch.uint8)
    _launch(key, (q_all, kvu, kr_pre, lam, cos, sin, out, ws), _fwd_body, g)
    return out, ws, key


def _backward(q_all, kvu, lam, cos, sin, out, ws, dout, kr_shape, g: LatentGeometry, fwd_key=None):
    """Backward launches; returns (dq_all, dkvu, dkr_pre, dl2) with dl2 [B, H, T] = -Delta2."""
    b, t, _ = q_all.shape
    dev = q_all.device
    if dout.stride() != out.stride():
        dout = dout.contiguous()
    if fwd_key is None:  # (the torch.library op, whose outputs cannot carry it) rebuilt from the inputs
        fwd_key = (q_all.shape, q_all.stride(), kvu.shape, kvu.stride(), q_all.dtype, dev, g, lam.stride(0),
                   cos.shape, _align(q_all), _align(kvu), _align(lam), _align(cos), _align(sin), CONFIGS["fwd"])
    key = (fwd_key, dout.stride(), _align(dout), CONFIGS["bwd_kv"], CONFIGS["bwd_q"],
           _sharing((q_all, kvu, lam, cos, sin, out, ws, dout)))
    dq_all = torch.empty_like(q_all)
    dkvu = torch.empty_like(kvu)
    dkr_pre = torch.empty(kr_shape, device=dev, dtype=q_all.dtype)
    dl2 = torch.empty(b, g.heads, t, device=dev, dtype=torch.float32)
    bws = torch.empty(_ws_bytes(b, t, g, None, "bwd"), device=dev, dtype=torch.uint8)
    _launch(key, (q_all, kvu, lam, cos, sin, out, ws, dout, dq_all, dkvu, dkr_pre, dl2, bws), _bwd_body, g)
    return dq_all, dkvu, dkr_pre, dl2


class LatentDiffAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q_all, kvu, kr_pre, lam, cos, sin, g: LatentGeometry):
        out, ws, ctx.key = _forward(q_all, kvu, kr_pre, lam, cos, sin, g)
        ctx.g, ctx.kr = g, kr_pre.shape
        ctx.save_for_backward(q_all, kvu, lam, cos, sin, out, ws)
        return out

    @staticmethod
    def backward(ctx, dout):
        q_all, kvu, lam, cos, sin, out, ws = ctx.saved_tensors
        dq_all, dkvu, dkr_pre, dl2 = _backward(q_all, kvu, lam, cos, sin, out, ws, dout, ctx.kr, ctx.g, ctx.key)
        return dq_all, dkvu, dkr_pre, dl2.sum((0, 2)), None, None, None  # dl2 = -Delta2: dlam_h = -sum Delta2


def latent_diff_attention(q_all, kvu, kr_pre, lam, cos, sin, g: LatentGeometry) -> torch.Tensor:
    """Causal differential attention of the latent family from its projection outputs (see the
    module docstring for the layouts). lam: broadcastable to [H] (differentiable).
    Returns [B, T, H, dv] in q_all's dtype."""
    if q_all.shape[-1] != g.q_width or kvu.shape[-1] != g.kv_width or kr_pre.shape[-1] != g.dr:
        raise ValueError(f"widths do not match the geometry {g}: q_all {q_all.shape[-1]} (want {g.q_width}), "
                         f"kvu {kvu.shape[-1]} (want {g.kv_width}), kr {kr_pre.shape[-1]} (want {g.dr})")
    if g.noise_heads not in (1, g.heads):
        raise ValueError(f"noise heads must be 1 or {g.heads}; got {g.noise_heads}")
    dtype = q_all.dtype
    if q_all.stride(-1) != 1:
        q_all = q_all.contiguous()
    if kvu.dtype != dtype:
        kvu = kvu.to(dtype)
    if kvu.stride(-1) != 1:
        kvu = kvu.contiguous()
    if kr_pre.dtype != dtype:
        kr_pre = kr_pre.to(dtype)
    if kr_pre.stride(-1) != 1:
        kr_pre = kr_pre.contiguous()
    if not (isinstance(lam, torch.Tensor) and lam.dtype == torch.float32 and lam.dim() == 1 and lam.shape[0] == g.heads
            and lam.device == q_all.device):
        lam = torch.as_tensor(lam, dtype=torch.float32, device=q_all.device).reshape(-1).expand(g.heads)
    if cos.dtype != torch.float32 or not cos.is_contiguous():
        cos = cos.float().contiguous()
    if sin.dtype != torch.float32 or not sin.is_contiguous():
        sin = sin.float().contiguous()
    if torch.compiler.is_compiling():  # an opaque torch.library op that inductor schedules around
        from .latent_op import latent_diff_op

        return latent_diff_op(q_all, kvu, kr_pre, lam, cos, sin, g)
    return LatentDiffAttention.apply(q_all, kvu, kr_pre, lam, cos, sin, g)
