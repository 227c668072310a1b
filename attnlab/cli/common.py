"""Shared CLI helpers: model config from a preset plus ``--model.<field> value`` overrides, and
experiment configs (a TOML file plus ``--model.*``, ``--data.*``, ``--train.*`` overrides)."""

from __future__ import annotations

import ast
from typing import Any

from ..config import ModelConfig
from ..errors import ConfigError
from ..presets import preset


def parse_value(text: str) -> Any:
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def parse_overrides(args: list[str]) -> dict[str, Any]:
    """["--model.dim", "512", "--model.mixer_options.mla.kv_lora_rank=64"] -> nested dict."""
    out: dict[str, Any] = {}
    i = 0
    while i < len(args):
        a = args[i]
        if not a.startswith("--"):
            raise ConfigError("arguments", f"unexpected argument {a!r}; overrides look like --model.dim 512")
        if "=" in a:
            key, val = a[2:].split("=", 1)
            i += 1
        else:
            if i + 1 >= len(args):
                raise ConfigError(a[2:], "override needs a value")
            key, val = a[2:], args[i + 1]
            i += 2
        node = out
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = parse_value(val)
    return out


def merge(base: dict, extra: dict) -> dict:
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            merge(base[k], v)
        else:
            base[k] = v
    return base


def model_config(preset_name: str, overrides: dict[str, Any]) -> ModelConfig:
    unknown = [k for k in overrides if k != "model"]
    if unknown:
        raise ConfigError(unknown[0], "unknown override section; this command takes --model.<field>")
    return ModelConfig.from_dict(merge(preset(preset_name), overrides.get("model", {})))


EXPERIMENT_SECTIONS = ("preset", "model", "data", "train")


def load_toml(path: str) -> dict[str, Any]:
    from pathlib import Path

    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib

    p = Path(path)
    if not p.is_file():
        raise ConfigError("config", f"config file not found: {path}")
    try:
        return tomllib.loads(p.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ConfigError("config", f"{path} is not valid TOML: {e}") from None


def experiment_config(config_file: str | None, overrides: dict[str, Any], preset_name: str | None = None,
                      base: dict[str, Any] | None = None):
    """ExperimentConfig from (task defaults <) ``base`` < the TOML file < ``--preset`` < overrides."""
    from ..train.config import ExperimentConfig

    unknown = [k for k in overrides if k not in EXPERIMENT_SECTIONS]
    if unknown:
        raise ConfigError(unknown[0], "unknown override section; use --model.<field>, --data.<field>, "
                          "--train.<field> or --preset NAME")
    d = merge(base or {}, load_toml(config_file) if config_file else {})
    if preset_name is not None:
        d["preset"] = preset_name
    return ExperimentConfig.from_dict(merge(d, overrides))
