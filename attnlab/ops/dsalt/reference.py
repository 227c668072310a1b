"""DSALT semantics in plain PyTorch: the soft window edge, causal landmark selection, and the
dense masked reference every other path (FlexAttention, Triton, decode) must reproduce.

Query i (position p_i, head h) attends to

* its **window**: keys j with 0 <= d = p_i - p_j < n_max, each with the log-weight
  ``log r(d, w_i)``, ``r = clamp((w_i - d - 0.5) / edge + 0.5, max=1)`` (keys with r <= 0 are
  out). Full weight well inside the window, a linear ramp ``edge`` tokens wide centred on
  ``w_i - 0.5``, nothing beyond; edge -> 0 gives the hard window of w_i keys. The bias is
  differentiable in w_i (d/dw log r = 1 / (edge r) on the ramp), so the window predictor learns.
* its block's **landmarks**: block b = p_i // block; its landmark set is the top-k tokens by
  rank key among positions < b * block (causal: it depends on no token of the block or later).
  A landmark contributes only when it is outside the query's soft window (r <= 0), so no key is
  counted twice; its log-weight is ``logsigmoid(e_j)`` (a soft gate, which is how gradient
  reaches the energy and its mixing weight alpha; the top-k choice itself is discrete).

All of it is one softmax over the union. The rank key is a total order on tokens: the energy
rounded to float16 (so that batched and one-token projections agree on the order), ties broken
by the earlier position. Because it is a per-token quantity, decode keeps the current landmark
set with its keys and merges each finished block into it, and gets the same sets as training.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

INVALID_KEY = torch.iinfo(torch.int64).min
_POS_BITS = 32
_POS_MASK = (1 << _POS_BITS) - 1


# -- window -----------------------------------------------------------------------------------

def window_ramp(d: torch.Tensor, w: torch.Tensor, n_max: int, edge: float) -> torch.Tensor:
    """r(d, w) before the log (float32); keys count where 0 <= d < n_max and r > 0."""
    dt = torch.promote_types(w.dtype, torch.float32)
    r = (w.to(dt) - d.to(dt) - 0.5) * (1.0 / edge) + 0.5  # as the kernels: times 1/edge
    r = torch.where(r < 1.0, r, torch.ones_like(r))  # at r == 1 exactly: zero gradient (as the kernels)
    ok = (d >= 0) & (d < n_max) & (r > 0)
    return torch.where(ok, r, torch.zeros_like(r))


def window_log_weight(d: torch.Tensor, w: torch.Tensor, n_max: int, edge: float) -> torch.Tensor:
    """log r(d, w) where the key is in the window, -inf elsewhere; differentiable in w."""
    r = window_ramp(d, w, n_max, edge)
    ok = r > 0
    return torch.where(ok, torch.log(torch.where(ok, r, torch.ones_like(r))), torch.full_like(r, -math.inf))


def window_reach(w_max: float, n_max: int, edge: float) -> int:
    """Number of keys (distances 0..reach-1) that can have r > 0 for windows <= w_max."""
    return int(min(n_max, math.floor(w_max - 0.5 + edge / 2) + 1))


# -- landmark rank keys and causal selection --------------------------------------------------

def rank_keys(energy: torch.Tensor, pos: torch.Tensor | int = 0) -> torch.Tensor:
    """int64 keys, larger = better: float16-rounded energy, then earlier position.

    energy [..., T] (any float dtype); pos: positions of the T tokens (tensor broadcastable to
    energy, or the first position as an int)."""
    e = energy.detach().float().clamp(-6e4, 6e4).to(torch.float16).float() + 0.0  # -0 -> +0
    bits = e.view(torch.int32)
    mono = torch.where(bits >= 0, bits, bits ^ 0x7FFFFFFF).to(torch.int64)
    if isinstance(pos, int):
        pos = torch.arange(pos, pos + e.shape[-1], device=e.device)
    return mono * (1 << _POS_BITS) + (_POS_MASK - pos.to(torch.int64))


def key_positions(keys: torch.Tensor) -> torch.Tensor:
    """Positions encoded in rank keys (meaningless where key == INVALID_KEY)."""
    return _POS_MASK - (keys & _POS_MASK)


def _topk_keys(keys: torch.Tensor, k: int, sorted: bool = True) -> torch.Tensor:
    """The k largest keys along the last dim (descending if sorted), padded with INVALID_KEY."""
    n = keys.shape[-1]
    if n < k:
        pad = keys.new_full(keys.shape[:-1] + (k - n,), INVALID_KEY)
        keys = torch.cat([keys, pad], -1)
    if n == k and not sorted:
        return keys
    return keys.topk(k, dim=-1, sorted=sorted).values


def select_landmarks(energy: torch.Tensor, n_landmarks: int, block: int) -> torch.Tensor:
    """Per block of queries, the rank keys of its landmark set [..., NB, k] (descending).

    Block b's set is the top-k among tokens at positions < b * block (INVALID_KEY pads sets of
    fewer than k). Computed by a parallel prefix scan of top-k merges (log2(NB) steps)."""
    t = energy.shape[-1]
    nb = -(-t // block)
    keys = rank_keys(energy)
    if nb * block != t:
        keys = torch.cat([keys, keys.new_full(keys.shape[:-1] + (nb * block - t,), INVALID_KEY)], -1)
    k = n_landmarks
    local = _topk_keys(keys.view(*keys.shape[:-1], nb, block), min(k, block), sorted=False)
    local = _topk_keys(local, k, sorted=False)  # pad to k
    # inclusive scan over blocks: P[b] = top-k of blocks 0..b (ranges merged are disjoint)
    p, s = local, 1
    while s < nb:
        merged = _topk_keys(torch.cat([p[..., s:, :], p[..., :-s, :]], -1), k, sorted=False)
        p = torch.cat([p[..., :s, :], merged], -2)
        s *= 2
    # exclusive: block b sees blocks < b
    empty = p.new_full(p.shape[:-2] + (1, k), INVALID_KEY)
    return torch.cat([empty, p[..., :-1, :]], -2).sort(-1, descending=True).values


def landmark_thresholds(lm_keys: torch.Tensor) -> torch.Tensor:
    """The smallest key of each set [..., NB]: token j is in block b's set iff p_j < b*block and
    key_j >= threshold (INVALID_KEY when the set is not full: every earlier token is in)."""
    return lm_keys[..., -1]


# -- the dense reference ----------------------------------------------------------------------

def check_args(q, k, v, win, energy, n_max, edge, n_landmarks, block):
    from ...errors import InputError

    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise InputError("dsalt: q, k, v must be [B, H, T, D]")
    b, h, t, _ = q.shape
    if k.shape[:3] != v.shape[:3] or k.shape[0] != b or k.shape[2] != t or h % k.shape[1]:
        raise InputError(f"dsalt: k/v must be [B, Hk, T, D] with Hk | H; got q {tuple(q.shape)}, "
                         f"k {tuple(k.shape)}, v {tuple(v.shape)}")
    if win.shape != (b, h, t):
        raise InputError(f"dsalt: win must be [B, H, T] = {(b, h, t)}; got {tuple(win.shape)}")
    if energy.shape != (b, k.shape[1], t):
        raise InputError(f"dsalt: energy must be [B, Hk, T] = {(b, k.shape[1], t)}; got {tuple(energy.shape)}")
    if not (isinstance(n_max, int) and n_max >= 1):
        raise InputError(f"dsalt: n_max must be a positive int; got {n_max!r}")
    if not edge > 0:
        raise InputError(f"dsalt: edge must be > 0; got {edge!r}")
    if not (isinstance(n_landmarks, int) and n_landmarks >= 0):
        raise InputError(f"dsalt: n_landmarks must be an int >= 0; got {n_landmarks!r}")
    if not (isinstance(block, int) and block >= 1):
        raise InputError(f"dsalt: block must be a positive int; got {block!r}")


def dsalt_reference(q, k, v, win, energy, *, n_max: int, edge: float, n_landmarks: int,
                    block: int, scale: float | None = None) -> torch.Tensor:
    """Dense masked DSALT over a fresh sequence (O(T^2) memory: small T, tests).

    q [B, H, T, D]; k, v [B, Hk, T, D] (Hk | H); win [B, H, T] window sizes; energy [B, Hk, T]
    landmark energies. Returns [B, H, T, Dv] in q's dtype; differentiable in q, k, v, win, energy."""
    check_args(q, k, v, win, energy, n_max, edge, n_landmarks, block)
    b, h, t, dim = q.shape
    hk = k.shape[1]
    g = h // hk
    scale = dim**-0.5 if scale is None else scale
    pos = torch.arange(t, device=q.device)
    d = pos[:, None] - pos[None, :]  # [T, T]
    bias = window_log_weight(d, win[..., None], n_max, edge)  # [B, H, T, T]
    if n_landmarks > 0:
        thr = landmark_thresholds(select_landmarks(energy, n_landmarks, block))  # [B, Hk, NB]
        keys = rank_keys(energy)  # [B, Hk, T]
        qb = pos // block
        member = (keys[:, :, None, :] >= thr[:, :, qb, None]) & (pos[None, :] < (qb * block)[:, None])
        gate = F.logsigmoid(energy.to(torch.promote_types(energy.dtype, torch.float32)))[:, :, None, :].expand(b, hk, t, t)
        lm = torch.where(member, gate, torch.full_like(gate, -math.inf))
        lm = lm.repeat_interleave(g, dim=1)
        bias = torch.where(bias > -math.inf, bias, lm)
    ct = torch.promote_types(q.dtype, torch.float32)
    kk = k.repeat_interleave(g, dim=1).to(ct)
    vv = v.repeat_interleave(g, dim=1).to(ct)
    s = (q.to(ct) @ kk.transpose(-1, -2)) * scale + bias.to(ct)
    return (s.softmax(-1) @ vv).to(q.dtype)
