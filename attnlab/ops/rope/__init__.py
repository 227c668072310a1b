"""Rotary embedding application: a plain PyTorch reference and a fused Triton kernel."""

from .reference import rope_reference
from .dispatch import apply_rope

__all__ = ["apply_rope", "rope_reference"]
