"""Summarize the GPU reproduction runs (scripts/reproduce_gpu.sh) next to the notebooks' claims.

    python scripts/summarize_reproduction.py docs/results/reproduction_gpu

Reads every ``<group>/runs/<mixer>-seed<N>/metrics.jsonl[.gz]`` (written with --train.log_every 1)
and writes ``summary.md`` (per mixer, mean ± std over seeds: the final validation loss, the best
validation loss and its step, and the mean training loss of the last 10 steps, which is what the
notebooks printed) and ``curves.png`` (training loss, smoothed, and validation loss per group).
"""

from __future__ import annotations

import argparse
import gzip
import json
import statistics
from pathlib import Path

# (group directory, mixer) -> the notebook's single-seed figure (loss of the last 10 training steps)
NOTEBOOK = {("r384", "mha"): 1.42, ("r384", "diff-mla"): 1.58, ("r512", "mla"): 1.94, ("r512", "cmd-mla"): 1.79}
GROUPS = {"r384": "dim 384 (Diff-MLA notebook)", "r384-mla": "dim 384 (Diff-MLA notebook)",
          "r512": "dim 512 (CMD-MLA notebook)"}


def read_metrics(run: Path) -> list[dict]:
    p = run / "metrics.jsonl"
    text = p.read_text() if p.is_file() else gzip.open(run / "metrics.jsonl.gz", "rt").read()
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def pm(values: list[float], fmt: str = "{:.3f}") -> str:
    if len(values) < 2:
        return fmt.format(values[0])
    return f"{fmt.format(statistics.mean(values))} ± {fmt.format(statistics.stdev(values))}"


def collect(root: Path) -> dict:
    out: dict = {}
    for group in sorted(GROUPS):
        for run in sorted((root / group / "runs").glob("*-seed*")):
            mixer, seed = run.name.rsplit("-seed", 1)
            recs = read_metrics(run)
            train = [r for r in recs if r["kind"] == "train"]
            evals = [r for r in recs if r["kind"] == "eval"]
            best = min(evals, key=lambda r: r["val_loss"])
            summ = json.loads((run / "summary.json").read_text())
            out.setdefault((GROUPS[group], group, mixer), []).append({
                "seed": int(seed), "train": [(r["step"], r["loss"]) for r in train],
                "evals": [(r["step"], r["val_loss"]) for r in evals],
                "train_last10": statistics.mean(r["loss"] for r in train[-10:]),
                "val_final": evals[-1]["val_loss"], "val_best": best["val_loss"], "best_step": best["step"],
                "params": summ["params"], "seconds": summ["train_seconds"]})
    return out


def write_summary(root: Path, data: dict) -> Path:
    lines = ["| config | mixer | params | notebook (1 seed, last-10-step train loss) | train loss, last 10 steps "
             "| val loss @1000 | best val loss (step) |",
             "|---|---|---|---|---|---|---|"]
    for (label, group, mixer), runs in data.items():
        nb = NOTEBOOK.get((group if group != "r384-mla" else "r384", mixer))
        steps = sorted(r["best_step"] for r in runs)
        lines.append(f"| {label} | {mixer} | {runs[0]['params'] / 1e6:.2f}M | {nb if nb is not None else '—'} | "
                     f"{pm([r['train_last10'] for r in runs])} | {pm([r['val_final'] for r in runs])} | "
                     f"{pm([r['val_best'] for r in runs])} ({'/'.join(map(str, steps))}) |")
    seeds = sorted({r["seed"] for runs in data.values() for r in runs})
    text = (f"# Reproduction summary\n\nMean ± sample std over seeds {seeds}; 1000 steps x 16 x 1024 tokens each. "
            "Written by `scripts/summarize_reproduction.py` from the runs' metrics.\n\n" + "\n".join(lines) + "\n")
    p = root / "summary.md"
    p.write_text(text)
    return p


def plot(root: Path, data: dict) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(dict.fromkeys(k[0] for k in data))
    fig, axes = plt.subplots(1, len(labels), figsize=(6 * len(labels), 4.2), squeeze=False)
    for ax, label in zip(axes[0], labels):
        for i, ((lab, group, mixer), runs) in enumerate((k, v) for k, v in data.items() if k[0] == label):
            color = f"C{i}"
            steps = [s for s, _ in runs[0]["train"]]
            for j, r in enumerate(runs):
                y = [v for _, v in r["train"]]
                k = 25
                smooth = [statistics.mean(y[max(0, n - k + 1):n + 1]) for n in range(len(y))]
                ax.plot(steps, smooth, color=color, lw=0.8, alpha=0.5, ls="--",
                        label=f"{mixer} train (25-step mean)" if j == 0 else None)
                ax.plot([s for s, _ in r["evals"]], [v for _, v in r["evals"]], color=color, marker="o", ms=3,
                        lw=1.2, label=f"{mixer} validation" if j == 0 else None)
        ax.set_ylim(0.7, 2.6)
        ax.set_xlabel("step")
        ax.set_ylabel("loss (nats/char)")
        ax.set_title(f"TinyShakespeare, {label}: every seed")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    p = root / "curves.png"
    fig.savefig(p, dpi=120)
    plt.close(fig)
    return p


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root", type=Path)
    args = ap.parse_args()
    data = collect(args.root)
    print(write_summary(args.root, data).read_text())
    print("wrote", plot(args.root, data))


if __name__ == "__main__":
    main()
