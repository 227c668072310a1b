"""Fidelity of the spectral KV cache on real (briefly trained) models, CPU.

For each (block size, key rank, value rank) it runs held-out TinyShakespeare text through the model
with the spectral cache (one prefill: every query sees the blocks compressed before it plus the
exact recent tokens, exactly as in token-by-token decode) and with exact attention, and reports

* attention-output relative error and correlation vs exact (inputs of each layer's output
  projection, end to end: errors of earlier layers included; mean over layers; positions past
  the first block, where compression is in play),
* next-token (argmax) agreement and perplexity (exact vs spectral) on those positions,
* compression ratio measured from the cache's tensors (vs an fp32 cache for these fp32 CPU
  runs, and for a bf16 cache of the same shape, measured the same way).

Models: an attnlab char-level GQA model trained here for --steps steps (a minimal AdamW loop), and
a tiny Hugging Face Llama built from a config (nothing downloaded), trained the same way.

    python benchmarks/spectral_fidelity.py            # ~15 min on one busy CPU core
    python benchmarks/spectral_fidelity.py --quick    # smoke test
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from attnlab import ModelConfig, build_model  # noqa: E402
from attnlab.bench import write_results  # noqa: E402
from attnlab.caches.spectral import SpectralCache, cache_stats  # noqa: E402

DEFAULT_DATA = "/work/shared/data/tinyshakespeare/input.txt"


def load_text(path: str | None, quick: bool):
    p = Path(path or os.environ.get("ATTNLAB_TINYSHAKESPEARE", DEFAULT_DATA))
    if p.exists():
        text = p.read_text()
    else:  # offline CI without the data set: a small public-domain-like stand-in
        text = ("First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n\n"
                "First Citizen:\nYou are all resolved rather to die than to famish?\n\n") * 200
    if quick:
        text = text[:200_000]
    chars = sorted(set(text))
    stoi = {c: i for i, c in enumerate(chars)}
    data = torch.tensor([stoi[c] for c in text], dtype=torch.long)
    n = int(0.9 * len(data))
    return data[:n], data[n:], len(chars), str(p) if p.exists() else "builtin stand-in text"


def train(loss_fn, params, train_data, steps, batch, seq_len, lr=3e-3, seed=0):
    """Minimal AdamW loop with warm-up + cosine decay; returns the last losses."""
    opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.95), weight_decay=0.01)
    g = torch.Generator().manual_seed(seed)
    losses = []
    for step in range(steps):
        warm = min(1.0, (step + 1) / max(1, steps // 10))
        for grp in opt.param_groups:
            grp["lr"] = lr * warm * 0.5 * (1 + math.cos(math.pi * step / max(1, steps)))
        ix = torch.randint(0, len(train_data) - seq_len - 1, (batch,), generator=g)
        x = torch.stack([train_data[i:i + seq_len] for i in ix])
        y = torch.stack([train_data[i + 1:i + seq_len + 1] for i in ix])
        loss = loss_fn(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        losses.append(loss.item())
        if (step + 1) % 50 == 0:
            print(f"  step {step + 1}/{steps} loss {sum(losses[-50:]) / 50:.3f}", flush=True)
    return losses


def eval_batch(val_data, n_seqs, length):
    starts = torch.arange(n_seqs) * length
    return torch.stack([val_data[s:s + length + 1] for s in starts])


def corr(a, b):
    a, b = a.double().flatten(), b.double().flatten()
    a, b = a - a.mean(), b - b.mean()
    return (a @ b / (a.norm() * b.norm()).clamp_min(1e-30)).item()


class Capture:
    """forward_pre_hooks on the output projections: the attention output of every layer."""

    def __init__(self, modules):
        self.out: list[torch.Tensor] = []
        self.handles = [m.register_forward_pre_hook(lambda mod, args: self.out.append(args[0].detach()))
                        for m in modules]

    def take(self):
        out, self.out = self.out, []
        return out

    def close(self):
        for h in self.handles:
            h.remove()


def compare(exact_logits, spec_logits, targets, exact_attn, spec_attn, start):
    s = slice(start, None)
    el, sl, tg = exact_logits[:, s].float(), spec_logits[:, s].float(), targets[:, s]
    rel = [((a[:, s] - b[:, s]).norm() / b[:, s].norm()).item() for a, b in zip(spec_attn, exact_attn)]
    cor = [corr(a[:, s], b[:, s]) for a, b in zip(spec_attn, exact_attn)]
    ce_e = F.cross_entropy(el.flatten(0, 1), tg.flatten()).item()
    ce_s = F.cross_entropy(sl.flatten(0, 1), tg.flatten()).item()
    return {
        "attn_rel_err": sum(rel) / len(rel), "attn_rel_err_max": max(rel), "attn_corr": sum(cor) / len(cor),
        "next_token_agree": (el.argmax(-1) == sl.argmax(-1)).float().mean().item(),
        "ppl_exact": math.exp(ce_e), "ppl_spectral": math.exp(ce_s),
        "ppl_change_%": 100 * (math.exp(ce_s - ce_e) - 1),
    }


def bf16_ratio(n_kv_heads, head_dim, length, **opts):
    c = SpectralCache(1, length, n_kv_heads, head_dim, dtype=torch.bfloat16, **opts)
    x = torch.randn(1, n_kv_heads, length, head_dim, dtype=torch.bfloat16)
    c.append(x, x)
    return c.stats()["compression_ratio"]


def configs(args, head_dim):
    out = []
    for bs in args.blocks:
        for r in args.ranks:
            if r <= min(bs, head_dim):
                out.append(dict(block_size=bs, key_rank=r, value_rank=r))
    bs = args.blocks[0]
    out.append(dict(block_size=bs, key_rank=min(bs, head_dim), value_rank=min(bs, head_dim), quantize=False))
    r = args.ranks[len(args.ranks) // 2]
    out.append(dict(block_size=bs, key_rank=r, value_rank=r, svd="randomized"))
    out.append(dict(block_size=bs, key_rank=r, value_rank=r, hot_window=bs // 2))
    return out


def row_for(model_name, opts, metrics, stats, ratio16):
    return {"model": model_name, "block": opts["block_size"], "key_rank": opts["key_rank"],
            "value_rank": opts["value_rank"], "quant": "int8" if opts.get("quantize", True) else "none",
            "svd": opts.get("svd", "exact"), "hot": opts.get("hot_window", 0), **metrics,
            "ratio_fp32": stats["compression_ratio"], "ratio_bf16": ratio16}


def run_attnlab(args, train_data, val_data, vocab, rows, info):
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=vocab, dim=args.dim, n_layers=args.layers, n_heads=4, n_kv_heads=2,
                      head_dim=args.head_dim, max_seq_len=max(args.seq_len, args.eval_len))
    model = build_model(cfg)
    t0 = time.time()
    losses = train(lambda x, y: model.loss(x, y), list(model.parameters()), train_data, args.steps,
                   args.batch, args.seq_len)
    info["attnlab"] = {"config": cfg.to_dict(), "steps": args.steps, "train_s": time.time() - t0,
                       "final_train_loss": sum(losses[-10:]) / len(losses[-10:])}
    model.eval()
    batch = eval_batch(val_data, args.eval_seqs, args.eval_len)
    ids, tg = batch[:, :-1], batch[:, 1:]
    cap = Capture([b.mixer.out_proj for b in model.blocks])
    with torch.no_grad():
        exact = model(ids)
        exact_attn = cap.take()
        info["attnlab"]["val_loss"] = F.cross_entropy(exact.flatten(0, 1), tg.flatten()).item()
        for opts in configs(args, cfg.attn_head_dim):
            cache = model.new_cache(ids.shape[0], ids.shape[1], kind="spectral", **opts)
            spec = model(ids, cache=cache)
            m = compare(exact, spec, tg, exact_attn, cap.take(), opts["block_size"] + opts.get("hot_window", 0))
            rows.append(row_for("attnlab-char", opts, m, cache_stats(cache),
                                bf16_ratio(cfg.kv_heads, cfg.attn_head_dim, args.eval_len, **opts)))
            print(rows[-1], flush=True)
    cap.close()


def run_hf(args, train_data, val_data, vocab, rows, info):
    try:
        from transformers import LlamaConfig, LlamaForCausalLM
    except ImportError:
        print("transformers not installed: skipping the Hugging Face model")
        return
    from attnlab.integrations.hf_spectral import SpectralHFCache, enable_spectral_attention

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=args.dim, intermediate_size=2 * args.dim,
                      num_hidden_layers=args.layers, num_attention_heads=4, num_key_value_heads=2,
                      head_dim=args.head_dim, max_position_embeddings=max(args.seq_len, args.eval_len),
                      pad_token_id=0)
    model = LlamaForCausalLM(cfg)
    enable_spectral_attention(model)  # without a spectral cache this is plain SDPA

    def loss_fn(x, y):
        logits = model(x).logits
        return F.cross_entropy(logits.flatten(0, 1), y.flatten())

    t0 = time.time()
    losses = train(loss_fn, list(model.parameters()), train_data, args.hf_steps, args.batch, args.seq_len)
    info["hf_llama"] = {"steps": args.hf_steps, "train_s": time.time() - t0,
                        "final_train_loss": sum(losses[-10:]) / max(1, len(losses[-10:]))}
    model.eval()
    batch = eval_batch(val_data, args.eval_seqs, args.eval_len)
    ids, tg = batch[:, :-1], batch[:, 1:]
    cap = Capture([layer.self_attn.o_proj for layer in model.model.layers])
    name = "hf-llama" + ("-random" if args.hf_steps == 0 else "")
    with torch.no_grad():
        exact = model(ids).logits
        exact_attn = cap.take()
        info["hf_llama"]["val_loss"] = F.cross_entropy(exact.flatten(0, 1), tg.flatten()).item()
        for opts in configs(args, args.head_dim):
            cache = SpectralHFCache(model, **opts)
            spec = model(ids, past_key_values=cache).logits
            m = compare(exact, spec, tg, exact_attn, cap.take(), opts["block_size"] + opts.get("hot_window", 0))
            rows.append(row_for(name, opts, m, cache.stats(),
                                bf16_ratio(cfg.num_key_value_heads, args.head_dim, args.eval_len, **opts)))
            print(rows[-1], flush=True)
    cap.close()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny sizes (smoke test)")
    p.add_argument("--data", default=None, help=f"text file (default {DEFAULT_DATA})")
    p.add_argument("--steps", type=int, default=250, help="training steps of the attnlab model")
    p.add_argument("--hf-steps", type=int, default=250, help="training steps of the HF Llama (0: random init)")
    p.add_argument("--ranks", type=int, nargs="*", default=[4, 8, 16, 32])
    p.add_argument("--blocks", type=int, nargs="*", default=[32, 64])
    p.add_argument("--eval-len", type=int, default=256)
    p.add_argument("--eval-seqs", type=int, default=8)
    p.add_argument("--name", default="spectral_fidelity")
    args = p.parse_args(argv)
    args.dim, args.layers, args.head_dim, args.seq_len, args.batch = 128, 4, 64, 256, 4
    if args.quick:
        args.steps, args.hf_steps, args.ranks, args.blocks = 3, 2, [4, 16], [16]
        args.eval_len, args.eval_seqs, args.dim, args.layers, args.head_dim, args.seq_len = 64, 2, 64, 2, 32, 64
    torch.set_num_threads(1)  # tiny matmuls: extra OpenMP threads only contend on small CPUs
    train_data, val_data, vocab, source = load_text(args.data, args.quick)
    rows, info = [], {"data": source, "eval_tokens": args.eval_len * args.eval_seqs}
    run_attnlab(args, train_data, val_data, vocab, rows, info)
    run_hf(args, train_data, val_data, vocab, rows, info)
    write_results(args.name, rows, {"models": info})
    return 0


if __name__ == "__main__":
    sys.exit(main())
