"""DSALT through ``torch.nn.attention.flex_attention``.

The score modification adds the soft-window log-weight (captured per-query window sizes, so
flex's autograd returns their gradient) or, outside the window, the landmark gate (captured
per-token gates, gradient to the energies). Landmark membership is a comparison, not a table:
token j belongs to block b's set iff j < b * block and rank_key_j >= threshold_b (the set's
smallest key), so the captured state is O(T) + O(T / block). The block mask is built from the
same predicate (windows + landmarks), so blocks holding a scattered landmark become partial.

On CPU, PyTorch runs flex_attention eagerly (an unfused reference, forward only: torch 2.13 CPU
raises NotImplementedError for the backward); on CUDA the compiled kernel is used.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

from .reference import check_args, landmark_thresholds, rank_keys, select_landmarks


@functools.lru_cache(maxsize=1)
def _compiled_flex():
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


def dsalt_mods(win, energy, *, n_max: int, edge: float, n_landmarks: int, block: int, groups: int):
    """(score_mod, mask_mod) implementing DSALT for flex_attention."""
    gate = F.logsigmoid(energy.float())
    if n_landmarks:
        keys = rank_keys(energy)
        thr = landmark_thresholds(select_landmarks(energy, n_landmarks, block))
    win = win.float()
    win_nograd = win.detach()  # flex refuses mask_mod captures that require grad

    def in_window(b, h, q, kv, win=win):
        d = q - kv
        r = (win[b, h, q] - d - 0.5) * (1.0 / edge) + 0.5
        return (d >= 0) & (d < n_max) & (r > 0), r

    def member(b, h, q, kv):
        nb = q // block
        hk = h // groups
        return (kv < nb * block) & (keys[b, hk, kv] >= thr[b, hk, nb])

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
