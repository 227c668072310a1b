"""Training-step throughput and peak memory for a list of mixers at one preset, in one run.

    python benchmarks/bench_train_step.py --preset shakespeare-384 --mixers mha,mla
    python benchmarks/bench_train_step.py --quick          # CPU smoke test (tiny sizes)
    python benchmarks/bench_train_step.py --kernels "default;+rmsnorm;+swiglu"   # A/B of opt-in kernels
    python benchmarks/bench_train_step.py --mixers mla,cmd-mla,cmd-mla@sdpa --interleave 3   # mixer@impl, round robin

Each step: bf16 autocast forward (fp32 on CPU), cross-entropy, backward, AdamW (fused on CUDA).
Inputs are random token ids (throughput does not depend on the text). Reports ms/step (median
of repeats after warm-up, CUDA events), tokens/s, peak allocated memory, and tokens/s relative to
the first mixer.
"""

from __future__ import annotations

import argparse
import gc

import torch
import torch.nn.functional as F

from attnlab import ModelConfig, build_model
from attnlab.bench import time_ms, write_results
from attnlab.cli.common import merge, parse_overrides
from attnlab.presets import preset


KERNEL_SWITCHES = ("rmsnorm", "swiglu")


def set_kernels(variant: str, defaults: dict) -> None:
    """'default' (the library's settings) or a comma list like '+rmsnorm,-swiglu' of switches
    of the optional fused kernels to turn on (+) or off (-)."""
    import attnlab.ops.rmsnorm as rmsnorm
    import attnlab.ops.swiglu as swiglu

    mods = {"rmsnorm": rmsnorm, "swiglu": swiglu}
    for name, on in defaults.items():
        mods[name].ENABLED = on
    for item in (v.strip() for v in variant.split(",")):
        if item in ("", "default"):
            continue
        name = item.lstrip("+-")
        if item[0] not in "+-" or name not in mods:
            raise SystemExit(f"--kernels: {item!r}; use 'default' or +/- one of {', '.join(KERNEL_SWITCHES)}")
        mods[name].ENABLED = item[0] == "+"


def make_step(name: str, args, device):
    """``name``: a mixer, or ``mixer@impl`` (that mixer with ``mixer_options[mixer].impl = impl``)."""
    cfg_dict = merge(preset(args.preset), parse_overrides(args.overrides).get("model", {}))
    name, _, impl = name.partition("@")
    if impl:
        opts = dict(cfg_dict.get("mixer_options", {}))
        opts[name] = {**opts.get(name, {}), "impl": impl}
        cfg_dict["mixer_options"] = opts
    cfg_dict["mixer"] = name
    cfg_dict["max_seq_len"] = max(cfg_dict.get("max_seq_len", 0), args.seq)
    cfg = ModelConfig.from_dict(cfg_dict)
    torch.manual_seed(0)
    model = build_model(cfg, device=device)
    fused = device.type == "cuda"
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=fused)
    step_model = torch.compile(model) if args.compile else model
    ids = torch.randint(0, cfg.vocab_size, (args.batch, args.seq + 1), device=device)
    x, y = ids[:, :-1], ids[:, 1:]
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)

    def step():
        with amp:
            logits = step_model(x)
        loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten())
        aux = model.aux_loss
        if aux is not None:
            loss = loss + aux
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return cfg, model, opt, step_model, step


def bench_mixer(name: str, args, device) -> dict:
    cfg, model, opt, step_model, step = make_step(name, args, device)
    name = name if "@" in name else cfg.mixer
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    ms = time_ms(step, warmup=args.warmup, repeats=args.repeats)
    peak = torch.cuda.max_memory_allocated() / 1e9 if device.type == "cuda" else float("nan")
    row = {"mixer": name, "kernels": args.variant, "params_M": model.num_parameters() / 1e6, "ms/step": ms,
           "tok/s": args.batch * args.seq / (ms / 1e3), "peak_GB": peak}
    del model, opt, step_model
    gc.collect()
    return row


def bench_interleaved(names, args, device) -> list[dict]:
    """All models built first, then ``args.interleave`` rounds timing each in turn (A/B/C/A/B/C...):
    a host-bound step's speed drifts within a process, so ratios from one round robin are fairer
    than from consecutive blocks. Reports the median over rounds (and each round's ms)."""
    import statistics

    setups = []
    for name in names:
        _, model, _, _, step = make_step(name, args, device)
        for _ in range(args.warmup):
            step()
        setups.append((name, model, step))
    times = {n: [] for n in names}
    for _ in range(args.interleave):
        for name, _, step in setups:
            times[name].append(time_ms(step, warmup=1, repeats=args.repeats))
    rows = []
    for name, model, _ in setups:
        ms = statistics.median(times[name])
        rows.append({"mixer": name, "kernels": "default", "params_M": model.num_parameters() / 1e6, "ms/step": ms,
                     "tok/s": args.batch * args.seq / (ms / 1e3), "peak_GB": float("nan"),
                     "rounds_ms": [round(x, 3) for x in times[name]]})
    return rows


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="shakespeare-384")
    p.add_argument("--mixers", default="mha,mla")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq", type=int, default=1024)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--interleave", type=int, default=0,
                   help="N > 0: build every mixer first, then time them in N round-robin rounds (no peak memory)")
    p.add_argument("--quick", action="store_true", help="tiny CPU-sized run (smoke test)")
    p.add_argument("--name", default=None, help="results file name (default train_step_<preset>)")
    p.add_argument("--kernels", default="default",
                   help="';'-separated variants of the optional fused kernels, e.g. 'default;+rmsnorm' (A/B)")
    args, args.overrides = p.parse_known_args()
    if args.quick:
        args.preset, args.batch, args.seq, args.warmup, args.repeats = "tiny", 2, 32, 1, 2
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    import attnlab.ops.rmsnorm as rmsnorm
    import attnlab.ops.swiglu as swiglu

    defaults = {"rmsnorm": rmsnorm.ENABLED, "swiglu": swiglu.ENABLED}
    rows = []
    if args.interleave > 0:
        rows = bench_interleaved([m.strip() for m in args.mixers.split(",")], args, device)
    for m in ([] if args.interleave > 0 else args.mixers.split(",")):
        for variant in args.kernels.split(";"):
            args.variant = variant.strip()
            set_kernels(args.variant, defaults)
            rows.append(bench_mixer(m.strip(), args, device))
    set_kernels("default", defaults)
    for r in rows:
        r["tok/s vs first"] = r["tok/s"] / rows[0]["tok/s"]
        if rows[0]["peak_GB"] == rows[0]["peak_GB"]:
            r["mem vs first"] = r["peak_GB"] / rows[0]["peak_GB"]
    name = args.name or f"train_step_{args.preset}{'_compiled' if args.compile else ''}"
    write_results(name, rows, {"config": {"preset": args.preset, "batch": args.batch, "seq": args.seq,
                                          "compile": args.compile, "kernels": args.kernels,
                                          "interleave": args.interleave,
                                          "overrides": args.overrides}})


if __name__ == "__main__":
    main()
