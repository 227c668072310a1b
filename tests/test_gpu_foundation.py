"""Foundation on the GPU in bf16 (run on the device; skipped without CUDA)."""

import pytest
import torch

from attnlab import ModelConfig, build_model
from attnlab.testing import decode_vs_forward

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("mixer,kv", [("mha", None), ("mha", 2), ("mla", None), ("mha,mla", 1)])
def test_bf16_decode_matches_forward(mixer, kv):
    cfg = ModelConfig(vocab_size=101, dim=256, n_layers=3, n_heads=8, n_kv_heads=kv, max_seq_len=300,
                      mixer=mixer, mixer_options={"mla": {"kv_lora_rank": 64, "q_lora_rank": 96}})
    model = build_model(cfg, device="cuda").eval()
    ids = torch.randint(0, 101, (3, 257), device="cuda")
    assert decode_vs_forward(model, ids, 100, 1) <= 1e-5  # fp32 on GPU (TF32 off by default)
    assert decode_vs_forward(model.to(torch.bfloat16), ids, 100, 7) <= 3e-2


def test_bf16_training_step_runs():
    cfg = ModelConfig(vocab_size=65, dim=384, n_layers=2, n_heads=6, max_seq_len=512, mixer="mha,mla")
    model = build_model(cfg, device="cuda")
    ids = torch.randint(0, 65, (4, 513), device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        logits = model(ids[:, :-1])
    loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), ids[:, 1:].flatten())
    loss.backward()
    assert torch.isfinite(loss) and all(p.grad is not None for p in model.parameters())
