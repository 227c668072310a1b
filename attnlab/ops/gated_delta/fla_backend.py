"""Optional fast path: flash-linear-attention's Triton kernels, when installed AND usable.

fla is an optional dependency (``pip install attnlab[fla]``). It is used only if it imports, the
tensors are on a CUDA device, and the GPU/triton pair is one fla runs on: fla 0.6 refuses Hopper
(sm_90) GPUs with triton < 3.7.1. The decision is a pure function of those facts (``fla_verdict``)
so it is tested on CPU with mocks; ``fla_status`` gathers the facts for a device (cached).
"""

from __future__ import annotations

import functools
import importlib
import re

import torch


def _version_tuple(s: str | None) -> tuple[int, ...]:
    if not s:
        return ()
    return tuple(int(x) for x in re.findall(r"\d+", s.split("+")[0])[:3])


HOPPER_MIN_TRITON = (3, 7, 1)


def fla_verdict(device_type: str, capability: tuple[int, int] | None, fla_version: str | None,
                triton_version: str | None, head_dims: tuple[int, int] | None = None) -> tuple[bool, str]:
    """(usable, reason it is not). fla_version None means fla is not importable."""
    if fla_version is None:
        return False, "fla (flash-linear-attention) is not installed"
    if device_type != "cuda":
        return False, f"fla runs on CUDA tensors only (got {device_type})"
    fv, tv = _version_tuple(fla_version), _version_tuple(triton_version)
    if capability is not None and capability[0] == 9 and fv >= (0, 6) and tv < HOPPER_MIN_TRITON:
        return False, (f"fla {fla_version} refuses Hopper GPUs (sm_90) with triton {triton_version} "
                       f"< {'.'.join(map(str, HOPPER_MIN_TRITON))}")
    if head_dims is not None and max(head_dims) > 256:
        return False, f"fla kernels support head dims <= 256 (got {head_dims})"
    return True, ""


def _import_fla():
    """(module with chunk/fused_recurrent functions, fla version) or (None, None)."""
    try:
        fla = importlib.import_module("fla")
        ops = importlib.import_module("fla.ops.gated_delta_rule")
        ops.chunk_gated_delta_rule, ops.fused_recurrent_gated_delta_rule  # noqa: B018
    except Exception:  # ImportError, or a broken install
        return None, None
    return ops, getattr(fla, "__version__", "0")


def _triton_version() -> str | None:
    try:
        import triton

        return triton.__version__
    except Exception:
        return None


@functools.lru_cache(maxsize=None)
def fla_status(device_type: str, device_index: int | None, head_dims: tuple[int, int]) -> tuple[bool, str]:
    ops, version = _import_fla()
    cap = None
    if version is not None and device_type == "cuda" and torch.cuda.is_available():
        cap = torch.cuda.get_device_capability(device_index)
    return fla_verdict(device_type, cap, version, _triton_version(), head_dims)


def fla_gated_delta_rule(q, k, v, g, beta, scale, initial_state, output_final_state, recurrent: bool):
    """Call fla with attnlab's [B, H, T, D] layout (fla wants [B, T, H, D])."""
    ops, _ = _import_fla()
    fn = ops.fused_recurrent_gated_delta_rule if recurrent else ops.chunk_gated_delta_rule
    tr = lambda x: x.transpose(1, 2).contiguous()  # noqa: E731
    h0 = None if initial_state is None else initial_state.float()
    o, final = fn(tr(q), tr(k), tr(v), g.transpose(1, 2).contiguous(), beta.transpose(1, 2).contiguous(),
                  scale=scale, initial_state=h0, output_final_state=output_final_state)
    return o.transpose(1, 2), final
