"""DSALT: semantics (naive loop vs dense reference), decode == forward, cache bound, gradients
reaching the window predictor and alpha, bad input. Kernel/flex paths: tests/test_dsalt_kernels.py."""

import math

import pytest
import torch

from attnlab import ConfigError, ModelConfig, build_model
from attnlab.layers.dsalt import DSALT
from attnlab.ops.dsalt import dsalt_reference, select_landmarks
from attnlab.testing import decode_vs_forward, mixer_decode_vs_forward, rel_err


def naive_dsalt(q, k, v, win, energy, n_max, edge, n_landmarks, block, scale):
    """Query-by-query loop written straight from the definition (independent of reference.py)."""
    b, h, t, _ = q.shape
    hk = k.shape[1]
    out = torch.zeros(b, h, t, v.shape[-1], dtype=torch.float64)
    e16 = energy.float().to(torch.float16).double()
    for bi in range(b):
        for hi in range(h):
            kh = hi // (h // hk)
            for i in range(t):
                start = (i // block) * block
                order = sorted(range(start), key=lambda j: (-e16[bi, kh, j].item(), j))
                lms = set(order[:n_landmarks])
                logits, vals = [], []
                for j in range(i + 1):
                    d = i - j
                    r = min(1.0, (win[bi, hi, i].item() - d - 0.5) / edge + 0.5) if d < n_max else 0.0
                    if r > 0:
                        bias = math.log(r)
                    elif j in lms:
                        bias = -math.log1p(math.exp(-energy[bi, kh, j].item()))
                    else:
                        continue
                    logits.append((q[bi, hi, i].double() @ k[bi, kh, j].double()).item() * scale + bias)
                    vals.append(v[bi, kh, j].double())
                p = torch.tensor(logits, dtype=torch.float64).softmax(0)
                out[bi, hi, i] = (p[:, None] * torch.stack(vals)).sum(0)
    return out


def inputs(b=2, h=4, hk=2, t=23, d=8, n_min=1.0, n_max=7, dtype=torch.float32, grad=False):
    q = torch.randn(b, h, t, d, dtype=dtype)
    k = torch.randn(b, hk, t, d, dtype=dtype)
    v = torch.randn(b, hk, t, d, dtype=dtype)
    win = n_min + torch.rand(b, h, t) * (n_max - n_min)
    energy = torch.randn(b, hk, t)
    ts = [q, k, v, win, energy]
    if grad:
        for x in ts:
            x.requires_grad_(True)
    return ts


@pytest.mark.parametrize("n_max,edge,k,block,t", [(7, 3.0, 4, 4, 23), (1, 0.5, 3, 5, 17), (20, 2.0, 2, 3, 19),
                                                   (4, 1.0, 0, 4, 9), (5, 8.0, 30, 4, 13)])
def test_reference_matches_naive_definition(n_max, edge, k, block, t):
    q, kk, v, win, e = inputs(t=t, n_max=n_max)
    # ties in the float16-rounded energy are broken by the earlier position
    e[:, :, 3:6] = e[:, :, 2:3]
    ref = dsalt_reference(q, kk, v, win, e, n_max=n_max, edge=edge, n_landmarks=k, block=block, scale=0.3)
    assert rel_err(ref, naive_dsalt(q, kk, v, win, e, n_max, edge, k, block, 0.3)) <= 1e-6


def test_landmark_selection_is_causal_prefix_topk():
    e = torch.randn(3, 50)
    sel = select_landmarks(e, 6, 7)  # [3, NB, 6]
    from attnlab.ops.dsalt import key_positions, rank_keys
    keys = rank_keys(e)
    for b in range(sel.shape[1]):
        want = keys[:, : b * 7].topk(min(6, b * 7), -1).values if b else keys[:, :0]
        got = sel[:, b, : want.shape[-1]]
        assert torch.equal(got, want)
        assert (key_positions(got) < b * 7).all()


def test_reference_causal():
    q, k, v, win, e = inputs(t=21)
    kw = dict(n_max=6, edge=2.0, n_landmarks=3, block=4, scale=0.4)
    out = dsalt_reference(q, k, v, win, e, **kw)
    for i in (0, 5, 12, 19):
        q2, k2, v2, w2, e2 = (x.clone() for x in (q, k, v, win, e))
        for x in (q2, k2, v2, w2, e2):
            x[:, :, i + 1:] = torch.randn_like(x[:, :, i + 1:]) * 3
        out2 = dsalt_reference(q2, k2, v2, w2, e2, **kw)
        assert torch.equal(out[:, :, : i + 1], out2[:, :, : i + 1])


def small(opts=None, **kw):
    o = dict(n_min=2, n_max=9, edge=3.0, n_landmarks=5, block=4)
    o.update(opts or {})
    base = dict(vocab_size=61, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=64, mixer="dsalt",
                mixer_options={"dsalt": o})
    base.update(kw)
    return build_model(ModelConfig(**base)).eval()


OPTS = {
    "default": {},
    "mha-heads": dict(_kv=4),
    "window-1": dict(n_min=1, n_max=1, edge=0.5, n_landmarks=3, block=8),
    "no-landmarks": dict(n_min=12, n_max=12, n_landmarks=0, block=5),
    "block>window": dict(n_min=1, n_max=3, n_landmarks=4, block=16),
    "many-landmarks": dict(n_landmarks=40, block=2),
}


@pytest.mark.parametrize("name", list(OPTS))
@pytest.mark.parametrize("prompt_len,chunk", [(1, 1), (13, 5), (3, 16)])
def test_decode_equals_forward(name, prompt_len, chunk):
    o = dict(OPTS[name])
    kv = o.pop("_kv", 2)
    model = small(o, n_kv_heads=kv)
    ids = torch.randint(0, 5, (2, 29))  # few distinct tokens: many exact energy ties
    assert decode_vs_forward(model, ids, prompt_len, chunk) <= 1e-5


def test_mixer_decode_and_landmarks_matter():
    model = small()
    mix = model.blocks[0].mixer
    x = torch.randn(2, 41, 64)
    assert mixer_decode_vs_forward(mix, x, 6, 1) <= 1e-5
    mix.opts.n_landmarks = 0
    without = mix(x)
    mix.opts.n_landmarks = 5
    assert rel_err(without, mix(x)) > 1e-3


def test_cache_bytes_bounded():
    model = small(dict(n_max=9, n_landmarks=5, block=4))
    mix = model.blocks[0].mixer
    hk, d = 2, 16
    sizes = []
    for max_len in (16, 64):
        cache = mix.new_cache(3, max_len, dtype=torch.float32)
        sizes.append(cache.nbytes())
        # K/V for (n_max + k) tokens per kv head + per-token energy/key metadata
        assert cache.nbytes() <= 3 * hk * (9 + 5) * (2 * d * 4 + 12)
    assert sizes[0] == sizes[1]
    cache = model.new_cache(1, 64)
    with torch.no_grad():
        for i in range(40):
            model(torch.randint(0, 61, (1, 1)), cache=cache)
    assert cache.nbytes() == 2 * sizes[0] // 3


def test_gradients_reach_predictor_and_alpha():
    model = small().train()
    ids = torch.randint(0, 61, (2, 30))
    loss = model.loss(ids[:, :-1], ids[:, 1:]) + model.aux_loss
    loss.backward()
    mix = model.blocks[1].mixer
    assert mix.win_proj.weight.grad.abs().sum() > 0
    assert mix.win_proj.bias.grad.abs().sum() > 0
    assert mix.alpha_logit.grad.abs().sum() > 0
    assert model.aux_loss is not None and model.aux_loss.item() > 0


def test_reference_gradcheck_window_and_energy():
    q, k, v, win, e = (x.double() for x in inputs(b=1, h=2, hk=1, t=11, d=4, n_max=5))
    win = (1.3 + torch.rand(1, 2, 11, dtype=torch.float64) * 3.2).requires_grad_()
    e = e.requires_grad_()
    f = lambda w, en: dsalt_reference(q, k, v, w, en, n_max=5, edge=2.0, n_landmarks=2, block=3, scale=0.5)
    # the float16 rank keys are piecewise constant: finite differences stay within one piece
    assert torch.autograd.gradcheck(f, (win, e), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("opts,field", [
    (dict(n_min=10, n_max=5), "mixer_options.dsalt.n_min"),
    (dict(n_max=100), "mixer_options.dsalt.n_max"),
    (dict(n_landmarks=64), "mixer_options.dsalt.n_landmarks"),
    (dict(n_landmarks=-1), "mixer_options.dsalt.n_landmarks"),
    (dict(edge=0.0), "mixer_options.dsalt.edge"),
    (dict(block=0), "mixer_options.dsalt.block"),
    (dict(impl="cuda"), "mixer_options.dsalt.impl"),
    (dict(impl="triton", block=24), "mixer_options.dsalt.block"),
])
def test_bad_options(opts, field):
    with pytest.raises(ConfigError) as ei:
        small(opts)
    assert ei.value.field == field


def test_registered():
    from attnlab.layers.registry import get_mixer

    assert get_mixer("dsalt") is DSALT


def test_landmark_membership_is_one_block_range():
    """The property flex's mods and the stable-slot kernel rely on: a token is in the sets of one
    contiguous range of query blocks."""
    from attnlab.ops.dsalt import key_positions
    from attnlab.ops.dsalt.flex import landmark_intervals

    e = torch.randn(2, 3, 200)
    sets = select_landmarks(e, 7, 8)
    first, last = landmark_intervals(e, 7, 8)
    for b in range(2):
        for h in range(3):
            members = {}
            for blk in range(sets.shape[2]):
                for key in sets[b, h, blk].tolist():
                    if key != torch.iinfo(torch.int64).min:
                        members.setdefault(int(key_positions(torch.tensor(key))), []).append(blk)
            for j in range(200):
                blks = members.get(j, [])
                if blks:
                    assert blks == list(range(blks[0], blks[-1] + 1))
                    assert (first[b, h, j].item(), last[b, h, j].item()) == (blks[0], blks[-1])
                else:
                    assert first[b, h, j] > last[b, h, j]


def test_mixer_flex_prefill_decodes():
    """impl='flex' (CPU: eager forward) for the training path and the prefill, then decode."""
    import warnings

    model = small(dict(impl="flex"))
    ids = torch.randint(0, 61, (2, 29))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = small(dict(impl="reference"))
        ref.load_state_dict(model.state_dict())
        with torch.no_grad():
            assert rel_err(model(ids), ref(ids)) <= 1e-5
        assert decode_vs_forward(model, ids, 11, 3) <= 1e-5
