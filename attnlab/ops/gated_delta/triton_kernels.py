"""Triton kernels of the chunked gated delta rule (imported only when triton is present).

Layout: q, k, w [BH, T, K], u, vn [BH, T, V] (T a multiple of the chunk C), gam [BH, T] float32
(local cumulative log decay inside each chunk), states [BH, N, K, V] (the state at the START of
each chunk), final / h0 / dh0 [BH, K, V] float32. Per chunk n (rows i, j of the chunk):

    vn     = u - w S_n                                               (delta-rule corrections)
    o      = scale (q * e^gam) S_n + (scale (q k^T) * D) vn          D_ij = e^(gam_i - gam_j), j <= i
    S_n+1  = e^gam_C S_n + (k * e^(gam_C - gam))^T vn                gam_C = gam of the chunk's last row

Kernels: ``_fwd_h`` (the sequential recurrence, one program per (BH, V tile), the state in
registers, chunks in order), ``_fwd_o`` (outputs, one program per (chunk, BH, V tile)),
``_bwd_dv_local`` (P^T dO), ``_bwd_dh`` (the reverse recurrence of dS, chunks in reverse) and
``_bwd_dqkw`` (dq, dk, dw and the gate gradient, one program per (chunk, BH, K tile)).

Matmuls run in the input dtype with float32 accumulation (bf16 on GPU); float32 inputs use
``input_precision="ieee"`` so fp32 results match the reference (no TF32).
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _decay(g_ptr, rows, oc):
    """D_ij = e^(gam_i - gam_j) for j <= i, else 0, from segment sums of the raw log decays
    (sum_{j<m<=i} g_m): no difference of two large cumulative sums, so no cancellation."""
    g = tl.load(g_ptr + rows)
    x = tl.where(oc[:, None] > oc[None, :], g[:, None], 0.0)
    seg = tl.cumsum(x, axis=0)
    return tl.where(oc[:, None] >= oc[None, :], tl.exp(seg), 0.0)


@triton.jit
def _kv_index(iv, K: tl.constexpr, V: tl.constexpr, C: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr):
    """Column offsets of the full K range and of V tile ``iv``, chunk rows, and their masks."""
    ok = tl.arange(0, BK)
    ov = iv * BV + tl.arange(0, BV)
    return ok, ov, tl.arange(0, C), ok < K, ov < V


@triton.jit
def _tile(base, rows, cols, mcols, W: tl.constexpr):
    """The [rows, cols] tile of a row-major [T, W] slice (columns masked, zeros outside)."""
    return tl.load(base + rows[:, None] * W + cols[None, :], mask=mcols[None, :], other=0.0)


@triton.jit
def _fwd_h(k_ptr, w_ptr, u_ptr, gam_ptr, gk_ptr, h0_ptr, st_ptr, vn_ptr, fin_ptr, T, N,
           K: tl.constexpr, V: tl.constexpr, C: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
           HAS_H0: tl.constexpr, PREC: tl.constexpr):
    iv = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    ok, ov, oc, mk, mv = _kv_index(iv, K, V, C, BK, BV)
    mkv = mk[:, None] & mv[None, :]
    kv_off = ok[:, None] * V + ov[None, :]
    k_base = k_ptr + bh * T * K
    w_base = w_ptr + bh * T * K
    u_base = u_ptr + bh * T * V
    vn_base = vn_ptr + bh * T * V
    g_base = gam_ptr + bh * T
    st_base = st_ptr + bh * N * K * V
    if HAS_H0:
        h = tl.load(h0_ptr + bh * K * V + kv_off, mask=mkv, other=0.0).to(tl.float32)
    else:
        h = tl.zeros([BK, BV], dtype=tl.float32)
    for n in range(N):
        tl.store(st_base + n * K * V + kv_off, h.to(st_ptr.dtype.element_ty), mask=mkv)
        rows = n * C + oc
        w = _tile(w_base, rows, ok, mk, K)
        u = _tile(u_base, rows, ov, mv, V)
        vn = u.to(tl.float32) - tl.dot(w, h.to(w.dtype), input_precision=PREC)
        vn = vn.to(vn_ptr.dtype.element_ty)
        tl.store(vn_base + rows[:, None] * V + ov[None, :], vn, mask=mv[None, :])
        g_last = tl.load(g_base + n * C + C - 1)
        gk = tl.load(gk_ptr + bh * T + rows)
        k = _tile(k_base, rows, ok, mk, K)
        kd = (k * tl.exp(gk)[:, None]).to(k.dtype)
        h = h * tl.exp(g_last) + tl.dot(tl.trans(kd), vn.to(k.dtype), input_precision=PREC)
    tl.store(fin_ptr + bh * K * V + kv_off, h, mask=mkv)


@triton.jit
def _fwd_o(q_ptr, k_ptr, gam_ptr, g_ptr, st_ptr, vn_ptr, o_ptr, scale, T, N,
           K: tl.constexpr, V: tl.constexpr, C: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
           PREC: tl.constexpr):
    iv = tl.program_id(0)
    n = tl.program_id(1)
    bh = tl.program_id(2).to(tl.int64)
    ok, ov, oc, mk, mv = _kv_index(iv, K, V, C, BK, BV)
    rows = n * C + oc
    q = _tile(q_ptr + bh * T * K, rows, ok, mk, K)
    k = _tile(k_ptr + bh * T * K, rows, ok, mk, K)
    h = tl.load(st_ptr + bh * N * K * V + n * K * V + ok[:, None] * V + ov[None, :],
                mask=mk[:, None] & mv[None, :], other=0.0)
    vn = _tile(vn_ptr + bh * T * V, rows, ov, mv, V)
    gam = tl.load(gam_ptr + bh * T + rows)
    o = tl.dot(q, h.to(q.dtype), input_precision=PREC) * (scale * tl.exp(gam))[:, None]
    dec = _decay(g_ptr + bh * T, rows, oc)
    s = tl.dot(q, tl.trans(k), input_precision=PREC) * dec * scale
    o += tl.dot(s.to(vn.dtype), vn, input_precision=PREC)
    tl.store(o_ptr + bh * T * V + rows[:, None] * V + ov[None, :], o.to(o_ptr.dtype.element_ty),
             mask=mv[None, :])


@triton.jit
def _bwd_dv_local(q_ptr, k_ptr, g_ptr, do_ptr, dvl_ptr, scale, T,
                  K: tl.constexpr, V: tl.constexpr, C: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                  PREC: tl.constexpr):
    """dvl_j = sum_{i >= j} scale (q_i . k_j) e^(gam_i - gam_j) do_i  (P^T dO)."""
    iv = tl.program_id(0)
    n = tl.program_id(1)
    bh = tl.program_id(2).to(tl.int64)
    ok, ov, oc, mk, mv = _kv_index(iv, K, V, C, BK, BV)
    rows = n * C + oc
    q = _tile(q_ptr + bh * T * K, rows, ok, mk, K)
    k = _tile(k_ptr + bh * T * K, rows, ok, mk, K)
    do = _tile(do_ptr + bh * T * V, rows, ov, mv, V)
    dec = _decay(g_ptr + bh * T, rows, oc)
    st = tl.dot(k, tl.trans(q), input_precision=PREC) * tl.trans(dec) * scale
    dvl = tl.dot(st.to(do.dtype), do, input_precision=PREC)
    tl.store(dvl_ptr + bh * T * V + rows[:, None] * V + ov[None, :], dvl, mask=mv[None, :])


@triton.jit
def _bwd_dh(q_ptr, k_ptr, w_ptr, gam_ptr, gk_ptr, do_ptr, dvl_ptr, dfin_ptr, gs_ptr, dvn_ptr, dh0_ptr,
            scale, T, N,
            K: tl.constexpr, V: tl.constexpr, C: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
            HAS_DFIN: tl.constexpr, PREC: tl.constexpr):
    """Reverse recurrence: G = dL/dS_{n+1} stored as gs[n]; dvn = P^T dO + kd G;
    dL/dS_n = e^gam_C G + (scale q e^gam)^T dO - w^T dvn."""
    iv = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    ok, ov, oc, mk, mv = _kv_index(iv, K, V, C, BK, BV)
    mkv = mk[:, None] & mv[None, :]
    kv_off = ok[:, None] * V + ov[None, :]
    g_base = gam_ptr + bh * T
    gs_base = gs_ptr + bh * N * K * V
    if HAS_DFIN:
        G = tl.load(dfin_ptr + bh * K * V + kv_off, mask=mkv, other=0.0).to(tl.float32)
    else:
        G = tl.zeros([BK, BV], dtype=tl.float32)
    for i in range(N):
        n = N - 1 - i
        tl.store(gs_base + n * K * V + kv_off, G.to(gs_ptr.dtype.element_ty), mask=mkv)
        rows = n * C + oc
        rk = bh * T * K + rows[:, None] * K + ok[None, :]
        rv = bh * T * V + rows[:, None] * V + ov[None, :]
        gam = tl.load(g_base + rows)
        g_last = tl.load(g_base + n * C + C - 1)
        k = tl.load(k_ptr + rk, mask=mk[None, :], other=0.0)
        kd = (k * tl.exp(tl.load(gk_ptr + bh * T + rows))[:, None]).to(k.dtype)
        dvn = tl.load(dvl_ptr + rv, mask=mv[None, :], other=0.0)
        dvn += tl.dot(kd, G.to(k.dtype), input_precision=PREC)
        tl.store(dvn_ptr + rv, dvn, mask=mv[None, :])
        q = tl.load(q_ptr + rk, mask=mk[None, :], other=0.0)
        do = tl.load(do_ptr + rv, mask=mv[None, :], other=0.0)
        w = tl.load(w_ptr + rk, mask=mk[None, :], other=0.0)
        qg = (q * (scale * tl.exp(gam))[:, None]).to(q.dtype)
        G = G * tl.exp(g_last) + tl.dot(tl.trans(qg), do.to(q.dtype), input_precision=PREC) \
            - tl.dot(tl.trans(w), dvn.to(w.dtype), input_precision=PREC)
    tl.store(dh0_ptr + bh * K * V + kv_off, G, mask=mkv)


@triton.jit
def _bwd_dqkw(q_ptr, k_ptr, gam_ptr, g_ptr, gk_ptr, st_ptr, gs_ptr, vn_ptr, do_ptr, dvn_ptr,
              dq_ptr, dk_ptr, dw_ptr, dg_ptr, dgk_ptr, scale, T, N, BHT,
              K: tl.constexpr, V: tl.constexpr, C: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
              PREC: tl.constexpr):
    """Per (K tile, chunk, BH): dq, dk, dw = -dvn S^T and this K tile's part of d gam."""
    ik = tl.program_id(0)
    n = tl.program_id(1)
    bh = tl.program_id(2).to(tl.int64)
    ok = ik * BK + tl.arange(0, BK)
    oc = tl.arange(0, C)
    mk = ok < K
    rows = n * C + oc
    st_base = st_ptr + bh * N * K * V + n * K * V
    gs_base = gs_ptr + bh * N * K * V + n * K * V
    dq = tl.zeros([C, BK], dtype=tl.float32)
    dk3 = tl.zeros([C, BK], dtype=tl.float32)
    dw = tl.zeros([C, BK], dtype=tl.float32)
    da = tl.zeros([C, C], dtype=tl.float32)
    dgc = tl.zeros([BK], dtype=tl.float32)
    for v0 in range(0, V, BV):
        ov = v0 + tl.arange(0, BV)
        mv = ov < V
        rv = bh * T * V + rows[:, None] * V + ov[None, :]
        kv_off = ok[:, None] * V + ov[None, :]
        mkv = mk[:, None] & mv[None, :]
        do = tl.load(do_ptr + rv, mask=mv[None, :], other=0.0)
        vn = tl.load(vn_ptr + rv, mask=mv[None, :], other=0.0)
        dvn = tl.load(dvn_ptr + rv, mask=mv[None, :], other=0.0).to(vn.dtype)
        h = tl.load(st_base + kv_off, mask=mkv, other=0.0)
        gn = tl.load(gs_base + kv_off, mask=mkv, other=0.0)
        dq += tl.dot(do.to(h.dtype), tl.trans(h), input_precision=PREC)
        da += tl.dot(do.to(vn.dtype), tl.trans(vn), input_precision=PREC)
        dk3 += tl.dot(vn, tl.trans(gn.to(vn.dtype)), input_precision=PREC)
        dw += tl.dot(dvn, tl.trans(h.to(vn.dtype)), input_precision=PREC)
        dgc += tl.sum(h.to(tl.float32) * gn.to(tl.float32), 1)
    rk = bh * T * K + rows[:, None] * K + ok[None, :]
    q = tl.load(q_ptr + rk, mask=mk[None, :], other=0.0)
    k = tl.load(k_ptr + rk, mask=mk[None, :], other=0.0)
    gam = tl.load(gam_ptr + bh * T + rows)
    g_last = tl.load(gam_ptr + bh * T + n * C + C - 1)
    dec = _decay(g_ptr + bh * T, rows, oc)
    dad = da * dec * scale
    qf = q.to(tl.float32)
    kf = k.to(tl.float32)
    dq = dq * (scale * tl.exp(gam))[:, None]
    # d gam, intra-chunk part: rowsum - colsum of M = dP * P over j < i, taken directly (the
    # diagonal cancels exactly; via sum(dq*q) - sum(dk*k) it would cancel only to rounding)
    m = tl.where(oc[:, None] > oc[None, :], dad * tl.dot(q, tl.trans(k), input_precision=PREC), 0.0)
    dgam = tl.sum(dq * qf, 1) + tl.sum(m, 1) - tl.sum(m, 0)
    dq += tl.dot(dad.to(k.dtype), k, input_precision=PREC)
    dk3 = dk3 * tl.exp(tl.load(gk_ptr + bh * T + rows))[:, None]
    dk = tl.dot(tl.trans(dad).to(q.dtype), q, input_precision=PREC) + dk3
    dgam += tl.where(oc == C - 1, tl.exp(g_last) * tl.sum(dgc, 0), 0.0)
    tl.store(dq_ptr + rk, dq.to(dq_ptr.dtype.element_ty), mask=mk[None, :])
    tl.store(dk_ptr + rk, dk.to(dk_ptr.dtype.element_ty), mask=mk[None, :])
    tl.store(dw_ptr + rk, (-dw).to(dw_ptr.dtype.element_ty), mask=mk[None, :])
    tl.store(dg_ptr + ik * BHT + bh * T + rows, dgam)
    tl.store(dgk_ptr + ik * BHT + bh * T + rows, tl.sum(dk3 * kf, 1))


# ---------------------------------------------------------------------------------------------
# The chunk-local UT transform, forward and backward, one program per (chunk, BH):
#   gam = cumsum(g), gk_i = sum_{m>i} g_m, L_ij = beta_i (k_i.k_j) e^(gam_i - gam_j) (j < i),
#   Ti = (I + L)^-1 (forward substitution, float32), w = Ti diag(beta e^gam) K, u = Ti diag(beta) V
# ---------------------------------------------------------------------------------------------
@triton.jit
def _wy_fwd(k_ptr, v_ptr, b_ptr, g_ptr, w_ptr, u_ptr, ti_ptr, gam_ptr, gk_ptr, T,
            K: tl.constexpr, V: tl.constexpr, C: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
            PREC: tl.constexpr):
    n = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    ok = tl.arange(0, BK)
    oc = tl.arange(0, C)
    mk = ok < K
    rows = n * C + oc
    g = tl.load(g_ptr + bh * T + rows).to(tl.float32)
    beta = tl.load(b_ptr + bh * T + rows).to(tl.float32)
    gam = tl.cumsum(g, 0)
    seg = tl.cumsum(tl.where(oc[:, None] > oc[None, :], g[:, None], 0.0), 0)  # sum_{j<m<=i} g_m
    gk = tl.sum(tl.where(oc[:, None] == C - 1, seg, 0.0), 0)                  # sum_{m>j} g_m
    tl.store(gam_ptr + bh * T + rows, gam)
    tl.store(gk_ptr + bh * T + rows, gk)
    strict = oc[:, None] > oc[None, :]
    k = _tile(k_ptr + bh * T * K, rows, ok, mk, K)
    kk = tl.dot(k, tl.trans(k), input_precision=PREC)
    lm = tl.where(strict, beta[:, None] * kk * tl.exp(seg), 0.0)
    ti = tl.where(oc[:, None] == oc[None, :], 1.0, 0.0)
    for i in range(1, C):  # row i of Ti: e_i - sum_{j<i} L_ij Ti_j (rows j < i are final)
        li = tl.sum(tl.where(oc[:, None] == i, lm, 0.0), 0)
        ti = tl.where(oc[:, None] == i, ti - tl.sum(li[:, None] * ti, 0)[None, :], ti)
    tl.store(ti_ptr + (bh * T + rows[:, None]) * C + oc[None, :], ti)
    kb = k.to(tl.float32) * (beta * tl.exp(gam))[:, None]
    w = tl.dot(ti, kb, input_precision=PREC)
    tl.store(w_ptr + bh * T * K + rows[:, None] * K + ok[None, :], w.to(w_ptr.dtype.element_ty), mask=mk[None, :])
    for v0 in range(0, V, BV):
        ov = v0 + tl.arange(0, BV)
        mv = ov < V
        rv = bh * T * V + rows[:, None] * V + ov[None, :]
        v = tl.load(v_ptr + rv, mask=mv[None, :], other=0.0).to(tl.float32)
        u = tl.dot(ti, v * beta[:, None], input_precision=PREC)
        tl.store(u_ptr + rv, u.to(u_ptr.dtype.element_ty), mask=mv[None, :])


@triton.jit
def _wy_bwd(k_ptr, v_ptr, b_ptr, g_ptr, ti_ptr, dw_ptr, du_ptr, dkc_ptr, dgam_ptr, dgk_ptr,
            dk_ptr, dv_ptr, db_ptr, dg_ptr, T,
            K: tl.constexpr, V: tl.constexpr, C: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
            PREC: tl.constexpr):
    """Backward of the UT transform, plus the core's gradients: dk = dk_core + this part; dg from
    d gam (the core's and this part's, through gam = cumsum g) and d gk (through gk)."""
    n = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    ok = tl.arange(0, BK)
    oc = tl.arange(0, C)
    mk = ok < K
    rows = n * C + oc
    rk = bh * T * K + rows[:, None] * K + ok[None, :]
    g = tl.load(g_ptr + bh * T + rows).to(tl.float32)
    beta = tl.load(b_ptr + bh * T + rows).to(tl.float32)
    gam = tl.cumsum(g, 0)
    strict = oc[:, None] > oc[None, :]
    seg = tl.cumsum(tl.where(strict, g[:, None], 0.0), 0)
    k = tl.load(k_ptr + rk, mask=mk[None, :], other=0.0)
    kf = k.to(tl.float32)
    kk = tl.dot(k, tl.trans(k), input_precision=PREC)
    dec = tl.where(strict, tl.exp(seg), 0.0)
    ti = tl.load(ti_ptr + (bh * T + rows[:, None]) * C + oc[None, :])
    # w = Ti Kb: dTi += dw Kb^T, dKb = Ti^T dw
    bg = beta * tl.exp(gam)
    kb = kf * bg[:, None]
    dw = tl.load(dw_ptr + rk, mask=mk[None, :], other=0.0).to(tl.float32)
    dti = tl.dot(dw, tl.trans(kb), input_precision=PREC)
    dkb = tl.dot(tl.trans(ti), dw, input_precision=PREC)
    dk = dkb * bg[:, None]
    dbeta = tl.sum(dkb * kf, 1) * tl.exp(gam)
    dgam = tl.sum(dkb * kb, 1)
    for v0 in range(0, V, BV):
        ov = v0 + tl.arange(0, BV)
        mv = ov < V
        rv = bh * T * V + rows[:, None] * V + ov[None, :]
        v = tl.load(v_ptr + rv, mask=mv[None, :], other=0.0).to(tl.float32)
        du = tl.load(du_ptr + rv, mask=mv[None, :], other=0.0).to(tl.float32)
        dti += tl.dot(du, tl.trans(v * beta[:, None]), input_precision=PREC)
        dvb = tl.dot(tl.trans(ti), du, input_precision=PREC)
        tl.store(dv_ptr + rv, (dvb * beta[:, None]).to(dv_ptr.dtype.element_ty), mask=mv[None, :])
        dbeta += tl.sum(dvb * v, 1)
    # Ti = (I + L)^-1: dL = -Ti^T dTi Ti^T (strictly lower part)
    dl = -tl.dot(tl.dot(tl.trans(ti), dti, input_precision=PREC), tl.trans(ti), input_precision=PREC)
    dl = tl.where(strict, dl, 0.0)
    # L = beta_i kk_ij D_ij
    dkk = dl * beta[:, None] * dec
    dk += tl.dot(dkk, kf, input_precision=PREC) + tl.dot(tl.trans(dkk), kf, input_precision=PREC)
    m = dkk * kk  # = dL * L: d gam_i += rowsum, d gam_j -= colsum
    dbeta += tl.sum(dl * kk * dec, 1)
    dgam += tl.sum(m, 1) - tl.sum(m, 0)
    dk += tl.load(dkc_ptr + rk, mask=mk[None, :], other=0.0).to(tl.float32)
    tl.store(dk_ptr + rk, dk.to(dk_ptr.dtype.element_ty), mask=mk[None, :])
    tl.store(db_ptr + bh * T + rows, dbeta)
    dgam += tl.load(dgam_ptr + bh * T + rows)
    dgk = tl.load(dgk_ptr + bh * T + rows)
    # gam_i = sum_{m<=i} g_m -> dg_m += sum_{i>=m} dgam_i; gk_i = sum_{m>i} g_m -> dg_m += sum_{i<m} dgk_i
    dg = tl.sum(tl.where(oc[:, None] >= oc[None, :], dgam[:, None], 0.0), 0) \
        + tl.sum(tl.where(oc[:, None] < oc[None, :], dgk[:, None], 0.0), 0)
    tl.store(dg_ptr + bh * T + rows, dg)
