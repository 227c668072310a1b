"""``attnlab info``: registered mixers, and for a config its parameters and measured cache bytes."""

from __future__ import annotations

import json

import torch

from ..bench import format_table
from ..layers.registry import get_mixer, mixer_names
from .common import model_config, parse_overrides


def register(sub) -> None:
    p = sub.add_parser("info", help="list mixers; parameters and KV-cache bytes for a config",
                       description="Lists registered mixers. For the config (a preset plus "
                       "--model.<field> value overrides) prints parameter counts and cache bytes "
                       "per layer, measured by filling real caches.")
    p.add_argument("--preset", default="tiny", help="model preset (default: tiny)")
    p.add_argument("--probe-len", type=int, default=64, help="tokens used to fill the probe caches")
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    p.set_defaults(func=run)


def measure_cache(cfg, mixer_name: str, probe_len: int) -> dict:
    """Build one layer of this mixer, fill caches of probe_len and 2*probe_len tokens, and derive
    the bytes that grow per token and the bytes that stay fixed, from nbytes() of what is held."""
    cls = get_mixer(mixer_name)
    torch.manual_seed(0)
    mixer = cls(cfg, cfg.options_for(mixer_name), 0).eval()
    sizes = {}
    for n in (probe_len, 2 * probe_len):
        cache = mixer.new_cache(1, n, device="cpu", dtype=torch.float32)
        with torch.no_grad():
            mixer(torch.randn(1, n, cfg.dim), cache)
        assert cache.seen == n
        sizes[n] = cache.nbytes()
    per_token = (sizes[2 * probe_len] - sizes[probe_len]) / probe_len
    return {
        "mixer": mixer_name,
        "cache": type(cache).__name__,
        "bytes/token (fp32)": per_token,
        "fixed bytes (fp32)": sizes[probe_len] - per_token * probe_len,
        "params": sum(p.numel() for p in mixer.parameters()),
    }


def run(args) -> int:
    cfg = model_config(args.preset, parse_overrides(args.overrides))
    mixers = [{"mixer": n, "about": ((get_mixer(n).__doc__ or "").strip().splitlines() or [""])[0]}
              for n in mixer_names()]
    per_mixer = {n: measure_cache(cfg, n, args.probe_len) for n in dict.fromkeys(cfg.layer_mixers)}
    with torch.device("meta"):
        from ..model import LanguageModel

        n_params = LanguageModel(cfg).num_parameters()
    layers = [dict(layer=i, **per_mixer[n]) for i, n in enumerate(cfg.layer_mixers)]
    total = sum(r["bytes/token (fp32)"] for r in layers)
    if args.json:
        print(json.dumps({"mixers": mixers, "config": cfg.to_dict(), "parameters": n_params,
                          "layers": layers, "cache_bytes_per_token_fp32": total}, indent=2))
        return 0
    print("Registered mixers:")
    print(format_table(mixers))
    print(f"\nConfig (preset {args.preset!r}): dim={cfg.dim} layers={cfg.n_layers} heads={cfg.n_heads} "
          f"kv_heads={cfg.kv_heads} pattern={cfg.mixer!r}; parameters: {n_params:,}")
    print(format_table(layers))
    print(f"Cache bytes per token, all layers (fp32; halve for bf16): {total:,.0f}")
    return 0
