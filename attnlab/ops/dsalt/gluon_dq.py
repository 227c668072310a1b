"""The DSALT window dQ kernel written in Gluon (Hopper: TMA ring + mbarriers + async wgmma).

Same outputs as ``jit_attention._dq_kernel`` on the default path (``HAS_LM`` False: the landmark dQ is
added afterwards by ``_lm_bwd_t_kernel``): the window part of dQ, the window-size gradient dW, the fused
delta = rowsum(O * dO) (stored for the dK/dV and landmark kernels) and, where ``WG`` > 0, the smallest
window of every WG rows (WMIN, read by the dK/dV kernel).

A program = one query tile of BM rows (BM // 16 warps: 4 warps = one warpgroup for 64 rows, 8 warps = two
warpgroups of 64 rows for 128) of one (batch, head). Q and dO come in once by TMA; the K/V tiles of the
window's key blocks (from the earliest key any row can reach to the diagonal, ``_tile_ranges`` of the
Triton kernel at this BM) stream through a STAGES-deep ring of shared-memory slots (K and V of one key
block per slot, one mbarrier per slot), refilled once the step that read a slot is done. Per key block:
S = Q K^T and dP = dO V^T issued together as asynchronous wgmma; P = 2^(S - LSE) computed while dP runs;
then dS = P (dP - delta) and dQ += dS K with dS as the register A operand (no shared-memory round trip).
The three tile kinds as in the Triton kernel, by a uniform branch per key block: masked (the soft-window
weight r on the outer edge and on diagonal blocks not all at full weight; dW there), causal (diagonal
blocks whose causal pairs are all at full weight), full (no mask). DEFER=1: dQ's wgmma of a step stays in
flight while the next step's S and dP are issued (its register operand carried to the next wait).

Gluon has no interpreter and compiles only for NVIDIA GPUs: ``available()`` says whether this kernel can
take a dQ pass (Hopper, bf16 (fp16 compiles but is untested: ``DTYPES``), head dim 128, contiguous [B, H, T, D]
tensors, TMA-compatible);
everywhere else ``kernel.py`` runs the Triton ``_dq_kernel``, and a kernel that fails to compile or launch
switches itself off (``BROKEN``) with a warning. Written for Triton 3.6 (the GPU machine's).
"""

from __future__ import annotations


import torch

from ..gluon_compat import (HAVE_GLUON, gl, gluon,  # noqa: F401
                            hopper_ready, mbarrier, nvmma_layout, tma_ok, warpgroup_mma, warpgroup_mma_wait)
from ..gluon_compat import cta_barrier as _cta_barrier, tma_load as _tma_load
from ..launch_replay import Desc, DescLauncher

# (BM query rows per program, BN keys per step, STAGES of the K/V ring, DEFER)
GLUON_DQ_CONFIG = (64, 64, 2, 1)
# the configs timed on the device (benchmarks/device_runs/s9q_*.py); shared memory (ptxas, sm_90): 64-row
# tiles with 2 slots of 64 keys or 4 of 32 keys take <= 99 KB, two programs per SM
# (BM, BN, STAGES, DEFER). A warp-specialised 128-row form (two 64-row consumer warpgroups sharing each K/V
# tile, configs ws2/ws3/ws4/ws3p) compiled clean and passed its device checks but was never timed; it was removed
# at the session-9 merge (code at merge da6482d).
CONFIGS = {"bm64": (64, 64, 3, 1), "bm64_s2": (64, 64, 2, 1), "bm64_n32": (64, 32, 4, 1),
           "bm64_nodefer": (64, 64, 2, 0), "bm128": (128, 64, 3, 1), "bm128_s2": (128, 64, 2, 1)}

# dtypes the dispatch takes: bf16 (checked on the H100); fp16 compiles the same (ptxas sm_90: 201 registers, no
# spills, 98.6 KB) but has not run on a device, so it goes to the Triton kernel unless added here
DTYPES = (torch.bfloat16, )
BROKEN = ""  # set (the error) if the kernel failed to compile or launch here: the Triton kernel from then on


def available(q, k, v, do, o) -> bool:
    """True where the Gluon dQ kernel can run: Hopper GPU (not the interpreter), bf16 (DTYPES), head dim 128,
    contiguous [B, H, T, D] q / do / o and [B, Hk, T, D] k / v, TMA-compatible."""
    if BROKEN or not hopper_ready(q):
        return False
    if q.dtype not in DTYPES or q.shape[-1] != 128:
        return False
    if any(x.dtype != q.dtype or not x.is_contiguous() for x in (k, v, do, o)) or not q.is_contiguous():
        return False
    return tma_ok(q, k, v, do)


if HAVE_GLUON:

    @gluon.jit
    def _dq_gluon_load(k_desc, v_desc, bars, k_s, v_s, j, n_steps, lo, b, hk,
                       BN: gl.constexpr, STAGES: gl.constexpr, pred):
        """Issue the TMA loads of key block j (if pred and j < n_steps) into ring slot j % STAGES."""
        st = j % STAGES
        p = pred & (j < n_steps)
        bar = bars.index(st)
        mbarrier.expect(bar, k_desc.block_type.nbytes + v_desc.block_type.nbytes, pred=p)
        _tma_load(k_desc, [b, hk, lo + j * BN, 0], bar, k_s.index(st), pred=p)
        _tma_load(v_desc, [b, hk, lo + j * BN, 0], bar, v_s.index(st), pred=p)

    @gluon.jit
    def _dq_gluon_kernel(q_desc, k_desc, v_desc, do_desc, O, DO, W, LSE, DELTA, DQ, DW, WMIN,
                         H, G, T, n_max, edge, inv_edge, qk_scale, sm_scale,
                         D: gl.constexpr, BM: gl.constexpr, BN: gl.constexpr, STAGES: gl.constexpr,
                         WG: gl.constexpr, DEFER: gl.constexpr):
        pid_m = gl.program_id(0)
        pid_bh = gl.program_id(1)
        b = pid_bh // H
        h = pid_bh % H
        hk = h // G
        m0 = pid_m * BM
        NW: gl.constexpr = gl.num_warps()
        ACC_S: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[NW, 1],
                                                        instr_shape=[16, BN, 16])
        ACC_Q: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[NW, 1],
                                                        instr_shape=[16, D, 16])
        A_OP: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=ACC_Q, k_width=2)
        ROW: gl.constexpr = gl.SliceLayout(1, ACC_S)
        COL: gl.constexpr = gl.SliceLayout(0, ACC_S)
        dt: gl.constexpr = q_desc.dtype

        # the rows' windows first: they fix the key range, hence the first TMA loads
        offs_m = m0 + gl.arange(0, BM, layout=ROW)
        mrow = offs_m < T
        w = gl.load(W + pid_bh * T + offs_m, mask=mrow, other=1.0)
        wmax = gl.max(w, 0)
        wmin = gl.min(w, 0)
        # _tile_ranges (jit_attention.py) at this BM / BN
        reach = gl.minimum((wmax - 0.5 + edge * 0.5).to(gl.int32) + 2, n_max)
        lo = gl.maximum(m0 - reach + 1, 0)
        lo = (lo // BN) * BN
        full = gl.minimum(gl.floor(wmin - 0.5 - edge * 0.5).to(gl.int32) - 1, n_max - 1)
        full_lo = m0 + BM - 1 - full
        full_lo = ((full_lo + BN - 1) // BN) * BN
        full_lo = gl.minimum(gl.maximum(full_lo, lo), m0)
        hi = gl.minimum(m0 + BM, T)
        causal_hi = gl.where(full >= BM - 1, hi, m0)
        n_steps = (hi - lo + BN - 1) // BN

        q_s = gl.allocate_shared_memory(dt, q_desc.block_type.shape, q_desc.layout)
        do_s = gl.allocate_shared_memory(dt, do_desc.block_type.shape, do_desc.layout)
        k_s = gl.allocate_shared_memory(dt, [STAGES] + k_desc.block_type.shape, k_desc.layout)
        v_s = gl.allocate_shared_memory(dt, [STAGES] + v_desc.block_type.shape, v_desc.layout)
        bars = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        qbar = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
        for i in gl.static_range(STAGES):
            mbarrier.init(bars.index(i), count=1)
        mbarrier.init(qbar, count=1)
        mbarrier.expect(qbar, q_desc.block_type.nbytes + do_desc.block_type.nbytes)
        _tma_load(q_desc, [b, h, m0, 0], qbar, q_s)
        _tma_load(do_desc, [b, h, m0, 0], qbar, do_s)
        for i in gl.static_range(STAGES):
            _dq_gluon_load(k_desc, v_desc, bars, k_s, v_s, i, n_steps, lo, b, hk, BN, STAGES, True)

        # while the tiles land: WMIN and delta = rowsum(O * dO) (global loads, 32-column chunks)
        if WG > 0:
            WL: gl.constexpr = gl.BlockedLayout(size_per_thread=[1, 1], threads_per_warp=[1, 32],
                                                warps_per_cta=[NW, 1], order=[1, 0])
            ntw = (T + WG - 1) // WG
            gi = m0 // WG + gl.arange(0, BM // WG, layout=gl.SliceLayout(1, WL))
            wr = gi[:, None] * WG + gl.arange(0, WG, layout=gl.SliceLayout(0, WL))[None, :]
            w2 = gl.load(W + pid_bh * T + wr, mask=wr < T, other=1.0)
            gl.store(WMIN + pid_bh * ntw + gi, gl.min(w2, 1), mask=gi < ntw)
        DL: gl.constexpr = gl.BlockedLayout(size_per_thread=[1, 8], threads_per_warp=[8, 4],
                                            warps_per_cta=[NW, 1], order=[1, 0])
        rows_d = m0 + gl.arange(0, BM, layout=gl.SliceLayout(1, DL))
        cols_d = gl.arange(0, 32, layout=gl.SliceLayout(0, DL))
        rmask_d = (rows_d < T)[:, None]
        base_d = (pid_bh * T + rows_d)[:, None] * D + cols_d[None, :]
        delta_d = gl.zeros([BM], gl.float32, gl.SliceLayout(1, DL))
        for dc in gl.static_range(0, D, 32):
            oc = gl.load(O + base_d + dc, mask=rmask_d, other=0.0).to(gl.float32)
            doc = gl.load(DO + base_d + dc, mask=rmask_d, other=0.0).to(gl.float32)
            delta_d += gl.sum(oc * doc, 1)
        gl.store(DELTA + pid_bh * T + rows_d, delta_d, mask=rows_d < T)
        delta = gl.convert_layout(delta_d, ROW)
        lse = gl.load(LSE + pid_bh * T + offs_m, mask=mrow, other=0.0)

        dq = gl.zeros([BM, D], gl.float32, ACC_Q)
        dw = gl.zeros([BM], gl.float32, ROW)
        zs = gl.zeros([BM, BN], gl.float32, ACC_S)
        ds_op = gl.zeros([BM, BN], dt, A_OP)
        offs_n0 = gl.arange(0, BN, layout=COL)
        mbarrier.wait(qbar, 0)
        q2 = q_s.reshape([BM, D])
        do2 = do_s.reshape([BM, D])
        for i in range(n_steps):
            st = i % STAGES
            start_n = lo + i * BN
            mbarrier.wait(bars.index(st), (i // STAGES) & 1)
            kt = k_s.index(st).reshape([BN, D])
            vt = v_s.index(st).reshape([BN, D])
            s_t = warpgroup_mma(q2, kt.permute((1, 0)), zs, use_acc=False, is_async=True)
            dp_t = warpgroup_mma(do2, vt.permute((1, 0)), zs, use_acc=False, is_async=True)
            # in order: (the last step's dQ product,) S, dP; after this wait S (and that dQ) are done
            s, dq, ds_op = warpgroup_mma_wait(num_outstanding=1, deps=(s_t, dq, ds_op))
            if NW > 4:
                _cta_barrier()  # both warpgroups are done with the previous step's slot
            # the previous step's slot takes key block i - 1 + STAGES
            _dq_gluon_load(k_desc, v_desc, bars, k_s, v_s, i - 1 + STAGES, n_steps, lo, b, hk, BN, STAGES, i > 0)
            offs_n = start_n + offs_n0
            masked = (start_n < full_lo) | (start_n >= causal_hi)
            diag = start_n >= m0
            if masked:
                dd = offs_m[:, None] - offs_n[None, :]
                r = (w[:, None] - dd.to(gl.float32) - 0.5) * inv_edge + 0.5
                r = gl.minimum(r, 1.0)
                ok = (dd >= 0) & (dd < n_max) & (r > 0) & (offs_n < T)[None, :] & mrow[:, None]
                p = gl.exp2(gl.where(ok, s * qk_scale - lse[:, None], float("-inf")))
                dp = warpgroup_mma_wait(num_outstanding=0, deps=(dp_t, ))
                g0 = p * (dp - delta[:, None])
                ds = g0 * r
                # d ln r / dw = 1 / (edge r) on the ramp: p r / (edge r) = p0 / edge
                dw += gl.sum(gl.where(r < 1.0, g0, 0.0), 1)
            elif diag:
                p = gl.exp2(gl.where(offs_m[:, None] >= offs_n[None, :], s * qk_scale - lse[:, None], float("-inf")))
                dp = warpgroup_mma_wait(num_outstanding=0, deps=(dp_t, ))
                ds = p * (dp - delta[:, None])
            else:
                p = gl.exp2(s * qk_scale - lse[:, None])
                dp = warpgroup_mma_wait(num_outstanding=0, deps=(dp_t, ))
                ds = p * (dp - delta[:, None])
            ds_op = gl.convert_layout(ds.to(dt), A_OP)
            dq_t = warpgroup_mma(ds_op, kt, dq, is_async=True)
            if DEFER:
                dq, ds_op = warpgroup_mma_wait(num_outstanding=1, deps=(dq_t, ds_op))
            else:
                dq, ds_op = warpgroup_mma_wait(num_outstanding=0, deps=(dq_t, ds_op))
        dq = warpgroup_mma_wait(num_outstanding=0, deps=(dq, ))
        for i in gl.static_range(STAGES):
            mbarrier.invalidate(bars.index(i))
        mbarrier.invalidate(qbar)
        offs_mq = m0 + gl.arange(0, BM, layout=gl.SliceLayout(1, ACC_Q))
        offs_d = gl.arange(0, D, layout=gl.SliceLayout(0, ACC_Q))
        gl.store(DQ + (pid_bh * T + offs_mq)[:, None] * D + offs_d[None, :], (dq * sm_scale).to(dt),
                 mask=(offs_mq < T)[:, None])
        gl.store(DW + pid_bh * T + offs_m, dw * inv_edge, mask=mrow)


def _descs(q, k, v, do, bm: int, bn: int):
    """Descriptor stand-ins (launch_replay.Desc): Q / dO [B, H, T, D] in [1, 1, BM, D] blocks, K / V
    [B, Hk, T, D] in [1, 1, BN, D] blocks (each head's T boundary is the descriptor's: rows past it come in
    as zeros)."""
    d = q.shape[-1]

    def desc(x, rows):
        blk = [1, 1, rows, d]
        return Desc(x, list(x.shape), list(x.stride()), blk, nvmma_layout(blk, x.dtype))

    return desc(q, bm), desc(k, bn), desc(v, bn), desc(do, bm)


def descriptors(q, k, v, do, bm: int, bn: int):
    """The host tensor descriptors themselves (Gluon TensorDescriptor), as a normal launch gets them."""
    return tuple(x.real() for x in _descs(q, k, v, do, bm, bn))


# launches replayed from the second of a key on (launch_replay.DescLauncher: the compiled launcher called
# directly, the descriptors handed over as stand-ins): host time counts where a step is launch bound (B=1, 4K)
_GO = DescLauncher("dsalt gluon_dq")


def dq_gluon(q, k, v, do, o, win, lse, delta, dq, dw, wmin, n_max: int, edge: float, qk_scale: float,
             sm_scale: float, wg: int, config=None):
    """Launch the Gluon dQ kernel: fills dq (window part, scaled), dw (d loss / d window), delta and,
    where wg > 0, wmin [B*H, cdiv(T, wg)]."""
    cfg = tuple(config or GLUON_DQ_CONFIG)
    if len(cfg) != 4:
        raise ValueError(f"gluon_dq config: (BM, BN, STAGES, DEFER), got {cfg} (the warp-specialised form was removed)")
    bm, bn, stages, defer = cfg
    b, h, t, d = q.shape
    g = h // k.shape[1]
    grid = ((t + bm - 1) // bm, b * h)
    scal = (h, g, t, int(n_max), float(edge), 1.0 / float(edge), float(qk_scale), float(sm_scale), d, bm, bn,
            stages, int(wg), int(defer))
    return _GO(_dq_gluon_kernel, grid, *_descs(q, k, v, do, bm, bn), o, do, win, lse, delta, dq, dw, wmin, *scal,
               num_warps=bm // 16)
