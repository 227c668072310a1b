"""Fused RoPE: one read and one write of x per pass (the eager version launches ~9 kernels
forward and as many backward). Backward is the rotation by -theta, the same kernel."""

import torch
import triton
import triton.language as tl


@triton.jit
def _rope_kernel(x_ptr, cos_ptr, sin_ptr, out_ptr, H, T,
                 sxb, sxh, sxt, sob, soh, sot, sign,
                 HALF: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr):
    pid_bh = tl.program_id(0)
    pid_t = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    t = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)[:, None]
    d = tl.arange(0, BLOCK_D)[None, :]
    mask = (t < T) & (d < HALF)
    xb = x_ptr + b * sxb + h * sxh + t * sxt
    x1 = tl.load(xb + d, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(xb + HALF + d, mask=mask, other=0.0).to(tl.float32)
    c = tl.load(cos_ptr + t * HALF + d, mask=mask, other=0.0)
    s = tl.load(sin_ptr + t * HALF + d, mask=mask, other=0.0) * sign
    ob = out_ptr + b * sob + h * soh + t * sot
    tl.store(ob + d, (x1 * c - x2 * s).to(out_ptr.dtype.element_ty), mask=mask)
    tl.store(ob + HALF + d, (x2 * c + x1 * s).to(out_ptr.dtype.element_ty), mask=mask)


def _launch(x4: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, sign: float) -> torch.Tensor:
    b, h, t, d = x4.shape
    out = torch.empty((b, h, t, d), device=x4.device, dtype=x4.dtype)
    if x4.stride(-1) != 1:
        x4 = x4.contiguous()
    half = d // 2
    block_d = triton.next_power_of_2(half)
    block_t = max(1, min(64, 4096 // block_d, triton.next_power_of_2(t)))
    grid = (b * h, triton.cdiv(t, block_t))
    _rope_kernel[grid](x4, cos, sin, out, h, t, x4.stride(0), x4.stride(1), x4.stride(2),
                       out.stride(0), out.stride(1), out.stride(2), sign,
                       HALF=half, BLOCK_T=block_t, BLOCK_D=block_d)
    return out


def _as4d(x):
    return x if x.dim() == 4 else x.reshape(-1, 1, *x.shape[-2:])


class RopeFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, cos, sin):
        cos, sin = cos.float().contiguous(), sin.float().contiguous()
        ctx.save_for_backward(cos, sin)
        ctx.shape = x.shape
        return _launch(_as4d(x), cos, sin, 1.0).view(x.shape)

    @staticmethod
    def backward(ctx, grad):
        cos, sin = ctx.saved_tensors
        return _launch(_as4d(grad), cos, sin, -1.0).view(ctx.shape), None, None


def rope_triton(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    return RopeFunction.apply(x, cos, sin)


# -- RoPE over token-major heads, with pass-through columns and heads -------------------------
@triton.jit
def _rope_heads_kernel(x_ptr, cos_ptr, sin_ptr, out_ptr, T, N, N_ROT,
                       sxb, sxt, sxn, sob, sot, son, sign,
                       D: tl.constexpr, R: tl.constexpr, BLOCK_T: tl.constexpr,
                       BLOCK_P: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr):
    pid_bn = tl.program_id(0)
    pid_t = tl.program_id(1)
    b = pid_bn // N
    n = pid_bn % N
    t = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)[:, None]
    tm = t < T
    xb = x_ptr + b * sxb + n * sxn + t * sxt
    ob = out_ptr + b * sob + n * son + t * sot
    HALF: tl.constexpr = R // 2
    if n < N_ROT:
        if D > R:  # pass-through columns [0, D - R)
            p = tl.arange(0, BLOCK_P)[None, :]
            pm = tm & (p < D - R)
            tl.store(ob + p, tl.load(xb + p, mask=pm, other=0.0), mask=pm)
        h = tl.arange(0, BLOCK_H)[None, :]
        hm = tm & (h < HALF)
        x1 = tl.load(xb + (D - R) + h, mask=hm, other=0.0).to(tl.float32)
        x2 = tl.load(xb + (D - R + HALF) + h, mask=hm, other=0.0).to(tl.float32)
        c = tl.load(cos_ptr + t * HALF + h, mask=hm, other=0.0)
        s = tl.load(sin_ptr + t * HALF + h, mask=hm, other=0.0) * sign
        tl.store(ob + (D - R) + h, (x1 * c - x2 * s).to(out_ptr.dtype.element_ty), mask=hm)
        tl.store(ob + (D - R + HALF) + h, (x2 * c + x1 * s).to(out_ptr.dtype.element_ty), mask=hm)
    else:  # pass-through head
        d = tl.arange(0, BLOCK_D)[None, :]
        dm = tm & (d < D)
        tl.store(ob + d, tl.load(xb + d, mask=dm, other=0.0), mask=dm)


def _rope_heads_launch(x, cos, sin, n_rot, rope_dim, sign):
    b, t, n, d = x.shape
    if x.stride(-1) != 1:
        x = x.contiguous()
    out = torch.empty((b, t, n, d), device=x.device, dtype=x.dtype)
    block_d = triton.next_power_of_2(d)
    block_t = max(1, min(32, 4096 // block_d, triton.next_power_of_2(t)))
    grid = (b * n, triton.cdiv(t, block_t))
    _rope_heads_kernel[grid](x, cos, sin, out, t, n, n_rot, x.stride(0), x.stride(1), x.stride(2),
                             out.stride(0), out.stride(1), out.stride(2), sign,
                             D=d, R=rope_dim, BLOCK_T=block_t,
                             BLOCK_P=triton.next_power_of_2(max(d - rope_dim, 1)),
                             BLOCK_H=triton.next_power_of_2(rope_dim // 2), BLOCK_D=block_d)
    return out


class RopeHeadsFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, cos, sin, n_rot, rope_dim):
        cos, sin = cos.float().contiguous(), sin.float().contiguous()
        ctx.save_for_backward(cos, sin)
        ctx.n_rot, ctx.rope_dim = n_rot, rope_dim
        return _rope_heads_launch(x, cos, sin, n_rot, rope_dim, 1.0)

    @staticmethod
    def backward(ctx, grad):
        cos, sin = ctx.saved_tensors
        return _rope_heads_launch(grad, cos, sin, ctx.n_rot, ctx.rope_dim, -1.0), None, None, None, None


def rope_heads_triton(x, cos, sin, n_rot=None, rope_dim=None):
    """Fused ``rope_heads_reference``: one launch each way, output contiguous [B, T, N, D]."""
    return RopeHeadsFunction.apply(x, cos, sin, x.shape[2] if n_rot is None else n_rot,
                                   x.shape[3] if rope_dim is None else rope_dim)


# -- MLA: per-head K/V from the up-projected latent and the shared rope key --------------------
@triton.jit
def _expand_kv_fwd_kernel(kv_ptr, kr_ptr, cos_ptr, sin_ptr, k_ptr, v_ptr, T, H,
                          skb, skt, skh, srb, srt,
                          DN: tl.constexpr, DV: tl.constexpr, DVP: tl.constexpr, HALF: tl.constexpr,
                          BLOCK_T: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr,
                          BLOCK_H: tl.constexpr):
    b = tl.program_id(0)
    t = tl.program_id(1) * BLOCK_T + tl.arange(0, BLOCK_T)[:, None]
    tm = t < T
    h = tl.arange(0, BLOCK_H)[None, :]
    hm = tm & (h < HALF)
    kr = kr_ptr + b * srb + t * srt
    x1 = tl.load(kr + h, mask=hm, other=0.0).to(tl.float32)
    x2 = tl.load(kr + HALF + h, mask=hm, other=0.0).to(tl.float32)
    c = tl.load(cos_ptr + t * HALF + h, mask=hm, other=0.0)
    s = tl.load(sin_ptr + t * HALF + h, mask=hm, other=0.0)
    r1 = (x1 * c - x2 * s).to(k_ptr.dtype.element_ty)
    r2 = (x2 * c + x1 * s).to(k_ptr.dtype.element_ty)
    dn = tl.arange(0, BLOCK_N)[None, :]
    nm = tm & (dn < DN)
    dv = tl.arange(0, BLOCK_V)[None, :]
    row = (b * T + t) * H  # k, v are contiguous [B, T, H, *]
    for head in range(H):
        src = kv_ptr + b * skb + t * skt + head * skh
        kd = k_ptr + (row + head) * (DN + 2 * HALF)
        tl.store(kd + dn, tl.load(src + dn, mask=nm, other=0.0), mask=nm)
        tl.store(kd + DN + h, r1, mask=hm)
        tl.store(kd + DN + HALF + h, r2, mask=hm)
        vv = tl.load(src + DN + dv, mask=tm & (dv < DV), other=0.0)
        tl.store(v_ptr + (row + head) * DVP + dv, vv, mask=tm & (dv < DVP))


@triton.jit
def _expand_kv_bwd_kernel(gk_ptr, gv_ptr, cos_ptr, sin_ptr, gkv_ptr, gkr_ptr, T, H,
                          sgkb, sgkt, sgkh, sgvb, sgvt, sgvh,
                          DN: tl.constexpr, DV: tl.constexpr, HALF: tl.constexpr,
                          BLOCK_T: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr,
                          BLOCK_H: tl.constexpr):
    b = tl.program_id(0)
    t = tl.program_id(1) * BLOCK_T + tl.arange(0, BLOCK_T)[:, None]
    tm = t < T
    h = tl.arange(0, BLOCK_H)[None, :]
    hm = tm & (h < HALF)
    dn = tl.arange(0, BLOCK_N)[None, :]
    nm = tm & (dn < DN)
    dv = tl.arange(0, BLOCK_V)[None, :]
    vm = tm & (dv < DV)
    acc1 = tl.zeros((BLOCK_T, BLOCK_H), dtype=tl.float32)
    acc2 = tl.zeros((BLOCK_T, BLOCK_H), dtype=tl.float32)
    row = (b * T + t) * H  # gkv is contiguous [B, T, H, DN + DV]
    for head in range(H):
        gk = gk_ptr + b * sgkb + t * sgkt + head * sgkh
        dst = gkv_ptr + (row + head) * (DN + DV)
        tl.store(dst + dn, tl.load(gk + dn, mask=nm, other=0.0), mask=nm)
        acc1 += tl.load(gk + DN + h, mask=hm, other=0.0).to(tl.float32)
        acc2 += tl.load(gk + DN + HALF + h, mask=hm, other=0.0).to(tl.float32)
        gv = gv_ptr + b * sgvb + t * sgvt + head * sgvh
        tl.store(dst + DN + dv, tl.load(gv + dv, mask=vm, other=0.0), mask=vm)
    c = tl.load(cos_ptr + t * HALF + h, mask=hm, other=0.0)
    s = tl.load(sin_ptr + t * HALF + h, mask=hm, other=0.0)
    gr = gkr_ptr + (b * T + t) * (2 * HALF)  # gkr is contiguous [B, T, DR]
    tl.store(gr + h, (acc1 * c + acc2 * s).to(gkr_ptr.dtype.element_ty), mask=hm)
    tl.store(gr + HALF + h, (acc2 * c - acc1 * s).to(gkr_ptr.dtype.element_ty), mask=hm)


def _expand_blocks(t, dn, dv, half):
    return dict(BLOCK_T=max(1, min(32, triton.next_power_of_2(t))), BLOCK_N=triton.next_power_of_2(dn),
                BLOCK_V=triton.next_power_of_2(dv), BLOCK_H=triton.next_power_of_2(half))


class ExpandLatentKVFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, kv, k_rope, cos, sin, nope_dim, v_width):
        b, t, h, w = kv.shape
        dr = k_rope.shape[-1]
        dn, dv = nope_dim, w - nope_dim
        if kv.stride(-1) != 1:
            kv = kv.contiguous()
        if k_rope.stride(-1) != 1:
            k_rope = k_rope.contiguous()
        cos, sin = cos.float().contiguous(), sin.float().contiguous()
        k = torch.empty((b, t, h, dn + dr), device=kv.device, dtype=kv.dtype)
        v = torch.empty((b, t, h, v_width), device=kv.device, dtype=kv.dtype)
        blocks = _expand_blocks(t, dn, max(dv, v_width), dr // 2)
        _expand_kv_fwd_kernel[(b, triton.cdiv(t, blocks["BLOCK_T"]))](
            kv, k_rope, cos, sin, k, v, t, h, kv.stride(0), kv.stride(1), kv.stride(2),
            k_rope.stride(0), k_rope.stride(1), DN=dn, DV=dv, DVP=v_width, HALF=dr // 2, **blocks)
        ctx.save_for_backward(cos, sin)
        ctx.dims = (dn, dv, dr, k_rope.dtype)
        return k, v

    @staticmethod
    def backward(ctx, gk, gv):
        cos, sin = ctx.saved_tensors
        dn, dv, dr, kr_dtype = ctx.dims
        b, t, h, _ = gk.shape
        if gk.stride(-1) != 1:
            gk = gk.contiguous()
        if gv.stride(-1) != 1:
            gv = gv.contiguous()
        gkv = torch.empty((b, t, h, dn + dv), device=gk.device, dtype=gk.dtype)
        gkr = torch.empty((b, t, dr), device=gk.device, dtype=kr_dtype)
        blocks = _expand_blocks(t, dn, dv, dr // 2)
        _expand_kv_bwd_kernel[(b, triton.cdiv(t, blocks["BLOCK_T"]))](
            gk, gv, cos, sin, gkv, gkr, t, h, gk.stride(0), gk.stride(1), gk.stride(2),
            gv.stride(0), gv.stride(1), gv.stride(2), DN=dn, DV=dv, HALF=dr // 2, **blocks)
        return gkv, gkr, None, None, None, None


def expand_latent_kv_triton(kv, k_rope, cos, sin, nope_dim, v_width=None):
    """Fused ``expand_latent_kv_reference``: one launch each way (the backward sums the rope key's
    gradient over heads in registers)."""
    dv = kv.shape[-1] - nope_dim
    return ExpandLatentKVFunction.apply(kv, k_rope, cos, sin, nope_dim, max(dv, v_width or 0))
