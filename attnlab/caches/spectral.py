"""Spectral KV cache: recent tokens exact, older blocks compressed by per-block truncated SVD.

Layout per (batch, kv head): a *hot* buffer of exact keys/values holds the most recent tokens;
when it reaches ``hot_window + block_size`` tokens, its oldest ``block_size`` tokens are
compressed into one block:

    keys   K_blk [bs, d]  ~= C_K [bs, key_rank]   @ B_K [key_rank, d]
    values V_blk [bs, dv] ~= C_V [bs, value_rank] @ B_V [value_rank, dv]

with coefficients stored as int8 plus one float32 scale per token (``quantize=True``, default)
and orthonormal bases in fp16/bf16; ``quantize=False`` keeps both in the cache dtype (with full
rank this reproduces exact attention). Attention is computed in the compressed space (see
``attnlab.ops.spectral``): compressed blocks and the exact hot tokens are merged under one
softmax. Long prompts are compressed block by block as they are written; a query always sees the
blocks compressed before it plus the exact tokens after them, so prefill, chunked prefill and
token-by-token decode compute the same thing.

Ranks may depend on the layer: an int, a list indexed by ``layer_idx``, or a callable
``layer_idx -> rank``.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch

from ..errors import ConfigError, InputError
from ..ops.spectral import (HAS_TRITON, KERNEL_TILE, CompressedBlocks, quantize_rows,
                            spectral_attention, spectral_decode, truncated_svd)
from .base import LayerCache
from .kv import register_kv_cache

RankSpec = int | Sequence[int] | Callable[[int], int]

SPECTRAL_OPTIONS = ("key_rank", "value_rank", "block_size", "hot_window", "quantize", "svd",
                    "oversample", "power_iters", "basis_dtype", "backend", "seed", "value_layout")

# session 7: how the value coefficients are stored per block. "token" (default): C_V^T [value_rank, block_size]
# (tokens contiguous; ``cache.cv`` is a transposed view with the logical shape [B, Hk, NBcap, block_size,
# value_rank]), the layout the decode kernels' aggregation dot reads without byte-wise int8 conversions (H100,
# 32K: 4-8 % faster at B = 1, 4-19 % at B = 8; benchmarks/RESULTS.md "Session 7"); "rank": C_V [block_size,
# value_rank] contiguous (sessions 1-6). Both hold the same values and give the same attention.
VALUE_LAYOUTS = ("token", "rank")
DEFAULT_VALUE_LAYOUT = "token"


def resolve_rank(spec: RankSpec, layer_idx: int, field: str) -> int:
    """The rank of layer ``layer_idx`` from an int, a per-layer list, or a callable."""
    if callable(spec):
        r = spec(layer_idx)
    elif isinstance(spec, (list, tuple)):
        if not 0 <= layer_idx < len(spec):
            raise ConfigError(field, f"per-layer list has {len(spec)} entries; no rank for layer {layer_idx}")
        r = spec[layer_idx]
    else:
        r = spec
    if isinstance(r, bool) or not isinstance(r, int) or r < 1:
        raise ConfigError(field, f"rank for layer {layer_idx} must be a positive int; got {r!r}")
    return r


def validate_spectral_options(head_dim: int, v_head_dim: int, layer_idx: int, key_rank: RankSpec,
                              value_rank: RankSpec, block_size: int, hot_window: int, svd: str,
                              backend: str, basis_dtype, value_layout: str = "token") -> tuple[int, int]:
    """Raise ConfigError naming the field for bad options; return this layer's (key_rank, value_rank)."""
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < KERNEL_TILE \
            or block_size % KERNEL_TILE:
        raise ConfigError("block_size", f"must be a positive multiple of the kernel tile ({KERNEL_TILE}); "
                          f"got {block_size!r}")
    rk = resolve_rank(key_rank, layer_idx, "key_rank")
    rv = resolve_rank(value_rank, layer_idx, "value_rank")
    if rk > min(block_size, head_dim):
        raise ConfigError("key_rank", f"{rk} (layer {layer_idx}) exceeds min(block_size={block_size}, "
                          f"head_dim={head_dim}); allowed 1..{min(block_size, head_dim)}")
    if rv > min(block_size, v_head_dim):
        raise ConfigError("value_rank", f"{rv} (layer {layer_idx}) exceeds min(block_size={block_size}, "
                          f"value head_dim={v_head_dim}); allowed 1..{min(block_size, v_head_dim)}")
    if isinstance(hot_window, bool) or not isinstance(hot_window, int) or hot_window < 0:
        raise ConfigError("hot_window", f"must be an int >= 0 (exact recent tokens beyond the open block); got {hot_window!r}")
    if svd not in ("exact", "randomized"):
        raise ConfigError("svd", f"must be 'exact' or 'randomized'; got {svd!r}")
    if backend not in ("auto", "torch", "triton"):
        raise ConfigError("backend", f"must be 'auto', 'torch' or 'triton'; got {backend!r}")
    if basis_dtype not in (None, torch.float16, torch.bfloat16, torch.float32):
        raise ConfigError("basis_dtype", f"must be None, torch.float16, torch.bfloat16 or torch.float32; got {basis_dtype!r}")
    if value_layout not in VALUE_LAYOUTS:
        raise ConfigError("value_layout", f"must be one of {', '.join(map(repr, VALUE_LAYOUTS))}; got {value_layout!r}")
    return rk, rv


@register_kv_cache("spectral")
class SpectralCache(LayerCache):
    """Dense-K/V cache kind "spectral" (see the module docstring).

    Options: key_rank (16), value_rank (32), block_size (512), hot_window (0: only the open block
    is exact), quantize (True: int8 coefficients + per-token scales, fp16/bf16 bases), svd
    ("exact" | "randomized"), oversample/power_iters (randomized SVD), basis_dtype (None: bf16
    for a bf16 cache, else fp16 when quantized; the cache dtype otherwise), backend ("auto":
    Triton decode kernel on CUDA, PyTorch elsewhere | "torch" | "triton"), seed, value_layout (None:
    ``DEFAULT_VALUE_LAYOUT``; "token" | "rank": how the value coefficients are stored, see ``VALUE_LAYOUTS``).
    ``max_len=None`` makes the block storage grow on demand (used by the Hugging Face cache).
    """

    def __init__(self, batch_size: int, max_len: int | None, n_kv_heads: int, head_dim: int,
                 device=None, dtype=None, layer_idx: int = 0, v_heads: int | None = None,
                 v_head_dim: int | None = None, key_rank: RankSpec = 16, value_rank: RankSpec = 32,
                 block_size: int = 512, hot_window: int = 0, quantize: bool = True, svd: str = "exact",
                 oversample: int = 8, power_iters: int = 2, basis_dtype=None, backend: str = "auto",
                 seed: int = 0, value_layout: str | None = None, **unknown):
        if unknown:
            raise ConfigError("cache options", f"unknown spectral cache option(s) {', '.join(sorted(unknown))}; "
                              f"allowed: {', '.join(SPECTRAL_OPTIONS)}")
        if v_heads is not None and v_heads != n_kv_heads:
            raise ConfigError("v_heads", f"the spectral cache needs as many value heads as key heads ({n_kv_heads}); got {v_heads}")
        dv = v_head_dim or head_dim
        value_layout = DEFAULT_VALUE_LAYOUT if value_layout is None else value_layout
        self.key_rank, self.value_rank = validate_spectral_options(
            head_dim, dv, layer_idx, key_rank, value_rank, block_size, hot_window, svd, backend, basis_dtype,
            value_layout)
        self.value_layout = value_layout
        super().__init__(batch_size, max_len)
        dtype = dtype or torch.get_default_dtype()
        self.dtype, self.device = dtype, torch.device(device) if device is not None else torch.device("cpu")
        self.layer_idx = layer_idx
        self.n_kv_heads, self.head_dim, self.v_head_dim = n_kv_heads, head_dim, dv
        self.block_size, self.hot_window = block_size, hot_window
        self.quantize, self.svd, self.backend = bool(quantize), svd, backend
        self.oversample, self.power_iters = oversample, power_iters
        if basis_dtype is None:
            basis_dtype = (torch.bfloat16 if dtype == torch.bfloat16 else torch.float16) if self.quantize else dtype
        self.basis_dtype = basis_dtype
        self.coef_dtype = torch.int8 if self.quantize else dtype
        self._gen = None
        self._seed = seed

        b, h, bs = batch_size, n_kv_heads, block_size
        self.hot_cap = hot_window + bs if max_len is None else min(hot_window + bs, max_len)
        nb_cap = (max_len // bs) if max_len is not None else 4
        kw = dict(device=self.device)
        self.hot_k = torch.zeros(b, h, self.hot_cap, head_dim, dtype=dtype, **kw)
        self.hot_v = torch.zeros(b, h, self.hot_cap, dv, dtype=dtype, **kw)
        self.ck = torch.zeros(b, h, nb_cap, bs, self.key_rank, dtype=self.coef_dtype, **kw)
        self.bk = torch.zeros(b, h, nb_cap, self.key_rank, head_dim, dtype=basis_dtype, **kw)
        if value_layout == "token":  # stored [.., value_rank, bs]; self.cv is its transposed view
            self.cv = torch.zeros(b, h, nb_cap, self.value_rank, bs, dtype=self.coef_dtype, **kw).transpose(-1, -2)
        else:
            self.cv = torch.zeros(b, h, nb_cap, bs, self.value_rank, dtype=self.coef_dtype, **kw)
        self.bv = torch.zeros(b, h, nb_cap, self.value_rank, dv, dtype=basis_dtype, **kw)
        self.sk = torch.zeros(b, h, nb_cap, bs, dtype=torch.float32, **kw) if self.quantize else None
        self.sv = torch.zeros(b, h, nb_cap, bs, dtype=torch.float32, **kw) if self.quantize else None
        self.n_blocks = 0
        self.hot_len = 0

    # -- protocol ------------------------------------------------------------------------
    def tensors(self):
        return [t for t in (self.hot_k, self.hot_v, self.ck, self.sk, self.bk, self.cv, self.sv, self.bv)
                if t is not None]

    def reset(self) -> None:
        super().reset()
        self.n_blocks = 0
        self.hot_len = 0

    @property
    def block_capacity(self) -> int:
        return self.ck.shape[2]

    def blocks(self) -> CompressedBlocks:
        """Views of the compressed blocks written so far."""
        n = self.n_blocks
        f = lambda t: None if t is None else t[:, :, :n]
        return CompressedBlocks(f(self.ck), f(self.sk), f(self.bk), f(self.cv), f(self.sv), f(self.bv))

    # -- writing -------------------------------------------------------------------------
    def _check_kv(self, k: torch.Tensor, v: torch.Tensor) -> None:
        want_k = (self.batch_size, self.n_kv_heads, self.head_dim)
        if k.dim() != 4 or (k.shape[0], k.shape[1], k.shape[3]) != want_k:
            raise InputError(f"keys must be [batch={want_k[0]}, kv_heads={want_k[1]}, T, head_dim={want_k[2]}]; "
                             f"got {tuple(k.shape)}")
        if v.dim() != 4 or tuple(v.shape[:3]) != tuple(k.shape[:3]) or v.shape[3] != self.v_head_dim:
            raise InputError(f"values must be [{k.shape[0]}, {k.shape[1]}, {k.shape[2]}, {self.v_head_dim}]; got {tuple(v.shape)}")

    def _grow(self) -> None:
        def grow(t):
            if t is None:
                return None
            if t is self.cv and self.value_layout == "token":  # grow the token-major storage
                base = t.transpose(-1, -2)
                return torch.cat([base, torch.zeros_like(base)], dim=2).transpose(-1, -2)
            return torch.cat([t, torch.zeros_like(t)], dim=2)

        self.ck, self.sk, self.bk = grow(self.ck), grow(self.sk), grow(self.bk)
        self.cv, self.sv, self.bv = grow(self.cv), grow(self.sv), grow(self.bv)

    def _generator(self):
        if self._gen is None:
            self._gen = torch.Generator(device=self.device)
            self._gen.manual_seed(self._seed)
        return self._gen

    def _compress_blocks(self, k: torch.Tensor, v: torch.Tensor, max_batch: int = 1024) -> None:
        """Compress k [B, H, n*bs, d], v into blocks n_blocks..n_blocks+n-1 (batched SVDs)."""
        bs, b, h = self.block_size, self.batch_size, self.n_kv_heads
        n = k.shape[2] // bs
        while self.n_blocks + n > self.block_capacity:
            self._grow()
        n0 = self.n_blocks
        gen = self._generator() if self.svd == "randomized" else None
        for src, rank, c_buf, s_buf, b_buf in ((k, self.key_rank, self.ck, self.sk, self.bk),
                                               (v, self.value_rank, self.cv, self.sv, self.bv)):
            x = src.reshape(b * h * n, bs, src.shape[-1])
            parts = [truncated_svd(x[i:i + max_batch], rank, self.svd, self.oversample, self.power_iters, gen)
                     for i in range(0, x.shape[0], max_batch)]
            coef = torch.cat([p[0] for p in parts]).view(b, h, n, bs, rank)
            basis = torch.cat([p[1] for p in parts]).view(b, h, n, rank, -1)
            if self.quantize:
                cq, scale = quantize_rows(coef)
                c_buf[:, :, n0:n0 + n] = cq
                s_buf[:, :, n0:n0 + n] = scale
            else:
                c_buf[:, :, n0:n0 + n] = coef.to(c_buf.dtype)
            b_buf[:, :, n0:n0 + n] = basis.to(b_buf.dtype)
        self.n_blocks = n0 + n

    def _compress_oldest_block(self) -> None:
        """Compress hot[:bs] into the next block and shift the remaining hot tokens down."""
        bs = self.block_size
        self._compress_blocks(self.hot_k[:, :, :bs], self.hot_v[:, :, :bs])
        rest = self.hot_len - bs
        if rest > 0:
            self.hot_k[:, :, :rest] = self.hot_k[:, :, bs:self.hot_len].clone()
            self.hot_v[:, :, :rest] = self.hot_v[:, :, bs:self.hot_len].clone()
        self.hot_len = rest

    def _write(self, k: torch.Tensor, v: torch.Tensor) -> None:
        t = k.shape[-2]
        a = self.hot_len
        self.hot_k[:, :, a:a + t] = k
        self.hot_v[:, :, a:a + t] = v
        self.hot_len = a + t
        self.seen += t

    def _segments(self, t: int):
        """Split t new tokens so that each part fits in the hot buffer before a compression."""
        i = 0
        while i < t:
            room = self.hot_cap - self.hot_len
            take = min(t - i, room)
            yield i, i + take
            i += take

    def _maybe_compress(self) -> None:
        if self.hot_len == self.hot_cap and self.hot_len >= self.block_size:
            self._compress_oldest_block()

    @torch.no_grad()
    def append(self, k: torch.Tensor, v: torch.Tensor) -> None:
        """Write k [B, Hk, T, d], v [B, Hk, T, dv] (post-RoPE) without computing attention."""
        self._check_kv(k, v)
        t = k.shape[-2]
        self.check_room(t)
        start = 0
        if self.hot_len == 0 and t >= self.hot_cap and self.hot_cap >= self.block_size:
            # whole blocks straight from the input, all at once (same result as one by one)
            n = (t - self.hot_window) // self.block_size
            self._compress_blocks(k[:, :, :n * self.block_size], v[:, :, :n * self.block_size])
            self.seen += n * self.block_size
            start = n * self.block_size
        for a, e in self._segments(t - start):
            self._write(k[:, :, start + a:start + e], v[:, :, start + a:start + e])
            self._maybe_compress()

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale=None, window=None) -> torch.Tensor:
        """Append the new tokens and return attention of q [B, Hq, T, d] over everything cached,
        computed in the compressed space. [B, Hq, T, dv]."""
        self._check_kv(k, v)
        if q.dim() != 4 or q.shape[0] != k.shape[0] or q.shape[2] != k.shape[2] or q.shape[3] != self.head_dim \
                or q.shape[1] % self.n_kv_heads:
            raise InputError(f"queries must be [B, Hq, T, {self.head_dim}] with Hq a multiple of "
                             f"{self.n_kv_heads} and T = {k.shape[2]}; got {tuple(q.shape)}")
        self.check_room(k.shape[-2])
        outs = []
        with torch.no_grad():
            for a, e in self._segments(k.shape[-2]):
                self._write(k[:, :, a:e], v[:, :, a:e])
                outs.append(self._attention(q[:, :, a:e], scale, window))
                self._maybe_compress()
        return outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)

    # -- reading -------------------------------------------------------------------------
    def use_kernel(self, q: torch.Tensor, window) -> bool:
        if self.backend == "torch" or q.shape[2] != 1 or window is not None or not HAS_TRITON:
            return False
        return self.backend == "triton" or q.is_cuda

    def _attention(self, q: torch.Tensor, scale, window) -> torch.Tensor:
        t = q.shape[2]
        q_start = self.seen - t
        if self.use_kernel(q, window):
            return spectral_decode(q, self.ck, self.sk, self.bk, self.cv, self.sv, self.bv, self.n_blocks,
                                   self.hot_k, self.hot_v, self.hot_len, scale)
        return spectral_attention(q, self.blocks() if self.n_blocks else None, self.hot_k[:, :, :self.hot_len],
                                  self.hot_v[:, :, :self.hot_len], q_start, scale, window)

    def reconstruct(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The dense keys/values [B, Hk, seen, d] (float32) this cache stands for: decompressed
        blocks (same truncation and quantization) followed by the exact hot tokens."""
        ks, vs = [], []
        if self.n_blocks:
            k, v = self.blocks().reconstruct()
            ks.append(k)
            vs.append(v)
        ks.append(self.hot_k[:, :, :self.hot_len].float())
        vs.append(self.hot_v[:, :, :self.hot_len].float())
        return torch.cat(ks, dim=2), torch.cat(vs, dim=2)

    # -- sizes ---------------------------------------------------------------------------
    def bytes_per_block(self) -> int:
        """Bytes one compressed block takes in the held buffers (all batch rows and heads)."""
        per = 0
        for t in (self.ck, self.sk, self.bk, self.cv, self.sv, self.bv):
            if t is not None:
                per += t[:, :, :1].numel() * t.element_size()
        return per

    def bytes_per_hot_token(self) -> int:
        return (self.hot_k[:, :, :1].numel() * self.hot_k.element_size()
                + self.hot_v[:, :, :1].numel() * self.hot_v.element_size())

    def stats(self) -> dict:
        """Compression of the tokens held now: bytes in use vs a dense cache of the same dtype."""
        used = self.n_blocks * self.bytes_per_block() + self.hot_len * self.bytes_per_hot_token()
        dense = self.seen * self.bytes_per_hot_token()
        comp_dense = self.n_blocks * self.block_size * self.bytes_per_hot_token()
        return {
            "layer": self.layer_idx, "key_rank": self.key_rank, "value_rank": self.value_rank,
            "block_size": self.block_size, "hot_window": self.hot_window, "quantize": self.quantize,
            "svd": self.svd, "seen": self.seen, "compressed_blocks": self.n_blocks, "hot_tokens": self.hot_len,
            "bytes_used": used, "dense_bytes": dense,
            "compression_ratio": dense / used if used else 1.0,
            "block_compression_ratio": comp_dense / (self.n_blocks * self.bytes_per_block()) if self.n_blocks else
            self.block_size * self.bytes_per_hot_token() / self.bytes_per_block(),
            "nbytes_held": self.nbytes(),
        }


def cache_stats(model_cache) -> dict:
    """Per-layer stats of the spectral layers of a ModelCache (or a list of caches) and totals."""
    layers = [c.stats() for c in model_cache if isinstance(c, SpectralCache)]
    used = sum(s["bytes_used"] for s in layers)
    dense = sum(s["dense_bytes"] for s in layers)
    return {"layers": layers, "key_ranks": [s["key_rank"] for s in layers],
            "value_ranks": [s["value_rank"] for s in layers], "bytes_used": used, "dense_bytes": dense,
            "compression_ratio": dense / used if used else 1.0}


def dense_ratio(head_dim: int, key_rank: int, value_rank: int, block_size: int, elem: int = 2,
                quantize: bool = True) -> float:
    """Analytic compressed-block ratio (for docs); the cache itself measures from its tensors."""
    dense = 2 * block_size * head_dim * elem
    cb = 1 if quantize else elem
    sc = 4 if quantize else 0
    comp = sum(block_size * r * cb + block_size * sc + r * head_dim * elem for r in (key_rank, value_rank))
    return dense / comp if comp else math.inf
