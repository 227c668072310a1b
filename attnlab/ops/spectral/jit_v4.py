"""v4 spectral decode kernel (session 6, experimental): v3's row packing (rows = (token slice, query head)
pairs, no padded query rows) with v2's warp independence (the warps are the batch dimension of 3-D dots,
so row statistics and the operand hand-offs between the dots stay inside a warp: no block-wide barrier
per step). Same arguments, partial layout and launcher as v3 (``kernel.py``, ``impl="v4"``)."""

from __future__ import annotations

from .jit_common import HAS_TRITON

if HAS_TRITON:
    import triton
    import triton.language as tl

    from .jit_common import _gdc_enter, _hot_window
    from .jit_v2 import _i8_to_f16
    from .jit_v3 import _v3_prefetch

    @triton.jit(do_not_specialize=["n_blocks", "hot_len"])
    def _spectral_v4(
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
        """v4 block program: BS // SPLIT tokens of each of BPP blocks, cut into WB = TPP // (NW*TW) warp
        batches of NW slices of TW tokens. Batch w, row j*GQ + g = (slice j of batch w, query head g):

            qb  = q_rep @ B_K^T                                   [WB, GP, rk]   (per batch, redundant)
            s   = blockdiag_j(qb) @ [C_K(w, 0)^T; ...]            [WB, GP, TW]
            p   = exp2(s - m_row)                                  (online softmax per (w, row))
            pc  = diag blocks of (p * s_V) @ [C_V(w, 0) | ...]     [WB, GP, rv]
            acc = acc * alpha + pc @ B_V                           [WB, GP, dv]

        then every (w, j) row of a query head is merged once per program. FUSED / PRE are not used."""
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
            diag = (jr[:, None] == offs_j[None, :])[None, :, :, None]  # [1, GP, NW, 1]
            m_i = tl.full([WB, GP], -1.0e30, tl.float32)
            l_i = tl.zeros([WB, GP, TW], tl.float32)  # summed over the tokens after the last block
            acc = tl.zeros([WB, GP, DVP], tl.float32)
            if L2PF:
                _v3_prefetch(CK, SK, BK, CV, SV, BV, pid_bh, nb_cap, n0, n1, part, TPP, BS, D, DV, RK, RV, BPP, QUANT)
                if PDL:
                    _gdc_enter()
            q2 = tl.load(Q + (pid_bh * G + gr)[:, None] * D + offs_d[None, :], mask=rvalid[:, None] & dmask[None, :],
                         other=0.0)
            if not LOWP:
                q2 = q2.to(tl.float32)
            q3 = tl.broadcast_to(q2[None, :, :], (WB, GP, DP))
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
                    bk3 = tl.broadcast_to(tl.trans(bk.to(q2.dtype))[None, :, :], (WB, DP, RKP))
                    qb = tl.dot(q3, bk3) * qk_scale  # [WB, GP, RKP]
                    if QUANT:
                        ckf = _i8_to_f16(ck, FASTCVT)
                        cvf = _i8_to_f16(cv, FASTCVT)
                    else:
                        ckf = ck.to(tl.float16)
                        cvf = cv.to(tl.float16)
                else:
                    bk3 = tl.broadcast_to(tl.trans(bk.to(tl.float32))[None, :, :], (WB, DP, RKP))
                    qb = tl.dot(q3, bk3, input_precision=PREC) * qk_scale
                    ckf = ck.to(tl.float32)
                    cvf = cv.to(tl.float32)
                qd = tl.reshape(tl.where(diag, qb[:, :, None, :], 0.0), (WB, GP, NW * RKP))
                if LOWP:
                    s = tl.dot(qd.to(tl.float16), ckf)  # [WB, GP, TW]
                else:
                    s = tl.dot(qd, ckf, input_precision=PREC)
                if QUANT:
                    s = s * sk
                m_new = tl.maximum(m_i, tl.max(s, 2))
                alpha = tl.exp2(m_i - m_new)
                p = tl.exp2(s - m_new[:, :, None])
                l_i = l_i * alpha[:, :, None] + p
                if QUANT:
                    p = p * sv
                if LOWP:
                    pcf = tl.dot(p.to(tl.float16), cvf)  # [WB, GP, NW*RVP]
                else:
                    pcf = tl.dot(p, cvf, input_precision=PREC)
                pc = tl.sum(tl.where(diag, tl.reshape(pcf, (WB, GP, NW, RVP)), 0.0), 2)  # [WB, GP, RVP]
                bv3 = tl.broadcast_to(bv.to(tl.float32)[None, :, :], (WB, RVP, DVP))
                acc = acc * alpha[:, :, None] + tl.dot(pc, bv3, input_precision=PREC)
                m_i = m_new
            # merge the WB * NW rows of each query head
            l2 = tl.sum(l_i, 2)  # [WB, GP]
            m_i = tl.where(rvalid[None, :], m_i, -1.0e30)
            m3 = tl.reshape(m_i, (WB * (GP // GQ), GQ))
            m_h = tl.max(m3, 0)
            w3 = tl.exp2(m3 - m_h[None, :])
            l_h = tl.sum(tl.reshape(tl.where(rvalid[None, :], l2, 0.0), (WB * (GP // GQ), GQ)) * w3, 0)
            acc3 = tl.reshape(tl.where(rvalid[None, :, None], acc, 0.0), (WB * (GP // GQ), GQ, DVP))
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
