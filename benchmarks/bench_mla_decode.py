"""MLA absorbed decode: attention over the latent cache, one new token, in GB/s of cache read.

    python benchmarks/bench_mla_decode.py               # B=64, T=8192, 16 heads, latent 512 + rope 64, bf16
    python benchmarks/bench_mla_decode.py --quick

Compares, in one run: attnlab's absorbed_attention (one [c | k_rope] buffer, two batched matmuls
over (heads x tokens) rows) against a DeepSeek-style einsum over separate latent and rope-key
tensors (the issue's anchor: 0.647 ms, 934 GB/s on an H100), and the full mla mixer decode step
(projections included) at dim 2048. GB/s counts the cache bytes once.
"""

from __future__ import annotations

import argparse

import torch

from attnlab import ModelConfig
from attnlab.bench import time_ms, write_results
from attnlab.layers.mla import MultiHeadLatentAttention, absorbed_attention


def einsum_reference(q_lat, q_rope, kv, pe, scale):
    scores = (torch.einsum("bhc,btc->bht", q_lat, kv) + torch.einsum("bhr,btr->bht", q_rope, pe)) * scale
    p = scores.float().softmax(-1).to(kv.dtype)
    return torch.einsum("bht,btc->bhc", p, kv)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--ctx", type=int, default=8192)
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--rank", type=int, default=512)
    ap.add_argument("--rope", type=int, default=64)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    if args.quick:
        args.batch, args.ctx, args.heads, args.rank, args.rope = 2, 64, 4, 32, 8
    cuda = torch.cuda.is_available()
    dev, dt = ("cuda", torch.bfloat16) if cuda else ("cpu", torch.float32)
    b, t, h, r, dr = args.batch, args.ctx, args.heads, args.rank, args.rope
    scale = (128 + dr) ** -0.5
    latent = torch.randn(b, t, r + dr, device=dev, dtype=dt)
    kv, pe = latent[..., :r].contiguous(), latent[..., r:].contiguous()
    q_lat = torch.randn(b, h, 1, r, device=dev, dtype=dt)
    q_rope = torch.randn(b, h, 1, dr, device=dev, dtype=dt)
    cache_bytes = latent.numel() * latent.element_size()
    rows = []

    ms = time_ms(lambda: absorbed_attention(q_lat, q_rope, latent, r, scale, t - 1), warmup=10, repeats=50)
    rows.append({"path": "attnlab absorbed_attention", "ms": ms, "GB/s": cache_bytes / ms / 1e6})
    ms = time_ms(lambda: einsum_reference(q_lat[:, :, 0], q_rope[:, :, 0], kv, pe, scale), warmup=10, repeats=50)
    rows.append({"path": "DeepSeek-style einsum", "ms": ms, "GB/s": cache_bytes / ms / 1e6})

    # Whole mixer decode step (projections + absorbed attention + output), dim 2048.
    dim = 2048 if not args.quick else 64
    cfg = ModelConfig(vocab_size=32, dim=dim, n_layers=1, n_heads=h, head_dim=128 if not args.quick else 16,
                      max_seq_len=t + 1, mixer="mla",
                      mixer_options={"mla": {"kv_lora_rank": r, "q_lora_rank": min(1536, dim), "qk_rope_head_dim": dr}})
    mixer = MultiHeadLatentAttention(cfg, cfg.options_for("mla"), 0).to(dev, dt).eval()
    cache = mixer.new_cache(b, t + 1, device=dev, dtype=dt)
    cache.buf.normal_()
    cache.seen = t
    x = torch.randn(b, 1, dim, device=dev, dtype=dt)

    def step():
        cache.seen = t
        with torch.no_grad():
            mixer(x, cache)

    ms = time_ms(step, warmup=10, repeats=50)
    rows.append({"path": f"mla mixer decode step (dim {dim})", "ms": ms, "GB/s": cache_bytes / ms / 1e6})
    write_results("mla_decode", rows, {"config": vars(args)})


if __name__ == "__main__":
    main()
