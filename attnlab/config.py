"""Model configuration: one dataclass, validated as a whole before any tensor is allocated.

Mixer-specific options live in ``mixer_options[<mixer name>]`` (a dict, or the mixer's own
options dataclass) so that a new attention family adds fields without touching this file.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigError


@dataclass
class ModelConfig:
    vocab_size: int = 256
    dim: int = 256
    n_layers: int = 4
    n_heads: int = 4
    n_kv_heads: int | None = None  # None: = n_heads (MHA); 1: MQA; between: GQA
    head_dim: int | None = None  # None: dim // n_heads
    # Layer pattern: a mixer name, or comma-separated names cycled over the layers ("gdn,gdn,mla").
    mixer: str = "mha"
    mixer_options: dict[str, Any] = field(default_factory=dict)
    ffn_hidden: int | None = None  # None: 8/3 * dim rounded up to a multiple of 64
    norm_eps: float = 1e-6
    tie_embeddings: bool = False
    max_seq_len: int = 2048
    rope_theta: float = 10000.0
    # YaRN context extension (factor 1 = plain RoPE). yarn_original_max_len defaults to max_seq_len.
    yarn_factor: float = 1.0
    yarn_original_max_len: int | None = None
    yarn_beta_fast: float = 32.0
    yarn_beta_slow: float = 1.0
    init_std: float = 0.02

    def __post_init__(self) -> None:
        self.validate()

    # -- derived -------------------------------------------------------------------------
    @property
    def kv_heads(self) -> int:
        return self.n_heads if self.n_kv_heads is None else self.n_kv_heads

    @property
    def attn_head_dim(self) -> int:
        return self.dim // self.n_heads if self.head_dim is None else self.head_dim

    @property
    def ffn_dim(self) -> int:
        if self.ffn_hidden is not None:
            return self.ffn_hidden
        return -(-int(8 * self.dim / 3) // 64) * 64

    @property
    def layer_mixers(self) -> list[str]:
        names = [n.strip() for n in self.mixer.split(",")]
        return [names[i % len(names)] for i in range(self.n_layers)]

    def options_for(self, mixer_name: str):
        """The mixer's options dataclass, defaults filled in and overrides applied."""
        from .layers.registry import get_mixer

        cls = get_mixer(mixer_name)
        raw = self.mixer_options.get(mixer_name, {})
        if dataclasses.is_dataclass(raw):
            return raw
        return build_dataclass(cls.Options, raw, f"mixer_options.{mixer_name}")

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["mixer_options"] = {
            k: (dataclasses.asdict(v) if dataclasses.is_dataclass(v) else dict(v))
            for k, v in self.mixer_options.items()
        }
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        return build_dataclass(cls, d, "model")

    # -- validation ----------------------------------------------------------------------
    def validate(self) -> None:
        from .layers.registry import get_mixer, mixer_names

        _positive(self, "vocab_size", "dim", "n_layers", "n_heads", "max_seq_len")
        if self.head_dim is None and self.dim % self.n_heads:
            raise ConfigError(
                "n_heads", f"must divide dim={self.dim} (or set head_dim); got {self.n_heads}"
            )
        if self.head_dim is not None and self.head_dim <= 0:
            raise ConfigError("head_dim", f"must be a positive integer; got {self.head_dim}")
        kv = self.kv_heads
        if kv <= 0 or self.n_heads % kv:
            raise ConfigError(
                "n_kv_heads",
                f"must be a positive divisor of n_heads={self.n_heads} "
                f"(1 = MQA, n_heads = MHA); got {self.n_kv_heads}",
            )
        if self.attn_head_dim % 2:
            raise ConfigError("head_dim", f"must be even for RoPE; got {self.attn_head_dim}")
        if self.ffn_hidden is not None and self.ffn_hidden <= 0:
            raise ConfigError("ffn_hidden", f"must be positive; got {self.ffn_hidden}")
        if not self.norm_eps > 0:
            raise ConfigError("norm_eps", f"must be > 0; got {self.norm_eps}")
        if not self.rope_theta > 0:
            raise ConfigError("rope_theta", f"must be > 0; got {self.rope_theta}")
        if not self.yarn_factor >= 1.0:
            raise ConfigError("yarn_factor", f"must be >= 1 (1 = plain RoPE); got {self.yarn_factor}")
        if self.yarn_original_max_len is not None and self.yarn_original_max_len <= 0:
            raise ConfigError(
                "yarn_original_max_len", f"must be positive; got {self.yarn_original_max_len}"
            )
        if not self.yarn_beta_fast > self.yarn_beta_slow > 0:
            raise ConfigError(
                "yarn_beta_fast",
                f"need yarn_beta_fast > yarn_beta_slow > 0; got {self.yarn_beta_fast}, {self.yarn_beta_slow}",
            )
        names = [n.strip() for n in self.mixer.split(",")]
        for n in names:
            if n not in mixer_names():
                raise ConfigError(
                    "mixer", f"unknown mixer {n!r}; registered mixers: {', '.join(mixer_names())}"
                )
        for key in self.mixer_options:
            if key not in mixer_names():
                raise ConfigError(
                    "mixer_options",
                    f"options given for unknown mixer {key!r}; registered: {', '.join(mixer_names())}",
                )
        for n in dict.fromkeys(names + list(self.mixer_options)):
            get_mixer(n).validate(self, self.options_for(n))


def _positive(cfg: Any, *names: str) -> None:
    for n in names:
        v = getattr(cfg, n)
        if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
            raise ConfigError(n, f"must be a positive integer; got {v!r}")


def build_dataclass(cls: type, values: dict[str, Any], where: str):
    """Build ``cls`` from a plain dict, naming any unknown key and the allowed ones."""
    if not isinstance(values, dict):
        raise ConfigError(where, f"expected a table/dict of options; got {type(values).__name__}")
    allowed = {f.name for f in dataclasses.fields(cls)}
    for k in values:
        if k not in allowed:
            raise ConfigError(f"{where}.{k}", f"no such option; allowed: {', '.join(sorted(allowed))}")
    return cls(**values)
