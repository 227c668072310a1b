"""``attnlab compare``: train several mixers under the same data, budget and seeds; one table."""

from __future__ import annotations

from pathlib import Path

from ..errors import ConfigError
from ..train.config import TASKS
from .common import experiment_config, parse_overrides


def register(sub) -> None:
    p = sub.add_parser(
        "compare", help="train mixers side by side (same data, budget, seeds); table + JSON + plots",
        description="Trains every mixer of --mixers with the same data, steps and seeds and reports "
        "parameters, validation loss and task accuracy (mean ± std over seeds), training tokens/s, peak "
        "GPU memory, KV-cache bytes per token (measured from filled caches) and decode ms/token at a "
        "stated context. Writes compare.json, compare.md, loss_curves.png and cache_bytes.png to --out. "
        "The defaults run the embedded MQAR task on a tiny model in a few CPU minutes. Any "
        "--model.* / --data.* / --train.* override applies to every mixer.")
    p.add_argument("--mixers", default="mha,mla",
                   help="comma-separated mixers; a layer pattern is written with '+' (mha+mla). Default: mha,mla")
    p.add_argument("--task", default=None,
                   help=f"{' | '.join(t for t in TASKS if t != 'text')} | a text file or directory (default: the "
                   "config's task, else mqar)")
    p.add_argument("--steps", type=int, default=None, help="training steps per run (default: the task's)")
    p.add_argument("--seeds", type=int, default=3, help="number of seeds (0..N-1), default 3")
    p.add_argument("--config", help="experiment TOML file")
    p.add_argument("--preset", help="model preset")
    p.add_argument("--out", default="runs/compare", help="output directory (default runs/compare)")
    p.add_argument("--decode-context", type=int, default=None,
                   help="context length for decode ms/token (default: max_seq_len // 2)")
    p.add_argument("--resume", action="store_true",
                   help="reuse finished runs of the same config in --out and continue interrupted ones "
                   "from their checkpoints (e.g. across calls with a time limit)")
    p.add_argument("--no-plots", action="store_true")
    p.set_defaults(func=run)


def task_overrides(task: str | None) -> dict:
    if task is None:
        return {}
    if task in TASKS:
        return {"data": {"task": task}}
    if Path(task).exists():
        return {"data": {"task": "text", "path": task}}
    raise ConfigError("task", f"unknown task {task!r} and no such file or directory; tasks: "
                      f"{', '.join(TASKS)}, or a path to text")


def run(args) -> int:
    from ..train.compare import run_compare

    if args.seeds < 1:
        raise ConfigError("seeds", f"must be >= 1; got {args.seeds}")
    overrides = parse_overrides(args.overrides)
    base = {"data": {"task": "mqar"}} if args.task is None and not args.config else {}
    from .common import merge

    merge(overrides, task_overrides(args.task))
    if args.steps is not None:
        merge(overrides, {"train": {"steps": args.steps}})
    exp = experiment_config(args.config, overrides, args.preset, base=base)
    mixers = [m.strip() for m in args.mixers.split(",") if m.strip()]
    res = run_compare(exp, mixers, list(range(args.seeds)), args.out, args.decode_context, plots=not args.no_plots,
                      resume=args.resume)
    print()
    print(res["header"])
    print(res["table"])
    print("wrote " + ", ".join(res["files"]))
    return 0
