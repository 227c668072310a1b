"""Registry of token mixers by name.

A mixer module registers itself with ``@register_mixer("name")``; every module in
``attnlab.layers`` is imported on first lookup, so a new attention family is one new file.
"""

from __future__ import annotations

import importlib
import pkgutil

_MIXERS: dict[str, type] = {}
_loaded = False


def register_mixer(name: str):
    def deco(cls):
        if name in _MIXERS and _MIXERS[name] is not cls:
            raise RuntimeError(f"mixer {name!r} registered twice ({_MIXERS[name]} and {cls})")
        cls.name = name
        _MIXERS[name] = cls
        return cls

    return deco


def _load_all() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    import attnlab.layers as pkg

    for mod in pkgutil.iter_modules(pkg.__path__):
        if not mod.name.startswith("_"):
            importlib.import_module(f"attnlab.layers.{mod.name}")


def mixer_names() -> list[str]:
    _load_all()
    return sorted(_MIXERS)


def get_mixer(name: str) -> type:
    _load_all()
    try:
        return _MIXERS[name]
    except KeyError:
        from ..errors import ConfigError

        raise ConfigError("mixer", f"unknown mixer {name!r}; registered mixers: {', '.join(sorted(_MIXERS))}") from None
