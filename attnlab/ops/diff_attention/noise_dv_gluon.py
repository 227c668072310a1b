"""The noise-once dV kernel written in Gluon (Hopper: TMA ring + mbarriers + async wgmma).

Same function as ``noise_once._noise_bwd_dv_kernel`` (same inputs and outputs): a program = one key block
of BN keys x one group of G heads; dV_h = P2^T dN_h for the group's heads, the transposed noise map
P2^T = exp2(K2 Q2^T * qk - LSE) (causal) recomputed once per group and query tile. Per step (a query tile
of BM rows, from the key block's diagonal to T) a STAGES-deep ring of shared-memory slots filled by the
tensor memory accelerator (host tensor descriptors, one mbarrier per slot) holds the Q2 tile and the group's
G dN tiles; S2^T [BN, BM] by one async wgmma (K2 resident in shared memory), P2^T to bf16 and into the
layout of a wgmma A operand held in registers, then G async wgmma dV_h += P2^T dN_h (B from the ring).
The next slot's loads are issued once every warpgroup has its S2^T (a CTA barrier), i.e. once the previous
step's products are done.

Two shapes (``GLUON_DV_CONFIG`` = (G, BM, BN, STAGES, num_warps, OVERLAP)):
- G = 4, BN = 64 (the default config): the noise map is recomputed once per 4 heads (20 work units
  instead of the Triton kernel's 24 at H = 16); the G [64, 128] float32 accumulators (128 registers per
  thread at 8 warps) are split by columns between the two warpgroups (warps [4, 2]): each warpgroup
  computes half of S2^T's columns, and P2^T reaches both through shared memory (the layout conversion).
  The cost: half the keys per program, so twice the L2 bytes per FLOP (Q2 and dN tiles) of BN = 128.
- G = 2, BN = 128: the Triton kernel's shape (warps [8, 1], each warpgroup owns 64 keys; P2^T stays in
  registers), as the TMA-ring pipeline alone.

OVERLAP: the software-pipelined loop (S2^T of step i + 1 issued before step i's products; step i + 1's
exponentials run while the tensor cores do step i's products). Every loop retires its products at the
step's end with P2^T among the wait's ``deps``: the register allocator does not see an async wgmma's
register operand as live until the wait, reused its registers for the next P2^T, and ptxas then serialised
every wgmma of the kernel (C7513/C7514; the kernels of device call 1 were).

Measured on an H100 (benchmarks/RESULTS.md, "Session 8 round 2"): correct (dV bit-identical to the Triton
kernel's), but SLOWER than the Triton dV kernel at every T >= 4K in every config: at T = 16K the best 4-head
config 1.165x its time, the 2-head form 1.14x; the 4-head form is bound by L2 bandwidth (twice the Q2/dN
bytes per FLOP of 128-key blocks: ~5.5 TB/s at 16K); the CMD op with it 0.819x the notebook (paired) against
0.798x with the Gluon dK/dQ kernel alone. Off by default (``noise_once.GLUON_DV``).

``CAST``: the first group's programs also convert their key block's rows of the float32 dQ2/dK2 workspace to
the output dtype (as the Triton kernel). Gluon has no interpreter and compiles only for NVIDIA GPUs:
``available()`` says whether this kernel can take a backward (Hopper, bf16/fp16, 128-wide heads,
TMA-compatible strides); everywhere else ``noise_once`` runs the Triton dV kernel. Written for Triton 3.6
(the GPU machine's); a kernel that fails to compile or launch switches itself off (``BROKEN``).
"""

from __future__ import annotations

import torch

try:  # Gluon ships with triton >= 3.5; CPU-only installs may lack it
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.language.nvidia.hopper import mbarrier, tma, warpgroup_mma, warpgroup_mma_wait
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor
    # the TMA load is tma.async_copy_global_to_shared in Triton 3.6 (the GPU machine's), tma.async_load later
    _tma_load = tma.async_load if hasattr(tma, "async_load") else tma.async_copy_global_to_shared
    _cta_barrier = gl.thread_barrier if hasattr(gl, "thread_barrier") else gl.barrier  # renamed after 3.6
    HAVE_GLUON = True
except Exception:  # pragma: no cover - depends on the installed triton
    HAVE_GLUON = False


# (G heads per program, BM query rows per step, BN keys per program, STAGES of the ring, num_warps, OVERLAP:
# S2^T of the next step issued before this step's products, which then cover its exponentials; needs
# STAGES >= 3)
GLUON_DV_CONFIG = (4, 32, 64, 5, 8, 1)  # the fastest 4-head config measured (still 1.165x the Triton kernel)
# the measured alternatives (benchmarks/bench_noise_dv_gluon.py; RESULTS.md "Session 8 round 2")
CONFIGS = ((4, 32, 64, 5, 8, 1), (4, 64, 64, 2, 8, 0), (2, 64, 128, 3, 8, 0), (2, 64, 128, 4, 8, 1))

BROKEN = ""  # set (the error) if the kernel failed to compile or launch here: the Triton kernel from then on


def _interpret() -> bool:
    import os
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def available(q2, k2, dn, dvo, d: int, dv: int) -> bool:
    """True where the Gluon kernel can take this dV: CUDA tensors on an sm_90 GPU (Hopper), Gluon
    importable, not the interpreter, bf16/fp16, head dims 128 (the measured shape), T >= 128, dn
    contiguous, TMA-compatible strides (q2, k2, dn), the output's last dim contiguous."""
    if not HAVE_GLUON or BROKEN or _interpret() or not q2.is_cuda:
        return False
    if torch.cuda.get_device_capability(q2.device)[0] != 9:
        return False
    if q2.dtype not in (torch.bfloat16, torch.float16) or (d, dv) != (128, 128) or q2.shape[-2] < 128:
        return False
    if not dn.is_contiguous() or dvo.stride(-1) != 1 or dvo.dtype != q2.dtype:
        return False
    esz = q2.element_size()
    for x in (q2, k2, dn):
        if x.dtype != q2.dtype or x.stride(-1) != 1 or x.data_ptr() % 16:
            return False
        if any((s * esz) % 16 for s in x.stride()[:-1]):
            return False
    return True


if HAVE_GLUON:

    @gluon.jit
    def _dv_gluon_load(q_desc, dn_desc, bars, q_s, dn_s, j, n_steps, b, h0, start_n,
                       G: gl.constexpr, BM: gl.constexpr, STAGES: gl.constexpr):
        """Issue the TMA loads of step j (if j < n_steps: the Q2 tile and the group's G dN tiles of query
        rows start_n + j BM ..) into ring slot j % STAGES."""
        st = j % STAGES
        pred = j < n_steps
        start_m = start_n + j * BM
        bar = bars.index(st)
        mbarrier.expect(bar, q_desc.block_type.nbytes + G * dn_desc.block_type.nbytes, pred=pred)
        _tma_load(q_desc, [b, start_m, 0], bar, q_s.index(st), pred=pred)
        for g in gl.static_range(G):
            _tma_load(dn_desc, [b, h0 + g, start_m, 0], bar, dn_s.index(st * G + g), pred=pred)

    @gluon.jit
    def _dv_gluon_p(s, lse_b, start_m, offs_n, T, qk, BM: gl.constexpr, S_L: gl.constexpr, P_L: gl.constexpr,
                    dt: gl.constexpr):
        """P2^T of the query tile at start_m from its scores S2^T [BN, BM], causal (rows >= T have
        LSE = inf: P2 = 0; keys >= T only meet zero-filled dN rows' columns), as a wgmma A operand."""
        offs_m = start_m + gl.arange(0, BM, layout=gl.SliceLayout(0, S_L))
        lse = gl.load(lse_b + offs_m, mask=offs_m < T, other=float("inf"))
        p = gl.exp2(s * qk - lse[None, :])
        p = gl.where(offs_m[None, :] >= offs_n[:, None], p, 0.0)
        return gl.convert_layout(p.to(dt), P_L)

    @gluon.jit
    def _dv_gluon_store(acc, DVO, b, h, H, offs_n, offs_d, sdvb, sdvh, sdvt, T):
        ptrs = DVO + b * sdvb + h * sdvh + offs_n[:, None] * sdvt + offs_d[None, :]
        gl.store(ptrs, acc.to(DVO.dtype.element_ty), mask=(offs_n < T)[:, None] & (h < H))

    @gluon.jit
    def _noise_bwd_dv_gluon_kernel(q_desc, k_desc, dn_desc, LSE, DVO, DQK, DQK16, sdvb, sdvh, sdvt,
                                   H, NG, T, BTD, qk,
                                   D: gl.constexpr, DV: gl.constexpr, G: gl.constexpr, BM: gl.constexpr,
                                   BN: gl.constexpr, STAGES: gl.constexpr, OVERLAP: gl.constexpr,
                                   CAST: gl.constexpr, MAJOR: gl.constexpr):
        # num_warps is read with gl.num_warps(), not taken as a parameter: a launch's positional arguments
        # are then all of the kernel's parameters, as the launch replay (latent.py) passes them
        if MAJOR:
            pid_n = gl.program_id(1)
            bg = gl.program_id(0)
        else:
            pid_n = gl.program_id(0)
            bg = gl.program_id(1)
        b = bg // NG
        h0 = (bg % NG) * G
        start_n = pid_n * BN
        n_steps = gl.cdiv(T - start_n, BM)

        NW: gl.constexpr = gl.num_warps()
        WM: gl.constexpr = BN // 16  # warps along the keys (16 rows each; a warpgroup owns 64 keys)
        WN: gl.constexpr = NW // WM  # warpgroups splitting the columns
        S_L: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[WM, WN],
                                                      instr_shape=[16, BM // WN, 16])
        O_L: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[WM, WN],
                                                      instr_shape=[16, DV // WN, 16])
        dt: gl.constexpr = dn_desc.dtype
        P_L: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=O_L, k_width=2)

        q_s = gl.allocate_shared_memory(dt, [STAGES] + q_desc.block_type.shape, q_desc.layout)
        dn_s = gl.allocate_shared_memory(dt, [STAGES * G] + dn_desc.block_type.shape, dn_desc.layout)
        k_s = gl.allocate_shared_memory(dt, k_desc.block_type.shape, k_desc.layout)
        bars = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        kbar = gl.allocate_shared_memory(gl.int64, [1, 1], mbarrier.MBarrierLayout())
        for i in gl.static_range(STAGES):
            mbarrier.init(bars.index(i), count=1)
        mbarrier.init(kbar.index(0), count=1)
        mbarrier.expect(kbar.index(0), k_desc.block_type.nbytes)
        _tma_load(k_desc, [b, start_n, 0], kbar.index(0), k_s)
        for i in gl.static_range(STAGES - 1):
            _dv_gluon_load(q_desc, dn_desc, bars, q_s, dn_s, i, n_steps, b, h0, start_n, G, BM, STAGES)

        offs_n = start_n + gl.arange(0, BN, layout=gl.SliceLayout(1, S_L))
        lse_b = LSE + b * T
        k2 = k_s.reshape([BN, D])
        acc0 = gl.zeros([BN, DV], gl.float32, O_L)
        acc1 = gl.zeros([BN, DV], gl.float32, O_L)
        acc2 = gl.zeros([BN, DV], gl.float32, O_L)
        acc3 = gl.zeros([BN, DV], gl.float32, O_L)
        mbarrier.wait(kbar.index(0), 0)
        if OVERLAP:
            # software-pipelined: S2^T of step i + 1 is issued before step i's products, whose tensor-core
            # time then covers step i + 1's exponentials (P2^T of step i stays in registers meanwhile)
            mbarrier.wait(bars.index(0), 0)
            s = warpgroup_mma(k2, q_s.index(0).reshape([BM, D]).permute((1, 0)),
                              gl.zeros([BN, BM], gl.float32, S_L), use_acc=False, is_async=True)
            s = warpgroup_mma_wait(num_outstanding=0, deps=(s, ))
            pa = _dv_gluon_p(s, lse_b, start_n, offs_n, T, qk, BM, S_L, P_L, dt)
            for i in range(n_steps - 1):
                st = i % STAGES
                stn = (i + 1) % STAGES
                offs_m = start_n + (i + 1) * BM + gl.arange(0, BM, layout=gl.SliceLayout(0, S_L))
                lse = gl.load(lse_b + offs_m, mask=offs_m < T, other=float("inf"))
                mbarrier.wait(bars.index(stn), ((i + 1) // STAGES) & 1)
                s = warpgroup_mma(k2, q_s.index(stn).reshape([BM, D]).permute((1, 0)),
                                  gl.zeros([BN, BM], gl.float32, S_L), use_acc=False, is_async=True)
                acc0 = warpgroup_mma(pa, dn_s.index(st * G).reshape([BM, DV]), acc0, is_async=True)
                acc1 = warpgroup_mma(pa, dn_s.index(st * G + 1).reshape([BM, DV]), acc1, is_async=True)
                if G == 4:
                    acc2 = warpgroup_mma(pa, dn_s.index(st * G + 2).reshape([BM, DV]), acc2, is_async=True)
                    acc3 = warpgroup_mma(pa, dn_s.index(st * G + 3).reshape([BM, DV]), acc3, is_async=True)
                    s = warpgroup_mma_wait(num_outstanding=4, deps=(s, ))
                else:
                    s = warpgroup_mma_wait(num_outstanding=2, deps=(s, ))
                # S2^T of step i + 1 is done, so are step i - 1's products (in order), in every warpgroup
                # after the barrier: that slot takes step i + STAGES - 1 (needs STAGES >= 3)
                _cta_barrier()
                _dv_gluon_load(q_desc, dn_desc, bars, q_s, dn_s, i + STAGES - 1, n_steps, b, h0, start_n, G,
                               BM, STAGES)
                p = gl.exp2(s * qk - lse[None, :])
                p = gl.where(offs_m[None, :] >= offs_n[:, None], p, 0.0)
                pn = gl.convert_layout(p.to(dt), P_L)
                # step i's products retire here (pa in the deps keeps its registers allocated until then:
                # ptxas serialises every wgmma if registers an in-flight wgmma reads are redefined)
                if G == 4:
                    acc0, acc1, acc2, acc3, pa = warpgroup_mma_wait(num_outstanding=0,
                                                                    deps=(acc0, acc1, acc2, acc3, pa))
                else:
                    acc0, acc1, pa = warpgroup_mma_wait(num_outstanding=0, deps=(acc0, acc1, pa))
                pa = pn
            st = (n_steps - 1) % STAGES
            acc0 = warpgroup_mma(pa, dn_s.index(st * G).reshape([BM, DV]), acc0, is_async=True)
            acc1 = warpgroup_mma(pa, dn_s.index(st * G + 1).reshape([BM, DV]), acc1, is_async=True)
            if G == 4:
                acc2 = warpgroup_mma(pa, dn_s.index(st * G + 2).reshape([BM, DV]), acc2, is_async=True)
                acc3 = warpgroup_mma(pa, dn_s.index(st * G + 3).reshape([BM, DV]), acc3, is_async=True)
            if G == 4:
                acc0, acc1, acc2, acc3, pa = warpgroup_mma_wait(num_outstanding=0, deps=(acc0, acc1, acc2, acc3, pa))
            else:
                acc0, acc1, pa = warpgroup_mma_wait(num_outstanding=0, deps=(acc0, acc1, pa))
        else:
            for i in range(n_steps):
                st = i % STAGES
                mbarrier.wait(bars.index(st), (i // STAGES) & 1)
                start_m = start_n + i * BM
                s = warpgroup_mma(k2, q_s.index(st).reshape([BM, D]).permute((1, 0)),
                                  gl.zeros([BN, BM], gl.float32, S_L), use_acc=False, is_async=True)
                # this also retires the previous step's products (wgmma groups complete in order)
                s = warpgroup_mma_wait(num_outstanding=0, deps=(s, ))
                pa = _dv_gluon_p(s, lse_b, start_m, offs_n, T, qk, BM, S_L, P_L, dt)
                _cta_barrier()  # every warpgroup is past step i - 1's products: its slot takes step i + STAGES - 1
                _dv_gluon_load(q_desc, dn_desc, bars, q_s, dn_s, i + STAGES - 1, n_steps, b, h0, start_n, G, BM,
                               STAGES)
                acc0 = warpgroup_mma(pa, dn_s.index(st * G).reshape([BM, DV]), acc0, is_async=True)
                acc1 = warpgroup_mma(pa, dn_s.index(st * G + 1).reshape([BM, DV]), acc1, is_async=True)
                if G == 4:
                    acc2 = warpgroup_mma(pa, dn_s.index(st * G + 2).reshape([BM, DV]), acc2, is_async=True)
                    acc3 = warpgroup_mma(pa, dn_s.index(st * G + 3).reshape([BM, DV]), acc3, is_async=True)
                    acc0, acc1, acc2, acc3, pa = warpgroup_mma_wait(num_outstanding=0,
                                                                    deps=(acc0, acc1, acc2, acc3, pa))
                else:
                    acc0, acc1, pa = warpgroup_mma_wait(num_outstanding=0, deps=(acc0, acc1, pa))
        for i in gl.static_range(STAGES):
            mbarrier.invalidate(bars.index(i))
        mbarrier.invalidate(kbar.index(0))

        offs_no = start_n + gl.arange(0, BN, layout=gl.SliceLayout(1, O_L))
        offs_d = gl.arange(0, DV, layout=gl.SliceLayout(0, O_L))
        _dv_gluon_store(acc0, DVO, b, h0, H, offs_no, offs_d, sdvb, sdvh, sdvt, T)
        _dv_gluon_store(acc1, DVO, b, h0 + 1, H, offs_no, offs_d, sdvb, sdvh, sdvt, T)
        if G == 4:
            _dv_gluon_store(acc2, DVO, b, h0 + 2, H, offs_no, offs_d, sdvb, sdvh, sdvt, T)
            _dv_gluon_store(acc3, DVO, b, h0 + 3, H, offs_no, offs_d, sdvb, sdvh, sdvt, T)
        if CAST:
            if h0 == 0:
                C_L: gl.constexpr = gl.BlockedLayout([1, 8], [4, 8], [NW, 1], [1, 0])
                offs_c = start_n + gl.arange(0, BN, layout=gl.SliceLayout(1, C_L))
                offs_e = gl.arange(0, D, layout=gl.SliceLayout(0, C_L))
                idx = (b * T + offs_c[:, None]) * D + offs_e[None, :]
                m2 = (offs_c < T)[:, None] & (offs_e < D)[None, :]
                gl.store(DQK16 + idx, gl.load(DQK + idx, mask=m2, other=0.0).to(DQK16.dtype.element_ty), mask=m2)
                gl.store(DQK16 + BTD + idx, gl.load(DQK + BTD + idx, mask=m2, other=0.0).to(DQK16.dtype.element_ty),
                         mask=m2)


def _layout(block, dtype):
    return gl.NVMMASharedLayout.get_default_for(block, gl.bfloat16 if dtype == torch.bfloat16 else gl.float16)


def descriptors(q2, k2, dn, bm: int, bn: int):
    """Host tensor descriptors: Q2/K2 [B, T, D] in [1, rows, D] blocks, dN [B, H, T, DV] in [1, 1, BM, DV]
    blocks (each head's T boundary, and heads >= H, are the descriptor's: zero-filled)."""
    d, dv = q2.shape[-1], dn.shape[-1]
    qd = TensorDescriptor(q2, list(q2.shape), list(q2.stride()), [1, bm, d], _layout([1, bm, d], q2.dtype))
    kd = TensorDescriptor(k2, list(k2.shape), list(k2.stride()), [1, bn, d], _layout([1, bn, d], k2.dtype))
    dd = TensorDescriptor(dn, list(dn.shape), list(dn.stride()), [1, 1, bm, dv], _layout([1, 1, bm, dv], dn.dtype))
    return qd, kd, dd


def noise_bwd_dv_gluon(q2, k2, dn, lse, dvo, dqk32, dqk16, h, t, btd, scale_log2, cast=True, major=True,
                       config=None, go=None):
    """Launch the Gluon dV kernel (the Triton dV kernel's arguments: dqk32 the float32 [dQ2 | dK2]
    workspace, dqk16 the [2, B, T, D] output it is cast into when ``cast``). go: a launcher
    ``go(kernel, grid, args, **opts)`` (noise_once's recorder for the launch replay), else direct."""
    g, bm, bn, stages, w, *rest = config or GLUON_DV_CONFIG
    overlap = bool(rest[0]) if rest else False
    if overlap and stages < 3:
        raise ValueError(f"noise_dv_gluon config {tuple(config)}: the overlapped pipeline needs STAGES >= 3")
    qd, kd, dd = descriptors(q2, k2, dn, bm, bn)
    b = q2.shape[0]
    ng = -(-h // g)
    nb = -(-t // bn)
    grid = (b * ng, nb) if major else (nb, b * ng)
    args = (qd, kd, dd, lse, dvo, dqk32, dqk16, dvo.stride(0), dvo.stride(1), dvo.stride(2), h, ng, t, btd,
            scale_log2, q2.shape[-1], dn.shape[-1], g, bm, bn, stages, overlap, bool(cast), bool(major))
    if go is not None:
        return go(_noise_bwd_dv_gluon_kernel, grid, args, num_warps=w)
    return _noise_bwd_dv_gluon_kernel[grid](*args, num_warps=w)
