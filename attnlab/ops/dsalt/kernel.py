"""DSALT Triton kernels: forward and backward with one online softmax over window + landmarks.

Forward (grid: query tiles x batch*heads). A query tile of BLOCK_M rows lies in one landmark
selection block, so all its rows share one landmark set. The tile

1. scans the window's K/V blocks: from the earliest key any row of the tile can reach (the reach
   is computed from the tile's largest predicted window, so short windows skip blocks) up to the
   diagonal. Blocks where every (row, key) pair is inside every row's full-weight window run
   without any mask or bias; only the outer edge and the diagonal compute the soft-edge bias;
2. makes one pass over its block's landmark K/V ([K, D], padded to a power of two, rows loaded
   by position straight from K/V): bias logsigmoid(e_j) (the gate), -inf where the landmark is
   inside the row's soft window.

Both passes feed the same running max / sum (exp2 domain); the tile stores O and the log-sum-exp.
Scattered landmarks therefore never turn window blocks into partial blocks.

Backward: ``_dq_kernel`` (per query tile) recomputes P and accumulates dQ, the window-size
gradient dW (the soft edge's bias derivative 1/(edge*r) on the ramp) and, for the tile's
landmark set, dK_lm, dV_lm and the gate gradient; ``_dkdv_kernel`` (per key tile, looping over
the heads of its kv group) accumulates the window part of dK and dV. The per-block landmark
dK/dV partials are then added at the landmark tokens' rows (a sort-based accumulating
``index_put_``), and the gate gradient flows through autograd (an indexing op) to the energies
and so to alpha.
"""

from __future__ import annotations

import math
import os

import torch
import torch.nn.functional as F

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
    def _win_bias(offs_m, offs_n, w, T, n_max, edge, inv_edge):
        """Soft-window bias in log2 units (log2 r), -inf outside; and d(ln r)/dw (natural units)."""
        dd = offs_m[:, None] - offs_n[None, :]
        r = (w[:, None] - dd.to(tl.float32) - 0.5) * inv_edge + 0.5
        r = tl.minimum(r, 1.0)
        ok = (dd >= 0) & (dd < n_max) & (r > 0) & (offs_n[None, :] < T) & (offs_m[:, None] < T)
        rs = tl.where(ok, r, 1.0)
        bias = tl.where(ok, tl.log2(rs), float("-inf"))
        dbias = tl.where(ok & (r < 1.0), 1.0 / (edge * rs), 0.0)
        return bias, dbias

    @triton.jit
    def _lm_bias(offs_m, lpos, gate, w, T, n_max, edge, inv_edge):
        """Landmark bias: the gate, -inf where the landmark is inside the row's soft window."""
        dd = offs_m[:, None] - lpos[None, :]
        r = (w[:, None] - dd.to(tl.float32) - 0.5) * inv_edge + 0.5
        inwin = (dd >= 0) & (dd < n_max) & (r > 0)
        bias = tl.where(inwin | (offs_m[:, None] >= T), float("-inf"), gate[None, :] * 1.4426950408889634)
        return bias  # log2 units

    @triton.jit
    def _tile_ranges(m0, w, T, n_max, edge, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
        """Key block starts: [lo, full_lo) edge (masked), [full_lo, m0) full, [m0, hi) diagonal."""
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
        return lo, full_lo, hi

    @triton.jit
    def _fwd_kernel(Q, K, V, W, GATE, LPOS, O, LSE,
                    sq_b, sq_h, sq_t, sk_b, sk_h, sk_t, so_b, so_h, so_t,
                    sg_b, sg_h, sg_n,
                    H, G, T, n_max, edge, inv_edge, qk_scale, SEL_BLOCK,
                    D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                    KP: tl.constexpr, HAS_LM: tl.constexpr, PREC: tl.constexpr):
        pid_m = tl.program_id(0)
        pid_bh = tl.program_id(1)
        b = pid_bh // H
        h = pid_bh % H
        hk = h // G
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
        lo, full_lo, hi = _tile_ranges(m0, w, T, n_max, edge, BLOCK_M, BLOCK_N)
        for phase in tl.static_range(3):
            if phase == 0:
                s_lo = lo
                s_hi = full_lo
            elif phase == 1:
                s_lo = full_lo
                s_hi = m0
            else:
                s_lo = m0
                s_hi = hi
            for start_n in range(s_lo, s_hi, BLOCK_N):
                offs_n = start_n + offs_n0
                nmask = offs_n < T
                kt = tl.load(kbase + offs_n[:, None] * sk_t + offs_d[None, :], mask=nmask[:, None], other=0.0)
                s = tl.dot(q, tl.trans(kt), input_precision=PREC) * qk_scale
                if phase != 1:
                    bias, _db = _win_bias(offs_m, offs_n, w, T, n_max, edge, inv_edge)
                    s = s + bias
                m_new = tl.maximum(m_i, tl.max(s, 1))
                m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
                p = tl.exp2(s - m_safe[:, None])
                alpha = tl.exp2(m_i - m_safe)
                l_i = l_i * alpha + tl.sum(p, 1)
                vt = tl.load(vbase + offs_n[:, None] * sk_t + offs_d[None, :], mask=nmask[:, None], other=0.0)
                acc = acc * alpha[:, None] + tl.dot(p.to(vt.dtype), vt, input_precision=PREC)
                m_i = m_new
        if HAS_LM:
            nb = m0 // SEL_BLOCK
            offs_k = tl.arange(0, KP)
            gbase = b * sg_b + hk * sg_h + nb * sg_n
            gate = tl.load(GATE + gbase + offs_k)
            lpos = tl.load(LPOS + gbase + offs_k)
            # landmark K/V rows loaded by position (no gathered copy)
            lk = tl.load(kbase + lpos[:, None] * sk_t + offs_d[None, :])
            s = tl.dot(q, tl.trans(lk), input_precision=PREC) * qk_scale
            s = s + _lm_bias(offs_m, lpos, gate, w, T, n_max, edge, inv_edge)
            m_new = tl.maximum(m_i, tl.max(s, 1))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
            p = tl.exp2(s - m_safe[:, None])
            alpha = tl.exp2(m_i - m_safe)
            l_i = l_i * alpha + tl.sum(p, 1)
            lv = tl.load(vbase + lpos[:, None] * sk_t + offs_d[None, :])
            acc = acc * alpha[:, None] + tl.dot(p.to(lv.dtype), lv, input_precision=PREC)
            m_i = m_new
        l_safe = tl.where(l_i > 0, l_i, 1.0)
        o = acc / l_safe[:, None]
        tl.store(O + b * so_b + h * so_h + offs_m[:, None] * so_t + offs_d[None, :], o.to(O.dtype.element_ty),
                 mask=mrow[:, None])
        tl.store(LSE + pid_bh * T + offs_m, m_i + tl.log2(l_safe), mask=mrow)

    @triton.jit
    def _dq_kernel(Q, K, V, W, GATE, LPOS, DO, LSE, DELTA, DQ, DW, DLK, DLV, DGATE,
                   sq_b, sq_h, sq_t, sk_b, sk_h, sk_t,
                   sg_b, sg_h, sg_n,
                   H, G, T, NT, n_max, edge, inv_edge, qk_scale, sm_scale, SEL_BLOCK,
                   D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                   KP: tl.constexpr, HAS_LM: tl.constexpr, PREC: tl.constexpr):
        pid_m = tl.program_id(0)
        pid_bh = tl.program_id(1)
        b = pid_bh // H
        h = pid_bh % H
        hk = h // G
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
        delta = tl.load(DELTA + pid_bh * T + offs_m, mask=mrow, other=0.0)
        kbase = K + b * sk_b + hk * sk_h
        vbase = V + b * sk_b + hk * sk_h
        dq = tl.zeros([BLOCK_M, D], tl.float32)
        dw = tl.zeros([BLOCK_M], tl.float32)
        lo, full_lo, hi = _tile_ranges(m0, w, T, n_max, edge, BLOCK_M, BLOCK_N)
        for phase in tl.static_range(3):
            if phase == 0:
                s_lo = lo
                s_hi = full_lo
            elif phase == 1:
                s_lo = full_lo
                s_hi = m0
            else:
                s_lo = m0
                s_hi = hi
            for start_n in range(s_lo, s_hi, BLOCK_N):
                offs_n = start_n + offs_n0
                nmask = offs_n < T
                kt = tl.load(kbase + offs_n[:, None] * sk_t + offs_d[None, :], mask=nmask[:, None], other=0.0)
                vt = tl.load(vbase + offs_n[:, None] * sk_t + offs_d[None, :], mask=nmask[:, None], other=0.0)
                s = tl.dot(q, tl.trans(kt), input_precision=PREC) * qk_scale
                if phase != 1:
                    bias, dbias = _win_bias(offs_m, offs_n, w, T, n_max, edge, inv_edge)
                    s = s + bias
                p = tl.exp2(s - lse[:, None])
                dp = tl.dot(do, tl.trans(vt), input_precision=PREC)
                ds = p * (dp - delta[:, None])
                if phase != 1:
                    dw += tl.sum(ds * dbias, 1)
                dq += tl.dot(ds.to(kt.dtype), kt, input_precision=PREC)
        if HAS_LM:
            nb = m0 // SEL_BLOCK
            offs_k = tl.arange(0, KP)
            gbase = b * sg_b + hk * sg_h + nb * sg_n
            gate = tl.load(GATE + gbase + offs_k)
            lpos = tl.load(LPOS + gbase + offs_k)
            lk = tl.load(kbase + lpos[:, None] * sk_t + offs_d[None, :])
            lv = tl.load(vbase + lpos[:, None] * sk_t + offs_d[None, :])
            s = tl.dot(q, tl.trans(lk), input_precision=PREC) * qk_scale
            s = s + _lm_bias(offs_m, lpos, gate, w, T, n_max, edge, inv_edge)
            p = tl.exp2(s - lse[:, None])
            dp = tl.dot(do, tl.trans(lv), input_precision=PREC)
            ds = p * (dp - delta[:, None])
            dq += tl.dot(ds.to(lk.dtype), lk, input_precision=PREC)
            # per-tile partial landmark gradients [KP, D], [KP]
            toff = (pid_bh * NT + pid_m) * KP
            dlk = tl.dot(tl.trans(ds.to(q.dtype)), q, input_precision=PREC) * sm_scale
            dlv = tl.dot(tl.trans(p.to(do.dtype)), do, input_precision=PREC)
            tl.store(DLK + (toff + offs_k[:, None]) * D + offs_d[None, :], dlk.to(DLK.dtype.element_ty))
            tl.store(DLV + (toff + offs_k[:, None]) * D + offs_d[None, :], dlv.to(DLV.dtype.element_ty))
            tl.store(DGATE + toff + offs_k, tl.sum(ds, 0))
        tl.store(DQ + qoff, (dq * sm_scale).to(DQ.dtype.element_ty), mask=mrow[:, None])
        tl.store(DW + pid_bh * T + offs_m, dw, mask=mrow)

    @triton.jit
    def _dkdv_kernel(Q, K, V, W, DO, LSE, DELTA, DK, DV,
                     sq_b, sq_h, sq_t, sk_b, sk_h, sk_t,
                     H, G, T, n_max, edge, inv_edge, qk_scale, sm_scale,
                     D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, PREC: tl.constexpr):
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
                s = tl.dot(q, tl.trans(kt), input_precision=PREC) * qk_scale
                # full block: every (row, key) is causal, inside n_max and at full weight
                fr = tl.minimum(tl.floor(tl.min(w, 0) - 0.5 - edge * 0.5).to(tl.int32) - 1, n_max - 1)
                partial = (start_m < n0 + BLOCK_N - 1) | (start_m + BLOCK_M - 1 - n0 > fr) | (start_m + BLOCK_M > T)
                if partial:
                    bias, _db = _win_bias(offs_m, offs_n, w, T, n_max, edge, inv_edge)
                    s = s + bias
                p = tl.exp2(s - lse[:, None])  # [BM, BN]
                dv += tl.dot(tl.trans(p.to(do.dtype)), do, input_precision=PREC)
                dp = tl.dot(do, tl.trans(vt), input_precision=PREC)
                ds = p * (dp - delta[:, None])
                dk += tl.dot(tl.trans(ds.to(q.dtype)), q, input_precision=PREC)
        tl.store(DK + koff, (dk * sm_scale).to(DK.dtype.element_ty), mask=nmask[:, None])
        tl.store(DV + koff, dv.to(DV.dtype.element_ty), mask=nmask[:, None])


if HAVE_TRITON:

    @triton.jit
    def _delta_kernel(O, DO, DELTA, N, D: tl.constexpr, BLOCK: tl.constexpr):
        rows = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        cols = tl.arange(0, D)
        m = rows < N
        o = tl.load(O + rows[:, None] * D + cols[None, :], mask=m[:, None], other=0.0).to(tl.float32)
        do = tl.load(DO + rows[:, None] * D + cols[None, :], mask=m[:, None], other=0.0).to(tl.float32)
        tl.store(DELTA + rows, tl.sum(o * do, 1), mask=m)


if HAVE_TRITON:

    @triton.jit
    def _select_kernel(KEYS, OUT, T, NB, S, K: tl.constexpr, KP: tl.constexpr, BS: tl.constexpr):
        """Causal landmark sets with *stable slots*, one program per (batch, kv head).

        Streams the blocks in order: set(b + 1) = top-k(set(b) + tokens of block b), inserting a
        block's candidates best first, each replacing the current minimum. A token keeps its slot
        from insertion to eviction and never comes back (the set is a prefix top-k), so each
        landmark token is one contiguous run of blocks in one slot column."""
        pid = tl.program_id(0)
        offs_k = tl.arange(0, KP)
        offs_s = tl.arange(0, BS)
        inv = tl.full([KP], -9223372036854775808, tl.int64)
        cur = tl.where(offs_k < K, inv, tl.full([KP], 9223372036854775807, tl.int64))
        tl.store(OUT + pid * NB * KP + offs_k, inv)
        for blk in range(0, NB - 1):
            pos = blk * S + offs_s
            ck = tl.load(KEYS + pid * T + pos, mask=(offs_s < S) & (pos < T), other=-9223372036854775808)
            m = tl.min(cur, 0)
            cand = tl.where(ck > m, ck, -9223372036854775808)
            best = tl.max(cand, 0)
            while best > m:
                am = tl.argmin(cur, 0)
                cur = tl.where(offs_k == am, best, cur)
                cand = tl.where(cand == best, -9223372036854775808, cand)
                m = tl.min(cur, 0)
                best = tl.max(cand, 0)
            tl.store(OUT + (pid * NB + blk + 1) * KP + offs_k, tl.where(offs_k < K, cur, inv))

    @triton.jit
    def _lm_reduce_kernel(DLK, DLV, LPOS, DK, DV, NB, T, KP: tl.constexpr, D: tl.constexpr, BD: tl.constexpr):
        """Add per-block landmark gradients [B*Hk, NB, KP, D] into dK/dV rows: one program per
        (batch*kv head, slot, D chunk) walks its slot column; each run (one token) is flushed
        once, so no two programs touch the same row (no atomics)."""
        pid = tl.program_id(0)
        sl = tl.program_id(1)
        offs = tl.program_id(2) * BD + tl.arange(0, BD)
        acc_k = tl.zeros([BD], tl.float32)
        acc_v = tl.zeros([BD], tl.float32)
        for blk in range(0, NB):
            src = ((pid * NB + blk) * KP + sl) * D + offs
            acc_k += tl.load(DLK + src).to(tl.float32)
            acc_v += tl.load(DLV + src).to(tl.float32)
            tok = tl.load(LPOS + (pid * NB + blk) * KP + sl)
            nxt = tl.load(LPOS + (pid * NB + blk + 1) * KP + sl, mask=blk + 1 < NB, other=-1)
            if nxt != tok:
                if tok >= 0:
                    row = (pid * T + tok) * D + offs
                    tl.store(DK + row, (tl.load(DK + row).to(tl.float32) + acc_k).to(DK.dtype.element_ty))
                    tl.store(DV + row, (tl.load(DV + row).to(tl.float32) + acc_v).to(DV.dtype.element_ty))
                acc_k = tl.zeros([BD], tl.float32)
                acc_v = tl.zeros([BD], tl.float32)


_FAST_LM = {"on": True}


def _select_stable(energy, k: int, kp: int, block: int):
    """Stable-slot landmark sets [B, Hk, NB, KP] of rank keys (INVALID_KEY: empty or padding)."""
    from .reference import rank_keys

    b, hk, t = energy.shape
    nb = -(-t // block)
    keys = rank_keys(energy).contiguous()
    out = torch.empty(b, hk, nb, kp, dtype=torch.int64, device=energy.device)
    _select_kernel[(b * hk,)](keys, out, t, nb, block, K=k, KP=kp, BS=_pow2(block))
    return out


def _prec(q) -> str:
    """fp32 inputs: exact fp32 dots (matching the reference); fp16/bf16: tensor-core dots."""
    return "ieee" if q.dtype == torch.float32 else "tf32"


def _pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def _blocks(block: int, d: int, device) -> tuple[int, int, int]:
    """(BLOCK_M, BLOCK_N, num_warps) of the untuned launch; BLOCK_M divides the selection block."""
    if _interpreting() or device.type != "cuda":
        return 16, 16, 4
    bm = 64 if block % 64 == 0 else (32 if block % 32 == 0 else 16)
    return bm, bm, 4 if d <= 64 else 8


_TUNED: dict = {}


def _tuned(name: str):
    """Autotuned launchers (CUDA, BLOCK_M = 64 only): BLOCK_N, warps and stages."""
    if name not in _TUNED:
        key = ["T", "n_max", "D"]
        if name == "dkdv":
            cfgs = [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=st)
                    for m, n, w, st in [(64, 64, 4, 2), (64, 64, 8, 2), (32, 64, 4, 3), (64, 32, 4, 2), (64, 128, 8, 2)]]
            _TUNED[name] = triton.autotune(cfgs, key=key)(_dkdv_kernel)
        else:
            cfgs = [triton.Config({"BLOCK_N": n}, num_warps=w, num_stages=st)
                    for n, w, st in [(64, 4, 2), (64, 4, 3), (64, 8, 2), (32, 4, 3)]]
            _TUNED[name] = triton.autotune(cfgs, key=key + ["KP"])(_fwd_kernel if name == "fwd" else _dq_kernel)
    return _TUNED[name]


def _launch(name, kernel, grid_m, rows, bm, bn, warps, *args, **meta):
    """Launch plain (interpreter, small blocks) or autotuned (CUDA, BLOCK_M = 64)."""
    if bm == 64 and not _interpreting():
        if name == "dkdv":
            grid = lambda m: (triton.cdiv(grid_m, m["BLOCK_N"]), rows)  # noqa: E731
            return _tuned(name)[grid](*args, **meta)
        return _tuned(name)[(triton.cdiv(grid_m, bm), rows)](*args, BLOCK_M=bm, **meta)
    if name == "dkdv":
        return kernel[(triton.cdiv(grid_m, bn), rows)](*args, BLOCK_M=bm, BLOCK_N=bn, num_warps=warps, **meta)
    return kernel[(triton.cdiv(grid_m, bm), rows)](*args, BLOCK_M=bm, BLOCK_N=bn, num_warps=warps, **meta)


class _DSALTFn(torch.autograd.Function):
    """Inputs: q [B,H,T,D], k, v [B,Hk,T,D], win [B,H,T] fp32, gate [B,Hk,NB,KP] fp32 (-inf in empty
    slots), idx [B,Hk,NB,KP] int64 landmark positions. The kernels read landmark K/V rows by
    position; their per-block gradients are accumulated into dK/dV here."""

    @staticmethod
    def forward(ctx, q, k, v, win, gate, idx, meta):
        n_max, edge, block, scale, has_lm, kp, stable = meta
        b, h, t, d = q.shape
        hk = k.shape[1]
        g = h // hk
        bm, bn, warps = _blocks(block, d, q.device)
        if has_lm:
            lpos = idx.to(torch.int32)
        else:
            lpos = torch.zeros(1, 1, 1, kp, dtype=torch.int32, device=q.device)
        o = torch.empty_like(q)
        lse = torch.empty(b, h, t, device=q.device, dtype=torch.float32)
        _launch("fwd", _fwd_kernel, t, b * h, bm, bn, warps,
                q, k, v, win, gate, lpos, o, lse,
                q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
                o.stride(0), o.stride(1), o.stride(2),
                gate.stride(0), gate.stride(1), gate.stride(2),
                h, g, t, n_max, float(edge), 1.0 / float(edge), scale * LOG2E, block,
                D=d, KP=kp, HAS_LM=has_lm, PREC=_prec(q))
        ctx.save_for_backward(q, k, v, win, gate, lpos, idx, o, lse)
        ctx.meta = meta
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, win, gate, lpos, idx, o, lse = ctx.saved_tensors
        n_max, edge, block, scale, has_lm, kp, stable = ctx.meta
        b, h, t, d = q.shape
        hk = k.shape[1]
        g = h // hk
        bm, bn, warps = _blocks(block, d, q.device)
        do = do.contiguous()
        delta = torch.empty(b, h, t, device=q.device, dtype=torch.float32)
        _delta_kernel[(triton.cdiv(b * h * t, 64),)](o, do, delta, b * h * t, D=d, BLOCK=64)
        nt = triton.cdiv(t, bm)
        dq = torch.empty_like(q)
        dw = torch.empty(b, h, t, device=q.device, dtype=torch.float32)
        if has_lm:
            dlk_t = torch.empty(b, h, nt, kp, d, device=q.device, dtype=q.dtype)
            dlv_t = torch.empty(b, h, nt, kp, d, device=q.device, dtype=q.dtype)
            dgate_t = torch.empty(b, h, nt, kp, device=q.device, dtype=torch.float32)
        else:
            dlk_t = dlv_t = dgate_t = dq  # unused
        _launch("dq", _dq_kernel, t, b * h, bm, bn, warps,
                q, k, v, win, gate, lpos, do, lse, delta, dq, dw, dlk_t, dlv_t, dgate_t,
                q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
                gate.stride(0), gate.stride(1), gate.stride(2),
                h, g, t, nt, n_max, float(edge), 1.0 / float(edge), scale * LOG2E, scale, block,
                D=d, KP=kp, HAS_LM=has_lm, PREC=_prec(q))
        dk = torch.empty_like(k)
        dv = torch.empty_like(v)
        _launch("dkdv", _dkdv_kernel, t, b * hk, bm, bn, warps,
                q, k, v, win, do, lse, delta, dk, dv,
                q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
                h, g, t, n_max, float(edge), 1.0 / float(edge), scale * LOG2E, scale, D=d, PREC=_prec(q))
        dgate = None
        stable_done = False
        if has_lm and stable:
            nb = idx.shape[2]
            tpb = block // bm

            def per_block(x):  # [B, H, NT, ...] -> [B, Hk, NB, ...] contiguous
                pad = nb * tpb - nt
                if pad:
                    x = torch.cat([x, x.new_zeros(x.shape[:2] + (pad,) + x.shape[3:])], 2)
                if g * tpb == 1:
                    return x.contiguous()
                return x.float().view(b, hk, g, nb, tpb, *x.shape[3:]).sum((2, 4)).contiguous()

            lposn = torch.where(gate > -math.inf, idx, torch.full_like(idx, -1)).to(torch.int32).contiguous()
            bd = min(d, 64)
            try:
                _lm_reduce_kernel[(b * hk, kp, d // bd)](per_block(dlk_t), per_block(dlv_t), lposn, dk, dv, nb, t,
                                                         KP=kp, D=d, BD=bd)
                stable_done = True
            except Exception as e:  # pragma: no cover - compiler trouble: the sort-based path below
                import warnings

                warnings.warn(f"dsalt: landmark-gradient reduction kernel unavailable ({type(e).__name__}: {e})")
                _FAST_LM["on"] = False
                stable_done = False
            if stable_done:
                dgate = per_block(dgate_t)
        if has_lm and not (stable and stable_done):
            nb = idx.shape[2]
            tpb = block // bm

            def per_block(x):  # [B, H, NT, ...] -> [B, Hk, NB, ...], summed over group heads and tiles
                pad = nb * tpb - nt
                if pad:
                    x = torch.cat([x, x.new_zeros(x.shape[:2] + (pad,) + x.shape[3:])], 2)
                if g * tpb == 1:
                    return x
                return x.float().view(b, hk, g, nb, tpb, *x.shape[3:]).sum((2, 4)).to(x.dtype)

            # a landmark token sits in many blocks' sets: add its per-block gradients with the
            # sort-based accumulating index_put_ (fp32 accumulation, no contended atomics)
            rows = (idx + torch.arange(b * hk, device=idx.device).view(b, hk, 1, 1) * t).view(-1)
            dk.view(-1, d).index_put_((rows,), per_block(dlk_t).reshape(-1, d).to(dk.dtype), accumulate=True)
            dv.view(-1, d).index_put_((rows,), per_block(dlv_t).reshape(-1, d).to(dv.dtype), accumulate=True)
            dgate = per_block(dgate_t)
        return dq, dk, dv, dw, dgate, None, None


def dsalt_triton(q, k, v, win, energy, *, n_max: int, edge: float, n_landmarks: int, block: int,
                 scale: float | None = None):
    """DSALT attention through the Triton kernels (same function as ``dsalt_reference``)."""
    from ...errors import InputError

    if not HAVE_TRITON:
        raise InputError("dsalt: impl='triton' needs the triton package")
    check_args(q, k, v, win, energy, n_max, edge, n_landmarks, block)
    b, h, t, d = q.shape
    hk = k.shape[1]
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
    has_lm = n_landmarks > 0
    if has_lm:
        kk = n_landmarks
        kp = max(16, _pow2(kk))
        keys = None
        if _FAST_LM["on"]:
            try:  # stable slots: the landmark gradients then reduce without atomics or sorting
                keys = _select_stable(energy, kk, kp, block)  # [B, Hk, NB, KP]
                stable = True
            except Exception as e:  # pragma: no cover - compiler trouble: fall back, once
                import warnings

                warnings.warn(f"dsalt: stable-slot selection kernel unavailable ({type(e).__name__}: {e}); "
                              "using the torch scan")
                _FAST_LM["on"] = False
        if keys is None:
            keys = select_landmarks(energy, kk, block)  # [B, Hk, NB, K], descending
            if kp > kk:
                keys = F.pad(keys, (0, kp - kk), value=INVALID_KEY)
            stable = False
        nb = keys.shape[2]
        valid = keys != INVALID_KEY
        idx = torch.where(valid, key_positions(keys), torch.zeros_like(keys))
        # advanced indexing (backward: sort-based accumulate) rather than gather (atomics)
        rows = (idx + torch.arange(b * hk, device=idx.device).view(b, hk, 1, 1) * t).view(-1)
        gate = F.logsigmoid(energy.float()).reshape(-1)[rows].view(b, hk, nb, kp)
        gate = torch.where(valid, gate, torch.full_like(gate, -math.inf))
        gate, idx = gate.contiguous(), idx.contiguous()
    else:
        kp, stable = 16, False
        gate = torch.full((1, 1, 1, kp), -math.inf, device=q.device)
        idx = torch.zeros(1, 1, 1, kp, dtype=torch.int64, device=q.device)
    return _DSALTFn.apply(q, k, v, win, gate, idx, (n_max, float(edge), block, float(scale), has_lm, kp, stable))
