"""DSALT sparse attention: learned soft local windows + causal landmark tokens.

``dsalt_attention`` dispatches to one of three implementations of the same function
(see ``reference.py`` for the exact semantics):

* ``"reference"``: dense masked softmax in PyTorch (O(T^2) memory; tests, small T, CPU);
* ``"flex"``: ``torch.nn.attention.flex_attention`` with a block mask built from the windows and
  the landmark sets (forward on CPU in eager mode; forward + backward on CUDA);
* ``"triton"``: the attnlab kernel (window K/V blocks, then one pass over the gathered landmark
  K/V, one online softmax; forward and backward). Triton is optional.
"""

from __future__ import annotations

from .reference import (  # noqa: F401
    INVALID_KEY,
    check_args,
    dsalt_reference,
    key_positions,
    landmark_thresholds,
    rank_keys,
    select_landmarks,
    window_log_weight,
    window_ramp,
    window_reach,
)

IMPLS = ("auto", "reference", "flex", "triton")


def triton_available() -> bool:
    try:
        from . import kernel  # noqa: F401
    except Exception:  # pragma: no cover - triton missing or broken
        return False
    return kernel.HAVE_TRITON


def dsalt_attention(q, k, v, win, energy, *, n_max: int, edge: float, n_landmarks: int, block: int,
                    scale: float | None = None, impl: str = "auto"):
    """DSALT attention over a fresh causal sequence; see the module docstring for ``impl``."""
    from ...errors import InputError

    if impl not in IMPLS:
        raise InputError(f"dsalt: impl must be one of {', '.join(IMPLS)}; got {impl!r}")
    if impl == "auto":
        d = q.shape[-1]
        kernel_ok = d >= 16 and not d & (d - 1) and block % 16 == 0
        if q.is_cuda:
            impl = "triton" if kernel_ok and triton_available() else "flex"
        else:
            impl = "reference"
    if impl == "reference":
        return dsalt_reference(q, k, v, win, energy, n_max=n_max, edge=edge, n_landmarks=n_landmarks,
                               block=block, scale=scale)
    if impl == "flex":
        from .flex import dsalt_flex

        return dsalt_flex(q, k, v, win, energy, n_max=n_max, edge=edge, n_landmarks=n_landmarks,
                          block=block, scale=scale)
    from .kernel import dsalt_triton

    return dsalt_triton(q, k, v, win, energy, n_max=n_max, edge=edge, n_landmarks=n_landmarks,
                        block=block, scale=scale)
