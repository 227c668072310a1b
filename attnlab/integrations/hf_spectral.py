"""The spectral KV cache for stock Hugging Face models (Llama / Mistral / Qwen2 style), through
public transformers 5.x APIs only (no patching of model classes):

* ``SpectralHFCache`` is a ``transformers.Cache`` whose layers hold an attnlab ``SpectralCache``;
  pass it as ``past_key_values=`` to ``model(...)`` or ``model.generate(...)``.
  ``get_seq_length()`` is the logical number of tokens seen.
* ``enable_spectral_attention(model)`` registers the attention function "spectral" with
  ``AttentionInterface`` (and the sdpa mask builder with ``AttentionMaskInterface``) and selects
  it with ``model.set_attn_implementation("spectral")``.

The attention layers call ``cache.update(k, v, layer_idx)`` and then the attention function with
the query. ``update`` keeps the new post-RoPE K/V aside and returns them unchanged; the attention
function takes them, appends them to the layer's spectral cache and computes attention of the
query in the compressed space (``SpectralCache.attend``). Without a spectral cache (training, or
another cache), the "spectral" function is plain SDPA attention.

Limits: batches must not be padded (equal-length prompts; a padding mask raises), no beam
search or cache cropping.
"""

from __future__ import annotations

import threading

import torch

from ..caches.spectral import SpectralCache, cache_stats, validate_spectral_options
from ..errors import ConfigError, InputError
from ..ops.attention import causal_mask

try:
    from transformers import AttentionInterface, Cache
    from transformers.cache_utils import CacheLayerMixin
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
except ImportError as e:  # pragma: no cover
    raise ImportError("attnlab.integrations.hf_spectral needs transformers>=5 (pip install 'attnlab[hf]')") from e

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2")
ATTN_NAME = "spectral"

_handoff = threading.local()  # the layer whose update() was the last one in this thread


def check_supported(config) -> None:
    """Raise ConfigError unless the config is a supported decoder-only architecture."""
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ConfigError("model_type", f"the spectral cache supports Hugging Face model types "
                          f"{', '.join(SUPPORTED_MODEL_TYPES)} (Llama/Mistral/Qwen2-style: RoPE, GQA); got {model_type!r}")


class SpectralHFLayer(CacheLayerMixin):
    """One decoder layer: a lazily created attnlab SpectralCache plus the pending new K/V."""

    is_sliding = False
    is_compileable = False
    is_croppable = False

    def __init__(self, layer_idx: int, options: dict, max_cache_len: int | None = None):
        super().__init__()
        self.layer_idx = layer_idx
        self.options = dict(options)
        self.max_cache_len = max_cache_len
        self.spectral: SpectralCache | None = None
        self.pending: tuple[torch.Tensor, torch.Tensor] | None = None

    def lazy_initialization(self, key_states, value_states) -> None:
        b, hk, _, d = key_states.shape
        self.spectral = SpectralCache(b, self.max_cache_len, hk, d, device=key_states.device,
                                      dtype=key_states.dtype, layer_idx=self.layer_idx,
                                      v_head_dim=value_states.shape[-1], **self.options)
        self.batch_size = b
        self.dtype, self.device = key_states.dtype, key_states.device
        self.is_initialized = True

    def update(self, key_states, value_states, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        if self.pending is not None:
            self.pending = None
            raise RuntimeError(
                f"layer {self.layer_idx}: the attention of the previous step was not computed by the "
                f"'{ATTN_NAME}' attention function, so its tokens never reached the spectral cache. Call "
                "attnlab.integrations.hf_spectral.enable_spectral_attention(model) before using SpectralHFCache.")
        self.pending = (key_states, value_states)
        _handoff.layer = self
        return key_states, value_states

    def attend(self, query, scale, window) -> torch.Tensor:
        k, v = self.pending
        self.pending = None
        return self.spectral.attend(query, k, v, scale=scale, window=window)

    def get_seq_length(self) -> int:
        n = self.spectral.seen if self.spectral is not None else 0
        return n + (self.pending[0].shape[-2] if self.pending is not None else 0)

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.get_seq_length() + query_length, 0

    def get_max_length(self) -> int:
        return -1 if self.max_cache_len is None else self.max_cache_len

    def reset(self) -> None:
        if self.spectral is not None:
            self.spectral.reset()
        self.pending = None

    def reorder_cache(self, beam_idx) -> None:
        raise NotImplementedError("SpectralHFCache does not support beam search (reorder_cache)")

    def crop(self, tokens_to_remove: int) -> None:
        raise NotImplementedError("SpectralHFCache cannot be cropped (compressed blocks are not invertible)")

    def batch_repeat_interleave(self, repeats: int) -> None:
        raise NotImplementedError("SpectralHFCache does not support expanding the batch")

    def batch_select_indices(self, indices) -> None:
        raise NotImplementedError("SpectralHFCache does not support selecting batch rows")


class SpectralHFCache(Cache):
    """transformers Cache holding one attnlab SpectralCache per decoder layer.

    ``SpectralHFCache(model_or_config, key_rank=16, value_rank=32, block_size=512, ...)``; the
    options are those of ``attnlab.caches.spectral.SpectralCache`` (ranks may be per-layer lists
    or callables). ``max_cache_len=None``: block storage grows on demand.
    """

    def __init__(self, model_or_config, max_cache_len: int | None = None, **options):
        config = getattr(model_or_config, "config", model_or_config)
        if hasattr(config, "get_text_config"):
            config = config.get_text_config()
        check_supported(config)
        n_layers = config.num_hidden_layers
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        opts = {"key_rank": 16, "value_rank": 32, "block_size": 512, "hot_window": 0, "svd": "exact",
                "backend": "auto", "basis_dtype": None, **options}
        for i in range(n_layers):  # bad options fail here, before any tensor exists
            validate_spectral_options(head_dim, head_dim, i, opts["key_rank"], opts["value_rank"],
                                      opts["block_size"], opts["hot_window"], opts["svd"], opts["backend"],
                                      opts["basis_dtype"], opts.get("value_layout") or "token")
        super().__init__(layers=[SpectralHFLayer(i, opts, max_cache_len) for i in range(n_layers)])

    def spectral_caches(self) -> list[SpectralCache]:
        return [layer.spectral for layer in self.layers if layer.spectral is not None]

    def stats(self) -> dict:
        """Compression ratio and per-layer ranks (see attnlab.caches.spectral.cache_stats)."""
        return cache_stats(self.spectral_caches())

    def nbytes(self) -> int:
        return sum(c.nbytes() for c in self.spectral_caches())


def _check_no_padding(mask, q_len: int, kv_len: int, window) -> None:
    if mask is None:
        return
    if mask.dtype != torch.bool:
        mask = mask == 0
    want = causal_mask(q_len, kv_len, kv_len - q_len, window, mask.device)
    if mask.shape[-2:] != want.shape or not bool((mask == want).all()):
        raise InputError("the spectral cache does not support padded batches (attention_mask with "
                         "padding); use equal-length prompts")


def spectral_attention_forward(module, query, key, value, attention_mask, dropout: float = 0.0,
                               scaling: float | None = None, sliding_window: int | None = None, **kwargs):
    """Attention function "spectral": compressed-space attention when the layer's cache is a
    SpectralHFCache, SDPA otherwise. Returns (output [B, T, Hq, dv], None)."""
    layer = getattr(_handoff, "layer", None)
    if layer is None or layer.pending is None or layer.layer_idx != getattr(module, "layer_idx", None) \
            or layer.pending[0] is not key:
        sdpa = ALL_ATTENTION_FUNCTIONS["sdpa"]
        return sdpa(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                    sliding_window=sliding_window, **kwargs)
    _handoff.layer = None
    q_len = query.shape[-2]
    try:
        _check_no_padding(attention_mask, q_len, layer.get_seq_length(), sliding_window)
    except InputError:
        layer.pending = None  # leave the cache usable
        raise
    out = layer.attend(query, scaling, sliding_window)
    return out.transpose(1, 2).contiguous(), None


def register_spectral_attention() -> None:
    """Register the "spectral" attention function and its mask builder (idempotent)."""
    AttentionInterface.register(ATTN_NAME, spectral_attention_forward)
    AttentionMaskInterface.register(ATTN_NAME, ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])


def enable_spectral_attention(model):
    """Check the architecture, register the attention function and select it on ``model``."""
    check_supported(model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config)
    register_spectral_attention()
    model.set_attn_implementation(ATTN_NAME)
    return model
