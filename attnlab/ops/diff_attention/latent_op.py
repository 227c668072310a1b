"""The fused latent kernel (``latent.py``) as a ``torch.library`` custom op, so that
``torch.compile`` keeps it in the graph as one opaque node (forward and backward) instead of
breaking the graph at an autograd.Function that launches Triton kernels. Eager code calls
``LatentDiffAttention`` directly (less dispatch overhead); ``latent_diff_attention`` switches to
this op while compiling.

The geometry travels as two lists (ints, floats): custom ops take no dataclasses."""

from __future__ import annotations

import torch
from torch import Tensor

from . import latent as _L
from .latent_reference import LatentGeometry


def _pack(g: LatentGeometry):
    return [g.heads, g.noise_heads, g.dn, g.dr, g.dv, g.dn2, g.rope2], [g.scale1, g.scale2]


def _unpack(gi, gf) -> LatentGeometry:
    return LatentGeometry(*gi, *gf)


@torch.library.custom_op("attnlab::latent_diff_fwd", mutates_args=())
def latent_diff_fwd(q_all: Tensor, kvu: Tensor, kr_pre: Tensor, lam: Tensor, cos: Tensor, sin: Tensor,
                    gi: list[int], gf: list[float]) -> tuple[Tensor, Tensor]:
    return _L._forward(q_all, kvu, kr_pre, lam, cos, sin, _unpack(gi, gf))[:2]


@latent_diff_fwd.register_fake
def _(q_all, kvu, kr_pre, lam, cos, sin, gi, gf):
    g = _unpack(gi, gf)
    b, t, _ = q_all.shape
    out = q_all.new_empty(b, t, g.heads, g.dv)
    ws = q_all.new_empty(_L._ws_bytes(b, t, g, q_all.dtype, "fwd"), dtype=torch.uint8)
    return out, ws


@torch.library.custom_op("attnlab::latent_diff_bwd", mutates_args=())
def latent_diff_bwd(q_all: Tensor, kvu: Tensor, lam: Tensor, cos: Tensor, sin: Tensor, out: Tensor, ws: Tensor,
                    dout: Tensor, kr_shape: list[int], gi: list[int], gf: list[float]
                    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return _L._backward(q_all, kvu, lam, cos, sin, out, ws, dout, kr_shape, _unpack(gi, gf))


@latent_diff_bwd.register_fake
def _(q_all, kvu, lam, cos, sin, out, ws, dout, kr_shape, gi, gf):
    g = _unpack(gi, gf)
    b, t, _ = q_all.shape
    return (torch.empty_like(q_all), torch.empty_like(kvu), q_all.new_empty(kr_shape),
            q_all.new_empty(b, g.heads, t, dtype=torch.float32))


def _setup(ctx, inputs, output):
    q_all, kvu, kr_pre, lam, cos, sin, gi, gf = inputs
    out, ws = output
    ctx.save_for_backward(q_all, kvu, lam, cos, sin, out, ws)
    ctx.kr, ctx.gi, ctx.gf = list(kr_pre.shape), gi, gf


def _grad(ctx, dout, _dws):
    q_all, kvu, lam, cos, sin, out, ws = ctx.saved_tensors
    dq_all, dkvu, dkr_pre, dl2 = latent_diff_bwd(q_all, kvu, lam, cos, sin, out, ws, dout.contiguous(), ctx.kr,
                                                 ctx.gi, ctx.gf)
    return dq_all, dkvu, dkr_pre, dl2.sum((0, 2)), None, None, None, None  # dl2 = -Delta2


latent_diff_fwd.register_autograd(_grad, setup_context=_setup)


def latent_diff_op(q_all, kvu, kr_pre, lam, cos, sin, g: LatentGeometry) -> Tensor:
    """Same contract as ``latent.latent_diff_attention`` after its input normalisation."""
    gi, gf = _pack(g)
    return latent_diff_fwd(q_all, kvu, kr_pre, lam, cos, sin, gi, gf)[0]
