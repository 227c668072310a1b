"""The differential attention family: ``diff-mha``, ``diff-mla``, ``cmd-mla``.

Differential attention (Ye et al., "Differential Transformer", arXiv 2410.05258) subtracts a
second ("noise") softmax map from the first, cancelling attention noise common to both:

    o_h = (softmax(Q1 K1^T) - lam_h softmax(Q2 K2^T)) V_h,   out_h = RMSNorm(o_h) * (1 - lam_init)

- lam = exp(lq1 . lk1) - exp(lq2 . lk2) + lam_init, lam_init = 0.8 - 0.6 exp(-0.3 * layer_idx)
  (layer_idx counted from 0), the vectors of length head_dim initialised N(0, 0.1). One lam per
  layer (the paper) or one per head (``lambda_mode="head"``); ``lambda_scale=True`` adds a
  learnable layer-scale gamma (init 1): lam <- gamma * lam.
- ``diff-mha``: the paper's layer. The model's n_heads query heads (and n_kv_heads key heads) are
  split into n_heads/2 signal/noise pairs; each pair has one value head of width 2 * head_dim, so
  parameters and output width equal ``mha``'s. Decodes over the dense K/V cache: the cache holds
  the n_kv_heads keys (signal heads then noise heads) and n_kv_heads/2 value heads of 2*head_dim.
- ``diff-mla``: MLA whose every head has a signal and a noise stream: two query up-projections
  from the query latent, two key up-projections from the KV latent, one value up-projection;
  the decoupled rope query/key is shared by both streams. Absorbed decode over the MLA latent
  cache (latent + rope key per token): both streams' W_UK are folded into the queries and the
  two attentions run as one call over the cache; W_UV is applied after the subtraction.
- ``cmd-mla`` (common-mode differential MLA): n signal heads exactly as in MLA plus ONE noise head
  (its own query/key up-projections from the same latents, no RoPE unless ``noise_rope``) whose
  map is subtracted from every head with a per-head lam_h = exp(lq_h . lk_h) + lam_init.

Training never materialises a T x T map: ``impl="sdpa"`` runs two SDPA calls sharing V,
``impl="triton"`` a fused kernel of ``attnlab.ops.diff_attention`` (K/V streamed once, two
online-softmax states sharing each V tile). For diff-mla and cmd-mla that kernel is
``latent_diff_attention``: it reads the up-projection outputs in place (no q/k concatenation, no
V padding, no expanded noise head, output already in the out-projection's layout), and
``"auto"`` picks it on CUDA for heads up to 64 wide (measured faster there; see
docs/differential.md). For diff-mha ``"auto"`` means sdpa (the generic kernel measured slower
than two SDPA calls on an H100).
With ``head_norm=False`` neither the headwise RMSNorm nor the (1 - lam_init) factor is applied.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..caches.kv import LatentCache, new_kv_cache
from ..errors import ConfigError
from ..ops.diff_attention import IMPLS, LatentGeometry, diff_attention, diff_attention_sdpa
from ..ops.diff_attention import latent_diff_attention, use_fused_latent
from ..positions import RotaryEmbedding, apply_rope
from .base import Mixer
from .mla import LatentProjections, MLAOptions, absorbed_attention, validate_mla_options
from .registry import register_mixer


def lambda_init_schedule(layer_idx: int) -> float:
    """lam_init = 0.8 - 0.6 exp(-0.3 * layer_idx) (Differential Transformer, layer_idx from 0)."""
    return 0.8 - 0.6 * math.exp(-0.3 * layer_idx)


class _LambdaFn(torch.autograd.Function):
    """lam = exp(q[0].k[0]) - exp(q[1].k[1]) + init (``diff``) or exp(q[0].k[0]) + init, with a
    hand-written backward: the same values as autograd's, in four ops instead of about nine
    (eager training at small widths pays per op)."""

    @staticmethod
    def forward(ctx, q, k, init: float, diff: bool):
        e = torch.exp((q * k).sum(-1))  # [1 or 2, heads or 1]
        ctx.save_for_backward(q, k, e)
        ctx.diff = diff
        return torch.sub(e[0], e[1]).add_(init) if diff else e[0] + init

    @staticmethod
    def backward(ctx, g):
        q, k, e = ctx.saved_tensors
        ge = e * g  # d lam / d s_i = +-e_i
        if ctx.diff:
            ge[1].neg_()
        ge = ge.unsqueeze(-1)
        return ge * k, ge * q, None, None


class DiffLambda(nn.Module):
    """The re-parameterised lam of differential attention, one value per head ([H] float32).

    ``kind="diff"``: lam = exp(lq1 . lk1) - exp(lq2 . lk2) + lam_init (the paper);
    ``kind="cmd"``:  lam = exp(lq . lk) + lam_init (CMD-MLA, always > lam_init).
    ``per_head``: separate vectors per head, else one set shared by the layer.
    ``layer_scale``: a learnable scalar gamma (init 1) multiplying lam.
    """

    def __init__(self, n_heads: int, dim: int, lambda_init: float, per_head: bool,
                 layer_scale: bool, kind: str = "diff"):
        super().__init__()
        self.n_heads, self.lambda_init, self.kind = n_heads, float(lambda_init), kind
        # q[i], k[i]: the vectors of exponential i (diff: two, cmd: one), stacked so that lam
        # costs one mul/sum/exp (eager training is launch-bound at small widths).
        shape = (2 if kind == "diff" else 1, n_heads if per_head else 1, dim)
        self.q = nn.Parameter(torch.zeros(shape))
        self.k = nn.Parameter(torch.zeros(shape))
        self.scale = nn.Parameter(torch.ones(())) if layer_scale else None
        self.reset_parameters()

    # the paper's names, as views
    q1 = property(lambda self: self.q[0])
    k1 = property(lambda self: self.k[0])
    q2 = property(lambda self: self.q[1] if self.kind == "diff" else None)
    k2 = property(lambda self: self.k[1] if self.kind == "diff" else None)

    def reset_parameters(self) -> None:
        with torch.no_grad():
            self.q.normal_(0.0, 0.1)
            self.k.normal_(0.0, 0.1)
            if self.scale is not None:
                self.scale.fill_(1.0)

    def forward(self) -> torch.Tensor:
        lam = _LambdaFn.apply(self.q.float(), self.k.float(), self.lambda_init, self.kind == "diff")
        if self.scale is not None:
            lam = lam * self.scale.float()
        return lam.expand(self.n_heads)


@dataclass
class DiffOptions:
    lambda_init: float | None = None  # None: the depth schedule 0.8 - 0.6 exp(-0.3 layer_idx)
    lambda_mode: str = "layer"  # "layer": one lam per layer (paper) | "head": one per head
    lambda_scale: bool = False  # learnable layer-scale gamma on lam
    head_norm: bool = True  # headwise RMSNorm then * (1 - lam_init)
    impl: str = "auto"  # training path: "auto" | "sdpa" | "triton" | "triton-v1" | "noise-once" (cmd-mla) | "reference"


def validate_diff_options(opts, where: str, cmd: bool = False) -> None:
    li = opts.lambda_init
    if li is not None and (isinstance(li, bool) or not isinstance(li, (int, float)) or not 0.0 < li < 1.0):
        raise ConfigError(f"{where}.lambda_init", f"must be in (0, 1), or None for the depth schedule; got {li!r}")
    if opts.lambda_mode not in ("layer", "head"):
        raise ConfigError(f"{where}.lambda_mode", f"must be 'layer' or 'head'; got {opts.lambda_mode!r}")
    for f in ("lambda_scale", "head_norm"):
        if not isinstance(getattr(opts, f), bool):
            raise ConfigError(f"{where}.{f}", f"must be true or false; got {getattr(opts, f)!r}")
    if opts.impl not in IMPLS:
        raise ConfigError(f"{where}.impl", f"must be one of {', '.join(IMPLS)}; got {opts.impl!r}")
    if opts.impl == "noise-once" and not cmd:
        raise ConfigError(f"{where}.impl", "'noise-once' needs the one shared noise head of cmd-mla; "
                          f"use one of {', '.join(i for i in IMPLS if i != 'noise-once')}")


class _DiffBase(Mixer):
    """lam, the headwise norm and the (1 - lam_init) factor shared by the family."""

    lowp_input = True  # x only feeds the q/kv projections

    lambda_kind = "diff"

    def _init_diff(self, n_heads: int, lam_dim: int, v_dim: int) -> None:
        o = self.opts
        self.lambda_init = o.lambda_init if o.lambda_init is not None else lambda_init_schedule(self.layer_idx)
        self.lam = DiffLambda(n_heads, lam_dim, self.lambda_init, o.lambda_mode == "head",
                              o.lambda_scale, self.lambda_kind)
        self.head_norm = nn.Parameter(torch.ones(v_dim)) if o.head_norm else None

    def init_weights(self) -> None:
        self.lam.reset_parameters()
        if self.head_norm is not None:
            with torch.no_grad():
                self.head_norm.fill_(1.0)

    def finish(self, o: torch.Tensor, time_major: bool = False) -> torch.Tensor:
        """o [B, H, T, DV] (or [B, T, H, DV] with ``time_major``) -> [B, T, H * DV]:
        headwise RMSNorm * (1 - lam_init)."""
        dv = o.shape[-1]
        if self.head_norm is not None:
            # RMSNorm(o) * (1 - lam_init) with the factor folded into the (small) weight
            w = (self.head_norm * (1.0 - self.lambda_init)).to(o.dtype)
            o = F.rms_norm(o, (dv,), w, self.cfg.norm_eps)
        if not time_major:
            o = o.transpose(1, 2)
        return o.reshape(o.shape[0], o.shape[1], -1)


# ------------------------------------------------------------------------------------------
@register_mixer("diff-mha")
class DiffMultiHeadAttention(_DiffBase):
    """Differential Transformer attention over n_heads/2 signal/noise head pairs."""

    cache_kinds = ("dense",)

    @dataclass
    class Options(DiffOptions):
        qkv_bias: bool = False

    @classmethod
    def validate(cls, cfg, opts) -> None:
        if cfg.n_heads % 2:
            raise ConfigError("n_heads", f"diff-mha pairs heads (signal, noise): n_heads must be even; got {cfg.n_heads}")
        if cfg.kv_heads % 2:
            raise ConfigError("n_kv_heads", f"diff-mha pairs key heads: n_kv_heads must be even; got {cfg.kv_heads}")
        validate_diff_options(opts, "mixer_options.diff-mha")

    def __init__(self, cfg, opts, layer_idx):
        super().__init__(cfg, opts, layer_idx)
        self.h, self.hk, self.d = cfg.n_heads // 2, cfg.kv_heads // 2, cfg.attn_head_dim
        q, k = cfg.n_heads * self.d, cfg.kv_heads * self.d
        self.qkv_proj = nn.Linear(cfg.dim, q + k + k, bias=opts.qkv_bias)  # q1|q2, k1|k2, v (2d wide)
        self.out_proj = nn.Linear(q, cfg.dim, bias=False)
        self.rope = RotaryEmbedding.from_config(cfg, self.d)
        self.scale = self.d**-0.5 * self.rope.attention_scale
        self._init_diff(self.h, self.d, 2 * self.d)

    def project(self, x, start: int):
        """q [B, 2H, T, d] (signal heads, then noise), k [B, 2Hk, T, d], v [B, Hk, T, 2d]."""
        b, t, _ = x.shape
        d = self.d
        q, k, v = self.qkv_proj(x).split([2 * self.h * d, 2 * self.hk * d, 2 * self.hk * d], dim=-1)
        cos, sin = self.rope.cos_sin(start, t)
        q = apply_rope(q.view(b, t, 2 * self.h, d).transpose(1, 2), cos, sin)
        k = apply_rope(k.view(b, t, 2 * self.hk, d).transpose(1, 2), cos, sin)
        return q, k, v.view(b, t, self.hk, 2 * d).transpose(1, 2)

    def forward(self, x, cache=None):
        h, hk = self.h, self.hk
        start = cache.seen if cache is not None else 0
        q, k, v = self.project(x, start)
        lam = self.lam()
        if cache is None:
            o = diff_attention(q[:, :h], k[:, :hk], q[:, h:], k[:, hk:], v, lam, self.scale, self.scale,
                               impl=self.opts.impl)
        else:
            keys, values = cache.append(k, v)
            o = diff_attention_sdpa(q[:, :h], keys[:, :hk], q[:, h:], keys[:, hk:], values, lam,
                                    self.scale, self.scale, q_start=start)
        return self.out_proj(self.finish(o))

    def new_cache(self, batch_size, max_len, device=None, dtype=None, kind=None, **kwargs):
        if kind not in (None, "dense"):
            raise ConfigError("cache kind", f"diff-mha supports 'dense'; got {kind!r}")
        return new_kv_cache("dense", batch_size=batch_size, max_len=max_len, n_kv_heads=2 * self.hk,
                            head_dim=self.d, v_heads=self.hk, v_head_dim=2 * self.d,
                            device=device, dtype=dtype, layer_idx=self.layer_idx)


# ------------------------------------------------------------------------------------------
def inherit_mla_options(cfg, opts, name: str):
    """The latent family takes ``mixer_options["mla"]`` as defaults for the MLA fields it was not
    given itself (so a preset that sizes ``mla`` sizes diff-mla/cmd-mla the same way)."""
    own = cfg.mixer_options.get(name, {})
    base = cfg.mixer_options.get("mla", {})
    if not isinstance(own, dict) or not isinstance(base, dict) or not base:
        return opts
    fields = {f.name for f in dataclasses.fields(MLAOptions)}
    inherit = {k: v for k, v in base.items() if k in fields and k not in own}
    return dataclasses.replace(opts, **inherit) if inherit else opts


class _LatentDiffBase(_DiffBase):
    """Shared by diff-mla and cmd-mla: the MLA projections (``mla``'s parameter names: proj.*,
    kv_up, out_proj), with the query and KV up-projections widened so that the same matmul also
    produces the noise stream's queries and keys: proj.q_up = [W_UQ; W_UQ2] (with q_lora_rank = 0:
    the query rows at the end of proj.down), kv_up = [W_UKV; W_UK2]. The first rows are exactly
    ``mla``'s weights.

    ``noise_rope``: None (noise q/k have no rope part), "own" (the noise query has its own rope
    part, the key is the shared rope key) or "shared" (the noise stream reuses the signal
    stream's rope query and key)."""

    cache_kinds = ("latent",)

    def _init_latent(self, cfg, opts, noise_heads: int, noise_qk: int, noise_rope: str | None):
        self.n_heads = cfg.n_heads
        dn, dr = opts.qk_nope_head_dim or cfg.attn_head_dim, opts.qk_rope_head_dim
        own = dr if noise_rope == "own" else 0
        self.q_split = [self.n_heads * (dn + dr), noise_heads * (noise_qk + own)]
        self.proj = LatentProjections(cfg, opts, cfg.n_heads, q_out=sum(self.q_split))
        p = self.proj
        self.kv_split = [self.n_heads * (p.dn + p.dv), noise_heads * noise_qk]
        self.kv_up = nn.Linear(p.rank, sum(self.kv_split), bias=False)
        self.out_proj = nn.Linear(self.n_heads * p.dv, cfg.dim, bias=False)
        self.scale = (p.dn + p.dr) ** -0.5 * p.rope.attention_scale
        self.noise_heads, self.noise_qk, self.noise_rope = noise_heads, noise_qk, noise_rope
        self.scale2 = (noise_qk + (p.dr if noise_rope else 0)) ** -0.5 * p.rope.attention_scale
        self.geometry = LatentGeometry(self.n_heads, noise_heads, p.dn, p.dr, p.dv, noise_qk,
                                       {None: 0, "shared": 1, "own": 2}[noise_rope], self.scale, self.scale2)

    def _forward_fused(self, x):
        """Training: the fused kernel reads the projection outputs in place (no q/k concatenation,
        no V padding, no expanded noise head) and writes [B, T, H, dv] for the output projection."""
        p = self.proj
        q_all, c, k_rope = p.project(x)
        kvu = self.kv_up(c)
        cos, sin = p.rope.cos_sin(0, x.shape[1])  # slices of the rope's cached table
        o = latent_diff_attention(q_all, kvu, k_rope, self.lam(), cos, sin, self.geometry)
        return self.out_proj(self.finish(o, time_major=True))

    def latents(self, x, start: int):
        """Signal q_nope [B,H,T,dn], q_rope [B,H,T,dr] (roped), noise q2 [B,H2,T,dq2] (with its
        roped part last, if any), latent rows [B, T, rank+dr] = [normed c | roped k]."""
        p = self.proj
        b, t, _ = x.shape
        q, c, k_rope = p.project(x)
        q, q2 = q.split(self.q_split, dim=-1)
        q = q.view(b, t, self.n_heads, p.dn + p.dr).transpose(1, 2)
        q_nope, q_rope = q.split([p.dn, p.dr], dim=-1)
        q2 = q2.view(b, t, self.noise_heads, -1).transpose(1, 2)
        cos, sin = p.rope.cos_sin(start, t)
        q_rope = apply_rope(q_rope, cos, sin)
        if self.noise_rope == "own":
            q2 = torch.cat([q2[..., : self.noise_qk], apply_rope(q2[..., self.noise_qk:], cos, sin)], -1)
        elif self.noise_rope == "shared":
            q2 = torch.cat([q2, q_rope], -1)
        latent = torch.cat([c, apply_rope(k_rope, cos, sin)], dim=-1)
        return q_nope, q_rope, q2, latent

    def expand(self, latent, q_nope, q_rope, q2):
        """Explicit (training / naive decode) q1, k1, q2, k2, v from the latent rows."""
        p = self.proj
        b, s, _ = latent.shape
        c, k_rope = latent.split([p.rank, p.dr], dim=-1)
        kv, k2 = self.kv_up(c).split(self.kv_split, dim=-1)
        kv = kv.view(b, s, self.n_heads, p.dn + p.dv).transpose(1, 2)
        k1_nope, v = kv.split([p.dn, p.dv], dim=-1)
        k_rope = k_rope[:, None]
        k1 = torch.cat([k1_nope, k_rope.expand(b, self.n_heads, s, p.dr)], dim=-1)
        q1 = torch.cat([q_nope, q_rope], dim=-1)
        k2 = k2.view(b, s, self.noise_heads, self.noise_qk).transpose(1, 2)
        if self.noise_rope:
            k2 = torch.cat([k2, k_rope.expand(b, self.noise_heads, s, p.dr)], dim=-1)
        return q1, k1, q2, k2, v

    def absorbed(self, q_nope, q_rope, q2, cache, lam, q_start):
        """Both streams absorbed into latent space and run as ONE call over the latent cache
        (the noise heads are extra query heads); W_UV is applied after the subtraction."""
        p = self.proj
        w, w2 = self.kv_up.weight.split(self.kv_split, dim=0)
        w = w.view(self.n_heads, p.dn + p.dv, p.rank)
        w2 = w2.view(self.noise_heads, self.noise_qk, p.rank)
        q1_lat = torch.einsum("bhtd,hdr->bhtr", q_nope, w[:, : p.dn])
        r = self.scale2 / self.scale  # the call uses one scale: fold the noise scale into q2
        q2_lat = torch.einsum("bhtd,hdr->bhtr", q2[..., : self.noise_qk], w2) * r
        if self.noise_rope:
            q2_rope = q2[..., self.noise_qk:] * r
        else:
            q2_rope = q2_lat.new_zeros(*q2_lat.shape[:-1], p.dr)
        o_lat = absorbed_attention(torch.cat([q1_lat, q2_lat], 1), torch.cat([q_rope, q2_rope], 1),
                                   cache.aligned_view(), p.rank, self.scale, q_start, n_valid=cache.seen)
        h = self.n_heads
        o_lat = o_lat[:, :h] - lam.to(o_lat.dtype).view(1, h, 1, 1) * o_lat[:, h:]
        return torch.einsum("bhtr,hvr->bhtv", o_lat, w[:, p.dn:])

    def forward(self, x, cache=None):
        if cache is None and use_fused_latent(self.opts.impl, x, self.geometry):
            return self._forward_fused(x)
        start = cache.seen if cache is not None else 0
        q_nope, q_rope, q2, latent = self.latents(x, start)
        lam = self.lam()
        if cache is None:
            q1, k1, q2, k2, v = self.expand(latent, q_nope, q_rope, q2)
            o = diff_attention(q1, k1, q2, k2, v, lam, self.scale, self.scale2, impl=self.opts.impl)
        else:
            latent = cache.append(latent)
            if self.opts.decode == "absorbed":
                o = self.absorbed(q_nope, q_rope, q2, cache, lam, start)
            else:
                q1, k1, q2, k2, v = self.expand(latent, q_nope, q_rope, q2)
                o = diff_attention_sdpa(q1, k1, q2, k2, v, lam, self.scale, self.scale2, q_start=start)
        return self.out_proj(self.finish(o))

    def new_cache(self, batch_size, max_len, device=None, dtype=None, kind=None, **kwargs):
        if kind not in (None, "latent"):
            raise ConfigError("cache kind", f"{self.name} supports 'latent'; got {kind!r}")
        return LatentCache(batch_size, max_len, self.proj.rank + self.proj.dr, device, dtype)


@dataclass
class DiffMLAOptions(MLAOptions, DiffOptions):
    pass


@register_mixer("diff-mla")
class DiffMultiHeadLatentAttention(_LatentDiffBase):
    """MLA with a signal and a noise stream per head (shared value and rope query/key)."""

    Options = DiffMLAOptions

    @classmethod
    def validate(cls, cfg, opts) -> None:
        opts = inherit_mla_options(cfg, opts, "diff-mla")
        validate_mla_options(cfg, opts, "mixer_options.diff-mla")
        validate_diff_options(opts, "mixer_options.diff-mla")

    def __init__(self, cfg, opts, layer_idx):
        opts = inherit_mla_options(cfg, opts, "diff-mla")
        super().__init__(cfg, opts, layer_idx)
        dn = opts.qk_nope_head_dim or cfg.attn_head_dim
        self._init_latent(cfg, opts, cfg.n_heads, dn, noise_rope="shared")
        self._init_diff(cfg.n_heads, self.proj.dn + self.proj.dr, self.proj.dv)


@dataclass
class CMDOptions(MLAOptions, DiffOptions):
    lambda_mode: str = "head"  # CMD: lam_h = exp(lq_h . lk_h) + lam_init per head
    noise_head_dim: int | None = None  # the noise head's q/k width (None: qk_nope_head_dim)
    noise_rope: bool = False  # give the noise head the decoupled rope part as well


@register_mixer("cmd-mla")
class CommonModeDiffMLA(_LatentDiffBase):
    """MLA's n signal heads minus lam_h times ONE shared noise head's attention over each V_h."""

    Options = CMDOptions
    lambda_kind = "cmd"

    @classmethod
    def validate(cls, cfg, opts) -> None:
        where = "mixer_options.cmd-mla"
        opts = inherit_mla_options(cfg, opts, "cmd-mla")
        validate_mla_options(cfg, opts, where)
        validate_diff_options(opts, where, cmd=True)
        nd = opts.noise_head_dim
        if nd is not None and (isinstance(nd, bool) or not isinstance(nd, int) or not 1 <= nd <= 256):
            raise ConfigError(f"{where}.noise_head_dim", f"must be an integer in 1..256 or None; got {nd!r}")
        if not isinstance(opts.noise_rope, bool):
            raise ConfigError(f"{where}.noise_rope", f"must be true or false; got {opts.noise_rope!r}")
        width = (nd or opts.qk_nope_head_dim or cfg.attn_head_dim) + (opts.qk_rope_head_dim if opts.noise_rope else 0)
        if width > 256:
            raise ConfigError(f"{where}.noise_head_dim",
                              f"noise head width (noise_head_dim{' + qk_rope_head_dim' if opts.noise_rope else ''})"
                              f" must be <= 256; got {width}")

    def __init__(self, cfg, opts, layer_idx):
        opts = inherit_mla_options(cfg, opts, "cmd-mla")
        super().__init__(cfg, opts, layer_idx)
        dn = opts.qk_nope_head_dim or cfg.attn_head_dim
        self._init_latent(cfg, opts, 1, opts.noise_head_dim or dn, "own" if opts.noise_rope else None)
        self._init_diff(cfg.n_heads, self.proj.dn + self.proj.dr, self.proj.dv)
