"""Fused differential attention, second design (session 6): kernels laid out for Hopper.

Same function as ``kernel.py`` (see there for the algebra): causal
``out = softmax(s1 Q1 K1^T) V - lam softmax(s2 Q2 K2^T) V``, GQA key/value heads and the CMD case
(one noise head) included. What differs is how the work is laid out:

- tiles are read through TMA tensor descriptors (``triton.tools.tensor_descriptor.TensorDescriptor``,
  4-D over [B, H, T, D] with the tensors' own strides; rows past T are zero-filled by the copy
  engine) on GPUs that have it (sm_90+), through masked pointer loads elsewhere and in the
  interpreter (``DESC`` constexpr; both paths compute the same thing and both are tested);
- the forward grid runs the longest query blocks first; the softmax scale is applied in log2 units
  with one FMA per score (``max(s) * qk``, the scale must be positive);
- forward modes: ``"interleaved"`` (both streams' online softmax per K/V tile, V tile shared) or
  ``"sequential"`` (stream 1 over all key tiles, its normalised output kept in registers, then
  stream 2: fewer live registers, V read twice, mostly from L2);
- backward modes: ``"fused"`` (one program per key block keeps dK1, dK2, dV; dP = dO V^T and dV
  shared by the streams, dQ1/dQ2 by float32 TMA reduce-adds: 8 matmuls per tile pair, the fewest),
  ``"split"`` (one single-stream FlashAttention-2 backward per stream, dV of the second added to
  the first's: 10 matmuls, two accumulators per program instead of three), and their
  ``"-separate"`` forms without dQ in the key-block kernels, followed by one dQ kernel per query
  block (both streams, dP shared; 5 matmuls). The default, ``"split-separate"`` (13 matmuls), was
  measured fastest: its kernels fit the register file and need no atomics.

``NS=1`` turns every kernel into plain single-stream causal attention (``flash_single``): the same
code's rate on one stream, compared with SDPA in the benchmark, is the ceiling the fused kernels
can reach with this Triton.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from ..launch_replay import Desc as _Desc, DescLauncher as _DescLauncher
from .kernel import _diff_bwd_pre_kernel, _diff_bwd_q_kernel, _dq_tile, _interpret, _pow2  # shared with kernel.py

try:  # Triton >= 3.4
    from triton.tools.tensor_descriptor import TensorDescriptor
except ImportError:  # pragma: no cover
    TensorDescriptor = None

LOG2E = 1.4426950408889634


@triton.jit
def _tile(X, b, hh, row, sb, sh, st, T, R: tl.constexpr, D: tl.constexpr, BD: tl.constexpr,
          DESC: tl.constexpr):
    """Rows row..row+R of head hh of batch b: [R, BD], zero past T and past D."""
    if DESC:
        return X.load([b, hh, row, 0]).reshape(R, BD)
    else:
        offs = row + tl.arange(0, R)
        od = tl.arange(0, BD)
        ptrs = X + b * sb + hh * sh + offs[:, None] * st + od[None, :]
        if D == BD:
            return tl.load(ptrs, mask=(offs < T)[:, None], other=0.0)
        else:
            return tl.load(ptrs, mask=(offs < T)[:, None] & (od < D)[None, :], other=0.0)


@triton.jit
def _put(X, b, hh, row, sb, sh, st, T, x, R: tl.constexpr, D: tl.constexpr, BD: tl.constexpr,
         DESC: tl.constexpr):
    if DESC:
        X.store([b, hh, row, 0], x.to(X.dtype).reshape(1, 1, R, BD))  # rows past T are clipped
    else:
        offs = row + tl.arange(0, R)
        od = tl.arange(0, BD)
        tl.store(X + b * sb + hh * sh + offs[:, None] * st + od[None, :], x.to(X.dtype.element_ty),
                 mask=(offs < T)[:, None] & (od < D)[None, :])


@triton.jit
def _softmax_step(q, k, v, m, l, acc, qk, offs_m, offs_n, MASK: tl.constexpr):
    """One key tile of one stream's online softmax, in log2 units (qk = scale * log2 e > 0)."""
    s = tl.dot(q, tl.trans(k))
    if MASK:
        s = tl.where(offs_m[:, None] >= offs_n[None, :], s * qk, -1.0e30)
        mn = tl.maximum(m, tl.max(s, 1))
        s = s - mn[:, None]
    else:
        mn = tl.maximum(m, tl.max(s, 1) * qk)
        s = s * qk - mn[:, None]
    p = tl.math.exp2(s)
    alpha = tl.math.exp2(m - mn)
    l = l * alpha + tl.sum(p, 1)
    acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None])
    return mn, l, acc


@triton.jit
def _stream_loop(q, K, V, b, hk, hv, skb, skh, skt, svb, svh, svt, lo, hi, offs_m, T, m, l, acc, qk,
                 D: tl.constexpr, DV: tl.constexpr, BD: tl.constexpr, BDV: tl.constexpr,
                 BN: tl.constexpr, MASK: tl.constexpr, DESC: tl.constexpr):
    for start_n in range(lo, hi, BN):
        offs_n = start_n + tl.arange(0, BN)
        k = _tile(K, b, hk, start_n, skb, skh, skt, T, BN, D, BD, DESC)
        v = _tile(V, b, hv, start_n, svb, svh, svt, T, BN, DV, BDV, DESC)
        m, l, acc = _softmax_step(q, k, v, m, l, acc, qk, offs_m, offs_n, MASK)
    return m, l, acc


@triton.jit
def _pair_loop(q1, q2, K1, K2, V, b, hk1, hk2, sk1b, sk1h, sk1t, sk2b, sk2h, sk2t, svb, svh, svt,
               lo, hi, offs_m, T, m1, l1, acc1, m2, l2, acc2, qk1, qk2,
               D1: tl.constexpr, D2: tl.constexpr, DV: tl.constexpr, BD1: tl.constexpr,
               BD2: tl.constexpr, BDV: tl.constexpr, BN: tl.constexpr, MASK: tl.constexpr,
               DESC: tl.constexpr):
    for start_n in range(lo, hi, BN):
        offs_n = start_n + tl.arange(0, BN)
        k1 = _tile(K1, b, hk1, start_n, sk1b, sk1h, sk1t, T, BN, D1, BD1, DESC)
        v = _tile(V, b, hk1, start_n, svb, svh, svt, T, BN, DV, BDV, DESC)
        m1, l1, acc1 = _softmax_step(q1, k1, v, m1, l1, acc1, qk1, offs_m, offs_n, MASK)
        k2 = _tile(K2, b, hk2, start_n, sk2b, sk2h, sk2t, T, BN, D2, BD2, DESC)
        m2, l2, acc2 = _softmax_step(q2, k2, v, m2, l2, acc2, qk2, offs_m, offs_n, MASK)
    return m1, l1, acc1, m2, l2, acc2


@triton.jit
def _h_fwd_kernel(Q1, K1, Q2, K2, V, LAM, O, O2, LSE1, LSE2,
                  sq1b, sq1h, sq1t, sk1b, sk1h, sk1t, sq2b, sq2h, sq2t, sk2b, sk2h, sk2t,
                  svb, svh, svt, sob, soh, sot,
                  H, T, NM, GQ2, GK1, GK2, qk1, qk2,
                  D1: tl.constexpr, D2: tl.constexpr, DV: tl.constexpr,
                  BD1: tl.constexpr, BD2: tl.constexpr, BDV: tl.constexpr,
                  BM: tl.constexpr, BN: tl.constexpr, NS: tl.constexpr, SEQ: tl.constexpr,
                  AUX: tl.constexpr, DESC: tl.constexpr):
    bh = tl.program_id(0)
    pid_m = NM - 1 - tl.program_id(1)  # longest query blocks first
    b = bh // H
    h = bh % H
    m0 = pid_m * BM
    offs_m = m0 + tl.arange(0, BM)
    hk1 = h // GK1
    hi = tl.minimum(m0 + BM, T)
    q1 = _tile(Q1, b, h, m0, sq1b, sq1h, sq1t, T, BM, D1, BD1, DESC)
    m1 = tl.full([BM], float("-inf"), tl.float32)
    l1 = tl.zeros([BM], tl.float32)
    acc1 = tl.zeros([BM, BDV], tl.float32)
    if NS == 1:
        m1, l1, acc1 = _stream_loop(q1, K1, V, b, hk1, hk1, sk1b, sk1h, sk1t, svb, svh, svt, 0, m0, offs_m, T,
                                    m1, l1, acc1, qk1, D1, DV, BD1, BDV, BN, False, DESC)
        m1, l1, acc1 = _stream_loop(q1, K1, V, b, hk1, hk1, sk1b, sk1h, sk1t, svb, svh, svt, m0, hi, offs_m, T,
                                    m1, l1, acc1, qk1, D1, DV, BD1, BDV, BN, True, DESC)
        _put(O, b, h, m0, sob, soh, sot, T, acc1 / l1[:, None], BM, DV, BDV, DESC)
        if AUX:
            tl.store(LSE1 + bh * T + offs_m, m1 + tl.math.log2(l1), mask=offs_m < T)
    else:
        hk2 = h // GK2
        q2 = _tile(Q2, b, h // GQ2, m0, sq2b, sq2h, sq2t, T, BM, D2, BD2, DESC)
        m2 = tl.full([BM], float("-inf"), tl.float32)
        l2 = tl.zeros([BM], tl.float32)
        acc2 = tl.zeros([BM, BDV], tl.float32)
        if SEQ:
            m1, l1, acc1 = _stream_loop(q1, K1, V, b, hk1, hk1, sk1b, sk1h, sk1t, svb, svh, svt, 0, m0, offs_m, T,
                                        m1, l1, acc1, qk1, D1, DV, BD1, BDV, BN, False, DESC)
            m1, l1, acc1 = _stream_loop(q1, K1, V, b, hk1, hk1, sk1b, sk1h, sk1t, svb, svh, svt, m0, hi, offs_m, T,
                                        m1, l1, acc1, qk1, D1, DV, BD1, BDV, BN, True, DESC)
            o1 = (acc1 / l1[:, None]).to(q1.dtype)  # kept in registers at input precision
            m2, l2, acc2 = _stream_loop(q2, K2, V, b, hk2, hk1, sk2b, sk2h, sk2t, svb, svh, svt, 0, m0, offs_m, T,
                                        m2, l2, acc2, qk2, D2, DV, BD2, BDV, BN, False, DESC)
            m2, l2, acc2 = _stream_loop(q2, K2, V, b, hk2, hk1, sk2b, sk2h, sk2t, svb, svh, svt, m0, hi, offs_m, T,
                                        m2, l2, acc2, qk2, D2, DV, BD2, BDV, BN, True, DESC)
            o2 = acc2 / l2[:, None]
            out = o1.to(tl.float32) - tl.load(LAM + h) * o2
        else:
            m1, l1, acc1, m2, l2, acc2 = _pair_loop(
                q1, q2, K1, K2, V, b, hk1, hk2, sk1b, sk1h, sk1t, sk2b, sk2h, sk2t, svb, svh, svt,
                0, m0, offs_m, T, m1, l1, acc1, m2, l2, acc2, qk1, qk2,
                D1, D2, DV, BD1, BD2, BDV, BN, False, DESC)
            m1, l1, acc1, m2, l2, acc2 = _pair_loop(
                q1, q2, K1, K2, V, b, hk1, hk2, sk1b, sk1h, sk1t, sk2b, sk2h, sk2t, svb, svh, svt,
                m0, hi, offs_m, T, m1, l1, acc1, m2, l2, acc2, qk1, qk2,
                D1, D2, DV, BD1, BD2, BDV, BN, True, DESC)
            o2 = acc2 / l2[:, None]
            out = acc1 / l1[:, None] - tl.load(LAM + h) * o2
        _put(O, b, h, m0, sob, soh, sot, T, out, BM, DV, BDV, DESC)
        if AUX:
            _put(O2, b, h, m0, sob, soh, sot, T, o2, BM, DV, BDV, DESC)
            tl.store(LSE1 + bh * T + offs_m, m1 + tl.math.log2(l1), mask=offs_m < T)
            tl.store(LSE2 + bh * T + offs_m, m2 + tl.math.log2(l2), mask=offs_m < T)


# ------------------------------------------------------------------------------------------
# Backward: one program per key block (longest first), looping over the query blocks from the
# diagonal to the end.

@triton.jit
def _dq_atomic(DQ, b, h, row0, start_m, T, ds_t, k, scale, BM: tl.constexpr, D: tl.constexpr,
               BD: tl.constexpr, DESC: tl.constexpr):
    """dQ[rows] += scale * dS K in float32 (TMA reduce-add with descriptors, else atomics)."""
    dq = tl.dot(tl.trans(ds_t), k) * scale
    if DESC:
        DQ.atomic_add([b, h, start_m, 0], dq.reshape(1, 1, BM, BD))
    else:
        offs_m = start_m + tl.arange(0, BM)
        od = tl.arange(0, BD)
        tl.atomic_add(DQ + (row0 + offs_m[:, None]) * D + od[None, :], dq,
                      mask=(offs_m < T)[:, None] & (od < D)[None, :], sem="relaxed")


@triton.jit
def _kv_step(k1, k2, v, dk1, dk2, dv, Q1, Q2, DO, b, hq1, hq2, h, start_m, offs_n, T, row0,
             sq1b, sq1h, sq1t, sq2b, sq2h, sq2t, sdob, sdoh, sdot,
             LSE1, LSE2, DL1, DL2, DQ1, DQ2, lam, qk1, qk2, scale1, scale2,
             K1, K2, V, hk1, hk2, hv, n0, sk1b, sk1h, sk1t, sk2b, sk2h, sk2t, svb, svh, svt,
             D1: tl.constexpr, D2: tl.constexpr, DV_: tl.constexpr,
             BD1: tl.constexpr, BD2: tl.constexpr, BDV: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
             NS: tl.constexpr, NEG: tl.constexpr, ATOMIC: tl.constexpr, MASK: tl.constexpr,
             DESC: tl.constexpr, RELOAD: tl.constexpr, DQ_DESC: tl.constexpr):
    if RELOAD:  # the key-block tiles re-read per step (L2 / shared memory) instead of held in registers
        k1 = _tile(K1, b, hk1, n0, sk1b, sk1h, sk1t, T, BN, D1, BD1, DESC)
        v = _tile(V, b, hv, n0, svb, svh, svt, T, BN, DV_, BDV, DESC)
        if NS == 2:
            k2 = _tile(K2, b, hk2, n0, sk2b, sk2h, sk2t, T, BN, D2, BD2, DESC)
    offs_m = start_m + tl.arange(0, BM)
    rmask = offs_m < T
    q1 = _tile(Q1, b, hq1, start_m, sq1b, sq1h, sq1t, T, BM, D1, BD1, DESC)
    do = _tile(DO, b, h, start_m, sdob, sdoh, sdot, T, BM, DV_, BDV, DESC)
    lse1 = tl.load(LSE1 + row0 + offs_m, mask=rmask, other=float("inf"))
    dl1 = tl.load(DL1 + row0 + offs_m, mask=rmask, other=0.0)
    p1t = tl.math.exp2(tl.dot(k1, tl.trans(q1)) * qk1 - lse1[None, :])  # [BN, BM]
    if MASK:
        p1t = tl.where(offs_m[None, :] >= offs_n[:, None], p1t, 0.0)
    dpt = tl.dot(v, tl.trans(do))
    if NS == 2:
        q2 = _tile(Q2, b, hq2, start_m, sq2b, sq2h, sq2t, T, BM, D2, BD2, DESC)
        lse2 = tl.load(LSE2 + row0 + offs_m, mask=rmask, other=float("inf"))
        dl2 = tl.load(DL2 + row0 + offs_m, mask=rmask, other=0.0)
        p2t = tl.math.exp2(tl.dot(k2, tl.trans(q2)) * qk2 - lse2[None, :])
        if MASK:
            p2t = tl.where(offs_m[None, :] >= offs_n[:, None], p2t, 0.0)
        dv = tl.dot((p1t - lam * p2t).to(do.dtype), do, dv)
        ds1t = (p1t * (dpt - dl1[None, :])).to(q1.dtype)
        ds2t = ((-lam) * p2t * (dpt - dl2[None, :])).to(q2.dtype)
        dk1 = tl.dot(ds1t, q1, dk1)
        dk2 = tl.dot(ds2t, q2, dk2)
        if ATOMIC:
            _dq_atomic(DQ1, b, h, row0, start_m, T, ds1t, k1, scale1, BM, D1, BD1, DQ_DESC)
            _dq_atomic(DQ2, b, h, row0, start_m, T, ds2t, k2, scale2, BM, D2, BD2, DQ_DESC)
    else:
        if NEG:
            p1t = (-lam) * p1t
        dv = tl.dot(p1t.to(do.dtype), do, dv)
        ds1t = (p1t * (dpt - dl1[None, :])).to(q1.dtype)
        dk1 = tl.dot(ds1t, q1, dk1)
        if ATOMIC:
            _dq_atomic(DQ1, b, h, row0, start_m, T, ds1t, k1, scale1, BM, D1, BD1, DQ_DESC)
    return dk1, dk2, dv


@triton.jit
def _h_bwd_kv_kernel(Q1, K1, Q2, K2, V, LAM, DO, LSE1, LSE2, DL1, DL2, DK1, DK2, DV, DVIN, DQ1, DQ2,
                     sq1b, sq1h, sq1t, sk1b, sk1h, sk1t, sq2b, sq2h, sq2t, sk2b, sk2h, sk2t,
                     svb, svh, svt, sdob, sdoh, sdot,
                     H, T, GQ1, GK1, GV, GQ2, GK2, qk1, qk2, scale1, scale2,
                     D1: tl.constexpr, D2: tl.constexpr, DV_: tl.constexpr,
                     BD1: tl.constexpr, BD2: tl.constexpr, BDV: tl.constexpr,
                     BM: tl.constexpr, BN: tl.constexpr, NS: tl.constexpr, NEG: tl.constexpr,
                     ADD_DV: tl.constexpr, ATOMIC: tl.constexpr, DESC: tl.constexpr, RELOAD: tl.constexpr,
                     DQ_DESC: tl.constexpr):
    """NS=2: both streams (dK1, dK2, dV). NS=1: one stream (its tensors in the *1 slots, heads
    h // GQ1, h // GK1, V h // GV), coefficient -lam_h if NEG else 1; ADD_DV adds the float32 dV of
    an earlier launch (DVIN). Outputs per query head, contiguous [B, H, T, D]."""
    bh = tl.program_id(0)
    pid_n = tl.program_id(1)  # key block 0 (the longest) first
    b = bh // H
    h = bh % H
    n0 = pid_n * BN
    offs_n = n0 + tl.arange(0, BN)
    k1 = _tile(K1, b, h // GK1, n0, sk1b, sk1h, sk1t, T, BN, D1, BD1, DESC)
    v = _tile(V, b, h // GV, n0, svb, svh, svt, T, BN, DV_, BDV, DESC)
    dk1 = tl.zeros([BN, BD1], tl.float32)
    dv = tl.zeros([BN, BDV], tl.float32)
    lam = tl.load(LAM + h)
    row0 = bh * T
    hq1 = h // GQ1
    hq2 = h // GQ2
    if NS == 2:
        k2 = _tile(K2, b, h // GK2, n0, sk2b, sk2h, sk2t, T, BN, D2, BD2, DESC)
        dk2 = tl.zeros([BN, BD2], tl.float32)
    else:
        k2 = k1
        dk2 = dk1
    lo2 = n0 + ((BN + BM - 1) // BM) * BM
    for start_m in range(n0, lo2, BM):  # query blocks on the diagonal
        dk1, dk2, dv = _kv_step(k1, k2, v, dk1, dk2, dv, Q1, Q2, DO, b, hq1, hq2, h, start_m, offs_n, T, row0,
                                sq1b, sq1h, sq1t, sq2b, sq2h, sq2t, sdob, sdoh, sdot,
                                LSE1, LSE2, DL1, DL2, DQ1, DQ2, lam, qk1, qk2, scale1, scale2,
                                K1, K2, V, h // GK1, h // GK2, h // GV, n0, sk1b, sk1h, sk1t, sk2b, sk2h, sk2t,
                                svb, svh, svt, D1, D2, DV_, BD1, BD2, BDV, BM, BN, NS, NEG, ATOMIC, True, DESC,
                                RELOAD, DQ_DESC)
    for start_m in range(lo2, T, BM):  # query blocks entirely in the future: no mask
        dk1, dk2, dv = _kv_step(k1, k2, v, dk1, dk2, dv, Q1, Q2, DO, b, hq1, hq2, h, start_m, offs_n, T, row0,
                                sq1b, sq1h, sq1t, sq2b, sq2h, sq2t, sdob, sdoh, sdot,
                                LSE1, LSE2, DL1, DL2, DQ1, DQ2, lam, qk1, qk2, scale1, scale2,
                                K1, K2, V, h // GK1, h // GK2, h // GV, n0, sk1b, sk1h, sk1t, sk2b, sk2h, sk2t,
                                svb, svh, svt, D1, D2, DV_, BD1, BD2, BDV, BM, BN, NS, NEG, ATOMIC, False, DESC,
                                RELOAD, DQ_DESC)
    # outputs per query head, contiguous [B, H, T, D] (strides T*H*D... passed as H*T*D, T*D, D)
    if ADD_DV:
        dv += _tile(DVIN, b, h, n0, H * T * DV_, T * DV_, DV_, T, BN, DV_, BDV, DESC)
    _put(DV, b, h, n0, H * T * DV_, T * DV_, DV_, T, dv, BN, DV_, BDV, DESC)
    _put(DK1, b, h, n0, H * T * D1, T * D1, D1, T, dk1 * scale1, BN, D1, BD1, DESC)
    if NS == 2:
        _put(DK2, b, h, n0, H * T * D2, T * D2, D2, T, dk2 * scale2, BN, D2, BD2, DESC)


@triton.jit
def _q_step(q1, q2, do, dq1, dq2, lse1, lse2, dl1, dl2, lam, K1, K2, V, b, hk1, hk2, start_n, offs_m, T,
            sk1b, sk1h, sk1t, sk2b, sk2h, sk2t, svb, svh, svt, qk1, qk2,
            D1: tl.constexpr, D2: tl.constexpr, DV: tl.constexpr, BD1: tl.constexpr, BD2: tl.constexpr,
            BDV: tl.constexpr, BN: tl.constexpr, MASK: tl.constexpr, DESC: tl.constexpr):
    offs_n = start_n + tl.arange(0, BN)
    k1 = _tile(K1, b, hk1, start_n, sk1b, sk1h, sk1t, T, BN, D1, BD1, DESC)
    v = _tile(V, b, hk1, start_n, svb, svh, svt, T, BN, DV, BDV, DESC)
    k2 = _tile(K2, b, hk2, start_n, sk2b, sk2h, sk2t, T, BN, D2, BD2, DESC)
    return _dq_tile(q1, q2, do, dq1, dq2, lse1, lse2, dl1, dl2, lam, k1, k2, v, offs_m, offs_n, qk1, qk2, MASK)


@triton.jit
def _h_bwd_q_kernel(Q1, K1, Q2, K2, V, LAM, DO, LSE1, LSE2, DL1, DL2, DQ1, DQ2,
                    sq1b, sq1h, sq1t, sk1b, sk1h, sk1t, sq2b, sq2h, sq2t, sk2b, sk2h, sk2t,
                    svb, svh, svt, sdob, sdoh, sdot,
                    H, T, NM, GQ2, GK1, GK2, qk1, qk2, scale1, scale2,
                    D1: tl.constexpr, D2: tl.constexpr, DV: tl.constexpr,
                    BD1: tl.constexpr, BD2: tl.constexpr, BDV: tl.constexpr,
                    BM: tl.constexpr, BN: tl.constexpr, DESC: tl.constexpr):
    """dQ1, dQ2 of one query block (both streams, dP = dO V^T shared), longest blocks first;
    written per query head, contiguous [B, H, T, D]."""
    bh = tl.program_id(0)
    pid_m = NM - 1 - tl.program_id(1)
    b = bh // H
    h = bh % H
    m0 = pid_m * BM
    offs_m = m0 + tl.arange(0, BM)
    rmask = offs_m < T
    q1 = _tile(Q1, b, h, m0, sq1b, sq1h, sq1t, T, BM, D1, BD1, DESC)
    q2 = _tile(Q2, b, h // GQ2, m0, sq2b, sq2h, sq2t, T, BM, D2, BD2, DESC)
    do = _tile(DO, b, h, m0, sdob, sdoh, sdot, T, BM, DV, BDV, DESC)
    lse1 = tl.load(LSE1 + bh * T + offs_m, mask=rmask, other=float("inf"))
    lse2 = tl.load(LSE2 + bh * T + offs_m, mask=rmask, other=float("inf"))
    dl1 = tl.load(DL1 + bh * T + offs_m, mask=rmask, other=0.0)
    dl2 = tl.load(DL2 + bh * T + offs_m, mask=rmask, other=0.0)
    lam = tl.load(LAM + h)
    hk1 = h // GK1
    hk2 = h // GK2
    dq1 = tl.zeros([BM, BD1], tl.float32)
    dq2 = tl.zeros([BM, BD2], tl.float32)
    for start_n in range(0, m0, BN):
        dq1, dq2 = _q_step(q1, q2, do, dq1, dq2, lse1, lse2, dl1, dl2, lam, K1, K2, V, b, hk1, hk2, start_n,
                           offs_m, T, sk1b, sk1h, sk1t, sk2b, sk2h, sk2t, svb, svh, svt, qk1, qk2,
                           D1, D2, DV, BD1, BD2, BDV, BN, False, DESC)
    for start_n in range(m0, tl.minimum(m0 + BM, T), BN):
        dq1, dq2 = _q_step(q1, q2, do, dq1, dq2, lse1, lse2, dl1, dl2, lam, K1, K2, V, b, hk1, hk2, start_n,
                           offs_m, T, sk1b, sk1h, sk1t, sk2b, sk2h, sk2t, svb, svh, svt, qk1, qk2,
                           D1, D2, DV, BD1, BD2, BDV, BN, True, DESC)
    _put(DQ1, b, h, m0, H * T * D1, T * D1, D1, T, dq1 * scale1, BM, D1, BD1, DESC)
    _put(DQ2, b, h, m0, H * T * D2, T * D2, D2, T, dq2 * scale2, BM, D2, BD2, DESC)


# ------------------------------------------------------------------------------------------
# Launch configs (BM, BN, num_warps, num_stages), keyed by pass; heads wider than 128 take smaller
# tiles (``_config``), and a config that does not fit the shared memory steps down (``_run_fitted``).
# Defaults: the winners of session 6's sweep (H100, bf16, B=1, 16 heads, head dim 128, T=16K;
# benchmarks/RESULTS.md, "Session 6: diff fused kernel"; benchmarks/results/s6_diff/).
CONFIGS = {
    "fwd": (128, 64, 8, 3),
    "fwd_seq": (128, 64, 8, 4),
    "fwd_single": (128, 128, 8, 3),
    "bwd_fused": (32, 64, 8, 2),
    "bwd_split": (64, 128, 8, 2),
    "bwd_single": (64, 128, 8, 2),
    "bwd_kv": (16, 128, 8, 2),  # the key-block kernel without dQ ("fused-separate")
    "bwd_kv1": (64, 128, 8, 2),  # its single-stream form ("split-separate", the default)
    "bwd_q": (64, 32, 4, 2),  # this file's dQ kernel (Q_KERNEL = "hopper")
    "bwd_q_v1": (64, 32, 4, 2),  # kernel.py's dQ kernel (Q_KERNEL = "v1", the default)
}
FWD_MODE = os.environ.get("ATTNLAB_DIFF_H_FWD", "interleaved")  # or "sequential"
# "fused" / "split": dQ by reduce-add inside the key-block kernel(s); "fused-separate" /
# "split-separate": the key-block kernel(s) without dQ, then one dQ kernel per query block.
# Measured at T=16K (fwd+bwd ms): split-separate 18.33, split 20.26, fused-separate 21.60 (fused,
# 3 accumulators + atomics: 29.7 in call 1): the split key-block kernels (two accumulators each,
# no atomics) run at ~96% of cuDNN's backward rate per matmul, the fused ones do not fit the registers.
BWD_MODE = os.environ.get("ATTNLAB_DIFF_H_BWD", "split-separate")
# dQ kernel: "v1" (kernel.py's, pointer loads; measured faster: 21.60 vs 21.84 ms) or "hopper" (this file)
Q_KERNEL = os.environ.get("ATTNLAB_DIFF_H_QK", "v1")
USE_DESC = os.environ.get("ATTNLAB_DIFF_H_DESC", "auto")  # "auto", "1", "0"
RELOAD = os.environ.get("ATTNLAB_DIFF_H_RELOAD", "0") == "1"  # backward: re-read K/V tiles per step


def _config(name: str, width: int):
    if _interpret():
        return 16, 16, 1, 1
    bm, bn, w, s = CONFIGS[name]
    if width > 128:
        bm, bn = min(bm, 64), min(bn, 32)
    return bm, bn, w, s


_FITTED = {}  # (pass, width, element size, configured tiles) -> the config that launched


def _smaller(cfg):
    """The next config to try when one does not fit the shared memory: fewer stages (down to 2),
    then half the key tile, then half the query tile, then one stage."""
    bm, bn, w, s = cfg
    if s > 2:
        return bm, bn, w, s - 1
    if bn > 16:
        return bm, bn // 2, w, s
    if bm > 16:
        return bm // 2, bn, w, s
    return (bm, bn, w, 1) if s > 1 else None


def _run_fitted(name: str, width: int, es: int, launch):
    """launch(bm, bn, num_warps, num_stages) with CONFIGS[name], stepping down (``_smaller``) while
    the kernel needs more shared memory than the GPU has (float32 tiles, smaller GPUs)."""
    key = (name, width, es, CONFIGS.get(name))
    cfg = _FITTED.get(key) or _config(name, width)
    while True:
        try:
            launch(*cfg)
        except triton.runtime.errors.OutOfResources:
            cfg = _smaller(cfg)
            if cfg is None:
                raise
            continue
        _FITTED[key] = cfg
        return


_MAJOR: dict = {}


def _major(index) -> int:
    if index not in _MAJOR:
        _MAJOR[index] = torch.cuda.get_device_capability(index)[0]
    return _MAJOR[index]


def _desc_ok(*xs) -> bool:
    """TMA descriptors: sm_90+, Triton with TensorDescriptor, 16-byte aligned bases and strides,
    no broadcast (stride-0) dimension of size > 1."""
    if USE_DESC == "0" or TensorDescriptor is None:
        return False
    if USE_DESC != "1":
        if _interpret() or not xs[0].is_cuda or _major(xs[0].device.index) < 9:
            return False
    for x in xs:
        es = x.element_size()
        if x.stride(-1) != 1 or x.data_ptr() % 16:
            return False
        for n, st in zip(x.shape[:-1], x.stride()[:-1]):
            if n > 1 and (st == 0 or (st * es) % 16):
                return False
    return True


def _desc(x, rows: int, bd: int):
    """A 4-D descriptor over x [B, H, T, D] with block [1, 1, rows, bd]; a dimension of size 1 gets
    a stride the copy engine accepts (its value is never used)."""
    shape, strides = list(x.shape), list(x.stride())
    for i in (1, 0):
        if shape[i] == 1:
            strides[i] = max(16 // x.element_size(), shape[i + 1] * strides[i + 1])
    return _Desc(x, shape, strides, [1, 1, rows, bd])


_GO = _DescLauncher("diff_attention hopper.py")


def _strides(x):
    return x.stride(0), x.stride(1), x.stride(2)


def _last_contig(x):
    return x if x.stride(-1) == 1 else x.contiguous()


def _forward(q1, k1, q2, k2, v, lam, scale1, scale2, aux: bool, ns: int = 2):
    b, h, t, d1 = q1.shape
    hk, d2, dv = k1.shape[1], q2.shape[-1], v.shape[-1]
    dev = q1.device
    out = torch.empty(b, h, t, dv, device=dev, dtype=q1.dtype)
    o2 = torch.empty_like(out) if (aux and ns == 2) else out
    lse1 = torch.empty(b, h, t, device=dev, dtype=torch.float32)
    lse2 = torch.empty_like(lse1) if ns == 2 else lse1
    seq = FWD_MODE == "sequential"
    name = "fwd_single" if ns == 1 else ("fwd_seq" if seq else "fwd")
    bd1, bd2, bdv = _pow2(d1), _pow2(d2), _pow2(dv)
    desc = _desc_ok(q1, k1, q2, k2, v, out)

    def launch(bm, bn, w, s):
        if desc:
            a = (_desc(q1, bm, bd1), _desc(k1, bn, bd1), _desc(q2, bm, bd2), _desc(k2, bn, bd2), _desc(v, bn, bdv))
            oa = (_desc(out, bm, bdv), _desc(o2, bm, bdv))
        else:
            a, oa = (q1, k1, q2, k2, v), (out, o2)
        nm = triton.cdiv(t, bm)
        _GO(_h_fwd_kernel, (b * h, nm),
            *a, lam, *oa, lse1, lse2,
            *_strides(q1), *_strides(k1), *_strides(q2), *_strides(k2), *_strides(v), *_strides(out),
            h, t, nm, h // q2.shape[1], h // hk, h // k2.shape[1], scale1 * LOG2E, scale2 * LOG2E,
            d1, d2, dv, bd1, bd2, bdv, bm, bn, ns, seq, aux, desc, num_warps=w, num_stages=s)

    _run_fitted(name, max(d1, d2, dv), q1.element_size(), launch)
    return out, o2, lse1, lse2


def _bwd_kv(q1, k1, q2, k2, v, lam, dout, lse1, lse2, dl1, dl2, dk1, dk2, dv, dvin, dq1, dq2,
            scale1, scale2, ns, neg, add_dv, atomic, name, h):
    """Launch the key-block kernel. Query head h reads q1 head h // (h / q1 heads), k1 head
    h // (h / k1 heads), and likewise for q2, k2, v."""
    b, _, t, d1 = q1.shape
    d2, dv_ = q2.shape[-1], v.shape[-1]
    bd1, bd2, bdv = _pow2(d1), _pow2(d2), _pow2(dv_)
    desc = _desc_ok(q1, k1, q2, k2, v, dout, dk1, dk2, dv, dvin, dq1, dq2)
    g = [h // x.shape[1] for x in (q1, k1, v, q2, k2)]

    def launch(bm, bn, w, s):
        dq_desc = False
        if desc:
            a = (_desc(q1, bm, bd1), _desc(k1, bn, bd1), _desc(q2, bm, bd2), _desc(k2, bn, bd2), _desc(v, bn, bdv))
            ado = _desc(dout, bm, bdv)
            outs = (_desc(dk1, bn, bd1), _desc(dk2, bn, bd2), _desc(dv, bn, bdv), _desc(dvin, bn, bdv))
            # dQ by TMA reduce-add (the interpreter has none: float32 atomics there)
            dq_desc = not _interpret()
            outs += (_desc(dq1, bm, bd1), _desc(dq2, bm, bd2)) if dq_desc else (dq1, dq2)
        else:
            a, ado, outs = (q1, k1, q2, k2, v), dout, (dk1, dk2, dv, dvin, dq1, dq2)
        _GO(_h_bwd_kv_kernel, (b * h, triton.cdiv(t, bn)),
            *a, lam, ado, lse1, lse2, dl1, dl2, *outs,
            *_strides(q1), *_strides(k1), *_strides(q2), *_strides(k2), *_strides(v), *_strides(dout),
            h, t, *g, scale1 * LOG2E, scale2 * LOG2E, scale1, scale2,
            d1, d2, dv_, bd1, bd2, bdv, bm, bn, ns, neg, add_dv, atomic, desc, RELOAD, dq_desc,
            num_warps=w, num_stages=s)

    _run_fitted(name, max(d1, d2, dv_), q1.element_size(), launch)


def _bwd_q(q1, k1, q2, k2, v, lam, dout, lse1, lse2, dl1, dl2, dq1, dq2, scale1, scale2):
    b, h, t, d1 = q1.shape
    hk, h2, hk2, d2, dv_ = k1.shape[1], q2.shape[1], k2.shape[1], q2.shape[-1], v.shape[-1]
    bd1, bd2, bdv = _pow2(d1), _pow2(d2), _pow2(dv_)
    desc = Q_KERNEL != "v1" and _desc_ok(q1, k1, q2, k2, v, dout, dq1, dq2)

    def launch(bm, bn, w, s):
        if Q_KERNEL == "v1":
            sq2 = (q2.stride(0), 0 if h2 == 1 else q2.stride(1), q2.stride(2))
            _GO(_diff_bwd_q_kernel, (triton.cdiv(t, bm), b * h),
                q1, k1, q2, k2, v, lam, dout, lse1, lse2, dl1, dl2, dq1, dq2,
                *_strides(q1), *_strides(k1), *sq2, *_strides(k2), *_strides(v), *_strides(dout),
                h, t, h // hk, h // hk2, scale1 * LOG2E, scale2 * LOG2E, scale1, scale2,
                d1, d2, dv_, bd1, bd2, bdv, bm, bn, num_warps=w, num_stages=s)
            return
        if desc:
            a = (_desc(q1, bm, bd1), _desc(k1, bn, bd1), _desc(q2, bm, bd2), _desc(k2, bn, bd2),
                 _desc(v, bn, bdv), lam, _desc(dout, bm, bdv), lse1, lse2, dl1, dl2,
                 _desc(dq1, bm, bd1), _desc(dq2, bm, bd2))
        else:
            a = (q1, k1, q2, k2, v, lam, dout, lse1, lse2, dl1, dl2, dq1, dq2)
        nm = triton.cdiv(t, bm)
        _GO(_h_bwd_q_kernel, (b * h, nm),
            *a, *_strides(q1), *_strides(k1), *_strides(q2), *_strides(k2), *_strides(v), *_strides(dout),
            h, t, nm, h // h2, h // hk, h // hk2, scale1 * LOG2E, scale2 * LOG2E, scale1, scale2,
            d1, d2, dv_, bd1, bd2, bdv, bm, bn, desc, num_warps=w, num_stages=s)

    _run_fitted("bwd_q" if Q_KERNEL != "v1" else "bwd_q_v1", max(d1, d2, dv_), q1.element_size(), launch)


class DiffAttentionHopper(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q1, k1, q2, k2, v, lam, scale1, scale2):
        q1, k1, q2, k2, v = (_last_contig(x) for x in (q1, k1, q2, k2, v))
        lam = lam.detach().float().reshape(-1).expand(q1.shape[1]).contiguous()
        aux = any(ctx.needs_input_grad[:6])  # inference: no second output, no log-sum-exps
        out, o2, lse1, lse2 = _forward(q1, k1, q2, k2, v, lam, scale1, scale2, aux)
        if aux:
            ctx.save_for_backward(q1, k1, q2, k2, v, lam, out, o2, lse1, lse2)
        ctx.scales = (scale1, scale2)
        return out

    @staticmethod
    def backward(ctx, dout):
        q1, k1, q2, k2, v, lam, out, o2, lse1, lse2 = ctx.saved_tensors
        scale1, scale2 = ctx.scales
        dout = dout.contiguous()
        b, h, t, d1 = q1.shape
        hk, h2, hk2, d2, dv_ = k1.shape[1], q2.shape[1], k2.shape[1], q2.shape[-1], v.shape[-1]
        dev, f32 = q1.device, torch.float32
        dl1 = torch.empty_like(lse1)
        dl2 = torch.empty_like(lse1)
        bm = 16 if _interpret() else 64
        _GO(_diff_bwd_pre_kernel, (triton.cdiv(t, bm), b * h), dout, out, o2, lam, dl1, dl2, h, t, dv_, _pow2(dv_), bm)
        dlam = -dl2.sum((0, 2))
        g1, g2 = h // hk, h // hk2

        def buf(d, exact):  # per query head; float32 where heads are summed afterwards
            return torch.empty(b, h, t, d, device=dev, dtype=q1.dtype if exact else f32)

        dk1, dk2 = buf(d1, g1 == 1), buf(d2, g2 == 1)
        dv = buf(dv_, g1 == 1)
        mode = BWD_MODE
        atomic = mode in ("fused", "split")
        if atomic:
            dq1 = torch.zeros(b, h, t, d1, device=dev, dtype=f32)
            dq2 = torch.zeros(b, h, t, d2, device=dev, dtype=f32)
        else:
            dq1 = torch.empty(b, h, t, d1, device=dev, dtype=q1.dtype)
            dq2 = torch.empty(b, h, t, d2, device=dev, dtype=q1.dtype if h2 == h else f32)
        sc = (scale1, scale2)
        if mode.startswith("split"):
            dva = torch.empty(b, h, t, dv_, device=dev, dtype=f32)
            name = "bwd_split" if atomic else "bwd_kv1"
            # stream 1 alone (its tensors in the *1 slots), then stream 2 with -lam, adding dV
            _bwd_kv(q1, k1, q1, k1, v, lam, dout, lse1, lse1, dl1, dl1, dk1, dk1, dva, dva, dq1, dq1,
                    scale1, scale1, 1, False, False, atomic, name, h)
            _bwd_kv(q2, k2, q2, k2, v, lam, dout, lse2, lse2, dl2, dl2, dk2, dk2, dv, dva, dq2, dq2,
                    scale2, scale2, 1, True, True, atomic, name, h)
        else:
            _bwd_kv(q1, k1, q2, k2, v, lam, dout, lse1, lse2, dl1, dl2, dk1, dk2, dv, dv, dq1, dq2,
                    *sc, 2, False, False, atomic, "bwd_fused" if atomic else "bwd_kv", h)
        if not atomic:
            _bwd_q(q1, k1, q2, k2, v, lam, dout, lse1, lse2, dl1, dl2, dq1, dq2, scale1, scale2)

        def reduce(x, heads, like):
            if heads == h:
                return x.to(like.dtype)
            return x.view(b, heads, h // heads, t, x.shape[-1]).sum(2).to(like.dtype)

        return (dq1.to(q1.dtype), reduce(dk1, hk, k1), reduce(dq2, h2, q2), reduce(dk2, hk2, k2),
                reduce(dv, hk, v), dlam, None, None)


class FlashSingle(torch.autograd.Function):
    """Plain causal attention through the same kernels (NS=1): the ceiling probe."""

    @staticmethod
    def forward(ctx, q, k, v, scale):
        q, k, v = (_last_contig(x) for x in (q, k, v))
        lam = torch.zeros(q.shape[1], device=q.device, dtype=torch.float32)
        out, _, lse, _ = _forward(q, k, q, k, v, lam, scale, scale, True, ns=1)
        ctx.save_for_backward(q, k, v, lam, out, lse)
        ctx.scale = scale
        return out

    @staticmethod
    def backward(ctx, dout):
        q, k, v, lam, out, lse = ctx.saved_tensors
        dout = dout.contiguous()
        b, h, t, d = q.shape
        dl = torch.empty_like(lse)
        bm = 16 if _interpret() else 64
        _GO(_diff_bwd_pre_kernel, (triton.cdiv(t, bm), b * h), dout, out, out, lam, dl, dl, h, t, d, _pow2(d), bm)
        dq = torch.zeros(b, h, t, d, device=q.device, dtype=torch.float32)
        dk = torch.empty(b, h, t, d, device=q.device, dtype=q.dtype)
        dv = torch.empty_like(dk)
        _bwd_kv(q, k, q, k, v, lam, dout, lse, lse, dl, dl, dk, dk, dv, dv, dq, dq,
                ctx.scale, ctx.scale, 1, False, False, True, "bwd_single", h)
        return dq.to(q.dtype), dk, dv, None


def flash_single(q, k, v, scale=None):
    """Causal softmax attention [B, H, T, D] (same heads for q, k, v) by this module's kernels."""
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    return FlashSingle.apply(q, k, v, scale)


def diff_attention_hopper(q1, k1, q2, k2, v, lam, scale1=None, scale2=None):
    """Fused causal differential attention (this module's kernels); differentiable in q1, k1, q2,
    k2, v and lam. Same shapes as ``kernel.diff_attention_triton``; scales must be positive."""
    from .reference import lam_per_head

    b, h, t, _ = q1.shape
    if k1.shape[-2] != t:
        raise ValueError(f"the fused kernel needs keys over the query positions; got T={t}, S={k1.shape[-2]}")
    if q2.shape[1] not in (1, h) or h % k1.shape[1] or k2.shape[1] not in (1, k1.shape[1]):
        raise ValueError(f"unsupported heads: q1 {h}, k1 {k1.shape[1]}, q2 {q2.shape[1]}, k2 {k2.shape[1]}")
    scale1 = q1.shape[-1] ** -0.5 if scale1 is None else float(scale1)
    scale2 = q2.shape[-1] ** -0.5 if scale2 is None else float(scale2)
    if scale1 <= 0 or scale2 <= 0:
        raise ValueError(f"scales must be positive; got {scale1}, {scale2}")
    lam = lam_per_head(lam, h, q1.device)
    return DiffAttentionHopper.apply(q1, k1, q2, k2, v, lam, scale1, scale2)
