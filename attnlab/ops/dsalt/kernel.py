"""DSALT Triton kernels: forward and backward with one online softmax over window + landmarks.

Pipeline (``dsalt_triton``):

0. **Landmark sets** (``_select_kernel``, one program per (batch, kv head)): the causal sets
   (block b: top-k rank keys among tokens before b * block) with *stable slots*: blocks are
   streamed in order, a block's candidates inserted best first, each replacing the current
   minimum, so a token keeps its slot from insertion to eviction and never returns (the sets are
   prefix top-k's). The rank keys are computed in the kernel from the energies (int32 when
   T <= 65536); they are read a chunk of blocks at a time (prefetched) and blocks whose best key
   cannot enter the set are skipped with one vector test, so the serial part costs per
   *inserting* block, not per block. Output: landmark positions [B, Hk, NB, KP] int32 (-1 empty).
1. **Forward** (grid: query tiles x batch*heads). A query tile of BLOCK_M rows lies in one
   selection block, so all its rows share one landmark set (a 128-row tile over two 64-token
   blocks, NSET = 2, reads both sets and masks each row to its own). The tile scans the window's K/V
   blocks (from the earliest key any row can reach, from the tile's largest window, to the
   diagonal). Blocks where every (row, key) pair is inside every row's full-weight window run
   with no mask at all; only the outer edge and the diagonal compute the soft-edge weight r,
   which multiplies the probabilities (p = 2^(s - m) * r: no logarithm per element); diagonal
   blocks where every causal pair is at full weight (the usual case: windows longer than a tile)
   take the causal test only (also in the dQ and dK/dV kernels). Then one
   pass over the tile's landmark K/V (rows loaded by position straight from K/V, in chunks of
   LC = 32 columns: one 64-column pass made the kernel spill registers): bias logsigmoid(e_j)
   (the gate, computed in the kernel), -inf where the landmark is inside the row's soft window. Both
   passes feed one running max / sum (exp2 domain); the tile stores O and the log-sum-exp.
   Scattered landmarks therefore never turn window blocks into partial blocks.
2. **Backward**: ``_dq_kernel`` (per query tile) computes the tile's delta = rowsum(O * dO) (stored
   for the kernels after it; ``OPTS["fuse_delta"]=False``: the separate ``_delta_kernel``),
   recomputes P and accumulates dQ (window and landmarks) and the window-size gradient dW
   (d ln r / dw = 1 / (edge r) on the ramp, so the term is p / r / edge = 2^(s-lse) / edge: no
   division); ``_dkdv_kernel`` (per key tile, looping over the heads of its kv group) stores the
   window part of dK and dV (no atomics); ``_lm_bwd_kernel`` (per segment of query tiles x chunk of
   slots x batch*kv head) recomputes P and dS against the slots' landmarks, sums dS^T Q, P^T dO and
   the gate gradient per slot in registers and adds them atomically into the token's dK/dV rows and
   energy gradient (gate' = sigmoid(-e) times the sum) whenever the slot's token changes and at the
   segment's end. ``OPTS["lm_bwd"] = "reduce"`` (and the fallback if that kernel fails to compile):
   the dQ kernel also stores per-tile partial dK_lm, dV_lm and gate gradients and
   ``_lm_reduce_kernel`` adds them: one program per (batch*kv head, slot, D chunk) walks its slot
   column a chunk of blocks at a time; with stable slots each landmark token is one contiguous run
   of one column, summed by a segmented scan and written once (no atomics, no sort).

Launches go through ``attnlab.ops.launch_replay.ReplayLauncher`` (the compiled launcher is called
directly from the second launch of a shape on).

Options measured in session 5b and kept off (no gain beyond noise on the H100; tested):
``OPTS["lm_pre_fwd"/"lm_pre_dq"/"lm_pre_bwd"]`` load the landmark positions / gates (1) and K/V rows
(2) ahead in the landmark passes; ``OPTS["sel_chunk"]`` runs the selection in parallel chunks of
candidate blocks (two passes + a torch start-set step; slots stable only within a chunk).
"""

from __future__ import annotations

import math
import os

import torch
import torch.nn.functional as F

from ..launch_replay import ReplayLauncher
from .reference import INVALID_KEY, check_args, key_positions, select_landmarks

try:
    import triton
    import triton.language as tl

    HAVE_TRITON = True
except ImportError:  # pragma: no cover
    HAVE_TRITON = False

LOG2E = 1.4426950408889634


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


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
    def _fwd_kernel(Q, K, V, W, GT, LPOS, O, LSE,
                    sq_b, sq_h, sq_t, sk_b, sk_h, sk_t, so_b, so_h, so_t,
                    H, G, T, NB, n_max, edge, inv_edge, qk_scale, SEL_BLOCK,
                    D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                    KP: tl.constexpr, HAS_LM: tl.constexpr, PREC: tl.constexpr, NSET: tl.constexpr = 1,
                    LC: tl.constexpr = 16, PRE: tl.constexpr = 0):
        """PRE=1: the landmark pass's positions and gates are loaded ahead (the first chunk's at
        program start, behind the window loop; the next chunk's while the current one computes);
        PRE=2: also the next chunk's K/V rows."""
        pid_m = tl.program_id(0)
        pid_bh = tl.program_id(1)
        b = pid_bh // H
        h = pid_bh % H
        hk = h // G
        bhk = b * (H // G) + hk
        m0 = pid_m * BLOCK_M
        offs_m = m0 + tl.arange(0, BLOCK_M)
        offs_d = tl.arange(0, D)
        offs_n0 = tl.arange(0, BLOCK_N)
        mrow = offs_m < T
        q = tl.load(Q + b * sq_b + h * sq_h + offs_m[:, None] * sq_t + offs_d[None, :], mask=mrow[:, None], other=0.0)
        w = tl.load(W + pid_bh * T + offs_m, mask=mrow, other=1.0)
        kbase = K + b * sk_b + hk * sk_h
        vbase = V + b * sk_b + hk * sk_h
        m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, D], tl.float32)
        if HAS_LM and PRE > 0:
            # the first chunk's landmark positions and gates, loaded now: their latency hides
            # behind the window loop
            offs_c = tl.arange(0, LC)
            nbc = m0 // SEL_BLOCK + offs_c // KP
            lpos_n = tl.load(LPOS + (bhk * NB + nbc) * KP + offs_c % KP, mask=nbc < NB, other=-1)
            et_n = tl.load(GT + bhk * T + tl.maximum(lpos_n, 0))
        lo, full_lo, causal_hi, hi = _tile_ranges(m0, w, T, n_max, edge, BLOCK_M, BLOCK_N)
        for phase in tl.static_range(4):
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
        if HAS_LM:
            # the landmark columns in chunks of LC (register pressure); NSET > 1: the tile spans
            # NSET selection blocks, their sets side by side, each row masked to its own block's set
            if PRE == 2:
                lk_n = tl.load(kbase + tl.maximum(lpos_n, 0)[:, None] * sk_t + offs_d[None, :])
                lv_n = tl.load(vbase + tl.maximum(lpos_n, 0)[:, None] * sk_t + offs_d[None, :])
            for c0 in range(0, NSET * KP, LC):
                offs_c = c0 + tl.arange(0, LC)
                nbc = m0 // SEL_BLOCK + offs_c // KP
                if PRE > 0:
                    lpos = lpos_n
                    lp0 = tl.maximum(lpos, 0)
                    gate = _logsigmoid(et_n.to(tl.float32))
                    if PRE == 2:
                        lk = lk_n
                        lv = lv_n
                    else:
                        lk = tl.load(kbase + lp0[:, None] * sk_t + offs_d[None, :])
                        lv = tl.load(vbase + lp0[:, None] * sk_t + offs_d[None, :])
                    # the next chunk's positions and gates (and rows), loaded while this one computes
                    offs_c2 = offs_c + LC
                    nbc2 = m0 // SEL_BLOCK + offs_c2 // KP
                    lpos_n = tl.load(LPOS + (bhk * NB + nbc2) * KP + offs_c2 % KP,
                                     mask=(nbc2 < NB) & (offs_c2 < NSET * KP), other=-1)
                    et_n = tl.load(GT + bhk * T + tl.maximum(lpos_n, 0))
                    if PRE == 2:
                        lk_n = tl.load(kbase + tl.maximum(lpos_n, 0)[:, None] * sk_t + offs_d[None, :])
                        lv_n = tl.load(vbase + tl.maximum(lpos_n, 0)[:, None] * sk_t + offs_d[None, :])
                else:
                    lpos = tl.load(LPOS + (bhk * NB + nbc) * KP + offs_c % KP, mask=nbc < NB, other=-1)
                    lp0 = tl.maximum(lpos, 0)
                    gate = _logsigmoid(tl.load(GT + bhk * T + lp0).to(tl.float32))
                    # landmark K/V rows loaded by position (no gathered copy)
                    lk = tl.load(kbase + lp0[:, None] * sk_t + offs_d[None, :])
                    lv = tl.load(vbase + lp0[:, None] * sk_t + offs_d[None, :])
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
    def _dq_kernel(Q, K, V, W, GT, LPOS, DO, LSE, DELTA, DQ, DW, DLK, DLV, DGATE, O,
                   sq_b, sq_h, sq_t, sk_b, sk_h, sk_t,
                   H, G, T, NB, NT, n_max, edge, inv_edge, qk_scale, sm_scale, SEL_BLOCK,
                   D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                   KP: tl.constexpr, HAS_LM: tl.constexpr, PREC: tl.constexpr, LC: tl.constexpr = 16,
                   PARTIALS: tl.constexpr = 1, FUSE_DELTA: tl.constexpr = 0, PRE: tl.constexpr = 0):
        """PARTIALS=0: the landmark pass adds only its dQ part (the landmark dK/dV/gate gradients
        come from _lm_bwd_kernel); 1: it also stores per-tile partials for _lm_reduce_kernel.
        FUSE_DELTA=1: the tile's delta = rowsum(O * dO) is computed here (32-column chunks) and
        stored for the kernels that run after this one (no separate delta pass). PRE: as in
        _fwd_kernel (landmark positions and gates loaded ahead; 2: also the next chunk's rows)."""
        pid_m = tl.program_id(0)
        pid_bh = tl.program_id(1)
        b = pid_bh // H
        h = pid_bh % H
        hk = h // G
        bhk = b * (H // G) + hk
        m0 = pid_m * BLOCK_M
        offs_m = m0 + tl.arange(0, BLOCK_M)
        offs_d = tl.arange(0, D)
        offs_n0 = tl.arange(0, BLOCK_N)
        mrow = offs_m < T
        qoff = b * sq_b + h * sq_h + offs_m[:, None] * sq_t + offs_d[None, :]
        q = tl.load(Q + qoff, mask=mrow[:, None], other=0.0)
        do = tl.load(DO + qoff, mask=mrow[:, None], other=0.0)
        w = tl.load(W + pid_bh * T + offs_m, mask=mrow, other=1.0)
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
        if HAS_LM and PRE > 0:
            lpos_n = tl.load(LPOS + (bhk * NB + m0 // SEL_BLOCK) * KP + tl.arange(0, LC))
            et_n = tl.load(GT + bhk * T + tl.maximum(lpos_n, 0))
        dq = tl.zeros([BLOCK_M, D], tl.float32)
        dw = tl.zeros([BLOCK_M], tl.float32)
        lo, full_lo, causal_hi, hi = _tile_ranges(m0, w, T, n_max, edge, BLOCK_M, BLOCK_N)
        for phase in tl.static_range(4):
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
            toff = (pid_bh * NT + pid_m) * KP
            if PRE == 2:
                lk_n = tl.load(kbase + tl.maximum(lpos_n, 0)[:, None] * sk_t + offs_d[None, :])
                lv_n = tl.load(vbase + tl.maximum(lpos_n, 0)[:, None] * sk_t + offs_d[None, :])
            for c0 in range(0, KP, LC):  # chunks of LC landmarks (register pressure)
                offs_k = c0 + tl.arange(0, LC)
                if PRE > 0:
                    lpos = lpos_n
                    lp0 = tl.maximum(lpos, 0)
                    gate = _logsigmoid(et_n.to(tl.float32))
                    if PRE == 2:
                        lk = lk_n
                        lv = lv_n
                    else:
                        lk = tl.load(kbase + lp0[:, None] * sk_t + offs_d[None, :])
                        lv = tl.load(vbase + lp0[:, None] * sk_t + offs_d[None, :])
                    offs_k2 = offs_k + LC
                    lpos_n = tl.load(LPOS + (bhk * NB + nb) * KP + offs_k2, mask=offs_k2 < KP, other=-1)
                    et_n = tl.load(GT + bhk * T + tl.maximum(lpos_n, 0))
                    if PRE == 2:
                        lk_n = tl.load(kbase + tl.maximum(lpos_n, 0)[:, None] * sk_t + offs_d[None, :])
                        lv_n = tl.load(vbase + tl.maximum(lpos_n, 0)[:, None] * sk_t + offs_d[None, :])
                else:
                    lpos = tl.load(LPOS + (bhk * NB + nb) * KP + offs_k)
                    lp0 = tl.maximum(lpos, 0)
                    gate = _logsigmoid(tl.load(GT + bhk * T + lp0).to(tl.float32))
                    lk = tl.load(kbase + lp0[:, None] * sk_t + offs_d[None, :])
                    lv = tl.load(vbase + lp0[:, None] * sk_t + offs_d[None, :])
                s = tl.dot(q, tl.trans(lk), input_precision=PREC) * qk_scale
                s = s + _lm_bias(offs_m, lpos, gate, w, T, n_max, inv_edge)
                p = tl.exp2(s - lse[:, None])
                dp = tl.dot(do, tl.trans(lv), input_precision=PREC)
                ds = p * (dp - delta[:, None])
                dq += tl.dot(ds.to(lk.dtype), lk, input_precision=PREC)
                if PARTIALS:
                    # per-tile partial landmark gradients [LC, D], [LC]
                    dlk = tl.dot(tl.trans(ds.to(q.dtype)), q, input_precision=PREC) * sm_scale
                    dlv = tl.dot(tl.trans(p.to(do.dtype)), do, input_precision=PREC)
                    tl.store(DLK + (toff + offs_k[:, None]) * D + offs_d[None, :], dlk.to(DLK.dtype.element_ty))
                    tl.store(DLV + (toff + offs_k[:, None]) * D + offs_d[None, :], dlv.to(DLV.dtype.element_ty))
                    tl.store(DGATE + toff + offs_k, tl.sum(ds, 0))
        tl.store(DQ + qoff, (dq * sm_scale).to(DQ.dtype.element_ty), mask=mrow[:, None])
        tl.store(DW + pid_bh * T + offs_m, dw * inv_edge, mask=mrow)

    @triton.jit
    def _lm_bwd_kernel(Q, K, V, W, E, LPOS, DO, LSE, DELTA, DK, DV, DGT,
                       sq_b, sq_h, sq_t, sk_b, sk_h, sk_t,
                       H, G, T, NB, NT, n_max, edge, inv_edge, qk_scale, sm_scale, SEL_BLOCK,
                       D: tl.constexpr, BLOCK_M: tl.constexpr, KP: tl.constexpr, LC: tl.constexpr,
                       SEG: tl.constexpr, PREC: tl.constexpr, PRE: tl.constexpr = 0):
        """Landmark dK, dV and energy gradients. Program (segment, slot chunk, batch*kv head) walks
        SEG query tiles (BLOCK_M rows, within one selection block each) in order, for LC slots of
        the tiles' landmark sets: recomputes P and dS against the slots' landmarks (every head of
        the kv group) and sums dS^T Q, P^T dO and the gate gradient per slot in registers. A slot's
        sums are added (atomically) into its token's dK / dV rows (after the window kernel stored
        them) and into the energy gradient when the slot's token changes at the next block, and at
        the segment's end, so a landmark run spanning segments gets one add per segment."""
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
        if PRE:
            lpos_n = tl.load(LPOS + (bhk * NB + (i0 * BLOCK_M) // SEL_BLOCK) * KP + offs_k)
            et_n = tl.load(E + bhk * T + tl.maximum(lpos_n, 0))
        if PRE == 2:
            lk = tl.zeros([LC, D], K.dtype.element_ty)
            lv = tl.zeros([LC, D], V.dtype.element_ty)
        for i in range(i0, i1):
            m0 = i * BLOCK_M
            nb = m0 // SEL_BLOCK
            offs_m = m0 + offs_r
            mrow = offs_m < T
            if PRE:
                lpos = lpos_n
                lp0 = tl.maximum(lpos, 0)
                et = et_n.to(tl.float32)
                # the next tile's set (its block: this one or the next), loaded ahead
                nb2 = tl.minimum(((i + 1) * BLOCK_M) // SEL_BLOCK, NB - 1)
                lpos_n = tl.load(LPOS + (bhk * NB + nb2) * KP + offs_k)
                et_n = tl.load(E + bhk * T + tl.maximum(lpos_n, 0))
            else:
                lpos = tl.load(LPOS + (bhk * NB + nb) * KP + offs_k)
                lp0 = tl.maximum(lpos, 0)
                et = tl.load(E + bhk * T + lp0).to(tl.float32)
            gate = _logsigmoid(et)
            if PRE == 2:
                # the landmark rows only at a block's first tile (or the segment's): a block's tiles
                # share its set
                if (i == i0) | (m0 % SEL_BLOCK == 0):
                    lk = tl.load(kbase + lp0[:, None] * sk_t + offs_d[None, :])
                    lv = tl.load(vbase + lp0[:, None] * sk_t + offs_d[None, :])
            else:
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
            if PRE:
                nxt = lpos_n  # at a block's last tile (and not the segment's): the next block's set
            else:
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
    def _dkdv_kernel(Q, K, V, W, DO, LSE, DELTA, DK, DV,
                     sq_b, sq_h, sq_t, sk_b, sk_h, sk_t,
                     H, G, T, n_max, edge, inv_edge, qk_scale, sm_scale,
                     D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, PREC: tl.constexpr,
                     TRANS: tl.constexpr = 0):
        """Window dK, dV of one key tile (BLOCK_N keys), over the query tiles that can see it.
        TRANS=1: scores computed transposed ([keys, queries]: keys are the dots' M dimension), so
        P^T and dS^T feed the dV and dK products straight from the accumulator layout; TRANS=0:
        [queries, keys] scores, transposed for those products (the autotuner picks)."""
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
                fr = tl.minimum(tl.floor(tl.min(w, 0) - 0.5 - edge * 0.5).to(tl.int32) - 1, n_max - 1)
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

    @triton.jit
    def _keys_tile(E, pos, ok, KEY32: tl.constexpr):
        """Rank keys (reference.rank_keys) of the energies at ``pos``; the smallest key where not ok.
        KEY32 (T <= 65536): the float16 bits and 16 position bits in an int32, else an int64."""
        e = tl.load(E + pos, mask=ok, other=0.0).to(tl.float32)
        e16 = tl.minimum(tl.maximum(e, -6e4), 6e4).to(tl.float16)
        if KEY32:
            bits = e16.to(tl.int16, bitcast=True).to(tl.int32)
            bits = tl.where(bits == -32768, 0, bits)  # -0 -> +0
            mono = tl.where(bits >= 0, bits, bits ^ 32767)
            key = mono * 65536 + (65535 - pos)
            key = tl.where(ok, key, -2147483648)
        else:
            bits = (e16.to(tl.float32) + 0.0).to(tl.int32, bitcast=True)
            mono = tl.where(bits >= 0, bits, bits ^ 2147483647).to(tl.int64)
            key = mono * 4294967296 + (4294967295 - pos.to(tl.int64))
            key = tl.where(ok, key, -9223372036854775808)
        return key

    @triton.jit
    def _select_kernel(E, LPOS, INIT, TOPK, T, NB, S, CH, K: tl.constexpr, KP: tl.constexpr, BS: tl.constexpr,
                       CB: tl.constexpr, KEY32: tl.constexpr, MODE: tl.constexpr = 0):
        """Causal landmark sets with stable slots, one program per (batch, kv head) and chunk of CH
        candidate blocks; see the module docstring. Chunk c holds the candidate blocks c*CB ..
        c*CB+CB-1; row r's output is the set of block c*CB + r + 1 (the set after that block's
        tokens were offered). The rank keys are computed here from the energies (int32 keys when
        T <= 65536: cheaper reductions). MODE 0: one chunk (CH >= NB), from the empty set; 1: no
        output, the chunk's own top-k keys stored to TOPK [B*Hk, chunks, KP] (empty: the minimum
        key); 2: from the start set INIT [B*Hk, chunks, KP] (the top-k of the tokens before the
        chunk, in key order), sets stored."""
        pid = tl.program_id(0)
        j = tl.program_id(1)
        nch = tl.num_programs(1)
        blo = j * CH
        bhi = tl.minimum(blo + CH, NB - 1)
        offs_k = tl.arange(0, KP)
        offs_s = tl.arange(0, BS)
        rows = tl.arange(0, CB)
        if KEY32:
            kmin = tl.full([KP], -2147483648, tl.int32)
            kpad = tl.full([KP], 2147483647, tl.int32)  # padding: never the min
            pm = tl.full([KP], 65535, tl.int32)
            none = tl.full([KP], -1, tl.int32)
        else:
            kmin = tl.full([KP], -9223372036854775808, tl.int64)
            kpad = tl.full([KP], 9223372036854775807, tl.int64)
            pm = tl.full([KP], 4294967295, tl.int64)
            none = tl.full([KP], -1, tl.int64)
        if MODE == 2:
            cur = tl.where(offs_k < K, tl.load(INIT + (pid * nch + j) * KP + offs_k), kpad)
        else:
            cur = tl.where(offs_k < K, kmin, kpad)
        if MODE != 1:
            # block 0: the empty set (chunk 0 only)
            tl.store(LPOS + pid * NB * KP + offs_k, tl.full([KP], -1, tl.int32), mask=offs_k + j * KP < KP)
        ebase = E + pid * T
        # prefetched chunk of candidate keys [CB, BS]
        pos = (blo + rows)[:, None] * S + offs_s[None, :]
        ck = _keys_tile(ebase, pos, (offs_s[None, :] < S) & (pos < T) & (blo + rows[:, None] < bhi), KEY32)
        for c0 in range(blo, bhi, CB):
            blk_n = c0 + CB + rows
            pos_n = blk_n[:, None] * S + offs_s[None, :]
            ck_n = _keys_tile(ebase, pos_n, (offs_s[None, :] < S) & (pos_n < T) & (blk_n[:, None] < bhi), KEY32)
            bmax = tl.max(ck, 1)  # [CB] best key of each candidate block
            out_rows = (c0 + rows + 1) * KP  # [CB] output set offsets (block c0 + r + 1)
            m = tl.min(cur, 0)
            r0 = tl.zeros([], tl.int32)
            nxt = tl.min(tl.where((bmax > m) & (rows >= r0), rows, CB), 0)
            while nxt < CB:
                # rows r0 .. nxt-1 inserted nothing: their sets are the current one
                if MODE != 1:
                    lp = tl.where((offs_k < K) & (cur != kmin), pm - (cur & pm), none).to(tl.int32)
                    smask = (rows[:, None] >= r0) & (rows[:, None] < nxt) & (c0 + rows[:, None] < bhi)
                    tl.store(LPOS + pid * NB * KP + out_rows[:, None] + offs_k[None, :],
                             tl.broadcast_to(lp[None, :], (CB, KP)), mask=smask)
                cand = tl.max(tl.where(rows[:, None] == nxt, ck, tl.min(kmin, 0)), 0)  # [BS] block nxt's keys
                cand = tl.where(cand > m, cand, tl.min(kmin, 0))
                # two independent value+index reductions per insertion (was argmin, min and max)
                m, am = tl.min(cur, 0, return_indices=True)
                best, bj = tl.max(cand, 0, return_indices=True)
                while best > m:
                    cur = tl.where(offs_k == am, best, cur)
                    cand = tl.where(offs_s == bj, tl.min(kmin, 0), cand)
                    m, am = tl.min(cur, 0, return_indices=True)
                    best, bj = tl.max(cand, 0, return_indices=True)
                r0 = nxt
                nxt = tl.min(tl.where((bmax > m) & (rows > r0), rows, CB), 0)
            if MODE != 1:
                lp = tl.where((offs_k < K) & (cur != kmin), pm - (cur & pm), none).to(tl.int32)
                smask = (rows[:, None] >= r0) & (c0 + rows[:, None] < bhi)
                tl.store(LPOS + pid * NB * KP + out_rows[:, None] + offs_k[None, :],
                         tl.broadcast_to(lp[None, :], (CB, KP)), mask=smask)
            ck = ck_n
        if MODE == 1:
            tl.store(TOPK + (pid * nch + j) * KP + offs_k, tl.where(offs_k < K, cur, kmin))


    @triton.jit
    def _seg_add(v1, f1, v2, f2):
        return tl.where(f2 != 0, v2, v1 + v2), f1 | f2

    @triton.jit
    def _lm_reduce_kernel(DLK, DLV, DG, LPOS, DK, DV, DGT, E, NB, T,
                          KP: tl.constexpr, D: tl.constexpr, BD: tl.constexpr, CB: tl.constexpr):
        """Add per-block landmark gradients [B*Hk, NB, KP, D] (and gate gradients [.., KP]) into
        dK/dV rows (and the per-token gate gradient): one program per (batch*kv head, slot,
        D chunk) walks its slot column CB blocks at a time; each run of one token is summed by a
        segmented scan and written once, so no two programs touch the same row (no atomics)."""
        pid = tl.program_id(0)
        sl = tl.program_id(1)
        dchunk = tl.program_id(2)
        offs = dchunk * BD + tl.arange(0, BD)
        rows = tl.arange(0, CB)
        carry_k = tl.zeros([BD], tl.float32)
        carry_v = tl.zeros([BD], tl.float32)
        carry_g = tl.zeros([CB], tl.float32)  # only row 0 is used
        base = pid * NB
        for c0 in range(0, NB, CB):
            blk = c0 + rows
            valid = blk < NB
            tok = tl.load(LPOS + (base + blk) * KP + sl, mask=valid, other=-1)
            prv = tl.load(LPOS + (base + blk - 1) * KP + sl, mask=valid & (blk >= 1), other=-1)
            nxt = tl.load(LPOS + (base + blk + 1) * KP + sl, mask=blk + 1 < NB, other=-1)
            start = (tok != prv).to(tl.int32)
            end = valid & (nxt != tok) & (tok >= 0)
            src = ((base + blk)[:, None] * KP + sl) * D + offs[None, :]
            xk = tl.load(DLK + src, mask=valid[:, None], other=0.0).to(tl.float32)
            xv = tl.load(DLV + src, mask=valid[:, None], other=0.0).to(tl.float32)
            # the run open at the end of the previous chunk continues in row 0 unless row 0 starts one
            first = (rows[:, None] == 0) & (start[:, None] == 0)
            xk = xk + tl.where(first, carry_k[None, :], 0.0)
            xv = xv + tl.where(first, carry_v[None, :], 0.0)
            f2 = tl.broadcast_to(start[:, None], (CB, BD))
            sk, _fk = tl.associative_scan((xk, f2), 0, _seg_add)
            sv, _fv = tl.associative_scan((xv, f2), 0, _seg_add)
            row = (pid * T + tl.maximum(tok, 0))[:, None] * D + offs[None, :]
            wm = end[:, None]
            tl.store(DK + row, (tl.load(DK + row, mask=wm, other=0.0).to(tl.float32) + sk).to(DK.dtype.element_ty),
                     mask=wm)
            tl.store(DV + row, (tl.load(DV + row, mask=wm, other=0.0).to(tl.float32) + sv).to(DV.dtype.element_ty),
                     mask=wm)
            last = rows[:, None] == CB - 1
            carry_k = tl.sum(tl.where(last, sk, 0.0), 0)
            carry_v = tl.sum(tl.where(last, sv, 0.0), 0)
            if dchunk == 0:
                xg = tl.load(DG + (base + blk) * KP + sl, mask=valid, other=0.0)
                xg = xg + tl.where((rows == 0) & (start == 0), carry_g, 0.0)
                sg, _fg = tl.associative_scan((xg, start), 0, _seg_add)
                # the energy gradient: d logsigmoid(e) / de = sigmoid(-e)
                et = tl.load(E + pid * T + tl.maximum(tok, 0), mask=end, other=0.0).to(tl.float32)
                tl.store(DGT + pid * T + tl.maximum(tok, 0), sg / (1.0 + tl.exp(et)), mask=end)
                carry_g = tl.broadcast_to(tl.sum(tl.where(rows == CB - 1, sg, 0.0), 0), (CB,))


_FAST_LM = {"on": True}


def _pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def _select_stable(energy, k: int, kp: int, block: int, key32: bool | None = None, chunk: int | None = None):
    """Landmark positions [B, Hk, NB, KP] int32 (-1: empty slot or padding); key32: int32 rank
    keys (default where T <= 65536), else int64. chunk (candidate blocks per program; default
    OPTS["sel_chunk"] where T >= OPTS["sel_par_min_t"], else serial): the parallel selection, C
    chunks of the block axis at once: pass 1 the chunks' own top-k keys, then each chunk's start
    set (the top-k of the chunks before it, torch), pass 2 the stable-slot insertion from it.
    Slots are stable within a chunk; at a chunk start the set is laid out again in key order."""
    b, hk, t = energy.shape
    nb = -(-t // block)
    e = energy.detach().float().contiguous()
    out = torch.empty(b, hk, nb, kp, dtype=torch.int32, device=energy.device)
    cb = 16 if block <= 128 else 4
    key32 = (t <= 65536) if key32 is None else key32
    if chunk is None:
        chunk = OPTS["sel_chunk"] if (OPTS["sel_chunk"] and t >= OPTS["sel_par_min_t"]) else 0
    nch = -(-(nb - 1) // chunk) if chunk else 1
    if nch <= 1:
        _LAUNCH(_select_kernel, (b * hk, 1), e, out, out, out, t, nb, block, max(nb, 1), K=k, KP=kp,
                BS=_pow2(block), CB=cb, KEY32=key32, MODE=0, num_warps=1)
        return out
    kdt = torch.int32 if key32 else torch.int64
    kmin = torch.iinfo(kdt).min
    loc = torch.empty(b * hk, nch, kp, dtype=kdt, device=energy.device)
    _LAUNCH(_select_kernel, (b * hk, nch), e, out, loc, loc, t, nb, block, chunk, K=k, KP=kp,
            BS=_pow2(block), CB=cb, KEY32=key32, MODE=1, num_warps=1)
    # chunk j starts from the top-k of the chunks before it (their own top-k keys suffice)
    before = torch.arange(nch * kp, device=energy.device) // kp < torch.arange(nch, device=energy.device)[:, None]
    cand = torch.where(before, loc.view(b * hk, 1, nch * kp), kmin)
    init = cand.topk(kp, -1).values.contiguous()  # [B*Hk, C, KP], key order; the kernel pads past k
    _LAUNCH(_select_kernel, (b * hk, nch), e, out, init, init, t, nb, block, chunk, K=k, KP=kp,
            BS=_pow2(block), CB=cb, KEY32=key32, MODE=2, num_warps=1)
    return out


def landmark_slots(energy, n_landmarks: int, block: int):
    """(positions [B, Hk, NB, KP] int32 with -1 in empty slots, stable): the causal landmark sets.

    stable=True: the selection kernel's stable slots (each token one run of one slot column);
    False: the parallel selection (a token's run may change slot at a chunk start) or (the kernel
    failed to compile here) the torch prefix scan, slots in key order; the landmark backward's
    partials path then accumulates by sorting (the atomic _lm_bwd_kernel needs no stability)."""
    kp = max(16, _pow2(n_landmarks))
    if _FAST_LM["on"]:
        try:
            t, nb = energy.shape[-1], -(-energy.shape[-1] // block)
            chunked = bool(OPTS["sel_chunk"]) and t >= OPTS["sel_par_min_t"] and nb - 1 > OPTS["sel_chunk"]
            return _select_stable(energy, n_landmarks, kp, block), not chunked
        except Exception as e:  # pragma: no cover - compiler trouble: fall back, once
            import warnings

            warnings.warn(f"dsalt: stable-slot selection kernel unavailable ({type(e).__name__}: {e}); "
                          "using the torch scan")
            _FAST_LM["on"] = False
    keys = select_landmarks(energy, n_landmarks, block)  # [B, Hk, NB, K], descending
    if kp > n_landmarks:
        keys = F.pad(keys, (0, kp - n_landmarks), value=INVALID_KEY)
    pos = torch.where(keys != INVALID_KEY, key_positions(keys), torch.full_like(keys, -1))
    return pos.to(torch.int32).contiguous(), False


def _prec(q) -> str:
    """fp32 inputs: exact fp32 dots (matching the reference); fp16/bf16: tensor-core dots."""
    return "ieee" if q.dtype == torch.float32 else "tf32"


def _blocks(block: int, d: int, device) -> tuple[int, int, int]:
    """(BLOCK_M, BLOCK_N, num_warps) of the untuned launch; BLOCK_M divides the selection block."""
    if _interpreting() or device.type != "cuda":
        return 16, 16, 4
    bm = 64 if block % 64 == 0 else (32 if block % 32 == 0 else 16)
    return bm, bm, 4 if d <= 64 else 8


# kernel options (session 5): lc_fwd / lc_dq: landmark columns per chunk in the forward / dQ
# kernels' landmark pass (at most KP); delta: (rows per program, warps) of the delta = rowsum(O * dO)
# pass; lm_bwd: the landmark backward, "atomic" = _lm_bwd_kernel (no per-tile partials), "reduce" =
# per-tile partials stored by the dQ kernel + _lm_reduce_kernel (sessions 2-4); fuse_delta: the dQ
# kernel computes delta itself (no delta pass; with the landmark partials every dQ config spilled in
# ptxas, without them the 8-warp configs do not). Session 5 on the H100 (same run, vs the separate
# pass): DSALT fwd+bwd -0.06 / -0.04 / -0.01 ms at 32K / 16K / 4K
# lm_pre_fwd / lm_pre_dq (session 5b): the landmark pass's positions and gates loaded ahead (1;
# 2: also the next chunk's K/V rows), see _fwd_kernel; lm_pre_bwd: _lm_bwd_kernel loads the next
# tile's positions and energies while the current tile computes (2: and loads a block's landmark
# K/V rows once, at its first tile); sel_chunk: candidate blocks per
# program of the parallel landmark selection (0: serial, one program per (batch, kv head)), used
# where T >= sel_par_min_t (_select_stable)
OPTS = {"lc_fwd": 32, "lc_dq": 32, "delta": (64, 4), "lm_bwd": "atomic", "fuse_delta": True,
        "lm_pre_fwd": 0, "lm_pre_dq": 0, "lm_pre_bwd": 0, "sel_chunk": 0, "sel_par_min_t": 8192}

_TUNED: dict = {}
_FWD_BM_OVERRIDE: dict = {}
# launch configs tried by the autotuner on CUDA: fwd (BLOCK_M, BLOCK_N, warps, stages) (BLOCK_M 128
# only where it and the selection block divide one another); dq (BLOCK_M, BLOCK_N, warps, stages),
# BLOCK_M 64 (the landmark partials are per 64-row tile); dkdv (BLOCK_M, BLOCK_N, warps, stages,
# TRANS). First entries: the forced defaults (ATTNLAB_DSALT_AUTOTUNE=0), the configs the H100
# autotuner picked at T = 16K and 32K (session 4). Register use checked offline (ptxas via
# triton.compile for sm_90: benchmarks/dsalt_registers.py).
FWD_CONFIGS = [(64, 64, 4, 3), (128, 64, 8, 3), (64, 64, 8, 2), (64, 32, 4, 3)]
DQ_CONFIGS = [(64, 32, 4, 3), (64, 64, 8, 2), (64, 32, 8, 2), (64, 32, 4, 2)]
DKDV_CONFIGS = [(64, 128, 8, 2, 1), (32, 128, 8, 2, 1), (32, 128, 8, 3, 1), (64, 64, 8, 2, 0)]


def _tuned(name: str, block: int):
    """Autotuned launchers (CUDA): tile sizes, warps and stages."""
    tag = (name, block if name == "fwd" else 0)
    if tag not in _TUNED:
        key = ["T", "n_max", "D"]
        if name == "dkdv":
            cfgs = [triton.Config({"BLOCK_M": m, "BLOCK_N": n, "TRANS": tr}, num_warps=w, num_stages=st)
                    for m, n, w, st, tr in DKDV_CONFIGS]
            _TUNED[tag] = triton.autotune(cfgs, key=key)(_dkdv_kernel)
        elif name == "fwd":
            cfgs = [triton.Config({"BLOCK_M": m, "BLOCK_N": n, "NSET": max(1, m // block)}, num_warps=w, num_stages=st)
                    for m, n, w, st in FWD_CONFIGS if m % block == 0 or block % m == 0]
            _TUNED[tag] = triton.autotune(cfgs, key=key + ["KP", "HAS_LM"])(_fwd_kernel)
        else:
            cfgs = [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=st)
                    for m, n, w, st in DQ_CONFIGS]
            _TUNED[tag] = triton.autotune(cfgs, key=key + ["KP", "HAS_LM", "PARTIALS", "FUSE_DELTA"])(_dq_kernel)
    return _TUNED[tag]


def tuned_configs() -> dict:
    """The launch configs the autotuner picked so far (for benchmark logs)."""
    out = {}
    for tag, fn in _TUNED.items():
        out[str(tag)] = {str(k): str(v) for k, v in getattr(fn, "cache", {}).items()}
    return out


# CUDA launch configs forced instead of autotuning: {"fwd": (BM, BN, warps, stages), "dq": (BM, BN,
# warps, stages), "dkdv": (BM, BN, warps, stages, TRANS), "reduce": (CB, BD, warps)} (tests of every
# config; ATTNLAB_DSALT_AUTOTUNE=0 forces each list's first entry, which skips the autotuner's
# compile-and-time of every config)
FORCE_CONFIG: dict = {}


def _forced(name):
    if name in FORCE_CONFIG:
        return FORCE_CONFIG[name]
    if os.environ.get("ATTNLAB_DSALT_AUTOTUNE", "1") == "0":
        return {"fwd": FWD_CONFIGS, "dq": DQ_CONFIGS, "dkdv": DKDV_CONFIGS, "reduce": REDUCE_CONFIGS}[name][0]
    return None


def _launch(name, kernel, grid_m, rows, bm, bn, warps, block, *args, **meta):
    """Launch plain (interpreter, small blocks), forced or autotuned (CUDA, block a multiple of 64)."""
    tuned = bm == 64 and not _interpreting()
    cfg = _forced(name) if tuned else None
    if cfg is not None:
        if name == "dkdv":
            m, n, w, st, meta["TRANS"] = cfg
        else:
            m, n, w, st = cfg
        if name == "fwd":
            meta["NSET"] = max(1, m // block)
        grid_n = n if name == "dkdv" else m
        return _LAUNCH(kernel, (triton.cdiv(grid_m, grid_n), rows), *args, BLOCK_M=m, BLOCK_N=n, num_warps=w,
                       num_stages=st, **meta)
    if tuned:
        if name == "dkdv":
            grid = lambda m: (triton.cdiv(grid_m, m["BLOCK_N"]), rows)  # noqa: E731
        else:
            grid = lambda m: (triton.cdiv(grid_m, m["BLOCK_M"]), rows)  # noqa: E731
        key = (grid_m, args[0].dtype, args[0].shape[-1], meta.get("KP"), meta.get("HAS_LM"), meta.get("PARTIALS"),
               meta.get("FUSE_DELTA"))
        return _autotuned(name, block, key, grid, kernel, args, meta)
    if name == "dkdv":
        meta["TRANS"] = _FWD_BM_OVERRIDE.get("dkdv_trans", 0)  # tests: the transposed formulation
        return _LAUNCH(kernel, (triton.cdiv(grid_m, bn), rows), *args, BLOCK_M=bm, BLOCK_N=bn, num_warps=warps, **meta)
    if name == "fwd":
        bm = _FWD_BM_OVERRIDE.get("bm") or bm  # tests: a forward tile spanning several selection blocks
        meta["NSET"] = max(1, bm // block)
    return _LAUNCH(kernel, (triton.cdiv(grid_m, bm), rows), *args, BLOCK_M=bm, BLOCK_N=bn, num_warps=warps, **meta)


_BEST: dict = {}
_CFG_KW: dict = {}  # id(picked config) -> its launch keywords
# the kernels' launches: replayed from the second call of a shape on (attnlab/ops/launch_replay.py)
_LAUNCH = ReplayLauncher("dsalt")
# an autotuned kernel goes through triton's Autotuner once per shape (key); later calls launch the
# config it picked directly: the Autotuner's per-call argument handling cost host time, which
# counts where a step is launch-bound (B=1, T=4K)
DIRECT = {"on": True}


def _autotuned(name, block, key, grid, kernel, args, meta):
    k = (name, block, key, tuple(a for a in args if isinstance(a, int)))
    cfg = _BEST.get(k) if DIRECT["on"] else None
    if cfg is None:
        tuner = _tuned(name, block)
        out = tuner[grid](*args, **meta)
        if getattr(tuner, "best_config", None) is not None:
            _BEST[k] = tuner.best_config
        return out
    kw = _CFG_KW.get(id(cfg))
    if kw is None:
        kw = _CFG_KW[id(cfg)] = {a: b for a, b in cfg.all_kwargs().items() if b is not None}
    return _LAUNCH(kernel, grid(kw), *args, **meta, **kw)


# landmark-gradient reduction launch configs (CB blocks per step, BD columns, warps)
REDUCE_CONFIGS = [(32, 64, 4), (16, 64, 4), (64, 32, 4), (32, 32, 2), (64, 64, 8)]


def _reduce_landmark_grads(plk, plv, pg, lpos, dk, dv, dgt, nb, t, kp, d, energy):
    """Per-run sums of the per-block landmark partials into dK, dV (added) and dgt (written: the
    energy gradient, the gate gradient sum times sigmoid(-e))."""
    bhk = lpos.shape[0] * lpos.shape[1]
    if _interpreting() or not plk.is_cuda:
        bd = min(d, 64)
        return _LAUNCH(_lm_reduce_kernel, (bhk, kp, d // bd), plk, plv, pg, lpos, dk, dv, dgt, energy, nb, t,
                       KP=kp, D=d, BD=bd, CB=16, num_warps=4)
    cfg = _forced("reduce")
    if cfg is not None:
        cb, bd, w = cfg
        bd = min(bd, d)
        return _LAUNCH(_lm_reduce_kernel, (bhk, kp, d // bd), plk, plv, pg, lpos, dk, dv, dgt, energy, nb, t,
                       KP=kp, D=d, BD=bd, CB=cb, num_warps=w)
    grid = lambda m: (bhk, kp, d // m["BD"])  # noqa: E731
    best = _BEST.get(("reduce", nb, kp, d)) if DIRECT["on"] else None
    if best is not None:  # the autotuner's pick, launched directly
        return _LAUNCH(_lm_reduce_kernel, grid(best), plk, plv, pg, lpos, dk, dv, dgt, energy, nb, t, KP=kp, D=d, **best)
    tag = ("reduce", d)
    if tag not in _TUNED:
        lst = list(dict.fromkeys((cb, min(bd, d), w) for cb, bd, w in REDUCE_CONFIGS))
        cfgs = [triton.Config({"CB": cb, "BD": bd}, num_warps=w) for cb, bd, w in lst]
        # the kernel adds into dK/dV: the autotuner restores them between its trial runs
        _TUNED[tag] = triton.autotune(cfgs, key=["NB", "KP", "D"], restore_value=["DK", "DV"])(_lm_reduce_kernel)
    out = _TUNED[tag][grid](plk, plv, pg, lpos, dk, dv, dgt, energy, nb, t, KP=kp, D=d)
    cfg = getattr(_TUNED[tag], "best_config", None)
    if cfg is not None:
        _BEST[("reduce", nb, kp, d)] = {a: b for a, b in cfg.all_kwargs().items() if b is not None}
    return out


# _lm_bwd_kernel launch on CUDA: (BLOCK_M query rows per tile, LC slots per program, SEG tiles per
# program, warps, stages); register use checked offline (ptxas, sm_90): 32 rows x 32 slots, 8 warps:
# 220 registers, no spills; 32 x 64: 8 bytes of stack; 64-row tiles spill heavily (536-1528 bytes).
# First = the default: 32 x 64 (all 64 slots in one program, Q/dO read once per tile) was the fastest
# on the H100 (session 5: DSALT fwd+bwd at 32K 3.39 ms vs 3.53 with 32 x 32, 3.45 with SEG 64)
LM_BWD_CONFIGS = [(32, 64, 32, 8, 2), (32, 32, 32, 8, 2), (32, 16, 32, 4, 2)]


def _lm_bwd_config(q, block, bm):
    if _interpreting() or not q.is_cuda:
        return bm, 16, 2, 4, 1  # short segments: runs spanning segments are tested
    m, lc, seg, w, st = FORCE_CONFIG.get("lm_bwd") or LM_BWD_CONFIGS[0]
    return (m if block % m == 0 else bm), lc, seg, w, st


def _landmark_grads_from_partials(parts, lpos, dk, dv, dgt, energy, stable, b, hk, g, nb, nt, t, kp, d, tpb):
    """The partials path: per-tile landmark partials [B, H, NT, KP, ...] summed per run into dK, dV
    and the energy gradient (returned)."""
    def per_block(x):  # [B, H, NT, ...] -> [B, Hk, NB, ...] contiguous, summed over group heads and tiles
        pad = nb * tpb - nt
        if pad:
            x = torch.cat([x, x.new_zeros(x.shape[:2] + (pad,) + x.shape[3:])], 2)
        if g * tpb == 1:
            return x.contiguous()
        return x.float().view(b, hk, g, nb, tpb, *x.shape[3:]).sum((2, 4)).contiguous()

    plk, plv, pg = (per_block(x) for x in parts)
    if stable:
        try:
            _reduce_landmark_grads(plk, plv, pg, lpos, dk, dv, dgt, nb, t, kp, d, energy)
            return dgt
        except Exception as e:  # pragma: no cover - compiler trouble: the sort-based path below
            import warnings

            warnings.warn(f"dsalt: landmark-gradient reduction kernel unavailable ({type(e).__name__}: {e})")
    # a landmark token sits in many blocks' sets: the sort-based accumulating index_put_
    valid = (lpos >= 0).view(-1)
    rows = (lpos.long().clamp_min(0) + torch.arange(b * hk, device=dk.device).view(b, hk, 1, 1) * t)
    rows = rows.view(-1)[valid]
    dk.view(-1, d).index_put_((rows,), plk.reshape(-1, d)[valid].to(dk.dtype), accumulate=True)
    dv.view(-1, d).index_put_((rows,), plv.reshape(-1, d)[valid].to(dv.dtype), accumulate=True)
    dgt.view(-1).index_put_((rows,), pg.reshape(-1)[valid].float(), accumulate=True)
    # d logsigmoid(e) / de = sigmoid(-e)
    return dgt * torch.sigmoid(-energy.detach().float())


class _DSALTFn(torch.autograd.Function):
    """Inputs: q [B,H,T,D], k, v [B,Hk,T,D], win [B,H,T] fp32, energy [B,Hk,T]. The landmark sets
    are selected inside (no gradient through the discrete choice); the gate logsigmoid(e_j) gets
    its gradient from the kernels' per-tile sums, reduced per token."""

    @staticmethod
    def forward(ctx, q, k, v, win, energy, meta):
        n_max, edge, block, scale, n_lm = meta
        b, h, t, d = q.shape
        hk = k.shape[1]
        g = h // hk
        bm, bn, warps = _blocks(block, d, q.device)
        has_lm = n_lm > 0
        if has_lm:
            lpos, stable = landmark_slots(energy.detach(), n_lm, block)
            kp, nb = lpos.shape[-1], lpos.shape[2]
            gt = energy.detach()  # the kernels compute the gate logsigmoid(e)
        else:
            kp, nb, stable = 16, 1, False
            lpos = torch.full((1, 1, 1, kp), -1, dtype=torch.int32, device=q.device)
            gt = win  # unused
        o = torch.empty_like(q)
        lse = torch.empty(b, h, t, device=q.device, dtype=torch.float32)
        _launch("fwd", _fwd_kernel, t, b * h, bm, bn, warps, block,
                q, k, v, win, gt, lpos, o, lse,
                q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
                o.stride(0), o.stride(1), o.stride(2),
                h, g, t, nb, n_max, float(edge), 1.0 / float(edge), scale * LOG2E, block,
                D=d, KP=kp, HAS_LM=has_lm, PREC=_prec(q), LC=min(OPTS["lc_fwd"], kp), PRE=OPTS["lm_pre_fwd"])
        ctx.save_for_backward(q, k, v, win, energy, gt, lpos, o, lse)
        ctx.meta = meta
        ctx.stable = stable
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, win, energy, gt, lpos, o, lse = ctx.saved_tensors
        n_max, edge, block, scale, n_lm = ctx.meta
        has_lm = n_lm > 0
        b, h, t, d = q.shape
        hk = k.shape[1]
        g = h // hk
        kp, nb = lpos.shape[-1], lpos.shape[2]
        bm, bn, warps = _blocks(block, d, q.device)
        do = do.contiguous()
        delta = torch.empty(b, h, t, device=q.device, dtype=torch.float32)
        # a separate pass: computed in the dQ kernel (whole tile or 32-column chunks, stored and
        # read back) it made every dQ config spill (ptxas, session 5: 160-830 bytes of stack)
        fuse = OPTS["fuse_delta"]
        if not fuse:
            db, dw_ = OPTS["delta"]
            _LAUNCH(_delta_kernel, (triton.cdiv(b * h * t, db),), o, do, delta, b * h * t, D=d, BLOCK=db,
                    num_warps=dw_)
        nt = triton.cdiv(t, bm)
        dq = torch.empty_like(q)
        dw = torch.empty(b, h, t, device=q.device, dtype=torch.float32)
        strides = (q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2))
        fargs = (n_max, float(edge), 1.0 / float(edge), scale * LOG2E, scale)
        atomic = has_lm and OPTS["lm_bwd"] == "atomic"

        def dq_pass(partials):
            if partials:
                parts = (torch.empty(b, h, nt, kp, d, device=q.device, dtype=q.dtype),
                         torch.empty(b, h, nt, kp, d, device=q.device, dtype=q.dtype),
                         torch.empty(b, h, nt, kp, device=q.device, dtype=torch.float32))
            else:
                parts = (dq, dq, dq)  # unused
            _launch("dq", _dq_kernel, t, b * h, bm, bn, warps, block,
                    q, k, v, win, gt, lpos, do, lse, delta, dq, dw, *parts, o, *strides,
                    h, g, t, nb, nt, *fargs, block,
                    D=d, KP=kp, HAS_LM=has_lm, PREC=_prec(q), LC=min(OPTS["lc_dq"], kp), PARTIALS=int(partials),
                    FUSE_DELTA=int(fuse), PRE=OPTS["lm_pre_dq"])
            return parts

        parts = dq_pass(has_lm and not atomic)
        dk = torch.empty_like(k)
        dv = torch.empty_like(v)
        _launch("dkdv", _dkdv_kernel, t, b * hk, bm, bn, warps, block,
                q, k, v, win, do, lse, delta, dk, dv, *strides, h, g, t, *fargs, D=d, PREC=_prec(q))
        denergy = None
        if has_lm:
            dgt = torch.zeros(b, hk, t, device=q.device, dtype=torch.float32)
            if atomic:
                try:
                    lm, lc, seg, lw, lst = _lm_bwd_config(q, block, bm)
                    lc = min(lc, kp)
                    nt_l = triton.cdiv(t, lm)
                    _LAUNCH(_lm_bwd_kernel, (triton.cdiv(nt_l, seg), kp // lc, b * hk),
                            q, k, v, win, gt, lpos, do, lse, delta, dk, dv, dgt, *strides,
                            h, g, t, nb, nt_l, *fargs, block, D=d, BLOCK_M=lm, KP=kp, LC=lc, SEG=seg,
                            PREC=_prec(q), PRE=OPTS["lm_pre_bwd"], num_warps=lw, num_stages=lst)
                except Exception as e:  # pragma: no cover - compiler trouble (atomics): the partials path
                    import warnings

                    warnings.warn(f"dsalt: landmark backward kernel unavailable ({type(e).__name__}: {e}); "
                                  "using per-tile partials and the reduction")
                    OPTS["lm_bwd"] = "reduce"
                    dk = torch.empty_like(k)
                    dv = torch.empty_like(v)
                    _launch("dkdv", _dkdv_kernel, t, b * hk, bm, bn, warps, block,
                            q, k, v, win, do, lse, delta, dk, dv, *strides, h, g, t, *fargs, D=d, PREC=_prec(q))
                    dgt.zero_()
                    parts = dq_pass(True)
                    atomic = False
            if not atomic:
                dgt = _landmark_grads_from_partials(parts, lpos, dk, dv, dgt, gt, ctx.stable, b, hk, g, nb, nt, t,
                                                    kp, d, block // bm)
            denergy = dgt.to(energy.dtype)
        return dq, dk, dv, dw, denergy, None


def dsalt_triton(q, k, v, win, energy, *, n_max: int, edge: float, n_landmarks: int, block: int,
                 scale: float | None = None):
    """DSALT attention through the Triton kernels (same function as ``dsalt_reference``)."""
    from ...errors import InputError

    if not HAVE_TRITON:
        raise InputError("dsalt: impl='triton' needs the triton package")
    check_args(q, k, v, win, energy, n_max, edge, n_landmarks, block)
    b, h, t, d = q.shape
    if d < 16 or d & (d - 1):
        raise InputError(f"dsalt triton kernel: head_dim must be a power of two >= 16; got {d}")
    if not (q.is_cuda or _interpreting()):
        raise InputError("dsalt triton kernel: needs CUDA tensors (or TRITON_INTERPRET=1)")
    bm, _, _ = _blocks(block, d, q.device)
    if block % bm:
        raise InputError(f"dsalt triton kernel: block must be a multiple of {bm}; got {block}")
    scale = d**-0.5 if scale is None else scale
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    win = win.float().contiguous()
    energy = energy.contiguous()
    return _DSALTFn.apply(q, k, v, win, energy, (n_max, float(edge), block, float(scale), n_landmarks))
