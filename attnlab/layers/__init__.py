"""Token mixers. Each module registers its mixer(s) with ``@register_mixer``; all modules here
are imported on first registry lookup, so a new family is one new file."""

from .base import Mixer
from .registry import get_mixer, mixer_names, register_mixer

__all__ = ["Mixer", "get_mixer", "mixer_names", "register_mixer"]
