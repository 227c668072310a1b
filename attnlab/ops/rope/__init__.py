"""Rotary embedding application: plain PyTorch references and fused Triton kernels.

- ``apply_rope``: rotate [..., T, D] by cos/sin [T, D/2].
- ``rope_heads``: RoPE on token-major heads [B, T, N, D] with pass-through heads/columns (MHA's
  fused qkv, MLA's [nope | rope] query) in one launch.
- ``expand_latent_kv``: MLA's per-head K = [k_nope | rope(k_rope)] and (padded) V in one launch.
"""

from .reference import expand_latent_kv_reference, rope_heads_reference, rope_reference
from .dispatch import apply_rope, expand_latent_kv, rope_heads

__all__ = ["apply_rope", "expand_latent_kv", "expand_latent_kv_reference", "rope_heads",
           "rope_heads_reference", "rope_reference"]
