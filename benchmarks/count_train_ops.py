"""Aten ops per training step (forward + backward) and CPU time per step, on CPU.

Eager training at small widths is launch-bound: each op costs host time to dispatch and launch
whatever its size, so the number of ops per step predicts the eager step time on a GPU
(`bench_train_step.py`) better than FLOPs. This counts the ops that reach the backend (after
autograd and decompositions; views separately) with a TorchDispatchMode, and times forward +
backward at a tiny batch, where host overhead dominates.

    python benchmarks/count_train_ops.py --mixers mha,mla,diff-mla,cmd-mla
    python benchmarks/count_train_ops.py --quick

Note: on CPU the plain PyTorch references run (RMSNorm decomposes into several ops, no Triton
kernels), so counts are a proxy for the CUDA path, best compared between versions of the code.
"""

from __future__ import annotations

import argparse
import collections
import time

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from attnlab import ModelConfig, build_model
from attnlab.bench import write_results
from attnlab.cli.common import merge, parse_overrides
from attnlab.presets import preset

VIEWS = {"view", "_unsafe_view", "transpose", "t", "split", "split_with_sizes", "slice", "expand", "as_strided",
         "detach", "unsqueeze", "squeeze", "permute", "alias", "select", "unbind", "chunk", "_reshape_alias",
         "reshape", "narrow", "lift_fresh"}


class CountOps(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.counts = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.counts[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))

    def split(self):
        ops = sum(v for k, v in self.counts.items() if k not in VIEWS)
        return ops, sum(self.counts.values()) - ops


def count_mixer(name: str, args) -> dict:
    cfg_dict = merge(preset(args.preset), parse_overrides(args.overrides).get("model", {}))
    cfg_dict["mixer"] = name
    torch.manual_seed(0)
    model = build_model(ModelConfig.from_dict(cfg_dict))
    ids = torch.randint(0, model.config.vocab_size, (args.batch, args.seq + 1))
    x, y = ids[:, :-1], ids[:, 1:]

    def forward():
        loss = F.cross_entropy(model(x).float().flatten(0, 1), y.flatten())
        return loss + model.aux_loss if model.aux_loss is not None else loss

    def step():
        forward().backward()
        model.zero_grad(set_to_none=True)

    step()  # warm caches (e.g. the RoPE table)
    with CountOps() as fwd:
        loss = forward()
    with CountOps() as bwd:
        loss.backward()
    model.zero_grad(set_to_none=True)
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        step()
        times.append((time.perf_counter() - t0) * 1e3)
    (f_ops, f_views), (b_ops, b_views) = fwd.split(), bwd.split()
    n = cfg_dict.get("n_layers", model.config.n_layers)
    return {"mixer": name, "fwd ops": f_ops, "bwd ops": b_ops, "all ops / n_layers": (f_ops + b_ops) / n,
            "views": f_views + b_views, "cpu ms/step (min)": min(times)}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="shakespeare-384")
    p.add_argument("--mixers", default="mha,mla")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--seq", type=int, default=8)
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="tiny preset, few repeats (smoke test)")
    p.add_argument("--name", default="train_ops_cpu")
    args, args.overrides = p.parse_known_args()
    if args.quick:
        args.preset, args.repeats, args.name = "tiny", 2, "train_ops_tiny"
    torch.set_num_threads(args.threads)
    rows = [count_mixer(m.strip(), args) for m in args.mixers.split(",")]
    write_results(args.name, rows, {"config": {"preset": args.preset, "batch": args.batch, "seq": args.seq,
                                               "overrides": args.overrides}})


if __name__ == "__main__":
    main()
