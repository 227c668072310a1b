"""The language model: embeddings, pre-norm blocks (mixer + SwiGLU), final norm, LM head.

Read top to bottom: ``Block`` wraps one mixer; ``LanguageModel`` stacks blocks following the
config's layer pattern, creates the per-layer caches, and generates with them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .caches.base import ModelCache
from .config import ModelConfig
from .errors import ConfigError, InputError
from .layers.registry import get_mixer
from .modules import RMSNorm, SwiGLU


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        name = cfg.layer_mixers[layer_idx]
        self.mixer_name = name
        self.attn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.mixer = get_mixer(name)(cfg, cfg.options_for(name), layer_idx)
        self.attn_norm.lowp_out = self.mixer.lowp_input  # under autocast: bf16 out if only projections read it
        self.ffn_norm = RMSNorm(cfg.dim, cfg.norm_eps, lowp_out=True)
        self.ffn = SwiGLU(cfg.dim, cfg.ffn_dim)

    def forward(self, x, cache=None, segments=None):
        h = self.attn_norm(x)
        x = x + (self.mixer(h, cache) if segments is None else self.mixer(h, cache, segments=segments))
        return x + self.ffn(self.ffn_norm(x))


class LanguageModel(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps, lowp_out=True)
        self.head = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.head.weight = self.embed.weight
        self.init_weights()

    # -- parameters ----------------------------------------------------------------------
    def init_weights(self) -> None:
        """Normal(0, init_std) for matrices; residual output projections scaled by 1/sqrt(2L)."""
        std = self.config.init_std
        for name, m in self.named_modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                s = std / math.sqrt(2 * self.config.n_layers) if name.endswith("out_proj") else std
                nn.init.normal_(m.weight, 0.0, s)
                if getattr(m, "bias", None) is not None:
                    nn.init.zeros_(m.bias)
        for block in self.blocks:
            block.mixer.init_weights()

    def num_parameters(self, exclude_embeddings: bool = False) -> int:
        params = {id(p): p for p in self.parameters()}
        n = sum(p.numel() for p in params.values())
        if exclude_embeddings:
            n -= self.embed.weight.numel()
        return n

    @property
    def aux_loss(self) -> torch.Tensor | None:
        """Sum of auxiliary losses the mixers set in the last forward (None if none did)."""
        losses = [b.mixer.aux_loss for b in self.blocks if b.mixer.aux_loss is not None]
        return torch.stack(losses).sum() if losses else None

    # -- forward -------------------------------------------------------------------------
    def _check_input(self, input_ids: torch.Tensor, cache: ModelCache | None) -> None:
        if not isinstance(input_ids, torch.Tensor):
            raise InputError(f"input_ids must be a tensor; got {type(input_ids).__name__}")
        if input_ids.dtype not in (torch.int64, torch.int32):
            raise InputError(f"input_ids must be int64 or int32 token ids; got {input_ids.dtype}")
        if input_ids.dim() != 2 or input_ids.shape[1] == 0 or input_ids.shape[0] == 0:
            raise InputError(f"input_ids must be [batch, tokens] with tokens >= 1; got shape {tuple(input_ids.shape)}")
        t = input_ids.shape[1]
        if cache is None:
            if t > self.config.max_seq_len:
                raise InputError(f"{t} tokens exceed max_seq_len={self.config.max_seq_len}")
        else:
            if input_ids.shape[0] != cache.batch_size:
                raise InputError(f"batch size {input_ids.shape[0]} != cache batch_size {cache.batch_size}")
            cache.check_room(t)

    @property
    def supports_segments(self) -> bool:
        """Whether every layer can keep packed documents apart (``forward(..., segments=)``)."""
        return all(b.mixer.supports_segments for b in self.blocks)

    def _check_segments(self, input_ids, segments, cache) -> None:
        if cache is not None:
            raise InputError("segments are for training on packed sequences; not supported with a cache")
        if not isinstance(segments, torch.Tensor) or segments.shape != input_ids.shape or segments.is_floating_point():
            raise InputError(f"segments must be an integer tensor shaped like input_ids {tuple(input_ids.shape)}")
        unsupported = sorted({b.mixer_name for b in self.blocks if not b.mixer.supports_segments})
        if unsupported:
            raise InputError(f"mixers {', '.join(unsupported)} cannot keep documents apart (segments); "
                             "mask the loss at separators instead")

    def forward(self, input_ids: torch.Tensor, cache: ModelCache | None = None,
                last_only: bool = False, segments: torch.Tensor | None = None) -> torch.Tensor:
        """Logits [B, T, vocab] (or [B, 1, vocab] with last_only). With a cache, the tokens are
        appended after those it has seen (prefill or decode). ``segments`` [B, T]: document ids of
        packed training sequences; no token attends across documents."""
        self._check_input(input_ids, cache)
        if segments is not None:
            self._check_segments(input_ids, segments, cache)
        x = self.embed(input_ids)
        for i, block in enumerate(self.blocks):
            x = block(x, cache[i] if cache is not None else None, segments)
        if last_only:
            x = x[:, -1:]
        return self.head(self.norm(x))

    def loss(self, input_ids: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
        logits = self(input_ids)
        return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=ignore_index)

    # -- caches and generation -----------------------------------------------------------
    def new_cache(self, batch_size: int, max_len: int | None = None, device=None, dtype=None,
                  kind: str | None = None, **kwargs) -> ModelCache:
        """One cache per layer, each of the type its mixer chooses. ``kind`` (e.g. "spectral")
        applies to every layer whose mixer supports it; others keep their default."""
        max_len = self.config.max_seq_len if max_len is None else max_len
        if batch_size < 1:
            raise InputError(f"batch_size must be >= 1; got {batch_size}")
        if not 1 <= max_len <= self.config.max_seq_len:
            raise InputError(f"max_len must be in 1..max_seq_len={self.config.max_seq_len}; got {max_len}")
        p = next(self.parameters())
        device = p.device if device is None else device
        dtype = p.dtype if dtype is None else dtype
        mixers = [b.mixer for b in self.blocks]
        if kind is not None and not any(kind in m.cache_kinds for m in mixers):
            kinds = sorted({k for m in mixers for k in m.cache_kinds})
            raise ConfigError("cache kind", f"no layer supports {kind!r}; this model's kinds: {', '.join(kinds)}")
        layers = []
        for m in mixers:
            k = kind if kind in m.cache_kinds else None
            layers.append(m.new_cache(batch_size, max_len, device=device, dtype=dtype, kind=k,
                                      **(kwargs if k is not None else {})))
        return ModelCache(layers)

    @torch.inference_mode()
    def generate(self, input_ids: torch.Tensor, max_new_tokens: int, temperature: float = 0.0,
                 top_k: int | None = None, top_p: float | None = None, eos_token_id: int | None = None,
                 generator: torch.Generator | None = None, cache_kind: str | None = None,
                 **cache_kwargs) -> torch.Tensor:
        """Prompt followed by up to max_new_tokens tokens [B, T + N]. temperature 0 is greedy.
        Rows that produced ``eos_token_id`` keep emitting it until all rows are done."""
        if max_new_tokens < 1:
            raise InputError(f"max_new_tokens must be >= 1; got {max_new_tokens}")
        if temperature < 0:
            raise InputError(f"temperature must be >= 0; got {temperature}")
        if top_k is not None and top_k < 1:
            raise InputError(f"top_k must be >= 1 or None; got {top_k}")
        if top_p is not None and not 0 < top_p <= 1:
            raise InputError(f"top_p must be in (0, 1] or None; got {top_p}")
        self._check_input(input_ids, None)
        b, t = input_ids.shape
        cache = self.new_cache(b, t + max_new_tokens, kind=cache_kind, **cache_kwargs)
        logits = self(input_ids, cache=cache, last_only=True)[:, -1]
        out = [input_ids]
        done = torch.zeros(b, dtype=torch.bool, device=input_ids.device)
        for i in range(max_new_tokens):
            nxt = sample_next(logits, temperature, top_k, top_p, generator)
            if eos_token_id is not None:
                nxt = torch.where(done, torch.full_like(nxt, eos_token_id), nxt)
                done |= nxt == eos_token_id
            out.append(nxt[:, None].to(input_ids.dtype))
            if i == max_new_tokens - 1 or (eos_token_id is not None and bool(done.all())):
                break
            logits = self(out[-1], cache=cache)[:, -1]
        return torch.cat(out, dim=1)


def sample_next(logits: torch.Tensor, temperature: float = 0.0, top_k: int | None = None,
                top_p: float | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Next token ids [B] from logits [B, V]: greedy at temperature 0, else top-k/top-p sampling."""
    if temperature == 0.0:
        return logits.argmax(-1)
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, idx = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        # drop tokens once the mass before them already reaches top_p (always keep the first)
        drop = probs.cumsum(-1) - probs >= top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, idx, sorted_logits)
    probs = logits.softmax(-1)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]


def build_model(cfg: ModelConfig, device=None, dtype=None) -> LanguageModel:
    """Validate the config (again: it may have been mutated) and build the model."""
    cfg.validate()
    model = LanguageModel(cfg)
    return model.to(device=device, dtype=dtype) if device is not None or dtype is not None else model
