from .base import LayerCache, ModelCache, held_bytes
from .kv import KVCache, LatentCache, kv_cache_kinds, new_kv_cache, register_kv_cache
from .spectral import SpectralCache  # registers the "spectral" K/V kind

__all__ = ["LayerCache", "ModelCache", "held_bytes", "KVCache", "LatentCache",
           "kv_cache_kinds", "new_kv_cache", "register_kv_cache", "SpectralCache"]
