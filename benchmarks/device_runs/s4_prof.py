"""Session 4: where the differential mixers' training step goes (GPU time vs wall time, launches).

    python benchmarks/device_runs/s4_prof.py mla,diff-mla,cmd-mla [--impl cmd-mla=noise-once]

For each mixer at shakespeare-384 (B=16, T=1024, bf16 autocast, fused AdamW): wall ms/step
(CUDA events, median), GPU kernel time per step and kernels per step (torch.profiler, CUDA
activity), and the top kernels. wall - GPU ~ the host time the GPU waits for.
"""
import json
import os
import sys

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from attnlab import ModelConfig, build_model  # noqa: E402
from attnlab.bench import time_ms  # noqa: E402
from attnlab.presets import preset  # noqa: E402


def run(name, impl=None, steps=3):
    d = preset("shakespeare-384")
    d["mixer"] = name
    if impl:
        d.setdefault("mixer_options", {}).setdefault(name, {})["impl"] = impl
    torch.manual_seed(0)
    m = build_model(ModelConfig.from_dict(d), device="cuda")
    opt = torch.optim.AdamW(m.parameters(), fused=True)
    ids = torch.randint(0, 65, (16, 1025), device="cuda")

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            lg = m(ids[:, :-1])
        F.cross_entropy(lg.float().flatten(0, 1), ids[:, 1:].flatten()).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    wall = time_ms(step, warmup=5, repeats=20)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as p:
        for _ in range(steps):
            step()
        torch.cuda.synchronize()
    ka = p.key_averages()
    gpu_us = sum(e.self_device_time_total for e in ka) / steps
    n = sum(e.count for e in ka) / steps
    top = sorted(ka, key=lambda e: -e.self_device_time_total)[:12]
    row = {"mixer": name, "impl": impl or "auto", "wall_ms": wall, "gpu_ms": gpu_us / 1e3, "kernels_per_step": n,
           "top": [(e.key[:80], round(e.self_device_time_total / steps / 1e3, 3), e.count // steps) for e in top]}
    print(f"{name:10s} impl={impl or 'auto':10s} wall {wall:7.2f} ms  gpu {gpu_us / 1e3:7.2f} ms  "
          f"kernels/step {n:6.0f}", flush=True)
    for k, ms, c in row["top"]:
        print(f"    {ms:7.3f} ms  x{c:4d}  {k}")
    return row


if __name__ == "__main__":
    mixers = sys.argv[1].split(",") if len(sys.argv) > 1 else ["mla", "diff-mla", "cmd-mla"]
    extra = [a.split("=") for a in sys.argv[2:]]  # mixer=impl
    rows = [run(x) for x in mixers] + [run(x, i) for x, i in extra]
    out = os.environ.get("OUT", ".")
    json.dump(rows, open(os.path.join(out, "s4_prof.json"), "w"), indent=1)
