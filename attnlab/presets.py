"""Named model presets (plain dicts of ModelConfig fields; override any field on top)."""

from __future__ import annotations

from typing import Any

from .errors import ConfigError

PRESETS: dict[str, dict[str, Any]] = {
    # CPU tests and quick demos.
    "tiny": dict(vocab_size=256, dim=64, n_layers=2, n_heads=4, max_seq_len=256,
                 mixer_options={"mla": {"kv_lora_rank": 16, "q_lora_rank": 32, "qk_rope_head_dim": 8}}),
    # The embedded MQAR demo (`attnlab compare`'s default): tiny, with MLA ranks that can learn
    # recall in a few hundred CPU steps (kv_lora_rank 16 with q_lora_rank 32 stays at the 1/pairs
    # plateau at that budget; 32 with a full-rank query and 16 rope dims reaches ~1.0).
    "mqar-tiny": dict(vocab_size=32, dim=64, n_layers=2, n_heads=4, max_seq_len=256,
                      mixer_options={"mla": {"kv_lora_rank": 32, "q_lora_rank": 0, "qk_rope_head_dim": 16}}),
    # The Diff-MLA research notebook's TinyShakespeare config (char vocab 65, seq 1024).
    "shakespeare-384": dict(vocab_size=65, dim=384, n_layers=6, n_heads=6, max_seq_len=1024,
                            mixer_options={"mla": {"kv_lora_rank": 64, "q_lora_rank": 128, "qk_rope_head_dim": 32}}),
    # The CMD-MLA research notebook's TinyShakespeare config.
    "shakespeare-512": dict(vocab_size=65, dim=512, n_layers=6, n_heads=8, max_seq_len=1024,
                            mixer_options={"mla": {"kv_lora_rank": 128, "q_lora_rank": 256, "qk_rope_head_dim": 32}}),
    # DeltaNet-MLA design sizes.
    "small": dict(vocab_size=32768, dim=1024, n_layers=12, n_heads=16, max_seq_len=4096,
                  mixer_options={"mla": {"kv_lora_rank": 256, "q_lora_rank": 512, "qk_rope_head_dim": 32}}),
    "base": dict(vocab_size=32768, dim=1536, n_layers=24, n_heads=16, max_seq_len=4096,
                 mixer_options={"mla": {"kv_lora_rank": 384, "q_lora_rank": 768, "qk_rope_head_dim": 64}}),
    "large": dict(vocab_size=32768, dim=2048, n_layers=28, n_heads=16, max_seq_len=4096,
                  mixer_options={"mla": {"kv_lora_rank": 512, "q_lora_rank": 1024, "qk_rope_head_dim": 64}}),
}

# DeltaNet-MLA hybrids: the small/base/large sizes with 2 GatedDeltaNet layers per MLA layer
# ("gdn,gdn,mla" cycled over the layers). Derived from the dense presets, not copied.
for _size in ("small", "base", "large"):
    PRESETS[f"hybrid-{_size}"] = dict(
        PRESETS[_size], mixer="gdn,gdn,mla",
        mixer_options={**PRESETS[_size]["mixer_options"], "gdn": {"conv_size": 4, "chunk_size": 64}})
del _size


def preset(name: str) -> dict[str, Any]:
    if name not in PRESETS:
        raise ConfigError("preset", f"unknown preset {name!r}; presets: {', '.join(PRESETS)}")
    import copy

    return copy.deepcopy(PRESETS[name])
