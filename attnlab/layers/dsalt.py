"""DSALT: Dynamic Sparse Attention with Landmark Tokens (causal, decode-exact).

Each query head attends to a causal local window whose size a small predictor picks per token,
``w_i = n_min + sigmoid(g(x_i)) * (n_max - n_min)``, with a soft edge ``edge`` tokens wide (a
log-weight bias on keys near the edge, differentiable in w_i), plus ``n_landmarks`` landmark
tokens per key/value head: per block of ``block`` queries, the top-k earlier tokens (before the
block) by the hybrid energy

    e_j = alpha_h * z(||x_j W_V^h||) + (1 - alpha_h) * z(||x_j||),   z(u) = log(RMS(u)),

alpha_h = sigmoid(alpha_logit_h) learnable per head. The log-RMS normalisation is per token (a
z-score over the sequence would look at the future), so a token's energy never changes and the
decode cache can keep the current landmark set and merge each finished block into it. A landmark
enters the softmax with log-weight logsigmoid(e_j) (so alpha gets a gradient) and only when it is
outside the query's soft window (never counted twice). Exact semantics: ``ops/dsalt/reference.py``.

Regulariser (``aux_loss``): ``entropy_weight`` x mean binary entropy of the window fractions
sigmoid(g(x_i)); it pushes each token to a decisive choice (short or long window).

Decode cache (``DSALTCache``): the last max(n_max, block) tokens' K/V and energies (a ring) plus the
current landmark set (K/V, energies, rank keys): bounded by (n_max + k) tokens per kv head when
block <= n_max, whatever the sequence length.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..caches.base import LayerCache
from ..errors import ConfigError
from ..ops.dsalt import IMPLS, dsalt_attention, window_log_weight
from ..ops.dsalt.reference import INVALID_KEY, _topk_keys, key_positions, rank_keys
from ..positions import RotaryEmbedding, apply_rope
from .base import Mixer
from .registry import register_mixer


class DSALTCache(LayerCache):
    """Ring of the last C = min(max(n_max, block), max_len) tokens + the current landmark set."""

    def __init__(self, batch_size, max_len, n_kv_heads, head_dim, n_max, n_landmarks, block,
                 device=None, dtype=None):
        super().__init__(batch_size, max_len)
        self.n_max, self.n_landmarks, self.block = n_max, n_landmarks, block
        c = min(max(n_max, block), max_len)
        self.capacity = c
        kw = dict(device=device)
        self.ring_k = torch.zeros(batch_size, n_kv_heads, c, head_dim, dtype=dtype, **kw)
        self.ring_v = torch.zeros(batch_size, n_kv_heads, c, head_dim, dtype=dtype, **kw)
        self.ring_e = torch.zeros(batch_size, n_kv_heads, c, dtype=torch.float32, **kw)
        k = n_landmarks
        self.lm_k = torch.zeros(batch_size, n_kv_heads, k, head_dim, dtype=dtype, **kw)
        self.lm_v = torch.zeros(batch_size, n_kv_heads, k, head_dim, dtype=dtype, **kw)
        self.lm_e = torch.zeros(batch_size, n_kv_heads, k, dtype=torch.float32, **kw)
        self.lm_key = torch.full((batch_size, n_kv_heads, k), INVALID_KEY, dtype=torch.int64, **kw)

    def tensors(self):
        return [self.ring_k, self.ring_v, self.ring_e, self.lm_k, self.lm_v, self.lm_e, self.lm_key]

    def reset(self):
        super().reset()
        self.lm_key.fill_(INVALID_KEY)

    def recent(self):
        """(k, v, energy, positions) of the tokens held in the ring, oldest first."""
        r = min(self.seen, self.capacity)
        pos = torch.arange(self.seen - r, self.seen, device=self.ring_k.device)
        slots = pos % self.capacity
        return self.ring_k[:, :, slots], self.ring_v[:, :, slots], self.ring_e[:, :, slots], pos

    def write(self, k, v, energy, kw, vw, ew, posw):
        """Append the new tokens (k, v, energy for positions seen..seen+T-1) and bring the
        landmark set up to the block of the next position. kw/vw/ew/posw: the tokens the
        merge may draw from (ring + new), oldest first."""
        t = k.shape[2]
        p0, pn, s = self.seen, self.seen + t, self.block
        n = min(t, self.capacity)
        slots = torch.arange(pn - n, pn, device=k.device) % self.capacity
        self.ring_k[:, :, slots] = k[:, :, t - n:].to(self.ring_k.dtype)
        self.ring_v[:, :, slots] = v[:, :, t - n:].to(self.ring_v.dtype)
        self.ring_e[:, :, slots] = energy[:, :, t - n:].float()
        cb, nb = (p0 // s) * s, (pn // s) * s
        if self.n_landmarks and nb > cb:
            keys = rank_keys(ew, posw)
            fresh = (posw >= cb) & (posw < nb)
            keys = torch.where(fresh, keys, torch.full_like(keys, INVALID_KEY))
            cand = torch.cat([self.lm_key, keys], -1)
            top, idx = cand.topk(self.n_landmarks, dim=-1, sorted=True)
            ck = torch.cat([self.lm_k, kw.to(self.lm_k.dtype)], 2)
            cv = torch.cat([self.lm_v, vw.to(self.lm_v.dtype)], 2)
            ce = torch.cat([self.lm_e, ew.float()], 2)
            gi = idx[..., None].expand(-1, -1, -1, ck.shape[-1])
            self.lm_k = ck.gather(2, gi)
            self.lm_v = cv.gather(2, gi)
            self.lm_e = ce.gather(2, idx)
            self.lm_key = top
        self.seen = pn


def cached_attention(cache: DSALTCache, q, k, v, win, energy, *, edge: float, scale: float):
    """Attention of T new queries (positions cache.seen..) over the ring, the new tokens and the
    landmark sets, with exactly the training semantics. Dense over (ring + T + k) columns."""
    b, h, t, dim = q.shape
    hk = k.shape[1]
    g = h // hk
    p0, s, n_max = cache.seen, cache.block, cache.n_max
    rk, rv, re, rpos = cache.recent()
    kw, vw = torch.cat([rk, k.to(rk.dtype)], 2), torch.cat([rv, v.to(rv.dtype)], 2)
    ew = torch.cat([re, energy.float()], 2)
    posw = torch.arange(p0 - rpos.numel(), p0 + t, device=q.device)
    qpos = torch.arange(p0, p0 + t, device=q.device)
    # window columns
    bias_w = window_log_weight(qpos[:, None] - posw[None, :], win[..., None], n_max, edge)  # [B,H,T,W]
    cols_k, cols_v, bias = kw, vw, bias_w
    if cache.n_landmarks:
        cb = (p0 // s) * s
        keys = rank_keys(ew, posw)  # [B, Hk, W]
        thr = []
        for blk in range(p0 // s, (p0 + t - 1) // s + 1):  # plain ints: no device sync per step
            fresh = (posw >= cb) & (posw < blk * s)
            cand = torch.cat([cache.lm_key, torch.where(fresh, keys, torch.full_like(keys, INVALID_KEY))], -1)
            thr.append(_topk_keys(cand, cache.n_landmarks)[..., -1])
        thr = torch.stack(thr, -1)[:, :, qpos // s - p0 // s]  # [B, Hk, T]
        gate_w = F.logsigmoid(ew)
        # landmarks among the ring/new columns: tokens of the current block range only
        qstart = (qpos // s) * s
        lm_w = ((posw[None, :] >= cb) & (posw[None, :] < qstart[:, None]))[None, None] \
            & (keys[:, :, None, :] >= thr[..., None])
        lm_w = torch.where(lm_w, gate_w[:, :, None, :], torch.full_like(lm_w, -math.inf, dtype=torch.float32))
        lm_w = lm_w.repeat_interleave(g, 1)
        bias_w = torch.where(bias_w > -math.inf, bias_w, lm_w)
        # the cached landmark slots (tokens before cb), out of the query's soft window only
        lpos = key_positions(cache.lm_key)  # [B, Hk, K]
        valid = (cache.lm_key != INVALID_KEY)[:, :, None, :] & (cache.lm_key[:, :, None, :] >= thr[..., None])
        in_win = window_log_weight(qpos[None, None, :, None] - lpos[:, :, None, :].repeat_interleave(g, 1),
                                   win[..., None], n_max, edge) > -math.inf
        gate_l = F.logsigmoid(cache.lm_e)[:, :, None, :].expand(b, hk, t, -1)
        bias_l = torch.where(valid, gate_l, torch.full_like(gate_l, -math.inf)).repeat_interleave(g, 1)
        bias_l = bias_l.masked_fill(in_win, -math.inf)
        cols_k, cols_v = torch.cat([cache.lm_k, kw], 2), torch.cat([cache.lm_v, vw], 2)
        bias = torch.cat([bias_l, bias_w], -1)
    kk = cols_k.repeat_interleave(g, 1).float()
    vv = cols_v.repeat_interleave(g, 1).float()
    sc = (q.float() @ kk.transpose(-1, -2)) * scale + bias
    out = (sc.softmax(-1) @ vv).to(q.dtype)
    return out, (kw, vw, ew, posw)


@register_mixer("dsalt")
class DSALT(Mixer):
    """Learned soft local windows + causal landmark tokens; see the module docstring."""

    @dataclass
    class Options:
        n_min: int = 16  # smallest window (tokens)
        n_max: int = 256  # largest window; the decode ring holds this many recent tokens
        edge: float = 4.0  # width of the soft window edge (tokens), > 0
        n_landmarks: int = 32  # landmark tokens per kv head (0: window only)
        block: int = 64  # queries per landmark-selection block (multiple of 16 for the kernel)
        entropy_weight: float = 0.01  # window-entropy regulariser weight (aux_loss)
        impl: str = "auto"  # auto | reference | flex | triton
        qkv_bias: bool = False

    @classmethod
    def validate(cls, cfg, opts) -> None:
        w = "mixer_options.dsalt"
        for f in ("n_min", "n_max", "block"):
            val = getattr(opts, f)
            if not isinstance(val, int) or isinstance(val, bool) or val < 1:
                raise ConfigError(f"{w}.{f}", f"must be a positive integer; got {val!r}")
        if opts.n_min > opts.n_max:
            raise ConfigError(f"{w}.n_min", f"must be <= n_max={opts.n_max}; got n_min={opts.n_min}")
        if opts.n_max > cfg.max_seq_len:
            raise ConfigError(f"{w}.n_max", f"window larger than the context: must be <= max_seq_len="
                                            f"{cfg.max_seq_len}; got {opts.n_max}")
        if not isinstance(opts.edge, (int, float)) or not opts.edge > 0:
            raise ConfigError(f"{w}.edge", f"must be > 0 (tokens); got {opts.edge!r}")
        k = opts.n_landmarks
        if not isinstance(k, int) or isinstance(k, bool) or k < 0:
            raise ConfigError(f"{w}.n_landmarks", f"must be an integer >= 0; got {k!r}")
        if k >= cfg.max_seq_len:
            raise ConfigError(f"{w}.n_landmarks", f"more landmarks than the sequence: must be < max_seq_len="
                                                  f"{cfg.max_seq_len}; got {k}")
        if not isinstance(opts.entropy_weight, (int, float)) or opts.entropy_weight < 0:
            raise ConfigError(f"{w}.entropy_weight", f"must be >= 0; got {opts.entropy_weight!r}")
        if opts.impl not in IMPLS:
            raise ConfigError(f"{w}.impl", f"must be one of {', '.join(IMPLS)}; got {opts.impl!r}")
        if opts.impl == "triton" and opts.block % 16:
            raise ConfigError(f"{w}.block", f"must be a multiple of 16 for impl='triton'; got {opts.block}")

    cache_kinds = ("dsalt",)

    def __init__(self, cfg, opts, layer_idx):
        super().__init__(cfg, opts, layer_idx)
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.kv_heads, cfg.attn_head_dim
        d = self.head_dim
        self.qkv_proj = nn.Linear(cfg.dim, (self.n_heads + 2 * self.n_kv_heads) * d, bias=opts.qkv_bias)
        self.out_proj = nn.Linear(self.n_heads * d, cfg.dim, bias=False)
        self.win_proj = nn.Linear(cfg.dim, self.n_heads, bias=True)  # window predictor g
        self.alpha_logit = nn.Parameter(torch.zeros(self.n_kv_heads))
        self.rope = RotaryEmbedding.from_config(cfg, d)
        self.scale = d**-0.5 * self.rope.attention_scale
        self.eps = cfg.norm_eps

    def init_weights(self):
        nn.init.zeros_(self.alpha_logit)
        nn.init.zeros_(self.win_proj.bias)

    def features(self, x, start):
        """q [B,H,T,D], k/v [B,Hk,T,D] (RoPE at start..), win [B,H,T], energy [B,Hk,T] (fp32),
        and the predictor logits [B,T,H]."""
        b, t, _ = x.shape
        d = self.head_dim
        q, k, v = self.qkv_proj(x).split([self.n_heads * d, self.n_kv_heads * d, self.n_kv_heads * d], -1)
        q = q.view(b, t, self.n_heads, d).transpose(1, 2)
        k = k.view(b, t, self.n_kv_heads, d).transpose(1, 2)
        v = v.view(b, t, self.n_kv_heads, d).transpose(1, 2)
        cos, sin = self.rope.cos_sin(start, t)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        logits = self.win_proj(x).float()
        o = self.opts
        win = (o.n_min + torch.sigmoid(logits) * (o.n_max - o.n_min)).transpose(1, 2)
        alpha = torch.sigmoid(self.alpha_logit.float())[None, :, None]
        zv = 0.5 * torch.log(v.float().pow(2).mean(-1) + self.eps)
        zx = 0.5 * torch.log(x.float().pow(2).mean(-1) + self.eps)[:, None, :]
        energy = alpha * zv + (1 - alpha) * zx
        return q, k, v, win, energy, logits

    def forward(self, x, cache=None):
        b, t, _ = x.shape
        o = self.opts
        q, k, v, win, energy, logits = self.features(x, cache.seen if cache is not None else 0)
        p = torch.sigmoid(logits)
        ent = -(p * F.logsigmoid(logits) + (1 - p) * F.logsigmoid(-logits))
        self.aux_loss = o.entropy_weight * ent.mean()
        kw = dict(n_max=o.n_max, edge=float(o.edge), n_landmarks=o.n_landmarks, block=o.block, scale=self.scale)
        if cache is None:
            out = dsalt_attention(q, k, v, win, energy, impl=o.impl, **kw)
        else:
            cache.check_room(t)
            if cache.seen == 0:
                out = dsalt_attention(q, k, v, win, energy, impl=o.impl, **kw)
                src = (k, v, energy.float(), torch.arange(t, device=x.device))
            else:
                out, src = cached_attention(cache, q, k, v, win, energy, edge=float(o.edge), scale=self.scale)
            cache.write(k, v, energy, *src)
        return self.out_proj(out.transpose(1, 2).reshape(b, t, -1))

    def new_cache(self, batch_size, max_len, device=None, dtype=None, kind=None, **kwargs):
        if kind not in (None, "dsalt"):
            raise ConfigError("cache kind", f"dsalt supports only 'dsalt'; got {kind!r}")
        o = self.opts
        return DSALTCache(batch_size, max_len, self.n_kv_heads, self.head_dim, o.n_max, o.n_landmarks,
                          o.block, device=device, dtype=dtype)
