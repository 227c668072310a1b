"""A/B of the latent kernel's launch replay in ONE process (for the GPU run that confirms it).

    python -m pytest -x -q -m gpu tests/test_diff_latent_launch.py      # first: replay == slow path, and it ran
    python benchmarks/device_runs/replay_ab.py --rounds 4                # then: the step with replay off / on

Builds mla, diff-mla and cmd-mla at shakespeare-384 (B=16, T=1024, bf16 autocast, fused AdamW) and
times them round robin: mla, diff-mla (slow launch path), diff-mla (replay), cmd-mla (slow), cmd-mla
(replay), `--rounds` times; the replay is switched per timing (latent._FAST), so host drift hits every
variant alike. Prints the median ms/step and the ratio to mla. (Replay is opt-in: ATTNLAB_FAST_LAUNCH=1.)
"""
import argparse
import os
import statistics
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from attnlab import ModelConfig, build_model  # noqa: E402
from attnlab.bench import time_ms  # noqa: E402
from attnlab.ops.diff_attention import latent as L  # noqa: E402
from attnlab.presets import preset  # noqa: E402


def make(name, dev, b, t):
    d = preset("shakespeare-384")
    d["mixer"] = name
    torch.manual_seed(0)
    m = build_model(ModelConfig.from_dict(d), device=dev)
    opt = torch.optim.AdamW(m.parameters(), fused=dev == "cuda")
    ids = torch.randint(0, 65, (b, t + 1), device=dev)

    def step():
        with torch.autocast(dev, dtype=torch.bfloat16, enabled=dev == "cuda"):
            lg = m(ids[:, :-1])
        F.cross_entropy(lg.float().flatten(0, 1), ids[:, 1:].flatten()).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--quick", action="store_true", help="CPU smoke run")
    a = ap.parse_args()
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    b, t = (16, 1024) if dev == "cuda" and not a.quick else (1, 32)
    steps = {n: make(n, dev, b, t) for n in ("mla", "diff-mla", "cmd-mla")}
    variants = [("mla", False), ("diff-mla", False), ("diff-mla", True), ("cmd-mla", False), ("cmd-mla", True)]
    for name, fast in variants:  # warm up both launch paths (records the plans)
        L._FAST = fast
        for _ in range(3):
            steps[name]()
    times = {v: [] for v in variants}
    for _ in range(a.rounds):
        for name, fast in variants:
            L._FAST = fast
            times[(name, fast)].append(time_ms(steps[name], warmup=1, repeats=a.repeats))
    L._FAST = False
    base = statistics.median(times[("mla", False)])
    for (name, fast), ts in times.items():
        ms = statistics.median(ts)
        print(f"{name:9s} replay={'on ' if fast else 'off'}  {ms:7.2f} ms/step  {b * t / ms:7.1f}k tok/s  "
              f"vs mla {base / ms:.3f}  rounds {[round(x, 2) for x in ts]}", flush=True)
    print("plans:", len(L._PLANS), "replayable:", sum(bool(p) for p in L._PLANS.values()))


if __name__ == "__main__":
    main()
