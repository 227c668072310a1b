from .base import LayerCache, ModelCache, held_bytes
from .kv import KVCache, LatentCache, kv_cache_kinds, new_kv_cache, register_kv_cache

__all__ = ["LayerCache", "ModelCache", "held_bytes", "KVCache", "LatentCache",
           "kv_cache_kinds", "new_kv_cache", "register_kv_cache"]
