"""v1 spectral decode kernels (session 2): ``_spectral_split`` block/hot programs and the
``_spectral_merge`` / ``_spectral_merge_proj`` log-sum-exp merges (design: ``kernel.py``'s docstring)."""

from __future__ import annotations

from .jit_common import HAS_TRITON

if HAS_TRITON:
    import triton
    import triton.language as tl

    from .jit_common import _hot_window

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
