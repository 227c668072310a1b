"""The noise-once FORWARD kernel written in Gluon (Hopper): a 4-head-group form and a 2-head-group form.

Same function as ``noise_once._noise_fwd_kernel`` (same inputs and outputs: N_h = P2 V_h for every value
head, the combination out_h = A_h - lam_h N_h in the epilogue, the log2-unit LSE of the noise map, and the
zeroing of the backward's float32 workspace by the first group's programs). K2 and the group's V_h tiles
of each key block go through a STAGES-deep ring of shared-memory slots filled by TMA (host tensor
descriptors, one mbarrier per slot; Q2 loaded once); the matmuls are async wgmma.

``_noise_fwd_gluon_kernel`` (G = 4, ``G4_CONFIG``): one program = a 64-row query block x 4 heads, so the
noise scores S2 = Q2 K2^T are computed once per 4 heads: H + H/4 = 20 matmul units at H = 16 instead of
the Triton kernel's H + H/2 = 24. A [64, 4 x 128] float32 accumulator fits in registers split over the
two warpgroups (layout ``warps_per_cta = [4, 2]``: each holds the 64 rows x half of every head's columns,
4 x [64, 64] = 128 registers per thread); S2 [64, BN] is one wgmma split the same way (the row max / sum
across the halves are reductions the compiler lowers through shared memory); P2 goes to shared memory
(bf16, double-buffered) as the A operand of the four P2 V_h wgmma. Step j issues S2_{j+1} and then the
P2_j V_j products, waits for the scores only and does block j + 1's softmax while the products run
(FlashAttention-3's intra-warpgroup overlap). 202 registers, no spills, 197 KB shared memory (sm_90).

``_noise_fwd_gluon2_kernel`` (G = 2, the default ``GLUON_FWD_CONFIG``): the Triton kernel's work (128-row
blocks x 2 heads), each warpgroup its own 64 rows with both heads' [64, 128] accumulators, P2 kept in
registers as the wgmma A operand (no shared-memory round trip, no cross-warpgroup reduction), one CTA
barrier per step (the ring slot's release). 255 registers, no spills, 229 KB (4 slots).

Measured on an H100 (benchmarks/RESULTS.md, "Session 8 round 2"): both forms are correct (every output,
bf16, vs the fp32 reference and the Triton kernel) and both are SLOWER than the Triton kernel: at T = 16K
the 4-head form 2.26-2.33 ms vs 1.58-1.60 (1.41-1.47x: with 64-row blocks every V tile serves half as many
rows, so the kernel reads ~10.8 GB of K/V tiles instead of ~6.5 GB: 4.7 TB/s, consistent with an
L2-bandwidth bound), the 2-head form
1.77 ms (1.12x; 1.2x at 4K: the compiler sinks the softmax's exponentials below the wait for the P2 V
products, and the per-step barrier keeps the warpgroups in lockstep, so the softmax does not overlap the
tensor cores). Hence ``noise_once.GLUON_FWD`` is off by default.

Gluon has no interpreter and compiles only for NVIDIA GPUs: ``available()`` says where it can run
(Hopper, bf16/fp16, 128-wide heads, TMA-compatible strides); everywhere else ``noise_once`` runs the
Triton forward kernel. Written for Triton 3.6 (the GPU machine's); names that moved later are aliased in
noise_gluon.py; a kernel that fails to compile or launch switches itself off (``BROKEN``) with a warning.
"""

from __future__ import annotations

import torch

from .noise_gluon import HAVE_GLUON, _interpret

if HAVE_GLUON:
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.language.nvidia.hopper import (fence_async_shared, mbarrier,
                                                                  warpgroup_mma, warpgroup_mma_wait)
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

    from .noise_gluon import _cta_barrier, _tma_load


# (BM query rows, BN keys per step, STAGES of the K/V ring, num_warps, EARLY, G heads per program).
# G = 4: ``_noise_fwd_gluon_kernel`` (BM 64; EARLY: each block's rescale of the accumulators while the next
# block's scores are computed, else after its products); G = 2: ``_noise_fwd_gluon2_kernel`` (BM 128, the
# Triton kernel's work; EARLY unused). The default is the 2-head form: the 4-head form was measured 1.41x the
# Triton kernel's time at T = 16K (RESULTS.md, "Session 8 round 2": 64-row blocks read twice the V bytes).
GLUON_FWD_CONFIG = (128, 64, 4, 8, 0, 2)
G4_CONFIG = (64, 64, 2, 8, 1, 4)
BROKEN = ""  # set (the error) if the kernel failed to compile or launch here: the Triton kernel from then on


def available(q2, k2, v, a=None) -> bool:
    """True where the Gluon forward can run: CUDA tensors on an sm_90 GPU, Gluon importable, not the
    interpreter, bf16/fp16, q/k and v heads 128 wide, TMA-compatible strides of q2, k2, v."""
    if not HAVE_GLUON or BROKEN or _interpret() or not q2.is_cuda:
        return False
    if torch.cuda.get_device_capability(q2.device)[0] != 9:
        return False
    if q2.dtype not in (torch.bfloat16, torch.float16) or v.dtype != q2.dtype or k2.dtype != q2.dtype:
        return False
    if a is not None and a.dtype != q2.dtype:
        return False
    if q2.shape[-1] != 128 or v.shape[-1] != 128 or k2.shape[-1] != 128:
        return False
    esz = q2.element_size()
    for x in (q2, k2, v):
        if x.stride(-1) != 1 or x.data_ptr() % 16 or any((s * esz) % 16 for s in x.stride()[:-1]):
            return False
    return True


if HAVE_GLUON:

    @gluon.jit
    def _fwd_load(k_desc, v_desc, bars, k_s, v_s, j, n_steps, b, h0,
                  BN: gl.constexpr, STAGES: gl.constexpr, G: gl.constexpr):
        """Issue the TMA loads of key block j (if j < n_steps): K2 and the group's G V tiles, slot j % STAGES.
        Heads past H read zeros (the descriptor's bounds); the transaction counts the whole boxes."""
        st = j % STAGES
        pred = j < n_steps
        bar = bars.index(st)
        mbarrier.expect(bar, k_desc.block_type.nbytes + G * v_desc.block_type.nbytes, pred=pred)
        _tma_load(k_desc, [b, j * BN, 0], bar, k_s.index(st), pred=pred)
        for g in gl.static_range(G):
            _tma_load(v_desc, [b, h0 + g, j * BN, 0], bar, v_s.index(st * G + g), pred=pred)

    @gluon.jit
    def _fwd_softmax(s, m, l, offs_m, start_n, qk, S_L: gl.constexpr, BN: gl.constexpr):
        """Online softmax of one score tile (causal mask applied everywhere: a no-op off the diagonal)."""
        offs_n = start_n + gl.arange(0, BN, layout=gl.SliceLayout(0, S_L))
        s = gl.where(offs_m[:, None] >= offs_n[None, :], s * qk, float("-inf"))
        mn = gl.maximum(m, gl.max(s, 1))
        p = gl.exp2(s - mn[:, None])
        alpha = gl.exp2(m - mn)
        l = l * alpha + gl.sum(p, 1)
        return p, mn, l, alpha

    @gluon.jit
    def _fwd_epi_head(acc, l, g, h0, b, offs_m, offs_c, rmask, A, LAM, O, N, H,
                      sab, sah, sat, sob, soh, sot, snb, snh, snt, COMBINE: gl.constexpr):
        h = h0 + g
        n = acc / l[:, None]
        hm = h < H
        omask = (rmask & hm)[:, None] & (offs_c < 128)[None, :]
        gl.store(N + b * snb + h * snh + offs_m[:, None] * snt + offs_c[None, :], n.to(N.dtype.element_ty),
                 mask=omask)
        if COMBINE:  # out = A - lam_h N_h
            lam = gl.load(LAM + h, mask=hm, other=0.0)
            a = gl.load(A + b * sab + h * sah + offs_m[:, None] * sat + offs_c[None, :], mask=omask, other=0.0)
            out = a.to(gl.float32) - lam * n
            gl.store(O + b * sob + h * soh + offs_m[:, None] * sot + offs_c[None, :], out.to(O.dtype.element_ty),
                     mask=omask)

    @gluon.jit
    def _noise_fwd_gluon_kernel(q_desc, k_desc, v_desc, A, LAM, O, N, LSE, WS,
                                sab, sah, sat, sob, soh, sot, snb, snh, snt,
                                H, NG, T, BTD, qk,
                                D: gl.constexpr, DV: gl.constexpr, BM: gl.constexpr, BN: gl.constexpr,
                                STAGES: gl.constexpr, EARLY: gl.constexpr, COMBINE: gl.constexpr,
                                ZERO: gl.constexpr):
        # grid (B x groups, query blocks): the longest (last) query blocks start first over all groups
        G: gl.constexpr = 4
        pid_m = gl.num_programs(1) - 1 - gl.program_id(1)
        bg = gl.program_id(0)
        b = bg // NG
        h0 = (bg % NG) * G
        start_m = pid_m * BM
        n_steps = gl.cdiv(gl.minimum(start_m + BM, T), BN)

        NW: gl.constexpr = gl.num_warps()
        # 2 warpgroups split every tile's columns: S2 [BM, BN] (BN/2 keys each), each head's [BM, DV]
        S_L: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, NW // 4],
                                                       instr_shape=[16, BN // (NW // 4), 16])
        ACC_L: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, NW // 4],
                                                         instr_shape=[16, DV // (NW // 4), 16])
        dt: gl.constexpr = v_desc.dtype
        q_s = gl.allocate_shared_memory(dt, q_desc.block_type.shape, q_desc.layout)
        k_s = gl.allocate_shared_memory(dt, [STAGES] + k_desc.block_type.shape, k_desc.layout)
        v_s = gl.allocate_shared_memory(dt, [STAGES * G] + v_desc.block_type.shape, v_desc.layout)
        P_LAYOUT: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BM, BN], dt)
        p_s = gl.allocate_shared_memory(dt, [2, BM, BN], P_LAYOUT)
        bars = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        for i in gl.static_range(STAGES):
            mbarrier.init(bars.index(i), count=1)
        qbar = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
        mbarrier.init(qbar, count=1)
        mbarrier.expect(qbar, q_desc.block_type.nbytes)
        _tma_load(q_desc, [b, start_m, 0], qbar, q_s)
        for i in gl.static_range(STAGES):
            _fwd_load(k_desc, v_desc, bars, k_s, v_s, i, n_steps, b, h0, BN, STAGES, G)

        q2 = q_s.reshape([BM, D])
        offs_m = start_m + gl.arange(0, BM, layout=gl.SliceLayout(1, S_L))
        m = gl.full([BM], float("-inf"), gl.float32, gl.SliceLayout(1, S_L))
        l = gl.zeros([BM], gl.float32, gl.SliceLayout(1, S_L))
        a0 = gl.zeros([BM, DV], gl.float32, ACC_L)
        a1 = gl.zeros([BM, DV], gl.float32, ACC_L)
        a2 = gl.zeros([BM, DV], gl.float32, ACC_L)
        a3 = gl.zeros([BM, DV], gl.float32, ACC_L)

        # block 0's scores and softmax
        mbarrier.wait(qbar, 0)
        mbarrier.wait(bars.index(0), 0)
        s = warpgroup_mma(q2, k_s.index(0).reshape([BN, D]).permute((1, 0)), gl.zeros([BM, BN], gl.float32, S_L),
                          use_acc=False)
        p, m, l, alpha = _fwd_softmax(s, m, l, offs_m, 0, qk, S_L, BN)
        p_s.index(0).store(p.to(dt))
        fence_async_shared()
        _cta_barrier()
        for j in range(n_steps - 1):
            st = j % STAGES
            pb = p_s.index(j % 2)
            # the next block's scores first (its slot was loaded STAGES - 1 steps ago), then this block's products
            st1 = (j + 1) % STAGES
            mbarrier.wait(bars.index(st1), ((j + 1) // STAGES) & 1)
            s = warpgroup_mma(q2, k_s.index(st1).reshape([BN, D]).permute((1, 0)),
                              gl.zeros([BM, BN], gl.float32, S_L), use_acc=False, is_async=True)
            if EARLY:  # block j's rescale while the tensor cores compute block j + 1's scores
                al = gl.convert_layout(alpha, gl.SliceLayout(1, ACC_L))[:, None]
                a0 = a0 * al
                a1 = a1 * al
                a2 = a2 * al
                a3 = a3 * al
            vb = st * G
            a0 = warpgroup_mma(pb, v_s.index(vb).reshape([BN, DV]), a0, is_async=True)
            a1 = warpgroup_mma(pb, v_s.index(vb + 1).reshape([BN, DV]), a1, is_async=True)
            a2 = warpgroup_mma(pb, v_s.index(vb + 2).reshape([BN, DV]), a2, is_async=True)
            a3 = warpgroup_mma(pb, v_s.index(vb + 3).reshape([BN, DV]), a3, is_async=True)
            # the scores are done (the 4 products may still run): block j + 1's softmax
            s = warpgroup_mma_wait(num_outstanding=4, deps=(s, ))
            p, m, l, alpha = _fwd_softmax(s, m, l, offs_m, (j + 1) * BN, qk, S_L, BN)
            p_s.index((j + 1) % 2).store(p.to(dt))
            fence_async_shared()
            a0, a1, a2, a3 = warpgroup_mma_wait(num_outstanding=0, deps=(a0, a1, a2, a3))
            if not EARLY:  # block j + 1's rescale once block j's products are in
                al = gl.convert_layout(alpha, gl.SliceLayout(1, ACC_L))[:, None]
                a0 = a0 * al
                a1 = a1 * al
                a2 = a2 * al
                a3 = a3 * al
            # both warpgroups: block j + 1's P2 stored, done with slot st and P2 buffer j % 2
            _cta_barrier()
            _fwd_load(k_desc, v_desc, bars, k_s, v_s, j + STAGES, n_steps, b, h0, BN, STAGES, G)
        # the last block's products
        j = n_steps - 1
        pb = p_s.index(j % 2)
        vb = (j % STAGES) * G
        if EARLY:
            al = gl.convert_layout(alpha, gl.SliceLayout(1, ACC_L))[:, None]
            a0 = a0 * al
            a1 = a1 * al
            a2 = a2 * al
            a3 = a3 * al
        a0 = warpgroup_mma(pb, v_s.index(vb).reshape([BN, DV]), a0, is_async=True)
        a1 = warpgroup_mma(pb, v_s.index(vb + 1).reshape([BN, DV]), a1, is_async=True)
        a2 = warpgroup_mma(pb, v_s.index(vb + 2).reshape([BN, DV]), a2, is_async=True)
        a3 = warpgroup_mma(pb, v_s.index(vb + 3).reshape([BN, DV]), a3, is_async=True)
        a0, a1, a2, a3 = warpgroup_mma_wait(num_outstanding=0, deps=(a0, a1, a2, a3))
        for i in gl.static_range(STAGES):
            mbarrier.invalidate(bars.index(i))
        mbarrier.invalidate(qbar)

        lr = gl.convert_layout(l, gl.SliceLayout(1, ACC_L))
        offs_mo = start_m + gl.arange(0, BM, layout=gl.SliceLayout(1, ACC_L))
        offs_c = gl.arange(0, DV, layout=gl.SliceLayout(0, ACC_L))
        rmask = offs_mo < T
        _fwd_epi_head(a0, lr, 0, h0, b, offs_mo, offs_c, rmask, A, LAM, O, N, H, sab, sah, sat, sob, soh, sot,
                      snb, snh, snt, COMBINE)
        _fwd_epi_head(a1, lr, 1, h0, b, offs_mo, offs_c, rmask, A, LAM, O, N, H, sab, sah, sat, sob, soh, sot,
                      snb, snh, snt, COMBINE)
        _fwd_epi_head(a2, lr, 2, h0, b, offs_mo, offs_c, rmask, A, LAM, O, N, H, sab, sah, sat, sob, soh, sot,
                      snb, snh, snt, COMBINE)
        _fwd_epi_head(a3, lr, 3, h0, b, offs_mo, offs_c, rmask, A, LAM, O, N, H, sab, sah, sat, sob, soh, sot,
                      snb, snh, snt, COMBINE)
        if h0 == 0:  # one log-sum-exp per (batch, row), log2 units
            gl.store(LSE + b * T + offs_m, m + gl.log2(l), mask=offs_m < T)
            if ZERO:  # this block's rows of the backward's float32 dQ2 / dK2 workspace, and dlam
                offs_d = gl.arange(0, D, layout=gl.SliceLayout(0, ACC_L))
                idx = (b * T + offs_mo[:, None]) * D + offs_d[None, :]
                zmask = rmask[:, None] & (offs_d < D)[None, :]
                zero = gl.zeros([BM, D], gl.float32, ACC_L)
                gl.store(WS + idx, zero, mask=zmask)
                gl.store(WS + BTD + idx, zero, mask=zmask)
                if pid_m == 0:
                    if b == 0:
                        ZL: gl.constexpr = gl.BlockedLayout([1], [32], [NW], [0])
                        for hz in range(0, H, 32 * NW):
                            offs_h = hz + gl.arange(0, 32 * NW, layout=ZL)
                            gl.store(WS + 2 * BTD + offs_h, gl.zeros([32 * NW], gl.float32, ZL), mask=offs_h < H)


    @gluon.jit
    def _fwd2_softmax(s, m, l, offs_m, start_n, qk, S_L: gl.constexpr, BN: gl.constexpr):
        """Online softmax of one score tile, each warpgroup its own 64 rows (no cross-warpgroup reduction)."""
        offs_n = start_n + gl.arange(0, BN, layout=gl.SliceLayout(0, S_L))
        s = gl.where(offs_m[:, None] >= offs_n[None, :], s * qk, float("-inf"))
        mn = gl.maximum(m, gl.max(s, 1))
        p = gl.exp2(s - mn[:, None])
        alpha = gl.exp2(m - mn)
        l = l * alpha + gl.sum(p, 1)
        return p, mn, l, alpha

    @gluon.jit
    def _noise_fwd_gluon2_kernel(q_desc, k_desc, v_desc, A, LAM, O, N, LSE, WS,
                                 sab, sah, sat, sob, soh, sot, snb, snh, snt,
                                 H, NG, T, BTD, qk,
                                 D: gl.constexpr, DV: gl.constexpr, BM: gl.constexpr, BN: gl.constexpr,
                                 STAGES: gl.constexpr, EARLY: gl.constexpr, COMBINE: gl.constexpr,
                                 ZERO: gl.constexpr):
        """The 2-head-group form (the Triton kernel's work, H + H/2 units): 128 query rows, each warpgroup
        its own 64 rows with both heads' [64, 128] accumulators; P2 stays in registers as the A operand of
        the P2 V wgmma (FlashAttention-3's layout); K2 / V tiles through the TMA ring. EARLY is unused
        (same signature as the 4-head kernel)."""
        G: gl.constexpr = 2
        pid_m = gl.num_programs(1) - 1 - gl.program_id(1)
        bg = gl.program_id(0)
        b = bg // NG
        h0 = (bg % NG) * G
        start_m = pid_m * BM
        n_steps = gl.cdiv(gl.minimum(start_m + BM, T), BN)

        NW: gl.constexpr = gl.num_warps()
        S_L: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[NW, 1],
                                                       instr_shape=[16, BN, 16])
        ACC_L: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[NW, 1],
                                                         instr_shape=[16, DV, 16])
        P_L: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=ACC_L, k_width=2)
        dt: gl.constexpr = v_desc.dtype
        q_s = gl.allocate_shared_memory(dt, q_desc.block_type.shape, q_desc.layout)
        k_s = gl.allocate_shared_memory(dt, [STAGES] + k_desc.block_type.shape, k_desc.layout)
        v_s = gl.allocate_shared_memory(dt, [STAGES * G] + v_desc.block_type.shape, v_desc.layout)
        bars = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        for i in gl.static_range(STAGES):
            mbarrier.init(bars.index(i), count=1)
        qbar = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
        mbarrier.init(qbar, count=1)
        mbarrier.expect(qbar, q_desc.block_type.nbytes)
        _tma_load(q_desc, [b, start_m, 0], qbar, q_s)
        for i in gl.static_range(STAGES):
            _fwd_load(k_desc, v_desc, bars, k_s, v_s, i, n_steps, b, h0, BN, STAGES, G)

        q2 = q_s.reshape([BM, D])
        offs_m = start_m + gl.arange(0, BM, layout=gl.SliceLayout(1, S_L))
        m = gl.full([BM], float("-inf"), gl.float32, gl.SliceLayout(1, S_L))
        l = gl.zeros([BM], gl.float32, gl.SliceLayout(1, S_L))
        a0 = gl.zeros([BM, DV], gl.float32, ACC_L)
        a1 = gl.zeros([BM, DV], gl.float32, ACC_L)

        mbarrier.wait(qbar, 0)
        mbarrier.wait(bars.index(0), 0)
        s = warpgroup_mma(q2, k_s.index(0).reshape([BN, D]).permute((1, 0)), gl.zeros([BM, BN], gl.float32, S_L),
                          use_acc=False)
        p, m, l, alpha = _fwd2_softmax(s, m, l, offs_m, 0, qk, S_L, BN)
        for j in range(n_steps - 1):
            st = j % STAGES
            st1 = (j + 1) % STAGES
            mbarrier.wait(bars.index(st1), ((j + 1) // STAGES) & 1)
            s = warpgroup_mma(q2, k_s.index(st1).reshape([BN, D]).permute((1, 0)),
                              gl.zeros([BM, BN], gl.float32, S_L), use_acc=False, is_async=True)
            al = gl.convert_layout(alpha, gl.SliceLayout(1, ACC_L))[:, None]
            pa = gl.convert_layout(p.to(dt), P_L)
            a0 = warpgroup_mma(pa, v_s.index(st * G).reshape([BN, DV]), a0 * al, is_async=True)
            a1 = warpgroup_mma(pa, v_s.index(st * G + 1).reshape([BN, DV]), a1 * al, is_async=True)
            s = warpgroup_mma_wait(num_outstanding=2, deps=(s, ))
            p, m, l, alpha = _fwd2_softmax(s, m, l, offs_m, (j + 1) * BN, qk, S_L, BN)
            a0, a1 = warpgroup_mma_wait(num_outstanding=0, deps=(a0, a1, pa))
            _cta_barrier()  # both warpgroups are done with slot st
            _fwd_load(k_desc, v_desc, bars, k_s, v_s, j + STAGES, n_steps, b, h0, BN, STAGES, G)
        j = n_steps - 1
        st = j % STAGES
        al = gl.convert_layout(alpha, gl.SliceLayout(1, ACC_L))[:, None]
        pa = gl.convert_layout(p.to(dt), P_L)
        a0 = warpgroup_mma(pa, v_s.index(st * G).reshape([BN, DV]), a0 * al, is_async=True)
        a1 = warpgroup_mma(pa, v_s.index(st * G + 1).reshape([BN, DV]), a1 * al, is_async=True)
        a0, a1 = warpgroup_mma_wait(num_outstanding=0, deps=(a0, a1, pa))
        for i in gl.static_range(STAGES):
            mbarrier.invalidate(bars.index(i))
        mbarrier.invalidate(qbar)

        lr = gl.convert_layout(l, gl.SliceLayout(1, ACC_L))
        offs_mo = start_m + gl.arange(0, BM, layout=gl.SliceLayout(1, ACC_L))
        offs_c = gl.arange(0, DV, layout=gl.SliceLayout(0, ACC_L))
        rmask = offs_mo < T
        _fwd_epi_head(a0, lr, 0, h0, b, offs_mo, offs_c, rmask, A, LAM, O, N, H, sab, sah, sat, sob, soh, sot,
                      snb, snh, snt, COMBINE)
        _fwd_epi_head(a1, lr, 1, h0, b, offs_mo, offs_c, rmask, A, LAM, O, N, H, sab, sah, sat, sob, soh, sot,
                      snb, snh, snt, COMBINE)
        if h0 == 0:  # one log-sum-exp per (batch, row), log2 units
            gl.store(LSE + b * T + offs_m, m + gl.log2(l), mask=offs_m < T)
            if ZERO:  # this block's rows of the backward's float32 dQ2 / dK2 workspace, and dlam
                offs_d = gl.arange(0, D, layout=gl.SliceLayout(0, ACC_L))
                idx = (b * T + offs_mo[:, None]) * D + offs_d[None, :]
                zmask = rmask[:, None] & (offs_d < D)[None, :]
                zero = gl.zeros([BM, D], gl.float32, ACC_L)
                gl.store(WS + idx, zero, mask=zmask)
                gl.store(WS + BTD + idx, zero, mask=zmask)
                if pid_m == 0:
                    if b == 0:
                        ZL: gl.constexpr = gl.BlockedLayout([1], [32], [NW], [0])
                        for hz in range(0, H, 32 * NW):
                            offs_h = hz + gl.arange(0, 32 * NW, layout=ZL)
                            gl.store(WS + 2 * BTD + offs_h, gl.zeros([32 * NW], gl.float32, ZL), mask=offs_h < H)


def _layout(block, dtype):
    return gl.NVMMASharedLayout.get_default_for(block, gl.bfloat16 if dtype == torch.bfloat16 else gl.float16)


def descriptors(q2, k2, v, bm: int, bn: int):
    """Host tensor descriptors: Q2 [B, T, D] in [1, BM, D] blocks, K2 in [1, BN, D], V [B, H, T, DV] in
    [1, 1, BN, DV] (T and H boundaries zero-filled by the descriptors)."""
    d, dv = q2.shape[-1], v.shape[-1]
    qd = TensorDescriptor(q2, list(q2.shape), list(q2.stride()), [1, bm, d], _layout([1, bm, d], q2.dtype))
    kd = TensorDescriptor(k2, list(k2.shape), list(k2.stride()), [1, bn, d], _layout([1, bn, d], k2.dtype))
    vd = TensorDescriptor(v, list(v.shape), list(v.stride()), [1, 1, bn, dv], _layout([1, 1, bn, dv], v.dtype))
    return qd, kd, vd


def _vstr(x):
    return x.stride(0), x.stride(1), x.stride(2)


def noise_fwd_gluon(q2, k2, v, a, lam32, out, n, lse, ws32, scale_log2, combine: bool, zero: bool,
                    config=None, go=None):
    """Launch the Gluon forward (same tensors as noise_once's ``_noise_fwd_kernel``: a / out are n when
    not combining; ws32 is lse when not zeroing). go: a launcher ``go(kernel, grid, args, **opts)`` (the
    launch replay's recorder), else direct."""
    bm, bn, stages, w, early, g = config or GLUON_FWD_CONFIG
    if g not in (2, 4) or bm != (64 if g == 4 else 128):
        raise ValueError(f"noise_fwd_gluon config {tuple(config)}: G = 4 takes BM = 64, G = 2 BM = 128")
    kernel = _noise_fwd_gluon_kernel if g == 4 else _noise_fwd_gluon2_kernel
    b, t, d = q2.shape
    h, dv = v.shape[1], v.shape[-1]
    ng = -(-h // g)
    qd, kd, vd = descriptors(q2, k2, v, bm, bn)
    grid = (b * ng, -(-t // bm))
    args = (qd, kd, vd, a, lam32, out, n, lse, ws32, *_vstr(a), *_vstr(out), *_vstr(n), h, ng, t, b * t * d,
            scale_log2, d, dv, bm, bn, stages, bool(early), bool(combine), bool(zero))
    if go is not None:
        return go(kernel, grid, args, num_warps=w)
    return kernel[grid](*args, num_warps=w)
