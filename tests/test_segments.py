"""Packed documents: no attention across a separator (segments), for the mixers that support it."""

import pytest
import torch

from attnlab import InputError, ModelConfig, build_model
from attnlab.ops.attention import attention_reference, causal_attention
from attnlab.testing import rel_err

OPTS = {"mla": {"kv_lora_rank": 16, "q_lora_rank": 24, "qk_rope_head_dim": 8}}


@pytest.mark.parametrize("hq,hk,window", [(4, 4, None), (4, 2, None), (2, 1, 3)])
def test_segment_attention_matches_reference(hq, hk, window):
    q, k, v = torch.randn(2, hq, 11, 8), torch.randn(2, hk, 11, 8), torch.randn(2, hk, 11, 6)
    seg = torch.tensor([[0] * 4 + [1] * 5 + [2] * 2, [0] * 11])
    out = causal_attention(q, k, v, window=window, scale=0.4, segments=seg)
    ref = attention_reference(q, k, v, window=window, scale=0.4, segments=seg)
    assert rel_err(out, ref) <= 1e-6


@pytest.mark.parametrize("mixer", ["mha", "mla", "mha,mla"])
def test_packed_documents_equal_documents_alone(mixer):
    """RoPE is relative, so a document's logits inside a packed row equal its logits alone."""
    cfg = ModelConfig(vocab_size=50, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=64,
                      mixer=mixer, mixer_options=OPTS)
    model = build_model(cfg).eval()
    a, b = torch.randint(0, 50, (1, 7)), torch.randint(0, 50, (1, 9))
    packed = torch.cat([a, b], 1)
    seg = torch.tensor([[0] * 7 + [1] * 9])
    with torch.no_grad():
        out = model(packed, segments=seg)
        alone = torch.cat([model(a), model(b)], 1)
        mixed = model(packed)
    assert rel_err(out, alone) <= 1e-5
    assert rel_err(mixed[:, 7:], alone[:, 7:]) > 1e-3  # without segments the documents do mix


def test_segments_refused_where_unsupported():
    cfg = ModelConfig(vocab_size=50, dim=64, n_layers=2, n_heads=4, max_seq_len=64, mixer="gdn,mha")
    model = build_model(cfg)
    ids = torch.randint(0, 50, (1, 8))
    assert not model.supports_segments
    with pytest.raises(InputError, match="gdn"):
        model(ids, segments=torch.zeros_like(ids))
    mha = build_model(ModelConfig(vocab_size=50, dim=64, n_layers=1, n_heads=4, max_seq_len=64))
    with pytest.raises(InputError, match="cache"):
        mha(ids, cache=mha.new_cache(1, 8), segments=torch.zeros_like(ids))
    with pytest.raises(InputError, match="shaped like"):
        mha(ids, segments=torch.zeros(1, 7, dtype=torch.long))


def test_trainer_uses_document_mask(tmp_path):
    from attnlab.train.config import ExperimentConfig
    from attnlab.train.trainer import Trainer

    docs = tmp_path / "docs"
    docs.mkdir()
    for i in range(3):
        (docs / f"d{i}.txt").write_text(f"document {i}: the cat sat on the mat. " * 30)

    def exp(mixer, **train):
        return ExperimentConfig.from_dict({
            "preset": "tiny", "model": {"dim": 32, "n_layers": 1, "n_heads": 2, "max_seq_len": 128, "mixer": mixer},
            "data": {"task": "text", "path": str(docs), "tokenizer": "byte"},
            "train": {"steps": 2, "batch_size": 4, "seq_len": 64, "warmup_steps": 1, "eval_every": 2,
                      "eval_batches": 1, "progress": False, "out_dir": str(tmp_path / mixer), "device": "cpu", **train}})

    t = Trainer(exp("mha"))
    assert t.document_mask
    for i in range(50):  # a batch whose windows cross a document boundary
        x, y = t.task.train_batch(i, 4)
        seg = t.task.segments(x)
        if int(seg.max()) >= 1:
            break
    assert int(seg.max()) >= 1
    assert torch.equal(seg, (x == t.task.sep).cumsum(1))
    with torch.no_grad():
        masked = t.loss(x, y)[0]
        t.document_mask = False
        unmasked = t.loss(x, y)[0]
    assert not torch.equal(masked, unmasked)
    assert not Trainer(exp("gdn")).document_mask  # loss masking only
    assert not Trainer(exp("mha", document_mask=False)).document_mask
