"""The gated delta rule (GatedDeltaNet, arXiv 2412.06464), three implementations of one op.

``gated_delta_rule(q, k, v, g, beta, ...)`` with q, k [B, H, T, K], v [B, H, T, V], g = log decay
(<= 0) and beta (write strength in (0, 1)) [B, H, T], optional initial state [B, H, K, V]:

- ``impl="naive"``: the token recurrence (``naive.py``), the reference;
- ``impl="chunked"``: WY/UT chunked form in plain PyTorch (``chunked.py``), the portable path
  (and the reference of the Triton path);
- ``impl="triton"``: the same chunked algorithm with attnlab's Triton kernels for the cross-chunk
  recurrence and the outputs, forward and backward (``triton_chunk.py``, ``triton_kernels.py``);
  CUDA tensors, or CPU under ``TRITON_INTERPRET=1`` (tests); triton is optional;
- ``impl="fla"``: flash-linear-attention's kernels (``fla_backend.py``) when installed and usable
  on this device; otherwise one warning and the chunked path;
- ``impl="auto"`` (default): fla when usable, else triton on CUDA when triton is installed and
  the key head dim is <= 128, else chunked, silently.

q and k are used as given (the mixers L2-normalise them). The state is float32.
"""

from __future__ import annotations

import importlib.util
import os
import warnings

import torch

from ...errors import ConfigError
from .chunked import chunk_gated_delta_rule_torch
from .fla_backend import fla_gated_delta_rule, fla_status, fla_verdict
from .naive import naive_gated_delta_rule

IMPLS = ("auto", "chunked", "naive", "fla", "triton")
TRITON_MAX_HEAD_DIM = 128  # key head dim: tiles of [64, K] in registers / shared memory
_warned: set[str] = set()


def check_chunk_size(chunk_size, where: str = "chunk_size") -> None:
    if not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size < 1 \
            or chunk_size & (chunk_size - 1):
        raise ConfigError(where, f"must be a power of two (e.g. 16, 32, 64); got {chunk_size!r}")


def check_impl(impl, where: str = "impl") -> None:
    if impl not in IMPLS:
        raise ConfigError(where, f"must be one of {', '.join(IMPLS)}; got {impl!r}")


def _warn_once(reason: str) -> None:
    if reason not in _warned:
        _warned.add(reason)
        warnings.warn(f"gated_delta_rule: fla path unavailable ({reason}); using the portable "
                      "chunked path (attnlab's Triton kernels on CUDA, else PyTorch)", RuntimeWarning, stacklevel=3)


def triton_available() -> bool:
    """True when triton is installed and attnlab's gated-delta kernels import."""
    if importlib.util.find_spec("triton") is None:
        return False
    try:
        from . import triton_chunk  # noqa: F401
    except Exception:  # pragma: no cover - a broken triton install
        return False
    return True


def _check_triton(q: torch.Tensor) -> None:
    from ...errors import InputError

    if not triton_available():
        raise InputError("gated_delta_rule: impl='triton' needs triton (pip install triton); "
                         "use impl='chunked' or 'auto'")
    if q.device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise InputError(f"gated_delta_rule: impl='triton' needs CUDA tensors (got {q.device.type}; "
                         "TRITON_INTERPRET=1 runs the kernels on CPU, slowly); use impl='chunked' or 'auto'")
    if q.shape[-1] > TRITON_MAX_HEAD_DIM:
        raise InputError(f"gated_delta_rule: impl='triton' supports key head dims <= {TRITON_MAX_HEAD_DIM}; "
                         f"got {q.shape[-1]}")


def resolve_impl(impl: str, q: torch.Tensor, v: torch.Tensor) -> str:
    """The implementation that will run: 'fla', 'triton', 'chunked' or 'naive'."""
    check_impl(impl)
    if impl in ("naive", "chunked"):
        return impl
    if impl == "triton":
        _check_triton(q)
        return impl
    if q.dtype not in (torch.bfloat16, torch.float16):
        ok, reason = False, f"fla's chunk kernels take bf16/fp16 inputs (got {q.dtype})"
    else:
        ok, reason = fla_status(q.device.type, q.device.index, (q.shape[-1], v.shape[-1]))
    if ok:
        return "fla"
    if impl == "fla":
        _warn_once(reason)
    if q.is_cuda and q.shape[-1] <= TRITON_MAX_HEAD_DIM and triton_available():
        return "triton"
    return "chunked"


def gated_delta_rule(q, k, v, g, beta, scale: float | None = None, initial_state=None,
                     output_final_state: bool = False, impl: str = "auto", chunk_size: int = 64,
                     recurrent: bool = False):
    """Returns (o [B, H, T, V], final state [B, H, K, V] float32 or None).

    ``recurrent=True`` asks for the token-by-token form (decode): fla's fused recurrent kernel or
    the naive loop; otherwise the chunked form (fla chunk kernel or the PyTorch chunked path)."""
    check_chunk_size(chunk_size)
    if q.dim() != 4 or k.shape != q.shape or v.shape[:3] != q.shape[:3] or g.shape != q.shape[:3] \
            or beta.shape != q.shape[:3]:
        raise ValueError(f"gated_delta_rule: expected q,k [B,H,T,K], v [B,H,T,V], g,beta [B,H,T]; got "
                         f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}, {tuple(g.shape)}, {tuple(beta.shape)}")
    which = resolve_impl(impl, q, v)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    if which == "fla":
        try:
            return fla_gated_delta_rule(q, k, v, g, beta, scale, initial_state, output_final_state, recurrent)
        except Exception as e:  # a kernel that refuses at run time: fall back, say so once
            _warn_once(f"fla raised {type(e).__name__}: {e}")
    if which == "naive" or recurrent:
        return naive_gated_delta_rule(q, k, v, g, beta, scale, initial_state, output_final_state)
    if which == "triton":
        from .triton_chunk import chunk_gated_delta_rule_triton

        return chunk_gated_delta_rule_triton(q, k, v, g, beta, scale, initial_state, output_final_state,
                                             chunk_size)
    return chunk_gated_delta_rule_torch(q, k, v, g, beta, scale, initial_state, output_final_state, chunk_size)


__all__ = ["gated_delta_rule", "naive_gated_delta_rule", "chunk_gated_delta_rule_torch", "fla_status",
           "fla_verdict", "resolve_impl", "check_chunk_size", "check_impl", "triton_available", "IMPLS"]
