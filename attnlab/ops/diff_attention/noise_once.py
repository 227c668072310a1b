"""CMD attention with the shared noise stream computed ONCE for all heads (Triton, fwd + bwd).

Common-mode differential attention has ONE noise query/key head shared by every signal head:

    out_h = softmax(s1 Q1_h K1_h^T) V_h  -  lam_h * softmax(s2 Q2 K2^T) V_h          (causal)
          = A_h - lam_h N_h

The noise map P2 = softmax(s2 Q2 K2^T) is the same for every head, so the noise stream is ONE
attention with a single query/key head whose value is every head's V side by side:

    N = P2 [V_1 | V_2 | ... | V_H]                     (multi-value attention, "MVA")

Here the signal stream A goes through SDPA (FlashAttention / cuDNN) and the noise stream through
the kernels below; the combination ``out = A - lam N`` is fused into the noise forward's epilogue.

Work in matmul units (one unit = one causal T x T x d product; the notebook expands the noise
head to every head and calls SDPA twice: 4H forward + 10H backward):
- forward: each program owns a query block and a GROUP of G heads' value columns ([BM, G*dv]
  accumulator); the noise scores are computed once per group: H/G + H units (not 2H);
- backward, with dN_h = -lam_h dO_h (the preprocess also gives Delta = sum_h rowsum(dN_h N_h)):
  * dV kernel (key block x group of G heads): P2^T recomputed once per group, dV_h = P2^T dN_h:
    H/G + H units;
  * dK kernel (one program per live (key block, query tiles) entry of a host-built table, ordered in
    tiles of 8 key blocks so that programs running together share V and dN tiles in L2; x split of
    heads): dP2 = sum_h dN_h V_h^T (ONE accumulator over the split's heads, the 16 x dv columns in
    64-column chunks: the noise map's gradient is shared), dS2 = P2 (dP2 - Delta), dK2 = dS2^T Q2
    and dQ2 = dS2 K2 by float32 atomics: 3 * SPLIT + H units (not 3H + 2H). Session 6's "lean" form
    runs the contraction first with only its accumulators live (session 5's kernel, kept for heads
    wider than ``LEAN_MAX_WIDTH``, kept the scores' operands live through it and spilled 632 bytes per
    thread) and lets two query tiles share each V chunk (NT = 2: 25% fewer L2 bytes per product).
  So noise fwd+bwd is 3H + 2H/G + 3 SPLIT units instead of the expanded call's 7H (H=16, G=2,
  SPLIT=1: 67 vs 112), on top of the signal's 7H through SDPA: 0.80x the notebook's work in all.

Measured on an H100 (benchmarks/RESULTS.md, issue 3, sessions 6-7; B=1, 16 heads, d 128, fwd+bwd):
0.81-0.83x the notebook's time at T=16K and 0.76-0.82x at T=4K (session 7: 0.825x / 0.764x by the ratio of
medians, 0.828x / 0.793x by the median of 30 interleaved pairs), 0.76x its peak memory. The forward and dV
kernels run at 90-98% of cuDNN's rate per unit of work; the dK/dQ kernel at ~71% (latency at its
pipeline's barriers, not L2 bandwidth: Nsight Compute, L2 51% busy). The launches go through
latent.py's launch replay; the forward zeroes the backward's float32 workspace (no memset).
Alternatives measured slower in sessions 4-6 and removed in session 7 (their figures stay in
RESULTS.md): a grouped dK kernel (V columns of a head group resident), one merged backward kernel
(dV, dK and dQ per key block and head group), the op as one autograd node adding the signal's dV in
the dV kernel's epilogue, the dK kernel on a side stream beside the signal's backward, a TMA-descriptor
form of the lean kernel, and session 5's dK kernel as an option at 128-wide heads; session 7's persistent
form of the lean kernel (slower: spills in its pipelined loop) and an automatic choice of NT by waves.
Session 7 round 2 measured and removed (RESULTS.md): P2 materialised in bf16 tiles so that the noise map is
not recomputed per head group (the dK kernel storing its P2^T tiles for the dV kernel, and a two-kernel
forward: P2 written once, then N = P2 V): the kernels reading P2 ran at about half their recomputing
forms' rate (dV 1.90 vs 1.40 ms, forward 1.99 + 0.40 vs 1.44 ms at T=16K), and the dK/dQ kernel adding
its dQ2/dK2 tiles by TMA bulk reduce-add instead of float32 atomics (1.585 vs 1.537 ms).

Session 8: ``GLUON_DK`` (on by default where Gluon runs) runs the dK/dQ kernel written in Gluon (noise_gluon.py: a 4-slot TMA
ring with mbarriers and async wgmma) on Hopper GPUs: 0.76-0.82x the lean kernel's time; the op at 16K 0.795x
the notebook with it (RESULTS.md, "Session 8: CMD dK/dQ in Gluon").

``cmd_attention_noise_once(q1, k1, q2, k2, v, lam)`` is the op (signal by SDPA + this noise path);
``shared_noise_attention`` is the noise stream alone (no combination, for tests and reuse);
``noise_once_reference`` the plain PyTorch reference with explicit maps.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

try:
    from triton.runtime.errors import OutOfResources
except ImportError:  # pragma: no cover - other triton layouts
    from triton.runtime import OutOfResources

from .latent import _rows  # the masked [rows, D] tile load shared with the latent kernels

LOG2E = 1.4426950408889634


# ------------------------------------------------------------------------------------------
# kernels

@triton.jit
def _fwd_step(q, k_base, skt, v_base, svt, vcol, cmask, start_n, offs_m, T, m, l, acc, qk,
              D: tl.constexpr, BD: tl.constexpr, BN: tl.constexpr, MASK: tl.constexpr):
    offs_n = start_n + tl.arange(0, BN)
    k = _rows(k_base, offs_n, skt, T, D, BD)
    s = tl.dot(q, tl.trans(k)) * qk
    if MASK:
        s = tl.where(offs_m[:, None] >= offs_n[None, :], s, float("-inf"))
    mn = tl.maximum(m, tl.max(s, 1))
    p = tl.math.exp2(s - mn[:, None])
    a = tl.math.exp2(m - mn)
    l = l * a + tl.sum(p, 1)
    v = tl.load(v_base + offs_n[:, None] * svt + vcol[None, :], mask=(offs_n < T)[:, None] & cmask[None, :],
                other=0.0)
    acc = tl.dot(p.to(v.dtype), v, acc * a[:, None])
    return mn, l, acc


@triton.jit
def _noise_fwd_kernel(Q, K, V, A, LAM, O, N, LSE, WS,
                      sqb, sqt, skb, skt, svb, svh, svt, sab, sah, sat, sob, soh, sot, snb, snh, snt,
                      H, NG, T, BTD, qk,
                      D: tl.constexpr, BD: tl.constexpr, DV: tl.constexpr, BDV: tl.constexpr,
                      G: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, COMBINE: tl.constexpr,
                      MAJOR: tl.constexpr, ZERO: tl.constexpr):
    """Program = (query block, batch x group of G heads). acc [BM, G*BDV] holds the group's
    value columns; the noise scores and softmax state are computed once for the group.
    ZERO: the first group's programs also zero their rows of the backward's float32 workspace WS
    (dQ2 [B, T, D], dK2 [B, T, D], then dlam [H]: atomics targets), instead of a memset there."""
    # the longest (last) query blocks first; MAJOR: the grid is (groups, blocks), so the programs
    # start in order of length over all groups (longest processing time first)
    if MAJOR:
        pid_m = tl.num_programs(1) - 1 - tl.program_id(1)
        bg = tl.program_id(0)
    else:
        pid_m = tl.num_programs(0) - 1 - tl.program_id(0)
        bg = tl.program_id(1)
    b = bg // NG
    h0 = (bg % NG) * G
    offs_m = pid_m * BM + tl.arange(0, BM)
    offs_c = tl.arange(0, G * BDV)
    ch = h0 + offs_c // BDV
    cd = offs_c % BDV
    cmask = (ch < H) & (cd < DV)
    q = _rows(Q + b * sqb, offs_m, sqt, T, D, BD)
    k_base = K + b * skb
    v_base = V + b * svb
    vcol = ch * svh + cd
    m = tl.full([BM], float("-inf"), tl.float32)
    l = tl.zeros([BM], tl.float32)
    acc = tl.zeros([BM, G * BDV], tl.float32)
    lo = pid_m * BM
    for start_n in range(0, lo, BN):  # key blocks entirely in the past
        m, l, acc = _fwd_step(q, k_base, skt, v_base, svt, vcol, cmask, start_n, offs_m, T, m, l, acc, qk,
                              D, BD, BN, False)
    for start_n in range(lo, tl.minimum(lo + BM, T), BN):  # the diagonal
        m, l, acc = _fwd_step(q, k_base, skt, v_base, svt, vcol, cmask, start_n, offs_m, T, m, l, acc, qk,
                              D, BD, BN, True)
    n = acc / l[:, None]
    rmask = offs_m < T
    omask = rmask[:, None] & cmask[None, :]
    tl.store(N + b * snb + offs_m[:, None] * snt + (ch * snh + cd)[None, :], n.to(N.dtype.element_ty), mask=omask)
    if COMBINE:  # out = A - lam_h N_h, A the signal stream's output
        lam = tl.load(LAM + ch, mask=ch < H, other=0.0)
        a = tl.load(A + b * sab + offs_m[:, None] * sat + (ch * sah + cd)[None, :], mask=omask, other=0.0)
        out = a.to(tl.float32) - lam[None, :] * n
        tl.store(O + b * sob + offs_m[:, None] * sot + (ch * soh + cd)[None, :], out.to(O.dtype.element_ty),
                 mask=omask)
    if h0 == 0:  # one log-sum-exp per (batch, row), log2 units
        tl.store(LSE + b * T + offs_m, m + tl.math.log2(l), mask=rmask)
        if ZERO:
            offs_d = tl.arange(0, BD)
            idx = (b * T + offs_m[:, None]) * D + offs_d[None, :]
            zmask = rmask[:, None] & (offs_d < D)[None, :]
            zero = tl.zeros([BM, BD], tl.float32)
            tl.store(WS + idx, zero, mask=zmask)
            tl.store(WS + BTD + idx, zero, mask=zmask)
            if pid_m == 0:
                if b == 0:
                    for i in range(0, H, 16):
                        offs_h = i + tl.arange(0, 16)
                        tl.store(WS + 2 * BTD + offs_h, tl.zeros([16], tl.float32), mask=offs_h < H)


@triton.jit
def _noise_bwd_pre_kernel(DO, N, LAM, DN, DELTA, DLAM,
                          sdob, sdoh, sdot, snb, snh, snt, H, HS, SPLIT, T,
                          DV: tl.constexpr, BDV: tl.constexpr, BM: tl.constexpr, COMBINE: tl.constexpr):
    """dN_h = -lam_h dO_h (or dO_h itself without the combination), per split of heads
    Delta[b, s, t] = sum_{h in s} rowsum(dN_h N_h), and (COMBINE) dlam_h = -sum_{b,t} rowsum(dO_h N_h)
    by float32 atomics into DLAM (zeroed by the caller)."""
    pid_m = tl.program_id(0)
    b = tl.program_id(1)
    offs_m = pid_m * BM + tl.arange(0, BM)
    rmask = offs_m < T
    offs_d = tl.arange(0, BDV)
    dmask = rmask[:, None] & (offs_d < DV)[None, :]
    for s in range(0, SPLIT):
        delta = tl.zeros([BM], tl.float32)
        for h in range(s * HS, tl.minimum(s * HS + HS, H)):
            do = _rows(DO + b * sdob + h * sdoh, offs_m, sdot, T, DV, BDV).to(tl.float32)
            n = _rows(N + b * snb + h * snh, offs_m, snt, T, DV, BDV).to(tl.float32)
            r = tl.sum(do * n, 1)
            if COMBINE:
                lam = tl.load(LAM + h)
                tl.atomic_add(DLAM + h, -tl.sum(r, 0), sem="relaxed")
                do = -lam * do
                r = -lam * r
            delta += r
            tl.store(DN + ((b * H + h) * T + offs_m[:, None]) * DV + offs_d[None, :], do.to(DN.dtype.element_ty),
                     mask=dmask)
        tl.store(DELTA + (b * SPLIT + s) * T + offs_m, delta, mask=rmask)


@triton.jit
def _dv_step(k, acc, q_base, sqt, dn_base, col, cmask, LSE, start_m, offs_n, T, qk,
             D: tl.constexpr, BD: tl.constexpr, DVG: tl.constexpr, BM: tl.constexpr, MASK: tl.constexpr):
    offs_m = start_m + tl.arange(0, BM)
    q = _rows(q_base, offs_m, sqt, T, D, BD)
    lse = tl.load(LSE + offs_m, mask=offs_m < T, other=float("inf"))
    pt = tl.math.exp2(tl.dot(k, tl.trans(q)) * qk - lse[None, :])  # [BN, BM]
    if MASK:
        pt = tl.where(offs_m[None, :] >= offs_n[:, None], pt, 0.0)
    dn = tl.load(dn_base + offs_m[:, None] * DVG + col[None, :], mask=(offs_m < T)[:, None] & cmask[None, :],
                 other=0.0)
    return tl.dot(pt.to(dn.dtype), dn, acc)


@triton.jit
def _noise_bwd_dv_kernel(Q, K, DN, LSE, DVO, DQK, DQK16,
                         sqb, sqt, skb, skt, sdvb, sdvh, sdvt,
                         H, NG, T, BTD, qk,
                         D: tl.constexpr, BD: tl.constexpr, DV: tl.constexpr, BDV: tl.constexpr,
                         G: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, CAST: tl.constexpr,
                         MAJOR: tl.constexpr):
    """Program = (key block, batch x group of G heads): dV_h = P2^T dN_h for the group's heads,
    P2 recomputed once per group. dN is [B, H, T, DV] contiguous. CAST: the first group's programs
    also convert their key block's rows of the float32 dQ2/dK2 (DQK [2, B, T, D], complete: the
    dK/dQ kernel ran before on the stream) to the output dtype (DQK16), instead of a torch cast.
    MAJOR: the grid is (groups, key blocks): the first (longest) key block of every group first."""
    if MAJOR:
        pid_n = tl.program_id(1)
        bg = tl.program_id(0)
    else:
        pid_n = tl.program_id(0)
        bg = tl.program_id(1)
    b = bg // NG
    h0 = (bg % NG) * G
    start_n = pid_n * BN
    offs_n = start_n + tl.arange(0, BN)
    offs_c = tl.arange(0, G * BDV)
    ch = h0 + offs_c // BDV
    cd = offs_c % BDV
    cmask = (ch < H) & (cd < DV)
    k = _rows(K + b * skb, offs_n, skt, T, D, BD)
    q_base = Q + b * sqb
    dn_base = DN + b * H * T * DV
    col = ch * (T * DV) + cd  # dN row stride is DV
    lse_b = LSE + b * T
    acc = tl.zeros([BN, G * BDV], tl.float32)
    for start_m in range(start_n, start_n + BN, BM):  # query blocks on the diagonal
        acc = _dv_step(k, acc, q_base, sqt, dn_base, col, cmask, lse_b, start_m, offs_n, T, qk, D, BD, DV, BM, True)
    for start_m in range(start_n + BN, T, BM):
        acc = _dv_step(k, acc, q_base, sqt, dn_base, col, cmask, lse_b, start_m, offs_n, T, qk, D, BD, DV, BM, False)
    dv_ptrs = DVO + b * sdvb + offs_n[:, None] * sdvt + (ch * sdvh + cd)[None, :]
    dv_mask = (offs_n < T)[:, None] & cmask[None, :]
    tl.store(dv_ptrs, acc.to(DVO.dtype.element_ty), mask=dv_mask)
    if CAST:
        if h0 == 0:
            offs_d = tl.arange(0, BD)
            idx = (b * T + offs_n[:, None]) * D + offs_d[None, :]
            m2 = (offs_n < T)[:, None] & (offs_d < D)[None, :]
            tl.store(DQK16 + idx, tl.load(DQK + idx, mask=m2, other=0.0).to(DQK16.dtype.element_ty), mask=m2)
            tl.store(DQK16 + BTD + idx, tl.load(DQK + BTD + idx, mask=m2, other=0.0).to(DQK16.dtype.element_ty),
                     mask=m2)


@triton.jit
def _cols(base, offs_t, stride_t, T, c0, DV: tl.constexpr, BDV: tl.constexpr, KC: tl.constexpr):
    """Rows offs_t, columns c0 .. c0 + KC of a [T, DV] matrix (masked)."""
    offs_c = c0 + tl.arange(0, KC)
    ptrs = base + offs_t[:, None] * stride_t + offs_c[None, :]
    if DV == BDV:
        return tl.load(ptrs, mask=(offs_t < T)[:, None], other=0.0)
    return tl.load(ptrs, mask=(offs_t < T)[:, None] & (offs_c < DV)[None, :], other=0.0)


@triton.jit
def _dk_step(k, v_base, svh, svt, dk, q_base, sqt, dn_base, LSE, DELTA, DQ, hs0, hs1,
             start_m, offs_n, T, TQ, qk, scale,
             D: tl.constexpr, BD: tl.constexpr, DV: tl.constexpr, BDV: tl.constexpr,
             BM: tl.constexpr, BN: tl.constexpr, MASK: tl.constexpr, KC: tl.constexpr):
    """One query tile (rows start_m .. start_m + BM, those >= TQ masked: the end of the program's
    chunk) against the key block; keys masked at T. The scores come after the head loop (fewer live
    registers while it runs)."""
    offs_m = start_m + tl.arange(0, BM)
    rmask = offs_m < TQ
    q = _rows(q_base, offs_m, sqt, TQ, D, BD)
    lse = tl.load(LSE + offs_m, mask=rmask, other=float("inf"))
    delta = tl.load(DELTA + offs_m, mask=rmask, other=0.0)
    # dP2^T = sum over the split's heads of V_h dN_h^T: one accumulator, the heads as its inner loop
    dpt = tl.zeros([BN, BM], dtype=tl.float32)
    if KC == BDV:
        for h in range(hs0, hs1):
            v = _rows(v_base + h * svh, offs_n, svt, T, DV, BDV)
            dn = _rows(dn_base + h * T * DV, offs_m, DV, TQ, DV, BDV)
            dpt = tl.dot(v, tl.trans(dn), dpt)
    else:  # the contraction in chunks of KC columns (smaller pipeline stages)
        NKC: tl.constexpr = BDV // KC
        for j in range(hs0 * NKC, hs1 * NKC):
            h = j // NKC
            c0 = (j % NKC) * KC
            v = _cols(v_base + h * svh, offs_n, svt, T, c0, DV, BDV, KC)
            dn = _cols(dn_base + h * T * DV, offs_m, DV, TQ, c0, DV, BDV, KC)
            dpt = tl.dot(v, tl.trans(dn), dpt)
    pt = tl.math.exp2(tl.dot(k, tl.trans(q)) * qk - lse[None, :])  # [BN, BM]
    if MASK:
        pt = tl.where(offs_m[None, :] >= offs_n[:, None], pt, 0.0)
    dst = (pt * (dpt - delta[None, :])).to(q.dtype)
    dk = tl.dot(dst, q, dk)
    offs_d = tl.arange(0, BD)
    tl.atomic_add(DQ + offs_m[:, None] * D + offs_d[None, :], tl.dot(tl.trans(dst), k) * scale,
                  mask=rmask[:, None] & (offs_d < D)[None, :], sem="relaxed")
    return dk


@triton.jit
def _noise_bwd_dk_kernel(Q, K, V, DN, LSE, DELTA, DK, DQ, TBL,
                         sqb, sqt, skb, skt, svb, svh, svt,
                         H, HS, SPLIT, T, qk, scale,
                         D: tl.constexpr, BD: tl.constexpr, DV: tl.constexpr, BDV: tl.constexpr,
                         BM: tl.constexpr, BN: tl.constexpr, CHUNK: tl.constexpr, KC: tl.constexpr):
    """Session 5's dK/dQ kernel, kept for heads wider than LEAN_MAX_WIDTH. Program = (one (key
    block, chunk of CHUNK query rows) pair of the table TBL, batch x split of heads): dK2 and dQ2 by
    float32 atomics from dS2 = P2 (sum_h dN_h V_h^T - Delta), the split's heads an inner loop. TBL
    lists only the pairs with work (query rows at or after the key block), in the order the host
    chose (tiles of key blocks x chunks, so that programs running together share V and dN tiles in L2)."""
    pid = tl.program_id(0)
    bs = tl.program_id(1)
    pid_n = tl.load(TBL + 2 * pid)
    c = tl.load(TBL + 2 * pid + 1)
    b = bs // SPLIT
    s = bs % SPLIT
    hs0 = s * HS
    hs1 = tl.minimum(hs0 + HS, H)
    start_n = pid_n * BN
    lo = c * CHUNK
    hi = tl.minimum(lo + CHUNK, T)
    offs_n = start_n + tl.arange(0, BN)
    k = _rows(K + b * skb, offs_n, skt, T, D, BD)
    q_base = Q + b * sqb
    v_base = V + b * svb
    dn_base = DN + b * H * T * DV
    lse_b = LSE + b * T
    delta_b = DELTA + bs * T
    dq_b = DQ + b * T * D
    dk = tl.zeros([BN, BD], tl.float32)
    # query tiles from max(lo, start_n) in steps of BM (any BM, BN); rows >= hi masked
    first = tl.maximum(lo, start_n)
    d_end = first + tl.cdiv(tl.maximum(tl.minimum(hi, start_n + BN) - first, 0), BM) * BM
    for start_m in range(first, tl.minimum(d_end, hi), BM):  # tiles reaching into the diagonal block
        dk = _dk_step(k, v_base, svh, svt, dk, q_base, sqt, dn_base, lse_b, delta_b, dq_b, hs0, hs1,
                      start_m, offs_n, T, hi, qk, scale, D, BD, DV, BDV, BM, BN, True, KC)
    for start_m in range(d_end, hi, BM):
        dk = _dk_step(k, v_base, svh, svt, dk, q_base, sqt, dn_base, lse_b, delta_b, dq_b, hs0, hs1,
                      start_m, offs_n, T, hi, qk, scale, D, BD, DV, BDV, BM, BN, False, KC)
    offs_d = tl.arange(0, BD)
    tl.atomic_add(DK + (b * T + offs_n[:, None]) * D + offs_d[None, :], dk * scale,
                  mask=(offs_n < T)[:, None] & (offs_d < D)[None, :], sem="relaxed")


@triton.jit
def _dk_lean_tile(dpt, k, dk, q_base, sqt, LSE, DELTA, DQ, DKB, start_m, offs_n, T, qk, scale,
                  D: tl.constexpr, BD: tl.constexpr, BM: tl.constexpr, ACC: tl.constexpr):
    """The epilogue of one query tile of the lean dK kernel: its q, lse and Delta are loaded only
    now (not live during the contraction), dS2^T = P2^T (dP2^T - Delta), then dQ2 by float32
    atomics straight from the dot; dK2 likewise, or (ACC) accumulated into dk (returned) for one
    atomic per program."""
    offs_m = start_m + tl.arange(0, BM)
    rmask = offs_m < T
    q = _rows(q_base, offs_m, sqt, T, D, BD)
    lse = tl.load(LSE + offs_m, mask=rmask, other=float("inf"))
    delta = tl.load(DELTA + offs_m, mask=rmask, other=0.0)
    pt = tl.math.exp2(tl.dot(k, tl.trans(q)) * qk - lse[None, :])  # [BN, BM]
    pt = tl.where(offs_m[None, :] >= offs_n[:, None], pt, 0.0)  # causal; also keys >= T, rows above
    dst = (pt * (dpt - delta[None, :])).to(q.dtype)
    offs_d = tl.arange(0, BD)
    dmask = (offs_d < D)[None, :]
    tl.atomic_add(DQ + offs_m[:, None] * D + offs_d[None, :], tl.dot(tl.trans(dst), k) * scale,
                  mask=rmask[:, None] & dmask, sem="relaxed")
    if ACC:
        dk = tl.dot(dst, q, dk)
    else:
        tl.atomic_add(DKB + offs_n[:, None] * D + offs_d[None, :], tl.dot(dst, q) * scale,
                      mask=(offs_n < T)[:, None] & dmask, sem="relaxed")
    return dk


@triton.jit
def _noise_bwd_dk_lean_kernel(Q, K, V, DN, LSE, DELTA, DK, DQ, TBL,
                              sqb, sqt, skb, skt, svb, svh, svt,
                              H, HS, SPLIT, T, qk, scale,
                              D: tl.constexpr, BD: tl.constexpr, DV: tl.constexpr, BDV: tl.constexpr,
                              BM: tl.constexpr, BN: tl.constexpr, NT: tl.constexpr, KC: tl.constexpr,
                              EARLY_K: tl.constexpr, ACC: tl.constexpr):
    """The lean dK/dQ kernel (heads up to LEAN_MAX_WIDTH): program = one (key block, NT query tiles) entry of
    the table TBL (chunks of NT * BM rows) x split of heads. The contraction dP2^T = sum_h V_h dN_h^T
    (the split's heads x DV columns in KC-column chunks) runs first with ONLY its accumulators live
    (one per query tile; NT = 2: both tiles share each V chunk, 3 operand tiles per 2 products
    instead of 4, i.e. 25% fewer L2 bytes per unit of work); the scores, dS2 and the dQ2/dK2 atomics
    follow per tile (``_dk_lean_tile``). EARLY_K: the key tile is loaded before the contraction.
    ACC (NT = 2): dK2 of both tiles accumulated in registers, one atomic per program."""
    pid = tl.program_id(0)
    bs = tl.program_id(1)
    pid_n = tl.load(TBL + 2 * pid)
    c = tl.load(TBL + 2 * pid + 1)
    b = bs // SPLIT
    s = bs % SPLIT
    hs0 = s * HS
    hs1 = tl.minimum(hs0 + HS, H)
    start_n = pid_n * BN
    start_m = c * (NT * BM)
    offs_n = start_n + tl.arange(0, BN)
    offs_ma = start_m + tl.arange(0, BM)
    offs_mb = offs_ma + BM
    v_base = V + b * svb
    dn_base = DN + b * H * T * DV
    if EARLY_K:
        k = _rows(K + b * skb, offs_n, skt, T, D, BD)
    dpa = tl.zeros([BN, BM], dtype=tl.float32)
    if NT == 2:
        dpb = tl.zeros([BN, BM], dtype=tl.float32)
    NKC: tl.constexpr = BDV // KC
    for j in range(hs0 * NKC, hs1 * NKC):
        h = j // NKC
        c0 = (j % NKC) * KC
        v = _cols(v_base + h * svh, offs_n, svt, T, c0, DV, BDV, KC)
        dnh = dn_base + h * T * DV
        dpa = tl.dot(v, tl.trans(_cols(dnh, offs_ma, DV, T, c0, DV, BDV, KC)), dpa)
        if NT == 2:
            dpb = tl.dot(v, tl.trans(_cols(dnh, offs_mb, DV, T, c0, DV, BDV, KC)), dpb)
    if not EARLY_K:
        k = _rows(K + b * skb, offs_n, skt, T, D, BD)
    q_base = Q + b * sqb
    lse_b = LSE + b * T
    delta_b = DELTA + bs * T
    dq_b = DQ + b * T * D
    dk_b = DK + b * T * D
    dk = tl.zeros([BN, BD], dtype=tl.float32)
    dk = _dk_lean_tile(dpa, k, dk, q_base, sqt, lse_b, delta_b, dq_b, dk_b, start_m, offs_n, T, qk, scale,
                       D, BD, BM, ACC)
    if NT == 2:
        dk = _dk_lean_tile(dpb, k, dk, q_base, sqt, lse_b, delta_b, dq_b, dk_b, start_m + BM, offs_n, T, qk, scale,
                           D, BD, BM, ACC)
    if ACC:
        offs_d = tl.arange(0, BD)
        tl.atomic_add(dk_b + offs_n[:, None] * D + offs_d[None, :], dk * scale,
                      mask=(offs_n < T)[:, None] & (offs_d < D)[None, :], sem="relaxed")


# ------------------------------------------------------------------------------------------
# launch

def _interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _pow2(d: int) -> int:
    return max(16, triton.next_power_of_2(d))


# Launch configs. fwd / dv: (BM, BN, G heads per program, num_warps, num_stages, major): major=1:
# the grid's first axis is the head group, so programs start longest first over all groups (0 or
# missing: session 4's order, blocks first); fwd needs BM % BN == 0, dv BN % BM == 0.
# lean: the dK/dQ kernel of session 6 (``_noise_bwd_dk_lean_kernel``, heads up to LEAN_MAX_WIDTH):
# (BM, BN, NT query tiles per program sharing each V chunk, warps, stages, order, kc, split of heads,
# early_k, acc, maxnreg); order: the program order of the (key block, chunk) pairs: 0 chunk-major (all
# key blocks of chunk 0, then chunk 1, ...), k > 0 tiles of k key blocks (for each tile: every chunk,
# its k key blocks); kc: the contraction's chunk (columns of V / dN per dot; 0: a whole head); acc:
# NT = 2 sums both tiles' dK2 in registers (one atomic per program); maxnreg: a register cap per
# thread (0: none; 128 at 8 warps lets two programs share an SM); missing trailing fields take
# (early_k, acc, maxnreg) = (False, False, 0). Compiled for sm_90 the lean kernel keeps no spill slots
# at NT = 1 (session 5's kernel: 632 bytes of stack per thread: its scores' operands and accumulators
# were live during the contraction); NT = 2 reads 25% fewer L2 bytes per product.
# dk: session 5's dK/dQ kernel (``_noise_bwd_dk_kernel``), taken for heads wider than LEAN_MAX_WIDTH:
# (BM, BN, S splits of the heads, CHUNK query rows, num_warps, num_stages, order, kc), any BM, BN, CHUNK.
# The best of the sweeps on an H100 at B=1, 16 heads, d 128 (sessions 5-6: benchmarks/results/s5/,
# s6_cmd/, s6b_cmd/ and benchmarks/RESULTS.md). Configs that do not fit the shared memory (wider
# heads) drop pipeline stages (``_fit``). Removed in session 7 (measured slower, see RESULTS.md,
# issue 3, sessions 4-6): the grouped dK kernel, the merged backward (BWD_MODE="merged"), the op as one
# autograd node (FUSE_SIGNAL) and its side-stream overlap (OVERLAP), session 5's dK kernel as an
# option at 128-wide heads (DK_MODE="loop").
CONFIGS = {
    "fwd": (128, 64, 2, 8, 4, 1),
    "dv": (64, 128, 2, 8, 4, 1),
    "lean": (128, 128, 2, 8, 3, 8, 64, 1, True, True),
    "dk": (128, 128, 1, 128, 8, 3, 8, 64),
}
# heads wider than this take session 5's dK kernel and the memset (GPU-tested at 256-wide noise heads;
# the lean kernel's configs and the zeroing epilogue were measured and GPU-tested at 128)
LEAN_MAX_WIDTH = 128
# ZERO_IN_FWD: the noise forward zeroes the backward's float32 workspace (dQ2/dK2 atomics, dlam) in its
# epilogue (False: a memset in the backward; heads wider than LEAN_MAX_WIDTH keep the memset). Measured
# (two device calls, 5 rounds each): T=4K 0.810x / 0.819x vs 0.824x / 0.827x with the memset (one launch
# and its host time fewer), T=16K 0.815x / 0.816x vs 0.812x / 0.819x (within noise).
ZERO_IN_FWD = os.environ.get("ATTNLAB_NOISE_ZERO", "1") == "1"
# GLUON_DK: the dK/dQ kernel written in Gluon (noise_gluon.py: TMA ring + mbarriers + async wgmma) instead of
# the Triton lean kernel, where ``noise_gluon.available`` says it can run (Hopper GPU, bf16/fp16, 128-wide
# heads, the lean config's tiles); anywhere else (CPU, interpreter, other widths) the lean kernel runs.
# Session 8 (RESULTS.md): on by default since the lead's merge: the kernel is faster at every T measured
# (0.76-0.82x the lean kernel's time); the CMD op at 16K 0.795-0.804x the notebook in five device calls
# (lean: 0.825-0.833x); at 4K (host bound) faster in three of the four calls with the working replay.
# ATTNLAB_NOISE_GLUON=0 runs the lean kernel everywhere.
GLUON_DK = os.environ.get("ATTNLAB_NOISE_GLUON", "1") == "1"
GLUON_DK_CONFIG = None  # (KC, STAGES, num_warps, EARLY_Q, ROWS); None: noise_gluon.GLUON_CONFIG


def _zero_in_fwd(q2, v) -> bool:
    """ZERO_IN_FWD where it was GPU-tested: heads up to LEAN_MAX_WIDTH wide (wider: the memset)."""
    return ZERO_IN_FWD and max(q2.shape[-1], v.shape[-1]) <= LEAN_MAX_WIDTH


def _dk_mode(d: int, dv: int) -> str:
    """The dK/dQ kernel the backward takes for these head dims: "lean" or (wide heads) "loop"."""
    return "loop" if max(d, dv) > LEAN_MAX_WIDTH else "lean"


_INTERP = {"fwd": (16, 16, 2, 1, 1), "dv": (16, 16, 2, 1, 1), "dk": (16, 16, 2, 16, 1, 1, 0, 0),
           "lean": (16, 16, 2, 1, 1, 2, 0, 1, False)}


def _config(name: str, h: int, dv: int, d: int = 0):
    cfg = tuple((_INTERP if _interpret() else CONFIGS)[name])
    wide = max(d, dv) > 128 and not _interpret()
    if name == "lean":
        if wide:  # wide heads: one 64-row query tile per program
            cfg = (64, cfg[1], 1) + cfg[3:]
        return cfg + (False, False, 0)[len(cfg) - 8:]
    if name == "dk":  # the head-loop dK kernel takes any BM, BN and CHUNK
        if wide and cfg[0] > 64:  # wide heads: 64-row query tiles
            cfg = (64,) + cfg[1:]
        return cfg
    if len(cfg) == 5:
        cfg = cfg + (0,)
    bm, bn, g = cfg[:3]
    if bm % bn if name == "fwd" else bn % bm:
        raise ValueError(f"noise_once.CONFIGS[{name!r}] = {cfg}: block sizes do not nest")
    g = 1 << (max(1, min(g, h)).bit_length() - 1)  # the group's columns are one power-of-two wide tile
    while g > 1 and g * _pow2(dv) > 512:
        g //= 2
    return (bm, bn, g) + tuple(cfg[3:])


_TABLES: dict = {}


def _dk_table(t: int, bn: int, chunk: int, order: int, device) -> torch.Tensor:
    """int32 [2 * pairs]: the (key block, query chunk) pairs with work, in launch order (cached)."""
    key = (t, bn, chunk, order, str(device))
    tb = _TABLES.get(key)
    if tb is None:
        nb, nc = triton.cdiv(t, bn), triton.cdiv(t, chunk)
        live = lambda n, c: min(c * chunk + chunk, t) > n * bn  # noqa: E731
        if order <= 0:
            pairs = [(n, c) for c in range(nc) for n in range(nb) if live(n, c)]
        else:
            pairs = [(n, c) for n0 in range(0, nb, order) for c in range(nc)
                     for n in range(n0, min(n0 + order, nb)) if live(n, c)]
        tb = torch.tensor(pairs, dtype=torch.int32).reshape(-1).to(device)
        if len(_TABLES) > 64:
            _TABLES.clear()
        _TABLES[key] = tb
    return tb


def _vstr(x):  # (batch, head, time) strides of a [B, H, T, D] tensor
    return x.stride(0), x.stride(1), x.stride(2)


def _align(x):
    return x.data_ptr() % 16


def _fit(go, kernel, grid, args, num_warps, num_stages, **opts):
    """Launch with num_stages, or fewer where the GPU's shared memory does not hold that many
    (wider heads than the 128 the configs were measured at). Only the slow path gets here: the
    replay repeats the launch that fitted. opts: more launch options (maxnreg)."""
    for s in range(num_stages, 0, -1):
        try:
            return go(kernel, grid, args, num_warps=num_warps, num_stages=s, **opts)
        except OutOfResources:
            if s == 1:
                raise


# Launching: the kernels go through latent.py's launch replay (``_launch``): the first call of a
# shape records its launches, later calls replay them into the compiled kernels' launchers with the
# new data pointers (no Triton argument binding; see latent.py). The bodies below are the slow path.

def _fwd_body(go, q2, k2, v, aa, lam32, out, n, lse, ws32, scale, combine, zero):
    b, t, d = q2.shape
    h, dv = v.shape[1], v.shape[-1]
    bm, bn, g, w, s, major = _config("fwd", h, dv)
    ng = triton.cdiv(h, g)
    grid = (b * ng, triton.cdiv(t, bm)) if major else (triton.cdiv(t, bm), b * ng)
    _fit(go, _noise_fwd_kernel, grid,
       (q2, k2, v, aa, lam32, out, n, lse, ws32,
        q2.stride(0), q2.stride(1), k2.stride(0), k2.stride(1), *_vstr(v), *_vstr(aa), *_vstr(out), *_vstr(n),
        h, ng, t, b * t * d, scale * LOG2E, d, _pow2(d), dv, _pow2(dv), g, bm, bn, combine, bool(major), zero), w, s)


def _dk_loop(go, q2, k2, v, dn, lse, delta, dk32, dq32, tbl, h, hs, split, t, d, dv, scale):
    """Session 5's dK/dQ kernel (heads wider than LEAN_MAX_WIDTH)."""
    bm, bn, _, chunk, w, s, _, kc = _config("dk", h, dv, d)
    kc = _pow2(dv) if kc <= 0 else min(kc, _pow2(dv))
    _fit(go, _noise_bwd_dk_kernel, (tbl.numel() // 2, q2.shape[0] * split),
       (q2, k2, v, dn, lse, delta, dk32, dq32, tbl,
        q2.stride(0), q2.stride(1), k2.stride(0), k2.stride(1), *_vstr(v),
        h, hs, split, t, scale * LOG2E, scale, d, _pow2(d), dv, _pow2(dv), bm, bn, chunk, kc), w, s)


def _gluon_dk(go, q2, k2, v, dn, lse, delta, dk32, dq32, tbl, h, hs, split, t, scale, bm, bn, nt) -> bool:
    """The Gluon dK/dQ kernel where it can run (returns True), else nothing (False: the lean kernel)."""
    from . import noise_gluon as ng
    d, dv = q2.shape[-1], v.shape[-1]
    if not (ng.available(q2, v, d, dv, bm, bn, nt, (k2, dn)) and dn.is_contiguous()):
        return False
    # the launch replay rebuilds its host tensor descriptors on the new pointers (launch_replay.DescArg)
    try:
        ng.noise_bwd_dk_gluon(q2, k2, v, dn, lse, delta, dk32, dq32, tbl, h, hs, split, t, scale * LOG2E, scale,
                              bm, bn, config=GLUON_DK_CONFIG, go=go)
    except Exception as e:  # noqa: BLE001 - Gluon is experimental: its API moves between Triton versions
        import warnings
        ng.BROKEN = f"{type(e).__name__}: {e}"[:500]
        warnings.warn(f"noise-once: the Gluon dK/dQ kernel failed ({ng.BROKEN}); using the Triton lean kernel")
        return False
    return True


def _bwd_body(go, dout, q2, k2, v, lam32, n, lse, dn, delta, ws32, dqk16, dvo, tbl, scale, combine, cfg):
    """The preprocess, the dK/dQ kernel, then the dV kernel (which also casts dQ2/dK2)."""
    b, t, d = q2.shape
    h, dv = v.shape[1], v.shape[-1]
    hs, split = cfg
    btd = b * t * d
    dq32, dk32, dlam = ws32[:btd], ws32[btd:2 * btd], ws32[2 * btd:]
    pbm = 16 if _interpret() else 32
    go(_noise_bwd_pre_kernel, (triton.cdiv(t, pbm), b),
       (dout, n, lam32, dn, delta, dlam, *_vstr(dout), *_vstr(n), h, hs, split, t, dv, _pow2(dv), pbm, combine))
    if _dk_mode(d, dv) == "lean":
        bm, bn, nt, w, s, _, kc, _, early, acc, maxnreg = _config("lean", h, dv, d)
        if not (GLUON_DK and _gluon_dk(go, q2, k2, v, dn, lse, delta, dk32, dq32, tbl, h, hs, split, t, scale,
                                       bm, bn, nt)):
            kc = _pow2(dv) if kc <= 0 else min(kc, _pow2(dv))
            opts = {"maxnreg": maxnreg} if maxnreg and not _interpret() else {}
            _fit(go, _noise_bwd_dk_lean_kernel, (tbl.numel() // 2, b * split),
                 (q2, k2, v, dn, lse, delta, dk32, dq32, tbl,
                  q2.stride(0), q2.stride(1), k2.stride(0), k2.stride(1), *_vstr(v),
                  h, hs, split, t, scale * LOG2E, scale, d, _pow2(d), dv, _pow2(dv), bm, bn, nt, kc, bool(early),
                  bool(acc)), w, s, **opts)
    else:
        _dk_loop(go, q2, k2, v, dn, lse, delta, dk32, dq32, tbl, h, hs, split, t, d, dv, scale)
    bm, bn, g, w, s, major = _config("dv", h, dv)
    ng = triton.cdiv(h, g)
    grid = (b * ng, triton.cdiv(t, bn)) if major else (triton.cdiv(t, bn), b * ng)
    _fit(go, _noise_bwd_dv_kernel, grid,
       (q2, k2, dn, lse, dvo, ws32, dqk16, q2.stride(0), q2.stride(1), k2.stride(0), k2.stride(1), *_vstr(dvo),
        h, ng, t, btd, scale * LOG2E, d, _pow2(d), dv, _pow2(dv), g, bm, bn, True, bool(major)), w, s)


def _bwd_plan(h, dv, d):
    """(heads per split, splits, the dK table's (key block, chunk rows, order)) of the backward under
    the current CONFIGS."""
    if _dk_mode(d, dv) == "lean":
        bm, bn, nt, _, _, order, _, split, _, _, _ = _config("lean", h, dv, d)
        hs = triton.cdiv(h, split)
        return hs, triton.cdiv(h, hs), (bn, bm * nt, order)
    bm, bn, split, chunk, _, _, order, _ = _config("dk", h, dv, d)
    hs = triton.cdiv(h, split)  # heads per split
    return hs, triton.cdiv(h, hs), (bn, chunk, order)


def _noise_forward(a, q2, k2, v, lam, scale, zero):
    """The noise stream's forward: a - lam N (a given) or N. zero: also return the backward's float32
    workspace, zeroed by the forward kernel. Returns (out, saved tensors, replay key, workspace)."""
    from .latent import _launch, _sharing

    combine = a is not None
    b, t, d = q2.shape
    h, dv = v.shape[1], v.shape[-1]
    if q2.stride(-1) != 1:
        q2 = q2.contiguous()
    if k2.stride(-1) != 1:
        k2 = k2.contiguous()
    if v.stride(-1) != 1:
        v = v.contiguous()
    dev = v.device
    if combine:
        lam32 = lam.detach()
        if lam32.dtype != torch.float32 or lam32.stride(0) != 1:
            lam32 = lam32.float().contiguous()
    else:
        lam32 = torch.zeros(1, device=dev)
    n = torch.empty(b, h, t, dv, device=dev, dtype=v.dtype)
    lse = torch.empty(b, t, device=dev, dtype=torch.float32)
    ws32 = torch.empty(2 * b * t * d + h, device=dev, dtype=torch.float32) if zero else lse
    if combine:
        if a.stride(-1) != 1:
            a = a.contiguous()
        out = torch.empty(b, h, t, dv, device=dev, dtype=a.dtype)
    else:
        a = out = n
    roots = (q2, k2, v, a, lam32, out, n, lse, ws32)
    key = (q2.shape, q2.stride(), k2.stride(), v.shape, v.stride(), a.stride(), q2.dtype, k2.dtype, v.dtype,
           a.dtype, dev, _align(q2), _align(k2), _align(v), _align(a), _align(lam32), scale, combine, zero,
           CONFIGS["fwd"], _sharing(roots))
    _launch(key, roots, _fwd_body, scale, combine, zero)
    return out, (q2, k2, v, lam32, n, lse), key, (ws32 if zero else None)


def _noise_backward(saved, key, scale, combine, dout, ws32):
    """The noise stream's backward: (dq2, dk2, dv, dlam). ws32: the zeroed float32 workspace from the
    forward (None: zeroed here)."""
    from .latent import _launch, _sharing

    q2, k2, v, lam32, n, lse = saved
    b, t, d = q2.shape
    h, dv = v.shape[1], v.shape[-1]
    if dout.stride(-1) != 1:
        dout = dout.contiguous()
    dev = v.device
    hs, split, tb = _bwd_plan(h, dv, d)
    tbl = _dk_table(t, *tb, dev)
    dn = torch.empty(b, h, t, dv, device=dev, dtype=v.dtype)
    delta = torch.empty(b, split, t, device=dev, dtype=torch.float32)
    btd = b * t * d
    if ws32 is None:
        ws32 = torch.zeros(2 * btd + h, device=dev, dtype=torch.float32)  # dQ2, dK2 (atomics), dlam
    dqk16 = torch.empty(2, b, t, d, device=dev, dtype=q2.dtype)  # written by the dV kernel (split)
    dvo = torch.empty(b, h, t, dv, device=dev, dtype=v.dtype)
    roots = (dout, q2, k2, v, lam32, n, lse, dn, delta, ws32, dqk16, dvo, tbl)
    bkey = (key, dout.stride(), _align(dout), _dk_mode(d, dv), GLUON_DK,
            tuple(GLUON_DK_CONFIG or ()), CONFIGS["dk"], CONFIGS["lean"], CONFIGS["dv"],
            dvo.stride(), _align(dvo), _sharing(roots))
    _launch(bkey, roots, _bwd_body, scale, combine, (hs, split))
    dlam = ws32[2 * btd:] if combine else None
    return dqk16[0], dqk16[1], dvo, dlam


class _NoiseOnce(torch.autograd.Function):
    """a (signal output or None), q2 [B, T, D], k2 [B, T, D], v [B, H, T, DV], lam [H] ->
    a - lam N (combine) or N."""

    @staticmethod
    def forward(ctx, a, q2, k2, v, lam, scale):
        zero = _zero_in_fwd(q2, v) and any(ctx.needs_input_grad)
        out, saved, key, ws32 = _noise_forward(a, q2, k2, v, lam, scale, zero)
        ctx.save_for_backward(*saved)
        ctx.scale, ctx.combine, ctx.key, ctx.ws32 = scale, a is not None, key, ws32
        return out

    @staticmethod
    def backward(ctx, dout):
        ws32, ctx.ws32 = ctx.ws32, None  # zeroed for ONE backward (a second one zeroes its own)
        dq2, dk2, dv, dlam = _noise_backward(ctx.saved_tensors, ctx.key, ctx.scale, ctx.combine, dout, ws32)
        return (dout if ctx.combine else None, dq2, dk2, dv, dlam, None)


# ------------------------------------------------------------------------------------------
# public functions

def _check_dims(q2, v):
    if q2.shape[-1] > 256 or v.shape[-1] > 256:
        raise ValueError(f"noise-once supports head dims up to 256; got q/k {q2.shape[-1]}, v {v.shape[-1]}")
    if v.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise ValueError(f"noise-once supports float16, bfloat16 and float32; got {v.dtype}")


def _squeeze_head(x, name):
    if x.dim() == 4:
        if x.shape[1] != 1:
            raise ValueError(f"{name} must have ONE head (the shared noise head); got shape {tuple(x.shape)}")
        return x.squeeze(1)  # a view whose backward is a view too (x[:, 0] would allocate and copy)
    return x


def shared_noise_attention(q2, k2, v, scale=None):
    """N_h = softmax(scale Q2 K2^T) V_h for every value head h, causal, the map computed once.
    q2, k2: [B, 1, T, D] (or [B, T, D]); v: [B, H, T, DV]. Returns [B, H, T, DV]."""
    q2, k2 = _squeeze_head(q2, "q2"), _squeeze_head(k2, "k2")
    _check_dims(q2, v)
    scale = q2.shape[-1] ** -0.5 if scale is None else float(scale)
    return _NoiseOnce.apply(None, q2, k2, v, None, scale)


def cmd_attention_noise_once(q1, k1, q2, k2, v, lam, scale1=None, scale2=None):
    """Causal CMD attention: softmax(s1 Q1 K1^T) V through SDPA, minus lam_h times the shared noise
    stream computed once for all heads (this module's kernels). q1, k1, v [B, H, T, *];
    q2, k2 [B, 1, T, D2]; lam broadcastable to [H]. Returns [B, H, T, DV]."""
    from ..attention import causal_attention
    from .reference import lam_per_head

    b, h, t, _ = q1.shape
    if k1.shape[1] != h or v.shape[1] != h or k1.shape[-2] != t:
        raise ValueError("noise-once CMD needs one key/value head per query head over the query positions")
    _check_dims(q2, v)
    scale1 = q1.shape[-1] ** -0.5 if scale1 is None else float(scale1)
    scale2 = q2.shape[-1] ** -0.5 if scale2 is None else float(scale2)
    lam = lam_per_head(lam, h, q1.device)
    a = causal_attention(q1, k1, v, scale=scale1)
    return _NoiseOnce.apply(a, _squeeze_head(q2, "q2"), _squeeze_head(k2, "k2"), v, lam, scale2)


def noise_once_reference(q2, k2, v, scale=None):
    """Plain PyTorch: the explicit float32 noise map, applied to every value head."""
    q2, k2 = _squeeze_head(q2, "q2").float(), _squeeze_head(k2, "k2").float()
    t, s = q2.shape[-2], k2.shape[-2]
    scale = q2.shape[-1] ** -0.5 if scale is None else scale
    mask = torch.ones(t, s, dtype=torch.bool, device=q2.device).tril(s - t)
    p = (q2 @ k2.transpose(-1, -2) * scale).masked_fill(~mask, float("-inf")).softmax(-1)
    return (p[:, None] @ v.float()).to(v.dtype)


__all__ = ["cmd_attention_noise_once", "shared_noise_attention", "noise_once_reference", "CONFIGS"]
