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
   ``OPTS["loop1_fwd"]`` (session 7; default ``"split"``: where the split forward below runs):
   the same in one loop (``LOOP1``), window blocks then landmark slots BLOCK_N at a time (their
   positions and gates loaded before the loop, so the pipeline prefetches the gathered rows), the
   mask picked per block by a uniform branch: one software pipeline instead of five loops.
2. **Backward**: ``_dq_kernel`` (per query tile) computes the tile's delta = rowsum(O * dO) (stored
   for the kernels after it; ``OPTS["fuse_delta"]=False``: the separate ``_delta_kernel``) and
   accumulates the window dQ and the window-size gradient dW (d ln r / dw = 1 / (edge r) on the
   ramp, so the term is p / r / edge = 2^(s-lse) / edge: no division); ``_dkdv_kernel`` (per key
   tile, looping over the heads of its kv group) stores the window part of dK and dV (no atomics);
   ``OPTS["dkdv_wmin"]`` (session 7 round 2, default where T >= ``OPTS["wmin_min_t"]``): the dQ
   kernel also stores the smallest window of every 32 rows, and the dK/dV kernel reads those
   scalars instead of reducing its query tile's windows across warps in every iteration.
   The landmark backward (default ``OPTS["lm_bwd"] = "trans"``, ``OPTS["lm_dq"] = True``, session
   6): ``_lm_bwd_t_kernel``, per (segment of 16 selection blocks, all KP slots, batch*kv head),
   loads a block's landmark K/V rows once and, with the slots as the dots' M dimension (transposed
   like the dK/dV kernel: S^T = K_lm Q^T, P^T dO and dS^T Q straight from the accumulator layout),
   adds the block's P^T dO, dS^T Q and gate sums into per-slot registers, flushed atomically into
   the token's dK/dV rows and energy gradient (gate' = sigmoid(-e) times the sum) when a slot's
   token changes and at the segment's end (stable slots: one add per run and segment), and adds the
   block's landmark dQ = dS K_lm into dQ (read, add, store: one program owns a tile's slots, so no
   atomics). Fallback where that kernel does not compile (``"atomic"``, session 5): the dQ kernel
   with its landmark pass and ``_lm_bwd_kernel`` (per segment of query tiles x chunk of slots).
   Session 9 (``OPTS["gluon_dq"]``, where T >= ``OPTS["gluon_dq_min_t"]``): the window dQ pass (dQ, dW,
   delta, WMIN) by the Gluon kernel of ``gluon_dq.py`` on Hopper (TMA ring, async wgmma), ``_dq_kernel``
   elsewhere; likewise the window dK/dV (``OPTS["gluon_dkdv"]``, T >= ``OPTS["gluon_dkdv_min_t"]``) by
   ``gluon_dkdv.py``, ``_dkdv_kernel`` elsewhere. Both from 16K on (the H100 A/B: faster there, slower at 4K
   where the step is host bound).

At T >= ``OPTS["split_min_t"]`` (32768; session 6 round 2: faster at 32K, slower at 16K)
``OPTS["fwd_split"]`` runs the forward as a window-only ``_fwd_kernel`` followed by
``_fwd_lm_kernel`` (the landmark pass continuing the online softmax from (lse, 1, O)), with the
selection on a high-priority side stream launched right after the window kernel, beside it.

Launches go through ``attnlab.ops.launch_replay.ReplayLauncher`` (the compiled launcher is called
directly from the second launch of a shape on).

Options measured slower in sessions 2-6 and removed in session 7 (figures in benchmarks/RESULTS.md):
the per-tile partials + segmented-scan reduction landmark backward (``lm_bwd="reduce"``), landmark
inputs loaded ahead (``lm_pre_*``), the parallel selection (``sel_chunk``), the flush skip
(``lm_skip``: 585 vs 391 us), dQ rows loaded early, the phased dK/dV kernel, the side-stream
selection launched before the window kernel and the split forward without it (``fwd_split`` 1 / 2),
the selection's bulk merge, row-by-row stores and more warps (``sel_*``). Session 7 round 2 removed
the dK/dV kernel's log2-r scores (``dkdv_logr``) and 128-row window-only dQ tiles (both slower).
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from ..launch_replay import ReplayLauncher
from . import gluon_dkdv as _GD, gluon_dq as _GQ
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


if HAVE_TRITON:  # the Triton kernels live in jit_attention.py and jit_select.py
    from .jit_attention import _fwd_kernel, _dq_kernel, _lm_bwd_kernel, _dkdv_kernel, _delta_kernel
    from .jit_attention import _lm_bwd_t_kernel, _fwd_lm_kernel
    from .jit_select import _select_kernel


_FAST_LM = {"on": True}


def _pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def _select_stable(energy, k: int, kp: int, block: int, key32: bool | None = None, out=None):
    """Landmark positions [B, Hk, NB, KP] int32 (-1: empty slot or padding), stable slots (the serial
    selection kernel, one program per (batch, kv head)); key32: int32 rank keys (default where
    T <= 65536), else int64."""
    b, hk, t = energy.shape
    nb = -(-t // block)
    e = energy.detach().float().contiguous()
    if out is None:
        out = torch.empty(b, hk, nb, kp, dtype=torch.int32, device=energy.device)
    cb = 16 if block <= 128 else 4
    key32 = (t <= 65536) if key32 is None else key32
    _LAUNCH(_select_kernel, (b * hk,), e, out, t, nb, block, K=k, KP=kp, BS=_pow2(block), CB=cb, KEY32=key32,
            num_warps=1)
    return out


def landmark_slots(energy, n_landmarks: int, block: int):
    """Positions [B, Hk, NB, KP] int32 with -1 in empty slots: the causal landmark sets, from the
    stable-slot selection kernel, or (the kernel failed to compile here) the torch prefix scan with
    the slots in key order (the landmark backward kernels flush a slot whenever its token changes,
    so they need no stability, only fewer flushes with it)."""
    kp = max(16, _pow2(n_landmarks))
    if _FAST_LM["on"]:
        try:
            return _select_stable(energy, n_landmarks, kp, block)
        except Exception as e:  # pragma: no cover - compiler trouble: fall back, once
            import warnings

            warnings.warn(f"dsalt: stable-slot selection kernel unavailable ({type(e).__name__}: {e}); "
                          "using the torch scan")
            _FAST_LM["on"] = False
    keys = select_landmarks(energy, n_landmarks, block)  # [B, Hk, NB, K], descending
    if kp > n_landmarks:
        keys = F.pad(keys, (0, kp - n_landmarks), value=INVALID_KEY)
    pos = torch.where(keys != INVALID_KEY, key_positions(keys), torch.full_like(keys, -1))
    return pos.to(torch.int32).contiguous()


def _prec(q) -> str:
    """fp32 inputs: exact fp32 dots (matching the reference); fp16/bf16: tensor-core dots."""
    return "ieee" if q.dtype == torch.float32 else "tf32"


def _blocks(block: int, d: int, device) -> tuple[int, int, int]:
    """(BLOCK_M, BLOCK_N, num_warps) of the untuned launch; BLOCK_M divides the selection block."""
    if _interpreting() or device.type != "cuda":
        return 16, 16, 4
    bm = 64 if block % 64 == 0 else (32 if block % 32 == 0 else 16)
    return bm, bm, 4 if d <= 64 else 8


# kernel options. lc_fwd / lc_dq: landmark columns per chunk in the forward / dQ kernels' landmark
# pass (at most KP); delta: (rows per program, warps) of the separate delta = rowsum(O * dO) pass
# (fuse_delta=False); fuse_delta: the dQ kernel computes delta itself (session 5 on the H100, vs the
# separate pass: DSALT fwd+bwd -0.06 / -0.04 / -0.01 ms at 32K / 16K / 4K).
# lm_bwd: the landmark backward, "trans" = _lm_bwd_t_kernel (session 6: slots as the dots' M
# dimension, one load of a block's landmark rows, segments of whole selection blocks), "atomic" =
# _lm_bwd_kernel (session 5; the fallback where "trans" fails to compile); lm_dq (with "trans"): the
# landmark dQ is added by _lm_bwd_t_kernel and the dQ kernel runs without its landmark pass.
# fwd_split: where T >= split_min_t, the forward's landmark pass as its own kernel (_fwd_lm_kernel)
# after the window-only forward, with the selection on a high-priority side stream launched after
# the window kernel (CUDA, not during graph capture), so that it runs beside it (session 6b, H100:
# 32K 3.19 ms vs 3.24-3.28 without it in the same run; slower at 16K, hence split_min_t = 32768).
# Defaults from session 6's H100 A/B calls (benchmarks/RESULTS.md, "Session 6: DSALT" and "Session 6
# round 2"). Options measured slower and removed in session 7 (their figures stay in RESULTS.md):
# lm_bwd "reduce" (per-tile partials + a segmented-scan reduction), lm_pre_* (landmark inputs loaded
# ahead), sel_chunk (parallel selection), lm_skip, lm_dq_early, dkdv_phased, fwd_split 1 / 2,
# sel_bulk / sel_sorted / sel_rowst / sel_warps.
# loop1_fwd (session 7): the forward kernel's window blocks (and then, fused, its landmark slots,
# BLOCK_N at a time, positions and gates loaded before the loop) in one loop with the mask picked per
# block by a uniform branch (one software pipeline) instead of four phase loops and a landmark loop:
# "split" (the default) where the split forward runs (window-only forward kernel, T >= split_min_t),
# True at every T, False never. H100, session 7 call 2 (same run): 32K 3.127 ms vs 3.242 (split
# forward with the four-loop window kernel); the fused one-loop forward with landmark iterations
# took 587 us vs 703 for the four-loop one (32K timelines) but measured no faster end to end at 16K
# (1.811-1.827 vs 1.768 ms, noisy rounds) or at 32K against the split (3.168 ms), hence "split".
# A one-loop dQ kernel (also with the landmark dQ as its last iterations) measured no faster
# (32K: 3.176 / 3.184 ms vs 3.112-3.168) and was removed.
# dkdv_wmin (session 7 round 2): the dQ kernel stores every 32 rows' smallest window (WMIN, one
# allocation with delta) and the dK/dV kernel tests its query tiles' full-weight range from those
# instead of a per-iteration cross-warp tl.min over the tile's windows (ptxas: 64 x 128 dK/dV spills
# 152 -> 56 bytes). H100, two calls: dK/dV at 32K 1061 -> 981 / 1066 -> 1010 us; fwd+bwd 32K
# 2.974 vs 2.985 / 3.138 vs 3.197 ms, 16K 1.691 vs 1.726 / 1.782 vs 1.813; 4K (host bound) 0.818 vs
# 0.753 / 0.990 vs 0.975, hence only where T >= wmin_min_t. Measured slower and removed: the dK/dV
# scores rewritten in the per-tile branch (p = 2^(s + log2 r - lse), more spills: 32K 3.523 vs
# 2.985 ms) and 128-row window-only dQ tiles (3.240).
# lm_lean (session 8, helper 6b's offline patch; default since the lead's A/B): _lm_bwd_t_kernel's landmark
# bias as one select inside the exp2 and sm_scale folded into dS (11% fewer SASS instructions in its loop,
# ptxas sm_90). H100, one call, same process, 7 rounds: the kernel 364 vs 394 us at 32K; fwd+bwd 32K 3.087 vs
# 3.081 ms (equal), 16K 1.751 vs 1.825, 4K 0.965 vs 1.029 (host bound).
# gluon_dq (session 9): the window dQ pass (dQ, dW, the fused delta, the window minima) by the Gluon kernel
# (gluon_dq.py: TMA ring of K/V tiles, async wgmma, dS as the register operand of dQ += dS K) instead of
# _dq_kernel, where it can run (gluon_dq.available: Hopper, bf16, head dim 128) and the dQ pass has no
# landmark part (the default lm_dq path, or no landmarks) and delta is fused; a compile or launch failure
# switches it off for the process (gluon_dq.BROKEN) with a warning. FORCE_CONFIG["gluon_dq"]: a gluon_dq.CONFIGS
# tuple instead of the module's GLUON_DQ_CONFIG. On by default where T >= gluon_dq_min_t (16384): H100, session 9,
# two calls (benchmarks/RESULTS.md, "Session 9: DSALT dQ in Gluon"): the kernel alone 0.565 vs 0.663 ms at 32K
# (0.294 vs 0.336 at 16K, 0.081 vs 0.094 at 4K); DSALT fwd+bwd 32K 2.887 vs 3.090 ms / 2.889 vs 3.033 (faster in
# both calls), 16K 1.701 vs 1.751 / 1.870 vs 1.802 (mixed), 4K (host bound) 1.265 vs 1.199 / 1.157 vs 1.005
# (slower: its launch costs more host time), hence only from 32K on after the helper's calls; from 16K on after
# the lead's two calls (with gluon_dkdv: see below).
# gluon_dkdv (session 9; on where T >= gluon_dkdv_min_t): the window dK/dV through the Gluon kernel of gluon_dkdv.py (TMA ring, async wgmma)
# where it can run (Hopper, bf16/fp16, d = 128), _dkdv_kernel elsewhere (FORCE_CONFIG["gluon_dkdv"]: another
# config). H100, one call, 5 rounds: the kernel 939 vs 989 us at 32K; fwd+bwd 2.990 vs 3.020 ms at 32K, 1.736 vs
# 1.747 at 16K, 1.222 vs 0.984 at 4K (host bound; the launch then built host descriptors each call, the replay
# without them came after); benchmarks/RESULTS.md, "Session 9: DSALT dK/dV in Gluon". The lead's two calls (7
# rounds, both Gluon passes vs the Triton ones, "Session 9 lead check"): 32K 2.874 / 2.812 vs 3.038 / 2.984 ms,
# 16K 1.720 / 1.629 vs 1.791 / 1.686, 4K 1.133 / 1.211 vs 1.015 / 1.008 (host bound): both on from 16K.
OPTS = {"lc_fwd": 32, "lc_dq": 32, "delta": (64, 4), "lm_bwd": "trans", "fuse_delta": True,
        "lm_dq": True, "fwd_split": True, "split_min_t": 32768, "loop1_fwd": "split",
        "dkdv_wmin": True, "wmin_min_t": 8192, "lm_lean": True, "gluon_dq": True, "gluon_dq_min_t": 16384,
        "gluon_dkdv": True, "gluon_dkdv_min_t": 16384}

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
            _TUNED[tag] = triton.autotune(cfgs, key=key + ["KP", "HAS_LM", "LOOP1"])(_fwd_kernel)
        else:
            cfgs = [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=st)
                    for m, n, w, st in DQ_CONFIGS]
            _TUNED[tag] = triton.autotune(cfgs, key=key + ["KP", "HAS_LM", "FUSE_DELTA"])(_dq_kernel)
    return _TUNED[tag]


def tuned_configs() -> dict:
    """The launch configs the autotuner picked so far (for benchmark logs)."""
    out = {}
    for tag, fn in _TUNED.items():
        out[str(tag)] = {str(k): str(v) for k, v in getattr(fn, "cache", {}).items()}
    return out


# CUDA launch configs forced instead of autotuning: {"fwd": (BM, BN, warps, stages), "dq": (BM, BN,
# warps, stages), "dkdv": (BM, BN, warps, stages, TRANS), "lm_bwd" / "lm_bwd_t" / "fwd_lm": see their
# config lists} (tests of every
# config; ATTNLAB_DSALT_AUTOTUNE=0 forces each list's first entry, which skips the autotuner's
# compile-and-time of every config)
FORCE_CONFIG: dict = {}


def _forced(name):
    if name in FORCE_CONFIG:
        return FORCE_CONFIG[name]
    if os.environ.get("ATTNLAB_DSALT_AUTOTUNE", "1") == "0":
        return {"fwd": FWD_CONFIGS, "dq": DQ_CONFIGS, "dkdv": DKDV_CONFIGS}[name][0]
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
        key = (grid_m, args[0].dtype, args[0].shape[-1], meta.get("KP"), meta.get("HAS_LM"), meta.get("FUSE_DELTA"),
               meta.get("LOOP1"), meta.get("WG"))
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


# _lm_bwd_kernel launch on CUDA: (BLOCK_M query rows per tile, LC slots per program, SEG tiles per
# program, warps, stages); register use checked offline (ptxas, sm_90): 32 rows x 32 slots, 8 warps:
# 220 registers, no spills; 32 x 64: 8 bytes of stack; 64-row tiles spill heavily (536-1528 bytes).
# First = the default: 32 x 64 (all 64 slots in one program, Q/dO read once per tile) was the fastest
# on the H100 (session 5: DSALT fwd+bwd at 32K 3.39 ms vs 3.53 with 32 x 32, 3.45 with SEG 64)
LM_BWD_CONFIGS = [(32, 64, 32, 8, 2), (32, 32, 32, 8, 2), (32, 16, 32, 4, 2)]


# _lm_bwd_t_kernel launch on CUDA: (BLOCK_M rows per tile, LC slots per program, SEG selection
# blocks per program, warps, stages); BLOCK_M divides the selection block
LM_BWD_T_CONFIGS = [(64, 64, 16, 8, 2), (64, 64, 8, 8, 2), (64, 64, 32, 8, 2), (64, 64, 16, 4, 2),
                    (32, 64, 16, 8, 2), (64, 32, 16, 4, 2)]
# _fwd_lm_kernel launch on CUDA: (BLOCK_M, LC, warps, stages[, maxnreg]); the lm_bwd_t tuples may
# also end in a maxnreg (registers per thread: more programs per SM, with spills)
FWD_LM_CONFIGS = [(64, 32, 4, 2), (64, 64, 4, 2), (64, 64, 8, 2), (32, 32, 4, 2), (32, 32, 4, 2, 128)]


def _lm_bwd_t_config(q, block, bm, kp, add_dq):
    """(BLOCK_M, LC, SEG, warps, stages, launch options: maxnreg where a config names one)."""
    if _interpreting() or not q.is_cuda:
        m, lc, seg, w, st, extra = bm, 16, 2, 4, 1, {}  # short segments: runs spanning segments are tested
    else:
        cfg = FORCE_CONFIG.get("lm_bwd_t") or LM_BWD_T_CONFIGS[0]
        m, lc, seg, w, st = cfg[:5]
        extra = {"maxnreg": cfg[5]} if len(cfg) > 5 else {}
        m = m if block % m == 0 else bm
    lc = kp if add_dq else min(lc, kp)  # the landmark dQ needs every slot of a tile in one program
    return m, lc, seg, w, st, extra


def _fwd_lm_config(q, block, bm, kp):
    """(BLOCK_M, LC, warps, stages, launch options: maxnreg where a config names one)."""
    if _interpreting() or not q.is_cuda:
        return bm, 16, 4, 1, {}
    cfg = FORCE_CONFIG.get("fwd_lm") or FWD_LM_CONFIGS[0]
    m, lc, w, st = cfg[:4]
    return (m if block % m == 0 else bm), min(lc, kp), w, st, ({"maxnreg": cfg[4]} if len(cfg) > 4 else {})


_SIDE: dict = {}


def _side_stream(device):
    """(high-priority side stream, fork event, join event) of a device, made once: the selection
    runs there beside the window forward kernel (OPTS["fwd_split"]); high priority, so its
    programs take the first free slots while the window kernel's programs fill the GPU."""
    if device not in _SIDE:
        _SIDE[device] = (torch.cuda.Stream(device, priority=-8), torch.cuda.Event(), torch.cuda.Event())
    return _SIDE[device]


def _side_ok(q, t: int) -> bool:
    """Whether the selection may run on the side stream: CUDA, not during CUDA-graph capture, the
    selection kernel (not the torch scan)."""
    return q.is_cuda and _FAST_LM["on"] and not torch.cuda.is_current_stream_capturing()


def _lm_bwd_config(q, block, bm):
    if _interpreting() or not q.is_cuda:
        return bm, 16, 2, 4, 1  # short segments: runs spanning segments are tested
    m, lc, seg, w, st = FORCE_CONFIG.get("lm_bwd") or LM_BWD_CONFIGS[0]
    return (m if block % m == 0 else bm), lc, seg, w, st


def gluon_dq_ready(q, k, v, do, o, lm_part: bool = False, min_t: int | None = None) -> bool:
    """Whether the window dQ pass goes through the Gluon kernel (OPTS["gluon_dq"] on, T >= min_t (default
    OPTS["gluon_dq_min_t"]), no landmark part in the dQ pass, delta fused, gluon_dq.available: Hopper GPU,
    bf16, head dim 128, TMA-compatible)."""
    min_t = OPTS["gluon_dq_min_t"] if min_t is None else min_t
    if not OPTS["gluon_dq"] or lm_part or not OPTS["fuse_delta"] or q.shape[2] < min_t:
        return False
    return _GQ.available(q, k, v, do, o)


def _gluon_pass(mod, what: str, launch) -> bool:
    """Run a Gluon pass (``launch()``); a compile or launch failure switches its module off for the process
    (``mod.BROKEN``) with a warning and returns False: the caller then launches the Triton kernel."""
    try:
        launch()
    except Exception as e:  # compiler or driver trouble: the Triton kernel from now on
        import warnings

        mod.BROKEN = f"{type(e).__name__}: {e}"
        warnings.warn(f"dsalt: Gluon {what} kernel unavailable ({mod.BROKEN[:300]}); using the Triton kernel")
        return False
    return True


def _gluon_dq(q, k, v, win, do, lse, delta, dq, dw, o, wmin, n_max, edge, scale, wg, lm_part=False,
              min_t=None) -> bool:
    """The window dQ pass by the Gluon kernel where gluon_dq_ready; False: the caller launches _dq_kernel."""
    if not gluon_dq_ready(q, k, v, do, o, lm_part, min_t):
        return False
    return _gluon_pass(_GQ, "dQ", lambda: _GQ.dq_gluon(
        q, k, v, do, o, win, lse, delta, dq, dw, wmin, n_max, edge, scale * LOG2E, scale, wg,
        config=FORCE_CONFIG.get("gluon_dq")))


def window_dq(q, k, v, win, do, lse, o, *, n_max: int, edge: float, scale: float | None = None, wg: int = 32,
              gluon: bool | None = None, poison: bool = True):
    """The backward's window dQ pass alone (no landmark part), for tests and benchmarks: (dq, dw, delta,
    wmin) from the Gluon kernel (gluon True; None: OPTS["gluon_dq"]) or the Triton _dq_kernel. q, do, o
    [B, H, T, D]; k, v [B, Hk, T, D]; win [B, H, T] fp32; lse [B, H, T] (log2, the forward's)."""
    b, h, t, d = q.shape
    scale = d**-0.5 if scale is None else scale
    # outputs poisoned (NaN): an element the kernel leaves unwritten shows (poison=False: timing)
    fill = (lambda x: x.fill_(float("nan"))) if poison else (lambda x: x)
    delta = fill(torch.empty((b, h, t), device=q.device, dtype=torch.float32))
    wmin = fill(torch.empty((b * h * max(1, -(-t // max(wg, 1))),), device=q.device, dtype=torch.float32))
    dq = fill(torch.empty_like(q))
    dw = fill(torch.empty((b, h, t), device=q.device, dtype=torch.float32))
    saved = OPTS["gluon_dq"], OPTS["fuse_delta"]
    OPTS["gluon_dq"], OPTS["fuse_delta"] = (saved[0] if gluon is None else bool(gluon)), True
    try:
        if not _gluon_dq(q, k, v, win, do, lse, delta, dq, dw, o, wmin, n_max, edge, scale, wg, min_t=0):
            if gluon:
                raise RuntimeError("dsalt: the Gluon dQ kernel cannot run here")
            bm, bn, warps = _blocks(64, d, q.device)
            strides = (q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2))
            lpos = torch.full((1, 1, 1, 16), -1, dtype=torch.int32, device=q.device)
            _launch("dq", _dq_kernel, t, b * h, bm, bn, warps, 64,
                    q, k, v, win, win, lpos, do, lse, delta, dq, dw, o, wmin, *strides,
                    h, h // k.shape[1], t, 1, n_max, float(edge), 1.0 / float(edge), scale * LOG2E, scale, 64,
                    D=d, KP=16, HAS_LM=False, PREC=_prec(q), LC=16, FUSE_DELTA=1, WG=wg)
    finally:
        OPTS["gluon_dq"], OPTS["fuse_delta"] = saved
    return dq, dw, delta, wmin


class _SavedCtx:
    """A stand-in autograd context: what _DSALTFn.forward saves (tests and benchmarks of the backward's passes)."""

    def save_for_backward(self, *tensors):
        self.saved_tensors = tensors


def forward_saved(q, k, v, win, energy, *, n_max: int, edge: float, n_landmarks: int, block: int,
                  scale: float | None = None):
    """Run the Triton forward and return (o, lse [B, H, T] log2, lpos): the backward's inputs."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    ctx = _SavedCtx()
    o = _DSALTFn.forward(ctx, q.contiguous(), k.contiguous(), v.contiguous(), win.float().contiguous(),
                         energy.contiguous(), (n_max, float(edge), block, float(scale), n_landmarks))
    return o, ctx.saved_tensors[8], ctx.saved_tensors[6]


def _gluon_dkdv(q, k, v, win, do, lse, delta, dk, dv, wmin, h, g, t, fargs, wg) -> bool:
    """The window dK/dV through the Gluon kernel (gluon_dkdv.py, session 9) where OPTS["gluon_dkdv"] is on,
    T >= OPTS["gluon_dkdv_min_t"] and it can run (Hopper, bf16/fp16, head dim 128, TMA-compatible tensors);
    False: the caller launches the Triton _dkdv_kernel."""
    if not OPTS["gluon_dkdv"] or t < OPTS["gluon_dkdv_min_t"] or not _GD.available(q, k, v, do):
        return False
    return _gluon_pass(_GD, "dK/dV", lambda: _GD.dkdv_gluon(q, k, v, win, do, lse, delta, dk, dv, wmin, h, g, t,
                                                            *fargs, wg, config=FORCE_CONFIG.get("gluon_dkdv")))


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
        split = has_lm and bool(OPTS["fwd_split"]) and t >= OPTS["split_min_t"]
        side = split and _side_ok(q, t)
        if side:
            # the selection on a side stream, launched after the window kernel (the host's time
            # between the two launches then overlaps too); lpos is allocated on the current stream,
            # which waits for the side stream before the landmark pass reads it
            kp, nb = max(16, _pow2(n_lm)), -(-t // block)
            cur = torch.cuda.current_stream(q.device)
            sst, ev_fork, ev_join = _side_stream(q.device)
            ev_fork.record(cur)
            lpos = torch.empty(b, hk, nb, kp, dtype=torch.int32, device=q.device)
        elif has_lm:
            lpos = landmark_slots(energy.detach(), n_lm, block)
            kp, nb = lpos.shape[-1], lpos.shape[2]
        else:
            kp, nb = 16, 1
            lpos = torch.full((1, 1, 1, kp), -1, dtype=torch.int32, device=q.device)
        gt = energy.detach() if has_lm else win  # the kernels compute the gate logsigmoid(e)
        o = torch.empty_like(q)
        lse = torch.empty(b, h, t, device=q.device, dtype=torch.float32)
        fwd_args = (q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
                    o.stride(0), o.stride(1), o.stride(2))
        _launch("fwd", _fwd_kernel, t, b * h, bm, bn, warps, block,
                q, k, v, win, gt, win if split else lpos, o, lse, *fwd_args,
                h, g, t, nb, n_max, float(edge), 1.0 / float(edge), scale * LOG2E, block,
                D=d, KP=kp, HAS_LM=has_lm and not split, PREC=_prec(q), LC=min(OPTS["lc_fwd"], kp),
                LOOP1=int(OPTS["loop1_fwd"] is True or (OPTS["loop1_fwd"] == "split" and bool(split))))
        if split:
            if side:
                sst.wait_event(ev_fork)
                with torch.cuda.stream(sst):
                    _select_stable(gt, n_lm, kp, block, out=lpos)
                ev_join.record(sst)
                cur.wait_event(ev_join)
            fm, flc, fw, fst, fx = _fwd_lm_config(q, block, bm, kp)
            _LAUNCH(_fwd_lm_kernel, (triton.cdiv(t, fm), b * h), q, k, v, win, gt, lpos, o, lse, *fwd_args,
                    h, g, t, nb, n_max, 1.0 / float(edge), scale * LOG2E, block,
                    D=d, BLOCK_M=fm, KP=kp, PREC=_prec(q), LC=flc, num_warps=fw, num_stages=fst, **fx)
        ctx.save_for_backward(q, k, v, win, energy, gt, lpos, o, lse)
        ctx.meta = meta
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
        # rows per stored window minimum (0: the dK/dV kernel reduces its tiles' windows itself)
        wg = (16 if bm == 16 else 32) if OPTS["dkdv_wmin"] and t >= OPTS["wmin_min_t"] else 0
        # delta [B, H, T] and the window minima [B*H, cdiv(T, wg)] in one allocation (host time)
        if wg:
            buf = torch.empty(b * h * (t + -(-t // wg)), device=q.device, dtype=torch.float32)
            delta, wmin = buf[:b * h * t].view(b, h, t), buf[b * h * t:]
        else:
            delta = wmin = torch.empty(b, h, t, device=q.device, dtype=torch.float32)
        fuse = OPTS["fuse_delta"]
        if not fuse:
            db, dw_ = OPTS["delta"]
            _LAUNCH(_delta_kernel, (triton.cdiv(b * h * t, db),), o, do, delta, b * h * t, D=d, BLOCK=db,
                    num_warps=dw_)
        dq = torch.empty_like(q)
        dw = torch.empty(b, h, t, device=q.device, dtype=torch.float32)
        strides = (q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2))
        fargs = (n_max, float(edge), 1.0 / float(edge), scale * LOG2E, scale)
        trans = has_lm and OPTS["lm_bwd"] == "trans"
        lm_dq = trans and OPTS["lm_dq"]
        if not _gluon_dq(q, k, v, win, do, lse, delta, dq, dw, o, wmin, n_max, edge, scale, wg,
                         lm_part=has_lm and not lm_dq):
            _launch("dq", _dq_kernel, t, b * h, bm, bn, warps, block,
                    q, k, v, win, gt, lpos, do, lse, delta, dq, dw, o, wmin, *strides,
                    h, g, t, nb, *fargs, block,
                    D=d, KP=kp, HAS_LM=has_lm and not lm_dq, PREC=_prec(q), LC=min(OPTS["lc_dq"], kp),
                    FUSE_DELTA=int(fuse), WG=wg)
        dk = torch.empty_like(k)
        dv = torch.empty_like(v)
        if not _gluon_dkdv(q, k, v, win, do, lse, delta, dk, dv, wmin, h, g, t, fargs, wg):
            _launch("dkdv", _dkdv_kernel, t, b * hk, bm, bn, warps, block,
                    q, k, v, win, do, lse, delta, dk, dv, wmin, *strides, h, g, t, *fargs, D=d, PREC=_prec(q),
                    WG=wg)
        denergy = None
        if has_lm:
            dgt = torch.zeros(b, hk, t, device=q.device, dtype=torch.float32)
            if trans:
                lm, lc, seg, lw, lst, lx = _lm_bwd_t_config(q, block, bm, kp, lm_dq)
                try:
                    _LAUNCH(_lm_bwd_t_kernel, (triton.cdiv(nb, seg), kp // lc, b * hk),
                            q, k, v, win, gt, lpos, do, lse, delta, dk, dv, dgt, dq, *strides,
                            h, g, t, nb, n_max, 1.0 / float(edge), scale * LOG2E, scale, block,
                            D=d, BLOCK_M=lm, KP=kp, LC=lc, SEG=seg, PREC=_prec(q), ADD_DQ=int(lm_dq), LEAN=int(OPTS["lm_lean"]),
                            FLAT=int(lm == block and g == 1), num_warps=lw, num_stages=lst, **lx)
                except Exception as e:  # pragma: no cover - compiler trouble: the session-5 path, from scratch
                    import warnings

                    warnings.warn(f"dsalt: transposed landmark backward kernel unavailable ({type(e).__name__}: "
                                  f"{e}); using _lm_bwd_kernel")
                    OPTS["lm_bwd"], OPTS["lm_dq"] = "atomic", False
                    return _DSALTFn.backward(ctx, do)
            else:
                lm, lc, seg, lw, lst = _lm_bwd_config(q, block, bm)
                lc = min(lc, kp)
                nt_l = triton.cdiv(t, lm)
                _LAUNCH(_lm_bwd_kernel, (triton.cdiv(nt_l, seg), kp // lc, b * hk),
                        q, k, v, win, gt, lpos, do, lse, delta, dk, dv, dgt, *strides,
                        h, g, t, nb, nt_l, *fargs, block, D=d, BLOCK_M=lm, KP=kp, LC=lc, SEG=seg,
                        PREC=_prec(q), num_warps=lw, num_stages=lst)
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
