"""Checks every mixer and cache must pass; used by the test suite, reusable by new families."""

from __future__ import annotations

import torch


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref|| in float64."""
    out, ref = out.double(), ref.double()
    return ((out - ref).norm() / ref.norm().clamp_min(1e-30)).item()


def decode_vs_forward(model, input_ids: torch.Tensor, prompt_len: int, chunk: int = 1, **cache_kwargs) -> float:
    """Relative error between the full forward and prefill(prompt_len) + decode in chunks."""
    with torch.no_grad():
        full = model(input_ids)
        cache = model.new_cache(input_ids.shape[0], input_ids.shape[1], **cache_kwargs)
        parts = [model(input_ids[:, :prompt_len], cache=cache)]
        for s in range(prompt_len, input_ids.shape[1], chunk):
            parts.append(model(input_ids[:, s:s + chunk], cache=cache))
    assert cache.seen == input_ids.shape[1]
    return rel_err(torch.cat(parts, dim=1), full)


def mixer_decode_vs_forward(mixer, x: torch.Tensor, prompt_len: int, chunk: int = 1, **cache_kwargs) -> float:
    """Same check for a single mixer on hidden states x [B, T, dim]."""
    with torch.no_grad():
        full = mixer(x)
        cache = mixer.new_cache(x.shape[0], x.shape[1], device=x.device, dtype=x.dtype, **cache_kwargs)
        parts = [mixer(x[:, :prompt_len], cache)]
        for s in range(prompt_len, x.shape[1], chunk):
            parts.append(mixer(x[:, s:s + chunk], cache))
    return rel_err(torch.cat(parts, dim=1), full)
