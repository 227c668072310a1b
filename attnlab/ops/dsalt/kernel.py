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

Session 6 (the defaults now, ``OPTS["lm_bwd"] = "trans"``, ``OPTS["lm_dq"] = True``): the dQ kernel
runs without its landmark pass (window dQ and dW only) and ``_lm_bwd_t_kernel`` does all the
landmark backward work: per (segment of 16 selection blocks, all KP slots, batch*kv head) it loads
a block's landmark K/V rows once and, with the slots as the dots' M dimension (transposed like the
dK/dV kernel: S^T = K_lm Q^T, P^T dO and dS^T Q straight from the accumulator layout), adds the
block's P^T dO, dS^T Q and gate sums into per-slot registers (flushed atomically when a slot's token
changes, as before) and the block's landmark dQ = dS K_lm into dQ (read, add, store: one program
owns a tile's slots, so no atomics). Options measured and kept off: ``OPTS["fwd_split"]`` (the
forward's landmark pass as ``_fwd_lm_kernel`` after a window-only forward, the selection on a
high-priority side stream beside it), ``OPTS["lm_skip"]`` (skip the flush code at blocks with no
slot change: with its per-block cross-warp test and branch the kernel was slower, 585 vs 391 us),
``OPTS["lm_dq_early"]``, ``OPTS["dkdv_phased"]`` (the dK/dV kernel's query tiles in branch-free
phases from a per-16-row smallest window the forward stores).

Session 6 round 2: ``OPTS["fwd_split"] = 3`` is the default where T >= ``OPTS["split_min_t"]``
(32768; measured faster at 32K, slower at 16K). Selection options measured and kept off:
``OPTS["sel_bulk"]`` (a block's candidates merged in one rank-matching step, by sorts or rank
matrices: the same slots as the insertions), ``OPTS["sel_rowst"]``, ``OPTS["sel_warps"]``.

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


if HAVE_TRITON:  # the Triton kernels live in jit_attention.py and jit_select.py
    from .jit_attention import _fwd_kernel, _dq_kernel, _lm_bwd_kernel, _dkdv_kernel, _delta_kernel
    from .jit_attention import _lm_bwd_t_kernel, _fwd_lm_kernel
    from .jit_select import _select_kernel, _lm_reduce_kernel


_FAST_LM = {"on": True}


def _pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def _select_stable(energy, k: int, kp: int, block: int, key32: bool | None = None, chunk: int | None = None,
                   out=None):
    """Landmark positions [B, Hk, NB, KP] int32 (-1: empty slot or padding); key32: int32 rank
    keys (default where T <= 65536), else int64. chunk (candidate blocks per program; default
    OPTS["sel_chunk"] where T >= OPTS["sel_par_min_t"], else serial): the parallel selection, C
    chunks of the block axis at once: pass 1 the chunks' own top-k keys, then each chunk's start
    set (the top-k of the chunks before it, torch), pass 2 the stable-slot insertion from it.
    Slots are stable within a chunk; at a chunk start the set is laid out again in key order."""
    b, hk, t = energy.shape
    nb = -(-t // block)
    e = energy.detach().float().contiguous()
    if out is None:
        out = torch.empty(b, hk, nb, kp, dtype=torch.int32, device=energy.device)
    cb = 16 if block <= 128 else 4
    key32 = (t <= 65536) if key32 is None else key32
    if chunk is None:
        chunk = OPTS["sel_chunk"] if (OPTS["sel_chunk"] and t >= OPTS["sel_par_min_t"]) else 0
    nch = -(-(nb - 1) // chunk) if chunk else 1
    bulk, sw, srt, rst = int(OPTS["sel_bulk"]), int(OPTS["sel_warps"]), int(OPTS["sel_sorted"]), int(OPTS["sel_rowst"])
    if nch <= 1:
        _LAUNCH(_select_kernel, (b * hk, 1), e, out, out, out, t, nb, block, max(nb, 1), K=k, KP=kp,
                BS=_pow2(block), CB=cb, KEY32=key32, MODE=0, BULK=bulk, SORTED=srt,
                LOGKP=kp.bit_length() - 1, ROWST=rst, num_warps=sw)
        return out
    kdt = torch.int32 if key32 else torch.int64
    kmin = torch.iinfo(kdt).min
    loc = torch.empty(b * hk, nch, kp, dtype=kdt, device=energy.device)
    _LAUNCH(_select_kernel, (b * hk, nch), e, out, loc, loc, t, nb, block, chunk, K=k, KP=kp,
            BS=_pow2(block), CB=cb, KEY32=key32, MODE=1, BULK=bulk, SORTED=srt, LOGKP=kp.bit_length() - 1,
            ROWST=rst, num_warps=sw)
    # chunk j starts from the top-k of the chunks before it (their own top-k keys suffice)
    before = torch.arange(nch * kp, device=energy.device) // kp < torch.arange(nch, device=energy.device)[:, None]
    cand = torch.where(before, loc.view(b * hk, 1, nch * kp), kmin)
    init = cand.topk(kp, -1).values.contiguous()  # [B*Hk, C, KP], key order; the kernel pads past k
    _LAUNCH(_select_kernel, (b * hk, nch), e, out, init, init, t, nb, block, chunk, K=k, KP=kp,
            BS=_pow2(block), CB=cb, KEY32=key32, MODE=2, BULK=bulk, SORTED=srt, LOGKP=kp.bit_length() - 1,
            ROWST=rst, num_warps=sw)
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
# Session 6: lm_bwd "trans" = _lm_bwd_t_kernel (slots as the dots' M dimension, one load of a
# block's landmark rows, segments of whole selection blocks); lm_dq (with "trans"): the landmark
# dQ is added by _lm_bwd_t_kernel, the dQ kernel runs without its landmark pass; fwd_split: the
# forward's landmark pass in its own kernel (_fwd_lm_kernel) after the window kernel (1), with the
# selection on a high-priority side stream beside the window kernel, launched before it (2) or
# after it (3), where T >= split_min_t; lm_skip: _lm_bwd_t_kernel skips the flush code at blocks
# where no slot's token changes (a cross-warp test per block); lm_dq_early: it loads a tile's dQ
# rows with Q and dO instead of after the dots; dkdv_phased: the dK/dV kernel walks its query tiles
# in branch-free phases (diagonal, unmasked, masked) from a per-16-row smallest window that the
# forward kernel stores.
# Session 6b: sel_bulk (>0): the selection merges a block whose candidates above the set's minimum
# number at least sel_bulk in one rank-matching step (_bulk_merge: the same slots as the one-by-one
# insertions, which a block with fewer candidates still uses); sel_warps: the selection's warps;
# sel_sorted: the merge by three sorts (int32 keys and as many candidates per block as slots), else
# by rank matrices ([KP, KP] and [BS, BS] comparisons); sel_rowst: the sets stored one [KP] row at a
# time (each row once) instead of a masked [CB, KP] tile per inserting block.
# Session 6b (H100, benchmarks/RESULTS.md "Session 6 round 2: DSALT"): fwd_split 3 (the selection on a
# high-priority side stream, launched after the window forward, and the forward's landmark pass as its
# own kernel) where T >= 32768: 32K fwd+bwd 3.19 ms vs 3.24-3.28 for fwd_split 0 in the same run
# (session 6: -0.08 ms); at 16K it was slower in both sessions' runs (+0.07 / +0.23 ms), hence the
# threshold. sel_bulk and sel_rowst measured slower or equal: off.
# Defaults from session 6's two H100 A/B calls (benchmarks/RESULTS.md, "Session 6: DSALT"): "trans"
# + lm_dq (32K fwd+bwd 3.20-3.25 ms vs 3.38-3.45 for the session-5 defaults, same runs); lm_skip,
# fwd_split, lm_dq_early and dkdv_phased measured no better (kept as tested options, off).
OPTS = {"lc_fwd": 32, "lc_dq": 32, "delta": (64, 4), "lm_bwd": "trans", "fuse_delta": True,
        "lm_pre_fwd": 0, "lm_pre_dq": 0, "lm_pre_bwd": 0, "sel_chunk": 0, "sel_par_min_t": 8192,
        "lm_dq": True, "fwd_split": 3, "split_min_t": 32768, "lm_skip": False, "lm_dq_early": False,
        "dkdv_phased": False, "sel_bulk": 0, "sel_warps": 1, "sel_sorted": 1,
        "sel_rowst": 0}

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
            _TUNED[tag] = triton.autotune(cfgs, key=key + ["PHASED"])(_dkdv_kernel)
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
               meta.get("FUSE_DELTA"), meta.get("PHASED"))
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
    runs there beside the window forward kernel (OPTS["fwd_split"] 2 / 3); high priority, so its
    programs take the first free slots while the window kernel's programs fill the GPU."""
    if device not in _SIDE:
        _SIDE[device] = (torch.cuda.Stream(device, priority=-8), torch.cuda.Event(), torch.cuda.Event())
    return _SIDE[device]


def _side_ok(q, t: int) -> bool:
    """Whether the selection may run on the side stream: CUDA, not during CUDA-graph capture, the
    serial selection kernel (the parallel selection has torch steps between its launches)."""
    return (q.is_cuda and _FAST_LM["on"] and not (OPTS["sel_chunk"] and t >= OPTS["sel_par_min_t"])
            and not torch.cuda.is_current_stream_capturing())


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
        split = OPTS["fwd_split"] if has_lm and t >= OPTS["split_min_t"] else 0
        side = split >= 2 and _side_ok(q, t)
        if has_lm and side:
            # the selection on a side stream: 2 launched before the window kernel, 3 after it (the
            # host's time between the two launches then overlaps too); lpos is allocated on the
            # current stream, which waits for the side stream before the landmark pass reads it
            kp, nb, stable = max(16, _pow2(n_lm)), -(-t // block), True
            cur = torch.cuda.current_stream(q.device)
            sst, ev_fork, ev_join = _side_stream(q.device)
            ev_fork.record(cur)
            lpos = torch.empty(b, hk, nb, kp, dtype=torch.int32, device=q.device)
            gt = energy.detach()

            def select_aside():
                sst.wait_event(ev_fork)
                with torch.cuda.stream(sst):
                    _select_stable(gt, n_lm, kp, block, chunk=0, out=lpos)
                ev_join.record(sst)

            if split == 2:
                select_aside()
        elif has_lm:
            lpos, stable = landmark_slots(energy.detach(), n_lm, block)
            kp, nb = lpos.shape[-1], lpos.shape[2]
            gt = energy.detach()  # the kernels compute the gate logsigmoid(e)
        else:
            kp, nb, stable = 16, 1, False
            lpos = torch.full((1, 1, 1, kp), -1, dtype=torch.int32, device=q.device)
            gt = win  # unused
        o = torch.empty_like(q)
        lse = torch.empty(b, h, t, device=q.device, dtype=torch.float32)
        fwd_args = (q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
                    o.stride(0), o.stride(1), o.stride(2))
        phased = bool(OPTS["dkdv_phased"])
        wmin = torch.empty(b * h, -(-t // 16), device=q.device, dtype=torch.float32) if phased else lse
        _launch("fwd", _fwd_kernel, t, b * h, bm, bn, warps, block,
                q, k, v, win, gt, win if split else lpos, o, lse, wmin, *fwd_args,
                h, g, t, nb, n_max, float(edge), 1.0 / float(edge), scale * LOG2E, block,
                D=d, KP=kp, HAS_LM=has_lm and not split, PREC=_prec(q), LC=min(OPTS["lc_fwd"], kp),
                PRE=OPTS["lm_pre_fwd"], STORE_WMIN=int(phased))
        if split:
            if side:
                if split == 3:
                    select_aside()
                cur.wait_event(ev_join)
            fm, flc, fw, fst, fx = _fwd_lm_config(q, block, bm, kp)
            _LAUNCH(_fwd_lm_kernel, (triton.cdiv(t, fm), b * h), q, k, v, win, gt, lpos, o, lse, *fwd_args,
                    h, g, t, nb, n_max, 1.0 / float(edge), scale * LOG2E, block,
                    D=d, BLOCK_M=fm, KP=kp, PREC=_prec(q), LC=flc, num_warps=fw, num_stages=fst, **fx)
        ctx.save_for_backward(q, k, v, win, energy, gt, lpos, o, lse, wmin)
        ctx.phased = phased
        ctx.meta = meta
        ctx.stable = stable
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, win, energy, gt, lpos, o, lse, wmin = ctx.saved_tensors
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
        atomic = has_lm and OPTS["lm_bwd"] in ("atomic", "trans")
        trans = has_lm and OPTS["lm_bwd"] == "trans"
        lm_dq = trans and OPTS["lm_dq"]

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
                    D=d, KP=kp, HAS_LM=has_lm and not lm_dq, PREC=_prec(q), LC=min(OPTS["lc_dq"], kp),
                    PARTIALS=int(partials),
                    FUSE_DELTA=int(fuse), PRE=OPTS["lm_pre_dq"])
            return parts

        parts = dq_pass(has_lm and not atomic)
        dk = torch.empty_like(k)
        dv = torch.empty_like(v)
        _launch("dkdv", _dkdv_kernel, t, b * hk, bm, bn, warps, block,
                q, k, v, win, do, lse, delta, dk, dv, wmin, *strides, h, g, t, *fargs, D=d, PREC=_prec(q),
                PHASED=int(ctx.phased))
        denergy = None
        if has_lm:
            dgt = torch.zeros(b, hk, t, device=q.device, dtype=torch.float32)
            if trans:
                lm, lc, seg, lw, lst, lx = _lm_bwd_t_config(q, block, bm, kp, lm_dq)
                try:
                    _LAUNCH(_lm_bwd_t_kernel, (triton.cdiv(nb, seg), kp // lc, b * hk),
                            q, k, v, win, gt, lpos, do, lse, delta, dk, dv, dgt, dq, *strides,
                            h, g, t, nb, n_max, 1.0 / float(edge), scale * LOG2E, scale, block,
                            D=d, BLOCK_M=lm, KP=kp, LC=lc, SEG=seg, PREC=_prec(q), ADD_DQ=int(lm_dq),
                            FLAT=int(lm == block and g == 1), SKIP=int(OPTS["lm_skip"]),
                            DQ_EARLY=int(OPTS["lm_dq_early"]), num_warps=lw,
                            num_stages=lst, **lx)
                except Exception as e:  # pragma: no cover - compiler trouble: the session-5 path, from scratch
                    import warnings

                    warnings.warn(f"dsalt: transposed landmark backward kernel unavailable ({type(e).__name__}: "
                                  f"{e}); using _lm_bwd_kernel")
                    OPTS["lm_bwd"], OPTS["lm_dq"] = "atomic", False
                    return _DSALTFn.backward(ctx, do)
            elif atomic:
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
                            q, k, v, win, do, lse, delta, dk, dv, wmin, *strides, h, g, t, *fargs, D=d,
                            PREC=_prec(q), PHASED=int(ctx.phased))
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
