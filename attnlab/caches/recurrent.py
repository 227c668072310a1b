"""Constant-size decode state for linear-attention mixers (gdn, sdla).

``RecurrentCache`` holds the recurrent matrix state [B, H, K, V] (float32, whatever the model
dtype: it integrates every token ever seen) and the short-convolution state [B, C, W-1] (the last
W-1 projected inputs, model dtype). Neither grows with the number of tokens, so ``nbytes()`` is
constant; ``max_len`` is None (unbounded) or a bound the caller asked for.
"""

from __future__ import annotations

import torch

from .base import LayerCache


class RecurrentCache(LayerCache):
    def __init__(self, batch_size: int, max_len: int | None, n_heads: int, k_dim: int, v_dim: int,
                 conv_channels: int = 0, conv_width: int = 0, device=None, dtype=None,
                 state_dtype=torch.float32):
        super().__init__(batch_size, max_len)
        self.state = torch.zeros(batch_size, n_heads, k_dim, v_dim, device=device, dtype=state_dtype)
        self.conv = (torch.zeros(batch_size, conv_channels, conv_width - 1, device=device, dtype=dtype)
                     if conv_width > 1 else None)

    def tensors(self):
        return [t for t in (self.state, self.conv) if t is not None]

    def reset(self) -> None:
        super().reset()
        self.state.zero_()
        if self.conv is not None:
            self.conv.zero_()

    def advance(self, n: int, state: torch.Tensor) -> None:
        """Store the state after n more tokens (in place: the buffers are never re-allocated)."""
        self.state.copy_(state)
        self.seen += n
