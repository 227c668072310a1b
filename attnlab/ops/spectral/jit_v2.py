"""v2 spectral decode kernel (session 4): warp-sliced block programs, fast int8 conversion, the
partials merge (``_merge_v2_kernel`` or fused); shared pieces used by v3 (design: ``kernel.py``)."""

from __future__ import annotations

from .jit_common import HAS_TRITON

if HAS_TRITON:
    import triton
    import triton.language as tl

    from .jit_common import _gdc_enter, _hot_program, _store_partial

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
                     RV: tl.constexpr, RVP: tl.constexpr, QUANT: tl.constexpr, CVT: tl.constexpr = False,
                     BS: tl.constexpr = 1):
        """The coefficient tiles [NW, TW, r] (and scales [NW, TW]) of tokens tok [NW, TW]. CVT: the value
        coefficients stored token-major (C_V^T per block of BS tokens, [RV, BS])."""
        ck_ptr = CK + tok[:, :, None] * RK + offs_rk[None, None, :]
        if CVT:
            cv_ptr = CV + ((tok // BS) * (BS * RV) + tok % BS)[:, :, None] + offs_rv[None, None, :] * BS
        else:
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
        PDL: tl.constexpr = False, CVT: tl.constexpr = False,
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
                                              RVP, QUANT, CVT, BS)
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
                                                          rvmask, RK, RKP, RV, RVP, QUANT, CVT, BS)
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
            # partial rows [B*Hk, n_splits, GQ]
            _store_partial(PM, PL, PACC, (pid_bh * n_splits + pid_s) * GQ + offs_g, m_i, l_i, acc, gmask, offs_dv,
                           dvmask, DV)
        else:
            _hot_program(Q, HKP, HVP, PM, PL, PACC, pid_bh, pid_s, n_comp, n_splits, hot_len, hot_cap, qk_scale,
                         G, GP, GQ, D, DP, DV, DVP, HOT_PER_SPLIT, HT, LOWP, PREC)
        if FUSED:
            _fused_tail(PM, PL, PACC, PM2, PL2, PACC2, O, CNT, pid_bh, pid_s, n_splits, n_groups, G, GQ, DV, DVP,
                        GRP, SCH)

    @triton.jit
    def _fused_tail(PM, PL, PACC, PM2, PL2, PACC2, O, CNT, pid_bh, pid_s, n_splits, n_groups, G: tl.constexpr,
                    GQ: tl.constexpr, DV: tl.constexpr, DVP: tl.constexpr, GRP: tl.constexpr, SCH: tl.constexpr):
        """The fused merge of v2/v3, after a program stored its partial: the last program of each group
        of GRP splits to finish merges the group's partials into a group partial, the last group of
        this (b, h) merges those into the output (two short rounds of loads at the tail instead of
        n_splits / SCH). With one group (merge_group >= n_splits, session 6) the last program of the
        (b, h) merges every partial into the output directly (SCH partials per round, one atomic). The
        counters are left at zero for the next call."""
        grp = pid_s // GRP
        gsize = tl.minimum(GRP, n_splits - grp * GRP)
        cbase = CNT + pid_bh * (n_groups + 1)
        tl.debug_barrier()  # every thread's partial stores precede the release below
        done = tl.atomic_add(cbase + grp, 1, sem="acq_rel", scope="gpu")
        if n_groups == 1:  # one group (merge_group >= n_splits): the last program merges straight into O
            if done == n_splits - 1:
                _merge_rows(PM, PL, PACC, pid_bh * n_splits, n_splits, PM2, PL2, O, pid_bh * G, 0, True,
                            G, GQ, DV, DVP, SCH)
                tl.atomic_xchg(cbase, 0, sem="relaxed", scope="gpu")
        elif done == gsize - 1:
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
