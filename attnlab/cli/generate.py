"""``attnlab generate``: sample text from a trained checkpoint, decoding with the model's cache."""

from __future__ import annotations

import sys
import time

import torch

from ..errors import ConfigError, InputError


def register(sub) -> None:
    p = sub.add_parser("generate", help="generate text from a checkpoint",
                       description="Load a checkpoint written by `attnlab train` (a run directory or a "
                       "checkpoint directory) and continue the prompt, decoding token by token with the "
                       "model's cache (KV, latent, ... as its mixers define).")
    p.add_argument("--checkpoint", required=True, help="run directory or checkpoint directory")
    p.add_argument("--prompt", required=True)
    p.add_argument("--max-new-tokens", type=int, default=200)
    p.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--cache-kind", default=None, help="cache kind for the layers that support it")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..config import ModelConfig
    from ..model import build_model
    from ..train.checkpoint import find_checkpoint, load_weights, read_config
    from ..train.tokenizers import load_tokenizer
    from ..train.trainer import resolve_device

    if args.overrides:
        raise ConfigError("arguments", f"unexpected arguments {args.overrides}; see attnlab generate --help")
    ckpt = find_checkpoint(args.checkpoint)
    tok = load_tokenizer(ckpt / "tokenizer")
    if tok is None:
        task = read_config(ckpt)["experiment"]["data"]["task"]
        raise ConfigError("checkpoint", f"{ckpt} has no text tokenizer (it was trained on the {task!r} task)")
    if not args.prompt:
        raise InputError("--prompt must not be empty")
    device = resolve_device(args.device)
    cfg = ModelConfig.from_dict(read_config(ckpt)["model"])
    model = build_model(cfg).to(device).eval()
    load_weights(ckpt, model)
    ids = torch.tensor([tok.encode(args.prompt)], device=device)
    if ids.shape[1] + args.max_new_tokens > cfg.max_seq_len:
        raise InputError(f"prompt ({ids.shape[1]} tokens) + --max-new-tokens {args.max_new_tokens} exceed the "
                         f"model's max_seq_len={cfg.max_seq_len}")
    g = torch.Generator(device=device).manual_seed(args.seed)
    t0 = time.perf_counter()
    out = model.generate(ids, args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                         top_p=args.top_p, generator=g, cache_kind=args.cache_kind)
    dt = time.perf_counter() - t0
    print(tok.decode(out[0].tolist()))
    n = out.shape[1] - ids.shape[1]
    print(f"[{n} tokens in {dt:.2f}s, {n / dt:.1f} tok/s; checkpoint {ckpt}]", file=sys.stderr)
    return 0
