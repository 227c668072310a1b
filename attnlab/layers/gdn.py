"""GatedDeltaNet (Yang, Kautz, Hatamizadeh, arXiv 2412.06464) as the ``gdn`` mixer.

Per head: q, k, v projections (optionally through low-rank latents, or shared Q/K: K = Q), a
short causal depthwise convolution + SiLU, L2-normalised q and k, decay
a_t = exp(g_t) with g_t = -exp(A_log) * softplus(x W_a + dt_bias) (Mamba-2 parameterisation),
write strength beta_t = sigmoid(x W_b), the gated delta rule
S_t = a_t S_{t-1} (I - beta_t k_t k_t^T) + beta_t v_t k_t^T, o_t = S_t q_t / sqrt(d_k),
then a per-head RMSNorm gated by SiLU(x W_g) and the output projection (optionally low-rank).

The recurrence is ``attnlab.ops.gated_delta.gated_delta_rule``: fla kernels when usable, else the
chunked PyTorch path; decoding one token runs the recurrent form on a ``RecurrentCache``
(constant-size state + conv state). The helpers here (projections, short conv, gates, validation)
are shared with ``sdla``.
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
from ..ops.gated_delta import IMPLS, gated_delta_rule
from .base import Mixer
from .registry import register_mixer


# -- shared building blocks --------------------------------------------------------------------
class LowRankLinear(nn.Module):
    """x -> up(RMSNorm(down(x))): a latent bottleneck of width ``rank``."""

    def __init__(self, din: int, dout: int, rank: int, eps: float):
        super().__init__()
        self.down = nn.Linear(din, rank, bias=False)
        self.norm = RMSNorm(rank, eps)
        self.up = nn.Linear(rank, dout, bias=False)

    def forward(self, x):
        return self.up(self.norm(self.down(x)))


class QKVProjections(nn.Module):
    """q (width q_out), k (k_out; 0 = shared with q) and v (v_out) from x, each full rank or
    through a latent: Q through its own (q_rank), K and V through one shared latent (kv_rank)."""

    def __init__(self, dim: int, q_out: int, k_out: int, v_out: int, q_rank: int, kv_rank: int, eps: float):
        super().__init__()
        self.k_out = k_out
        self.q_proj = LowRankLinear(dim, q_out, q_rank, eps) if q_rank else nn.Linear(dim, q_out, bias=False)
        if kv_rank:
            self.kv_down = nn.Linear(dim, kv_rank, bias=False)
            self.kv_norm = RMSNorm(kv_rank, eps)
            if k_out:
                self.k_up = nn.Linear(kv_rank, k_out, bias=False)
            self.v_up = nn.Linear(kv_rank, v_out, bias=False)
        else:
            if k_out:
                self.k_proj = nn.Linear(dim, k_out, bias=False)
            self.v_proj = nn.Linear(dim, v_out, bias=False)

    def forward(self, x):
        q = self.q_proj(x)
        if hasattr(self, "kv_down"):
            c = self.kv_norm(self.kv_down(x))
            k = self.k_up(c) if self.k_out else None
            v = self.v_up(c)
        else:
            k = self.k_proj(x) if self.k_out else None
            v = self.v_proj(x)
        return q, k, v


class ShortConv(nn.Module):
    """Causal depthwise conv of width W over channels, then SiLU. With a state [B, C, W-1] (the
    previous W-1 inputs) it continues a sequence and updates the state in place."""

    def __init__(self, channels: int, width: int):
        super().__init__()
        self.width = width
        self.weight = nn.Parameter(torch.empty(channels, 1, width))
        self.reset_parameters()

    def reset_parameters(self):
        nn.init.uniform_(self.weight, -1 / math.sqrt(self.width), 1 / math.sqrt(self.width))

    def forward(self, x, state=None):
        xt = x.transpose(1, 2)
        if state is None:
            xp = F.pad(xt, (self.width - 1, 0))
        else:
            xp = torch.cat([state, xt], dim=-1)
            state.copy_(xp[..., xp.shape[-1] - (self.width - 1):])
        # W shifted multiply-adds rather than F.conv1d: oneDNN's depthwise conv1d is very slow on
        # small CPU inputs, and cuDNN may use TF32; this form is exact and compiles to one kernel.
        t, w = xt.shape[-1], self.weight[:, 0]
        y = xp[..., :t] * w[:, :1]
        for i in range(1, self.width):
            y = y + xp[..., i:i + t] * w[:, i:i + 1]
        return F.silu(y).transpose(1, 2)


class DecayGates(nn.Module):
    """Per-head log decay g = -exp(A_log) softplus(x W_a + dt_bias) and beta = sigmoid(x W_b),
    both [B, heads, T] float32. A ~ U(1, 16), dt ~ logU(1e-3, 1e-1) at init (Mamba-2 / GDN)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.a_proj = nn.Linear(dim, heads, bias=False)
        self.b_proj = nn.Linear(dim, heads, bias=False)
        self.A_log = nn.Parameter(torch.zeros(heads))
        self.dt_bias = nn.Parameter(torch.zeros(heads))
        self.reset_parameters()

    def reset_parameters(self, dt_min: float = 1e-3, dt_max: float = 1e-1):
        with torch.no_grad():
            self.A_log.copy_(torch.empty_like(self.A_log).uniform_(1, 16).log())
            dt = torch.exp(torch.rand_like(self.dt_bias) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
            self.dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus

    def forward(self, x):
        g = -self.A_log.float().exp() * F.softplus(self.a_proj(x).float() + self.dt_bias.float())
        beta = self.b_proj(x).float().sigmoid()
        return g.transpose(1, 2), beta.transpose(1, 2)


def l2norm(x):
    return F.normalize(x, p=2.0, dim=-1, eps=1e-6)


def head_dims(cfg, opts) -> tuple[int, int, int]:
    h = opts.n_heads or cfg.n_heads
    dk = opts.head_dim or cfg.dim // h
    return h, dk, opts.v_head_dim or dk


def validate_linear_options(cfg, opts, where: str) -> None:
    """Checks shared by gdn and sdla; raises ConfigError naming the field."""
    def pos_or_none(name):
        v = getattr(opts, name)
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
            raise ConfigError(f"{where}.{name}", f"must be a positive integer or None; got {v!r}")

    for f in ("n_heads", "head_dim", "v_head_dim"):
        pos_or_none(f)
    h = opts.n_heads or cfg.n_heads
    if opts.head_dim is None and cfg.dim % h:
        raise ConfigError(f"{where}.head_dim", f"dim={cfg.dim} is not divisible by {h} heads: set "
                          f"head_dim (and v_head_dim) explicitly or choose n_heads dividing dim")
    for f in ("q_lora_rank", "kv_lora_rank", "o_lora_rank"):
        v = getattr(opts, f, 0)
        if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= cfg.dim:
            raise ConfigError(f"{where}.{f}", f"must be 0 (off) or in 1..dim={cfg.dim}; got {v!r}")
    c = opts.conv_size
    if not isinstance(c, int) or isinstance(c, bool) or c < 0 or c == 1:
        raise ConfigError(f"{where}.conv_size", f"must be 0 (no short conv) or a width >= 2; got {c!r}")
    if opts.impl not in IMPLS:
        raise ConfigError(f"{where}.impl", f"must be one of {', '.join(IMPLS)}; got {opts.impl!r}")
    cs = opts.chunk_size
    if not isinstance(cs, int) or isinstance(cs, bool) or cs < 1 or cs & (cs - 1) or cs > 256:
        raise ConfigError(f"{where}.chunk_size", f"must be a power of two in 1..256 (e.g. 64); got {cs!r}")


def run_gated_delta(q, k, v, g, beta, scale, cache, impl, chunk_size):
    """The op with or without a cache (prefill/decode continue from and update cache.state)."""
    if cache is None:
        return gated_delta_rule(q, k, v, g, beta, scale=scale, impl=impl, chunk_size=chunk_size)[0]
    t = q.shape[2]
    cache.check_room(t)
    o, state = gated_delta_rule(q, k, v, g, beta, scale=scale, initial_state=cache.state,
                                output_final_state=True, impl=impl, chunk_size=chunk_size,
                                recurrent=t == 1)
    cache.advance(t, state)
    return o


# -- the mixer ---------------------------------------------------------------------------------
@dataclass
class GDNOptions:
    n_heads: int | None = None      # None: the model's n_heads
    head_dim: int | None = None     # q/k head dim; None: dim // n_heads
    v_head_dim: int | None = None   # None: head_dim
    conv_size: int = 4              # short causal depthwise conv width on q/k/v; 0 = off
    q_lora_rank: int = 0            # latent bottleneck for Q (0 = full rank)
    kv_lora_rank: int = 0           # one latent bottleneck shared by K and V (0 = full rank)
    o_lora_rank: int = 0            # latent bottleneck for the output projection
    shared_qk: bool = False         # K = normalised Q (no key projection)
    output_gate: bool = True        # RMSNorm(o) * SiLU(x W_g); False: RMSNorm(o)
    impl: str = "auto"              # auto | chunked | naive | fla | triton
    chunk_size: int = 64            # chunk length of the chunked path (power of two)


@register_mixer("gdn")
class GatedDeltaNet(Mixer):
    """GatedDeltaNet: gated delta rule linear attention, constant-size decode state."""

    cache_kinds = ("recurrent",)
    Options = GDNOptions

    @classmethod
    def validate(cls, cfg, opts) -> None:
        validate_linear_options(cfg, opts, "mixer_options.gdn")
        if not isinstance(opts.shared_qk, bool):
            raise ConfigError("mixer_options.gdn.shared_qk", f"must be true or false; got {opts.shared_qk!r}")

    def __init__(self, cfg, opts, layer_idx):
        super().__init__(cfg, opts, layer_idx)
        self.n_heads, self.dk, self.dv = head_dims(cfg, opts)
        h, dk, dv = self.n_heads, self.dk, self.dv
        self.proj = QKVProjections(cfg.dim, h * dk, 0 if opts.shared_qk else h * dk, h * dv,
                                   opts.q_lora_rank, opts.kv_lora_rank, cfg.norm_eps)
        self.conv_channels = h * dk * (1 if opts.shared_qk else 2) + h * dv
        self.conv = ShortConv(self.conv_channels, opts.conv_size) if opts.conv_size else None
        self.gates = DecayGates(cfg.dim, h)
        self.o_norm = RMSNorm(dv, cfg.norm_eps)
        self.g_proj = nn.Linear(cfg.dim, h * dv, bias=False) if opts.output_gate else None
        if opts.o_lora_rank:
            self.o_down = nn.Linear(h * dv, opts.o_lora_rank, bias=False)
        self.out_proj = nn.Linear(opts.o_lora_rank or h * dv, cfg.dim, bias=False)
        self.scale = dk ** -0.5

    def init_weights(self) -> None:
        self.gates.reset_parameters()
        if self.conv is not None:
            self.conv.reset_parameters()

    def qkv(self, x, cache=None):
        """q, k [B, H, T, dk] (L2-normalised) and v [B, H, T, dv] after the short conv."""
        b, t, _ = x.shape
        q, k, v = self.proj(x)
        parts = [q, v] if k is None else [q, k, v]
        if self.conv is not None:
            y = self.conv(torch.cat(parts, dim=-1), None if cache is None else cache.conv)
            parts = list(y.split([p.shape[-1] for p in parts], dim=-1))
        else:
            parts = [F.silu(p) for p in parts]
        heads = lambda z, d: z.reshape(b, t, -1, d).transpose(1, 2)  # noqa: E731
        q = l2norm(heads(parts[0], self.dk))
        k = q if k is None else l2norm(heads(parts[1], self.dk))
        return q, k, heads(parts[-1], self.dv)

    def output(self, o, x):
        """o [B, H, T, dv] -> per-head RMSNorm, output gate, projection -> [B, T, dim]."""
        b, _, t, _ = o.shape
        o = self.o_norm(o.transpose(1, 2))
        if self.g_proj is not None:
            o = o * F.silu(self.g_proj(x)).view(b, t, self.n_heads, self.dv)
        o = o.reshape(b, t, -1)
        if hasattr(self, "o_down"):
            o = self.o_down(o)
        return self.out_proj(o)

    def forward(self, x, cache=None):
        if cache is not None:
            cache.check_room(x.shape[1])
        q, k, v = self.qkv(x, cache)
        g, beta = self.gates(x)
        o = run_gated_delta(q, k, v, g, beta, self.scale, cache, self.opts.impl, self.opts.chunk_size)
        return self.output(o, x)

    def new_cache(self, batch_size, max_len, device=None, dtype=None, kind=None, **kwargs):
        if kind not in (None, "recurrent"):
            raise ConfigError("cache kind", f"gdn supports 'recurrent'; got {kind!r}")
        return RecurrentCache(batch_size, max_len, self.n_heads, self.dk, self.dv,
                              self.conv_channels if self.conv is not None else 0,
                              self.opts.conv_size, device=device, dtype=dtype)
