"""Rotary position embeddings with YaRN context extension.

YaRN (Peng et al., 2023, arXiv 2309.00071) scales RoPE frequencies "by parts": for dimension
pair i with frequency theta_i and wavelength lambda_i = 2*pi / theta_i, the number of rotations
over the original context is r_i = L_orig / lambda_i. With ramp
    gamma(r) = 0 if r < beta_slow, 1 if r > beta_fast, else (r - beta_slow) / (beta_fast - beta_slow)
the new frequency is theta'_i = (1 - gamma) * theta_i / s + gamma * theta_i: high-frequency pairs
(many rotations) are kept, low-frequency pairs are interpolated by the factor s. Attention logits
are multiplied by the temperature sqrt(1/t)^2 with sqrt(1/t) = 0.1 * ln(s) + 1; attnlab applies it
through the softmax scale (``RotaryEmbedding.attention_scale``), which for fully rotary heads is
what scaling cos/sin by sqrt(1/t) does, and which also covers MLA's non-rotary dimensions.
Note: Hugging Face rounds the ramp's ends to whole dimension indices; this follows the paper's
continuous ramp in r.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .ops.rope import apply_rope  # noqa: F401  (re-exported: mixers import it from here)


def rope_inv_freq(dim: int, theta: float) -> torch.Tensor:
    return 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))


def yarn_ramp(r: torch.Tensor, beta_slow: float, beta_fast: float) -> torch.Tensor:
    return ((r - beta_slow) / (beta_fast - beta_slow)).clamp(0.0, 1.0)


def yarn_inv_freq(
    dim: int, theta: float, factor: float, original_max_len: int, beta_fast: float, beta_slow: float
) -> torch.Tensor:
    inv_freq = rope_inv_freq(dim, theta)
    if factor == 1.0:
        return inv_freq
    rotations = original_max_len * inv_freq / (2 * math.pi)  # r_i = L / lambda_i
    gamma = yarn_ramp(rotations, beta_slow, beta_fast)
    return (1 - gamma) * inv_freq / factor + gamma * inv_freq


def yarn_temperature(factor: float) -> float:
    """sqrt(1/t) of the YaRN paper: multiplies q and k, so logits scale by its square."""
    return 1.0 if factor <= 1.0 else 0.1 * math.log(factor) + 1.0


class RotaryEmbedding(nn.Module):
    """cos/sin for positions [start, start+T), in float32. Rotate-half (GPT-NeoX/Llama) layout."""

    def __init__(
        self,
        dim: int,
        theta: float = 10000.0,
        yarn_factor: float = 1.0,
        original_max_len: int = 2048,
        beta_fast: float = 32.0,
        beta_slow: float = 1.0,
    ):
        super().__init__()
        self.dim = dim
        inv = yarn_inv_freq(dim, theta, yarn_factor, original_max_len, beta_fast, beta_slow)
        self.register_buffer("inv_freq", inv.float(), persistent=False)
        self.attention_scale = yarn_temperature(yarn_factor) ** 2

    @classmethod
    def from_config(cls, cfg, dim: int) -> "RotaryEmbedding":
        return cls(
            dim,
            cfg.rope_theta,
            cfg.yarn_factor,
            cfg.yarn_original_max_len or cfg.max_seq_len,
            cfg.yarn_beta_fast,
            cfg.yarn_beta_slow,
        )

    def _compute(self, start: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        pos = torch.arange(start, start + length, device=self.inv_freq.device, dtype=torch.float32)
        angles = pos[:, None] * self.inv_freq[None, :].float()
        return angles.cos(), angles.sin()

    def cos_sin(self, start: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """float32 [length, dim/2] each. Eager calls slice a cached table (no launches per step;
        the table grows by doubling and follows inv_freq's device); under torch.compile the
        formula is traced instead, so inductor can fuse it."""
        if torch.compiler.is_compiling():
            return self._compute(start, length)
        end = start + length
        table = self.__dict__.get("_table")
        if table is None or table[0] is not self.inv_freq or table[1].shape[0] < end:
            n = max(end, 2 * table[1].shape[0] if table is not None and table[0] is self.inv_freq else 0, 64)
            # normal tensors even when first called under inference_mode (generation), so that
            # training can save them for backward later
            with torch.inference_mode(False), torch.no_grad():
                cos, sin = self._compute(0, n)
            table = self.__dict__["_table"] = (self.inv_freq, cos, sin)
        return table[1][start:end], table[2][start:end]
