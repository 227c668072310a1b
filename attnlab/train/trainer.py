"""The training loop.

``Trainer(exp, run_dir).train()`` builds the model from the experiment config, trains it on the
task with AdamW or Muon (+AdamW), a warmup + cosine schedule, gradient accumulation and clipping,
bf16 autocast on CUDA (fp32 on CPU), evaluates periodically, writes metrics to
``<run>/metrics.jsonl`` (and TensorBoard when installed) and atomic checkpoints, and returns a
summary (also written to ``<run>/summary.json``).

Training batch ``i`` is a pure function of (seed, i) and the model has no dropout, so a run
resumed from a checkpoint continues bit-exactly on CPU. A non-finite loss or gradient norm stops
the run before the optimizer step, leaving the last checkpoint untouched.

``torch.compile`` and activation checkpointing are applied here, from outside the model code.
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..model import build_model
from .checkpoint import check_same, find_checkpoint, load_training_state, load_weights, read_config, save_checkpoint
from .data import build_task
from .tasks import IGNORE
from .tokenizers import save_tokenizer

# Train settings a resumed run must share with its checkpoint (others, e.g. steps, may change).
RESUME_KEYS = ("batch_size", "seq_len", "grad_accum", "optimizer", "seed")


class TrainingDiverged(RuntimeError):
    pass


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("train.device", f"{name!r} requested but CUDA is not available")
    try:
        return torch.device(name)
    except RuntimeError:
        raise ConfigError("train.device", f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None


def autocast_factory(device: torch.device, precision: str):
    """A context-manager factory: bf16 autocast on CUDA ('auto' or 'bf16'), else a no-op."""
    if precision == "bf16" and device.type != "cuda":
        raise ConfigError("train.precision", "bf16 autocast is for CUDA; use fp32 (or auto) on CPU")
    if device.type == "cuda" and precision in ("auto", "bf16"):
        return lambda: torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext


def lr_factor(step: int, total: int, warmup: int, min_ratio: float) -> float:
    """Linear warmup over ``warmup`` steps, then cosine from 1 to ``min_ratio`` at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def build_optimizers(model, t, device: torch.device) -> list[torch.optim.Optimizer]:
    """AdamW on everything (weight decay on matrices only), or Muon on the 2-D hidden matrices
    (inside the blocks) with AdamW on embeddings, head, norms and biases."""
    fused = {"fused": True} if device.type == "cuda" else {}
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    adam_kw = dict(lr=t.lr, betas=(t.beta1, t.beta2), **fused)
    if t.optimizer == "adamw":
        decay = [p for n, p in named if p.dim() >= 2]
        rest = [p for n, p in named if p.dim() < 2]
        return [torch.optim.AdamW([{"params": decay, "weight_decay": t.weight_decay},
                                   {"params": rest, "weight_decay": 0.0}], **adam_kw)]
    if not hasattr(torch.optim, "Muon"):
        raise ConfigError("train.optimizer", f"muon needs torch.optim.Muon (torch >= 2.9); this is torch "
                          f"{torch.__version__}: upgrade torch or use --train.optimizer adamw")
    hidden = [p for n, p in named if p.dim() == 2 and n.startswith("blocks.")]
    ids = {id(p) for p in hidden}
    other = [p for n, p in named if id(p) not in ids]
    decay = [p for p in other if p.dim() >= 2]
    rest = [p for p in other if p.dim() < 2]
    muon = torch.optim.Muon(hidden, lr=t.muon_lr or t.lr, weight_decay=t.weight_decay,
                            adjust_lr_fn="match_rms_adamw")
    adam = torch.optim.AdamW([{"params": decay, "weight_decay": t.weight_decay},
                              {"params": rest, "weight_decay": 0.0}], **adam_kw)
    return [muon, adam]


def apply_activation_checkpointing(model) -> None:
    """Recompute each block's activations in the backward pass (training path only)."""
    from torch.utils.checkpoint import checkpoint

    for block in model.blocks:
        inner = block.forward

        def forward(x, cache=None, segments=None, _inner=inner):
            if cache is None and torch.is_grad_enabled():
                return checkpoint(_inner, x, None, segments, use_reentrant=False)
            return _inner(x, cache, segments)

        block.forward = forward


class MetricsLog:
    """Append-only jsonl metrics (+ TensorBoard scalars when available)."""

    def __init__(self, run_dir: Path, resume_step: int | None, tensorboard: bool):
        self.path = run_dir / "metrics.jsonl"
        kept = []
        if resume_step is not None and self.path.is_file():  # drop records past the checkpoint
            kept = [ln for ln in self.path.read_text().splitlines()
                    if ln.strip() and json.loads(ln).get("step", 0) <= resume_step]
        self.path.write_text("".join(ln + "\n" for ln in kept))
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # the tensorboard package is not installed (pip install 'attnlab[tensorboard]')
                SummaryWriter = None
            if SummaryWriter is not None:
                tb_dir = run_dir / "tensorboard"
                if resume_step is None and tb_dir.is_dir():  # a fresh run replaces the old curves too
                    shutil.rmtree(tb_dir)
                # On resume, purge_step drops the events a previous process wrote past the checkpoint.
                purge = None if resume_step is None else resume_step + 1
                self.tb = SummaryWriter(str(tb_dir), purge_step=purge)

    def write(self, record: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for k, v in record.items():
                if k != "step" and isinstance(v, (int, float)):
                    self.tb.add_scalar(f"{record.get('kind', 'train')}/{k}", v, record["step"])

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


class Trainer:
    def __init__(self, exp, run_dir: str | Path | None = None, task=None, log=print):
        self.exp = exp
        t = exp.train
        self.t = t
        self.run_dir = Path(run_dir or t.out_dir)
        self.log = log
        self.device = resolve_device(t.device)
        self.autocast = autocast_factory(self.device, t.precision)
        self.task = task or build_task(exp, self.run_dir / "data")
        self.cfg = exp.model_config(self.task.vocab_size)
        if t.seq_len > self.cfg.max_seq_len:
            raise ConfigError("train.seq_len", f"{t.seq_len} exceeds the model's max_seq_len={self.cfg.max_seq_len}")
        torch.manual_seed(t.seed)
        self.model = build_model(self.cfg).to(self.device)
        self.optimizers = build_optimizers(self.model, t, self.device)
        for opt in self.optimizers:
            for g in opt.param_groups:
                g["initial_lr"] = g["lr"]
        if t.activation_checkpointing:
            apply_activation_checkpointing(self.model)
        self.forward_model = torch.compile(self.model) if t.compile else self.model
        self.document_mask = t.document_mask and self.model.supports_segments
        self.val = self.task.val_batches(t.batch_size, t.eval_batches)
        self.step = 0
        self.evals: list[dict] = []
        self.step_tok_s: list[float] = []
        self.tokenizer_dir = None
        if self.task.tokenizer is not None:
            self.tokenizer_dir = self.run_dir / "tokenizer"
            save_tokenizer(self.task.tokenizer, self.tokenizer_dir)

    # -- pieces ------------------------------------------------------------------------------
    def config_record(self) -> dict:
        return {"experiment": self.exp.to_dict(), "model": self.cfg.to_dict()}

    def loss(self, x: torch.Tensor, y: torch.Tensor, model=None) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean cross-entropy over labelled positions + mixer aux losses, logits)."""
        segments = self.task.segments(x) if self.document_mask else None
        with self.autocast():
            m = model or self.forward_model
            logits = m(x) if segments is None else m(x, segments=segments)
        n = (y != IGNORE).sum().clamp_min(1)
        loss = F.cross_entropy(logits.flatten(0, 1).float(), y.flatten(), ignore_index=IGNORE, reduction="sum") / n
        aux = self.model.aux_loss
        if aux is not None and torch.is_grad_enabled():
            loss = loss + aux.float()
        return loss, logits

    def set_lr(self) -> float:
        f = lr_factor(self.step, self.t.steps, self.t.warmup_steps, self.t.min_lr_ratio)
        for opt in self.optimizers:
            for g in opt.param_groups:
                g["lr"] = g["initial_lr"] * f
        return self.optimizers[0].param_groups[0]["lr"]

    @torch.no_grad()
    def evaluate(self) -> dict:
        self.model.eval()
        sums = torch.zeros(3, dtype=torch.float64, device=self.device)  # loss * n, n, correct
        for x, y in self.val:
            x, y = x.to(self.device), y.to(self.device)
            loss, logits = self.loss(x, y, model=self.model)
            mask = y != IGNORE
            n = mask.sum()
            sums += torch.stack([loss.double() * n, n.double(), (logits.argmax(-1) == y)[mask].sum().double()])
        total, count, correct = sums.tolist()
        val_loss = total / max(count, 1)
        out = {"val_loss": val_loss, "val_ppl": math.exp(min(val_loss, 50.0))}
        if self.task.has_accuracy:
            out["accuracy"] = correct / max(count, 1)
        extra = self.task.extra_metrics(self.model, self.device, self.autocast)
        if "accuracy" in extra and "accuracy" in out:  # keep the teacher-forced one too (passkey digits)
            out["token_accuracy"] = out["accuracy"]
        out.update(extra)
        self.model.train()
        return out

    def save(self) -> Path:
        state = {"step": self.step, "data_position": self.step * self.t.grad_accum,
                 "tokens_seen": self.step * self.tokens_per_step,
                 "schedule": {"kind": "warmup_cosine", "step": self.step, "total": self.t.steps,
                              "warmup": self.t.warmup_steps, "min_lr_ratio": self.t.min_lr_ratio},
                 "evals": self.evals, "torch": torch.__version__}
        return save_checkpoint(self.run_dir / "checkpoints", self.step, self.model, self.optimizers, state,
                               self.config_record(), self.tokenizer_dir, keep=self.t.keep_checkpoints)

    def resume(self, path: str | Path | None = None) -> Path:
        ckpt = find_checkpoint(path or self.run_dir)
        saved = read_config(ckpt)
        where = ("cache_dir", "download")  # where the data is found does not change it (sha256 checked)
        # A data option added after the checkpoint was written counts as its default.
        from dataclasses import asdict

        from .config import DataConfig

        saved_data = {**asdict(DataConfig()), **saved["experiment"]["data"]}
        check_same({k: v for k, v in saved_data.items() if k not in where},
                   {k: v for k, v in self.exp.to_dict()["data"].items() if k not in where}, "data config", ckpt)
        check_same({k: saved["experiment"]["train"][k] for k in RESUME_KEYS},
                   {k: getattr(self.t, k) for k in RESUME_KEYS}, "training setup", ckpt)
        load_weights(ckpt, self.model, self.cfg.to_dict())
        lrs = [[g["initial_lr"] for g in opt.param_groups] for opt in self.optimizers]
        state = load_training_state(ckpt, self.optimizers)
        for opt, group_lrs in zip(self.optimizers, lrs):  # this run's --train.lr applies (e.g. lowered after a NaN)
            for g, lr in zip(opt.param_groups, group_lrs):
                g["initial_lr"] = lr
        self.step, self.evals = state["step"], state["evals"]
        return ckpt

    @property
    def tokens_per_step(self) -> int:
        return self.t.batch_size * self.t.seq_len * self.t.grad_accum

    # -- the loop ----------------------------------------------------------------------------
    def train(self, resume: str | Path | bool | None = None, until: int | None = None) -> dict:
        """Train to ``train.steps`` (or stop after step ``until``, as if interrupted)."""
        t = self.t
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if resume:
            ckpt = self.resume(None if resume is True else resume)
            self.log(f"resumed from {ckpt} at step {self.step}")
        elif self.step == 0 and (self.run_dir / "checkpoints").is_dir():
            self.log(f"starting afresh in {self.run_dir}: its previous checkpoints are replaced "
                     "(use --resume to continue a run)")
            shutil.rmtree(self.run_dir / "checkpoints")
        metrics = MetricsLog(self.run_dir, self.step if resume else None, t.tensorboard)
        (self.run_dir / "config.json").write_text(json.dumps(self.config_record(), indent=1))
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        from tqdm.auto import tqdm

        bar = tqdm(total=t.steps, initial=self.step, disable=None if t.progress else True, dynamic_ncols=True,
                   desc=self.run_dir.name, leave=False)
        last_ckpt = None
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.model.train()
        t_start = time.perf_counter()
        try:
            stop = t.steps if until is None else min(until, t.steps)
            while self.step < stop:
                t0 = time.perf_counter()
                lr = self.set_lr()
                loss_sum = torch.zeros((), device=self.device)
                for micro in range(t.grad_accum):
                    x, y = self.task.train_batch(self.step * t.grad_accum + micro, t.batch_size)
                    x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
                    loss, _ = self.loss(x, y)
                    (loss / t.grad_accum).backward()
                    loss_sum += loss.detach()
                gnorm = torch.nn.utils.clip_grad_norm_(params, t.grad_clip if t.grad_clip > 0 else float("inf"))
                loss_val, gnorm_val = torch.stack([loss_sum / t.grad_accum, gnorm.float()]).tolist()  # one sync
                if not (math.isfinite(loss_val) and math.isfinite(gnorm_val)):
                    where = last_ckpt or find_checkpoint_or_none(self.run_dir)
                    raise TrainingDiverged(
                        f"training stopped at step {self.step + 1}: the loss is {loss_val} and the gradient "
                        f"norm {gnorm_val} (lr {lr:.3g}); no update was applied. Last good checkpoint: "
                        f"{where or 'none written yet'}" + (" (continue with --resume, e.g. with a lower "
                                                            "--train.lr)" if where else ""))
                for opt in self.optimizers:
                    opt.step()
                for opt in self.optimizers:
                    opt.zero_grad(set_to_none=True)
                self.step += 1
                dt = time.perf_counter() - t0
                tok_s = self.tokens_per_step / dt
                self.step_tok_s.append(tok_s)
                bar.update(1)
                bar.set_postfix(loss=f"{loss_val:.4f}", tok_s=f"{tok_s:,.0f}", refresh=False)
                if self.step % t.log_every == 0 or self.step == 1:
                    metrics.write({"kind": "train", "step": self.step, "loss": loss_val, "lr": lr,
                                   "grad_norm": gnorm_val, "tok_s": tok_s})
                if self.step % t.eval_every == 0 or self.step == t.steps:
                    ev = {"kind": "eval", "step": self.step, **self.evaluate()}
                    self.evals.append(ev)
                    metrics.write(ev)
                    bar.write(f"[{self.run_dir.name}] step {self.step}: "
                              + " ".join(f"{k} {v:.4g}" for k, v in ev.items() if isinstance(v, float)))
                if (t.checkpoint_every and self.step % t.checkpoint_every == 0) or self.step == t.steps:
                    last_ckpt = self.save()
        finally:
            bar.close()
            metrics.close()
        elapsed = time.perf_counter() - t_start
        summary = self.summary(elapsed)
        (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=1))
        return summary

    def summary(self, elapsed: float) -> dict:
        skip = min(len(self.step_tok_s) // 10 + 1, max(len(self.step_tok_s) - 1, 0))  # warm-up steps
        tok_s = statistics.median(self.step_tok_s[skip:]) if self.step_tok_s else None
        peak = torch.cuda.max_memory_allocated(self.device) if self.device.type == "cuda" else None
        return {"run_dir": str(self.run_dir), "step": self.step, "params": self.model.num_parameters(),
                "final": self.evals[-1] if self.evals else None, "evals": self.evals,
                "tokens_per_s": tok_s, "peak_memory_bytes": peak, "train_seconds": elapsed,
                "device": str(self.device), "config": self.config_record()}


def find_checkpoint_or_none(run_dir: Path):
    try:
        return find_checkpoint(run_dir)
    except ConfigError:
        return None
