"""The token-mixer protocol.

A mixer is an ``nn.Module`` registered by name, built from the model config plus its own
options dataclass (``Options``, filled from ``ModelConfig.mixer_options[name]``). It

- runs a whole sequence for training: ``forward(x)`` with x [B, T, dim] -> [B, T, dim];
- creates its layer cache: ``new_cache(batch_size, max_len, device, dtype, kind)``;
- runs prefill and decode against that cache: ``forward(x, cache)`` appends the T new tokens.
  Positions come from ``cache.seen``, never from the caller.

Packed training sequences: a mixer with ``supports_segments = True`` takes
``forward(x, segments=...)`` (document ids [B, T]) and lets no token attend across documents;
the model refuses ``segments`` for a pattern with any mixer that does not.

``validate(cfg, opts)`` raises ``ConfigError`` for bad options before any tensor exists.
A mixer may set ``self.aux_loss`` (a scalar tensor) in ``forward``; the model sums them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from ..caches.base import LayerCache


class Mixer(nn.Module):
    name: ClassVar[str] = ""
    # Cache kinds this mixer can create; the first is its default.
    cache_kinds: ClassVar[tuple[str, ...]] = ()
    # forward(x, cache=None, segments=None) keeps packed documents apart (training only).
    supports_segments: ClassVar[bool] = False
    # The input reaches only linear layers (projections): under autocast the block's pre-norm may
    # hand it over in the autocast dtype (the projection would cast it anyway; saves launches).
    lowp_input: ClassVar[bool] = False

    @dataclass
    class Options:
        pass

    def __init__(self, cfg, opts, layer_idx: int):
        super().__init__()
        self.cfg = cfg
        self.opts = opts
        self.layer_idx = layer_idx
        self.aux_loss: torch.Tensor | None = None

    @classmethod
    def validate(cls, cfg, opts) -> None:
        """Raise ConfigError naming the field if cfg/opts cannot build this mixer."""

    def forward(self, x: torch.Tensor, cache: LayerCache | None = None) -> torch.Tensor:
        raise NotImplementedError

    def new_cache(self, batch_size: int, max_len: int, device=None, dtype=None,
                  kind: str | None = None, **kwargs) -> LayerCache:
        raise NotImplementedError

    def init_weights(self) -> None:
        """Initialise non-Linear parameters (gates, lambdas...). Linear/Embedding are done by the model."""
