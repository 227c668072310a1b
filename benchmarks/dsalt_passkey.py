"""DSALT vs MHA on passkey retrieval, scored at 1x, 2x and 4x the training length, in one
bounded process (issue 6's quality item; one GPU call).

Phases (each skipped, and said so, when the time left cannot hold it, judged from the runs
already timed):

1. ``attnlab compare`` (``run_compare``) of mha and dsalt, plain RoPE, same data, budget and
   seeds 0 and 1: ``OUT/passkey/`` (compare.json, compare.md, loss_curves.png, cache_bytes.png;
   each run's config, metrics and summary under runs/). The seeds are added one at a time (seed 0
   of both first; then the compare is rerun with ``resume``, which reuses the finished runs).
2. YaRN at evaluation only: every plain-RoPE checkpoint reloaded with ``yarn_factor`` = 4 and
   ``yarn_original_max_len`` = the training length (inv_freq is a non-persistent buffer, so the
   weights load unchanged), passkey scored again at 1x/2x/4x. No training.
3. dsalt with a window as long as the training length (``n_max`` = 128; ``--dsalt-wide``):
   ``OUT/passkey_wide/``. CPU probes showed dsalt learning retrieval through its landmarks
   far more slowly than mha, and through a window covering the needle about as fast.
4. mha trained with YaRN (factor 4, original length = the training length; the setup of
   docs/training.md): ``OUT/passkey_yarn/``.
5. seed 2 (up to ``--seeds``) of mha and dsalt, if its measured time still fits; then the
   compare's table and plots over all its seeds.

Writes ``OUT/dsalt_passkey.json`` (via attnlab.bench.write_results), ``OUT/dsalt_passkey.md`` and
``OUT/passkey_vs_length.png`` and prints the table. OUT: ``--out``, else $ATTNLAB_BENCH_DIR, else
benchmarks/results.

    ATTNLAB_DSALT_AUTOTUNE=0 python benchmarks/dsalt_passkey.py --out $OUT/pk --budget-s 200
    python benchmarks/dsalt_passkey.py --quick          # CPU smoke test (a few steps)
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time
import traceback
from pathlib import Path

T0 = time.perf_counter()
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from attnlab.bench import format_table, write_results  # noqa: E402
from attnlab.cli.common import experiment_config  # noqa: E402

# dsalt for 128-token training: the window (<= 32) never reaches the needle from the question
# (>= 55 tokens back), so retrieval must go through the landmarks even at the training length.
DSALT_OPTS = {"n_min": 8, "n_max": 32, "edge": 2.0, "n_landmarks": 32, "block": 16}


def base_overrides(a) -> dict:
    model = {"dim": a.dim, "n_layers": a.layers, "n_heads": a.heads, "max_seq_len": 4 * a.seq_len,
             "mixer_options": {"dsalt": dict(DSALT_OPTS, **json.loads(a.dsalt))}}
    train = {"steps": a.steps, "seq_len": a.seq_len, "batch_size": a.batch, "lr": a.lr,
             "warmup_steps": min(a.warmup, max(a.steps // 4, 1)), "eval_every": a.eval_every,
             "eval_batches": 2 if a.quick else 4, "progress": False, "tensorboard": False}
    if a.quick:
        train["device"] = "cpu"
    return {"data": {"task": "passkey", "passkey": {"eval_examples": a.eval_examples}}, "model": model,
            "train": train}


def elapsed() -> float:
    return time.perf_counter() - T0


def run_phase(name, fn, log):
    t = time.perf_counter()
    log(f"== {name} (at {elapsed():.0f}s)")
    try:
        out = fn()
        log(f"== {name} done in {time.perf_counter() - t:.0f}s (at {elapsed():.0f}s)")
        return out, None
    except Exception as e:  # keep what finished: the table reports the phase as failed
        traceback.print_exc()
        log(f"== {name} FAILED after {time.perf_counter() - t:.0f}s: {type(e).__name__}: {e}")
        return None, f"{type(e).__name__}: {e}"


@torch.no_grad()
def yarn_eval(exp, out: Path, mixers, seeds, factor: float, log) -> dict:
    """Passkey exact match of the plain-RoPE checkpoints reloaded with YaRN (no training)."""
    from attnlab.model import build_model
    from attnlab.train.checkpoint import find_checkpoint, load_weights, read_config
    from attnlab.train.data import build_task
    from attnlab.train.trainer import autocast_factory

    res = {}
    for mixer in mixers:
        for seed in seeds:
            run_dir = out / "runs" / f"{mixer}-seed{seed}"
            ckpt = find_checkpoint(run_dir)
            e = copy.deepcopy(exp)
            e.model["mixer"] = mixer
            e.model["yarn_factor"] = factor
            e.model["yarn_original_max_len"] = e.train.seq_len
            e.train.seed = seed
            task = build_task(e, out / "data")
            cfg = e.model_config(task.vocab_size)
            dev = torch.device("cuda" if torch.cuda.is_available() and e.train.device != "cpu" else "cpu")
            model = build_model(cfg).to(dev)
            load_weights(ckpt, model, read_config(ckpt)["model"])  # same weights, other RoPE
            model.eval()
            m = task.extra_metrics(model, dev, autocast_factory(dev, e.train.precision))
            res[f"{mixer}-seed{seed}"] = m
            log(f"{mixer} seed {seed} + YaRN x{factor:g} at eval: "
                + " ".join(f"{k} {v:.3f}" for k, v in m.items() if k.startswith("passkey@")))
            del model
    return res


def mean_std(xs):
    xs = [x for x in xs if x is not None]
    if not xs:
        return None, None
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def pm(xs, fmt="{:.2f}"):
    m, s = mean_std(xs)
    return "—" if m is None else f"{fmt.format(m)} ± {fmt.format(s)}"


def summaries(cmp_dir: Path, mixer: str) -> list[dict]:
    """The finished runs of ``mixer`` under a compare directory (read back from disk, so a phase
    that failed or was cut still reports the seeds it finished)."""
    out = []
    for f in sorted((cmp_dir / "runs").glob(f"{mixer}-seed*/summary.json")):
        s = json.loads(f.read_text())
        s["seed"] = int(f.parent.name.rsplit("-seed", 1)[1])
        out.append(s)
    return sorted(out, key=lambda s: s["seed"])


def next_seed_seconds(cmp_dir: Path, mixer: str) -> float:
    """Wall seconds of one more seed of ``mixer``: the last run's training time (the first one
    carries the compiles; it includes the periodic evals), with 15% margin."""
    runs = summaries(cmp_dir, mixer)
    return 1.15 * runs[-1]["train_seconds"] + 2.0 if runs else float("inf")


def report(a, exp, out: Path, mixers, yev, notes, errors, quiet=False) -> list[dict]:
    """Table of every arm from what is on disk now; writes the JSON, markdown and plot."""
    lengths = [a.seq_len, 2 * a.seq_len, 4 * a.seq_len]
    rows = []

    def add(arm, mixer, rope, finals, runs=None):
        row = {"arm": arm, "mixer": mixer, "RoPE": rope, "seeds": len(finals)}
        for L in lengths:
            vals = [f.get(f"passkey@{L}") for f in finals]
            row[f"exact@{L}"] = pm(vals)
            row[f"exact@{L}_seeds"] = vals
        if runs:
            row["val loss"] = pm([f.get("val_loss") for f in finals], "{:.3f}")
            row["digit acc"] = pm([f.get("token_accuracy") for f in finals], "{:.3f}")
            row["train s/seed"] = f"{statistics.fmean(r['train_seconds'] for r in runs):.0f}"
            tps = [r["tokens_per_s"] for r in runs if r.get("tokens_per_s")]
            row["tok/s"] = f"{statistics.median(tps):,.0f}" if tps else "—"
        rows.append(row)

    for m in mixers:
        runs = summaries(out / "passkey", m)
        if runs:
            add(m, m, "plain", [r["final"] or {} for r in runs], runs)
    for m in mixers:
        got = [v for k, v in (yev or {}).items() if k.rsplit("-seed", 1)[0] == m]
        if got:
            add(f"{m} +YaRN@eval", m, f"plain, YaRN x{a.yarn_factor:g} at eval", got)
    runs = summaries(out / "passkey_wide", "dsalt")
    if runs:
        wide = runs[0]["config"]["model"]["mixer_options"]["dsalt"]
        add(f"dsalt n_max {wide['n_max']}", "dsalt", "plain", [r["final"] or {} for r in runs], runs)
    runs = summaries(out / "passkey_yarn", "mha")
    if runs:
        add("mha-yarn", "mha", f"YaRN x{a.yarn_factor:g} (trained)", [r["final"] or {} for r in runs], runs)
    shown = [{k: v for k, v in r.items() if not k.endswith("_seeds")} for r in rows]
    seeds = sorted({r["seed"] for m in mixers for r in summaries(out / "passkey", m)})
    setup = {"steps": a.steps, "batch": a.batch, "seq_len": a.seq_len, "lengths": lengths, "dim": a.dim,
             "layers": a.layers, "heads": a.heads, "lr": a.lr, "eval_examples_per_depth": a.eval_examples,
             "depths": exp.data.passkey.depths, "dsalt": exp.model["mixer_options"]["dsalt"],
             "yarn_factor": a.yarn_factor, "seeds": seeds, "budget_s": a.budget_s}
    header = (f"Passkey exact match (greedy; {a.eval_examples} prompts x depths {exp.data.passkey.depths} per "
              f"length), trained at {a.seq_len} tokens for {a.steps} steps x {a.batch}, dim {a.dim}, {a.layers} "
              f"layers, {a.heads} heads, lr {a.lr}; mean ± std over the seeds finished ({seeds}). dsalt options "
              f"{json.dumps(exp.model['mixer_options']['dsalt'])}. val loss / digit acc: answer digits, "
              f"teacher-forced, at {a.seq_len}.")
    extra = {"setup": setup, "notes": notes, "errors": errors, "wall_s": elapsed(), "yarn_eval": yev,
             "header": header}
    out.mkdir(parents=True, exist_ok=True)
    if quiet:
        (out / "dsalt_passkey.json").write_text(json.dumps({"name": "dsalt_passkey", **extra, "rows": rows},
                                                           indent=2))
    else:
        write_results("dsalt_passkey", rows, extra, out_dir=str(out))
    (out / "dsalt_passkey.md").write_text(f"# dsalt vs mha: passkey at 1x/2x/4x\n\n{header}\n\n"
                                          f"{format_table(shown)}\n\n" + "".join(f"- {n}\n" for n in notes)
                                          + "".join(f"- {k} failed: {v}\n" for k, v in errors.items()))
    if not quiet:
        plot(rows, lengths, out / "passkey_vs_length.png")
        print()
        print(header)
        print(format_table(shown))
        for n in notes:
            print("note:", n)
        for k, v in errors.items():
            print(f"FAILED {k}: {v}")
        print(f"total wall {elapsed():.0f}s; wrote {out}")
    return rows


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=None, help="output directory (default $ATTNLAB_BENCH_DIR or benchmarks/results)")
    p.add_argument("--budget-s", type=float, default=None,
                   help="wall seconds from process start that the phases may use (default 200; --quick: none)")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--seeds", type=int, default=3, help="seeds wanted (seed 0 first, the rest while they fit)")
    p.add_argument("--seq-len", type=int, default=128, help="training length; scored at 1x, 2x, 4x")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--eval-every", type=int, default=500)
    p.add_argument("--eval-examples", type=int, default=16, help="per (length, depth); 3 depths")
    p.add_argument("--dsalt", default="{}", help="JSON overrides of the dsalt options " + json.dumps(DSALT_OPTS))
    p.add_argument("--dsalt-wide", default=None,
                   help='JSON overrides of the "wide" dsalt arm (default {"n_max": SEQ_LEN})')
    p.add_argument("--yarn-factor", type=float, default=4.0)
    p.add_argument("--skip", default="", help="comma-separated phases to skip: seed3 (seeds beyond 2), yarn_eval, wide, yarn_train")
    p.add_argument("--quick", action="store_true", help="CPU smoke test: tiny model, a few steps")
    a = p.parse_args(argv)
    if a.quick:
        a.steps, a.batch, a.dim, a.layers, a.heads, a.eval_every, a.eval_examples = 2, 2, 32, 2, 2, 2, 1
        a.dsalt = json.dumps({"n_max": 16, "n_landmarks": 4, **json.loads(a.dsalt)})
    if a.dsalt_wide is None:
        a.dsalt_wide = json.dumps({"n_max": a.seq_len})
    if a.budget_s is None:
        a.budget_s = float("inf") if a.quick else 200.0
    out = Path(a.out or os.environ.get("ATTNLAB_BENCH_DIR", "benchmarks/results"))
    out.mkdir(parents=True, exist_ok=True)
    skip = {s.strip() for s in a.skip.split(",") if s.strip()}
    log = print
    from attnlab.train.compare import run_compare

    exp = experiment_config(None, base_overrides(a), None)
    mixers = ["mha", "dsalt"]
    main_dir, yarn_dir = out / "passkey", out / "passkey_yarn"
    notes, errors, yev = [], {}, None
    deadline = a.budget_s
    log(f"dsalt vs mha passkey: {a.steps} steps x {a.batch} x {a.seq_len} tokens, dim {a.dim}, {a.layers} layers, "
        f"{a.heads} heads, lr {a.lr}; dsalt {json.dumps(exp.model['mixer_options']['dsalt'])}; budget {deadline:.0f}s "
        f"(start-up took {elapsed():.1f}s)")

    def more_seeds(upto: int) -> None:
        """Seeds len(seeds)..upto-1 of mha and dsalt, one at a time, each only if it fits."""
        nonlocal seeds
        for s in range(len(seeds), upto):
            if s:
                need = sum(next_seed_seconds(main_dir, m) for m in mixers) + 10
                if elapsed() + need > deadline:
                    if not any(n.startswith(f"seed {s} skipped") for n in notes):
                        notes.append(f"seed {s} skipped: needs ~{need:.0f}s, {deadline - elapsed():.0f}s of the "
                                     "budget left")
                        log(notes[-1])
                    return
            r, err = run_phase(f"compare mha,dsalt seeds 0..{s}", lambda: run_compare(
                exp, mixers, list(range(s + 1)), main_dir, plots=False, resume=True, log=log), log)
            if err:
                errors[f"compare seed {s}"] = err
                return
            seeds = list(range(s + 1))
            report(a, exp, out, mixers, yev, notes, errors, quiet=True)

    def yarn_at_eval(todo) -> None:
        nonlocal yev
        if not todo or "yarn_eval" in skip:
            return
        if elapsed() + 10 > deadline:
            notes.append(f"YaRN-at-eval of seeds {todo} skipped: no time left")
            return
        r, err = run_phase(f"YaRN at eval, seeds {todo}",
                           lambda: yarn_eval(exp, main_dir, mixers, todo, a.yarn_factor, log), log)
        if err:
            errors[f"yarn_eval {todo}"] = err
        else:
            yev = {**(yev or {}), **r}
        report(a, exp, out, mixers, yev, notes, errors, quiet=True)

    # 1. mha and dsalt, seeds 0 and 1 (seed 0 of both first, so that a cut run still compares them)
    seeds = []
    more_seeds(min(2, a.seeds))
    # 2. YaRN at evaluation only, on those plain-RoPE checkpoints (generation only, no training)
    yarn_at_eval(seeds)

    def extra_arm(tag, e, mixer, where) -> None:
        """An extra arm of one mixer (its own compare dir), as many seeds as the main pair where they fit."""
        if not seeds or tag in skip:
            return
        per = next_seed_seconds(main_dir, mixer)
        n = len(seeds)
        while n > 1 and elapsed() + n * per + 5 > deadline:
            n -= 1
        if elapsed() + n * per + 5 > deadline:
            notes.append(f"{tag} skipped: needs ~{per:.0f}s a seed, {deadline - elapsed():.0f}s left")
            log(notes[-1])
            return
        _, err = run_phase(f"{tag}: {n} seeds", lambda: run_compare(
            e, [mixer], list(range(n)), where, plots=False, resume=True, log=log), log)
        if err:
            errors[tag] = err
        report(a, exp, out, mixers, yev, notes, errors, quiet=True)

    # 3. dsalt with a window as long as the training length (n_max = seq_len): it learns retrieval
    # through its window; beyond the training length the needle is out of the window unless near the end
    ew = copy.deepcopy(exp)
    ew.model["mixer_options"]["dsalt"].update(json.loads(a.dsalt_wide))
    extra_arm("wide", ew, "dsalt", out / "passkey_wide")
    # 4. mha trained with YaRN
    ey = copy.deepcopy(exp)
    ey.model["yarn_factor"] = a.yarn_factor
    ey.model["yarn_original_max_len"] = a.seq_len
    extra_arm("yarn_train", ey, "mha", yarn_dir)
    # 5. further seeds of the main pair while they fit (and their YaRN-at-eval scores)
    done = list(seeds)
    if "seed3" not in skip:
        more_seeds(a.seeds)
    yarn_at_eval([s for s in seeds if s not in done])
    if seeds:  # the compare's own table over all its seeds, with its plots (finished runs are reused)
        _, err = run_phase("compare table + plots", lambda: run_compare(
            exp, mixers, seeds, main_dir, plots=True, resume=True, log=log), log)
        if err:
            errors["compare table"] = err
    return report(a, exp, out, mixers, yev, notes, errors)


def plot(rows, lengths, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    if not rows:
        return
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for r in rows:
        stats = [mean_std(r[f"exact@{L}_seeds"]) for L in lengths]
        ax.errorbar(lengths, [m if m is not None else float("nan") for m, _ in stats],
                    yerr=[s or 0 for _, s in stats], marker="o", capsize=3, label=r["arm"])
    ax.set_xscale("log", base=2)
    ax.set_xticks(lengths, [f"{L} ({L // lengths[0]}x)" for L in lengths])
    ax.set_ylim(-0.05, 1.05)
    ax.set_xlabel("prompt length (tokens)")
    ax.set_ylabel("passkey exact match")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("passkey retrieval beyond the training length", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
