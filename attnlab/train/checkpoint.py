"""Checkpoints without pickle, written atomically.

A checkpoint is a directory ``<run>/checkpoints/step_NNNNNNNN/`` holding

- ``model.safetensors``      the model weights (tied weights stored once);
- ``optimizer.safetensors``  every optimizer state tensor and the RNG states;
- ``state.json``             step, data position, schedule, the optimizers' non-tensor state
                             (hyper-parameters, which tensor is which), RNG bookkeeping;
- ``config.json``            the experiment and the full model config;
- ``tokenizer/``             the run's tokenizer (text tasks), so the directory is self-contained.

It is written into ``.tmp-step_N`` and renamed into place, then ``latest`` (a one-line file) is
replaced atomically; an interrupted write leaves the previous checkpoint and ``latest`` intact.
Loading reads only safetensors and JSON.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, load_model, save_file, save_model

from ..errors import ConfigError
from .config import diff_dicts

MODEL_FILE, OPTIM_FILE, STATE_FILE, CONFIG_FILE = "model.safetensors", "optimizer.safetensors", "state.json", "config.json"
REQUIRED = (MODEL_FILE, OPTIM_FILE, STATE_FILE, CONFIG_FILE)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


# -- optimizer state as tensors + JSON ---------------------------------------------------------

def flatten_optimizer(sd: dict, prefix: str, tensors: dict[str, torch.Tensor]) -> dict:
    """Split an optimizer state_dict into tensors (added to ``tensors``) and a JSON-able rest."""
    state = {}
    for pid, st in sd["state"].items():
        entry = {}
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                name = f"{prefix}.{pid}.{k}"
                tensors[name] = v.detach().cpu().contiguous()
                entry[k] = {"__tensor__": name}
            else:
                entry[k] = v
        state[str(pid)] = entry
    return {"state": state, "param_groups": sd["param_groups"]}


def unflatten_optimizer(flat: dict, tensors: dict[str, torch.Tensor], optimizer) -> dict:
    state = {}
    for pid, entry in flat["state"].items():
        state[int(pid)] = {k: tensors[v["__tensor__"]] if isinstance(v, dict) and "__tensor__" in v else v
                           for k, v in entry.items()}
    groups = []
    for saved, cur in zip(flat["param_groups"], optimizer.param_groups):
        groups.append({k: tuple(v) if isinstance(cur.get(k), tuple) else v for k, v in saved.items()})
    return {"state": state, "param_groups": groups}


def rng_tensors() -> dict[str, torch.Tensor]:
    out = {"rng.cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            out[f"rng.cuda.{i}"] = s
    return out


def restore_rng(tensors: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(tensors["rng.cpu"])
    cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("rng.cuda."))]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


# -- save ---------------------------------------------------------------------------------------

def save_checkpoint(root: str | Path, step: int, model, optimizers: list, state: dict, config: dict,
                    tokenizer_dir: str | Path | None = None, keep: int = 2) -> Path:
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(".tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    name = f"step_{step:08d}"
    tmp = root / f".tmp-{name}"
    tmp.mkdir()
    save_model(model, str(tmp / MODEL_FILE))
    tensors = rng_tensors()
    state = dict(state, optimizers=[flatten_optimizer(o.state_dict(), f"optim{i}", tensors)
                                    for i, o in enumerate(optimizers)])
    save_file(tensors, str(tmp / OPTIM_FILE))
    (tmp / STATE_FILE).write_text(json.dumps(state, indent=1))
    (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=1))
    if tokenizer_dir is not None and Path(tokenizer_dir).is_dir():
        shutil.copytree(tokenizer_dir, tmp / "tokenizer")
    for f in REQUIRED:
        _fsync(tmp / f)
    _fsync(tmp)
    final = root / name
    if final.exists():  # the same step written again (e.g. after a resume): swap it out
        old = root / f".tmp-old-{name}"
        final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(final)
    _write_text(root / "latest", name + "\n")
    _fsync(root)
    steps = sorted(p for p in root.glob("step_*") if p.is_dir())
    for p in steps[:-keep]:
        if p != final:
            shutil.rmtree(p, ignore_errors=True)
    return final


# -- find and load -----------------------------------------------------------------------------

def _complete(d: Path) -> bool:
    return d.is_dir() and all((d / f).is_file() for f in REQUIRED)


def find_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory from a step directory, a ``checkpoints`` directory or a run
    directory (its ``latest``, or else its newest complete checkpoint)."""
    p = Path(path)
    if _complete(p):
        return p
    root = p / "checkpoints" if (p / "checkpoints").is_dir() else p
    latest = root / "latest"
    if latest.is_file():
        d = root / latest.read_text().strip()
        if _complete(d):
            return d
    steps = sorted((d for d in root.glob("step_*") if _complete(d)), reverse=True)
    if steps:
        return steps[0]
    raise ConfigError("checkpoint", f"no complete checkpoint found in {p}")


def read_config(ckpt: Path) -> dict:
    return json.loads((ckpt / CONFIG_FILE).read_text())


def check_same(saved: dict, current: dict, what: str, ckpt: Path) -> None:
    lines = diff_dicts(saved, current)
    if lines:
        raise ConfigError("checkpoint", f"{ckpt} was written for another {what}:\n  " + "\n  ".join(lines))


def load_weights(ckpt: Path, model, expect_model_config: dict | None = None) -> None:
    """Load weights into ``model`` after checking the saved model config equals its config."""
    saved = read_config(ckpt)["model"]
    check_same(saved, expect_model_config if expect_model_config is not None else model.config.to_dict(),
               "model config", ckpt)
    missing, unexpected = load_model(model, str(ckpt / MODEL_FILE), strict=False,
                                     device=str(next(model.parameters()).device))
    if missing or unexpected:
        raise ConfigError("checkpoint", f"{ckpt}: weights do not match the model (missing {missing}, "
                          f"unexpected {unexpected})")


def load_training_state(ckpt: Path, optimizers: list) -> dict:
    """Restore the optimizers and the RNG; return the JSON state (step, data position...)."""
    state = json.loads((ckpt / STATE_FILE).read_text())
    tensors = load_file(str(ckpt / OPTIM_FILE))
    if len(state["optimizers"]) != len(optimizers):
        raise ConfigError("checkpoint", f"{ckpt} holds {len(state['optimizers'])} optimizer states; "
                          f"this run has {len(optimizers)}")
    for flat, opt in zip(state["optimizers"], optimizers):
        opt.load_state_dict(unflatten_optimizer(flat, tensors, opt))
    restore_rng(tensors)
    return state
