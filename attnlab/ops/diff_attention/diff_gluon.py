"""The fused differential-attention backward (key-block kernel) in Gluon: warp-specialised, Hopper.

Same function as ``hopper.py``'s ``"fused"`` backward (``_h_bwd_kv_kernel`` with NS=2 and ATOMIC): per key
block of BN keys, a loop over the query blocks from the diagonal to the end computes

    S1^T = K1 Q1^T, S2^T = K2 Q2^T, dP^T = V dO^T                  [BN keys, BM rows]
    P1^T = exp2(qk1 S1^T - LSE1), P2n^T = -lam exp2(qk2 S2^T - LSE2)  (causal; LSE in log2 units)
    dV  += (P1^T + P2n^T) dO
    dS1^T = P1^T (dP^T - DL1), dS2^T = P2n^T (dP^T - DL2)
    dK1 += dS1^T Q1, dK2 += dS2^T Q2, dQ1 += scale1 dS1 K1, dQ2 += scale2 dS2 K2 (float32 reduce-adds)

8 matmuls of [64 x 64 x 128] per (key block, query block) pair: the fewest (cuDNN's two single-stream
backwards take 10). Inputs are what ``hopper.py``'s forward and its preprocess store: LSE1/LSE2
(log2 units), DL1 = rowsum(dO o1), DL2 = rowsum(dO o2) (``kernel._diff_bwd_pre_kernel``).

Register budget (the reason for this file: Triton's single 8-warp program needs three [BN, 128] float32
accumulators + operands > 255 registers per thread and spills; hopper.py's fused mode ran at under half
of cuDNN's rate). One CTA per SM, 16 warps (4 warpgroups), 64 K registers = 128 per thread on average,
reallocated per partition by ``gl.warp_specialize`` (setmaxnreg):

    partition            warps  regs  live tensors (float32 registers per thread; [64, N] over 128 threads
                                      = N/2)
    dV  (default)          4    136   dV acc [64,128] 64 + dP^T [64,64] 32 + P^T operand (bf16) 16 + ...
    stream 1 (worker)      4    176   dK1 acc 64 + S1^T/P1^T 32 + dP^T 32 + LSE/DL slices 2 x 16, then
                                      dK1 64 + dQ1 [64,128] 64 (S/P/dP dead by then)
    stream 2 (worker)      4    176   the same for dK2, dQ2
    TMA producer           1     24   (its warpgroup's 3 other warps idle)
    total: 128 x (136 + 176 + 176 + 24) = 65536 = the register file (``maxnreg=128`` at launch).
    Offline sm_90 compile (benchmarks/diff_gluon_resources.py, Triton 3.6): no spills with the atomics /
    red.v2 dQ; 4 spilled words (LDL/STL) per stream with the TMA dQ (13 at 168 registers; at 152 several
    hundred; 184 or 192 for the streams make the dV partition spill). 44 HGMMA (52 with the TMA dQ's
    64-column halves).

Shared memory (bf16 unless said): K1, K2, V [64,128] 48 KB; a ring of STAGES x (Q1, Q2, dO) [64,128]
(48 KB a stage; 2 stages: 96 KB); dP^T [64,64] float32 16 KB; P1^T, P2n^T, dS1^T, dS2^T [64,64] 32 KB;
barriers: 197 KB with 2 stages (of 227 KB); the TMA dQ adds two [64, 64] float32 staging tiles: 230 KB.

dQ reductions (``DQ_VEC``): 1 = ``gl.atomic_add`` (4-byte red per element: 64 per thread per step), 2 =
``red.global.add.v2.f32`` by inline PTX (8 bytes: the accumulator layout holds column pairs; 32 per
thread per step; the workspace is padded to whole 64-row blocks so no mask is needed), 3 = TMA
reduce-add (``cp.reduce.async.bulk.tensor``, not wrapped by 3.6's Gluon: ``_tma_reduce_add``) of two
[64, 64] halves through one staging tile per stream.

Exchanges (mbarriers; phases per step i: ``i & 1``): ready[s]/empty[s] (ring, TMA tx / 3 consumers),
dp_ready (dV partition -> streams: dP^T stored) / dp_free (2 streams read it), p_ready (2 streams stored
P^T) / p_free (dV partition read them). Each stream keeps its dS^T tile private (the A operand of its
two matmuls: dK += dS^T Q, dQ = dS K with dS^T read transposed).

BN = BM = 64 (one diagonal query block per key block; the causal mask is applied on every step, a select).
The dQ reduce-adds: 2 x [64, 128] float32 per pair (twice a BN=128 kernel's per stream).

Measured (H100, B=1, 16 heads, d 128, bf16; benchmarks/RESULTS.md "Session 9: diff backward in Gluon"):
correct (every gradient at the Triton backward's error vs the float32 reference; dK1/dK2 bit-equal to it), but
slower than hopper.py's default Triton backward: the kernel alone 15.3 ms at 16K (TMA dQ) against 14.5 ms for
hopper.py's whole split-separate backward and 10.5 ms for cuDNN's two backwards; without the dQ reductions it
ran 9.8 ms. The dQ reduce-add traffic of 64-key blocks (2 x 32 KB per (key block, query block) pair, 34.5 GB
at 16K) is what costs: float32 atomics and red.v2 19.3 / 19.5 ms. So ``hopper.GLUON_BWD`` stays off.

Gluon has no interpreter and compiles only for NVIDIA GPUs: ``available()`` says where this kernel
can take the backward (Hopper, Gluon importable, bf16/fp16, 128-wide heads, the same heads for every
tensor, TMA-compatible strides); everywhere else ``hopper.py``'s Triton kernels run. A kernel that fails
to compile or launch switches itself off (``BROKEN``) with a warning.
"""

from __future__ import annotations

import torch

from ..gluon_compat import (HAVE_GLUON, TensorDescriptor, fence_async_shared, gl, gluon,  # noqa: F401
                            hopper_ready, mbarrier, nvmma_layout, tma_ok, warpgroup_mma, warpgroup_mma_wait)
from ..gluon_compat import cta_barrier as _cta_barrier, tma_load as _tma_load

BM = 64  # query rows per step
BN = 64  # keys per program
STAGES = 2  # ring depth (Q1, Q2, dO per stage)
REGS = (176, 24)  # registers per thread: each stream partition, the producer (the dV partition: the rest, 136)
# dQ reductions: 3 = TMA reduce-add (measured fastest: 15.3 ms at 16K vs 19.3 / 19.5 for 1 / 2), 2 = 8-byte
# red.global.add.v2.f32 (inline PTX), 1 = gl.atomic_add (4-byte)
DQ_VEC = 3
# the TMA dQ (DQ_VEC = 3) with the stream partitions software-pipelined (``_stream_pipe``): ~60 spilled words
# per step per stream at 176 registers; measured slower (16.8 vs 15.3 ms at 16K), off
PIPE = False
MAXNREG = 128  # the kernel's register cap at entry (16 warps x 32 x 128 = 64 K)
BROKEN = ""  # set (the error) if the kernel failed to compile or launch here: hopper.py from then on
_GLUON_OK = HAVE_GLUON  # Gluon importable and the internals below found (a later Triton may move them)


def available(q1, k1, q2, k2, v, dout) -> bool:
    """True where the Gluon backward can run: Hopper + Gluon, not the interpreter, bf16/fp16, head dims
    128, the same heads for every tensor (no GQA / CMD), T >= 64, TMA-compatible strides."""
    if BROKEN or not _GLUON_OK or not hopper_ready(q1):
        return False
    if q1.dtype not in (torch.bfloat16, torch.float16):
        return False
    xs = (q1, k1, q2, k2, v, dout)
    if any(x.shape != q1.shape for x in xs) or q1.shape[-1] != 128 or q1.shape[-2] < BN:
        return False
    return tma_ok(*xs)


if _GLUON_OK:
    try:
        from triton._C.libtriton import ir as _ir
        from triton.experimental.gluon.language._core import builtin as _builtin
        from triton.experimental.gluon.language.nvidia.hopper import tma as _tma
    except Exception:  # pragma: no cover - depends on the installed triton
        _GLUON_OK = False

if _GLUON_OK:
    @_builtin
    def _tma_reduce_add(desc, coord, src, _semantic=None):
        """global[desc box at coord] += shared src (cp.reduce.async.bulk.tensor .add; one thread issues it,
        completion of its read of src: ``tma.store_wait``). Not wrapped by Triton 3.6's Gluon."""
        coord = _semantic._convert_to_ir_values(coord, require_i64=False)
        _semantic.builder.create_async_tma_reduce(_ir.DESCRIPTOR_REDUCE_KIND.ADD, desc.handle, coord, src.handle)

    @gluon.jit
    def _red_add_v2(ptrs, vals):
        """*ptrs += vals (float32), two consecutive elements per thread as one 8-byte reduction (sm_90
        red.global.add.v2.f32); ptrs and vals in a layout holding column pairs (the wgmma accumulator's)."""
        gl.inline_asm_elementwise("red.global.add.v2.f32 [$2], {$4, $5};\n\tmov.b32 $0, 0;\n\tmov.b32 $1, 0;",
                                  "=r,=r,l,l,f,f", [ptrs.to(gl.int64, bitcast=True), vals], dtype=gl.int32,
                                  is_pure=False, pack=2)

    @gluon.jit
    def _producer(q1_desc, q2_desc, do_desc, k1_desc, k2_desc, v_desc, q1_r, q2_r, do_r, k1_s, k2_s, v_s,
                  ready, empty, kv_bar, b, h, start_n, n_steps, BM: gl.constexpr, STAGES: gl.constexpr):
        """1 warp: K1, K2, V once, then Q1, Q2, dO of each query block into the ring."""
        mbarrier.expect(kv_bar, 3 * k1_desc.block_type.nbytes)
        _tma_load(k1_desc, [b, h, start_n, 0], kv_bar, k1_s)
        _tma_load(k2_desc, [b, h, start_n, 0], kv_bar, k2_s)
        _tma_load(v_desc, [b, h, start_n, 0], kv_bar, v_s)
        for i in range(n_steps):
            st = i % STAGES
            mbarrier.wait(empty.index(st), ((i // STAGES) & 1) ^ 1)
            bar = ready.index(st)
            row = start_n + i * BM
            mbarrier.expect(bar, 3 * q1_desc.block_type.nbytes)
            _tma_load(q1_desc, [b, h, row, 0], bar, q1_r.index(st))
            _tma_load(q2_desc, [b, h, row, 0], bar, q2_r.index(st))
            _tma_load(do_desc, [b, h, row, 0], bar, do_r.index(st))

    @gluon.jit
    def _stream(k_s, q_r, p_s, ds_s, dp_s, dq_s, dq_desc, b, h, ready, empty, kv_bar, p_ready, p_free, dp_ready, dp_free,
                LSE, DL, DQ, DK, row0, q_row0, start_n, n_steps, T, qk, scale, coef,
                BM: gl.constexpr, BN: gl.constexpr, D: gl.constexpr, STAGES: gl.constexpr, DQ_ON: gl.constexpr,
                VEC: gl.constexpr):
        """4 warps, one stream: S^T, P^T (x coef: 1 or -lam) -> p_s; dS^T with dP^T from dp_s; dK (kept),
        dQ (atomics)."""
        LS: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, BM, 16])
        LA: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, D, 16])
        offs_n = start_n + gl.arange(0, BN, layout=gl.SliceLayout(1, LS))
        k2d = k_s.reshape([BN, D])
        dk = gl.zeros([BN, D], gl.float32, LA)
        mbarrier.wait(kv_bar, 0)
        for i in range(n_steps):
            st = i % STAGES
            ph = i & 1
            start_m = start_n + i * BM
            mbarrier.wait(ready.index(st), (i // STAGES) & 1)
            q = q_r.index(st).reshape([BM, D])
            s = warpgroup_mma(k2d, q.permute((1, 0)), gl.zeros([BN, BM], gl.float32, LS), use_acc=False,
                              is_async=True)
            offs_m = start_m + gl.arange(0, BM, layout=gl.SliceLayout(0, LS))
            rmask = offs_m < T
            lse = gl.load(LSE + row0 + offs_m, mask=rmask, other=float("inf"))
            dl = gl.load(DL + row0 + offs_m, mask=rmask, other=0.0)  # both loads under the S matmul
            s = warpgroup_mma_wait(num_outstanding=0, deps=(s, ))
            p = gl.exp2(s * qk - lse[None, :])
            p = gl.where(offs_m[None, :] >= offs_n[:, None], p, 0.0) * coef  # causal (also keys/rows >= T)
            mbarrier.wait(p_free, ph ^ 1)
            p_s.store(p.to(p_s.dtype))
            _cta_barrier()
            mbarrier.arrive(p_ready, count=1)
            mbarrier.wait(dp_ready, ph)
            dp = dp_s.load(LS)
            _cta_barrier()
            mbarrier.arrive(dp_free, count=1)
            ds = (p * (dp - dl[None, :])).to(ds_s.dtype)
            ds_s.store(ds)
            fence_async_shared()
            _cta_barrier()
            dk = warpgroup_mma(ds_s, q, dk, is_async=True)
            if VEC == 3:  # dQ in two 64-column halves, each reduce-added by TMA from a 16 KB staging tile
                dst = ds_s.permute((1, 0))
                dqa = warpgroup_mma(dst, k2d.slice(0, D // 2, dim=1), gl.zeros([BM, D // 2], gl.float32, LS),
                                    use_acc=False, is_async=True)
                dqb = warpgroup_mma(dst, k2d.slice(D // 2, D // 2, dim=1), gl.zeros([BM, D // 2], gl.float32, LS),
                                    use_acc=False, is_async=True)
                dk, dqa, dqb = warpgroup_mma_wait(num_outstanding=0, deps=(dk, dqa, dqb))
                _cta_barrier()
                mbarrier.arrive(empty.index(st), count=1)
                stage = dq_s.reshape([BM, D // 2])
                _tma.store_wait(0)  # the previous reduce has read the staging tile
                _cta_barrier()
                stage.store(dqa * scale)
                fence_async_shared()
                _cta_barrier()
                _tma_reduce_add(dq_desc, [b, h, start_m, 0], dq_s)
                _tma.store_wait(0)
                _cta_barrier()
                stage.store(dqb * scale)
                fence_async_shared()
                _cta_barrier()
                _tma_reduce_add(dq_desc, [b, h, start_m, D // 2], dq_s)
            else:
                dq = warpgroup_mma(ds_s.permute((1, 0)), k2d, gl.zeros([BM, D], gl.float32, LA), use_acc=False,
                                   is_async=True)
                dk, dq = warpgroup_mma_wait(num_outstanding=0, deps=(dk, dq))
                _cta_barrier()  # (the partition's 4 warps) done with q and ds_s
                mbarrier.arrive(empty.index(st), count=1)
            if DQ_ON and VEC != 3:  # (off: a timing probe of the atomics' cost; dQ is then not computed)
                offs_mq = start_m + gl.arange(0, BM, layout=gl.SliceLayout(1, LA))
                offs_d = gl.arange(0, D, layout=gl.SliceLayout(0, LA))
                ptrs = DQ + (q_row0 + offs_mq[:, None]) * D + offs_d[None, :]
                if VEC == 2:  # 8-byte reductions (each thread holds column pairs); the workspace is padded
                    _red_add_v2(ptrs, dq * scale)
                else:
                    gl.atomic_add(ptrs, dq * scale, mask=(offs_mq < T)[:, None], sem="relaxed")
        if VEC == 3:
            _tma.store_wait(0)
        offs_nk = start_n + gl.arange(0, BN, layout=gl.SliceLayout(1, LA))
        offs_d = gl.arange(0, D, layout=gl.SliceLayout(0, LA))
        gl.store(DK + (row0 + offs_nk[:, None]) * D + offs_d[None, :], (dk * scale).to(DK.dtype.element_ty),
                 mask=(offs_nk < T)[:, None])

    @gluon.jit
    def _stage_dq(dq_s, dq_desc, dq, b, h, start_m, col, scale):
        """dq (one [BM, D/2] half, float32) -> the staging tile -> TMA reduce-add at column col."""
        _tma.store_wait(0)  # the previous reduce has read the staging tile
        _cta_barrier()
        dq_s.reshape(dq.shape).store(dq * scale)
        fence_async_shared()
        _cta_barrier()
        _tma_reduce_add(dq_desc, [b, h, start_m, col], dq_s)

    @gluon.jit
    def _stream_pipe(k_s, q_r, p_s, ds_s, dp_s, dq_s, dq_desc, b, h, ready, empty, kv_bar, p_ready, p_free,
                     dp_ready, dp_free, LSE, DL, DQ, DK, row0, q_row0, start_n, n_steps, T, qk, scale, coef,
                     BM: gl.constexpr, BN: gl.constexpr, D: gl.constexpr, STAGES: gl.constexpr, DQ_ON: gl.constexpr,
                     VEC: gl.constexpr):
        """``_stream`` software-pipelined (the TMA dQ only): the next step's S^T matmul and its LSE/DL loads
        are issued before this step's dK / dQ matmuls are waited for; dQ in two sequential halves."""
        LS: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, BM, 16])
        LA: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, D, 16])
        offs_n = start_n + gl.arange(0, BN, layout=gl.SliceLayout(1, LS))
        k2d = k_s.reshape([BN, D])
        k_lo = k2d.slice(0, D // 2, dim=1)
        k_hi = k2d.slice(D // 2, D // 2, dim=1)
        dk = gl.zeros([BN, D], gl.float32, LA)
        mbarrier.wait(kv_bar, 0)
        mbarrier.wait(ready.index(0), 0)
        s_acc = warpgroup_mma(k2d, q_r.index(0).reshape([BM, D]).permute((1, 0)), gl.zeros([BN, BM], gl.float32, LS),
                              use_acc=False, is_async=True)
        offs_m = start_n + gl.arange(0, BM, layout=gl.SliceLayout(0, LS))
        lse = gl.load(LSE + row0 + offs_m, mask=offs_m < T, other=float("inf"))
        dl = gl.load(DL + row0 + offs_m, mask=offs_m < T, other=0.0)
        s_acc = warpgroup_mma_wait(num_outstanding=0, deps=(s_acc, ))
        for i in range(n_steps):
            st = i % STAGES
            ph = i & 1
            start_m = start_n + i * BM
            q = q_r.index(st).reshape([BM, D])
            offs_m = start_m + gl.arange(0, BM, layout=gl.SliceLayout(0, LS))
            p = gl.exp2(s_acc * qk - lse[None, :])
            p = gl.where(offs_m[None, :] >= offs_n[:, None], p, 0.0) * coef
            mbarrier.wait(p_free, ph ^ 1)
            p_s.store(p.to(p_s.dtype))
            _cta_barrier()
            mbarrier.arrive(p_ready, count=1)
            mbarrier.wait(dp_ready, ph)
            dp = dp_s.load(LS)
            _cta_barrier()
            mbarrier.arrive(dp_free, count=1)
            ds = (p * (dp - dl[None, :])).to(ds_s.dtype)
            ds_s.store(ds)
            fence_async_shared()
            _cta_barrier()
            dst = ds_s.permute((1, 0))
            dk = warpgroup_mma(ds_s, q, dk, is_async=True)
            dqa = warpgroup_mma(dst, k_lo, gl.zeros([BM, D // 2], gl.float32, LS), use_acc=False, is_async=True)
            # the next step's S^T (a stale ring slot after the last step: computed, never used)
            nxt = i + 1
            st2 = nxt % STAGES
            mbarrier.wait(ready.index(st2), (nxt // STAGES) & 1, pred=nxt < n_steps)
            s_acc = warpgroup_mma(k2d, q_r.index(st2).reshape([BM, D]).permute((1, 0)),
                                  gl.zeros([BN, BM], gl.float32, LS), use_acc=False, is_async=True)
            dk, dqa, s_acc = warpgroup_mma_wait(num_outstanding=1, deps=(dk, dqa, s_acc))
            _cta_barrier()  # the partition's warps are done with q
            mbarrier.arrive(empty.index(st), count=1)
            _stage_dq(dq_s, dq_desc, dqa, b, h, start_m, 0, scale)
            dqb = warpgroup_mma(dst, k_hi, gl.zeros([BM, D // 2], gl.float32, LS), use_acc=False, is_async=True)
            dqb, s_acc = warpgroup_mma_wait(num_outstanding=0, deps=(dqb, s_acc))
            offs_m2 = start_m + BM + gl.arange(0, BM, layout=gl.SliceLayout(0, LS))
            lse = gl.load(LSE + row0 + offs_m2, mask=offs_m2 < T, other=float("inf"))  # the next step's rows
            dl = gl.load(DL + row0 + offs_m2, mask=offs_m2 < T, other=0.0)
            _stage_dq(dq_s, dq_desc, dqb, b, h, start_m, D // 2, scale)
        _tma.store_wait(0)
        offs_nk = start_n + gl.arange(0, BN, layout=gl.SliceLayout(1, LA))
        offs_d = gl.arange(0, D, layout=gl.SliceLayout(0, LA))
        gl.store(DK + (row0 + offs_nk[:, None]) * D + offs_d[None, :], (dk * scale).to(DK.dtype.element_ty),
                 mask=(offs_nk < T)[:, None])

    @gluon.jit
    def _dv_part(v_s, do_r, p1_s, p2_s, dp_s, ready, empty, kv_bar, p_ready, p_free, dp_ready, dp_free,
                 DV, row0, start_n, n_steps, T, BM: gl.constexpr, BN: gl.constexpr, D: gl.constexpr,
                 STAGES: gl.constexpr):
        """Default partition (4 warps): dP^T = V dO^T -> dp_s; dV += (P1^T + P2n^T) dO."""
        LS: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, BM, 16])
        LA: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, D, 16])
        LP: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=LA, k_width=2)
        v2d = v_s.reshape([BN, D])
        dv = gl.zeros([BN, D], gl.float32, LA)
        mbarrier.wait(kv_bar, 0)
        for i in range(n_steps):
            st = i % STAGES
            ph = i & 1
            mbarrier.wait(ready.index(st), (i // STAGES) & 1)
            do = do_r.index(st).reshape([BM, D])
            dp = warpgroup_mma(v2d, do.permute((1, 0)), gl.zeros([BN, BM], gl.float32, LS), use_acc=False,
                               is_async=True)
            dp = warpgroup_mma_wait(num_outstanding=0, deps=(dp, ))
            mbarrier.wait(dp_free, ph ^ 1)
            dp_s.store(dp)
            _cta_barrier()
            mbarrier.arrive(dp_ready, count=1)
            mbarrier.wait(p_ready, ph)
            p = (p1_s.load(LP).to(gl.float32) + p2_s.load(LP).to(gl.float32)).to(do.dtype)
            _cta_barrier()
            mbarrier.arrive(p_free, count=1)
            dv = warpgroup_mma(p, do, dv, is_async=True)
            dv, p = warpgroup_mma_wait(num_outstanding=0, deps=(dv, p))
            _cta_barrier()
            mbarrier.arrive(empty.index(st), count=1)
        offs_n = start_n + gl.arange(0, BN, layout=gl.SliceLayout(1, LA))
        offs_d = gl.arange(0, D, layout=gl.SliceLayout(0, LA))
        gl.store(DV + (row0 + offs_n[:, None]) * D + offs_d[None, :], dv.to(DV.dtype.element_ty),
                 mask=(offs_n < T)[:, None])

    @gluon.jit
    def _diff_bwd_gluon_kernel(q1_desc, k1_desc, q2_desc, k2_desc, v_desc, do_desc, dq1_desc, dq2_desc, LAM,
                               LSE1, LSE2, DL1, DL2, DK1, DK2, DV, DQ1, DQ2, H, T, qk1, qk2, scale1, scale2,
                               D: gl.constexpr, BM: gl.constexpr, BN: gl.constexpr, STAGES: gl.constexpr,
                               R_STREAM: gl.constexpr, R_LOAD: gl.constexpr, DQ_ON: gl.constexpr,
                               VEC: gl.constexpr, PIPE: gl.constexpr):
        pid_n = gl.program_id(0)  # key block 0 (the longest) first
        bh = gl.program_id(1)
        b = bh // H
        h = bh % H
        start_n = pid_n * BN
        n_steps = gl.cdiv(T - start_n, BM)
        row0 = bh * T
        q_row0 = bh * (gl.cdiv(T, BM) * BM)  # the dQ workspace: T padded to whole query blocks per head
        lam = gl.load(LAM + h)
        dt: gl.constexpr = q1_desc.dtype
        blk: gl.constexpr = q1_desc.block_type.shape
        lay: gl.constexpr = q1_desc.layout
        k1_s = gl.allocate_shared_memory(dt, blk, lay)
        k2_s = gl.allocate_shared_memory(dt, blk, lay)
        v_s = gl.allocate_shared_memory(dt, blk, lay)
        q1_r = gl.allocate_shared_memory(dt, [STAGES] + blk, lay)
        q2_r = gl.allocate_shared_memory(dt, [STAGES] + blk, lay)
        do_r = gl.allocate_shared_memory(dt, [STAGES] + blk, lay)
        tl_: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BN, BM], dt)
        p1_s = gl.allocate_shared_memory(dt, [BN, BM], tl_)
        p2_s = gl.allocate_shared_memory(dt, [BN, BM], tl_)
        ds1_s = gl.allocate_shared_memory(dt, [BN, BM], tl_)
        ds2_s = gl.allocate_shared_memory(dt, [BN, BM], tl_)
        dp_s = gl.allocate_shared_memory(gl.float32, [BN, BM], gl.SwizzledSharedLayout(1, 1, 1, [1, 0]))
        if VEC == 3:  # dQ staging tiles [BM, D/2] float32 per stream (TMA reduce-add)
            dq1_s = gl.allocate_shared_memory(gl.float32, dq1_desc.block_type.shape, dq1_desc.layout)
            dq2_s = gl.allocate_shared_memory(gl.float32, dq2_desc.block_type.shape, dq2_desc.layout)
        else:
            dq1_s = dp_s
            dq2_s = dp_s
        ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        bars = gl.allocate_shared_memory(gl.int64, [5, 1], mbarrier.MBarrierLayout())
        for i in gl.static_range(STAGES):
            mbarrier.init(ready.index(i), count=1)
            mbarrier.init(empty.index(i), count=3)
        kv_bar = bars.index(0)
        p_ready = bars.index(1)
        p_free = bars.index(2)
        dp_ready = bars.index(3)
        dp_free = bars.index(4)
        mbarrier.init(kv_bar, count=1)
        mbarrier.init(p_ready, count=2)
        mbarrier.init(p_free, count=1)
        mbarrier.init(dp_ready, count=1)
        mbarrier.init(dp_free, count=2)
        if PIPE:  # (the TMA dQ only)
            gl.warp_specialize([
                (_dv_part, (v_s, do_r, p1_s, p2_s, dp_s, ready, empty, kv_bar, p_ready, p_free, dp_ready, dp_free,
                            DV, row0, start_n, n_steps, T, BM, BN, D, STAGES)),
                (_stream_pipe, (k1_s, q1_r, p1_s, ds1_s, dp_s, dq1_s, dq1_desc, b, h, ready, empty, kv_bar, p_ready, p_free,
                      dp_ready, dp_free, LSE1, DL1, DQ1, DK1, row0, q_row0, start_n, n_steps, T, qk1, scale1, 1.0,
                      BM, BN, D, STAGES, DQ_ON, VEC)),
                (_stream_pipe, (k2_s, q2_r, p2_s, ds2_s, dp_s, dq2_s, dq2_desc, b, h, ready, empty, kv_bar, p_ready, p_free,
                      dp_ready, dp_free, LSE2, DL2, DQ2, DK2, row0, q_row0, start_n, n_steps, T, qk2, scale2, -lam,
                      BM, BN, D, STAGES, DQ_ON, VEC)),
                (_producer, (q1_desc, q2_desc, do_desc, k1_desc, k2_desc, v_desc, q1_r, q2_r, do_r, k1_s, k2_s, v_s,
                             ready, empty, kv_bar, b, h, start_n, n_steps, BM, STAGES)),
            ], [4, 4, 1], [R_STREAM, R_STREAM, R_LOAD])
        else:
            gl.warp_specialize([
                (_dv_part, (v_s, do_r, p1_s, p2_s, dp_s, ready, empty, kv_bar, p_ready, p_free, dp_ready, dp_free,
                            DV, row0, start_n, n_steps, T, BM, BN, D, STAGES)),
                (_stream, (k1_s, q1_r, p1_s, ds1_s, dp_s, dq1_s, dq1_desc, b, h, ready, empty, kv_bar, p_ready, p_free,
                      dp_ready, dp_free, LSE1, DL1, DQ1, DK1, row0, q_row0, start_n, n_steps, T, qk1, scale1, 1.0,
                      BM, BN, D, STAGES, DQ_ON, VEC)),
                (_stream, (k2_s, q2_r, p2_s, ds2_s, dp_s, dq2_s, dq2_desc, b, h, ready, empty, kv_bar, p_ready, p_free,
                      dp_ready, dp_free, LSE2, DL2, DQ2, DK2, row0, q_row0, start_n, n_steps, T, qk2, scale2, -lam,
                      BM, BN, D, STAGES, DQ_ON, VEC)),
                (_producer, (q1_desc, q2_desc, do_desc, k1_desc, k2_desc, v_desc, q1_r, q2_r, do_r, k1_s, k2_s, v_s,
                             ready, empty, kv_bar, b, h, start_n, n_steps, BM, STAGES)),
            ], [4, 4, 1], [R_STREAM, R_STREAM, R_LOAD])


def _desc4(x, rows: int):
    """A 4-D descriptor over x [B, H, T, D] with [1, 1, rows, D] blocks (zero past T per head)."""
    blk = [1, 1, rows, x.shape[-1]]
    return TensorDescriptor(x, list(x.shape), list(x.stride()), blk, nvmma_layout(blk, x.dtype))


def dq_rows(t: int) -> int:
    """Rows per head of the float32 dQ workspaces: T padded to whole query blocks."""
    return -(-t // BM) * BM


def descriptors(q1, k1, q2, k2, v, dout):
    return tuple(_desc4(x, BM) for x in (q1, k1, q2, k2, v, dout))


def diff_bwd_gluon(q1, k1, q2, k2, v, lam, dout, lse1, lse2, dl1, dl2, dk1, dk2, dv, dq1, dq2, scale1, scale2,
                   log2e=1.4426950408889634, dq_on=True):
    """Launch the kernel: dk1, dk2, dv [B, H, T, 128] in the inputs' dtype (written); dq1, dq2 float32
    [B, H, dq_rows(T), 128] (zeroed by the caller; reduce-added, scaled; rows past T are scratch)."""
    b, h, t, d = q1.shape
    grid = (-(-t // BN), b * h)
    dqd = tuple(TensorDescriptor(x, list(x.shape), list(x.stride()), [1, 1, BM, d // 2],
                                 gl.NVMMASharedLayout.get_default_for([1, 1, BM, d // 2], gl.float32)) for x in (dq1, dq2))
    args = (*descriptors(q1, k1, q2, k2, v, dout), *dqd, lam, lse1, lse2, dl1, dl2, dk1, dk2, dv, dq1, dq2, h, t,
            scale1 * log2e, scale2 * log2e, scale1, scale2, d, BM, BN, STAGES, REGS[0], REGS[1], bool(dq_on), DQ_VEC,
            bool(PIPE and DQ_VEC == 3))
    return _diff_bwd_gluon_kernel[grid](*args, num_warps=4, maxnreg=MAXNREG)
