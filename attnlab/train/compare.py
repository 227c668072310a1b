"""Side-by-side comparison of mixers: the same data, budget and seeds for every one, validation
loss and task accuracy over seeds, and efficiency measured in the same run.

Per mixer: parameters; validation loss and task accuracy, mean ± std over seeds; training
tokens/s (median step after warm-up); peak GPU memory; KV-cache bytes per token measured from
filled caches (``attnlab info``'s ``measure_cache``); decode milliseconds per token at a stated
context length. Writes ``compare.json``, ``compare.md``, ``loss_curves.png`` and
``cache_bytes.png`` into the output directory.
"""

from __future__ import annotations

import copy
import json
import statistics
from pathlib import Path

import torch

from ..bench import env_info, format_table, time_ms
from ..errors import ConfigError
from ..layers.registry import mixer_names
from .data import TextCorpus, build_task
from .trainer import Trainer, find_checkpoint_or_none


def mixer_pattern(spec: str) -> str:
    """A compare entry is a mixer name or a layer pattern written with '+' ("mha+mla")."""
    names = [n.strip() for n in spec.split("+")]
    for n in names:
        if n not in mixer_names():
            raise ConfigError("mixers", f"unknown mixer {n!r}; registered mixers: {', '.join(mixer_names())}")
    return ",".join(names)


def cache_bytes_per_token(cfg, probe_len: int = 64) -> float:
    """Sum over layers of the bytes each layer's cache grows per token (fp32, measured)."""
    from ..cli.info import measure_cache

    per = {n: measure_cache(cfg, n, probe_len)["bytes/token (fp32)"] for n in dict.fromkeys(cfg.layer_mixers)}
    return sum(per[n] for n in cfg.layer_mixers)


def cache_bytes_at(cfg, contexts: list[int]) -> list[float]:
    """Bytes held by the whole model's caches (fp32) filled to each context length, measured:
    ``measure_cache`` at probe L/2 fills caches of L/2 and L tokens, and fixed + per_token * L is
    the nbytes() it measured at L."""
    from ..cli.info import measure_cache

    out = []
    for L in contexts:
        per = {}
        for n in dict.fromkeys(cfg.layer_mixers):
            m = measure_cache(cfg, n, L // 2)
            per[n] = m["fixed bytes (fp32)"] + m["bytes/token (fp32)"] * L
        out.append(sum(per[n] for n in cfg.layer_mixers))
    return out


DECODE_WARMUP, DECODE_REPEATS = 10, 50


@torch.inference_mode()
def decode_ms_per_token(model, context: int, n_tokens: int = DECODE_REPEATS, warmup: int = DECODE_WARMUP) -> float:
    """Median ms of one decode step with ``context`` tokens already in the cache (batch 1)."""
    total = context + warmup + n_tokens
    if total > model.config.max_seq_len:
        raise ConfigError("decode_context", f"{context} + {warmup + n_tokens} timed tokens exceed the model's "
                          f"max_seq_len={model.config.max_seq_len}")
    model.eval()
    dev = next(model.parameters()).device
    cache = model.new_cache(1, total)
    ids = torch.randint(0, model.config.vocab_size, (1, context), device=dev)
    model(ids, cache=cache)
    tok = ids[:, -1:]
    return time_ms(lambda: model(tok, cache=cache), warmup=warmup, repeats=n_tokens)


def _mean_std(xs: list[float]) -> tuple[float | None, float | None]:
    xs = [x for x in xs if x is not None]
    if not xs:
        return None, None
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def _pm(mean, std, fmt="{:.4f}") -> str:
    return "—" if mean is None else f"{fmt.format(mean)} ± {fmt.format(std)}"


def _train_or_reuse(trainer, resume: bool, log) -> dict:
    """Train; with ``resume``, reuse a finished run of the same config, or continue its checkpoint."""
    if resume:
        done = trainer.run_dir / "summary.json"
        if done.is_file():
            prev = json.loads(done.read_text())
            same = prev["config"] == json.loads(json.dumps(trainer.config_record()))
            if same and prev["step"] == trainer.t.steps:
                log(f"reusing the finished run in {trainer.run_dir}")
                return prev
        if find_checkpoint_or_none(trainer.run_dir) is not None:
            return trainer.train(resume=True)
    return trainer.train()


def run_compare(exp, mixers: list[str], seeds: list[int], out_dir: str | Path,
                decode_context: int | None = None, plots: bool = True, resume: bool = False,
                log=print) -> dict:
    out = Path(out_dir)
    patterns = {spec: mixer_pattern(spec) for spec in mixers}
    if len(set(patterns.values())) != len(patterns):
        raise ConfigError("mixers", f"a mixer is listed twice: {', '.join(mixers)}")
    if not seeds:
        raise ConfigError("seeds", "need at least one seed")
    # Check every config before training anything.
    exps = {}
    for spec, pat in patterns.items():
        e = copy.deepcopy(exp)
        e.model["mixer"] = pat
        e.validate()
        exps[spec] = e
    corpus = None
    if exp.data.task in ("shakespeare", "text", "hf"):
        corpus = TextCorpus.prepare(exp.data, out / "data")
    vocab = build_task(exp, out / "data", corpus).vocab_size
    cfgs = {spec: e.model_config(vocab) for spec, e in exps.items()}
    ctx = decode_context or cfgs[mixers[0]].max_seq_len // 2
    for spec, cfg in cfgs.items():
        extra = DECODE_WARMUP + DECODE_REPEATS
        if ctx + extra > cfg.max_seq_len:
            raise ConfigError("decode_context", f"{ctx} (+{extra} timed tokens) exceeds max_seq_len="
                              f"{cfg.max_seq_len} of {spec}")

    rows, results = [], {}
    for spec in mixers:
        runs = []
        for seed in seeds:
            e = copy.deepcopy(exps[spec])
            e.train.seed = seed
            run_dir = out / "runs" / f"{spec}-seed{seed}"
            trainer = Trainer(e, run_dir, task=build_task(e, out / "data", corpus), log=log)
            s = _train_or_reuse(trainer, resume, log)
            final = s["final"] or {}
            log(f"{spec} seed {seed}: val_loss {final.get('val_loss', float('nan')):.4f}"
                + (f" accuracy {final['accuracy']:.3f}" if "accuracy" in final else "")
                + f" ({s['train_seconds']:.0f}s, {s['tokens_per_s']:,.0f} tok/s)")
            runs.append({"seed": seed, "final": final, "evals": s["evals"], "tokens_per_s": s["tokens_per_s"],
                         "peak_memory_bytes": s["peak_memory_bytes"], "train_seconds": s["train_seconds"]})
        dev = str(next(trainer.model.parameters()).device)
        n_params = trainer.model.num_parameters()
        model = trainer.model
        del trainer  # free the optimizer state before timing and before the next mixer
        if dev.startswith("cuda"):  # time decode as it would be served: bf16 weights and cache
            model = model.to(torch.bfloat16)
        cfg = cfgs[spec]
        loss = _mean_std([r["final"].get("val_loss") for r in runs])
        # The lowest validation loss of each run's evals: a run that overfits (a small corpus over
        # many epochs) ends above it, and the final value alone would rank overfitting speed.
        bests = [min((e for e in r["evals"] if e.get("val_loss") is not None), key=lambda e: e["val_loss"],
                     default=None) for r in runs]
        best = _mean_std([b["val_loss"] if b else None for b in bests])
        acc = _mean_std([r["final"].get("accuracy") for r in runs])
        tps = _mean_std([r["tokens_per_s"] for r in runs])
        peaks = [r["peak_memory_bytes"] for r in runs if r["peak_memory_bytes"] is not None]
        res = {
            "mixer": spec, "pattern": cfg.mixer, "params": n_params,
            "val_loss_mean": loss[0], "val_loss_std": loss[1], "accuracy_mean": acc[0], "accuracy_std": acc[1],
            "best_val_loss_mean": best[0], "best_val_loss_std": best[1],
            "best_val_steps": [b["step"] if b else None for b in bests],
            "tokens_per_s": tps[0], "peak_memory_bytes": max(peaks) if peaks else None,
            "kv_bytes_per_token_fp32": cache_bytes_per_token(cfg),
            "decode_ms_per_token": decode_ms_per_token(model, ctx),
            "runs": runs,
        }
        del model
        if dev.startswith("cuda"):
            torch.cuda.empty_cache()
        results[spec] = res
        extra_keys = sorted({k for r in runs for k in r["final"] if k.startswith("passkey@")},
                            key=lambda k: int(k.split("@")[1]))
        extra = {k: _mean_std([r["final"].get(k) for r in runs]) for k in extra_keys}
        res.update({f"{k}_mean": v[0] for k, v in extra.items()})
        rows.append({
            "mixer": spec, "params": f"{res['params']:,}", "val loss": _pm(*loss),
            "best val loss (step)": _pm(*best) + (f" ({'/'.join(str(b['step']) for b in bests if b)})"
                                                  if any(bests) else ""),
            "task acc": _pm(*acc, fmt="{:.3f}"), **{k: _pm(*v, fmt="{:.2f}") for k, v in extra.items()},
            "train tok/s": f"{tps[0]:,.0f}",
            "peak mem (MiB)": "—" if res["peak_memory_bytes"] is None else f"{res['peak_memory_bytes'] / 2**20:,.0f}",
            "KV B/token (fp32)": f"{res['kv_bytes_per_token_fp32']:,.0f}",
            f"decode ms/token @{ctx}": f"{res['decode_ms_per_token']:.3f}",
        })

    env = env_info()
    t = exp.train
    header = (f"task {exp.data.task}, preset {exp.preset}, {t.steps} steps x {t.batch_size} x {t.seq_len} tokens "
              f"(grad_accum {t.grad_accum}), optimizer {t.optimizer}, lr {t.lr}, seeds {seeds}; device {dev} "
              f"({env['device']}), torch {env['torch']}. Val loss / accuracy: final eval, mean ± std over seeds; best val loss: the lowest periodic "
              f"eval of each seed (its step)"
              f"{' (accuracy = exact-match passkey at the training length)' if exp.data.task == 'passkey' else ''}"
              f"{f' (accuracy at the answer positions; chance {2 / exp.data.mqar.vocab_size:.3f})' if exp.data.task == 'mqar' else ''}. "
              f"Decode: batch 1, {'bf16' if dev.startswith('cuda') else 'fp32'}, median of {DECODE_REPEATS} steps "
              f"({DECODE_WARMUP} warm-up) after {ctx} context tokens. Peak memory: CUDA only.")
    table = format_table(rows)
    out.mkdir(parents=True, exist_ok=True)
    payload = {"env": env, "header": header, "mixers": mixers, "seeds": seeds, "decode_context": ctx,
               "experiment": exp.to_dict(), "results": results}
    (out / "compare.json").write_text(json.dumps(payload, indent=1))
    (out / "compare.md").write_text(f"# attnlab compare\n\n{header}\n\n{table}\n\nCommand: `{env['command']}`\n")
    files = [out / "compare.json", out / "compare.md"]
    if plots:
        chance = 2 / exp.data.mqar.vocab_size if exp.data.task == "mqar" else None
        files += write_plots(results, cfgs, out, exp.data.task, chance)
    return {"table": table, "header": header, "results": results, "files": [str(f) for f in files]}


def write_plots(results: dict, cfgs: dict, out: Path, task: str, chance: float | None = None) -> list[Path]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plots (pip install 'attnlab[train]')")
        return []
    has_acc = any(r["accuracy_mean"] is not None for r in results.values())
    fig, axes = plt.subplots(1, 2 if has_acc else 1, figsize=(11 if has_acc else 6, 4), squeeze=False)
    keys = [("val_loss", "validation loss")] + ([("accuracy", "task accuracy")] if has_acc else [])
    for ax, (key, label) in zip(axes[0], keys):
        for spec, r in results.items():
            steps = [e["step"] for e in r["runs"][0]["evals"]]
            per_seed = [[e.get(key) for e in run["evals"]] for run in r["runs"]]
            stats = [_mean_std(list(v)) for v in zip(*per_seed)]
            mean = [m for m, _ in stats]
            std = [s for _, s in stats]
            ax.plot(steps, mean, label=spec, marker="o", ms=3)
            ax.fill_between(steps, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)], alpha=0.2)
        if key == "accuracy" and chance is not None:
            ax.axhline(chance, color="gray", ls="--", lw=1, label=f"chance ({chance:.3g})")
        ax.set_xlabel("step")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"{task}: mean ± std over {len(next(iter(results.values()))['runs'])} seeds")
    fig.tight_layout()
    p1 = out / "loss_curves.png"
    fig.savefig(p1, dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    for spec, cfg in cfgs.items():
        contexts = [c for c in (2**k for k in range(6, 18)) if c <= cfg.max_seq_len] or [cfg.max_seq_len]
        ax.plot(contexts, cache_bytes_at(cfg, contexts), label=spec, marker="o")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("cache bytes (fp32, batch 1, all layers)")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    ax.set_title("KV-cache size, measured from filled caches")
    fig.tight_layout()
    p2 = out / "cache_bytes.png"
    fig.savefig(p2, dpi=120)
    plt.close(fig)
    return [p1, p2]
