"""DSALT vs MHA on passkey retrieval, scored at 1x, 2x and 4x the training length, in one
bounded process (issue 6's quality item; one GPU call).

Phases (each skipped, and said so, when the time left cannot hold it, judged from the runs
already timed):

1. ``attnlab compare`` (``run_compare``) of mha and dsalt, plain RoPE, same data, budget and
   seeds: ``OUT/passkey/`` (compare.json, compare.md, loss_curves.png, cache_bytes.png; each
   run's checkpoint, config and metrics under runs/).
2. The seeds are added one at a time (seed 0 of both first; then the compare is rerun with
   ``resume``, which reuses the finished runs), each only if its measured time still fits.
3. YaRN at evaluation only: every plain-RoPE checkpoint reloaded with ``yarn_factor`` =
   4 and ``yarn_original_max_len`` = the training length (inv_freq is a non-persistent buffer,
   so the weights load unchanged), passkey scored again at 1x/2x/4x. No training.
4. mha trained with YaRN (factor 4, original length = the training length; the setup of
   docs/training.md): ``OUT/passkey_yarn/``.

Writes ``OUT/dsalt_passkey.json`` (via attnlab.bench.write_results), ``OUT/dsalt_passkey.md`` and
``OUT/passkey_vs_length.png`` and prints the table. OUT: ``--out``, else $ATTNLAB_BENCH_DIR, else
benchmarks/results.

    ATTNLAB_DSALT_AUTOTUNE=0 python benchmarks/dsalt_passkey.py --out $OUT/pk --budget-s 210
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
DSALT_OPTS = {"n_min": 8, "n_max": 32, "edge": 2.0, "n_landmarks": 16, "block": 16}


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


def seed_seconds(res: dict, mixer: str) -> float:
    """Wall seconds of one more seed of ``mixer``: the last run's training time (the first one
    carries the compiles), plus the evals it ran, with 15% margin."""
    runs = res["results"][mixer]["runs"]
    return 1.15 * runs[-1]["train_seconds"] + 2.0


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


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=None, help="output directory (default $ATTNLAB_BENCH_DIR or benchmarks/results)")
    p.add_argument("--budget-s", type=float, default=None,
                   help="wall seconds from process start that the phases may use (default 210; --quick: none)")
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--seeds", type=int, default=3, help="seeds wanted (2 first, the rest if time allows)")
    p.add_argument("--seq-len", type=int, default=128, help="training length; scored at 1x, 2x, 4x")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--eval-every", type=int, default=500)
    p.add_argument("--eval-examples", type=int, default=16, help="per (length, depth); 3 depths")
    p.add_argument("--dsalt", default="{}", help="JSON overrides of the dsalt options " + json.dumps(DSALT_OPTS))
    p.add_argument("--yarn-factor", type=float, default=4.0)
    p.add_argument("--skip", default="", help="comma-separated phases to skip: seed3,yarn_eval,yarn_train")
    p.add_argument("--quick", action="store_true", help="CPU smoke test: tiny model, a few steps")
    a = p.parse_args(argv)
    if a.quick:
        a.steps, a.batch, a.dim, a.layers, a.heads, a.eval_every, a.eval_examples = 2, 2, 32, 2, 2, 2, 1
        a.dsalt = json.dumps({"n_max": 16, "n_landmarks": 4, **json.loads(a.dsalt)})
    out = Path(a.out or os.environ.get("ATTNLAB_BENCH_DIR", "benchmarks/results"))
    out.mkdir(parents=True, exist_ok=True)
    skip = {s.strip() for s in a.skip.split(",") if s.strip()}
    log = print
    from attnlab.train.compare import run_compare

    exp = experiment_config(None, base_overrides(a), None)
    mixers = ["mha", "dsalt"]
    main_dir, yarn_dir = out / "passkey", out / "passkey_yarn"
    notes, errors = [], {}
    deadline = a.budget_s if a.budget_s is not None else (float("inf") if a.quick else 210.0)
    log(f"dsalt vs mha passkey: {a.steps} steps x {a.batch} x {a.seq_len} tokens, dim {a.dim}, {a.layers} layers, "
        f"{a.heads} heads, lr {a.lr}; dsalt {json.dumps(exp.model['mixer_options']['dsalt'])}; budget {deadline:.0f}s "
        f"(start-up took {elapsed():.1f}s)")

    # 1-2. mha and dsalt, one seed at a time (seed 0 for both first, so that a cut run still
    # compares them), each further seed only if its measured time fits
    res, seeds = None, []
    for s in range(a.seeds):
        if res is not None:
            need = sum(seed_seconds(res, m) for m in mixers) + 10
            if "seed3" in skip and s >= 2 or elapsed() + need > deadline:
                notes.append(f"seed {s} skipped: needs ~{need:.0f}s, {deadline - elapsed():.0f}s left")
                log(notes[-1])
                break
        r, err = run_phase(f"compare mha,dsalt seeds 0..{s}", lambda: run_compare(
            exp, mixers, list(range(s + 1)), main_dir, plots=False, resume=True, log=log), log)
        if err:
            errors[f"compare seed {s}"] = err
            break
        res, seeds = r, list(range(s + 1))
    if res is not None:  # the final table of the compare, with its plots (finished runs are reused)
        r, err = run_phase("compare table + plots", lambda: run_compare(
            exp, mixers, seeds, main_dir, plots=True, resume=True, log=log), log)
        res = r or res
    # 3. YaRN at evaluation only, on the checkpoints of phase 1-2 (cheap: generation only)
    yev = None
    if res is not None and "yarn_eval" not in skip:
        if elapsed() + 15 > deadline:
            notes.append("YaRN-at-eval skipped: no time left")
        else:
            yev, err = run_phase("YaRN at eval", lambda: yarn_eval(exp, main_dir, mixers, seeds, a.yarn_factor, log), log)
            if err:
                errors["yarn_eval"] = err
    # 4. mha trained with YaRN
    yres = None
    if res is not None and "yarn_train" not in skip:
        per = seed_seconds(res, "mha")
        ny = len(seeds)
        while ny > 1 and elapsed() + ny * per + 5 > deadline:
            ny -= 1
        if elapsed() + ny * per + 5 > deadline:
            notes.append(f"mha+YaRN training skipped: needs ~{per:.0f}s a seed, {deadline - elapsed():.0f}s left")
            log(notes[-1])
        else:
            ey = copy.deepcopy(exp)
            ey.model["yarn_factor"] = a.yarn_factor
            ey.model["yarn_original_max_len"] = a.seq_len
            yres, err = run_phase(f"compare mha trained with YaRN x{a.yarn_factor:g}, {ny} seeds", lambda: run_compare(
                ey, ["mha"], list(range(ny)), yarn_dir, plots=False, resume=True, log=log), log)
            if err:
                errors["yarn_train"] = err

    # the table
    lengths = [a.seq_len, 2 * a.seq_len, 4 * a.seq_len]
    rows = []

    def add(arm, mixer, rope, runs_final, extra=None):
        row = {"arm": arm, "mixer": mixer, "RoPE": rope, "seeds": len(runs_final)}
        for L in lengths:
            vals = [f.get(f"passkey@{L}") for f in runs_final]
            row[f"exact@{L}"] = pm(vals)
            row[f"exact@{L}_seeds"] = vals
        row.update(extra or {})
        rows.append(row)

    if res is not None:
        for m in mixers:
            r = res["results"][m]
            add(m, m, "plain", [run["final"] for run in r["runs"]],
                {"val loss": pm([run["final"].get("val_loss") for run in r["runs"]], "{:.3f}"),
                 "digit acc": pm([run["final"].get("token_accuracy") for run in r["runs"]], "{:.3f}"),
                 "train s/seed": f"{statistics.fmean(run['train_seconds'] for run in r['runs']):.0f}",
                 "tok/s": f"{r['tokens_per_s']:,.0f}"})
    if yev:
        for m in mixers:
            add(f"{m} +YaRN@eval", m, f"plain, YaRN x{a.yarn_factor:g} at eval",
                [v for k, v in yev.items() if k.rsplit("-seed", 1)[0] == m])
    if yres is not None:
        r = yres["results"]["mha"]
        add("mha-yarn", "mha", f"YaRN x{a.yarn_factor:g} (trained)", [run["final"] for run in r["runs"]],
            {"val loss": pm([run["final"].get("val_loss") for run in r["runs"]], "{:.3f}"),
             "digit acc": pm([run["final"].get("token_accuracy") for run in r["runs"]], "{:.3f}"),
             "train s/seed": f"{statistics.fmean(run['train_seconds'] for run in r['runs']):.0f}",
             "tok/s": f"{r['tokens_per_s']:,.0f}"})
    shown = [{k: v for k, v in r.items() if not k.endswith("_seeds")} for r in rows]
    setup = {"steps": a.steps, "batch": a.batch, "seq_len": a.seq_len, "lengths": lengths, "dim": a.dim,
             "layers": a.layers, "heads": a.heads, "lr": a.lr, "eval_examples_per_depth": a.eval_examples,
             "depths": exp.data.passkey.depths, "dsalt": exp.model["mixer_options"]["dsalt"],
             "yarn_factor": a.yarn_factor, "seeds": seeds}
    write_results("dsalt_passkey", rows, {"setup": setup, "notes": notes, "errors": errors,
                                          "wall_s": elapsed(), "yarn_eval": yev}, out_dir=str(out))
    header = (f"Passkey exact match (greedy, {a.eval_examples} examples x depths {exp.data.passkey.depths} per "
              f"length), trained at {a.seq_len} tokens for {a.steps} steps x {a.batch}; mean ± std over seeds "
              f"{seeds}. dsalt options {json.dumps(exp.model['mixer_options']['dsalt'])}.")
    (out / "dsalt_passkey.md").write_text(f"# dsalt vs mha: passkey at 1x/2x/4x\n\n{header}\n\n"
                                          f"{format_table(shown)}\n\n" + "".join(f"- {n}\n" for n in notes)
                                          + "".join(f"- {k} failed: {v}\n" for k, v in errors.items()))
    plot(rows, lengths, out / "passkey_vs_length.png", header)
    print()
    print(header)
    print(format_table(shown))
    for n in notes:
        print("note:", n)
    for k, v in errors.items():
        print(f"FAILED {k}: {v}")
    print(f"total wall {elapsed():.0f}s; wrote {out}")
    return rows


def plot(rows, lengths, path: Path, title: str) -> None:
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
