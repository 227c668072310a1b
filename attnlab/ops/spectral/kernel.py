"""Triton decode kernels for the spectral KV cache (one query token per sequence).

``spectral_decode(impl="auto")`` picks v2 for up to AUTO_V2_MAX_BLOCKS blocks per (b, h) and v3
above (the faster kernels in the session-4/5 H100 measurements, benchmarks/RESULTS.md); v2 and v3
share one launcher whose launches are replayed (~35 us of host time eagerly, against 70-130 for
v1's Triton launch). v3 launches by default (v2 on request, ``pdl``) as programmatic dependent
launches on sm_90+ (session 5b): each kernel starts with griddepcontrol.wait and then lets the next
kernel launch, so the merge kernel's launch overlaps the split kernel, and the next call's split
kernel overlaps the merge.

v3 (``_spectral_v3``, session 5): like v2 a program takes ``block_size / split`` tokens (of each
of ``blocks_per_program`` consecutive blocks, pipelined), cut into token slices, but the slices
are packed into the ROWS of the dots: row ``j*G + g`` is (slice j, query head g), the score dot's
left operand is block diagonal (``qb`` of slice j in column block j, against the slices' key
coefficients stacked along K), the aggregation dot's right operand is the slices' value
coefficients side by side (its off-diagonal blocks are discarded). With G = 4 the 16 rows of a
tensor-core dot carry 4 slices instead of 12 padding rows, so the softmax and its layout changes
do 4x less work (v1/v2: ``[G -> 16, tokens]``, 3/4 padding). Half the instructions per token of
v2 (sm_90 SASS); fastest at 16 blocks and more in the session-5 H100 sweep.

v2 (``_spectral_v2``): a program takes half a block (``split`` 2) or ``blocks_per_program`` whole
blocks; its tokens are cut into ``warp_slices`` slices that are the batch dimension of 3-D dots
(a warp each: ``s = qB3 @ C_K3^T`` [slice, G->16, tile], ``pc3 = p3 @ C_V3``), each slice with its own
online softmax (intra-warp reductions only), combined once per block, then ``o = pc @ B_V``. int8
coefficients -> fp16 by inline asm (PRMT/HSUB2), value scales applied to p, every load of a block
issued before its math inside a block loop Triton pipelines (one round of memory latency).
Partials merged by ``_merge_v2_kernel`` or in the same launch (two levels, ``fused_merge``). The
launcher replays the compiled launcher with new pointers from a shape's second call on.

v1 (``_spectral_split``, the session-2 kernel), two launches per decode step:

1. ``_spectral_split``, grid ``(B*Hk, n_block_programs + n_hot_programs)``. A block program owns
   ``blocks_per_program`` (default 1) consecutive compressed blocks of kv head h, for all G query
   heads of that kv head at once (GQA folded into the rows, K/V never repeated). A 32K context
   with blocks of 512 gives 64 programs per (b, h): 512 programs at B = 1, enough for 132 SMs.
   Per block, every load (basis, int8 coefficients, scales) is issued up front and the block is
   handled as a few wide dots instead of a chain of small dependent ones:

       qb  = q @ B_K^T                          [G, rk]   query in the block's key basis
       s   = (qb @ C_K^T) * s_K                 [G, bs]   one dot over all tokens of the block
       p   = exp2(s - m);  l = sum p            block-local softmax statistics
       pc  = p @ (C_V * s_V)                    [G, rv]   aggregation in coefficient space
       o   = pc @ B_V                           [G, dv]   projected by the block's own value basis

   (``block_tile`` < block size splits the token dimension into an unrolled online-softmax loop,
   to bound registers.) Hot programs do plain flash-decoding over a chunk of the exact tokens.
   Each program writes one partial (m, l, o) per query head, G rows only.
2. ``_spectral_merge``, grid ``(B*Hq,)``: log-sum-exp merge of a query head's partials, read in
   vector chunks (no scalar loop over splits).

Dots: fp32 inputs use IEEE fp32 dots (the interpreter tests compare with the reference to 1e-5).
For fp16/bf16 caches the score and aggregation dots run in fp16 (int8 coefficients are exact in
fp16; fp16 has the same 10-bit mantissa as tf32), the final basis projection in tf32 (its left
operand can exceed the fp16 range), the hot part in the cache dtype (as flash attention does).
Ranks and head dims are padded to powers of two >= 16 (masked loads), so any rank <= head dim works.
"""

from __future__ import annotations

import functools
import math
import os

import torch

try:
    import triton
    import triton.language as tl

    try:
        from triton.runtime.errors import OutOfResources
    except ImportError:  # pragma: no cover - other triton layouts
        from triton.runtime import OutOfResources

    HAS_TRITON = True
except ImportError:  # pragma: no cover - CPU users without triton
    HAS_TRITON = False
    HAS_GDC = False

from .reference import KERNEL_TILE, next_pow2
from ..launch_replay import hooks_set


def _p2(x: int) -> int:
    return max(16, next_pow2(x))


if HAS_TRITON:
    try:  # grid dependency control (programmatic dependent launch, sm_90+; used with triton 3.6 and 3.9)
        from triton.language.extra.cuda import gdc_launch_dependents as _gdc_launch_dependents
        from triton.language.extra.cuda import gdc_wait as _gdc_wait

        HAS_GDC = True
    except ImportError:  # pragma: no cover - older triton: no PDL
        HAS_GDC = False

        @triton.jit
        def _gdc_wait():
            pass

        @triton.jit
        def _gdc_launch_dependents():
            pass

    @triton.jit
    def _gdc_enter():
        """First thing of a kernel launched with ``launch_pdl``: wait until the kernels before it on
        the stream have completed and their writes are visible (griddepcontrol.wait; every load and
        store of this kernel comes after it, so reusing the partials' scratch stays ordered), then
        allow the next kernel, if launched with PDL too, to be scheduled now (its programs block in
        their own wait; its launch latency overlaps this kernel's work)."""
        _gdc_wait()
        _gdc_launch_dependents()

    @triton.jit
    def _hot_window(q, HKP, HVP, j0, hot_len, row0, offs_d, offs_dv, dmask, dvmask, qk_scale, m_i, l_i, acc,
                    HOT_PER_SPLIT: tl.constexpr, HT: tl.constexpr, D: tl.constexpr, DV: tl.constexpr,
                    LOWP: tl.constexpr, PREC: tl.constexpr):
        """One split of the exact hot window (tokens j0 .. j0 + HOT_PER_SPLIT of the (b, h) row that
        starts at row0): online softmax of q [GP, D] over its keys, folded into (m_i, l_i, acc) in
        the log2 domain. Shared by the v1 and v2 kernels."""
        offs_h = tl.arange(0, HT)
        j1 = tl.minimum(j0 + HOT_PER_SPLIT, hot_len)
        if LOWP:
            qh = q.to(HKP.dtype.element_ty)
        else:
            qh = q
        for j in range(j0, j1, HT):
            tokh = j + offs_h
            tmask = tokh < j1
            k = tl.load(HKP + (row0 + tokh)[:, None] * D + offs_d[None, :],
                        mask=tmask[:, None] & dmask[None, :], other=0.0)
            v = tl.load(HVP + (row0 + tokh)[:, None] * DV + offs_dv[None, :],
                        mask=tmask[:, None] & dvmask[None, :], other=0.0)
            if LOWP:
                sh = tl.dot(qh, tl.trans(k)) * qk_scale
            else:
                sh = tl.dot(qh, tl.trans(k.to(tl.float32)), input_precision=PREC) * qk_scale
            sh = tl.where(tmask[None, :], sh, float("-inf"))
            mh_new = tl.maximum(m_i, tl.max(sh, 1))
            ah = tl.exp2(m_i - mh_new)
            ph = tl.exp2(sh - mh_new[:, None])
            l_i = l_i * ah + tl.sum(ph, 1)
            if LOWP:
                acc = acc * ah[:, None] + tl.dot(ph.to(v.dtype), v)
            else:
                acc = acc * ah[:, None] + tl.dot(ph, v.to(tl.float32), input_precision=PREC)
            m_i = mh_new
        return m_i, l_i, acc

    @triton.jit(do_not_specialize=["n_blocks", "hot_len"])
    def _spectral_split(
        Q, CK, SK, BK, CV, SV, BV, HKP, HVP, PM, PL, PACC, CNT, O, MB, LB, PCB,
        n_blocks, nb_cap, hot_len, hot_cap, n_comp, n_splits, qk_scale,
        HKV: tl.constexpr, G: tl.constexpr, GP: tl.constexpr,
        D: tl.constexpr, DP: tl.constexpr, DV: tl.constexpr, DVP: tl.constexpr,
        RK: tl.constexpr, RKP: tl.constexpr, RV: tl.constexpr, RVP: tl.constexpr,
        BS: tl.constexpr, BT: tl.constexpr, BPP: tl.constexpr,
        HOT_PER_SPLIT: tl.constexpr, HT: tl.constexpr,
        QUANT: tl.constexpr, LOWP: tl.constexpr, PREC: tl.constexpr,
        FUSED: tl.constexpr, SCH: tl.constexpr, VMERGE: tl.constexpr,
    ):
        EXACT_K: tl.constexpr = (RK == RKP) and (D == DP)
        EXACT_V: tl.constexpr = (RV == RVP) and (DV == DVP)
        pid_bh = tl.program_id(0)
        pid_s = tl.program_id(1)

        offs_g = tl.arange(0, GP)
        offs_d = tl.arange(0, DP)
        offs_dv = tl.arange(0, DVP)
        gmask = offs_g < G
        dmask = offs_d < D
        dvmask = offs_dv < DV

        q_rows = pid_bh * G + offs_g
        q_ptr = Q + q_rows[:, None] * D + offs_d[None, :]
        if D == DP:
            q = tl.load(q_ptr, mask=gmask[:, None], other=0.0)
        else:
            q = tl.load(q_ptr, mask=gmask[:, None] & dmask[None, :], other=0.0)
        if not LOWP:
            q = q.to(tl.float32)
        # fp16/bf16: q stays in its dtype (exact dot operand); scores are scaled after the dot.
        # qk_scale includes log2(e): exp2 below

        m_i = tl.full([GP], -1.0e30, tl.float32)
        l_i = tl.zeros([GP], tl.float32)
        acc = tl.zeros([GP, DVP], tl.float32)

        if pid_s < n_comp:
            offs_rk = tl.arange(0, RKP)
            offs_rv = tl.arange(0, RVP)
            offs_t = tl.arange(0, BT)
            rkmask = offs_rk < RK
            rvmask = offs_rv < RV
            n0 = pid_s * BPP
            n1 = tl.minimum(n0 + BPP, n_blocks)
            for n in range(n0, n1):
                blk = pid_bh * nb_cap + n
                # every load of the block first: they are all in flight together
                bk_ptr = BK + blk * (RK * D) + offs_rk[:, None] * D + offs_d[None, :]
                bv_ptr = BV + blk * (RV * DV) + offs_rv[:, None] * DV + offs_dv[None, :]
                if EXACT_K:  # no padding: unmasked (vector) loads
                    bk = tl.load(bk_ptr)
                else:
                    bk = tl.load(bk_ptr, mask=rkmask[:, None] & dmask[None, :], other=0.0)
                if not VMERGE:
                    if EXACT_V:
                        bv = tl.load(bv_ptr)
                    else:
                        bv = tl.load(bv_ptr, mask=rvmask[:, None] & dvmask[None, :], other=0.0)
                else:  # one partial per block, in coefficient space: its own softmax statistics
                    m_i = tl.full([GP], -1.0e30, tl.float32)
                    l_i = tl.zeros([GP], tl.float32)
                if LOWP:
                    qb = (tl.dot(q, tl.trans(bk.to(q.dtype))) * qk_scale).to(tl.float16)  # [GP, RKP]
                else:
                    qb = tl.dot(q, tl.trans(bk.to(tl.float32)), input_precision=PREC) * qk_scale
                m_blk = m_i
                pc = tl.zeros([GP, RVP], tl.float32)
                for t0 in tl.static_range(0, BS, BT):
                    tok = blk * BS + t0 + offs_t
                    if RK == RKP:
                        ck = tl.load(CK + tok[:, None] * RK + offs_rk[None, :])
                    else:
                        ck = tl.load(CK + tok[:, None] * RK + offs_rk[None, :], mask=rkmask[None, :], other=0)
                    if RV == RVP:
                        cv = tl.load(CV + tok[:, None] * RV + offs_rv[None, :])
                    else:
                        cv = tl.load(CV + tok[:, None] * RV + offs_rv[None, :], mask=rvmask[None, :], other=0)
                    if QUANT:
                        sk = tl.load(SK + tok)
                        sv = tl.load(SV + tok)
                    if LOWP:
                        s = tl.dot(qb, tl.trans(ck.to(tl.float16)))  # int8 is exact in fp16
                    else:
                        s = tl.dot(qb, tl.trans(ck.to(tl.float32)), input_precision=PREC)  # [GP, BT]
                    if QUANT:
                        s = s * sk[None, :]
                    m_new = tl.maximum(m_i, tl.max(s, 1))
                    alpha = tl.exp2(m_i - m_new)
                    p = tl.exp2(s - m_new[:, None])
                    l_i = l_i * alpha + tl.sum(p, 1)
                    cvf = cv.to(tl.float32)
                    if QUANT:
                        cvf = cvf * sv[:, None]
                    if LOWP:
                        pc = pc * alpha[:, None] + tl.dot(p.to(tl.float16), cvf.to(tl.float16))
                    else:
                        pc = pc * alpha[:, None] + tl.dot(p, cvf, input_precision=PREC)
                    m_i = m_new
                if VMERGE:
                    # (m, l, pc [G, rv]) of this block; the merge applies B_V
                    prow = (pid_bh * n_blocks + n) * G + offs_g
                    tl.store(MB + prow, m_i, mask=gmask)
                    tl.store(LB + prow, l_i, mask=gmask)
                    tl.store(PCB + prow[:, None] * RV + offs_rv[None, :], pc, mask=gmask[:, None] & rvmask[None, :])
                else:
                    # the block's value basis; acc was kept relative to the max before this block
                    acc = acc * tl.exp2(m_blk - m_i)[:, None] + tl.dot(pc, bv.to(tl.float32), input_precision=PREC)
        else:
            m_i, l_i, acc = _hot_window(q, HKP, HVP, (pid_s - n_comp) * HOT_PER_SPLIT, hot_len, pid_bh * hot_cap,
                                        offs_d, offs_dv, dmask, dvmask, qk_scale, m_i, l_i, acc,
                                        HOT_PER_SPLIT, HT, D, DV, LOWP, PREC)

        if VMERGE:  # hot partials only: [B*Hk, n_hot, G]
            if pid_s >= n_comp:
                part = (pid_bh * (n_splits - n_comp) + pid_s - n_comp) * G + offs_g
                tl.store(PM + part, m_i, mask=gmask)
                tl.store(PL + part, l_i, mask=gmask)
                tl.store(PACC + part[:, None] * DV + offs_dv[None, :], acc, mask=gmask[:, None] & dvmask[None, :])
        else:
            part = (pid_bh * n_splits + pid_s) * G + offs_g  # partial rows [B*Hk, n_splits, G]
            tl.store(PM + part, m_i, mask=gmask)
            tl.store(PL + part, l_i, mask=gmask)
            tl.store(PACC + part[:, None] * DV + offs_dv[None, :], acc, mask=gmask[:, None] & dvmask[None, :])
        if FUSED:
            # the last program of this (b, h) to finish merges all its partials: one launch
            tl.debug_barrier()  # every thread's partial stores precede the release below
            done = tl.atomic_add(CNT + pid_bh, 1, sem="acq_rel", scope="gpu")
            if done == n_splits - 1:
                _merge_group(PM, PL, PACC, O, pid_bh, n_splits, G, GP, DV, DVP, SCH)
                tl.atomic_xchg(CNT + pid_bh, 0, sem="relaxed", scope="gpu")  # ready for the next call

    @triton.jit
    def _merge_row(PM, PL, PACC, O, bh, g, out_row, n_splits,
                   G: tl.constexpr, DV: tl.constexpr, DVP: tl.constexpr, SCH: tl.constexpr):
        """Log-sum-exp merge of the n_splits partials of query head g of (b, h) into O[out_row]."""
        offs_s = tl.arange(0, SCH)
        offs_dv = tl.arange(0, DVP)
        dvmask = offs_dv < DV
        m_run = tl.max(tl.full([SCH], -1.0e30, tl.float32), 0)
        l_run = tl.sum(tl.zeros([SCH], tl.float32), 0)
        acc = tl.zeros([DVP], tl.float32)
        for s0 in range(0, n_splits, SCH):
            sp = s0 + offs_s
            smask = sp < n_splits
            rows = (bh * n_splits + sp) * G + g
            # .cg: read from L2, never a stale L1 line (other programs wrote these)
            mc = tl.load(PM + rows, mask=smask, other=-1.0e30, cache_modifier=".cg")
            lc = tl.load(PL + rows, mask=smask, other=0.0, cache_modifier=".cg")
            ac = tl.load(PACC + rows[:, None] * DV + offs_dv[None, :], mask=smask[:, None] & dvmask[None, :],
                         other=0.0, cache_modifier=".cg")
            m_new = tl.maximum(m_run, tl.max(mc, 0))
            w = tl.exp2(mc - m_new)
            alpha = tl.exp2(m_run - m_new)
            l_run = l_run * alpha + tl.sum(w * lc, 0)
            acc = acc * alpha + tl.sum(w[:, None] * ac, 0)
            m_run = m_new
        o = acc / l_run
        tl.store(O + out_row * DV + offs_dv, o.to(O.dtype.element_ty), mask=dvmask)

    @triton.jit
    def _merge_group(PM, PL, PACC, O, bh, n_splits, G: tl.constexpr, GP: tl.constexpr,
                     DV: tl.constexpr, DVP: tl.constexpr, SCH: tl.constexpr):
        """Log-sum-exp merge of the n_splits partials of all G query heads of (b, h) at once
        (a chunk of splits is one contiguous [SCH*G, DV] tile) into O rows bh*G .. bh*G+G-1."""
        offs_s = tl.arange(0, SCH)
        offs_g = tl.arange(0, GP)
        offs_dv = tl.arange(0, DVP)
        gmask = offs_g < G
        dvmask = offs_dv < DV
        m_run = tl.full([GP], -1.0e30, tl.float32)
        l_run = tl.zeros([GP], tl.float32)
        acc = tl.zeros([GP, DVP], tl.float32)
        for s0 in range(0, n_splits, SCH):
            sp = s0 + offs_s
            m2 = (sp < n_splits)[:, None] & gmask[None, :]
            rows = (bh * n_splits + sp)[:, None] * G + offs_g[None, :]  # [SCH, GP]
            mc = tl.load(PM + rows, mask=m2, other=-1.0e30, cache_modifier=".cg")
            lc = tl.load(PL + rows, mask=m2, other=0.0, cache_modifier=".cg")
            ac = tl.load(PACC + rows[:, :, None] * DV + offs_dv[None, None, :],
                         mask=m2[:, :, None] & dvmask[None, None, :], other=0.0, cache_modifier=".cg")
            m_new = tl.maximum(m_run, tl.max(mc, 0))
            w = tl.exp2(mc - m_new[None, :])
            alpha = tl.exp2(m_run - m_new)
            l_run = l_run * alpha + tl.sum(w * lc, 0)
            acc = acc * alpha[:, None] + tl.sum(w[:, :, None] * ac, 0)
            m_run = m_new
        o = acc / l_run[:, None]
        orow = bh * G + offs_g
        tl.store(O + orow[:, None] * DV + offs_dv[None, :], o.to(O.dtype.element_ty),
                 mask=gmask[:, None] & dvmask[None, :])

    @triton.jit(do_not_specialize=["n_blocks", "n_hot"])
    def _spectral_merge_proj(
        MB, LB, PCB, BV, PM, PL, PACC, O, n_blocks, nb_cap, n_hot,
        G: tl.constexpr, GP: tl.constexpr, RV: tl.constexpr, RVP: tl.constexpr,
        DV: tl.constexpr, DVB: tl.constexpr, NBK: tl.constexpr, NBC: tl.constexpr, PREC: tl.constexpr,
    ):
        """Merge for value_projection="merge": per-block partials (m, l, pc [G, rv]) in coefficient
        space and hot partials (m, l, o [G, dv]). Program (b*Hk + h, dv chunk):

            M   = max over all partials;  w_n = exp2(m_n - M)
            out = sum_n (w_n * pc_n) @ B_V[n]  +  sum_j w_j * o_j      (one K-loop over NBK blocks
            L   = sum_n w_n * l_n + sum_j w_j * l_j                      at a time: K = NBK * rv)
        """
        pid_bh = tl.program_id(0)
        pid_n = tl.program_id(1)
        offs_g = tl.arange(0, GP)
        gmask = offs_g < G
        offs_dv = pid_n * DVB + tl.arange(0, DVB)
        dvmask = offs_dv < DV
        # pass 1: the maximum
        m_run = tl.full([GP], -1.0e30, tl.float32)
        offs_c = tl.arange(0, NBC)
        for n0 in range(0, n_blocks, NBC):
            nn = n0 + offs_c
            msk = (nn < n_blocks)[:, None] & gmask[None, :]
            mb = tl.load(MB + (pid_bh * n_blocks + nn)[:, None] * G + offs_g[None, :], mask=msk, other=-1.0e30)
            m_run = tl.maximum(m_run, tl.max(mb, 0))
        for j in range(0, n_hot):
            mh = tl.load(PM + (pid_bh * n_hot + j) * G + offs_g, mask=gmask, other=-1.0e30)
            m_run = tl.maximum(m_run, mh)
        # pass 2: weighted sums; the value bases of NBK blocks per dot
        offs_k = tl.arange(0, NBK * RVP)
        kn = offs_k // RVP
        kr = offs_k % RVP
        l_run = tl.zeros([GP], tl.float32)
        acc = tl.zeros([GP, DVB], tl.float32)
        for n0 in range(0, n_blocks, NBK):
            nb = n0 + kn
            kmask = (nb < n_blocks) & (kr < RV)
            rows = (pid_bh * n_blocks + nb)[None, :] * G + offs_g[:, None]  # [GP, K]
            amask = gmask[:, None] & kmask[None, :]
            pcv = tl.load(PCB + rows * RV + kr[None, :], mask=amask, other=0.0)
            mw = tl.load(MB + rows, mask=amask, other=-1.0e30)
            w = tl.exp2(mw - m_run[:, None])
            lw = tl.load(LB + rows, mask=amask & (kr == 0)[None, :], other=0.0)
            l_run += tl.sum(lw * w, 1)
            bvt = tl.load(BV + ((pid_bh * nb_cap + nb) * RV + kr)[:, None] * DV + offs_dv[None, :],
                          mask=kmask[:, None] & dvmask[None, :], other=0.0)
            acc += tl.dot(pcv * w, bvt.to(tl.float32), input_precision=PREC)
        for j in range(0, n_hot):
            hrow = (pid_bh * n_hot + j) * G + offs_g
            mh = tl.load(PM + hrow, mask=gmask, other=-1.0e30)
            wh = tl.exp2(mh - m_run)
            l_run += wh * tl.load(PL + hrow, mask=gmask, other=0.0)
            acc += wh[:, None] * tl.load(PACC + hrow[:, None] * DV + offs_dv[None, :],
                                         mask=gmask[:, None] & dvmask[None, :], other=0.0)
        o = acc / l_run[:, None]
        orow = pid_bh * G + offs_g
        tl.store(O + orow[:, None] * DV + offs_dv[None, :], o.to(O.dtype.element_ty),
                 mask=gmask[:, None] & dvmask[None, :])

    @triton.jit(do_not_specialize=["n_splits"])
    def _spectral_merge(
        PM, PL, PACC, O, n_splits,
        G: tl.constexpr, DV: tl.constexpr, DVP: tl.constexpr, SCH: tl.constexpr,
    ):
        pid = tl.program_id(0)  # one query head: row (b*Hk + h)*G + g of the output
        _merge_row(PM, PL, PACC, O, pid // G, pid % G, pid, n_splits, G, DV, DVP, SCH)



# ---------------------------------------------------------------------------------------------
# v2: warp-sliced block programs, fast int8 conversion, one launch (see the module docstring)
# ---------------------------------------------------------------------------------------------
if HAS_TRITON:

    @triton.jit
    def _i8_to_f16(x, FASTCVT: tl.constexpr):
        """int8 -> fp16 (exact). FASTCVT: 4 values per 5 ALU instructions (bytes biased by 128 into
        the mantissa of 1024.0, then 1152 subtracted) instead of one quarter-rate I2F per value."""
        if FASTCVT:
            return tl.inline_asm_elementwise(
                asm="""{
                .reg .b32 t, c;
                xor.b32 t, $2, 0x80808080;
                prmt.b32 $0, t, 0x64646464, 0x4140;
                prmt.b32 $1, t, 0x64646464, 0x4342;
                mov.b32 c, 0x64806480;
                sub.f16x2 $0, $0, c;
                sub.f16x2 $1, $1, c;
                }""",
                constraints="=r,=r,r", args=[x], dtype=tl.float16, is_pure=True, pack=4)
        else:
            return x.to(tl.float16)

    @triton.jit
    def _merge_rows(PM, PL, PACC, src0, count, OM, OL, OACC, dst0, dv0, FINAL: tl.constexpr, G: tl.constexpr,
                    GQ: tl.constexpr, DV: tl.constexpr, DVB: tl.constexpr, SCH: tl.constexpr):
        """Log-sum-exp merge of `count` partials (m, l, o [G, DV], o unnormalized) stored at rows
        (src0 + i) * GQ + g, i < count, columns dv0 .. dv0+DVB. FINAL: o / l is written to OACC
        rows dst0 + g (the output, its dtype); else the merged partial (m, l, o) goes to rows
        dst0 * GQ + g of OM / OL / OACC. One pass, SCH partials ([SCH, GQ, DVB] tiles) per step:
        count <= SCH is a single round of loads. .cg loads: other programs wrote the partials."""
        offs_s = tl.arange(0, SCH)
        offs_g = tl.arange(0, GQ)
        offs_dv = dv0 + tl.arange(0, DVB)
        gmask = offs_g < G
        dvmask = offs_dv < DV
        m_run = tl.full([GQ], -1.0e30, tl.float32)
        l_run = tl.zeros([GQ], tl.float32)
        acc = tl.zeros([GQ, DVB], tl.float32)
        for s0 in range(0, count, SCH):
            sp = s0 + offs_s
            m2 = (sp < count)[:, None] & gmask[None, :]
            rows = (src0 + sp)[:, None] * GQ + offs_g[None, :]
            mc = tl.load(PM + rows, mask=m2, other=-1.0e30, cache_modifier=".cg")
            lc = tl.load(PL + rows, mask=m2, other=0.0, cache_modifier=".cg")
            oc = tl.load(PACC + rows[:, :, None] * DV + offs_dv[None, None, :],
                         mask=m2[:, :, None] & dvmask[None, None, :], other=0.0, cache_modifier=".cg")
            m_new = tl.maximum(m_run, tl.max(mc, 0))
            alpha = tl.exp2(m_run - m_new)
            w = tl.exp2(mc - m_new[None, :])
            l_run = l_run * alpha + tl.sum(w * lc, 0)
            acc = acc * alpha[:, None] + tl.sum(w[:, :, None] * oc, 0)
            m_run = m_new
        if FINAL:
            o = acc / l_run[:, None]
            tl.store(OACC + (dst0 + offs_g)[:, None] * DV + offs_dv[None, :], o.to(OACC.dtype.element_ty),
                     mask=gmask[:, None] & dvmask[None, :])
        else:
            drow = dst0 * GQ + offs_g
            tl.store(OM + drow, m_run, mask=gmask)
            tl.store(OL + drow, l_run, mask=gmask)
            tl.store(OACC + drow[:, None] * DV + offs_dv[None, :], acc, mask=gmask[:, None] & dvmask[None, :])

    @triton.jit
    def _slices_load(tok, CK, SK, CV, SV, offs_rk, offs_rv, rkmask, rvmask, RK: tl.constexpr, RKP: tl.constexpr,
                     RV: tl.constexpr, RVP: tl.constexpr, QUANT: tl.constexpr):
        """The coefficient tiles [NW, TW, r] (and scales [NW, TW]) of tokens tok [NW, TW]."""
        ck_ptr = CK + tok[:, :, None] * RK + offs_rk[None, None, :]
        cv_ptr = CV + tok[:, :, None] * RV + offs_rv[None, None, :]
        if RK == RKP:
            ck = tl.load(ck_ptr)
        else:
            ck = tl.load(ck_ptr, mask=rkmask[None, None, :], other=0)
        if RV == RVP:
            cv = tl.load(cv_ptr)
        else:
            cv = tl.load(cv_ptr, mask=rvmask[None, None, :], other=0)
        if QUANT:
            sk = tl.load(SK + tok)
            sv = tl.load(SV + tok)
        else:
            sk = tl.zeros(tok.shape, tl.float32)
            sv = sk
        return ck, cv, sk, sv

    @triton.jit
    def _slices_compute(ck, cv, sk, sv, qb3, m3, l3, pc3, QUANT: tl.constexpr, LOWP: tl.constexpr,
                        PREC: tl.constexpr, FASTCVT: tl.constexpr):
        """One step of the token slices (TW tokens each, a warp each): scores, online softmax per
        slice, aggregation in coefficient space."""
        if LOWP:
            if QUANT:
                ckf = _i8_to_f16(ck, FASTCVT)
                cvf = _i8_to_f16(cv, FASTCVT)
            else:
                ckf = ck.to(tl.float16)
                cvf = cv.to(tl.float16)
            s = tl.dot(qb3, tl.permute(ckf, (0, 2, 1)))  # [NW, GP, TW]
        else:
            cvf = cv.to(tl.float32)
            s = tl.dot(qb3, tl.permute(ck.to(tl.float32), (0, 2, 1)), input_precision=PREC)
        if QUANT:
            s = s * sk[:, None, :]
        m_new = tl.maximum(m3, tl.max(s, 2))
        alpha = tl.exp2(m3 - m_new)
        p = tl.exp2(s - m_new[:, :, None])
        l3 = l3 * alpha + tl.sum(p, 2)
        if QUANT:
            p = p * sv[:, None, :]  # the value scales, on p: [G, TW] products instead of [TW, rv]
        if LOWP:
            pc3 = pc3 * alpha[:, :, None] + tl.dot(p.to(tl.float16), cvf)
        else:
            pc3 = pc3 * alpha[:, :, None] + tl.dot(p, cvf, input_precision=PREC)
        return m_new, l3, pc3

    @triton.jit(do_not_specialize=["n_blocks", "hot_len"])
    def _spectral_v2(
        Q, CK, SK, BK, CV, SV, BV, HKP, HVP, PM, PL, PACC, CNT, O, PM2, PL2, PACC2,
        n_blocks, nb_cap, hot_len, hot_cap, n_comp, n_splits, n_groups, qk_scale,
        G: tl.constexpr, GP: tl.constexpr, GQ: tl.constexpr,
        D: tl.constexpr, DP: tl.constexpr, DV: tl.constexpr, DVP: tl.constexpr,
        RK: tl.constexpr, RKP: tl.constexpr, RV: tl.constexpr, RVP: tl.constexpr,
        BS: tl.constexpr, SPLIT: tl.constexpr, BPP: tl.constexpr, NW: tl.constexpr, TW: tl.constexpr,
        HOT_PER_SPLIT: tl.constexpr, HT: tl.constexpr,
        QUANT: tl.constexpr, LOWP: tl.constexpr, PREC: tl.constexpr,
        FUSED: tl.constexpr, GRP: tl.constexpr, SCH: tl.constexpr, FASTCVT: tl.constexpr, I64: tl.constexpr,
        PDL: tl.constexpr = False,
    ):
        if PDL:  # programmatic dependent launch: wait for the previous kernel, let the merge launch early
            _gdc_enter()
        pid_bh = tl.program_id(0)
        pid_s = tl.program_id(1)
        offs_g = tl.arange(0, GP)
        offs_d = tl.arange(0, DP)
        offs_dv = tl.arange(0, DVP)
        gmask = offs_g < G
        dmask = offs_d < D
        dvmask = offs_dv < DV
        q_ptr = Q + (pid_bh * G + offs_g)[:, None] * D + offs_d[None, :]
        if D == DP:
            q = tl.load(q_ptr, mask=gmask[:, None], other=0.0)
        else:
            q = tl.load(q_ptr, mask=gmask[:, None] & dmask[None, :], other=0.0)
        if not LOWP:
            q = q.to(tl.float32)

        if pid_s < n_comp:
            # BPP consecutive compressed blocks (or, SPLIT > 1, token part `part` of one block); the
            # tokens are cut into NW slices (the batch dimension of the dots: a warp each) walked
            # TW tokens at a time, each slice with its own online softmax, combined once per block.
            TPW: tl.constexpr = BS // SPLIT // NW
            offs_rk = tl.arange(0, RKP)
            offs_rv = tl.arange(0, RVP)
            offs_w = tl.arange(0, NW)
            offs_t = tl.arange(0, TW)
            rkmask = offs_rk < RK
            rvmask = offs_rv < RV
            m_i = tl.full([GP], -1.0e30, tl.float32)
            l_i = tl.zeros([GP], tl.float32)
            acc = tl.zeros([GP, DVP], tl.float32)
            n0 = (pid_s // SPLIT) * BPP
            n1 = tl.minimum(n0 + BPP, n_blocks)
            part = pid_s % SPLIT
            # a loop over the blocks even for one: Triton's pipeliner then issues all of a block's
            # loads together (cp.async, num_stages >= 2) and the next block's during this one's math
            for n in range(n0, n1):
                blk = pid_bh * nb_cap + n
                if I64:  # buffers of 2**31 elements or more: 64-bit offsets
                    blk = blk.to(tl.int64)
                tok0 = blk * BS + part * (BS // SPLIT) + offs_w[:, None] * TPW + offs_t[None, :]  # [NW, TW]
                # every global load first (layout changes go through shared memory behind barriers,
                # and loads after a barrier wait for it)
                ck, cv, sk, sv = _slices_load(tok0, CK, SK, CV, SV, offs_rk, offs_rv, rkmask, rvmask, RK, RKP, RV,
                                              RVP, QUANT)
                bk_ptr = BK + blk * (RK * D) + offs_rk[:, None] * D + offs_d[None, :]
                bv_ptr = BV + blk * (RV * DV) + offs_rv[:, None] * DV + offs_dv[None, :]
                if RK == RKP and D == DP:
                    bk = tl.load(bk_ptr)
                else:
                    bk = tl.load(bk_ptr, mask=rkmask[:, None] & dmask[None, :], other=0.0)
                if RV == RVP and DV == DVP:
                    bv = tl.load(bv_ptr)
                else:
                    bv = tl.load(bv_ptr, mask=rvmask[:, None] & dvmask[None, :], other=0.0)
                if LOWP:
                    qb = (tl.dot(q, tl.trans(bk.to(q.dtype))) * qk_scale).to(tl.float16)  # [GP, RKP]
                else:
                    qb = tl.dot(q, tl.trans(bk.to(tl.float32)), input_precision=PREC) * qk_scale
                qb3 = tl.broadcast_to(qb[None, :, :], (NW, GP, RKP))
                m3 = tl.full([NW, GP], -1.0e30, tl.float32)
                l3 = tl.zeros([NW, GP], tl.float32)
                pc3 = tl.zeros([NW, GP, RVP], tl.float32)
                if TPW == TW:  # one step
                    m3, l3, pc3 = _slices_compute(ck, cv, sk, sv, qb3, m3, l3, pc3, QUANT, LOWP, PREC, FASTCVT)
                else:  # the next step's tiles are loaded before this step's math (registers, two deep)
                    for t0 in range(TW, TPW + TW, TW):
                        nt = tl.minimum(t0, TPW - TW)  # the last step reloads its own tiles (cached)
                        ck2, cv2, sk2, sv2 = _slices_load(tok0 + nt, CK, SK, CV, SV, offs_rk, offs_rv, rkmask,
                                                          rvmask, RK, RKP, RV, RVP, QUANT)
                        m3, l3, pc3 = _slices_compute(ck, cv, sk, sv, qb3, m3, l3, pc3, QUANT, LOWP, PREC, FASTCVT)
                        ck, cv, sk, sv = ck2, cv2, sk2, sv2
                m_b = tl.max(m3, 0)
                wsl = tl.exp2(m3 - m_b[None, :])
                l_b = tl.sum(l3 * wsl, 0)
                pc = tl.sum(pc3 * wsl[:, :, None], 0)  # [GP, RVP]
                o_b = tl.dot(pc, bv.to(tl.float32), input_precision=PREC)  # [GP, DVP]
                m_new = tl.maximum(m_i, m_b)
                wa = tl.exp2(m_i - m_new)
                wb = tl.exp2(m_b - m_new)
                acc = acc * wa[:, None] + o_b * wb[:, None]
                l_i = l_i * wa + l_b * wb
                m_i = m_new
        else:
            m_i = tl.full([GP], -1.0e30, tl.float32)
            l_i = tl.zeros([GP], tl.float32)
            acc = tl.zeros([GP, DVP], tl.float32)
            m_i, l_i, acc = _hot_window(q, HKP, HVP, (pid_s - n_comp) * HOT_PER_SPLIT, hot_len, pid_bh * hot_cap,
                                        offs_d, offs_dv, dmask, dvmask, qk_scale, m_i, l_i, acc,
                                        HOT_PER_SPLIT, HT, D, DV, LOWP, PREC)

        part_row = (pid_bh * n_splits + pid_s) * GQ + offs_g  # partial rows [B*Hk, n_splits, GQ]
        tl.store(PM + part_row, m_i, mask=gmask)
        tl.store(PL + part_row, l_i, mask=gmask)
        tl.store(PACC + part_row[:, None] * DV + offs_dv[None, :], acc, mask=gmask[:, None] & dvmask[None, :])
        if FUSED:
            _fused_tail(PM, PL, PACC, PM2, PL2, PACC2, O, CNT, pid_bh, pid_s, n_splits, n_groups, G, GQ, DV, DVP,
                        GRP, SCH)

    @triton.jit
    def _fused_tail(PM, PL, PACC, PM2, PL2, PACC2, O, CNT, pid_bh, pid_s, n_splits, n_groups, G: tl.constexpr,
                    GQ: tl.constexpr, DV: tl.constexpr, DVP: tl.constexpr, GRP: tl.constexpr, SCH: tl.constexpr):
        """The fused merge of v2/v3, after a program stored its partial: the last program of each group
        of GRP splits to finish merges the group's partials into a group partial, the last group of
        this (b, h) merges those into the output (two short rounds of loads at the tail instead of
        n_splits / SCH). The counters are left at zero for the next call."""
        grp = pid_s // GRP
        gsize = tl.minimum(GRP, n_splits - grp * GRP)
        cbase = CNT + pid_bh * (n_groups + 1)
        tl.debug_barrier()  # every thread's partial stores precede the release below
        done = tl.atomic_add(cbase + grp, 1, sem="acq_rel", scope="gpu")
        if done == gsize - 1:
            _merge_rows(PM, PL, PACC, pid_bh * n_splits + grp * GRP, gsize, PM2, PL2, PACC2,
                        pid_bh * n_groups + grp, 0, False, G, GQ, DV, DVP, GRP)
            tl.atomic_xchg(cbase + grp, 0, sem="relaxed", scope="gpu")  # ready for the next call
            tl.debug_barrier()
            done2 = tl.atomic_add(cbase + n_groups, 1, sem="acq_rel", scope="gpu")
            if done2 == n_groups - 1:
                _merge_rows(PM2, PL2, PACC2, pid_bh * n_groups, n_groups, PM2, PL2, O, pid_bh * G, 0, True,
                            G, GQ, DV, DVP, SCH)
                tl.atomic_xchg(cbase + n_groups, 0, sem="relaxed", scope="gpu")

    @triton.jit(do_not_specialize=["n_splits"])
    def _merge_v2_kernel(PM, PL, PACC, O, n_splits, G: tl.constexpr, GQ: tl.constexpr, DV: tl.constexpr,
                         DVB: tl.constexpr, SCH: tl.constexpr, PDL: tl.constexpr = False):
        if PDL:  # launched early (while the split kernel runs): wait until its partials are written
            _gdc_enter()
        bh = tl.program_id(0)
        _merge_rows(PM, PL, PACC, bh * n_splits, n_splits, PM, PL, O, bh * G, tl.program_id(1) * DVB, True,
                    G, GQ, DV, DVB, SCH)


# ---------------------------------------------------------------------------------------------
# v3: token slices packed into the rows of the dots (no padded query rows)
# ---------------------------------------------------------------------------------------------
if HAS_TRITON:

    @triton.jit
    def _rows_of_slices(x, diag, NW: tl.constexpr, GQ: tl.constexpr, GP: tl.constexpr, TW: tl.constexpr):
        """x [NW, TW] (one row per token slice) -> [GP, TW], row j*GQ + g = x[j] (rows past NW*GQ: 0)."""
        if NW * GQ == GP:
            out = tl.reshape(tl.broadcast_to(x[:, None, :], (NW, GQ, TW)), (GP, TW))
        else:
            out = tl.sum(tl.where(diag, x[None, :, :], 0.0), 1)
        return out

    @triton.jit(do_not_specialize=["n_blocks", "hot_len"])
    def _spectral_v3(
        Q, CK, SK, BK, CV, SV, BV, HKP, HVP, PM, PL, PACC, CNT, O, PM2, PL2, PACC2,
        n_blocks, nb_cap, hot_len, hot_cap, n_comp, n_splits, n_groups, qk_scale,
        G: tl.constexpr, GP: tl.constexpr, GQ: tl.constexpr,
        D: tl.constexpr, DP: tl.constexpr, DV: tl.constexpr, DVP: tl.constexpr,
        RK: tl.constexpr, RKP: tl.constexpr, RV: tl.constexpr, RVP: tl.constexpr,
        BS: tl.constexpr, SPLIT: tl.constexpr, BPP: tl.constexpr, NW: tl.constexpr, TW: tl.constexpr,
        HOT_PER_SPLIT: tl.constexpr, HT: tl.constexpr,
        QUANT: tl.constexpr, LOWP: tl.constexpr, PREC: tl.constexpr,
        FUSED: tl.constexpr, GRP: tl.constexpr, SCH: tl.constexpr, FASTCVT: tl.constexpr, I64: tl.constexpr,
        PDL: tl.constexpr = False,
    ):
        """v3 block program: BS // SPLIT tokens of each of BPP consecutive blocks, cut into NW slices
        of TW tokens. The GP rows of every dot are (slice j, query head g) pairs, row j*GQ + g, so
        no row is padding when G < 16 (v1/v2 pad the G = 4 query heads of a kv head to 16 rows,
        and their softmax work is 3/4 padding):

            qb   = q_rep @ B_K^T                                  [GP, rk]  (q repeated per slice)
            s    = blockdiag_j(qb) @ [C_K(slice 0)^T; ...; C_K(slice NW-1)^T]      [GP, TW]
            p    = exp2(s - m_row)  (each row its own online softmax across the blocks)
            pcf  = (p * s_V) @ [C_V(slice 0) | ... | C_V(slice NW-1)]             [GP, NW*rv]
            pc   = the diagonal blocks of pcf (row j*GQ+g, columns j*rv ..)       [GP, rv]
            acc += pc @ B_V                                                       [GP, dv]

        (the zero blocks cost tensor-core work only), then the NW rows of each head are merged
        once per program. Same arguments and partial layout as v2 (same launcher, replay, merges).
        PDL: launched as a programmatic dependent launch (see ``_gdc_enter``)."""
        if PDL:
            _gdc_enter()
        pid_bh = tl.program_id(0)
        pid_s = tl.program_id(1)
        offs_d = tl.arange(0, DP)
        offs_dv = tl.arange(0, DVP)
        dmask = offs_d < D
        dvmask = offs_dv < DV
        if pid_s < n_comp:
            TPP: tl.constexpr = BS // SPLIT
            offs_r = tl.arange(0, GP)
            jr = offs_r // GQ  # the slice of each row
            gr = offs_r % GQ  # the query head of each row
            rvalid = (jr < NW) & (gr < G)
            offs_j = tl.arange(0, NW)
            offs_t = tl.arange(0, TW)
            offs_rk = tl.arange(0, RKP)
            offs_rv = tl.arange(0, RVP)
            rkmask = offs_rk < RK
            rvmask = offs_rv < RV
            q = tl.load(Q + (pid_bh * G + gr)[:, None] * D + offs_d[None, :], mask=rvalid[:, None] & dmask[None, :],
                        other=0.0)
            if not LOWP:
                q = q.to(tl.float32)
            m_i = tl.full([GP], -1.0e30, tl.float32)
            l_i = tl.zeros([GP], tl.float32)
            acc = tl.zeros([GP, DVP], tl.float32)
            n0 = (pid_s // SPLIT) * BPP
            n1 = tl.minimum(n0 + BPP, n_blocks)
            part = pid_s % SPLIT
            diag = jr[:, None, None] == offs_j[None, :, None]  # [GP, NW, 1]: row block j of slice j
            for n in range(n0, n1):
                blk = pid_bh * nb_cap + n
                if I64:
                    blk = blk.to(tl.int64)
                tok = blk * BS + part * TPP + offs_j[:, None] * TW + offs_t[None, :]  # [NW, TW]
                # every load of the block first
                ck_ptr = CK + tok[:, None, :] * RK + offs_rk[None, :, None]  # C_K^T per slice [NW, RKP, TW]
                cv_ptr = CV + tok[:, :, None] * RV + offs_rv[None, None, :]  # [NW, TW, RVP]
                bk_ptr = BK + blk * (RK * D) + offs_rk[:, None] * D + offs_d[None, :]
                bv_ptr = BV + blk * (RV * DV) + offs_rv[:, None] * DV + offs_dv[None, :]
                if RK == RKP:
                    ck = tl.load(ck_ptr)
                else:
                    ck = tl.load(ck_ptr, mask=rkmask[None, :, None], other=0)
                if RV == RVP:
                    cv = tl.load(cv_ptr)
                else:
                    cv = tl.load(cv_ptr, mask=rvmask[None, None, :], other=0)
                if QUANT:
                    sk = tl.load(SK + tok)
                    sv = tl.load(SV + tok)
                if RK == RKP and D == DP:
                    bk = tl.load(bk_ptr)
                else:
                    bk = tl.load(bk_ptr, mask=rkmask[:, None] & dmask[None, :], other=0.0)
                if RV == RVP and DV == DVP:
                    bv = tl.load(bv_ptr)
                else:
                    bv = tl.load(bv_ptr, mask=rvmask[:, None] & dvmask[None, :], other=0.0)
                if LOWP:
                    qb = tl.dot(q, tl.trans(bk.to(q.dtype))) * qk_scale  # [GP, RKP]
                    if QUANT:
                        ckf = _i8_to_f16(ck, FASTCVT)
                        cvf = _i8_to_f16(cv, FASTCVT)
                    else:
                        ckf = ck.to(tl.float16)
                        cvf = cv.to(tl.float16)
                else:
                    qb = tl.dot(q, tl.trans(bk.to(tl.float32)), input_precision=PREC) * qk_scale
                    ckf = ck.to(tl.float32)
                    cvf = cv.to(tl.float32)
                # block-diagonal query operand [GP, NW*RKP]: row (j, g) holds qb[g] in column block j
                qd = tl.reshape(tl.where(diag, qb[:, None, :], 0.0), (GP, NW * RKP))
                ckc = tl.reshape(ckf, (NW * RKP, TW))
                if LOWP:
                    s = tl.dot(qd.to(tl.float16), ckc)  # [GP, TW]
                else:
                    s = tl.dot(qd, ckc, input_precision=PREC)
                if QUANT:  # per-token scales of row (j, g): the scales of slice j
                    s = s * _rows_of_slices(sk, diag, NW, GQ, GP, TW)
                m_new = tl.maximum(m_i, tl.max(s, 1))
                alpha = tl.exp2(m_i - m_new)
                p = tl.exp2(s - m_new[:, None])
                l_i = l_i * alpha + tl.sum(p, 1)
                if QUANT:
                    p = p * _rows_of_slices(sv, diag, NW, GQ, GP, TW)
                cvc = tl.reshape(tl.permute(cvf, (1, 0, 2)), (TW, NW * RVP))  # [C_V(slice 0) | ...]
                if LOWP:
                    pcf = tl.dot(p.to(tl.float16), cvc)  # [GP, NW*RVP]
                else:
                    pcf = tl.dot(p, cvc, input_precision=PREC)
                pc = tl.sum(tl.where(diag, tl.reshape(pcf, (GP, NW, RVP)), 0.0), 1)  # [GP, RVP]
                acc = acc * alpha[:, None] + tl.dot(pc, bv.to(tl.float32), input_precision=PREC)
                m_i = m_new
            # merge the NW slice rows of each query head
            m_i = tl.where(rvalid, m_i, -1.0e30)
            m3 = tl.reshape(m_i, (GP // GQ, GQ))
            m_h = tl.max(m3, 0)
            w3 = tl.exp2(m3 - m_h[None, :])
            l_h = tl.sum(tl.reshape(tl.where(rvalid, l_i, 0.0), (GP // GQ, GQ)) * w3, 0)
            acc3 = tl.reshape(tl.where(rvalid[:, None], acc, 0.0), (GP // GQ, GQ, DVP))
            acc_h = tl.sum(acc3 * w3[:, :, None], 0)  # [GQ, DVP]
            offs_q = tl.arange(0, GQ)
            qmask = offs_q < G
            prow = (pid_bh * n_splits + pid_s) * GQ + offs_q
            tl.store(PM + prow, m_h, mask=qmask)
            tl.store(PL + prow, l_h, mask=qmask)
            tl.store(PACC + prow[:, None] * DV + offs_dv[None, :], acc_h, mask=qmask[:, None] & dvmask[None, :])
        else:
            offs_g = tl.arange(0, GP)
            gmask = offs_g < G
            qh = tl.load(Q + (pid_bh * G + offs_g)[:, None] * D + offs_d[None, :], mask=gmask[:, None] & dmask[None, :],
                         other=0.0)
            if not LOWP:
                qh = qh.to(tl.float32)
            hm = tl.full([GP], -1.0e30, tl.float32)
            hl = tl.zeros([GP], tl.float32)
            hacc = tl.zeros([GP, DVP], tl.float32)
            hm, hl, hacc = _hot_window(qh, HKP, HVP, (pid_s - n_comp) * HOT_PER_SPLIT, hot_len, pid_bh * hot_cap,
                                          offs_d, offs_dv, dmask, dvmask, qk_scale, hm, hl, hacc,
                                          HOT_PER_SPLIT, HT, D, DV, LOWP, PREC)
            hrow = (pid_bh * n_splits + pid_s) * GQ + offs_g
            tl.store(PM + hrow, hm, mask=gmask)
            tl.store(PL + hrow, hl, mask=gmask)
            tl.store(PACC + hrow[:, None] * DV + offs_dv[None, :], hacc, mask=gmask[:, None] & dvmask[None, :])
        if FUSED:
            _fused_tail(PM, PL, PACC, PM2, PL2, PACC2, O, CNT, pid_bh, pid_s, n_splits, n_groups, G, GQ, DV, DVP,
                        GRP, SCH)


@functools.lru_cache(maxsize=None)
def _num_sms_cuda(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def _num_sms(device: torch.device) -> int:
    if device.type == "cuda":
        return _num_sms_cuda(device.index if device.index is not None else torch.cuda.current_device())
    return 2


_SCRATCH: dict = {}
_FALLBACK: dict = {}  # launch key -> index of the first candidate configuration that fitted


def _launch_fitting(launch, args, first, fallbacks):
    """``launch(*args, *config)`` with the first configuration that fits the GPU's shared memory.

    While nothing has needed a fallback, ``first`` goes straight out (no host work on the decode
    path); otherwise ``fallbacks()`` gives (candidates, starting with first; key) and the search
    starts at the candidate that fitted last time for that key (large ranks on smaller GPUs)."""
    start = 0
    if not _FALLBACK:
        try:
            return launch(*args, *first)
        except OutOfResources:
            start = 1
    cands, key = fallbacks()
    for i in range(min(max(start, _FALLBACK.get(key, 0)), len(cands) - 1), len(cands)):
        try:
            launch(*args, *cands[i])
        except OutOfResources:
            if i == len(cands) - 1:
                raise
            continue
        _FALLBACK[key] = i
        return


def _scratch(device: torch.device, n_work: int, n_cnt: int):
    """Per (device, stream): a float32 workspace for the partials, grown on demand, and an int32
    counter per (b, h) for the fused merge, kept at zero between calls (the merging program
    resets it). Reused across calls: the partials are written and merged within one call,
    ordered on the stream."""
    key = (device, torch.cuda.current_stream(device).cuda_stream) if device.type == "cuda" else device
    ent = _SCRATCH.get(key)
    if ent is None or ent[0].numel() < n_work or ent[1].numel() < n_cnt:
        old = ent
        work = torch.empty(max(n_work, 1 << 16, 0 if old is None else old[0].numel()), device=device,
                           dtype=torch.float32)
        cnt = torch.zeros(max(n_cnt, 256, 0 if old is None else old[1].numel()), device=device, dtype=torch.int32)
        ent = _SCRATCH[key] = (work, cnt)
        _PLANS.clear()  # plans hold views of the old buffers
        _V2_PLANS.clear()
    return ent


def default_config(n_bh: int, n_blocks: int, block_size: int, n_sms: int, elem_size: int = 2) -> dict:
    """v1 launch parameters: the fastest configurations of the H100 sweep at T = 32K
    (benchmarks/RESULTS.md, bf16, d = 128, block 512, ranks 16 and 32).

    Few blocks in all (B = 1: 8 (b, h) x 64 blocks): one block per program, 256-token dots,
    8 warps, separate merge kernel. Many blocks (>= 8 per SM; B = 8 at 16K+): 4 consecutive
    blocks per program, software-pipelined (num_stages 2: the next block's loads overlap this
    block's math), 128-token dots, 4 warps, fused merge (the only configuration of this shape
    measured). fp32 caches: 64-token dots, no pipelining (fits in shared memory; not timed)."""
    if elem_size >= 4:
        cfg = dict(block_tile=min(block_size, 64), blocks_per_program=1, num_warps=4, num_stages=1,
                   fused_merge=False)
    elif n_bh * max(n_blocks, 1) >= 8 * n_sms:
        bt = min(block_size, 128)
        cfg = dict(block_tile=bt, blocks_per_program=4, num_warps=4, num_stages=2, fused_merge=True)
    else:
        bt = min(block_size, 256)
        cfg = dict(block_tile=bt, blocks_per_program=1, num_warps=8 if bt >= 256 else 4, num_stages=None,
                   fused_merge=False)
    while block_size % cfg["block_tile"]:
        cfg["block_tile"] //= 2
    return cfg


def _spectral_decode_v1(q: torch.Tensor, ck, sk, bk, cv, sv, bv, n_blocks: int, hot_k: torch.Tensor,
                        hot_v: torch.Tensor, hot_len: int, scale: float | None = None, *,
                        block_tile: int | None = None, blocks_per_program: int | None = None,
                    hot_per_split: int = 256, fused_merge: bool | None = None, value_proj: str = "block",
                    num_warps: int | None = None, num_stages: int | None = None,
                    maxnreg: int | None = None) -> torch.Tensor:
    """Decode attention of q [B, Hq, 1, d] over a spectral cache's buffers.

    ck [B, Hk, NBcap, bs, rk] int8 (or float when sk is None), sk [B, Hk, NBcap, bs] float32,
    bk [B, Hk, NBcap, rk, d]; cv/sv/bv likewise for values; the first n_blocks blocks are used.
    hot_k/hot_v [B, Hk, hot_cap, d] hold hot_len exact tokens after the blocks.
    Launch parameters left None come from ``default_config``: block_tile (tokens per dot inside
    a block), blocks_per_program (consecutive blocks per program), num_warps, num_stages.
    fused_merge: the last program of each (b, h) merges the partials (one launch instead of two).
    On an H100 it cost ~0.1 ms with one block per program (65 partials per (b, h)), so the
    default uses it only with 4 blocks per program (None: from ``default_config``).
    value_proj: "block" (each program applies its blocks' value bases, partials [G, dv]) or
    "merge" (one partial per block in coefficient space [G, rv]; the merge kernel applies all
    value bases in one K-loop: less work and fewer registers in the block programs; tested
    under the interpreter and compiled for sm_90, not yet timed on a GPU).
    If the configuration needs more shared memory than the GPU has (large ranks), smaller ones
    are tried (no pipelining, then 64- and 16-token tiles) and the one that fits is remembered.
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
    if not (ck.is_contiguous() and bk.is_contiguous() and cv.is_contiguous() and bv.is_contiguous()
            and hot_k.is_contiguous() and hot_v.is_contiguous()):
        raise ValueError("spectral_decode: ck, bk, cv, bv, hot_k and hot_v must be contiguous")
    if bs % KERNEL_TILE:
        raise ValueError(f"block_size {bs} must be a multiple of the kernel tile {KERNEL_TILE}")
    dev = q.device
    n_bh = b * hk
    cfg = default_config(n_bh, n_blocks, bs, _num_sms(dev), q.element_size())
    bt = block_tile or cfg["block_tile"]
    bpp = blocks_per_program or cfg["blocks_per_program"]
    if num_warps is None:
        num_warps = cfg["num_warps"] if bt == cfg["block_tile"] else (8 if bt >= 256 else 4)
    if num_stages is None and bpp == cfg["blocks_per_program"]:
        num_stages = cfg["num_stages"]
    if bs % bt or bt % KERNEL_TILE:
        raise ValueError(f"block_tile {bt} must divide block_size {bs} and be a multiple of {KERNEL_TILE}")
    scale = d**-0.5 if scale is None else scale
    if not q.is_contiguous():
        q = q.contiguous()
    if value_proj not in ("block", "merge"):
        raise ValueError(f"value_proj must be 'block' or 'merge'; got {value_proj!r}")
    vmerge = value_proj == "merge"
    if fused_merge is None:
        fused_merge = cfg["fused_merge"] and not vmerge and bpp == cfg["blocks_per_program"]
    if vmerge and fused_merge:
        raise ValueError("fused_merge needs value_proj='block'")
    lowp = q.dtype != torch.float32
    out = torch.empty(b, hq, 1, dv, device=dev, dtype=q.dtype)
    first = (bt, bpp, num_warps, num_stages, fused_merge)
    args = (q, ck, sk, bk, cv, sv, bv, n_blocks, hot_k, hot_v, hot_len, scale, out, hot_per_split, vmerge, lowp,
            maxnreg)
    def fallbacks():
        cands = [first]
        bt2 = min(bt, 64)
        while bs % bt2:
            bt2 //= 2
        for c in ((bt, bpp, num_warps, 1, fused_merge), (bt2, 1, 4, 1, False), (16, 1, 4, 1, False)):
            if c not in cands:
                cands.append(c)
        return cands, (dev, q.dtype, ck.dtype, bk.dtype, hot_k.dtype, bs, rk, rv, d, dv, g, vmerge, maxnreg, first)

    _launch_fitting(_launch, args, first, fallbacks)
    return out


_PLANS: dict = {}  # everything a launch needs besides the tensors, per shape and configuration


def _launch(q, ck, sk, bk, cv, sv, bv, n_blocks, hot_k, hot_v, hot_len, scale, out, hot_per_split, vmerge,
            lowp, maxnreg, bt, bpp, num_warps, num_stages, fused_merge):
    dev = q.device
    skey = (dev, torch.cuda.current_stream(dev).cuda_stream) if dev.type == "cuda" else dev
    quant = sk is not None
    key = (skey, tuple(q.shape), q.dtype, tuple(ck.shape), ck.dtype, bk.dtype, cv.shape[-1], bv.shape[-1],
           bv.dtype, hot_k.shape[2], hot_k.dtype, quant, n_blocks, hot_len, hot_per_split, vmerge, lowp, maxnreg,
           bt, bpp, num_warps, num_stages, fused_merge)
    plan = _PLANS.get(key)
    if plan is None:
        plan = _make_plan(skey, q, ck, cv, bv, hot_k, n_blocks, hot_len, hot_per_split, vmerge, lowp, maxnreg,
                          bt, bpp, num_warps, num_stages, fused_merge, quant)
        if len(_PLANS) > 4096:
            _PLANS.clear()
        _PLANS[key] = plan
    grid, (pm, pl, pacc, cnt, mb, lb, pcb), (nb_cap, hot_cap, n_comp, n_splits), consts, merge = plan
    _spectral_split[grid](
        q, ck, sk if quant else pm, bk, cv, sv if quant else pm, bv, hot_k, hot_v, pm, pl, pacc, cnt, out, mb, lb, pcb,
        n_blocks, nb_cap, hot_len, hot_cap, n_comp, n_splits, scale * 1.4426950408889634, **consts)
    if merge is not None:
        merge(out, bv)


def _make_plan(skey, q, ck, cv, bv, hot_k, n_blocks, hot_len, hot_per_split, vmerge, lowp, maxnreg, bt, bpp,
               num_warps, num_stages, fused_merge, quant):
    b, hq, _, d = q.shape
    _, hk, nb_cap, bs, rk = ck.shape
    rv, dv = cv.shape[-1], bv.shape[-1]
    hot_cap = hot_k.shape[2]
    g = hq // hk
    n_bh = b * hk
    dev = q.device
    n_comp = -(-n_blocks // bpp) if n_blocks > 0 else 0
    n_hot = -(-hot_len // hot_per_split)
    n_splits = max(1, n_comp + n_hot)
    n_part = n_bh * (n_hot if vmerge else n_splits) * g
    n_bpart = n_bh * n_blocks * g if vmerge else 0
    work, cnt = _scratch(dev, n_part * (2 + dv) + n_bpart * (2 + rv), n_bh)
    pm, pl, pacc = work[:n_part], work[n_part:2 * n_part], work[2 * n_part:n_part * (2 + dv)]
    o2 = n_part * (2 + dv)
    mb, lb, pcb = work[o2:o2 + n_bpart], work[o2 + n_bpart:o2 + 2 * n_bpart], work[o2 + 2 * n_bpart:]
    sch = min(64, max(16, next_pow2(n_splits)))
    dvp = _p2(dv)
    consts = dict(
        HKV=hk, G=g, GP=_p2(g), D=d, DP=_p2(d), DV=dv, DVP=dvp, RK=rk, RKP=_p2(rk), RV=rv, RVP=_p2(rv),
        BS=bs, BT=bt, BPP=bpp, HOT_PER_SPLIT=hot_per_split, HT=64, QUANT=quant,
        LOWP=lowp and (quant or ck.dtype == torch.float16), PREC="ieee" if not lowp else "tf32",
        FUSED=fused_merge, SCH=16 if fused_merge else sch, VMERGE=vmerge, num_warps=num_warps)
    if num_stages is not None:
        consts["num_stages"] = num_stages
    if maxnreg is not None:
        consts["maxnreg"] = maxnreg
    prec = "ieee" if not lowp else "tf32"
    if vmerge:
        rvp = _p2(rv)
        dvb = min(32, dvp)
        mgrid = (n_bh, triton.cdiv(dv, dvb))
        mconsts = dict(G=g, GP=_p2(g), RV=rv, RVP=rvp, DV=dv, DVB=dvb, NBK=max(1, 128 // rvp), NBC=64, PREC=prec,
                       num_warps=4)

        def merge(out, bv):
            _spectral_merge_proj[mgrid](mb, lb, pcb, bv, pm, pl, pacc, out, n_blocks, nb_cap, n_hot, **mconsts)
    elif not fused_merge:
        mgrid = (b * hq,)

        def merge(out, bv):
            _spectral_merge[mgrid](pm, pl, pacc, out, n_splits, G=g, DV=dv, DVP=dvp, SCH=sch, num_warps=4)
    else:
        merge = None
    return (n_bh, n_splits), (pm, pl, pacc, cnt, mb, lb, pcb), (nb_cap, hot_cap, n_comp, n_splits), consts, merge


# ---------------------------------------------------------------------------------------------
# v2 launcher
# ---------------------------------------------------------------------------------------------
_V1_ONLY = ("block_tile", "value_proj")
AUTO_V2_MAX_BLOCKS = 16  # impl="auto": v2 up to this many compressed blocks per (b, h), else v3

try:
    from triton import knobs as _knobs
    from triton.runtime.driver import driver as _driver
except ImportError:  # pragma: no cover - triton without knobs (older than 3.4) or no triton: no replay
    _knobs = _driver = None

_FAST_LAUNCH = os.environ.get("ATTNLAB_FAST_LAUNCH", "1") != "0" and _knobs is not None
_V2_PLANS: dict = {}
LAUNCH_STATS = {"replayed": 0, "jit": 0, "replay_unavailable": 0}  # v2 launches by path (diagnostics)


_ENV_PDL = os.environ.get("ATTNLAB_SPECTRAL_PDL")  # "1" / "0": the v2/v3 default of ``pdl``, else per kernel
# v3's default ``pdl`` (v2: off, not timed with it): on since session 5b, where it took 0.6-0.9 us off a
# B = 1 call at 32K in a graph of 16 calls (H100; B = 8 unchanged; benchmarks/RESULTS.md "Session 5b")
V3_PDL = True


def _default_pdl(kernel_default: bool) -> bool:
    return kernel_default if _ENV_PDL not in ("0", "1") else _ENV_PDL == "1"


@functools.lru_cache(maxsize=None)
def _sm_major(index: int) -> int:
    return torch.cuda.get_device_capability(index)[0]


def _pdl_ok(dev, want) -> bool:
    """Programmatic dependent launch where asked for and possible: CUDA, compiled (not the
    interpreter), sm_90+, a triton with grid dependency control; else ordinary launches."""
    if not want or not HAS_GDC or dev.type != "cuda" or _interpreting():
        return False
    return _sm_major(dev.index if dev.index is not None else torch.cuda.current_device()) >= 9


def _replay_ok(dev) -> bool:
    return dev.type == "cuda" and not _interpreting()


def _current_stream(dev) -> int:
    return _driver.active.get_current_stream(dev.index if dev.index is not None else torch.cuda.current_device())


def _hooks_active() -> bool:
    """A launch hook (profiler) is set: launch through Triton (the check shared with latent and DSALT)."""
    return hooks_set()


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def default_config_v2(n_bh: int, n_blocks: int, block_size: int, n_sms: int, elem_size: int = 2) -> dict:
    """v2 launch parameters (H100 sweep of session 4: see benchmarks/RESULTS.md).

    split: programs per compressed block (each takes block_size / split tokens); warp_slices:
    token slices per program (the batch dimension of its dots, one warp each); slice_tile: tokens
    per slice and step; fused_merge: the
    partials are merged in the same launch (two levels: groups of merge_group splits, then the
    groups), else by a second launch."""
    if elem_size >= 4:  # fp32 caches: IEEE fp32 dots, smaller tiles (GPU-tested, not timed)
        cfg = dict(split=1, warp_slices=4, slice_tile=32, num_warps=4, num_stages=1, fused_merge=True)
    else:
        # the best v2 configuration of the session-4 H100 sweep at 4K-32K, B = 1 and 8, ranks 16/32
        # (benchmarks/RESULTS.md): half a block per program (4 warps, a 64-token slice each), all of
        # a block's loads in one round (pipelined block loop), separate merge launch
        cfg = dict(split=2 if block_size >= 128 else 1, warp_slices=4, slice_tile=64, num_warps=4, num_stages=2,
                   fused_merge=False)
    cfg.setdefault("blocks_per_program", 1)
    cfg.update(merge_group=8, pdl=_default_pdl(False))
    return cfg


def _fit_v2(bs: int, split: int, nw: int, tw: int):
    """Shrink (split, warp_slices, slice_tile) to fit a block of bs tokens (bs a multiple of 16)."""
    while split > 1 and (bs % split or (bs // split) % 16):
        split //= 2
    tpp = bs // split
    while nw > 1 and tpp % (nw * 16):
        nw //= 2
    tw = min(tw, tpp // nw)
    while (tpp // nw) % tw:
        tw //= 2
    return split, nw, max(tw, 16)


def spectral_decode(q: torch.Tensor, ck, sk, bk, cv, sv, bv, n_blocks: int, hot_k: torch.Tensor,
                    hot_v: torch.Tensor, hot_len: int, scale: float | None = None, *, impl: str = "auto",
                    split: int | None = None, warp_slices: int | None = None, slice_tile: int | None = None,
                    blocks_per_program: int | None = None, hot_per_split: int = 256,
                    fused_merge: bool | None = None, fast_cvt: bool | None = None,
                    merge_group: int | None = None, num_warps: int | None = None,
                    num_stages: int | None = None, maxnreg: int | None = None, pdl: bool | None = None,
                    **v1_options) -> torch.Tensor:
    """Decode attention of q [B, Hq, 1, d] over a spectral cache's buffers.

    ck [B, Hk, NBcap, bs, rk] int8 (or float when sk is None), sk [B, Hk, NBcap, bs] float32,
    bk [B, Hk, NBcap, rk, d]; cv/sv/bv likewise for values; the first n_blocks blocks are used.
    hot_k/hot_v [B, Hk, hot_cap, d] hold hot_len exact tokens after the blocks.
    Returns [B, Hq, 1, dv] in q's dtype.

    impl="auto" (default): v2 for up to AUTO_V2_MAX_BLOCKS blocks per (b, h), v3 above (the faster
    kernels in the session-4/5 H100 measurements); options of one kernel (v1's block_tile,
    value_proj; v2's warp_slices, slice_tile) select that kernel.
    impl="v3": launch parameters left None come from ``default_config_v3``: split,
    blocks_per_program (with split > 1: that part of each of them), num_warps, num_stages,
    fused_merge, merge_group, fast_cvt, maxnreg, pdl.
    pdl (v2/v3): programmatic dependent launch (sm_90+, CUDA, compiled; else ignored): the kernel
    and the merge kernel are launched with ``launch_pdl`` and start with griddepcontrol.wait, so a
    kernel's launch overlaps the previous one's work (merge after split, the next call's split after
    the merge) while every load and store still follows the previous kernel. Default: v3 on, v2 off;
    the environment variable ATTNLAB_SPECTRAL_PDL=1/0 sets both.
    impl="v2": launch parameters left None come from ``default_config_v2``: split (programs per
    block), warp_slices, slice_tile, blocks_per_program (split 1 only), num_warps, num_stages,
    fused_merge (True: the partials are merged in the same launch), merge_group, fast_cvt (int8 ->
    fp16 by bit manipulation; default on CUDA), maxnreg.
    impl="v1": the session-2 kernel (``_spectral_decode_v1``), which takes block_tile,
    blocks_per_program, value_proj, maxnreg besides the shared options.
    """
    if impl == "auto":
        # the faster kernel of the H100 measurements (benchmarks/RESULTS.md, sessions 4 and 5): v2 up
        # to AUTO_V2_MAX_BLOCKS blocks per (b, h), v3 above (graph-captured or eager: both go through
        # the same replayed launcher); options of one kernel select it
        if v1_options:
            impl = "v1"
        elif warp_slices or slice_tile:
            impl = "v2"
        elif n_blocks <= AUTO_V2_MAX_BLOCKS:
            impl = "v2"
        else:
            impl = "v3"
    if impl == "v1":
        return _spectral_decode_v1(q, ck, sk, bk, cv, sv, bv, n_blocks, hot_k, hot_v, hot_len, scale,
                                   blocks_per_program=blocks_per_program, hot_per_split=hot_per_split,
                                   fused_merge=fused_merge, num_warps=num_warps, num_stages=num_stages,
                                   maxnreg=maxnreg, **v1_options)
    if impl not in ("v2", "v3"):
        raise ValueError(f"impl must be 'auto', 'v1', 'v2' or 'v3'; got {impl!r}")
    if v1_options:
        bad = sorted(set(v1_options) - set(_V1_ONLY))
        if bad:
            raise TypeError(f"spectral_decode: unexpected option(s) {', '.join(bad)}")
        raise ValueError(f"option(s) {', '.join(sorted(v1_options))} belong to impl='v1'")
    if impl == "v3":
        return _spectral_decode_v3(q, ck, sk, bk, cv, sv, bv, n_blocks, hot_k, hot_v, hot_len, scale, split=split,
                                   blocks_per_program=blocks_per_program, hot_per_split=hot_per_split,
                                   fused_merge=fused_merge, fast_cvt=fast_cvt, merge_group=merge_group,
                                   num_warps=num_warps, num_stages=num_stages, maxnreg=maxnreg,
                                   warp_slices=warp_slices, slice_tile=slice_tile, pdl=pdl)
    q, (b, hq, d, bs) = _checked_inputs(q, ck, sk, bk, cv, sv, bv, hot_k, hot_v)
    dev = q.device
    cfg = default_config_v2(b * ck.shape[1], n_blocks, bs, _num_sms(dev), q.element_size())
    sp, nw, tw = _fit_v2(bs, split or cfg["split"], warp_slices or cfg["warp_slices"], slice_tile or cfg["slice_tile"])
    first = (sp, nw, tw, num_warps or cfg["num_warps"], num_stages or cfg["num_stages"],
             cfg["fused_merge"] if fused_merge is None else bool(fused_merge),
             (dev.type == "cuda" and not _interpreting()) if fast_cvt is None else bool(fast_cvt),
             merge_group or cfg["merge_group"], 1 if sp > 1 else (blocks_per_program or cfg["blocks_per_program"]), maxnreg,
             _pdl_ok(dev, cfg["pdl"] if pdl is None else pdl))
    scale = d**-0.5 if scale is None else scale
    out = torch.empty(b, hq, 1, bv.shape[-1], device=dev, dtype=q.dtype)
    args = (q, ck, sk, bk, cv, sv, bv, n_blocks, hot_k, hot_v, hot_len, scale, out, hot_per_split)
    def fallbacks():
        cands = [first]
        for c in ((sp, nw, min(tw, 32), first[3], 1, *first[5:]), (sp, nw, 16, first[3], 1, *first[5:])):
            if c not in cands:
                cands.append(c)
        return cands, ("v2", dev, q.dtype, ck.dtype, bk.dtype, hot_k.dtype, bs, ck.shape[-1], cv.shape[-1], d,
                       bv.shape[-1], hq // ck.shape[1], first)

    _launch_fitting(_launch_v2, args, first, fallbacks)
    return out


def _checked_inputs(q, ck, sk, bk, cv, sv, bv, hot_k, hot_v):
    """The v2/v3 entry checks; returns (q made contiguous, (batch, query heads, head dim, block size))."""
    if not HAS_TRITON:
        raise RuntimeError("the spectral decode kernel needs triton (pip install triton)")
    b, hq, t, d = q.shape
    if t != 1:
        raise ValueError(f"spectral_decode takes one query token; got {t}")
    bs = ck.shape[3]
    if bs % KERNEL_TILE:
        raise ValueError(f"block_size {bs} must be a multiple of the kernel tile {KERNEL_TILE}")
    for name, x in (("ck", ck), ("sk", sk), ("bk", bk), ("cv", cv), ("sv", sv), ("bv", bv), ("hot_k", hot_k),
                    ("hot_v", hot_v)):
        if x is not None and not x.is_contiguous():
            raise ValueError(f"spectral_decode: {name} must be contiguous")
    if not q.is_contiguous():
        q = q.contiguous()
    return q, (b, hq, d, bs)


def default_config_v3(n_bh: int, n_blocks: int, block_size: int, n_sms: int, elem_size: int = 2) -> dict:
    """v3 launch parameters: split (programs per block group, block_size / split tokens of each
    block), blocks_per_program (consecutive blocks per program, pipelined), num_warps, num_stages,
    fused_merge, merge_group, pdl (programmatic dependent launch: ``V3_PDL``)."""
    if elem_size >= 4:
        cfg = dict(split=4 if block_size >= 256 else 1, num_warps=4, num_stages=1, fused_merge=False)
    else:
        # session-5 H100 sweep at 32K (benchmarks/RESULTS.md), fastest at B = 1 and 8, ranks 16 and 32:
        # half a block per program, 4 warps, the blocks of a program pipelined (num_stages 2), up to 4
        # blocks per program while that leaves >= one program per SM, separate merge launch
        sp = 2 if block_size >= 128 else 1
        per_sm = n_bh * max(n_blocks, 1) * sp // max(n_sms, 1)
        bpp = 1
        while bpp < 4 and bpp * 2 <= per_sm:
            bpp *= 2
        cfg = dict(split=sp, blocks_per_program=bpp, num_warps=4, num_stages=2, fused_merge=False)
    cfg.setdefault("blocks_per_program", 1)
    cfg.update(merge_group=8, pdl=_default_pdl(V3_PDL))
    return cfg


def _spectral_decode_v3(q, ck, sk, bk, cv, sv, bv, n_blocks, hot_k, hot_v, hot_len, scale, *, split=None,
                        blocks_per_program=None, hot_per_split=256, fused_merge=None, fast_cvt=None,
                        merge_group=None, num_warps=None, num_stages=None, maxnreg=None, warp_slices=None,
                        slice_tile=None, pdl=None):
    """The v3 kernel (``_spectral_v3``) through v2's launcher (plans, replay, merges)."""
    if warp_slices or slice_tile:
        raise ValueError("warp_slices / slice_tile belong to impl='v2'")
    q, (b, hq, d, bs) = _checked_inputs(q, ck, sk, bk, cv, sv, bv, hot_k, hot_v)
    dev = q.device
    cfg = default_config_v3(b * ck.shape[1], n_blocks, bs, _num_sms(dev), q.element_size())
    sp = split or cfg["split"]
    while sp > 1 and (bs % sp or (bs // sp) % 16):
        sp //= 2
    bpp = blocks_per_program or cfg["blocks_per_program"]  # with split > 1: that part of bpp blocks
    g = hq // ck.shape[1]
    gq, gp = next_pow2(g), _p2(g)
    tpp = bs // sp
    nsl = max(1, min(gp // gq, tpp // 16))  # token slices packed into the dot rows
    while tpp % (nsl * 16):
        nsl //= 2
    first = (sp, nsl, tpp // nsl, num_warps or cfg["num_warps"], num_stages or cfg["num_stages"],
             cfg["fused_merge"] if fused_merge is None else bool(fused_merge),
             (dev.type == "cuda" and not _interpreting()) if fast_cvt is None else bool(fast_cvt),
             merge_group or cfg["merge_group"], bpp, maxnreg, _pdl_ok(dev, cfg["pdl"] if pdl is None else pdl))
    scale = d**-0.5 if scale is None else scale
    out = torch.empty(b, hq, 1, bv.shape[-1], device=dev, dtype=q.dtype)
    args = (q, ck, sk, bk, cv, sv, bv, n_blocks, hot_k, hot_v, hot_len, scale, out, hot_per_split)

    def fallbacks():  # large ranks: no pipelining, then smaller programs (less shared memory per step)
        cands = [first, (*first[:4], 1, *first[5:8], 1, *first[9:])]
        sp2 = sp
        while sp2 * 2 <= bs // 16 and sp2 < 8 * sp:
            sp2 *= 2
            t2 = bs // sp2
            n2 = max(1, min(gp // gq, t2 // 16))
            while t2 % (n2 * 16):
                n2 //= 2
            cands.append((sp2, n2, t2 // n2, first[3], 1, *first[5:8], 1, *first[9:]))
        cands = list(dict.fromkeys(cands))
        return cands, ("v3", dev, q.dtype, ck.dtype, bk.dtype, hot_k.dtype, bs, ck.shape[-1], cv.shape[-1], d,
                       bv.shape[-1], hq // ck.shape[1], first)

    _launch_fitting(_launch_v3, args, first, fallbacks)
    return out


def _launch_v3(*args):
    return _launch_v2(*args, kernel="v3")


def _launch_v2(q, ck, sk, bk, cv, sv, bv, n_blocks, hot_k, hot_v, hot_len, scale, out, hot_per_split,
               sp, nw, tw, num_warps, num_stages, fused, fast, grp, bpp, maxnreg, pdl=False, kernel="v2"):
    global _FAST_LAUNCH
    dev = q.device
    cuda = dev.type == "cuda"
    replay = _FAST_LAUNCH and _replay_ok(dev)
    if replay:
        stream = _current_stream(dev)
        skey = (dev, stream)
    else:
        skey = (dev, torch.cuda.current_stream(dev).cuda_stream) if cuda else dev
    n_hot = -(-hot_len // hot_per_split)
    quant = sk is not None
    tensors = (q, ck, sk, bk, cv, sv, bv, hot_k, hot_v)
    key = (skey, q.shape, q.dtype, ck.shape, ck.dtype, bk.shape, bk.dtype, cv.shape, bv.shape, bv.dtype, hot_k.shape,
           hot_k.dtype, hot_v.shape, quant, n_blocks, n_hot, hot_per_split, sp, nw, tw, num_warps, num_stages, fused,
           fast, grp, bpp, maxnreg, pdl, kernel, tuple(x is None or x.data_ptr() % 16 == 0 for x in tensors))
    plan = _V2_PLANS.get(key)
    if plan is not None and plan[0] is not None and not _hooks_active():  # replay: compiled launchers, new pointers
        try:
            (run, fn, meta, g0, g1, tpl), merge = plan[0]
            a = list(tpl)
            a[0], a[1], a[3], a[4], a[6], a[7], a[8], a[13], a[19], a[24] = (
                q, ck, bk, cv, bv, hot_k, hot_v, out, hot_len, scale * 1.4426950408889634)
            if quant:
                a[2], a[5] = sk, sv
            run(g0, g1, 1, stream, fn, meta, None, None, None, *a)
            if merge is not None:
                run, fn, meta, g0, g1, tpl = merge
                a = list(tpl)
                a[3] = out
                run(g0, g1, 1, stream, fn, meta, None, None, None, *a)
            LAUNCH_STATS["replayed"] += 1
            return
        except Exception as e:  # noqa: BLE001 - the launcher refused: JIT launches from now on
            _FAST_LAUNCH = False
            LAUNCH_STATS["replay_failed"] = repr(e)
            replay = False
    if plan is None:
        plan = (None, _make_plan_v2(q, ck, bk, cv, bv, hot_k, n_blocks, n_hot, hot_per_split, quant, sp, nw, tw, fused,
                                    fast, grp, bpp, pdl))
    grid, mgrid, work, cnt, consts, mconsts, (nb_cap, hot_cap, n_comp, n_splits, n_groups) = plan[1]
    pm, pl, pacc, pm2, pl2, pacc2 = work
    a = [q, ck, sk if quant else pm, bk, cv, sv if quant else pm, bv, hot_k, hot_v, pm, pl, pacc, cnt, out, pm2, pl2,
         pacc2, n_blocks, nb_cap, hot_len, hot_cap, n_comp, n_splits, n_groups, scale * 1.4426950408889634,
         *consts.values()]
    opts = {} if maxnreg is None else {"maxnreg": maxnreg}
    if pdl:  # launch attribute of the compiled launcher: the replayed launches below carry it too
        opts["launch_pdl"] = True
    k1 = (_spectral_v3 if kernel == "v3" else _spectral_v2)[grid](*a, num_warps=num_warps, num_stages=num_stages,
                                                                   **opts)
    LAUNCH_STATS["jit"] += 1
    launches = [(k1, grid, a)]
    if mgrid is not None:
        am = [pm, pl, pacc, out, n_splits, *mconsts.values()]
        launches.append((_merge_v2_kernel[mgrid](*am, num_warps=4, **({"launch_pdl": True} if pdl else {})), mgrid,
                         am))
    rec = None
    if replay:
        try:
            rec = []
            for k, g, args in launches:
                if hasattr(k, "result"):
                    k = k.result()
                rec.append((k.run, k.function, k.packed_metadata, g[0], g[1], tuple(args)))
            rec = (rec[0], rec[1] if len(rec) > 1 else None)
        except Exception:  # noqa: BLE001 - this triton does not expose the launcher pieces: no replay
            rec = None
            LAUNCH_STATS["replay_unavailable"] += 1
    if len(_V2_PLANS) > 1024:
        _V2_PLANS.clear()
    _V2_PLANS[key] = (rec, plan[1])


def _make_plan_v2(q, ck, bk, cv, bv, hot_k, n_blocks, n_hot, hot_per_split, quant, sp, nw, tw, fused, fast, grp,
                  bpp, pdl=False):
    b, hq, _, d = q.shape
    _, hk, nb_cap, bs, rk = ck.shape
    rv, dv = cv.shape[-1], bv.shape[-1]
    hot_cap = hot_k.shape[2]
    g = hq // hk
    gq = next_pow2(g)
    n_bh = b * hk
    n_comp = -(-n_blocks // bpp) * sp  # programs of `bpp` blocks, `sp` per block group
    n_splits = max(1, n_comp + n_hot)
    n_groups = -(-n_splits // grp)
    n1, n2 = n_bh * n_splits * gq, n_bh * n_groups * gq  # partial rows of the two merge levels
    work, cnt = _scratch(q.device, (n1 + n2) * (2 + dv), n_bh * (n_groups + 1))
    o2 = n1 * (2 + dv)
    work = (work[:n1], work[n1:2 * n1], work[2 * n1:o2],
            work[o2:o2 + n2], work[o2 + n2:o2 + 2 * n2], work[o2 + 2 * n2:o2 + n2 * (2 + dv)])
    lowp = q.dtype != torch.float32
    dvp = _p2(dv)
    consts = dict(G=g, GP=_p2(g), GQ=gq, D=d, DP=_p2(d), DV=dv, DVP=dvp, RK=rk, RKP=_p2(rk), RV=rv, RVP=_p2(rv),
                  BS=bs, SPLIT=sp, BPP=bpp, NW=nw, TW=tw, HOT_PER_SPLIT=hot_per_split, HT=64, QUANT=quant,
                  LOWP=lowp and (quant or ck.dtype == torch.float16), PREC="ieee" if not lowp else "tf32",
                  FUSED=fused, GRP=grp, SCH=8, FASTCVT=fast and quant,
                  I64=max(ck.numel(), cv.numel(), bk.numel(), bv.numel()) >= 2**31, PDL=pdl)
    mgrid = mconsts = None
    if not fused:
        dvb = min(32, dvp)
        mgrid = (n_bh, triton.cdiv(dv, dvb))
        mconsts = dict(G=g, GQ=gq, DV=dv, DVB=dvb, SCH=min(64, max(8, next_pow2(n_splits))),  # one round up to 64
                       PDL=pdl)
    return (n_bh, n_splits), mgrid, work, cnt, consts, mconsts, (nb_cap, hot_cap, n_comp, n_splits, n_groups)
