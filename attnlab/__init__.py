"""attnlab: build, train, compare and serve efficient-attention language models."""

from .caches import LayerCache, ModelCache
from .config import ModelConfig
from .errors import ConfigError, InputError
from .layers import Mixer, get_mixer, mixer_names, register_mixer
from .model import LanguageModel, build_model

__version__ = "0.1.0"

__all__ = [
    "ModelConfig", "build_model", "LanguageModel", "Mixer", "register_mixer", "get_mixer",
    "mixer_names", "LayerCache", "ModelCache", "ConfigError", "InputError", "__version__",
]
