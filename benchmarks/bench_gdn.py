"""GatedDeltaNet benchmarks: the op's fwd+bwd time vs causal softmax attention, and decode memory.

1. Op (``gdn_op.json``): gated delta rule forward+backward, B x T grid, H heads of head dim D, bf16:
   the portable chunked PyTorch path (``chunked``; ``compiled`` = torch.compile'd, where the
   time budget allows), attnlab's Triton path (``triton``; ``triton_compiled`` = torch.compile
   around it, the PyTorch UT-transform part fused, where the budget allows), fla's kernel if it
   is usable on this machine, and SDPA causal attention (flash backend on CUDA) on q/k/v of the
   same shape. Ratios are sdpa_ms / variant_ms (> 1: gdn faster); the crossover is the shortest
   T at which a variant beats SDPA, per batch size and variant.
2. Decode memory (``decode_memory.json`` + ``decode_memory.png``): bytes held by one sequence's
   cache, measured with ``nbytes()`` from real caches of whole models (preset dims), vs context
   length, for mha, mla, gdn, sdla and the 2:1 gdn/mla hybrid.

    python benchmarks/bench_gdn.py                      # GPU: full grid
    python benchmarks/bench_gdn.py --quick              # CPU smoke test (CI)
"""

from __future__ import annotations

import argparse
import os
import time

import torch
import torch.nn.functional as F

from attnlab import ModelConfig
from attnlab.bench import time_ms, write_results
from attnlab.ops.gated_delta import chunk_gated_delta_rule_torch, gated_delta_rule, resolve_impl, triton_available
from attnlab.presets import preset


def op_inputs(b, h, t, d, dtype, device):
    q = torch.randn(b, h, t, d, device=device, dtype=dtype, requires_grad=True)
    k = F.normalize(torch.randn(b, h, t, d, device=device), dim=-1).to(dtype).requires_grad_()
    v = torch.randn(b, h, t, d, device=device, dtype=dtype, requires_grad=True)
    g = F.logsigmoid(torch.randn(b, h, t, device=device) + 4).requires_grad_()
    beta = torch.rand(b, h, t, device=device).requires_grad_()
    return q, k, v, g, beta


def fwd_bwd(fn, inputs):
    def step():
        for x in inputs:
            x.grad = None
        out = fn(*inputs)
        out.backward(torch.ones_like(out))
    return step


def measure(step, device, warmup, repeats):
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    try:
        ms = time_ms(step, warmup=warmup, repeats=repeats)
    except torch.OutOfMemoryError:
        if device == "cuda":
            torch.cuda.empty_cache()
        return None, None
    mem = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None
    return ms, mem


def save_partial(args, rows):
    """Rows so far, in case the run is cut short (the final JSON is written at the end)."""
    import json
    import os
    from pathlib import Path

    out = Path(args.out_dir or os.environ.get("ATTNLAB_BENCH_DIR", "benchmarks/results"))
    out.mkdir(parents=True, exist_ok=True)
    (out / "gdn_op.partial.json").write_text(json.dumps(rows, indent=1))


def bench_op(args, device, dtype):
    rows = []
    chunk = lambda q, k, v, g, b: chunk_gated_delta_rule_torch(q, k, v, g, b, chunk_size=args.chunk_size)[0]  # noqa: E731
    compiled_fn = torch.compile(chunk_gated_delta_rule_torch) if args.compile else None
    compiled = (lambda q, k, v, g, b: compiled_fn(q, k, v, g, b, chunk_size=args.chunk_size)[0])  # noqa: E731
    fla = lambda q, k, v, g, b: gated_delta_rule(q, k, v, g, b, impl="fla")[0]  # noqa: E731
    tri_ok = args.triton and triton_available() and (device == "cuda" or os.environ.get("TRITON_INTERPRET") == "1")
    if tri_ok:
        from attnlab.ops.gated_delta.triton_chunk import chunk_gated_delta_rule_triton
    tri = lambda q, k, v, g, b: chunk_gated_delta_rule_triton(q, k, v, g, b, chunk_size=args.chunk_size)[0]  # noqa: E731
    tri_compiled_fn = torch.compile(chunk_gated_delta_rule_triton) if tri_ok and args.compile else None
    tri_compiled = (lambda q, k, v, g, b: tri_compiled_fn(q, k, v, g, b, chunk_size=args.chunk_size)[0])  # noqa: E731

    def sdpa(q, k, v, g, b):
        if device == "cuda":
            from torch.nn.attention import SDPBackend, sdpa_kernel

            with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                return F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)

    probe = torch.zeros(1, 1, 1, args.head_dim, device=device)
    fla_ok = resolve_impl("auto", probe, probe) == "fla"
    t_start = time.perf_counter()
    grid = [(b, t) for t in args.seq for b in args.batch]
    for b, t in grid:
        x = op_inputs(b, args.heads, t, args.head_dim, dtype, device)
        reps = (2, 5) if b * t >= 65536 else (args.warmup, args.repeats)
        row = {"B": b, "T": t, "H": args.heads, "D": args.head_dim}
        row["sdpa_ms"], row["sdpa_GiB"] = measure(fwd_bwd(sdpa, x), device, *reps)
        if not args.skip_chunked:
            row["chunked_ms"], row["chunked_GiB"] = measure(fwd_bwd(chunk, x), device, *reps)
        if tri_ok and (device == "cuda" or (b, t) == grid[0]):  # the interpreter (CPU) is slow
            row["triton_ms"], row["triton_GiB"] = measure(fwd_bwd(tri, x), device, *reps)
        if fla_ok:
            row["fla_ms"], _ = measure(fwd_bwd(fla, x), device, *reps)
        rows.append(row)
        print(row, flush=True)
        save_partial(args, rows)
        del x
    # compiled variants second: compilation is slow, so they run while the time budget lasts
    # (the Triton path first: it is the fast one; then the PyTorch chunked path)
    compiled_variants = [(name, fn) for name, fn, on in (
        ("triton_compiled", tri_compiled, tri_compiled_fn is not None),
        ("compiled", compiled, compiled_fn is not None and not args.skip_chunked)) if on]
    for name, fn in compiled_variants:
        # B=2 first (the published comparison point), long sequences first
        for row in sorted(rows, key=lambda r: (r["B"] != 2, -r["T"], r["B"])):
            if time.perf_counter() - t_start > args.time_budget:
                print(f"time budget {args.time_budget}s spent: {name} skipped from B={row['B']} T={row['T']}")
                break
            x = op_inputs(row["B"], args.heads, row["T"], args.head_dim, dtype, device)
            reps = (3, 5) if row["B"] * row["T"] >= 65536 else (max(args.warmup, 3), args.repeats)
            try:
                row[f"{name}_ms"], row[f"{name}_GiB"] = measure(fwd_bwd(fn, x), device, *reps)
            except Exception as e:  # a compile failure must not lose the rest of the results
                row[f"{name}_ms"] = None
                print(f"{name} failed at B={row['B']} T={row['T']}: {type(e).__name__}: {e}")
            print({k: row[k] for k in ("B", "T", f"{name}_ms", f"{name}_GiB") if k in row}, flush=True)
            save_partial(args, rows)
            del x
    variants = ("chunked", "compiled", "triton", "triton_compiled", "fla")
    for row in rows:
        for v in variants:
            if row.get(f"{v}_ms") and row.get("sdpa_ms"):
                row[f"sdpa/{v}"] = row["sdpa_ms"] / row[f"{v}_ms"]
    crossover = {}
    for v in variants:
        per_b = {}
        for b in args.batch:
            measured = [r for r in rows if r["B"] == b and r.get(f"sdpa/{v}")]
            if measured:
                faster = [r["T"] for r in measured if r[f"sdpa/{v}"] > 1]
                per_b[str(b)] = min(faster) if faster else None
        if per_b:
            crossover[v] = per_b
    print("crossover T (variant faster than SDPA), per variant and batch size:", crossover)
    write_results("gdn_op", rows, extra={"dtype": str(dtype), "chunk_size": args.chunk_size,
                                         "fla_usable": fla_ok, "crossover_T": crossover},
                  out_dir=args.out_dir)


MEM_MIXERS = {"mha": "mha", "mla": "mla", "gdn": "gdn", "sdla": "sdla", "hybrid gdn,gdn,mla": "gdn,gdn,mla"}


def bench_memory(args):
    from attnlab.model import LanguageModel

    base = preset(args.preset)
    base["max_seq_len"] = max(args.contexts)
    rows = []
    for label, mixer in MEM_MIXERS.items():
        cfg = ModelConfig(**{**base, "mixer": mixer})
        with torch.device("meta"):  # parameters are not needed to size the caches
            model = LanguageModel(cfg)
        for L in args.contexts:
            cache = model.new_cache(1, L, device="cpu", dtype=torch.bfloat16)
            rows.append({"mixer": label, "context": L, "bytes": cache.nbytes(),
                         "MiB": cache.nbytes() / 2**20,
                         "caches": ",".join(sorted({type(c).__name__ for c in cache}))})
            del cache
    path = write_results("decode_memory", rows, extra={"preset": args.preset, "dtype": "bfloat16",
                                                       "batch": 1}, out_dir=args.out_dir)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot")
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    for label in MEM_MIXERS:
        pts = [(r["context"], r["MiB"]) for r in rows if r["mixer"] == label]
        ax.plot(*zip(*pts), marker="o", label=label)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("decode cache per sequence (MiB, bf16)")
    ax.set_title(f"Decode memory per sequence, preset {args.preset!r} dims")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    png = path.with_suffix(".png")
    fig.savefig(png, dpi=120)
    print(f"wrote {png}")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny CPU sizes (CI smoke test)")
    p.add_argument("--batch", type=int, nargs="+", default=[1, 2, 4, 8])
    p.add_argument("--seq", type=int, nargs="+", default=[2048, 8192, 16384, 32768])
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--chunk-size", type=int, default=64)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--no-compile", dest="compile", action="store_false")
    p.add_argument("--no-triton", dest="triton", action="store_false", help="skip attnlab's Triton path")
    p.add_argument("--skip-chunked", action="store_true", help="skip the PyTorch chunked path (eager and compiled)")
    p.add_argument("--time-budget", type=float, default=150.0, help="seconds after which the compiled variant stops")
    p.add_argument("--skip-op", action="store_true")
    p.add_argument("--skip-memory", action="store_true")
    p.add_argument("--preset", default="small", help="model dims for the decode-memory plot")
    p.add_argument("--contexts", type=int, nargs="+", default=[1024, 2048, 4096, 8192, 16384, 32768])
    p.add_argument("--out-dir", default=None)
    args = p.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    if args.quick:
        args.batch, args.seq, args.heads, args.head_dim, args.chunk_size = [1, 2], [64, 200], 2, 16, 16
        args.warmup, args.repeats, args.compile = 1, 2, False
        args.preset, args.contexts = "tiny", [64, 128, 256]
    if not args.skip_op:
        bench_op(args, device, dtype)
    if not args.skip_memory:
        bench_memory(args)


if __name__ == "__main__":
    main()
