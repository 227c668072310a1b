"""v3 spectral decode kernel (session 5): token slices packed into the rows of the dots, no padded
query rows (design: ``kernel.py``'s docstring and ``_spectral_v3``'s). Session 6: the L2 bulk prefetch of
a program's blocks before the PDL wait (``L2PF``), and on that path the value coefficients loaded side by side
and the row sums kept per token column (``CV2D``). Session 7: token-major value coefficients (``CVT``), the value
the register prefetch (session 6, ``PRE``), the int32-word value tiles (round 2, ``CVWORDS``) and the value bases
applied once per program (session 7, ``LATE_VPROJ``, commit c61f89f), measured slower or no faster, were removed."""

from __future__ import annotations

from .jit_common import HAS_TRITON

if HAS_TRITON:
    import triton
    import triton.language as tl

    from .jit_common import _gdc_enter, _hot_program, _store_partial
    from .jit_v2 import _fused_tail, _i8_to_f16

    @triton.jit
    def _rows_of_slices(x, diag, NW: tl.constexpr, GQ: tl.constexpr, GP: tl.constexpr, TW: tl.constexpr):
        """x [NW, TW] (one row per token slice) -> [GP, TW], row j*GQ + g = x[j] (rows past NW*GQ: 0)."""
        if NW * GQ == GP:
            out = tl.reshape(tl.broadcast_to(x[:, None, :], (NW, GQ, TW)), (GP, TW))
        else:
            out = tl.sum(tl.where(diag, x[None, :, :], 0.0), 1)
        return out

    @triton.jit
    def _v3_tiles(CK, SK, BK, CV, SV, BV, blk, tokb, tok, offs_rk, offs_rv, offs_d, offs_dv, rkmask, rvmask, dmask, dvmask,
                  D: tl.constexpr, DP: tl.constexpr, DV: tl.constexpr, DVP: tl.constexpr, RK: tl.constexpr,
                  RKP: tl.constexpr, RV: tl.constexpr, RVP: tl.constexpr, QUANT: tl.constexpr, NW: tl.constexpr,
                  TW: tl.constexpr, CV2D: tl.constexpr, CVT: tl.constexpr = False,
                  BS: tl.constexpr = 1):
        """Every load of one block step: the slices' key coefficients transposed [NW, RKP, TW], value
        coefficients [NW, TW, RVP] (CV2D: side by side, [TW, NW*RVP], ``_v3_cv``), their per-token scales
        [NW, TW] (zeros without QUANT), and the block's bases [RKP, DP], [RVP, DVP]."""
        ck_ptr = CK + tok[:, None, :] * RK + offs_rk[None, :, None]  # C_K^T per slice [NW, RKP, TW]
        bk_ptr = BK + blk * (RK * D) + offs_rk[:, None] * D + offs_d[None, :]
        bv_ptr = BV + blk * (RV * DV) + offs_rv[:, None] * DV + offs_dv[None, :]
        if RK == RKP:
            ck = tl.load(ck_ptr)
        else:
            ck = tl.load(ck_ptr, mask=rkmask[None, :, None], other=0)
        if CV2D or CVT:
            cv = _v3_cv(CV, tokb, RV, RVP, NW, TW, CVT, blk, BS)
        else:
            if CVT:  # token-major storage (C_V^T per block, [RV, BS])
                cv_ptr = CV + blk * (BS * RV) + (tok - blk * BS)[:, :, None] + offs_rv[None, None, :] * BS
            else:
                cv_ptr = CV + tok[:, :, None] * RV + offs_rv[None, None, :]  # [NW, TW, RVP]
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
        if RK == RKP and D == DP:
            bk = tl.load(bk_ptr)
        else:
            bk = tl.load(bk_ptr, mask=rkmask[:, None] & dmask[None, :], other=0.0)
        if RV == RVP and DV == DVP:
            bv = tl.load(bv_ptr)
        else:
            bv = tl.load(bv_ptr, mask=rvmask[:, None] & dvmask[None, :], other=0.0)
        return ck, cv, sk, sv, bk, bv

    @triton.jit
    def _v3_cv(CV, tokb, RV: tl.constexpr, RVP: tl.constexpr, NW: tl.constexpr, TW: tl.constexpr,
               CVT: tl.constexpr = False, blk=0, BS: tl.constexpr = 1):
        """The value coefficients of the token slices side by side, [TW, NW*RVP]: column j*RVP + r holds
        rank r of slice j (slice j: tokens tokb + j*TW ..), loaded straight into the shape the aggregation
        dot takes (no permute / reshape of the tile). CVT (session 7): the cache stores each block's value
        coefficients token-major (C_V^T, [RV, BS], block ``blk``): the tile's tokens (the dot's K axis) are
        contiguous, so its int8 -> fp16 conversion reads words out of shared memory, not single bytes."""
        offs_c = tl.arange(0, NW * RVP)
        offs_t = tl.arange(0, TW)
        r = offs_c % RVP
        if CVT:  # token-major: C_V^T of each block, [RV, BS]
            cv_ptr = (CV + blk * (BS * RV) + (tokb - blk * BS) + r[None, :] * BS + (offs_c // RVP)[None, :] * TW
                      + offs_t[:, None])
        else:
            cv_ptr = CV + (tokb + (offs_c // RVP)[None, :] * TW + offs_t[:, None]) * RV + r[None, :]
        if RV == RVP:
            cv = tl.load(cv_ptr)
        else:
            cv = tl.load(cv_ptr, mask=(r < RV)[None, :], other=0)
        return cv

    @triton.jit
    def _l2_prefetch_ranges(addr, nbytes):
        """cp.async.bulk.prefetch.L2 (sm_90) of the byte ranges [addr, addr + nbytes) (int64 / int32 tensors,
        one range per element; ranges of <= 0 bytes are skipped), shrunk to 16-byte alignment. A hint: it
        changes no value, and the loads that follow hit L2 instead of waiting for DRAM."""
        return tl.inline_asm_elementwise(
            asm="""{
            .reg .pred p;
            .reg .b64 a, e, n;
            add.s64 a, $1, 15;
            and.b64 a, a, -16;
            cvt.s64.s32 n, $2;
            add.s64 e, $1, n;
            and.b64 e, e, -16;
            sub.s64 n, e, a;
            setp.gt.s64 p, n, 0;
            cvt.u32.u64 $0, n;
            @p cp.async.bulk.prefetch.L2.global [a], $0;
            }""",
            constraints="=r,l,r", args=[addr, nbytes], dtype=tl.int32, is_pure=False, pack=1)

    @triton.jit
    def _v3_prefetch(CK, SK, BK, CV, SV, BV, pid_bh, nb_cap, n0, n1, part, TPP: tl.constexpr, BS: tl.constexpr,
                     D: tl.constexpr, DV: tl.constexpr, RK: tl.constexpr, RV: tl.constexpr, BPP: tl.constexpr,
                     QUANT: tl.constexpr, CVT: tl.constexpr = False):
        """Ask L2 for every byte this program will read from the compressed blocks (its part of blocks
        n0 .. n1-1, at most 16 blocks: coefficients, scales, bases; 6 ranges per block, one per thread,
        spread over 4 warps; with more warps some ranges are requested twice, harmlessly). CVT: the value
        coefficients stored token-major, one range from the program's first to its last byte."""
        L: tl.constexpr = 128
        lane = tl.arange(0, L)
        c = (lane % 32) * 4 + lane // 32  # range c on warp c % 4 (4 warps): the per-warp issue loops stay short
        kind = c % 8
        n = n0 + c // 8
        ok = (n < n1) & (c < BPP * 8)
        blk = (pid_bh * nb_cap + n).to(tl.int64)
        tok0 = blk * BS + part * TPP
        eck: tl.constexpr = CK.dtype.element_ty.primitive_bitwidth // 8
        ebk: tl.constexpr = BK.dtype.element_ty.primitive_bitwidth // 8
        if CVT:  # RV rows of TPP bytes, BS apart
            cv0 = blk * (BS * RV) + part * TPP
            cvn: tl.constexpr = ((RV - 1) * BS + TPP) * eck
        else:
            cv0 = tok0 * RV
            cvn: tl.constexpr = TPP * RV * eck
        addr = tl.where(kind == 0, CK.to(tl.int64, bitcast=True) + tok0 * (RK * eck),
               tl.where(kind == 1, CV.to(tl.int64, bitcast=True) + cv0 * eck,
               tl.where(kind == 4, BK.to(tl.int64, bitcast=True) + blk * (RK * D * ebk),
               BV.to(tl.int64, bitcast=True) + blk * (RV * DV * ebk))))
        size = tl.where(kind == 0, TPP * RK * eck, tl.where(kind == 1, cvn,
               tl.where(kind == 4, RK * D * ebk, RV * DV * ebk)))
        if QUANT:
            addr = tl.where(kind == 2, SK.to(tl.int64, bitcast=True) + tok0 * 4,
                   tl.where(kind == 3, SV.to(tl.int64, bitcast=True) + tok0 * 4, addr))
            size = tl.where((kind == 2) | (kind == 3), TPP * 4, size)
            ok = ok & (kind < 6)
        else:
            ok = ok & (kind < 6) & (kind != 2) & (kind != 3)
        _l2_prefetch_ranges(addr, tl.where(ok, size, 0))

    @triton.jit
    def _v3_step(q, ck, cv, sk, sv, bk, bv, m_i, l_i, acc, diag, qk_scale, GP: tl.constexpr, GQ: tl.constexpr,
                 NW: tl.constexpr, TW: tl.constexpr, RKP: tl.constexpr, RVP: tl.constexpr, QUANT: tl.constexpr,
                 LOWP: tl.constexpr, PREC: tl.constexpr, FASTCVT: tl.constexpr, CV2D: tl.constexpr,
                 CVT: tl.constexpr = False):
        """The math of one block step (see ``_spectral_v3``): rows (slice j, head g) each with its own
        online softmax (m_i, l_i, acc [GP, DVP]) in the log2 domain. CV2D (the session-6 path) also keeps
        l_i per row AND token column ([GP, TW], summed once after the program's last block): no
        cross-warp row sum per step (the tokens of a row are spread over the warps)."""
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
        if CV2D:
            l_i = l_i * alpha[:, None] + p
        else:
            l_i = l_i * alpha + tl.sum(p, 1)
        if QUANT:
            p = p * _rows_of_slices(sv, diag, NW, GQ, GP, TW)
        if CV2D or CVT:
            cvc = cvf  # [TW, NW*RVP]: [C_V(slice 0) | ...]
        else:
            cvc = tl.reshape(tl.permute(cvf, (1, 0, 2)), (TW, NW * RVP))
        if LOWP:
            pcf = tl.dot(p.to(tl.float16), cvc)  # [GP, NW*RVP]
        else:
            pcf = tl.dot(p, cvc, input_precision=PREC)
        pc = tl.sum(tl.where(diag, tl.reshape(pcf, (GP, NW, RVP)), 0.0), 1)  # [GP, RVP]
        acc = acc * alpha[:, None] + tl.dot(pc, bv.to(tl.float32), input_precision=PREC)
        return m_new, l_i, acc

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
        PDL: tl.constexpr = False, L2PF: tl.constexpr = False,
        CVT: tl.constexpr = False,
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
        PDL: launched as a programmatic dependent launch (see ``_gdc_enter``).
        L2PF (session 6): at its start a program asks L2 (cp.async.bulk.prefetch.L2, sm_90+, compiled only)
        for every byte of its blocks (before the PDL wait), so its loads wait for L2, not DRAM; the requests
        overlap the previous kernel (the merge of the previous call or layer, which never writes a cache);
        q and everything written (partials, output, counters) come after the wait."""
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
            # session 6: the row sums kept per token column on the L2-prefetch path (the session-5 launch keeps
            # its code)
            CV2D: tl.constexpr = L2PF
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
            n0 = (pid_s // SPLIT) * BPP
            n1 = tl.minimum(n0 + BPP, n_blocks)
            part = pid_s % SPLIT
            tok_off = part * TPP + offs_j[:, None] * TW + offs_t[None, :]  # [NW, TW] within a block
            diag = jr[:, None, None] == offs_j[None, :, None]  # [GP, NW, 1]: row block j of slice j
            m_i = tl.full([GP], -1.0e30, tl.float32)
            if CV2D:
                l_i = tl.zeros([GP, TW], tl.float32)  # summed over the tokens after the last block
            else:
                l_i = tl.zeros([GP], tl.float32)
            acc = tl.zeros([GP, DVP], tl.float32)
            if L2PF:  # every byte of the program's blocks requested from L2 up front (before the PDL wait)
                _v3_prefetch(CK, SK, BK, CV, SV, BV, pid_bh, nb_cap, n0, n1, part, TPP, BS, D, DV, RK, RV, BPP, QUANT,
                             CVT)
                if PDL:
                    _gdc_enter()
            q = tl.load(Q + (pid_bh * G + gr)[:, None] * D + offs_d[None, :], mask=rvalid[:, None] & dmask[None, :],
                        other=0.0)
            if not LOWP:
                q = q.to(tl.float32)
            for n in range(n0, n1):
                blk = pid_bh * nb_cap + n
                if I64:
                    blk = blk.to(tl.int64)
                # every load of the block first (Triton pipelines them across blocks, num_stages 2)
                ck, cv, sk, sv, bk, bv = _v3_tiles(CK, SK, BK, CV, SV, BV, blk, blk * BS + part * TPP, blk * BS + tok_off, offs_rk,
                                                   offs_rv, offs_d, offs_dv, rkmask, rvmask, dmask, dvmask, D, DP,
                                                   DV, DVP, RK, RKP, RV, RVP, QUANT, NW, TW, CV2D, CVT, BS)
                m_i, l_i, acc = _v3_step(q, ck, cv, sk, sv, bk, bv, m_i, l_i, acc, diag, qk_scale, GP, GQ, NW, TW,
                                         RKP, RVP, QUANT, LOWP, PREC, FASTCVT, CV2D, CVT)
            if CV2D:
                l_i = tl.sum(l_i, 1)
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
            _store_partial(PM, PL, PACC, prow, m_h, l_h, acc_h, qmask, offs_dv, dvmask, DV)
        else:
            if PDL and L2PF:
                _gdc_enter()
            _hot_program(Q, HKP, HVP, PM, PL, PACC, pid_bh, pid_s, n_comp, n_splits, hot_len, hot_cap, qk_scale,
                         G, GP, GQ, D, DP, DV, DVP, HOT_PER_SPLIT, HT, LOWP, PREC)
        if FUSED:
            _fused_tail(PM, PL, PACC, PM2, PL2, PACC2, O, CNT, pid_bh, pid_s, n_splits, n_groups, G, GQ, DV, DVP,
                        GRP, SCH)
