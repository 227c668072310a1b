"""The noise-once dK/dQ kernel written in Gluon (Hopper: TMA ring + mbarriers + async wgmma).

Same function as ``noise_once._noise_bwd_dk_lean_kernel`` (same inputs, same table of (key block, query
chunk) entries, same float32 workspace for the dQ2/dK2 atomics): a program = one (key block of 128 keys,
2 query tiles of 128 rows) entry x split of heads. The contraction dP2 = sum_h dN_h V_h^T over the split's
heads x DV columns (KC columns per step) runs through a STAGES-deep ring of shared-memory buffers filled
by the tensor memory accelerator (host tensor descriptors; one mbarrier per slot; the loads of step
i + STAGES - 1 issued once step i - 1's products are done) and two chains of asynchronous wgmma (one
accumulator per query tile; each V chunk serves both tiles). K2 is loaded at the start; the two Q2
tiles either too (EARLY_Q) or after the contraction into the ring's memory (the default: a 4-deep ring
of 64-column steps fits in 224 KB). The epilogue per query tile: S2 = Q2 K2^T by wgmma, P2 =
exp2(S2 - LSE) (causal), dS2 = P2 (dP2 - Delta) stored in shared memory as bf16, then dQ2 = dS2 K2
(float32 atomics) and dK2 += dS2^T Q2 (one atomic per program). ROWS=0 is the transposed orientation
of the Triton lean kernel (dP2^T [keys, rows]: each thread then holds 32 query rows' LSE/Delta).

Gluon has no interpreter and compiles only for NVIDIA GPUs: ``available()`` says whether this kernel
can take a backward (Hopper, bf16/fp16, 128-wide heads, the lean config's tiles, TMA-compatible
strides); everywhere else ``noise_once`` runs the Triton lean kernel. Written for Triton 3.6 (the GPU
machine's); the two names that moved in later versions are aliased below, and a kernel that fails to
compile or launch switches itself off (``BROKEN``) with a warning.

Measured on an H100 (benchmarks/RESULTS.md, "Session 8: CMD dK/dQ in Gluon"): 0.76-0.82x the lean kernel's
time at T = 1K-16K (504 vs 415 TFLOP/s at 16K); the CMD op at 16K 0.795x the notebook's time with it
(0.827x without). On by default since the session's merge (``noise_once.GLUON_DK``; the helper's 4K runs had
gone through the slow launch path, fixed; see RESULTS.md).
"""

from __future__ import annotations

import torch

from ..gluon_compat import (HAVE_GLUON, TensorDescriptor, fence_async_shared, gl, gluon,  # noqa: F401
                            hopper_ready, mbarrier, nvmma_layout, tma_ok, warpgroup_mma, warpgroup_mma_wait)
from ..gluon_compat import cta_barrier as _cta_barrier, tma_load as _tma_load


# (KC columns per contraction step, STAGES of the ring, num_warps, EARLY_Q: the Q2 tiles loaded before the
# contraction (else after it, in the ring's memory), ROWS: dP2 and the scores as [query rows, keys] (else
# transposed, as the Triton lean kernel))
GLUON_CONFIG = (64, 4, 8, 0, 1)


BROKEN = ""  # set (the error) if the kernel failed to compile or launch here: the lean kernel from then on


def available(q2, v, d: int, dv: int, bm: int, bn: int, nt: int, others=()) -> bool:
    """True where the Gluon kernel can take this backward: CUDA tensors on an sm_90 GPU (Hopper),
    Gluon importable, not the interpreter, bf16/fp16, head dims 128 (the measured shape), 2 tiles of
    128 query rows per 128-key block (the lean config), T >= 256, TMA-compatible strides (q2, v and
    ``others``: k2, dN)."""
    if BROKEN or not hopper_ready(q2):
        return False
    if q2.dtype not in (torch.bfloat16, torch.float16) or v.dtype != q2.dtype:
        return False
    if (d, dv, bm, bn, nt) != (128, 128, 128, 128, 2) or q2.shape[-2] < 2 * bm:
        return False  # the measured shape; sequences shorter than one program's rows: untested, no gain
    return tma_ok(q2, v, *others)


if HAVE_GLUON:

    @gluon.jit
    def _dk_gluon_load(v_desc, dn_desc, bars, v_s, da_s, db_s, j, n_steps, b, hs0, start_n, start_m,
                       NKC: gl.constexpr, KC: gl.constexpr, STAGES: gl.constexpr, BM: gl.constexpr):
        """Issue the TMA loads of contraction step j (if j < n_steps) into ring slot j % STAGES."""
        st = j % STAGES
        pred = j < n_steps
        h = hs0 + j // NKC
        c0 = (j % NKC) * KC
        bar = bars.index(st)
        mbarrier.expect(bar, v_desc.block_type.nbytes + 2 * dn_desc.block_type.nbytes, pred=pred)
        _tma_load(v_desc, [b, h, start_n, c0], bar, v_s.index(st), pred=pred)
        _tma_load(dn_desc, [b, h, start_m, c0], bar, da_s.index(st), pred=pred)
        _tma_load(dn_desc, [b, h, start_m + BM, c0], bar, db_s.index(st), pred=pred)

    @gluon.jit
    def _dk_gluon_tile(dp, k_s, q_s, ds_s, dk, LSE, DELTA, DQ, start_m, start_n, T, qk, scale,
                       BM: gl.constexpr, BN: gl.constexpr, D: gl.constexpr, ACC_L: gl.constexpr,
                       FIRST: gl.constexpr, ROWS: gl.constexpr):
        """Epilogue of one query tile (rows start_m ..): S2, P2, dS2 -> ds_s (bf16), dQ2 atomics,
        dk (+)= dS2^T Q2 (returned). ROWS: dp and the scores are [BM query rows, BN keys] (each thread
        holds 2 rows' LSE/Delta), else transposed [BN, BM] (each thread holds 32 columns' LSE/Delta)."""
        if ROWS:
            s = warpgroup_mma(q_s, k_s.permute((1, 0)), gl.zeros([BM, BN], gl.float32, ACC_L), use_acc=False,
                              is_async=True)
            offs_m = start_m + gl.arange(0, BM, layout=gl.SliceLayout(1, ACC_L))
            offs_n = start_n + gl.arange(0, BN, layout=gl.SliceLayout(0, ACC_L))
        else:
            s = warpgroup_mma(k_s, q_s.permute((1, 0)), gl.zeros([BN, BM], gl.float32, ACC_L), use_acc=False,
                              is_async=True)
            offs_m = start_m + gl.arange(0, BM, layout=gl.SliceLayout(0, ACC_L))
            offs_n = start_n + gl.arange(0, BN, layout=gl.SliceLayout(1, ACC_L))
        rmask = offs_m < T
        lse = gl.load(LSE + offs_m, mask=rmask, other=float("inf"))
        delta = gl.load(DELTA + offs_m, mask=rmask, other=0.0)
        s = warpgroup_mma_wait(num_outstanding=0, deps=(s, ))
        # causal; this also zeroes keys >= T (after every valid row) and rows >= T (LSE = inf)
        if ROWS:
            p = gl.exp2(s * qk - lse[:, None])
            p = gl.where(offs_m[:, None] >= offs_n[None, :], p, 0.0)
            ds = (p * (dp - delta[:, None])).to(ds_s.dtype)
        else:
            p = gl.exp2(s * qk - lse[None, :])
            p = gl.where(offs_m[None, :] >= offs_n[:, None], p, 0.0)
            ds = (p * (dp - delta[None, :])).to(ds_s.dtype)
        ds_s.store(ds)
        fence_async_shared()
        _cta_barrier()  # both warpgroups' halves of dS2 before either reads it by wgmma
        ds_t = ds_s.permute((1, 0))
        dsq = ds_s if ROWS else ds_t   # dS2 [BM, BN]
        dsk = ds_t if ROWS else ds_s   # dS2^T [BN, BM]
        dq = warpgroup_mma(dsq, k_s, gl.zeros([BM, D], gl.float32, ACC_L), use_acc=False, is_async=True)
        if FIRST:  # dk starts here (no registers held for it during the contraction)
            dk = warpgroup_mma(dsk, q_s, gl.zeros([BN, D], gl.float32, ACC_L), use_acc=False, is_async=True)
        else:
            dk = warpgroup_mma(dsk, q_s, dk, is_async=True)
        dq, dk = warpgroup_mma_wait(num_outstanding=0, deps=(dq, dk))
        offs_mq = start_m + gl.arange(0, BM, layout=gl.SliceLayout(1, ACC_L))
        offs_d = gl.arange(0, D, layout=gl.SliceLayout(0, ACC_L))
        gl.atomic_add(DQ + offs_mq[:, None] * D + offs_d[None, :], dq * scale,
                      mask=(offs_mq < T)[:, None], sem="relaxed")
        _cta_barrier()  # ds_s is rewritten by the next tile
        return dk

    @gluon.jit
    def _noise_bwd_dk_gluon_kernel(q_desc, k_desc, v_desc, dn_desc, LSE, DELTA, DK, DQ, TBL,
                                   H, HS, SPLIT, T, qk, scale,
                                   D: gl.constexpr, DV: gl.constexpr, BM: gl.constexpr, BN: gl.constexpr,
                                   KC: gl.constexpr, STAGES: gl.constexpr, EARLY_Q: gl.constexpr, ROWS: gl.constexpr):
        # num_warps is read with gl.num_warps(), not taken as a parameter: a launch's positional arguments
        # are then all of the kernel's parameters, as the launch replay (latent.py) passes them
        pid = gl.program_id(0)
        bs = gl.program_id(1)
        pid_n = gl.load(TBL + 2 * pid)
        c = gl.load(TBL + 2 * pid + 1)
        b = bs // SPLIT
        s = bs % SPLIT
        hs0 = s * HS
        hs1 = gl.minimum(hs0 + HS, H)
        start_n = pid_n * BN
        start_m = c * (2 * BM)
        NKC: gl.constexpr = DV // KC
        n_steps = (hs1 - hs0) * NKC

        NW: gl.constexpr = gl.num_warps()
        ACC_L: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[NW, 1],
                                                         instr_shape=[16, BM, 16])
        dt: gl.constexpr = v_desc.dtype
        # the ring: V chunk [BN, KC] and both query tiles' dN chunks [BM, KC] per stage
        v_s = gl.allocate_shared_memory(dt, [STAGES] + v_desc.block_type.shape, v_desc.layout)
        da_s = gl.allocate_shared_memory(dt, [STAGES] + dn_desc.block_type.shape, dn_desc.layout)
        db_s = gl.allocate_shared_memory(dt, [STAGES] + dn_desc.block_type.shape, dn_desc.layout)
        bars = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        for i in gl.static_range(STAGES):
            mbarrier.init(bars.index(i), count=1)
        # K2 (and, EARLY_Q, both query tiles' Q2) land during the contraction; otherwise the Q2 tiles take
        # the ring's memory after it (a deeper ring fits)
        k_s = gl.allocate_shared_memory(dt, k_desc.block_type.shape, k_desc.layout)
        kbar = gl.allocate_shared_memory(gl.int64, [3, 1], mbarrier.MBarrierLayout())
        for i in gl.static_range(3):
            mbarrier.init(kbar.index(i), count=1)
        mbarrier.expect(kbar.index(2), k_desc.block_type.nbytes)
        _tma_load(k_desc, [b, start_n, 0], kbar.index(2), k_s)
        if EARLY_Q:
            qa_s = gl.allocate_shared_memory(dt, q_desc.block_type.shape, q_desc.layout)
            qb_s = gl.allocate_shared_memory(dt, q_desc.block_type.shape, q_desc.layout)
            mbarrier.expect(kbar.index(0), q_desc.block_type.nbytes)
            _tma_load(q_desc, [b, start_m, 0], kbar.index(0), qa_s)
            mbarrier.expect(kbar.index(1), q_desc.block_type.nbytes)
            _tma_load(q_desc, [b, start_m + BM, 0], kbar.index(1), qb_s)

        for i in gl.static_range(STAGES - 1):
            _dk_gluon_load(v_desc, dn_desc, bars, v_s, da_s, db_s, i, n_steps, b, hs0, start_n, start_m,
                           NKC, KC, STAGES, BM)
        dpa = gl.zeros([BN, BM], gl.float32, ACC_L)
        dpb = gl.zeros([BN, BM], gl.float32, ACC_L)
        for i in range(n_steps):
            st = i % STAGES
            mbarrier.wait(bars.index(st), (i // STAGES) & 1)
            vv = v_s.index(st).reshape([BN, KC])
            if ROWS:  # dP2 [BM, BN] += dN chunk [BM, KC] . V chunk^T
                vt = vv.permute((1, 0))
                dpa = warpgroup_mma(da_s.index(st).reshape([BM, KC]), vt, dpa, is_async=True)
                dpb = warpgroup_mma(db_s.index(st).reshape([BM, KC]), vt, dpb, is_async=True)
            else:  # dP2^T [BN, BM] += V chunk [BN, KC] . dN chunk^T
                dpa = warpgroup_mma(vv, da_s.index(st).reshape([BM, KC]).permute((1, 0)), dpa, is_async=True)
                dpb = warpgroup_mma(vv, db_s.index(st).reshape([BM, KC]).permute((1, 0)), dpb, is_async=True)
            # step i - 1's products are done: its slot takes step i + STAGES - 1
            dpa, dpb = warpgroup_mma_wait(num_outstanding=2, deps=(dpa, dpb))
            _dk_gluon_load(v_desc, dn_desc, bars, v_s, da_s, db_s, i + STAGES - 1, n_steps, b, hs0, start_n,
                           start_m, NKC, KC, STAGES, BM)
        dpa, dpb = warpgroup_mma_wait(num_outstanding=0, deps=(dpa, dpb))
        _cta_barrier()  # both warpgroups are done with the ring (later buffers may take its memory)
        for i in gl.static_range(STAGES):
            mbarrier.invalidate(bars.index(i))
        if not EARLY_Q:
            qa_s = gl.allocate_shared_memory(dt, q_desc.block_type.shape, q_desc.layout)
            qb_s = gl.allocate_shared_memory(dt, q_desc.block_type.shape, q_desc.layout)
            mbarrier.expect(kbar.index(0), q_desc.block_type.nbytes)
            _tma_load(q_desc, [b, start_m, 0], kbar.index(0), qa_s)
            mbarrier.expect(kbar.index(1), q_desc.block_type.nbytes)
            _tma_load(q_desc, [b, start_m + BM, 0], kbar.index(1), qb_s)

        k2 = k_s.reshape([BN, D])
        ds_s = gl.allocate_shared_memory(dt, [BM, BN], gl.NVMMASharedLayout.get_default_for([BM, BN], dt))
        lse_b = LSE + b * T
        delta_b = DELTA + bs * T
        dq_b = DQ + b * T * D
        mbarrier.wait(kbar.index(2), 0)
        mbarrier.wait(kbar.index(0), 0)
        dk = _dk_gluon_tile(dpa, k2, qa_s.reshape([BM, D]), ds_s, dpa, lse_b, delta_b, dq_b, start_m, start_n,
                            T, qk, scale, BM, BN, D, ACC_L, True, ROWS)
        mbarrier.wait(kbar.index(1), 0)
        dk = _dk_gluon_tile(dpb, k2, qb_s.reshape([BM, D]), ds_s, dk, lse_b, delta_b, dq_b, start_m + BM,
                            start_n, T, qk, scale, BM, BN, D, ACC_L, False, ROWS)
        for i in gl.static_range(3):
            mbarrier.invalidate(kbar.index(i))
        offs_n = start_n + gl.arange(0, BN, layout=gl.SliceLayout(1, ACC_L))
        offs_d = gl.arange(0, D, layout=gl.SliceLayout(0, ACC_L))
        gl.atomic_add(DK + (b * T + offs_n[:, None]) * D + offs_d[None, :], dk * scale,
                      mask=(offs_n < T)[:, None], sem="relaxed")


def descriptors(q2, k2, v, dn, bm: int, bn: int, kc: int):
    """Host tensor descriptors: Q2/K2 [B, T, D] in [1, rows, D] blocks, V/dN [B, H, T, DV] in
    [1, 1, rows, KC] blocks (the T boundary of each head is the descriptor's, zero-filled)."""
    d, dv = q2.shape[-1], v.shape[-1]
    qd = TensorDescriptor(q2, list(q2.shape), list(q2.stride()), [1, bm, d], nvmma_layout([1, bm, d], q2.dtype))
    kd = TensorDescriptor(k2, list(k2.shape), list(k2.stride()), [1, bn, d], nvmma_layout([1, bn, d], k2.dtype))
    vd = TensorDescriptor(v, list(v.shape), list(v.stride()), [1, 1, bn, kc], nvmma_layout([1, 1, bn, kc], v.dtype))
    dd = TensorDescriptor(dn, list(dn.shape), list(dn.stride()), [1, 1, bm, kc], nvmma_layout([1, 1, bm, kc], dn.dtype))
    return qd, kd, vd, dd


def noise_bwd_dk_gluon(q2, k2, v, dn, lse, delta, dk32, dq32, tbl, h, hs, split, t, scale_log2, scale,
                       bm=128, bn=128, config=None, go=None):
    """Launch the Gluon dK/dQ kernel (same arguments as the lean kernel's launch). go: a launcher
    ``go(kernel, grid, args, **opts)`` (noise_once's recorder for the launch replay), else direct."""
    kc, stages, w, early_q, rows = config or GLUON_CONFIG
    qd, kd, vd, dd = descriptors(q2, k2, v, dn, bm, bn, kc)
    grid = (tbl.numel() // 2, q2.shape[0] * split)
    args = (qd, kd, vd, dd, lse, delta, dk32, dq32, tbl, h, hs, split, t, scale_log2, scale, q2.shape[-1],
            v.shape[-1], bm, bn, kc, stages, bool(early_q), bool(rows))
    if go is not None:
        return go(_noise_bwd_dk_gluon_kernel, grid, args, num_warps=w)
    return _noise_bwd_dk_gluon_kernel[grid](*args, num_warps=w)
