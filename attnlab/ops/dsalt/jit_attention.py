"""DSALT attention kernels: forward, dQ (+ delta), dK/dV (window part), the landmark backward and
their tile helpers (the per-query-tile kernels share _q_tile, _phase_range and _lm_rows). Design and launch order: ``kernel.py``'s docstring, which launches them."""

from __future__ import annotations

try:
    import triton
    import triton.language as tl

    HAVE_TRITON = True
except ImportError:  # pragma: no cover
    HAVE_TRITON = False

if HAVE_TRITON:

    @triton.jit
    def _win_r(offs_m, offs_n, w, T, n_max, inv_edge):
        """Soft-window weight r in (0, 1] inside the window (0 outside) and the in-window mask."""
        dd = offs_m[:, None] - offs_n[None, :]
        r = (w[:, None] - dd.to(tl.float32) - 0.5) * inv_edge + 0.5
        r = tl.minimum(r, 1.0)
        ok = (dd >= 0) & (dd < n_max) & (r > 0) & (offs_n[None, :] < T) & (offs_m[:, None] < T)
        return tl.where(ok, r, 0.0), ok

    @triton.jit
    def _lm_bias(offs_m, lpos, gate, w, T, n_max, inv_edge):
        """Landmark bias (log2 units): the gate; -inf for empty slots and where the landmark is
        inside the row's soft window."""
        dd = offs_m[:, None] - lpos[None, :]
        r = (w[:, None] - dd.to(tl.float32) - 0.5) * inv_edge + 0.5
        inwin = (dd >= 0) & (dd < n_max) & (r > 0)
        out = inwin | (offs_m[:, None] >= T) | (lpos[None, :] < 0)
        return tl.where(out, float("-inf"), gate[None, :] * 1.4426950408889634)

    @triton.jit
    def _logsigmoid(e):
        """The landmark gate log(sigmoid(e)) (fp32), computed where it is used (GT: the energies)."""
        return tl.minimum(e, 0.0) - tl.log(1.0 + tl.exp(-tl.abs(e)))

    @triton.jit
    def _tile_ranges(m0, w, T, n_max, edge, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
        """Key block starts: [lo, full_lo) edge (masked), [full_lo, m0) full, [m0, hi) diagonal
        (causal test only up to causal_hi, masked from there)."""
        wmax = tl.max(w, 0)
        wmin = tl.min(w, 0)
        # one key of slack on both sides: boundary keys always go through the exact masked path
        reach = tl.minimum((wmax - 0.5 + edge * 0.5).to(tl.int32) + 2, n_max)
        lo = tl.maximum(m0 - reach + 1, 0)
        lo = (lo // BLOCK_N) * BLOCK_N
        full = tl.minimum(tl.floor(wmin - 0.5 - edge * 0.5).to(tl.int32) - 1, n_max - 1)
        full_lo = m0 + BLOCK_M - 1 - full
        full_lo = ((full_lo + BLOCK_N - 1) // BLOCK_N) * BLOCK_N
        full_lo = tl.minimum(tl.maximum(full_lo, lo), m0)
        hi = tl.minimum(m0 + BLOCK_M, T)
        # diagonal blocks need only the causal test when every pair there (distance <= BLOCK_M - 1)
        # is at full weight for every row: then [m0, hi) is phase 2, else phase 3 (masked)
        causal_hi = tl.where(full >= BLOCK_M - 1, hi, m0)
        return lo, full_lo, causal_hi, hi

    @triton.jit
    def _q_tile(Q, W, sq_b, sq_h, sq_t, H, G, T, D: tl.constexpr, BLOCK_M: tl.constexpr):
        """Prologue of the per-query-tile kernels (grid: query tiles x batch*heads): the program's
        indices, its rows' offsets and mask, the Q tile and the rows' window sizes."""
        pid_m = tl.program_id(0)
        pid_bh = tl.program_id(1)
        b = pid_bh // H
        h = pid_bh % H
        hk = h // G
        bhk = b * (H // G) + hk
        m0 = pid_m * BLOCK_M
        offs_m = m0 + tl.arange(0, BLOCK_M)
        offs_d = tl.arange(0, D)
        mrow = offs_m < T
        qoff = b * sq_b + h * sq_h + offs_m[:, None] * sq_t + offs_d[None, :]
        q = tl.load(Q + qoff, mask=mrow[:, None], other=0.0)
        w = tl.load(W + pid_bh * T + offs_m, mask=mrow, other=1.0)
        return pid_bh, b, h, hk, bhk, m0, offs_m, offs_d, mrow, qoff, q, w

    @triton.jit
    def _lm_rows(LPOS, GT, kbase, vbase, lidx, lmask, bhk, T, sk_t, offs_d):
        """A chunk of landmark slots (flat indices lidx into LPOS, masked by lmask): positions (-1
        empty), gates logsigmoid(e) and the K/V rows loaded by position (no gathered copy)."""
        lpos = tl.load(LPOS + lidx, mask=lmask, other=-1)
        lp0 = tl.maximum(lpos, 0)
        gate = _logsigmoid(tl.load(GT + bhk * T + lp0).to(tl.float32))
        lk = tl.load(kbase + lp0[:, None] * sk_t + offs_d[None, :])
        lv = tl.load(vbase + lp0[:, None] * sk_t + offs_d[None, :])
        return lpos, gate, lk, lv

    @triton.jit
    def _phase_range(phase: tl.constexpr, lo, full_lo, m0, causal_hi, hi):
        """Key block range of phase 0 (edge, masked), 1 (full), 2 (diagonal, causal test) or 3
        (diagonal, masked): see _tile_ranges."""
        if phase == 0:
            s_lo = lo
            s_hi = full_lo
        elif phase == 1:
            s_lo = full_lo
            s_hi = m0
        elif phase == 2:
            s_lo = m0
            s_hi = causal_hi
        else:
            s_lo = causal_hi
            s_hi = hi
        return s_lo, s_hi

    @triton.jit
    def _lm_chunk(LPOS, GT, bhk, NB, T, m0, SEL_BLOCK, c, KP: tl.constexpr, NSET: tl.constexpr, BLOCK_N: tl.constexpr):
        """Landmark chunk c (BLOCK_N slots of the tile's NSET sets side by side) of the one-loop
        kernels: positions (-1 empty / padding), gates logsigmoid(e), each slot's selection block."""
        offs_c = c * BLOCK_N + tl.arange(0, BLOCK_N)
        nbc = m0 // SEL_BLOCK + offs_c // KP
        lpos = tl.load(LPOS + (bhk * NB + nbc) * KP + offs_c % KP, mask=(offs_c < NSET * KP) & (nbc < NB), other=-1)
        gate = _logsigmoid(tl.load(GT + bhk * T + tl.maximum(lpos, 0)).to(tl.float32))
        return lpos, gate, nbc

    @triton.jit
    def _sm_step(s, m_i):
        """Online-softmax step on log2-domain scores: (new running max, its finite stand-in, p)."""
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        return m_new, m_safe, tl.exp2(s - m_safe[:, None])

    @triton.jit
    def _fwd_win_step(s, m_i, offs_m, offs_n, w, T, n_max, inv_edge, masked, diag):
        """One window key block of the one-loop forward (LOOP1): the soft-window mask and weight
        where ``masked`` (edge blocks, diagonal blocks not all at full weight), the causal test where
        ``diag``, else nothing (runtime branches, uniform per block). Returns (m_new, m_safe, p)."""
        if masked:
            r, ok = _win_r(offs_m, offs_n, w, T, n_max, inv_edge)
            m_new, m_safe, p = _sm_step(tl.where(ok, s, float("-inf")), m_i)
            p = p * r
        elif diag:
            m_new, m_safe, p = _sm_step(tl.where(offs_m[:, None] >= offs_n[None, :], s, float("-inf")), m_i)
        else:
            m_new, m_safe, p = _sm_step(s, m_i)
        return m_new, m_safe, p

    @triton.jit
    def _fwd_kernel(Q, K, V, W, GT, LPOS, O, LSE,
                    sq_b, sq_h, sq_t, sk_b, sk_h, sk_t, so_b, so_h, so_t,
                    H, G, T, NB, n_max, edge, inv_edge, qk_scale, SEL_BLOCK,
                    D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                    KP: tl.constexpr, HAS_LM: tl.constexpr, PREC: tl.constexpr, NSET: tl.constexpr = 1,
                    LC: tl.constexpr = 16, LOOP1: tl.constexpr = 0):
        """Forward of one query tile: the window's key blocks in four phases, then (HAS_LM) the
        tile's landmark slots in chunks of LC, one online softmax (exp2 domain). LOOP1 (session 7):
        one loop over the window's key blocks and then the landmark slots in chunks of BLOCK_N
        (rows gathered by position), the mask chosen per block by a uniform branch: one software
        pipeline (the landmark rows' loads issued while the last window blocks compute) instead of
        four window loops and the landmark loop, each with its own pipeline fill."""
        pid_bh, b, h, hk, bhk, m0, offs_m, offs_d, mrow, qoff, q, w = _q_tile(Q, W, sq_b, sq_h, sq_t, H, G, T,
                                                                              D, BLOCK_M)
        offs_n0 = tl.arange(0, BLOCK_N)
        kbase = K + b * sk_b + hk * sk_h
        vbase = V + b * sk_b + hk * sk_h
        m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, D], tl.float32)
        lo, full_lo, causal_hi, hi = _tile_ranges(m0, w, T, n_max, edge, BLOCK_M, BLOCK_N)
        if LOOP1:
            n_win = tl.cdiv(hi - lo, BLOCK_N)
            n_lm = 0
            NCH: tl.constexpr = (NSET * KP + BLOCK_N - 1) // BLOCK_N  # landmark iterations
            if HAS_LM:
                n_lm = NCH
                if NCH <= 2:
                    # the chunks' positions and gates loaded before the loop: the landmark rows'
                    # addresses then depend on no load inside the loop, so the software pipeline
                    # prefetches them like the window's blocks
                    lpos0, gate0, nbc0 = _lm_chunk(LPOS, GT, bhk, NB, T, m0, SEL_BLOCK, 0, KP, NSET, BLOCK_N)
                    lpos1, gate1, nbc1 = _lm_chunk(LPOS, GT, bhk, NB, T, m0, SEL_BLOCK, NCH - 1, KP, NSET, BLOCK_N)
            for it in range(0, n_win + n_lm):
                start_n = lo + it * BLOCK_N
                offs_n = start_n + offs_n0
                if HAS_LM:
                    is_lm = it >= n_win
                    offs_c = (it - n_win) * BLOCK_N + offs_n0
                    lcol = offs_c >= 0  # a landmark iteration (it >= n_win), as a vector
                    if NCH <= 2:
                        last = offs_c >= (NCH - 1) * BLOCK_N
                        lpos = tl.where(last, lpos1, lpos0)
                        gate = tl.where(last, gate1, gate0)
                        nbc = tl.where(last, nbc1, nbc0)
                    else:  # more chunks (interpreter tests with 16-wide blocks): loaded here
                        lpos, gate, nbc = _lm_chunk(LPOS, GT, bhk, NB, T, m0, SEL_BLOCK, tl.maximum(it - n_win, 0), KP,
                                                    NSET, BLOCK_N)
                    rows = tl.where(lcol, tl.maximum(lpos, 0), offs_n)
                    rmask = lcol | (offs_n < T)
                else:
                    rows = offs_n
                    rmask = offs_n < T
                kt = tl.load(kbase + rows[:, None] * sk_t + offs_d[None, :], mask=rmask[:, None], other=0.0)
                s = tl.dot(q, tl.trans(kt), input_precision=PREC) * qk_scale
                masked = (start_n < full_lo) | (start_n >= causal_hi)
                diag = start_n >= m0
                if HAS_LM:
                    if is_lm:
                        s = s + _lm_bias(offs_m, lpos, gate, w, T, n_max, inv_edge)
                        if NSET > 1:
                            s = tl.where((offs_m // SEL_BLOCK)[:, None] == nbc[None, :], s, float("-inf"))
                        m_new, m_safe, p = _sm_step(s, m_i)
                    else:
                        m_new, m_safe, p = _fwd_win_step(s, m_i, offs_m, offs_n, w, T, n_max, inv_edge, masked, diag)
                else:
                    m_new, m_safe, p = _fwd_win_step(s, m_i, offs_m, offs_n, w, T, n_max, inv_edge, masked, diag)
                alpha = tl.exp2(m_i - m_safe)
                l_i = l_i * alpha + tl.sum(p, 1)
                vt = tl.load(vbase + rows[:, None] * sk_t + offs_d[None, :], mask=rmask[:, None], other=0.0)
                acc = acc * alpha[:, None] + tl.dot(p.to(vt.dtype), vt, input_precision=PREC)
                m_i = m_new
        for phase in tl.static_range(4 * (1 - LOOP1)):
            s_lo, s_hi = _phase_range(phase, lo, full_lo, m0, causal_hi, hi)
            for start_n in range(s_lo, s_hi, BLOCK_N):
                offs_n = start_n + offs_n0
                nmask = offs_n < T
                kt = tl.load(kbase + offs_n[:, None] * sk_t + offs_d[None, :], mask=nmask[:, None], other=0.0)
                s = tl.dot(q, tl.trans(kt), input_precision=PREC) * qk_scale
                if phase == 0 or phase == 3:
                    r, ok = _win_r(offs_m, offs_n, w, T, n_max, inv_edge)
                    s = tl.where(ok, s, float("-inf"))
                elif phase == 2:
                    s = tl.where(offs_m[:, None] >= offs_n[None, :], s, float("-inf"))
                m_new = tl.maximum(m_i, tl.max(s, 1))
                m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
                p = tl.exp2(s - m_safe[:, None])
                if phase == 0 or phase == 3:
                    p = p * r
                alpha = tl.exp2(m_i - m_safe)
                l_i = l_i * alpha + tl.sum(p, 1)
                vt = tl.load(vbase + offs_n[:, None] * sk_t + offs_d[None, :], mask=nmask[:, None], other=0.0)
                acc = acc * alpha[:, None] + tl.dot(p.to(vt.dtype), vt, input_precision=PREC)
                m_i = m_new
        if HAS_LM and not LOOP1:
            # the landmark columns in chunks of LC (register pressure); NSET > 1: the tile spans
            # NSET selection blocks, their sets side by side, each row masked to its own block's set
            for c0 in range(0, NSET * KP, LC):
                offs_c = c0 + tl.arange(0, LC)
                nbc = m0 // SEL_BLOCK + offs_c // KP
                lpos, gate, lk, lv = _lm_rows(LPOS, GT, kbase, vbase, (bhk * NB + nbc) * KP + offs_c % KP, nbc < NB,
                                              bhk, T, sk_t, offs_d)
                s = tl.dot(q, tl.trans(lk), input_precision=PREC) * qk_scale
                s = s + _lm_bias(offs_m, lpos, gate, w, T, n_max, inv_edge)
                if NSET > 1:
                    s = tl.where((offs_m // SEL_BLOCK)[:, None] == nbc[None, :], s, float("-inf"))
                m_new = tl.maximum(m_i, tl.max(s, 1))
                m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
                p = tl.exp2(s - m_safe[:, None])
                alpha = tl.exp2(m_i - m_safe)
                l_i = l_i * alpha + tl.sum(p, 1)
                acc = acc * alpha[:, None] + tl.dot(p.to(lv.dtype), lv, input_precision=PREC)
                m_i = m_new
        l_safe = tl.where(l_i > 0, l_i, 1.0)
        o = acc / l_safe[:, None]
        tl.store(O + b * so_b + h * so_h + offs_m[:, None] * so_t + offs_d[None, :], o.to(O.dtype.element_ty),
                 mask=mrow[:, None])
        tl.store(LSE + pid_bh * T + offs_m, m_i + tl.log2(l_safe), mask=mrow)

    @triton.jit
    def _dq_kernel(Q, K, V, W, GT, LPOS, DO, LSE, DELTA, DQ, DW, O, WMIN,
                   sq_b, sq_h, sq_t, sk_b, sk_h, sk_t,
                   H, G, T, NB, n_max, edge, inv_edge, qk_scale, sm_scale, SEL_BLOCK,
                   D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                   KP: tl.constexpr, HAS_LM: tl.constexpr, PREC: tl.constexpr, LC: tl.constexpr = 16,
                   FUSE_DELTA: tl.constexpr = 0, WG: tl.constexpr = 0):
        """dQ and the window-size gradient dW of one query tile (window; HAS_LM: and its landmark
        slots, the dQ part only: the landmark dK/dV/gate gradients come from _lm_bwd_kernel).
        FUSE_DELTA=1: the tile's delta = rowsum(O * dO) is computed here (32-column chunks) and
        stored for the kernels that run after this one (no separate delta pass). WG > 0 (session 7
        round 2, OPTS["dkdv_wmin"]): the minimum window of every WG rows is stored in WMIN
        [B*H, cdiv(T, WG)] for the dK/dV kernel (rows past T count as window 1: a lower bound)."""
        pid_bh, b, h, hk, bhk, m0, offs_m, offs_d, mrow, qoff, q, w = _q_tile(Q, W, sq_b, sq_h, sq_t, H, G, T,
                                                                              D, BLOCK_M)
        if WG > 0:
            tl.static_assert(BLOCK_M % WG == 0)
            ntw = (T + WG - 1) // WG
            gi = m0 // WG + tl.arange(0, BLOCK_M // WG)
            tl.store(WMIN + pid_bh * ntw + gi, tl.min(tl.reshape(w, (BLOCK_M // WG, WG)), 1), mask=gi < ntw)
        offs_n0 = tl.arange(0, BLOCK_N)
        do = tl.load(DO + qoff, mask=mrow[:, None], other=0.0)
        lse = tl.load(LSE + pid_bh * T + offs_m, mask=mrow, other=0.0)
        if FUSE_DELTA:
            delta = tl.zeros([BLOCK_M], tl.float32)
            for dc in tl.static_range(0, D, 32):
                cols = dc + tl.arange(0, 32)
                coff = b * sq_b + h * sq_h + offs_m[:, None] * sq_t + cols[None, :]
                cm = mrow[:, None] & (cols[None, :] < D)
                oc = tl.load(O + coff, mask=cm, other=0.0).to(tl.float32)
                doc = tl.load(DO + coff, mask=cm, other=0.0).to(tl.float32)
                delta += tl.sum(oc * doc, 1)
            tl.store(DELTA + pid_bh * T + offs_m, delta, mask=mrow)
        else:
            delta = tl.load(DELTA + pid_bh * T + offs_m, mask=mrow, other=0.0)
        kbase = K + b * sk_b + hk * sk_h
        vbase = V + b * sk_b + hk * sk_h
        dq = tl.zeros([BLOCK_M, D], tl.float32)
        dw = tl.zeros([BLOCK_M], tl.float32)
        lo, full_lo, causal_hi, hi = _tile_ranges(m0, w, T, n_max, edge, BLOCK_M, BLOCK_N)
        for phase in tl.static_range(4):
            s_lo, s_hi = _phase_range(phase, lo, full_lo, m0, causal_hi, hi)
            for start_n in range(s_lo, s_hi, BLOCK_N):
                offs_n = start_n + offs_n0
                nmask = offs_n < T
                kt = tl.load(kbase + offs_n[:, None] * sk_t + offs_d[None, :], mask=nmask[:, None], other=0.0)
                vt = tl.load(vbase + offs_n[:, None] * sk_t + offs_d[None, :], mask=nmask[:, None], other=0.0)
                s = tl.dot(q, tl.trans(kt), input_precision=PREC) * qk_scale
                dp = tl.dot(do, tl.trans(vt), input_precision=PREC)
                if phase == 0 or phase == 3:
                    r, ok = _win_r(offs_m, offs_n, w, T, n_max, inv_edge)
                    p0 = tl.exp2(tl.where(ok, s, float("-inf")) - lse[:, None])
                    g0 = p0 * (dp - delta[:, None])
                    ds = g0 * r
                    # d ln r / dw = 1 / (edge r) on the ramp: p r / (edge r) = p0 / edge
                    dw += tl.sum(tl.where(r < 1.0, g0, 0.0), 1)
                elif phase == 2:
                    p = tl.exp2(tl.where(offs_m[:, None] >= offs_n[None, :], s, float("-inf")) - lse[:, None])
                    ds = p * (dp - delta[:, None])
                else:
                    p = tl.exp2(s - lse[:, None])
                    ds = p * (dp - delta[:, None])
                dq += tl.dot(ds.to(kt.dtype), kt, input_precision=PREC)
        if HAS_LM:
            nb = m0 // SEL_BLOCK
            for c0 in range(0, KP, LC):  # chunks of LC landmarks (register pressure)
                offs_k = c0 + tl.arange(0, LC)
                lpos, gate, lk, lv = _lm_rows(LPOS, GT, kbase, vbase, (bhk * NB + nb) * KP + offs_k, offs_k < KP,
                                              bhk, T, sk_t, offs_d)
                s = tl.dot(q, tl.trans(lk), input_precision=PREC) * qk_scale
                s = s + _lm_bias(offs_m, lpos, gate, w, T, n_max, inv_edge)
                p = tl.exp2(s - lse[:, None])
                dp = tl.dot(do, tl.trans(lv), input_precision=PREC)
                ds = p * (dp - delta[:, None])
                dq += tl.dot(ds.to(lk.dtype), lk, input_precision=PREC)
        tl.store(DQ + qoff, (dq * sm_scale).to(DQ.dtype.element_ty), mask=mrow[:, None])
        tl.store(DW + pid_bh * T + offs_m, dw * inv_edge, mask=mrow)

    @triton.jit
    def _lm_bwd_kernel(Q, K, V, W, E, LPOS, DO, LSE, DELTA, DK, DV, DGT,
                       sq_b, sq_h, sq_t, sk_b, sk_h, sk_t,
                       H, G, T, NB, NT, n_max, edge, inv_edge, qk_scale, sm_scale, SEL_BLOCK,
                       D: tl.constexpr, BLOCK_M: tl.constexpr, KP: tl.constexpr, LC: tl.constexpr,
                       SEG: tl.constexpr, PREC: tl.constexpr):
        """Landmark dK, dV and energy gradients (the fallback of _lm_bwd_t_kernel). Program (segment,
        slot chunk, batch*kv head) walks SEG query tiles (BLOCK_M rows, within one selection block
        each) in order, for LC slots of the tiles' landmark sets: recomputes P and dS against the
        slots' landmarks (every head of the kv group) and sums dS^T Q, P^T dO and the gate gradient
        per slot in registers. A slot's sums are added (atomically) into its token's dK / dV rows
        (after the window kernel stored them) and into the energy gradient when the slot's token
        changes at the next block, and at the segment's end, so a landmark run spanning segments
        gets one add per segment."""
        pid_s = tl.program_id(0)
        pid_c = tl.program_id(1)
        bhk = tl.program_id(2)
        hkv = H // G
        b = bhk // hkv
        hk = bhk % hkv
        offs_k = pid_c * LC + tl.arange(0, LC)
        offs_d = tl.arange(0, D)
        offs_r = tl.arange(0, BLOCK_M)
        kbase = K + b * sk_b + hk * sk_h
        vbase = V + b * sk_b + hk * sk_h
        acc_k = tl.zeros([LC, D], tl.float32)
        acc_v = tl.zeros([LC, D], tl.float32)
        acc_g = tl.zeros([LC], tl.float32)
        i0 = pid_s * SEG
        i1 = tl.minimum(i0 + SEG, NT)
        for i in range(i0, i1):
            m0 = i * BLOCK_M
            nb = m0 // SEL_BLOCK
            offs_m = m0 + offs_r
            mrow = offs_m < T
            lpos = tl.load(LPOS + (bhk * NB + nb) * KP + offs_k)
            lp0 = tl.maximum(lpos, 0)
            et = tl.load(E + bhk * T + lp0).to(tl.float32)
            gate = _logsigmoid(et)
            lk = tl.load(kbase + lp0[:, None] * sk_t + offs_d[None, :])
            lv = tl.load(vbase + lp0[:, None] * sk_t + offs_d[None, :])
            for g in range(0, G):
                h = hk * G + g
                bh = b * H + h
                qoff = b * sq_b + h * sq_h + offs_m[:, None] * sq_t + offs_d[None, :]
                q = tl.load(Q + qoff, mask=mrow[:, None], other=0.0)
                do = tl.load(DO + qoff, mask=mrow[:, None], other=0.0)
                w = tl.load(W + bh * T + offs_m, mask=mrow, other=1.0)
                lse = tl.load(LSE + bh * T + offs_m, mask=mrow, other=0.0)
                delta = tl.load(DELTA + bh * T + offs_m, mask=mrow, other=0.0)
                s = tl.dot(q, tl.trans(lk), input_precision=PREC) * qk_scale
                s = s + _lm_bias(offs_m, lpos, gate, w, T, n_max, inv_edge)
                p = tl.exp2(s - lse[:, None])
                dp = tl.dot(do, tl.trans(lv), input_precision=PREC)
                ds = p * (dp - delta[:, None])
                acc_k += tl.dot(tl.trans(ds.to(q.dtype)), q, input_precision=PREC)
                acc_v += tl.dot(tl.trans(p.to(do.dtype)), do, input_precision=PREC)
                acc_g += tl.sum(ds, 0)
            # flush the slots whose token changes after this tile (or at the segment's end)
            last = (i + 1 == i1) | ((i + 1) * BLOCK_M >= (nb + 1) * SEL_BLOCK)
            nxt = tl.load(LPOS + (bhk * NB + tl.minimum(nb + 1, NB - 1)) * KP + offs_k)
            nxt = tl.where((nb + 1 < NB) & (i + 1 < i1), nxt, -2)
            nxt = tl.where(last, nxt, lpos)  # not the block's last tile: no flush
            fl = (nxt != lpos) & (lpos >= 0)
            rows = b * sk_b + hk * sk_h + lp0[:, None] * sk_t + offs_d[None, :]
            fl2 = tl.broadcast_to(fl[:, None], (LC, D))
            tl.atomic_add(DK + rows, (acc_k * sm_scale).to(DK.dtype.element_ty), mask=fl2, sem="relaxed")
            tl.atomic_add(DV + rows, acc_v.to(DV.dtype.element_ty), mask=fl2, sem="relaxed")
            # d logsigmoid(e) / de = sigmoid(-e)
            tl.atomic_add(DGT + bhk * T + lp0, acc_g / (1.0 + tl.exp(et)), mask=fl, sem="relaxed")
            acc_k = tl.where(fl[:, None], 0.0, acc_k)
            acc_v = tl.where(fl[:, None], 0.0, acc_v)
            acc_g = tl.where(fl, 0.0, acc_g)

    @triton.jit
    def _win_rT(offs_n, offs_m, w, T, n_max, inv_edge):
        """_win_r transposed: [keys, queries]."""
        dd = offs_m[None, :] - offs_n[:, None]
        r = (w[None, :] - dd.to(tl.float32) - 0.5) * inv_edge + 0.5
        r = tl.minimum(r, 1.0)
        ok = (dd >= 0) & (dd < n_max) & (r > 0) & (offs_n[:, None] < T) & (offs_m[None, :] < T)
        return tl.where(ok, r, 0.0), ok

    @triton.jit
    def _dkdv_kernel(Q, K, V, W, DO, LSE, DELTA, DK, DV, WMIN,
                     sq_b, sq_h, sq_t, sk_b, sk_h, sk_t,
                     H, G, T, n_max, edge, inv_edge, qk_scale, sm_scale,
                     D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, PREC: tl.constexpr,
                     TRANS: tl.constexpr = 0, WG: tl.constexpr = 0):
        """Window dK, dV of one key tile (BLOCK_N keys), over the query tiles that can see it.
        TRANS=1: scores computed transposed ([keys, queries]: keys are the dots' M dimension), so
        P^T and dS^T feed the dV and dK products straight from the accumulator layout; TRANS=0:
        [queries, keys] scores, transposed for those products (the autotuner picks).
        WG > 0 (OPTS["dkdv_wmin"]): a query tile's smallest window comes from the dQ kernel's WMIN
        (BLOCK_M // WG scalar loads) instead of a cross-warp reduction of its rows' windows in
        every iteration."""
        pid_n = tl.program_id(0)
        pid_bh = tl.program_id(1)  # over batch * kv heads
        hkv = H // G
        b = pid_bh // hkv
        hk = pid_bh % hkv
        n0 = pid_n * BLOCK_N
        offs_n = n0 + tl.arange(0, BLOCK_N)
        offs_d = tl.arange(0, D)
        offs_m0 = tl.arange(0, BLOCK_M)
        nmask = offs_n < T
        koff = b * sk_b + hk * sk_h + offs_n[:, None] * sk_t + offs_d[None, :]
        kt = tl.load(K + koff, mask=nmask[:, None], other=0.0)
        vt = tl.load(V + koff, mask=nmask[:, None], other=0.0)
        dk = tl.zeros([BLOCK_N, D], tl.float32)
        dv = tl.zeros([BLOCK_N, D], tl.float32)
        m_lo = (n0 // BLOCK_M) * BLOCK_M
        m_hi = tl.minimum(n0 + BLOCK_N - 1 + n_max, T)
        for g in range(0, G):
            h = hk * G + g
            bh = b * H + h
            for start_m in range(m_lo, m_hi, BLOCK_M):
                offs_m = start_m + offs_m0
                mrow = offs_m < T
                qoff = b * sq_b + h * sq_h + offs_m[:, None] * sq_t + offs_d[None, :]
                q = tl.load(Q + qoff, mask=mrow[:, None], other=0.0)
                do = tl.load(DO + qoff, mask=mrow[:, None], other=0.0)
                w = tl.load(W + bh * T + offs_m, mask=mrow, other=1.0)
                lse = tl.load(LSE + bh * T + offs_m, mask=mrow, other=0.0)
                delta = tl.load(DELTA + bh * T + offs_m, mask=mrow, other=0.0)
                # full block: every (key, row) is causal, inside n_max and at full weight
                if WG > 0:
                    tl.static_assert(BLOCK_M % WG == 0)
                    ntw = (T + WG - 1) // WG
                    wlo = tl.load(WMIN + bh * ntw + start_m // WG)
                    for gi in tl.static_range(1, BLOCK_M // WG):
                        wlo = tl.minimum(wlo, tl.load(WMIN + bh * ntw + tl.minimum(start_m // WG + gi, ntw - 1)))
                else:
                    wlo = tl.min(w, 0)
                fr = tl.minimum(tl.floor(wlo - 0.5 - edge * 0.5).to(tl.int32) - 1, n_max - 1)
                # edge: some pair beyond full weight (or rows past T): the soft-window weight;
                # diag (else): some pair non-causal, the rest at full weight: the causal test only
                on_edge = (start_m + BLOCK_M - 1 - n0 > fr) | (start_m + BLOCK_M > T)
                on_diag = start_m < n0 + BLOCK_N - 1
                if TRANS:
                    sT = tl.dot(kt, tl.trans(q), input_precision=PREC) * qk_scale  # [BN, BM]
                    if on_edge:
                        rT, okT = _win_rT(offs_n, offs_m, w, T, n_max, inv_edge)
                        pT = tl.exp2(tl.where(okT, sT, float("-inf")) - lse[None, :]) * rT
                    elif on_diag:
                        pT = tl.exp2(tl.where(offs_m[None, :] >= offs_n[:, None], sT, float("-inf")) - lse[None, :])
                    else:
                        pT = tl.exp2(sT - lse[None, :])
                    dv += tl.dot(pT.to(do.dtype), do, input_precision=PREC)
                    dpT = tl.dot(vt, tl.trans(do), input_precision=PREC)
                    dsT = pT * (dpT - delta[None, :])
                    dk += tl.dot(dsT.to(q.dtype), q, input_precision=PREC)
                else:
                    s = tl.dot(q, tl.trans(kt), input_precision=PREC) * qk_scale  # [BM, BN]
                    if on_edge:
                        r, ok = _win_r(offs_m, offs_n, w, T, n_max, inv_edge)
                        p = tl.exp2(tl.where(ok, s, float("-inf")) - lse[:, None]) * r
                    elif on_diag:
                        p = tl.exp2(tl.where(offs_m[:, None] >= offs_n[None, :], s, float("-inf")) - lse[:, None])
                    else:
                        p = tl.exp2(s - lse[:, None])
                    dv += tl.dot(tl.trans(p.to(do.dtype)), do, input_precision=PREC)
                    dp = tl.dot(do, tl.trans(vt), input_precision=PREC)
                    ds = p * (dp - delta[:, None])
                    dk += tl.dot(tl.trans(ds.to(q.dtype)), q, input_precision=PREC)
        tl.store(DK + koff, (dk * sm_scale).to(DK.dtype.element_ty), mask=nmask[:, None])
        tl.store(DV + koff, dv.to(DV.dtype.element_ty), mask=nmask[:, None])

    @triton.jit
    def _delta_kernel(O, DO, DELTA, N, D: tl.constexpr, BLOCK: tl.constexpr):
        rows = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        cols = tl.arange(0, D)
        m = rows < N
        o = tl.load(O + rows[:, None] * D + cols[None, :], mask=m[:, None], other=0.0).to(tl.float32)
        do = tl.load(DO + rows[:, None] * D + cols[None, :], mask=m[:, None], other=0.0).to(tl.float32)
        tl.store(DELTA + rows, tl.sum(o * do, 1), mask=m)

    # ---- session 6: landmark kernels in the transposed ([slots, queries]) formulation ----

    @triton.jit
    def _lm_biasT(offs_m, lpos, gate, w, T, n_max, inv_edge):
        """_lm_bias transposed: [slots, queries] (log2 units)."""
        dd = offs_m[None, :] - lpos[:, None]
        r = (w[None, :] - dd.to(tl.float32) - 0.5) * inv_edge + 0.5
        inwin = (dd >= 0) & (dd < n_max) & (r > 0)
        out = inwin | (offs_m[None, :] >= T) | (lpos[:, None] < 0)
        return tl.where(out, float("-inf"), gate[:, None] * 1.4426950408889634)

    @triton.jit
    def _lm_bwd_tile(Q, W, DO, LSE, DELTA, DQ, lk, lv, lpos, gate, acc_k, acc_v, acc_g,
                     b, h, H, T, n_max, inv_edge, qk_scale, sm_scale, m0, sq_b, sq_h, sq_t,
                     D: tl.constexpr, BLOCK_M: tl.constexpr, PREC: tl.constexpr, ADD_DQ: tl.constexpr,
                     LEAN: tl.constexpr = 0):
        """One query tile (BLOCK_M rows of head h) against the slots' landmarks, transposed.
        LEAN (session 8): the landmark bias as one select inside the exp2 (rows past T need no test:
        their dO is zero, so dS is too; landmarks precede the block: d >= 0), and sm_scale folded
        into dS, so the sums and the landmark dQ come out scaled (the flush then skips a multiply)."""
        offs_m = m0 + tl.arange(0, BLOCK_M)
        offs_d = tl.arange(0, D)
        mrow = offs_m < T
        bh = b * H + h
        qoff = b * sq_b + h * sq_h + offs_m[:, None] * sq_t + offs_d[None, :]
        q = tl.load(Q + qoff, mask=mrow[:, None], other=0.0)
        do = tl.load(DO + qoff, mask=mrow[:, None], other=0.0)
        w = tl.load(W + bh * T + offs_m, mask=mrow, other=1.0)
        lse = tl.load(LSE + bh * T + offs_m, mask=mrow, other=0.0)
        delta = tl.load(DELTA + bh * T + offs_m, mask=mrow, other=0.0)
        if LEAN:
            sT = tl.dot(lk, tl.trans(q), input_precision=PREC)  # [LC, BM]
            dd = offs_m[None, :] - lpos[:, None]
            r = ((w - 0.5) * inv_edge + 0.5)[None, :] - dd.to(tl.float32) * inv_edge
            out = ((dd < n_max) & (r > 0)) | (lpos[:, None] < 0)
            pT = tl.exp2(tl.where(out, float("-inf"),
                                  sT * qk_scale + (gate * 1.4426950408889634)[:, None] - lse[None, :]))
        else:
            sT = tl.dot(lk, tl.trans(q), input_precision=PREC) * qk_scale  # [LC, BM]
            sT = sT + _lm_biasT(offs_m, lpos, gate, w, T, n_max, inv_edge)
            pT = tl.exp2(sT - lse[None, :])
        acc_v += tl.dot(pT.to(do.dtype), do, input_precision=PREC)
        dpT = tl.dot(lv, tl.trans(do), input_precision=PREC)
        if LEAN:
            dsT = pT * (dpT * sm_scale - (delta * sm_scale)[None, :])
        else:
            dsT = pT * (dpT - delta[None, :])
        acc_k += tl.dot(dsT.to(q.dtype), q, input_precision=PREC)
        acc_g += tl.sum(dsT, 1)
        if ADD_DQ:
            dql = tl.dot(tl.trans(dsT.to(lk.dtype)), lk, input_precision=PREC)  # [BM, D]
            if not LEAN:
                dql = dql * sm_scale
            dq0 = tl.load(DQ + qoff, mask=mrow[:, None], other=0.0)
            tl.store(DQ + qoff, (dq0.to(tl.float32) + dql).to(DQ.dtype.element_ty), mask=mrow[:, None])
        return acc_k, acc_v, acc_g

    @triton.jit
    def _lm_bwd_t_kernel(Q, K, V, W, E, LPOS, DO, LSE, DELTA, DK, DV, DGT, DQ,
                         sq_b, sq_h, sq_t, sk_b, sk_h, sk_t,
                         H, G, T, NB, n_max, inv_edge, qk_scale, sm_scale, SEL_BLOCK,
                         D: tl.constexpr, BLOCK_M: tl.constexpr, KP: tl.constexpr, LC: tl.constexpr,
                         SEG: tl.constexpr, PREC: tl.constexpr, ADD_DQ: tl.constexpr = 0, FLAT: tl.constexpr = 0,
                         LEAN: tl.constexpr = 0):
        """Landmark backward, transposed like _dkdv_kernel's TRANS=1: the LC slots are the dots' M
        dimension, so P^T dO and dS^T Q come straight from the accumulator layout (no transposes
        of the [queries, slots] tiles). Program (segment of SEG selection blocks, slot chunk,
        batch*kv head): per block, the slots' token rows are loaded once and every BLOCK_M-row
        query tile of the block (every head of the kv group) adds into the per-slot sums in
        registers; a slot's sums are added atomically into its token's dK / dV rows and energy
        gradient when the next block's set has another token in the slot, and at the segment's end.
        ADD_DQ (LC == KP: one program holds every slot of a tile): the tile's landmark dQ = dS K_lm
        is added here into DQ (read, add, store: no atomics), so the dQ kernel runs without its
        landmark pass."""
        pid_s = tl.program_id(0)
        pid_c = tl.program_id(1)
        bhk = tl.program_id(2)
        hkv = H // G
        b = bhk // hkv
        hk = bhk % hkv
        offs_k = pid_c * LC + tl.arange(0, LC)
        offs_d = tl.arange(0, D)
        kbase = K + b * sk_b + hk * sk_h
        vbase = V + b * sk_b + hk * sk_h
        acc_k = tl.zeros([LC, D], tl.float32)
        acc_v = tl.zeros([LC, D], tl.float32)
        acc_g = tl.zeros([LC], tl.float32)
        b0 = pid_s * SEG
        b1 = tl.minimum(b0 + SEG, NB)
        lpos = tl.load(LPOS + (bhk * NB + b0) * KP + offs_k)
        for nb in range(b0, b1):
            lp0 = tl.maximum(lpos, 0)
            et = tl.load(E + bhk * T + lp0).to(tl.float32)
            gate = _logsigmoid(et)
            lk = tl.load(kbase + lp0[:, None] * sk_t + offs_d[None, :])
            lv = tl.load(vbase + lp0[:, None] * sk_t + offs_d[None, :])
            # the next block's set: the flush test after this block
            nxt = tl.load(LPOS + (bhk * NB + tl.minimum(nb + 1, NB - 1)) * KP + offs_k)
            m_end = tl.minimum((nb + 1) * SEL_BLOCK, T)
            if FLAT:  # BLOCK_M == SEL_BLOCK and G == 1: one tile per block, a flat loop
                acc_k, acc_v, acc_g = _lm_bwd_tile(Q, W, DO, LSE, DELTA, DQ, lk, lv, lpos, gate, acc_k, acc_v, acc_g,
                                                   b, hk, H, T, n_max, inv_edge, qk_scale, sm_scale,
                                                   nb * SEL_BLOCK, sq_b, sq_h, sq_t, D, BLOCK_M, PREC, ADD_DQ, LEAN)
            else:
                for m0 in range(nb * SEL_BLOCK, m_end, BLOCK_M):
                    for g in range(0, G):
                        acc_k, acc_v, acc_g = _lm_bwd_tile(Q, W, DO, LSE, DELTA, DQ, lk, lv, lpos, gate, acc_k, acc_v,
                                                           acc_g, b, hk * G + g, H, T, n_max, inv_edge, qk_scale,
                                                           sm_scale, m0, sq_b, sq_h, sq_t, D, BLOCK_M, PREC, ADD_DQ,
                                                           LEAN)
            nxt = tl.where(nb + 1 < b1, nxt, -2)
            fl = (nxt != lpos) & (lpos >= 0)
            # flushed without a test for "any slot changed?" (session 6: that per-block cross-warp
            # test and branch made the kernel slower, 585 vs 391 us at 32K)
            rows = b * sk_b + hk * sk_h + lp0[:, None] * sk_t + offs_d[None, :]
            fl2 = tl.broadcast_to(fl[:, None], (LC, D))
            if LEAN:  # the sums carry sm_scale already
                tl.atomic_add(DK + rows, acc_k.to(DK.dtype.element_ty), mask=fl2, sem="relaxed")
                gsc = sm_scale
            else:
                tl.atomic_add(DK + rows, (acc_k * sm_scale).to(DK.dtype.element_ty), mask=fl2, sem="relaxed")
                gsc = 1.0
            tl.atomic_add(DV + rows, acc_v.to(DV.dtype.element_ty), mask=fl2, sem="relaxed")
            # d logsigmoid(e) / de = sigmoid(-e)
            tl.atomic_add(DGT + bhk * T + lp0, acc_g / (gsc * (1.0 + tl.exp(et))), mask=fl, sem="relaxed")
            acc_k = tl.where(fl[:, None], 0.0, acc_k)
            acc_v = tl.where(fl[:, None], 0.0, acc_v)
            acc_g = tl.where(fl, 0.0, acc_g)
            lpos = nxt

    @triton.jit
    def _fwd_lm_kernel(Q, K, V, W, GT, LPOS, O, LSE,
                       sq_b, sq_h, sq_t, sk_b, sk_h, sk_t, so_b, so_h, so_t,
                       H, G, T, NB, n_max, inv_edge, qk_scale, SEL_BLOCK,
                       D: tl.constexpr, BLOCK_M: tl.constexpr, KP: tl.constexpr, PREC: tl.constexpr,
                       LC: tl.constexpr = 32):
        """The forward's landmark pass as its own kernel (OPTS["fwd_split"]): O and LSE hold the
        window pass's normalised output and log-sum-exp (log2); (m, l, acc) = (lse, 1, O) is the
        same online-softmax state, continued over the tile's landmark columns (chunks of LC) and
        stored back. The window kernel needs no landmark set, so the selection can run beside it
        (another stream). BLOCK_M divides the selection block."""
        pid_bh, b, h, hk, bhk, m0, offs_m, offs_d, mrow, qoff, q, w = _q_tile(Q, W, sq_b, sq_h, sq_t, H, G, T,
                                                                              D, BLOCK_M)
        nb = m0 // SEL_BLOCK
        ooff = b * so_b + h * so_h + offs_m[:, None] * so_t + offs_d[None, :]
        acc = tl.load(O + ooff, mask=mrow[:, None], other=0.0).to(tl.float32)
        m_i = tl.load(LSE + pid_bh * T + offs_m, mask=mrow, other=float("-inf"))
        l_i = tl.where(m_i == float("-inf"), 0.0, 1.0)
        kbase = K + b * sk_b + hk * sk_h
        vbase = V + b * sk_b + hk * sk_h
        for c0 in range(0, KP, LC):
            offs_c = c0 + tl.arange(0, LC)
            lpos, gate, lk, lv = _lm_rows(LPOS, GT, kbase, vbase, (bhk * NB + nb) * KP + offs_c, offs_c < KP,
                                          bhk, T, sk_t, offs_d)
            s = tl.dot(q, tl.trans(lk), input_precision=PREC) * qk_scale
            s = s + _lm_bias(offs_m, lpos, gate, w, T, n_max, inv_edge)
            m_new = tl.maximum(m_i, tl.max(s, 1))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
            p = tl.exp2(s - m_safe[:, None])
            alpha = tl.exp2(m_i - m_safe)
            l_i = l_i * alpha + tl.sum(p, 1)
            acc = acc * alpha[:, None] + tl.dot(p.to(lv.dtype), lv, input_precision=PREC)
            m_i = m_new
        l_safe = tl.where(l_i > 0, l_i, 1.0)
        tl.store(O + ooff, (acc / l_safe[:, None]).to(O.dtype.element_ty), mask=mrow[:, None])
        tl.store(LSE + pid_bh * T + offs_m, m_i + tl.log2(l_safe), mask=mrow)
