"""Spectral KV compression and attention in the compressed space: the plain PyTorch reference.

A block of ``bs`` cached keys (or values) of one (batch, kv head), ``X [bs, d]``, is stored as
coefficients ``C [bs, r]`` and an orthonormal basis ``Bs [r, d]`` with ``X ~= C @ Bs`` (truncated
SVD: ``C = U_r S_r``, ``Bs = V_r^T``). Coefficients may be quantized to int8 with one scale per
row (token), ``C ~= C_q * s[:, None]``.

Attention never decompresses a block:

    scores_block = (q @ Bs_K^T) @ C_K^T            # [G, bs]: q projected into the key basis
    out         += (p_block @ C_V) @ Bs_V          # aggregation in coefficient space

and the per-row scales factor out of the dots (``(qB . C_q[j]) * s[j]``). Compressed blocks and
the exact "hot" tokens are merged under one softmax by log-sum-exp. GQA: the G query heads of a
kv head are folded into the query rows, so K/V are never repeated.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

_LOG_TINY = -1e30
KERNEL_TILE = 16  # block_size must be a multiple of this (the token tile of the Triton kernel)


# ---------------------------------------------------------------------------------------------
# compression
# ---------------------------------------------------------------------------------------------
def truncated_svd(x: torch.Tensor, rank: int, method: str = "exact", oversample: int = 8,
                  power_iters: int = 2, generator: torch.Generator | None = None):
    """x [N, n, d] -> (coef [N, n, rank], basis [N, rank, d]) in float32 with x ~= coef @ basis.

    ``method="exact"``: LAPACK/cuSOLVER SVD. ``method="randomized"``: range finder with
    ``oversample`` extra columns and ``power_iters`` power iterations (Halko et al.), then an
    exact SVD of the small projected matrix.
    """
    x = x.float()
    n, d = x.shape[-2:]
    if method == "exact" or rank + oversample >= min(n, d):
        u, s, vh = _svd(x)
        return u[..., :rank] * s[..., None, :rank], vh[..., :rank, :]
    if method != "randomized":
        raise ValueError(f"svd method must be 'exact' or 'randomized'; got {method!r}")
    k = rank + oversample
    omega = torch.randn(x.shape[0], d, k, device=x.device, dtype=x.dtype, generator=generator)
    y = x @ omega
    for _ in range(power_iters):
        qy = torch.linalg.qr(y).Q
        z = torch.linalg.qr(x.transpose(-1, -2) @ qy).Q
        y = x @ z
    qy = torch.linalg.qr(y).Q  # [N, n, k]
    small = qy.transpose(-1, -2) @ x  # [N, k, d]
    ub, s, vh = torch.linalg.svd(small, full_matrices=False)
    u = qy @ ub
    return u[..., :rank] * s[..., None, :rank], vh[..., :rank, :]


def _svd(x: torch.Tensor):
    """Thin SVD. On CUDA, tall batches use cuSOLVER's batched gesvda (one launch instead of a
    loop over the batch); its result is checked and the default driver used if it is off."""
    if x.is_cuda and x.dim() == 3 and x.shape[-2] >= x.shape[-1]:
        try:
            u, s, vh = torch.linalg.svd(x, full_matrices=False, driver="gesvda")
            err = ((u * s[..., None, :]) @ vh - x).norm() / x.norm().clamp_min(1e-30)
            if bool(torch.isfinite(err)) and err.item() < 1e-4:
                return u, s, vh
        except RuntimeError:
            pass
    return torch.linalg.svd(x, full_matrices=False)


def quantize_rows(c: torch.Tensor):
    """Symmetric int8 per row: c [..., r] -> (int8 [..., r], scale float32 [...]) with c ~= q * scale."""
    scale = c.abs().amax(-1).float().clamp_min(1e-30) / 127.0
    q = torch.round(c.float() / scale[..., None]).clamp_(-127, 127).to(torch.int8)
    return q, scale


# ---------------------------------------------------------------------------------------------
# the compressed state (views over the cache's buffers, first n blocks)
# ---------------------------------------------------------------------------------------------
@dataclass
class CompressedBlocks:
    """Compressed blocks of one layer: per (batch, kv head, block).

    ck [B, H, N, bs, rk] (int8 or float), sk [B, H, N, bs] float32 or None, bk [B, H, N, rk, d];
    cv [B, H, N, bs, rv], sv, bv [B, H, N, rv, dv]. Block n holds positions n*bs .. n*bs+bs-1.
    """

    ck: torch.Tensor
    sk: torch.Tensor | None
    bk: torch.Tensor
    cv: torch.Tensor
    sv: torch.Tensor | None
    bv: torch.Tensor

    @property
    def n_blocks(self) -> int:
        return self.ck.shape[2]

    @property
    def block_size(self) -> int:
        return self.ck.shape[3]

    def slice(self, a: int, b: int) -> "CompressedBlocks":
        f = lambda t: None if t is None else t[:, :, a:b]
        return CompressedBlocks(f(self.ck), f(self.sk), f(self.bk), f(self.cv), f(self.sv), f(self.bv))

    def coefficients(self, which: str) -> torch.Tensor:
        """Dequantized coefficients (float32) of keys ("k") or values ("v")."""
        c, s = (self.ck, self.sk) if which == "k" else (self.cv, self.sv)
        c = c.float()
        return c if s is None else c * s[..., None]

    def reconstruct(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Dense keys [B, H, N*bs, d] and values [B, H, N*bs, dv] (float32) these blocks stand for."""
        k = self.coefficients("k") @ self.bk.float()
        v = self.coefficients("v") @ self.bv.float()
        return k.flatten(2, 3), v.flatten(2, 3)


# ---------------------------------------------------------------------------------------------
# attention
# ---------------------------------------------------------------------------------------------
def _fold_gqa(q: torch.Tensor, hk: int) -> torch.Tensor:
    """q [B, Hq, T, d] -> [B, Hk, G*T, d] (rows g-major); no copy of K/V needed."""
    b, hq, t, d = q.shape
    return q.reshape(b, hk, (hq // hk) * t, d)


def _unfold_gqa(o: torch.Tensor, hq: int, t: int) -> torch.Tensor:
    b, hk, gt, d = o.shape
    return o.reshape(b, hq, t, d)


def _merge(parts):
    """Log-sum-exp merge of partial softmax results [(m, l, o_unnormalized)] -> normalized output."""
    m = parts[0][0]
    for mi, _, _ in parts[1:]:
        m = torch.maximum(m, mi)
    l_tot = 0.0
    o_tot = 0.0
    for mi, li, oi in parts:
        w = torch.exp(mi - m)
        l_tot = l_tot + li * w
        o_tot = o_tot + oi * w[..., None]
    return o_tot / l_tot[..., None]


def compressed_partial(qg: torch.Tensor, blocks: CompressedBlocks, scale: float,
                       q_pos: torch.Tensor | None = None, window: int | None = None,
                       block_offset: int = 0, max_elems: int = 1 << 26):
    """Partial softmax of folded queries qg [B, H, R, d] over compressed blocks, in the compressed
    space. Returns (m [B,H,R], l [B,H,R], o [B,H,R,dv]) unnormalized, float32.

    q_pos [R] (positions of the query rows) and window mask keys older than the window;
    compressed keys always precede every query, so no causal mask is needed.
    """
    b, h, r, _ = qg.shape
    n, bs = blocks.n_blocks, blocks.block_size
    dv = blocks.bv.shape[-1]
    qg = qg.float()
    m_acc = torch.full((b, h, r), _LOG_TINY, device=qg.device)
    l_acc = torch.zeros(b, h, r, device=qg.device)
    o_acc = torch.zeros(b, h, r, dv, device=qg.device)
    step = max(1, max_elems // max(1, b * h * r * bs))
    for a in range(0, n, step):
        blk = blocks.slice(a, min(n, a + step))
        qb = torch.einsum("bhqd,bhnrd->bhnqr", qg, blk.bk.float())  # query in each key basis
        s = torch.einsum("bhnqr,bhntr->bhnqt", qb, blk.ck.float())  # scores over coefficients
        if blk.sk is not None:
            s = s * blk.sk[:, :, :, None, :]
        s = s * scale
        if window is not None and q_pos is not None:
            kpos = (block_offset + a) * bs + torch.arange(s.shape[2] * bs, device=qg.device).view(-1, bs)
            allowed = kpos[None, :, :] > (q_pos[:, None, None] - window)  # [R, n, bs]
            s = s.masked_fill(~allowed.permute(1, 0, 2)[None, None], float("-inf"))
        m = s.amax(dim=(2, 4)).clamp_min(_LOG_TINY)  # [B, H, R]
        p = torch.exp(s - m[:, :, None, :, None])
        l = p.sum(dim=(2, 4))
        if blk.sv is not None:
            p = p * blk.sv[:, :, :, None, :]
        pc = torch.einsum("bhnqt,bhntr->bhnqr", p, blk.cv.float())  # aggregate in coefficient space
        o = torch.einsum("bhnqr,bhnrd->bhqd", pc, blk.bv.float())
        m_new = torch.maximum(m_acc, m)
        wa, wb = torch.exp(m_acc - m_new), torch.exp(m - m_new)
        l_acc = l_acc * wa + l * wb
        o_acc = o_acc * wa[..., None] + o * wb[..., None]
        m_acc = m_new
    return m_acc, l_acc, o_acc


def dense_partial(qg: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float,
                  q_pos: torch.Tensor, k_pos0: int, window: int | None = None):
    """Partial softmax of folded queries over exact keys k [B,H,S,d] at positions k_pos0.., causal."""
    s = (qg.float() @ k.float().transpose(-1, -2)) * scale  # [B, H, R, S]
    kpos = k_pos0 + torch.arange(k.shape[-2], device=qg.device)
    allowed = kpos[None, :] <= q_pos[:, None]
    if window is not None:
        allowed = allowed & (kpos[None, :] > q_pos[:, None] - window)
    s = s.masked_fill(~allowed, float("-inf"))
    m = s.amax(-1).clamp_min(_LOG_TINY)
    p = torch.exp(s - m[..., None])
    return m, p.sum(-1), p @ v.float()


def spectral_attention(q: torch.Tensor, blocks: CompressedBlocks | None, hot_k: torch.Tensor,
                       hot_v: torch.Tensor, q_start: int, scale: float | None = None,
                       window: int | None = None) -> torch.Tensor:
    """Attention of q [B, Hq, T, d] (positions q_start..q_start+T-1) over compressed blocks
    (positions 0..N*bs-1) followed by exact hot tokens hot_k/hot_v [B, Hk, S, d] (positions
    N*bs..N*bs+S-1, the queries being the last T of them). Returns [B, Hq, T, dv] in q's dtype."""
    b, hq, t, d = q.shape
    hk = hot_k.shape[1]
    scale = d**-0.5 if scale is None else scale
    qg = _fold_gqa(q, hk)
    q_pos = (q_start + torch.arange(t, device=q.device)).repeat(hq // hk)  # rows are g-major
    n_comp = 0 if blocks is None else blocks.n_blocks * blocks.block_size
    parts = [dense_partial(qg, hot_k, hot_v, scale, q_pos, n_comp, window)]
    if blocks is not None and blocks.n_blocks > 0:
        parts.append(compressed_partial(qg, blocks, scale, q_pos, window))
    o = _merge(parts)
    return _unfold_gqa(o, hq, t).to(q.dtype)


def next_pow2(x: int) -> int:
    return 1 << max(0, math.ceil(math.log2(max(1, x))))
