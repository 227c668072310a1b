"""Triton helpers shared by the spectral decode kernels (v1, v2, v3): programmatic dependent launch
(grid dependency control), the exact hot window's online softmax, the hot-window program and the partials'
store (session 7: shared by v2 and v3 instead of near-copies). The host side is ``kernel.py``."""

from __future__ import annotations

try:
    import triton
    import triton.language as tl

    HAS_TRITON = True
except ImportError:  # pragma: no cover - CPU users without triton
    HAS_TRITON = False
HAS_GDC = False

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

    @triton.jit
    def _store_partial(PM, PL, PACC, row, m, l, acc, rmask, offs_dv, dvmask, DV: tl.constexpr):
        """Partial rows ``row`` [R] of a split (log2-domain max m, sum l, unnormalised output acc [R, DVP])
        into the workspace the merge reads (rows [B*Hk, n_splits, GQ]); rows outside rmask are skipped."""
        tl.store(PM + row, m, mask=rmask)
        tl.store(PL + row, l, mask=rmask)
        tl.store(PACC + row[:, None] * DV + offs_dv[None, :], acc, mask=rmask[:, None] & dvmask[None, :])

    @triton.jit
    def _hot_program(Q, HKP, HVP, PM, PL, PACC, pid_bh, pid_s, n_comp, n_splits, hot_len, hot_cap, qk_scale,
                     G: tl.constexpr, GP: tl.constexpr, GQ: tl.constexpr, D: tl.constexpr, DP: tl.constexpr,
                     DV: tl.constexpr, DVP: tl.constexpr, HOT_PER_SPLIT: tl.constexpr, HT: tl.constexpr,
                     LOWP: tl.constexpr, PREC: tl.constexpr):
        """A hot-window program of v2 / v3 (split pid_s >= n_comp): the G query heads of kv head pid_bh over
        its part of the exact hot tokens, stored as that split's partial rows."""
        offs_g = tl.arange(0, GP)
        offs_d = tl.arange(0, DP)
        offs_dv = tl.arange(0, DVP)
        gmask = offs_g < G
        dmask = offs_d < D
        dvmask = offs_dv < DV
        q = tl.load(Q + (pid_bh * G + offs_g)[:, None] * D + offs_d[None, :], mask=gmask[:, None] & dmask[None, :],
                    other=0.0)
        if not LOWP:
            q = q.to(tl.float32)
        m = tl.full([GP], -1.0e30, tl.float32)
        l = tl.zeros([GP], tl.float32)
        acc = tl.zeros([GP, DVP], tl.float32)
        m, l, acc = _hot_window(q, HKP, HVP, (pid_s - n_comp) * HOT_PER_SPLIT, hot_len, pid_bh * hot_cap, offs_d,
                                offs_dv, dmask, dvmask, qk_scale, m, l, acc, HOT_PER_SPLIT, HT, D, DV, LOWP, PREC)
        _store_partial(PM, PL, PACC, (pid_bh * n_splits + pid_s) * GQ + offs_g, m, l, acc, gmask, offs_dv, dvmask, DV)
