"""v5 spectral decode kernel (session 6 round 2): v4's per-warp work (the warps are the batch dimension of the
score and aggregation dots: row statistics stay inside a warp, no block-wide barrier per token tile) with the
accumulator in coefficient space within a block. Each warp softmaxes its own token batch of the block against
its own (block-local) row maxima and aggregates ``p * s_V @ C_V`` into ``[rows, r_v]``; once per block step the
warps' coefficient rows are combined (one cross-warp max and one cross-warp sum of ``[WB, rows, r_v]``) and
projected by the block's value basis ONCE per program (``[rows, r_v] @ B_V``, a 2-D dot), so the running
accumulator is ``[rows, d_v]`` (v3's size), not v4's per-warp ``[WB, rows, d_v]`` (4x the registers: spills at
ranks 32). Same arguments, partial layout and launcher as v3/v4 (``kernel.py``, ``impl="v5"``)."""

from __future__ import annotations

from .jit_common import HAS_TRITON

if HAS_TRITON:
    import triton
    import triton.language as tl

    from .jit_common import _gdc_enter, _hot_window
    from .jit_v2 import _i8_to_f16
    from .jit_v3 import _v3_prefetch

    @triton.jit(do_not_specialize=["n_blocks", "hot_len"])
    def _spectral_v5(
        Q, CK, SK, BK, CV, SV, BV, HKP, HVP, PM, PL, PACC, CNT, O, PM2, PL2, PACC2,
        n_blocks, nb_cap, hot_len, hot_cap, n_comp, n_splits, n_groups, qk_scale,
        G: tl.constexpr, GP: tl.constexpr, GQ: tl.constexpr,
        D: tl.constexpr, DP: tl.constexpr, DV: tl.constexpr, DVP: tl.constexpr,
        RK: tl.constexpr, RKP: tl.constexpr, RV: tl.constexpr, RVP: tl.constexpr,
        BS: tl.constexpr, SPLIT: tl.constexpr, BPP: tl.constexpr, NW: tl.constexpr, TW: tl.constexpr,
        HOT_PER_SPLIT: tl.constexpr, HT: tl.constexpr,
        QUANT: tl.constexpr, LOWP: tl.constexpr, PREC: tl.constexpr,
        FUSED: tl.constexpr, GRP: tl.constexpr, SCH: tl.constexpr, FASTCVT: tl.constexpr, I64: tl.constexpr,
        PDL: tl.constexpr = False, PRE: tl.constexpr = 0, L2PF: tl.constexpr = False,
    ):
        """v5 block program: BS // SPLIT tokens of each of BPP blocks, cut into WB = TPP // (NW*TW) warp
        batches of NW slices of TW tokens; batch w, row j*GQ + g = (slice j of batch w, query head g):

            qb   = q @ B_K^T  (2-D, once per block)                    [GP, rk]
            s    = blockdiag_j(qb) @ [C_K(w, 0)^T; ...]                [WB, GP, TW]
            mw   = max_t s;  p = exp2(s - mw);  lw = sum_t p            per warp, block-local
            pcw  = diag blocks of (p * s_V) @ [C_V(w, 0) | ...]        [WB, GP, rv]
            m'   = max(m, max_w mw);  c_w = exp2(mw - m')               once per block (cross-warp)
            pc   = sum_w c_w * pcw;  l = l * exp2(m - m') + sum_w c_w * lw
            acc  = acc * exp2(m - m') + pc @ B_V                       [GP, dv]

        then the NW rows of each query head are merged once per program. FUSED / PRE are not used."""
        if PDL and not L2PF:
            _gdc_enter()
        pid_bh = tl.program_id(0)
        pid_s = tl.program_id(1)
        offs_d = tl.arange(0, DP)
        offs_dv = tl.arange(0, DVP)
        dmask = offs_d < D
        dvmask = offs_dv < DV
        if pid_s < n_comp:
            TPP: tl.constexpr = BS // SPLIT
            WB: tl.constexpr = TPP // (NW * TW)
            offs_w = tl.arange(0, WB)
            offs_r = tl.arange(0, GP)
            jr = offs_r // GQ
            gr = offs_r % GQ
            rvalid = (jr < NW) & (gr < G)
            jrc = tl.where(jr < NW, jr, 0)
            offs_j = tl.arange(0, NW)
            offs_t = tl.arange(0, TW)
            offs_rk = tl.arange(0, RKP)
            offs_rv = tl.arange(0, RVP)
            offs_ck = tl.arange(0, NW * RKP)
            offs_cv = tl.arange(0, NW * RVP)
            rck = offs_ck % RKP
            rcv = offs_cv % RVP
            n0 = (pid_s // SPLIT) * BPP
            n1 = tl.minimum(n0 + BPP, n_blocks)
            part = pid_s % SPLIT
            diag2 = jr[:, None, None] == offs_j[None, :, None]  # [GP, NW, 1]
            diag = diag2[None, :, :, :]  # [1, GP, NW, 1]
            m_i = tl.full([GP], -1.0e30, tl.float32)
            l_i = tl.zeros([GP], tl.float32)
            acc = tl.zeros([GP, DVP], tl.float32)
            if L2PF:
                _v3_prefetch(CK, SK, BK, CV, SV, BV, pid_bh, nb_cap, n0, n1, part, TPP, BS, D, DV, RK, RV, BPP, QUANT)
                if PDL:
                    _gdc_enter()
            q2 = tl.load(Q + (pid_bh * G + gr)[:, None] * D + offs_d[None, :], mask=rvalid[:, None] & dmask[None, :],
                         other=0.0)
            if not LOWP:
                q2 = q2.to(tl.float32)
            wtok = offs_w * (NW * TW)  # first token of batch w
            for n in range(n0, n1):
                blk = pid_bh * nb_cap + n
                if I64:
                    blk = blk.to(tl.int64)
                tokb = blk * BS + part * TPP
                ck_tok = tokb + wtok[:, None, None] + (offs_ck // RKP)[None, :, None] * TW + offs_t[None, None, :]
                ck_ptr = CK + ck_tok * RK + rck[None, :, None]  # [WB, NW*RKP, TW]
                cv_tok = tokb + wtok[:, None, None] + (offs_cv // RVP)[None, None, :] * TW + offs_t[None, :, None]
                cv_ptr = CV + cv_tok * RV + rcv[None, None, :]  # [WB, TW, NW*RVP]
                if RK == RKP:
                    ck = tl.load(ck_ptr)
                else:
                    ck = tl.load(ck_ptr, mask=(rck < RK)[None, :, None], other=0)
                if RV == RVP:
                    cv = tl.load(cv_ptr)
                else:
                    cv = tl.load(cv_ptr, mask=(rcv < RV)[None, None, :], other=0)
                s_tok = tokb + wtok[:, None, None] + jrc[None, :, None] * TW + offs_t[None, None, :]  # [WB, GP, TW]
                if QUANT:
                    sk = tl.load(SK + s_tok)
                    sv = tl.load(SV + s_tok)
                bk_ptr = BK + blk * (RK * D) + offs_rk[:, None] * D + offs_d[None, :]
                bv_ptr = BV + blk * (RV * DV) + offs_rv[:, None] * DV + offs_dv[None, :]
                if RK == RKP and D == DP:
                    bk = tl.load(bk_ptr)
                else:
                    bk = tl.load(bk_ptr, mask=(offs_rk < RK)[:, None] & dmask[None, :], other=0.0)
                if RV == RVP and DV == DVP:
                    bv = tl.load(bv_ptr)
                else:
                    bv = tl.load(bv_ptr, mask=(offs_rv < RV)[:, None] & dvmask[None, :], other=0.0)
                if LOWP:
                    qb = tl.dot(q2, tl.trans(bk.to(q2.dtype))) * qk_scale  # [GP, RKP], once per block
                    if QUANT:
                        ckf = _i8_to_f16(ck, FASTCVT)
                        cvf = _i8_to_f16(cv, FASTCVT)
                    else:
                        ckf = ck.to(tl.float16)
                        cvf = cv.to(tl.float16)
                else:
                    qb = tl.dot(q2, tl.trans(bk.to(tl.float32)), input_precision=PREC) * qk_scale
                    ckf = ck.to(tl.float32)
                    cvf = cv.to(tl.float32)
                qd2 = tl.reshape(tl.where(diag2, qb[:, None, :], 0.0), (GP, NW * RKP))
                qd = tl.broadcast_to(qd2[None, :, :], (WB, GP, NW * RKP))
                if LOWP:
                    s = tl.dot(qd.to(tl.float16), ckf)  # [WB, GP, TW]
                else:
                    s = tl.dot(qd, ckf, input_precision=PREC)
                if QUANT:
                    s = s * sk
                mw = tl.max(s, 2)  # [WB, GP], inside each warp
                p = tl.exp2(s - mw[:, :, None])
                lw = tl.sum(p, 2)
                if QUANT:
                    p = p * sv
                if LOWP:
                    pcf = tl.dot(p.to(tl.float16), cvf)  # [WB, GP, NW*RVP]
                else:
                    pcf = tl.dot(p, cvf, input_precision=PREC)
                pcw = tl.sum(tl.where(diag, tl.reshape(pcf, (WB, GP, NW, RVP)), 0.0), 2)  # [WB, GP, RVP]
                # the block's warps combined (coefficient space), projected once
                m_new = tl.maximum(m_i, tl.max(mw, 0))
                cw = tl.exp2(mw - m_new[None, :])  # [WB, GP]
                pc = tl.sum(pcw * cw[:, :, None], 0)  # [GP, RVP]
                alpha = tl.exp2(m_i - m_new)
                l_i = l_i * alpha + tl.sum(lw * cw, 0)
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
            if PDL and L2PF:
                _gdc_enter()
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
