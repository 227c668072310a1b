"""Differential attention op: (softmax(Q1K1^T) - lam softmax(Q2K2^T)) V, causal.

``diff_attention(..., impl=)`` dispatches to
- ``"sdpa"``: two SDPA calls sharing V (``reference.diff_attention_sdpa``), any device;
- ``"triton"``: a fused kernel, K/V streamed once, two online-softmax states sharing each V tile,
  forward and backward; the CMD case (one noise head) reads the shared noise head directly instead
  of an expanded copy. ``FUSED_KERNEL`` picks which: ``"hopper"`` (``hopper.py``, session 6: TMA
  descriptors on sm_90+, separate or atomic dQ, measured faster) or ``"v1"`` (``kernel.py``);
- ``"triton-v1"``: always ``kernel.py``'s fused kernel (sessions 1-5);
- ``"noise-once"`` (CMD only: one noise head): the signal stream through SDPA and the shared noise
  stream computed ONCE for all heads by ``noise_once.py``'s kernels (out = A - lam N fused);
- ``"reference"``: explicit float32 softmax maps (tests);
- ``"auto"``: on CUDA with ONE noise head (CMD), ``"noise-once"`` (``AUTO_NOISE_ONCE``, measured
  faster than two SDPA calls, session 5); otherwise sdpa. On an H100 the generic fused kernel is
  correct and uses less memory but is slower than two SDPA calls (benchmarks/RESULTS.md, issue 3),
  so auto does not pick it; set ``AUTO_TRITON = True`` (or ``impl="triton"``) to use it. Session 6's
  ``hopper.py`` narrowed the gap (1.06x at T=4K, 1.28x at 16K), not enough to switch.

``latent_diff_attention`` (``latent.py``) is the training path of diff-mla and cmd-mla: it reads
their projection outputs in place (no concatenation, padding or expanded noise head) and is what
their ``impl="triton"`` means; ``impl="auto"`` picks it on CUDA (``use_fused_latent``).

Triton is optional: without it, importing attnlab works and ``impl="triton"`` raises.
"""

from __future__ import annotations

import torch

from .latent_reference import LatentGeometry, latent_diff_reference
from .reference import diff_attention_reference, diff_attention_sdpa, lam_per_head

IMPLS = ("auto", "sdpa", "triton", "triton-v1", "noise-once", "reference")
FUSED_KERNEL = "hopper"  # what impl="triton" runs: "hopper" (hopper.py) or "v1" (kernel.py)
# measured (H100, bf16, B=1, 16 heads, d 128, fwd+bwd): kernel.py 1.31-1.45x the time of two SDPA
# calls (cuDNN); hopper.py (session 6) 1.06x at T=4K, 1.28x at 16K: still slower, so auto keeps SDPA
AUTO_TRITON = False
# diff-mla / cmd-mla training through latent.py's kernel under impl="auto" (CUDA), for heads up to
# AUTO_LATENT_MAX_WIDTH wide (dn, dv and the noise width). Measured on an H100 (benchmarks/RESULTS.md,
# issue 3, session 2): at dn = dv = 64, dr = 32 (shakespeare-384) the fused path takes 0.68x (diff)
# and 0.58x (cmd) the time of the SDPA path and the eager training step runs 1.2-1.4x faster; at
# dn = dv = 128, dr = 64, T = 4096 it takes 1.00x / 1.20x, so wider heads keep SDPA.
AUTO_LATENT = True
# CMD (one noise head, cuda) under impl="auto" where the latent kernel is not used: the SDPA signal
# stream plus the noise stream computed once (noise_once.py) instead of two SDPA calls with the noise
# head expanded. Session 5 (benchmarks/RESULTS.md, issue 3, "Session 5: differential (CMD kernel)"),
# H100, fwd+bwd: 0.77x the two-call time at B=1, 16 heads, d 128, T=4K, 0.86x at 16K, and 0.91x
# the SDPA path of cmd-mla at 128-wide heads (B=2, T=4K), where auto does not take the latent kernel;
# session 6 ("Session 6: CMD noise-once", the lean dK kernel): 0.80x at 4K, 0.81x at 16K.
# Half precision only (in float32 the kernels' tl.dot runs in TF32; SDPA keeps float32).
AUTO_NOISE_ONCE = True
AUTO_LATENT_MAX_WIDTH = 64


def triton_available() -> bool:
    try:
        from . import kernel  # noqa: F401
    except ImportError:
        return False
    return True


def triton_supported(q1, k1, q2, k2, v) -> bool:
    """The fused kernel's limits: head dims <= 256, q and k over the same positions."""
    return (max(q1.shape[-1], q2.shape[-1], v.shape[-1]) <= 256 and q1.shape[-2] == k1.shape[-2]
            and q1.dtype in (torch.float16, torch.bfloat16, torch.float32))


def resolve_impl(impl: str, q1, k1, q2, k2, v) -> str:
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {', '.join(IMPLS)}; got {impl!r}")
    if impl != "auto":
        return impl
    if AUTO_TRITON and q1.is_cuda and triton_available() and triton_supported(q1, k1, q2, k2, v):
        return "triton"
    if (AUTO_NOISE_ONCE and q1.is_cuda and q2.shape[1] == 1 and k2.shape[1] == 1 and k1.shape[1] == q1.shape[1]
            and v.shape[1] == q1.shape[1] and k1.shape[-2] == q1.shape[-2] and max(q2.shape[-1], v.shape[-1]) <= 256
            and v.dtype in (torch.float16, torch.bfloat16) and triton_available()  # fp32: tl.dot is TF32
            and not torch.compiler.is_compiling()):
        return "noise-once"
    return "sdpa"


def use_fused_latent(impl: str, x: torch.Tensor, geometry: LatentGeometry) -> bool:
    """Whether the latent mixers (diff-mla, cmd-mla) train through ``latent_diff_attention``:
    always for impl="triton"; for "auto" on CUDA where AUTO_LATENT is set and the heads are at most
    AUTO_LATENT_MAX_WIDTH wide (not under torch.compile, where the SDPA path lets inductor fuse
    the projections around it)."""
    if impl == "triton":
        return True
    g = geometry
    return (impl == "auto" and AUTO_LATENT and x.is_cuda
            and max(g.dn, g.dv, g.dn2) <= AUTO_LATENT_MAX_WIDTH and triton_available()
            and not torch.compiler.is_compiling())


def latent_diff_attention(q_all, kvu, kr_pre, lam, cos, sin, geometry):
    """The latent family's fused training kernel, from its projection outputs (latent.py)."""
    from .latent import latent_diff_attention as fused

    return fused(q_all, kvu, kr_pre, lam, cos, sin, geometry)


def diff_attention(q1, k1, q2, k2, v, lam, scale1=None, scale2=None, impl: str = "auto"):
    """Causal differential attention over a fresh sequence (training path). See reference.py
    for the shapes. Returns [B, H, T, DV] in q1's dtype."""
    impl = resolve_impl(impl, q1, k1, q2, k2, v)
    if impl == "sdpa":
        return diff_attention_sdpa(q1, k1, q2, k2, v, lam, scale1, scale2)
    if impl == "reference":
        return diff_attention_reference(q1, k1, q2, k2, v, lam, scale1, scale2)
    if impl == "noise-once":
        if q2.shape[1] != 1 or k2.shape[1] != 1:
            raise ValueError("impl='noise-once' needs ONE noise head (the CMD case): q2, k2 with 1 head")
        from .noise_once import cmd_attention_noise_once

        return cmd_attention_noise_once(q1, k1, q2, k2, v, lam, scale1, scale2)
    positive = all(x is None or float(x) > 0 for x in (scale1, scale2))  # hopper.py needs scale > 0
    if impl == "triton" and FUSED_KERNEL == "hopper" and positive:
        from .hopper import diff_attention_hopper

        return diff_attention_hopper(q1, k1, q2, k2, v, lam, scale1, scale2)
    from .kernel import diff_attention_triton

    return diff_attention_triton(q1, k1, q2, k2, v, lam, scale1, scale2)


__all__ = ["diff_attention", "diff_attention_reference", "diff_attention_sdpa", "lam_per_head",
           "triton_available", "resolve_impl", "IMPLS", "LatentGeometry", "latent_diff_attention",
           "latent_diff_reference", "use_fused_latent"]
