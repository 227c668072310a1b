"""Session 4: host-side diagnosis of the differential mixers' training step (GPU machine).

    python benchmarks/device_runs/s4_host.py mla,diff-mla,cmd-mla,diff-mla!noreplay

Per mixer at shakespeare-384 (B=16, T=1024, bf16 autocast, fused AdamW), after warm-up:
- host ms/step: perf_counter around 10 step() calls without synchronising (the Python + launch
  time; if it equals the wall time the step is host bound), wall ms/step (synchronised);
- syncs: CUDA synchronisations in one step (torch.cuda.set_sync_debug_mode("warn") counts them);
- replay: the latent kernel's launch plans (recorded, replayable);
- cProfile of 5 steps: the functions with the most own time.
"""
import cProfile
import io
import os
import pstats
import sys
import time
import warnings

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from attnlab import ModelConfig, build_model  # noqa: E402
from attnlab.presets import preset  # noqa: E402

DEV = "cuda" if torch.cuda.is_available() else "cpu"  # cpu: a smoke run of this script only
B = 16 if DEV == "cuda" else 1
if DEV == "cpu":
    torch.cuda.synchronize = lambda: None
    torch.cuda.set_sync_debug_mode = lambda mode: None


def main(mixers):
    from attnlab.ops.diff_attention import latent as L

    for name in mixers:
        label = name
        name, _, flag = name.partition("!")  # "diff-mla!noreplay": the latent launch replay off
        name, _, impl = name.partition("@")  # "diff-mla@sdpa": that training path
        L._FAST = flag != "noreplay"
        L._PLANS.clear()
        d = preset("shakespeare-384")
        d["mixer"] = name
        if impl:
            d.setdefault("mixer_options", {}).setdefault(name, {})["impl"] = impl
        torch.manual_seed(0)
        m = build_model(ModelConfig.from_dict(d), device=DEV)
        opt = torch.optim.AdamW(m.parameters(), fused=DEV == "cuda")
        ids = torch.randint(0, 65, (B, 1025 if DEV == "cuda" else 65), device=DEV)

        def step():
            with torch.autocast(DEV, dtype=torch.bfloat16, enabled=DEV == "cuda"):
                lg = m(ids[:, :-1])
            F.cross_entropy(lg.float().flatten(0, 1), ids[:, 1:].flatten()).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        for _ in range(5):
            step()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(10):
            step()
        host = (time.perf_counter() - t0) / 10 * 1e3
        torch.cuda.synchronize()
        wall = (time.perf_counter() - t0) / 10 * 1e3
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            step()
            torch.cuda.set_sync_debug_mode(0)
        syncs = [str(x.message)[:120] for x in w if "synchroniz" in str(x.message).lower()]
        plans = list(L._PLANS.values())
        print(f"{label:18s} host {host:6.2f} ms/step  wall {wall:6.2f} ms/step  syncs/step {len(syncs)}  "
              f"latent plans {len(plans)} (replayable {sum(p is not None and p is not False for p in plans)})",
              flush=True)
        for s in syncs[:3]:
            print("    sync:", s)
        torch.cuda.synchronize()
        pr = cProfile.Profile()
        pr.enable()
        for _ in range(5):
            step()
        torch.cuda.synchronize()
        pr.disable()
        buf = io.StringIO()
        pstats.Stats(pr, stream=buf).sort_stats("tottime").print_stats(14)
        lines = [x for x in buf.getvalue().splitlines() if x.strip()]
        print("\n".join(lines[3:22]))
        del m, opt


if __name__ == "__main__":
    main(sys.argv[1].split(",") if len(sys.argv) > 1 else ["mla", "diff-mla", "cmd-mla"])
