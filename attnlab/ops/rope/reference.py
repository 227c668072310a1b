import torch
import torch.nn.functional as F


def rope_reference(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate-half RoPE of x [..., T, D] by cos/sin [T, D/2]; float32 math, x's dtype out."""
    half = x.shape[-1] // 2
    xf = x.float()
    x1, x2 = xf[..., :half], xf[..., half:]
    out = torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)
    return out.to(x.dtype)


def rope_heads_reference(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                         n_rot: int | None = None, rope_dim: int | None = None) -> torch.Tensor:
    """x [B, T, N, D] (token-major heads, as a projection produces them) -> [B, T, N, D]: the
    first ``n_rot`` heads (default all) get their last ``rope_dim`` columns (default all D)
    rotated by cos/sin [T, rope_dim/2]; everything else is copied. One call covers MHA's q and k
    heads of a fused qkv projection (v passes through) and MLA's [nope | rope] query heads."""
    n, d = x.shape[2], x.shape[3]
    n_rot = n if n_rot is None else n_rot
    r = d if rope_dim is None else rope_dim
    head = x[:, :, :n_rot]
    rot = rope_reference(head[..., d - r:].transpose(1, 2), cos, sin).transpose(1, 2)
    out = torch.cat([head[..., : d - r], rot], dim=-1) if r < d else rot
    return torch.cat([out, x[:, :, n_rot:]], dim=2) if n_rot < n else out


def expand_latent_kv_reference(kv: torch.Tensor, k_rope: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                               nope_dim: int, v_width: int | None = None):
    """MLA's per-head keys and values from the up-projected latent, token-major.

    kv [B, T, H, dn + dv] (W_ukv c, per head [k_nope | v]), k_rope [B, T, dr] (the shared rope key,
    not yet rotated), cos/sin [T, dr/2] -> k [B, T, H, dn + dr] = [k_nope | rope(k_rope)] and
    v [B, T, H, v_width] (v zero-padded to v_width when given, for kernels that need equal widths)."""
    b, t, h, _ = kv.shape
    k_nope, v = kv[..., :nope_dim], kv[..., nope_dim:]
    kr = rope_reference(k_rope, cos, sin).to(kv.dtype)
    k = torch.cat([k_nope, kr[:, :, None].expand(b, t, h, kr.shape[-1])], dim=-1)
    if v_width is not None and v_width > v.shape[-1]:
        v = F.pad(v, (0, v_width - v.shape[-1]))
    return k, v
