"""DSALT through ``torch.nn.attention.flex_attention``.

The score modification adds the soft-window log-weight (captured per-query window sizes, so
flex's autograd returns their gradient) or, outside the window, the landmark gate (captured
per-token gates, gradient to the energies). Landmark membership is a comparison, not a table:
the sets are prefix top-k's, so a token belongs to one contiguous range of query blocks
[first_j, last_j] (once evicted it never returns), and the mods compare the query's block with
that range (two int32 loads per element, O(T) captured state). The block mask is built from the
same predicate (windows + landmarks), so blocks holding a scattered landmark become partial.

On CPU, PyTorch runs flex_attention eagerly (an unfused reference, forward only: torch 2.13 CPU
raises NotImplementedError for the backward); on CUDA the compiled kernel is used.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

from .reference import INVALID_KEY, check_args, key_positions, select_landmarks


@functools.lru_cache(maxsize=1)
def _compiled_flex():
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


def landmark_intervals(energy, n_landmarks: int, block: int):
    """Per token, the first and last query block whose landmark set holds it ([B, Hk, T] int32;
    first > last for tokens never selected). Membership is one contiguous range of blocks: the
    sets are prefix top-k's, so a token, once evicted, never returns."""
    sets = select_landmarks(energy, n_landmarks, block)  # [B, Hk, NB, K]
    b, hk, nb, k = sets.shape
    t = energy.shape[-1]
    valid = sets != INVALID_KEY
    pos = torch.where(valid, key_positions(sets), torch.full_like(sets, t))  # invalid -> dump slot t
    blk = torch.arange(nb, device=energy.device).view(1, 1, nb, 1).expand_as(sets)
    first = torch.full((b, hk, t + 1), nb, dtype=torch.int64, device=energy.device)
    last = torch.full((b, hk, t + 1), -1, dtype=torch.int64, device=energy.device)
    first.scatter_reduce_(2, pos.reshape(b, hk, -1), blk.reshape(b, hk, -1), "amin")
    last.scatter_reduce_(2, pos.reshape(b, hk, -1), blk.reshape(b, hk, -1), "amax")
    return first[..., :t].to(torch.int32), last[..., :t].to(torch.int32)


def dsalt_mods(win, energy, *, n_max: int, edge: float, n_landmarks: int, block: int, groups: int):
    """(score_mod, mask_mod) implementing DSALT for flex_attention."""
    gate = F.logsigmoid(energy.float())
    if n_landmarks:
        first, last = landmark_intervals(energy, n_landmarks, block)
    win = win.float()
    win_nograd = win.detach()  # flex refuses mask_mod captures that require grad

    def in_window(b, h, q, kv, win=win):
        d = q - kv
        r = (win[b, h, q] - d - 0.5) * (1.0 / edge) + 0.5
        return (d >= 0) & (d < n_max) & (r > 0), r

    def member(b, h, q, kv):
        nb = q // block
        hk = h // groups
        return (first[b, hk, kv] <= nb) & (nb <= last[b, hk, kv])

    def score_mod(score, b, h, q, kv):
        ok, r = in_window(b, h, q, kv)
        r = torch.where(r < 1.0, r, torch.ones_like(r))
        wb = torch.log(torch.where(ok, r, torch.ones_like(r)))
        other = torch.full_like(wb, -math.inf)
        if n_landmarks:
            other = torch.where(member(b, h, q, kv), gate[b, h // groups, kv], other)
        return score + torch.where(ok, wb, other)

    def mask_mod(b, h, q, kv):
        ok, _ = in_window(b, h, q, kv, win_nograd)
        if n_landmarks:
            ok = ok | member(b, h, q, kv)
        return ok

    return score_mod, mask_mod


def dsalt_block_mask(mask_mod, b, h, t, device, block_size=128):
    from torch.nn.attention.flex_attention import create_block_mask

    return create_block_mask(mask_mod, b, h, t, t, device=device, BLOCK_SIZE=block_size)


def dsalt_flex(q, k, v, win, energy, *, n_max: int, edge: float, n_landmarks: int, block: int,
               scale: float | None = None, block_mask=None, compiled: bool | None = None):
    """DSALT attention via flex_attention (same function as ``dsalt_reference``)."""
    from torch.nn.attention.flex_attention import flex_attention

    check_args(q, k, v, win, energy, n_max, edge, n_landmarks, block)
    b, h, t, d = q.shape
    groups = h // k.shape[1]
    score_mod, mask_mod = dsalt_mods(win, energy, n_max=n_max, edge=edge, n_landmarks=n_landmarks,
                                     block=block, groups=groups)
    if block_mask is None:
        block_mask = dsalt_block_mask(mask_mod, b, h, t, q.device, 128 if q.is_cuda else 16)
    compiled = q.is_cuda if compiled is None else compiled
    fn = _compiled_flex() if compiled else flex_attention
    return fn(q, k, v, score_mod=score_mod, block_mask=block_mask, scale=scale, enable_gqa=groups > 1)
