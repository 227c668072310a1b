"""DSALT's window dK/dV kernel written in Gluon (Hopper: TMA ring + mbarriers + async wgmma).

Same function as ``jit_attention._dkdv_kernel``: same inputs (Q, K, V, the windows W, dO, LSE and DELTA in log2
units as the forward / dQ kernels store them, the window minima WMIN of every WG rows where the dQ kernel stored
them, else the tile's windows reduced here), same outputs (the window part of dK and dV, stored, no atomics;
the landmark kernel adds into them afterwards). A program = one key tile of BN = 128 keys (two warpgroups of 64
keys) x one (batch, kv head); it walks the query tiles (BM = 64 rows) that can see its keys, for every head of
the kv group, in the Triton kernel's order, and decides each tile's kind as that kernel does (edge: the soft
weight r and the window test; diagonal: the causal test; full: no mask).

``GLUON_CONFIG`` = (BM, BN, STAGES, num_warps, form[, LEAN_BAR[, P16]]); ``_dkdv_gluon_rows_kernel`` (form 1):
per query tile S = Q K^T and dP = dO V^T as [BM rows, BN keys] (async wgmma; the warpgroups split the keys, each
thread holds 2 rows' LSE / Delta), P = 2^(S qk - LSE) (masked per tile kind) and dS = P (dP - Delta) stored to
shared memory as bf16 / fp16, dV += P^T dO and dK += dS^T Q (the transposed shared-memory views as A operands),
left in flight until the next tile's S is ready. Two other forms were measured and removed at the session-9
merge (code at merge da6482d): form 0, the Triton kernel's transposed orientation with P^T / dS^T as register
operands (spilled ~200 bytes, slowest), and form 2, a warp-specialised one (1-warp TMA producer, the two 64-key
halves as unsynchronised consumer partitions: 8% slower than form 1).

The Q / dO tiles come through a STAGES-deep ring of shared-memory slots filled by the tensor memory accelerator
(host tensor descriptors over [B*H, T, D]: the T boundary is the descriptor's, zero-filled), one mbarrier per
slot; K and V are loaded once. Launches are replayed from the second call of a key on (``launch_replay.DescLauncher``:
the compiled launcher called with descriptor stand-ins on the new tensors, no host descriptors built).

Measured on an H100 (benchmarks/RESULTS.md, "Session 9: DSALT dK/dV in Gluon"): form 1 939 us vs the Triton
kernel's 989 us at T = 32K (5% faster on the GPU); DSALT fwd+bwd no faster end to end in the helper's call; in the
lead's two calls (with the launch replay and the Gluon dQ pass) faster at 16K and 32K, slower at 4K (host
bound): ``kernel.OPTS["gluon_dkdv"]`` is on where T >= ``OPTS["gluon_dkdv_min_t"]`` (16384).

Gluon has no interpreter and compiles only for NVIDIA GPUs: ``available()`` says whether this kernel can take a
backward (Hopper, bf16/fp16, head dim 128, TMA-compatible contiguous tensors); everywhere else ``kernel.py`` runs
the Triton kernel, and a compile / launch failure switches this one off (``BROKEN``) with a warning. Written for
Triton 3.6 (the GPU machine's).
"""

from __future__ import annotations

import torch

from ..gluon_compat import (HAVE_GLUON, fence_async_shared, gl, gluon,  # noqa: F401
                            hopper_ready, mbarrier, nvmma_layout, tma_ok, warpgroup_mma, warpgroup_mma_wait)
from ..gluon_compat import cta_barrier as _cta_barrier, tma_load as _tma_load
from ..launch_replay import Desc, DescLauncher

if HAVE_GLUON:
    from triton.experimental.gluon.language.nvidia.hopper import warpgroup_mma_init

# (BM query rows per tile, BN keys per program, STAGES of the Q/dO ring, num_warps, form 1: the [query rows,
# keys] form with P / dS through shared memory (the only form kept))
GLUON_CONFIG = (64, 128, 3, 8, 1)

BROKEN = ""  # set (the error) if the kernel failed to compile or launch here: the Triton kernel from then on


def available(q, k, v, do) -> bool:
    """True where the Gluon kernel can take this backward: CUDA tensors on an sm_90 GPU, Gluon
    importable, not the interpreter, bf16/fp16, head dim 128, contiguous TMA-compatible tensors,
    offsets within int32."""
    if BROKEN or not hopper_ready(q):
        return False
    if q.dtype not in (torch.bfloat16, torch.float16) or not (k.dtype == v.dtype == do.dtype == q.dtype):
        return False
    if q.shape[-1] != 128 or q.dim() != 4:
        return False
    if not all(x.is_contiguous() for x in (q, k, v, do)) or q.numel() >= 2**31:
        return False
    return tma_ok(q, k, v, do)


if HAVE_GLUON:

    @gluon.jit
    def _dkdv_gluon_load(q_desc, do_desc, bars, q_s, do_s, j, n_it, n_m, m_lo, bh0,
                         STAGES: gl.constexpr, BM: gl.constexpr):
        """Issue the TMA loads of query tile j (if j < n_it) into ring slot j % STAGES."""
        st = j % STAGES
        pred = j < n_it
        g = j // n_m
        start_m = m_lo + (j % n_m) * BM
        bar = bars.index(st)
        mbarrier.expect(bar, 2 * q_desc.block_type.nbytes, pred=pred)
        _tma_load(q_desc, [bh0 + g, start_m, 0], bar, q_s.index(st), pred=pred)
        _tma_load(do_desc, [bh0 + g, start_m, 0], bar, do_s.index(st), pred=pred)

    @gluon.jit
    def _dkdv_gluon_rows_kernel(q_desc, k_desc, v_desc, do_desc, W, LSE, DELTA, DK, DV, WMIN,
                                H, G, T, n_max, edge, inv_edge, qk_scale, sm_scale,
                                D: gl.constexpr, BM: gl.constexpr, BN: gl.constexpr, STAGES: gl.constexpr,
                                WG: gl.constexpr, LEAN_BAR: gl.constexpr = False, P16: gl.constexpr = False):
        """ROWS form: S = Q K^T and dP = dO V^T as [BM query rows, BN keys] (the two warpgroups split the
        keys: each thread holds 2 rows' LSE / Delta instead of 16 columns'), P and dS through shared
        memory (bf16) as the transposed A operands of dV += P^T dO and dK += dS^T Q."""
        pid_n = gl.program_id(0)
        pid_bh = gl.program_id(1)  # over batch * kv heads
        hkv = H // G
        b = pid_bh // hkv
        hk = pid_bh % hkv
        bh0 = b * H + hk * G
        n0 = pid_n * BN
        m_lo = (n0 // BM) * BM
        m_hi = gl.minimum(n0 + BN - 1 + n_max, T)
        n_m = (m_hi - m_lo + BM - 1) // BM
        n_it = G * n_m

        NW: gl.constexpr = gl.num_warps()
        S_L: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, NW // 4],
                                                       instr_shape=[16, BN // (NW // 4), 16])
        A_L: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[NW, 1],
                                                       instr_shape=[16, D, 16])
        dt: gl.constexpr = q_desc.dtype

        k_s = gl.allocate_shared_memory(dt, k_desc.block_type.shape, k_desc.layout)
        v_s = gl.allocate_shared_memory(dt, v_desc.block_type.shape, v_desc.layout)
        q_s = gl.allocate_shared_memory(dt, [STAGES] + q_desc.block_type.shape, q_desc.layout)
        do_s = gl.allocate_shared_memory(dt, [STAGES] + do_desc.block_type.shape, do_desc.layout)
        PS_L: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BM, BN], dt)
        p_s = gl.allocate_shared_memory(dt, [BM, BN], PS_L)
        ds_s = gl.allocate_shared_memory(dt, [BM, BN], PS_L)
        bars = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        kvbar = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
        for i in gl.static_range(STAGES):
            mbarrier.init(bars.index(i), count=1)
        mbarrier.init(kvbar, count=1)
        mbarrier.expect(kvbar, 2 * k_desc.block_type.nbytes)
        _tma_load(k_desc, [pid_bh, n0, 0], kvbar, k_s)
        _tma_load(v_desc, [pid_bh, n0, 0], kvbar, v_s)
        for i in gl.static_range(STAGES - 1):
            _dkdv_gluon_load(q_desc, do_desc, bars, q_s, do_s, i, n_it, n_m, m_lo, bh0, STAGES, BM)

        offs_n = n0 + gl.arange(0, BN, layout=gl.SliceLayout(0, S_L))
        offs_m0 = gl.arange(0, BM, layout=gl.SliceLayout(1, S_L))
        dk = warpgroup_mma_init(gl.zeros([BN, D], gl.float32, A_L))  # in flight across iterations
        dv = gl.zeros([BN, D], gl.float32, A_L)
        ntw = T
        if WG > 0:
            ntw = (T + WG - 1) // WG
        ktT = k_s.reshape([BN, D]).permute((1, 0))
        vtT = v_s.reshape([BN, D]).permute((1, 0))
        pT_s = p_s.permute((1, 0))
        dsT_s = ds_s.permute((1, 0))
        mbarrier.wait(kvbar, 0)
        for i in range(n_it):
            st = i % STAGES
            g = i // n_m
            start_m = m_lo + (i % n_m) * BM
            bh = bh0 + g
            qt = q_s.index(st).reshape([BM, D])
            dot_ = do_s.index(st).reshape([BM, D])
            mbarrier.wait(bars.index(st), (i // STAGES) & 1)
            s = warpgroup_mma(qt, ktT, gl.zeros([BM, BN], gl.float32, S_L), use_acc=False, is_async=True)
            dp = warpgroup_mma(dot_, vtT, gl.zeros([BM, BN], gl.float32, S_L), use_acc=False, is_async=True)
            offs_m = start_m + offs_m0
            mrow = offs_m < T
            lse = gl.load(LSE + bh * T + offs_m, mask=mrow, other=0.0)
            delta = gl.load(DELTA + bh * T + offs_m, mask=mrow, other=0.0)
            if WG > 0:
                wlo = gl.load(WMIN + bh * ntw + start_m // WG)
                for gi in gl.static_range(1, BM // WG):
                    wlo = gl.minimum(wlo, gl.load(WMIN + bh * ntw + gl.minimum(start_m // WG + gi, ntw - 1)))
            else:
                wlo = gl.min(gl.load(W + bh * T + offs_m, mask=mrow, other=1.0), 0)
            fr = gl.minimum(gl.floor(wlo - 0.5 - edge * 0.5).to(gl.int32) - 1, n_max - 1)
            on_edge = (start_m + BM - 1 - n0 > fr) | (start_m + BM > T)
            on_diag = start_m < n0 + BN - 1
            # S ready; the previous tile's dV and dK products are done (in order)
            s, dk, dv = warpgroup_mma_wait(num_outstanding=1, deps=(s, dk, dv))
            if not LEAN_BAR:
                # both warpgroups are past tile i - 1: P / dS may be rewritten, its ring slot takes tile
                # i + STAGES - 1
                _cta_barrier()
                _dkdv_gluon_load(q_desc, do_desc, bars, q_s, do_s, i + STAGES - 1, n_it, n_m, m_lo, bh0, STAGES,
                                 BM)
            if on_edge:
                w = gl.load(W + bh * T + offs_m, mask=mrow, other=1.0)
                dd = offs_m[:, None] - offs_n[None, :]
                r = (w[:, None] - dd.to(gl.float32) - 0.5) * inv_edge + 0.5
                r = gl.minimum(r, 1.0)
                ok = (dd >= 0) & (dd < n_max) & (r > 0) & (offs_n[None, :] < T) & mrow[:, None]
                p = gl.where(ok, gl.exp2(s * qk_scale - lse[:, None]) * r, 0.0)
            elif on_diag:
                p = gl.where(offs_m[:, None] >= offs_n[None, :], gl.exp2(s * qk_scale - lse[:, None]), 0.0)
            else:
                p = gl.exp2(s * qk_scale - lse[:, None])
            if P16:  # P rounded to bf16 / fp16 for dS too (16 fewer live registers)
                p = p.to(dt)
                p_s.store(p)
            else:
                p_s.store(p.to(dt))
            fence_async_shared()
            _cta_barrier()
            if LEAN_BAR:
                # each warpgroup writes and reads only its own keys' columns of P / dS (S_L splits the keys
                # between the warpgroups as A_L does), so the barrier above also tells that both are past
                # tile i - 1: its ring slot takes tile i + STAGES - 1
                _dkdv_gluon_load(q_desc, do_desc, bars, q_s, do_s, i + STAGES - 1, n_it, n_m, m_lo, bh0, STAGES,
                                 BM)
            dv = warpgroup_mma(pT_s, dot_, dv, is_async=True)
            dp, dv = warpgroup_mma_wait(num_outstanding=1, deps=(dp, dv))
            ds_s.store((p.to(gl.float32) * (dp - delta[:, None])).to(dt))
            fence_async_shared()
            _cta_barrier()
            dk = warpgroup_mma(dsT_s, qt, dk, is_async=True)
        dk, dv = warpgroup_mma_wait(num_outstanding=0, deps=(dk, dv))
        for i in gl.static_range(STAGES):
            mbarrier.invalidate(bars.index(i))
        mbarrier.invalidate(kvbar)
        offs_nk = n0 + gl.arange(0, BN, layout=gl.SliceLayout(1, A_L))
        offs_d = gl.arange(0, D, layout=gl.SliceLayout(0, A_L))
        off = (pid_bh * T + offs_nk[:, None]) * D + offs_d[None, :]
        nmask = (offs_nk < T)[:, None]
        gl.store(DK + off, (dk * sm_scale).to(DK.dtype.element_ty), mask=nmask)
        gl.store(DV + off, dv.to(DV.dtype.element_ty), mask=nmask)


_LAYOUTS: dict = {}


def _layout(block, dtype):
    key = (tuple(block), dtype)
    if key not in _LAYOUTS:
        _LAYOUTS[key] = nvmma_layout(list(block), dtype)
    return _LAYOUTS[key]


def _view3(x):
    """(shape, strides) of a contiguous [B, H, T, D] tensor seen as [B*H, T, D]."""
    t, d = x.shape[-2], x.shape[-1]
    return [x.numel() // (t * d), t, d], [t * d, d, 1]


def _descs(q, k, v, do, bm: int, bn: int):
    """Descriptor stand-ins (launch_replay.Desc) over [B*H, T, D] (Q, dO: [1, BM, D] blocks) and [B*Hk, T, D]
    (K, V: [1, BN, D] blocks); rows past T read as zeros."""
    d = q.shape[-1]

    def desc(x, rows):
        shape, strides = _view3(x)
        return Desc(x.view(shape), shape, strides, [1, rows, d], _layout([1, rows, d], x.dtype))

    return desc(q, bm), desc(k, bn), desc(v, bn), desc(do, bm)


def descriptors(q, k, v, do, bm: int, bn: int):
    """The host tensor descriptors themselves (Gluon TensorDescriptor), as a normal launch gets them."""
    return tuple(x.real() for x in _descs(q, k, v, do, bm, bn))


# launches replayed from the second of a key on (launch_replay.DescLauncher: the compiled launcher called
# directly, the descriptors handed over as stand-ins): host time counts where B=1, T=4K steps are launch bound
_GO = DescLauncher("dsalt gluon_dkdv")


def dkdv_gluon(q, k, v, win, do, lse, delta, dk, dv, wmin, h, g, t, n_max, edge, inv_edge, qk_scale, sm_scale,
               wg, config=None):
    """Launch the Gluon dK/dV kernel (the arguments of _dkdv_kernel's launch, tensors contiguous)."""
    config = config or GLUON_CONFIG
    bm, bn, stages, w, form = config[:5]
    if form != 1:
        raise ValueError(f"gluon_dkdv config: form must be 1 (the rows form; forms 0 and 2 were removed), got {form}")
    extra = tuple(bool(x) for x in config[5:])  # LEAN_BAR, P16
    grid = (triton_cdiv(t, bn), k.shape[0] * k.shape[1])
    d = q.shape[-1]
    scal = (h, g, t, n_max, float(edge), float(inv_edge), float(qk_scale), float(sm_scale), d, bm, bn, stages, wg)
    return _GO(_dkdv_gluon_rows_kernel, grid, *_descs(q, k, v, do, bm, bn), win, lse, delta, dk, dv, wmin, *scal,
               *extra, num_warps=w)


def triton_cdiv(a: int, b: int) -> int:
    return -(-a // b)
