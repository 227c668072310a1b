"""``attnlab train``: train one model from an experiment config (TOML + overrides)."""

from __future__ import annotations

import json
import sys

from .common import experiment_config, parse_overrides


def register(sub) -> None:
    p = sub.add_parser(
        "train", help="train a model (TOML config + --model./--data./--train. overrides)",
        description="Train one model. The experiment is the task's defaults, then --config FILE (TOML with "
        "preset, [model], [data], [train]), then --preset, then overrides such as --model.dim 512 "
        "--data.task mqar --train.steps 1000 --train.lr 3e-4. Writes metrics.jsonl, checkpoints and "
        "summary.json under --train.out_dir (default runs/train).")
    p.add_argument("--config", help="experiment TOML file")
    p.add_argument("--preset", help="model preset (overrides the config's)")
    p.add_argument("--resume", nargs="?", const=True, default=None, metavar="CHECKPOINT",
                   help="continue from the run's latest checkpoint (or from CHECKPOINT)")
    p.add_argument("--print-config", action="store_true", help="print the resolved experiment and exit")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..train import Trainer, TrainingDiverged

    exp = experiment_config(args.config, parse_overrides(args.overrides), args.preset)
    if args.print_config:
        print(json.dumps(exp.to_dict(), indent=2))
        return 0
    trainer = Trainer(exp)
    print(f"model: {trainer.cfg.mixer} dim={trainer.cfg.dim} layers={trainer.cfg.n_layers} "
          f"params={trainer.model.num_parameters():,}; task {exp.data.task}; device {trainer.device}; "
          f"run dir {trainer.run_dir}")
    try:
        s = trainer.train(resume=args.resume)
    except TrainingDiverged as e:
        print(f"attnlab train: {e}", file=sys.stderr)
        return 3
    final = s["final"] or {}
    print("final: " + " ".join(f"{k} {v:.4g}" for k, v in final.items() if isinstance(v, float))
          + f"; {s['tokens_per_s']:,.0f} tok/s; checkpoint in {trainer.run_dir / 'checkpoints'}")
    return 0
