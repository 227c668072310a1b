"""SDLA: selective differential linear attention, the ``sdla`` mixer.

Two gated linear-attention streams share the values:

    y = LA(q1, k1, v) - lambda_h * LA(q2, k2, v),    LA = the gated delta rule (``gdn``'s op)

with per-head lambda_h = s * (exp(lq1_h . lk1_h) - exp(lq2_h . lk2_h) + lambda_init), the
differential-attention reparameterisation (Ye et al., 2024) times a learnable layer scale s, then
a per-head RMSNorm scaled by (1 - lambda_init), an optional SiLU output gate, and the output
projection. Each stream has its own decay and write-strength gates. Q, K and V optionally go
through MLA-style low-rank latents (q_lora_rank, kv_lora_rank).

Both streams run in ONE call of ``gated_delta_rule`` with 2H heads (stream 1 heads, then stream
2 heads; v repeated), so there is no second recurrence; the decode state is a
``RecurrentCache`` of 2H heads: constant size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..caches.recurrent import RecurrentCache
from ..errors import ConfigError
from ..modules import RMSNorm
from .base import Mixer
from .gdn import DecayGates, QKVProjections, ShortConv, head_dims, l2norm, run_gated_delta, validate_linear_options
from .registry import register_mixer


@dataclass
class SDLAOptions:
    n_heads: int | None = None      # None: the model's n_heads (per stream)
    head_dim: int | None = None     # q/k head dim; None: dim // n_heads
    v_head_dim: int | None = None   # None: head_dim
    conv_size: int = 4              # short causal depthwise conv width on q/k/v; 0 = off
    q_lora_rank: int = 0            # latent bottleneck for both streams' queries
    kv_lora_rank: int = 0           # one latent shared by both streams' keys and the values
    lambda_init: float | None = None  # None: 0.8 - 0.6 exp(-0.3 * layer_idx) (Diff Transformer)
    layer_scale_init: float = 1.0   # learnable scale s on lambda_h
    output_gate: bool = True
    impl: str = "auto"              # auto | chunked | naive | fla | triton
    chunk_size: int = 64


def default_lambda_init(layer_idx: int) -> float:
    return 0.8 - 0.6 * math.exp(-0.3 * layer_idx)


@register_mixer("sdla")
class SelectiveDifferentialLinearAttention(Mixer):
    """SDLA: differential (stream1 - lambda * stream2) gated linear attention, O(1) decode state."""

    cache_kinds = ("recurrent",)
    Options = SDLAOptions

    @classmethod
    def validate(cls, cfg, opts) -> None:
        where = "mixer_options.sdla"
        validate_linear_options(cfg, opts, where)
        li = opts.lambda_init
        if li is not None and (not isinstance(li, (int, float)) or isinstance(li, bool) or not 0 <= li < 1):
            raise ConfigError(f"{where}.lambda_init", f"must be in [0, 1) or None; got {li!r}")
        if not isinstance(opts.layer_scale_init, (int, float)) or isinstance(opts.layer_scale_init, bool):
            raise ConfigError(f"{where}.layer_scale_init", f"must be a number; got {opts.layer_scale_init!r}")

    def __init__(self, cfg, opts, layer_idx):
        super().__init__(cfg, opts, layer_idx)
        self.n_heads, self.dk, self.dv = head_dims(cfg, opts)
        h, dk, dv = self.n_heads, self.dk, self.dv
        self.proj = QKVProjections(cfg.dim, 2 * h * dk, 2 * h * dk, h * dv,
                                   opts.q_lora_rank, opts.kv_lora_rank, cfg.norm_eps)
        self.conv_channels = 4 * h * dk + h * dv
        self.conv = ShortConv(self.conv_channels, opts.conv_size) if opts.conv_size else None
        self.gates = DecayGates(cfg.dim, 2 * h)
        self.lambda_init = default_lambda_init(layer_idx) if opts.lambda_init is None else float(opts.lambda_init)
        self.lambda_q1 = nn.Parameter(torch.zeros(h, dk))
        self.lambda_k1 = nn.Parameter(torch.zeros(h, dk))
        self.lambda_q2 = nn.Parameter(torch.zeros(h, dk))
        self.lambda_k2 = nn.Parameter(torch.zeros(h, dk))
        self.layer_scale = nn.Parameter(torch.tensor(float(opts.layer_scale_init)))
        self.o_norm = RMSNorm(dv, cfg.norm_eps)
        self.g_proj = nn.Linear(cfg.dim, h * dv, bias=False) if opts.output_gate else None
        self.out_proj = nn.Linear(h * dv, cfg.dim, bias=False)
        self.scale = dk ** -0.5
        self.init_weights()

    def init_weights(self) -> None:
        self.gates.reset_parameters()
        if self.conv is not None:
            self.conv.reset_parameters()
        with torch.no_grad():
            for p in (self.lambda_q1, self.lambda_k1, self.lambda_q2, self.lambda_k2):
                p.normal_(0.0, 0.1)
            self.layer_scale.fill_(float(self.opts.layer_scale_init))

    def lambdas(self) -> torch.Tensor:
        """lambda_h [H] (float32)."""
        l1 = torch.exp((self.lambda_q1.float() * self.lambda_k1.float()).sum(-1))
        l2 = torch.exp((self.lambda_q2.float() * self.lambda_k2.float()).sum(-1))
        return self.layer_scale.float() * (l1 - l2 + self.lambda_init)

    def streams(self, x, cache=None):
        """q, k [B, 2H, T, dk] (stream 1 heads then stream 2 heads), v [B, 2H, T, dv] (shared
        values, repeated), g, beta [B, 2H, T]."""
        b, t, _ = x.shape
        q, k, v = self.proj(x)
        if self.conv is not None:
            y = self.conv(torch.cat([q, k, v], dim=-1), None if cache is None else cache.conv)
            q, k, v = y.split([q.shape[-1], k.shape[-1], v.shape[-1]], dim=-1)
        else:
            q, k, v = F.silu(q), F.silu(k), F.silu(v)
        h = self.n_heads
        q = l2norm(q.reshape(b, t, 2 * h, self.dk).transpose(1, 2))
        k = l2norm(k.reshape(b, t, 2 * h, self.dk).transpose(1, 2))
        v = v.reshape(b, t, h, self.dv).transpose(1, 2).repeat(1, 2, 1, 1)
        g, beta = self.gates(x)
        return q, k, v, g, beta

    def combine(self, o, x):
        """o [B, 2H, T, dv] -> stream1 - lambda * stream2 -> norm, gate, projection."""
        h = self.n_heads
        b, _, t, _ = o.shape
        lam = self.lambdas().to(o.dtype)
        y = o[:, :h] - lam[None, :, None, None] * o[:, h:]
        y = self.o_norm(y.transpose(1, 2)) * (1.0 - self.lambda_init)
        if self.g_proj is not None:
            y = y * F.silu(self.g_proj(x)).view(b, t, h, self.dv)
        return self.out_proj(y.reshape(b, t, -1))

    def forward(self, x, cache=None):
        if cache is not None:
            cache.check_room(x.shape[1])
        q, k, v, g, beta = self.streams(x, cache)
        o = run_gated_delta(q, k, v, g, beta, self.scale, cache, self.opts.impl, self.opts.chunk_size)
        return self.combine(o, x)

    def new_cache(self, batch_size, max_len, device=None, dtype=None, kind=None, **kwargs):
        if kind not in (None, "recurrent"):
            raise ConfigError("cache kind", f"sdla supports 'recurrent'; got {kind!r}")
        return RecurrentCache(batch_size, max_len, 2 * self.n_heads, self.dk, self.dv,
                              self.conv_channels if self.conv is not None else 0,
                              self.opts.conv_size, device=device, dtype=dtype)
