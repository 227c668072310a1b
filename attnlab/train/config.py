"""Experiment configuration: model preset + overrides, data, training.

An experiment is built in layers, each overriding the one before:
dataclass defaults < the task's defaults (``TASK_DEFAULTS[data.task]``) < a TOML file < command-line
overrides (``--model.dim 512 --train.lr 3e-4 --data.mqar.num_kv_pairs 16``). Every key is checked:
an unknown one is a ``ConfigError`` naming it and the allowed keys.

TOML layout::

    preset = "shakespeare-384"      # a model preset (attnlab/presets.py)
    [model]                         # ModelConfig fields on top of the preset
    mixer = "mla"
    [model.mixer_options.mla]
    kv_lora_rank = 64
    [data]                          # DataConfig
    task = "shakespeare"
    [train]                         # TrainConfig
    steps = 1000
"""

from __future__ import annotations

import copy
import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from ..cli.common import merge as _merge
from ..config import ModelConfig
from ..errors import ConfigError
from ..presets import preset as model_preset

TASKS = ("shakespeare", "text", "hf", "mqar", "passkey")
TOKENIZERS = ("char", "byte", "bpe")
OPTIMIZERS = ("adamw", "muon")
PRECISIONS = ("auto", "bf16", "fp32")


@dataclass
class MQARConfig:
    """Multi-query associative recall (Zoology): keys from the lower half of the vocabulary,
    values from the upper half, all pairs first, then the keys queried at power-law gaps."""

    # Defaults: the CPU demo (a few hundred steps). Zoology's benchmark uses e.g. vocab_size 8192,
    # 4..64 pairs, seq_len 64..512 and random filler tokens (random_non_queries = true), which
    # takes far longer to learn.
    vocab_size: int = 32
    num_kv_pairs: int = 4
    power_a: float = 0.01  # gap distribution p(g) ~ (g+1)^(power_a - 1): most queries near the pairs
    random_non_queries: bool = False  # filler positions hold random tokens (else token 0)
    val_examples: int = 256


@dataclass
class PasskeyConfig:
    """Passkey retrieval: filler text with "The pass key is NNNNN" hidden at a depth."""

    digits: int = 5
    depths: list = field(default_factory=lambda: [0.1, 0.5, 0.9])
    eval_lengths: list = field(default_factory=list)  # [] = seq_len, 2x, 4x up to model max_seq_len
    eval_examples: int = 8  # per (length, depth)


@dataclass
class DataConfig:
    task: str = "shakespeare"  # shakespeare | text | hf | mqar | passkey
    path: str | None = None  # text: a file or a directory; shakespeare: an explicit input.txt
    cache_dir: str | None = None  # where TinyShakespeare is looked for / downloaded ($ATTNLAB_DATA, ~/.cache/attnlab)
    download: bool = True  # download TinyShakespeare once (sha256 checked) if not found
    glob: str = "*.txt"  # files taken from a directory
    tokenizer: str = "char"  # char | byte | bpe
    bpe_vocab_size: int = 2048
    val_fraction: float = 0.1
    # Task "hf" (needs `datasets`): a Hub dataset name (streamed), a directory saved with
    # save_to_disk, or a builder (json, csv, parquet, text) with local hf_data_files.
    hf_name: str | None = None
    hf_config: str | None = None
    hf_data_files: str | list | dict | None = None  # a file, glob, list of them, or {split: files}
    hf_split: str = "train"
    hf_text_field: str = "text"
    hf_max_docs: int | None = None
    mqar: MQARConfig = field(default_factory=MQARConfig)
    passkey: PasskeyConfig = field(default_factory=PasskeyConfig)


@dataclass
class TrainConfig:
    steps: int = 1000
    batch_size: int = 16
    seq_len: int = 256
    grad_accum: int = 1
    optimizer: str = "adamw"  # adamw | muon (torch.optim.Muon on 2-D hidden matrices + AdamW for the rest)
    lr: float = 1e-3
    muon_lr: float | None = None  # None: lr (Muon uses adjust_lr_fn="match_rms_adamw")
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    warmup_steps: int = 100
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0  # 0 = off
    precision: str = "auto"  # auto (bf16 autocast on CUDA, fp32 on CPU) | bf16 | fp32
    compile: bool = False  # torch.compile the model for training
    activation_checkpointing: bool = False
    # Packed documents: no attention across a separator where every mixer supports it
    # (Mixer.supports_segments); otherwise (and always) no loss across one.
    document_mask: bool = True
    eval_every: int = 100
    eval_batches: int = 8
    checkpoint_every: int = 0  # 0: only at the end
    keep_checkpoints: int = 2
    log_every: int = 10
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    out_dir: str = "runs/train"
    progress: bool = True
    tensorboard: bool = True  # when the tensorboard package is installed


# Defaults per task, applied under the TOML file and the command line.
TASK_DEFAULTS: dict[str, dict[str, Any]] = {
    "mqar": {
        "preset": "mqar-tiny",
        "train": {"seq_len": 32, "batch_size": 64, "steps": 400, "lr": 1e-3, "warmup_steps": 30,
                  "eval_every": 50, "eval_batches": 4, "weight_decay": 0.0},
    },
    "passkey": {
        "preset": "tiny",
        "data": {"tokenizer": "byte"},
        "train": {"seq_len": 128, "batch_size": 32, "steps": 800, "lr": 1e-3, "warmup_steps": 30,
                  "eval_every": 200, "eval_batches": 4, "weight_decay": 0.0},
    },
    "shakespeare": {"preset": "shakespeare-384"},
    "text": {"preset": "tiny"},
    "hf": {"preset": "tiny"},
}


@dataclass
class ExperimentConfig:
    preset: str = "tiny"
    model: dict = field(default_factory=dict)  # ModelConfig fields over the preset
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ExperimentConfig":
        """Layer the task defaults under ``d`` and build (every key checked)."""
        task = d.get("data", {}).get("task", DataConfig.task) if isinstance(d.get("data", {}), dict) else None
        if task is not None and task not in TASKS:
            raise ConfigError("data.task", f"unknown task {task!r}; tasks: {', '.join(TASKS)}")
        merged = _merge(copy.deepcopy(TASK_DEFAULTS.get(task, {})), copy.deepcopy(d))
        exp = build_nested(cls, merged, "")
        exp.validate()
        return exp

    def model_config(self, vocab_size: int | None = None) -> ModelConfig:
        """The preset with the [model] overrides. ``vocab_size``: what the data needs; it replaces
        the preset's unless [model] sets one explicitly (which must then be large enough)."""
        fields = model_preset(self.preset)
        _merge(fields, copy.deepcopy(self.model))
        if vocab_size is not None:
            if "vocab_size" in self.model:
                if self.model["vocab_size"] < vocab_size:
                    raise ConfigError("model.vocab_size", f"{self.model['vocab_size']} is smaller than "
                                      f"the {vocab_size} token ids the data uses")
            else:
                fields["vocab_size"] = vocab_size
        return ModelConfig.from_dict(fields)

    def validate(self) -> None:
        d, t = self.data, self.train
        model_preset(self.preset)  # unknown preset -> ConfigError
        if d.task not in TASKS:
            raise ConfigError("data.task", f"unknown task {d.task!r}; tasks: {', '.join(TASKS)}")
        if d.tokenizer not in TOKENIZERS:
            raise ConfigError("data.tokenizer", f"unknown tokenizer {d.tokenizer!r}; tokenizers: {', '.join(TOKENIZERS)}")
        if not 0 < d.val_fraction < 1:
            raise ConfigError("data.val_fraction", f"must be in (0, 1); got {d.val_fraction}")
        if d.task == "text" and not d.path:
            raise ConfigError("data.path", "task 'text' needs a file or directory (--data.path FILE)")
        if d.task == "hf" and not d.hf_name:
            raise ConfigError("data.hf_name", "task 'hf' needs a dataset name (--data.hf_name NAME)")
        if d.bpe_vocab_size < 260:
            raise ConfigError("data.bpe_vocab_size", f"must be >= 260 (256 bytes + specials); got {d.bpe_vocab_size}")
        for name in ("steps", "batch_size", "seq_len", "grad_accum", "eval_every", "eval_batches",
                     "log_every", "keep_checkpoints"):
            v = getattr(t, name)
            if v < 1:
                raise ConfigError(f"train.{name}", f"must be >= 1; got {v}")
        for name in ("warmup_steps", "checkpoint_every", "seed"):
            if getattr(t, name) < 0:
                raise ConfigError(f"train.{name}", f"must be >= 0; got {getattr(t, name)}")
        if t.optimizer not in OPTIMIZERS:
            raise ConfigError("train.optimizer", f"unknown optimizer {t.optimizer!r}; optimizers: {', '.join(OPTIMIZERS)}")
        if t.precision not in PRECISIONS:
            raise ConfigError("train.precision", f"unknown precision {t.precision!r}; allowed: {', '.join(PRECISIONS)}")
        if not t.lr > 0:
            raise ConfigError("train.lr", f"must be > 0; got {t.lr}")
        if not 0 <= t.min_lr_ratio <= 1:
            raise ConfigError("train.min_lr_ratio", f"must be in [0, 1]; got {t.min_lr_ratio}")
        if t.grad_clip < 0:
            raise ConfigError("train.grad_clip", f"must be >= 0 (0 = off); got {t.grad_clip}")
        m = d.mqar
        if d.task == "mqar":
            if m.vocab_size < 4 or m.num_kv_pairs < 1 or m.num_kv_pairs > m.vocab_size // 2 - 1:
                raise ConfigError("data.mqar.num_kv_pairs", f"need 1 <= num_kv_pairs <= vocab_size//2 - 1 = "
                                  f"{m.vocab_size // 2 - 1} (distinct keys); got {m.num_kv_pairs}")
            if (t.seq_len - 2 * m.num_kv_pairs) // 2 < m.num_kv_pairs:
                raise ConfigError("train.seq_len", f"{t.seq_len} leaves no room for {m.num_kv_pairs} pairs and "
                                  f"their queries: need seq_len >= {4 * m.num_kv_pairs}")
            if not m.power_a > 0:
                raise ConfigError("data.mqar.power_a", f"must be > 0; got {m.power_a}")
        if d.task == "passkey":
            if d.tokenizer != "byte":
                raise ConfigError("data.tokenizer", f"the passkey task is byte-level; got {d.tokenizer!r}")
            for x in d.passkey.depths:
                if not 0 <= x <= 1:
                    raise ConfigError("data.passkey.depths", f"depths are fractions in [0, 1]; got {x}")
            if not 1 <= d.passkey.digits <= 18:
                raise ConfigError("data.passkey.digits", f"must be in 1..18; got {d.passkey.digits}")
        cfg = self.model_config(vocab_size=None)
        if t.seq_len > cfg.max_seq_len:
            raise ConfigError("train.seq_len", f"{t.seq_len} exceeds the model's max_seq_len={cfg.max_seq_len} "
                              f"(raise --model.max_seq_len)")


# -- building dataclasses from nested dicts -------------------------------------------------

def _check_type(value: Any, tp: Any, where: str) -> Any:
    """Accept value if it fits the annotation (int for float, list for list, None for Optional)."""
    if isinstance(tp, str):
        tp = eval(tp, {"list": list, "dict": dict, "str": str, "int": int, "float": float, "bool": bool})
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for o in options:
            if o is type(None):
                continue
            try:
                return _check_type(value, o, where)
            except ConfigError as e:
                errors.append(e)
        raise errors[0]
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float, str, bool, list, dict):
        if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
            raise ConfigError(where, f"expected {tp.__name__}; got {value!r}")
    return value


def build_nested(cls: type, values: dict[str, Any], where: str):
    """Build dataclass ``cls`` from a nested dict, naming any unknown key and wrongly typed value."""
    if not isinstance(values, dict):
        raise ConfigError(where or "config", f"expected a table of options; got {values!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for k, v in values.items():
        name = f"{where}.{k}" if where else k
        if k not in fields:
            raise ConfigError(name, f"no such option; allowed: {', '.join(fields)}")
        f = fields[k]
        sub = f.default_factory() if f.default_factory is not dataclasses.MISSING else None  # type: ignore[misc]
        if dataclasses.is_dataclass(sub):
            kwargs[k] = build_nested(type(sub), v, name)
        else:
            kwargs[k] = _check_type(v, f.type, name)
    return cls(**kwargs)


def diff_dicts(a: dict, b: dict, prefix: str = "") -> list[str]:
    """Lines 'key: a_value -> b_value' for every differing leaf."""
    out = []
    for k in sorted(set(a) | set(b), key=str):
        name = f"{prefix}{k}"
        va, vb = a.get(k, "<absent>"), b.get(k, "<absent>")
        if isinstance(va, dict) and isinstance(vb, dict):
            out += diff_dicts(va, vb, name + ".")
        elif va != vb:
            out.append(f"{name}: {va!r} (checkpoint) vs {vb!r} (this run)")
    return out
