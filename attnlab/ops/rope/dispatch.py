import torch

from .reference import expand_latent_kv_reference, rope_heads_reference, rope_reference

try:
    from .kernel import expand_latent_kv_triton, rope_heads_triton, rope_triton
except ImportError:  # triton is optional
    rope_triton = rope_heads_triton = expand_latent_kv_triton = None


def _use_kernel(x: torch.Tensor) -> bool:
    # Under torch.compile the reference is better: inductor fuses it into its neighbours, while
    # an opaque kernel would break that fusion (measured: 1.88M -> 1.53M tok/s compiled MHA).
    # (the kernels index with 32-bit offsets: larger tensors take the reference)
    return (x.is_cuda and rope_triton is not None and x.numel() < 2**30
            and not torch.compiler.is_compiling())


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x [..., T, D] (rotate-half layout) by cos/sin [T, D/2]. The fused Triton kernel on
    CUDA (fewer launches: training at small widths is launch-bound), the reference elsewhere."""
    if x.dim() in (3, 4) and _use_kernel(x):
        return rope_triton(x, cos, sin)
    return rope_reference(x, cos, sin)


def rope_heads(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
               n_rot: int | None = None, rope_dim: int | None = None) -> torch.Tensor:
    """RoPE on token-major heads x [B, T, N, D] -> contiguous [B, T, N, D]: the first n_rot heads
    get their last rope_dim columns rotated, the rest is copied (see ``rope_heads_reference``)."""
    if _use_kernel(x):
        return rope_heads_triton(x, cos, sin, n_rot, rope_dim)
    return rope_heads_reference(x, cos, sin, n_rot, rope_dim)


def expand_latent_kv(kv: torch.Tensor, k_rope: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                     nope_dim: int, v_width: int | None = None):
    """MLA's k [B, T, H, dn+dr] and v [B, T, H, max(dv, v_width)] (see ``expand_latent_kv_reference``)."""
    if _use_kernel(kv):
        return expand_latent_kv_triton(kv, k_rope, cos, sin, nope_dim, v_width)
    return expand_latent_kv_reference(kv, k_rope, cos, sin, nope_dim, v_width)
