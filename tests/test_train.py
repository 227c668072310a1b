"""Training stack: tasks obey their definitions, data/tokenizers, Trainer (loss falls, bit-exact
resume, atomic checkpoints, NaN stop), configs and their errors, and the train/compare/generate CLI."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from attnlab import ConfigError
from attnlab.cli.main import main
from attnlab.train import ExperimentConfig, Trainer, TrainingDiverged
from attnlab.train import checkpoint as ckpt_mod
from attnlab.train.data import TextCorpus, TextTask, shakespeare_path
from attnlab.train.tasks import (IGNORE, PasskeyTask, generator, mqar_batch, needle_text, passkey_prompt,
                                 QUESTION)
from attnlab.train.tokenizers import BPETokenizer, ByteTokenizer, CharTokenizer, load_tokenizer, save_tokenizer

# CI reads TinyShakespeare from ../shared/data beside the repository (a git worktree sits one level deeper).
_ROOT = Path(__file__).resolve().parents[1]
SHARED = next((p for p in (_ROOT.parent / "shared" / "data", _ROOT.parent.parent / "shared" / "data")
               if (p / "tinyshakespeare" / "input.txt").is_file()), _ROOT.parent / "shared" / "data")
HAS_SHAKESPEARE = (SHARED / "tinyshakespeare" / "input.txt").is_file()

TINY_MODEL = {"dim": 32, "n_layers": 2, "n_heads": 2, "max_seq_len": 128,
              "mixer_options": {"mla": {"kv_lora_rank": 16, "q_lora_rank": 0, "qk_rope_head_dim": 8}}}


def exp_dict(tmp_path, task="mqar", mixer="mha", **train):
    d = {"preset": "tiny", "model": dict(TINY_MODEL, mixer=mixer), "data": {"task": task},
         "train": {"steps": 6, "batch_size": 8, "seq_len": 32, "warmup_steps": 2, "eval_every": 3,
                   "eval_batches": 2, "progress": False, "out_dir": str(tmp_path / "run"), "device": "cpu",
                   **train}}
    if task == "mqar":
        d["data"]["mqar"] = {"vocab_size": 32, "num_kv_pairs": 4, "val_examples": 16}
    return d


def make_exp(tmp_path, **kw):
    return ExperimentConfig.from_dict(exp_dict(tmp_path, **kw))


def write_docs(tmp_path, n=3):
    d = tmp_path / "docs"
    d.mkdir(exist_ok=True)
    for i in range(n):
        (d / f"doc{i}.txt").write_text(("the cat sat on the mat. " * 40 + f"doc {i} ends.\n") * (i + 1))
    return d


# -- tasks -------------------------------------------------------------------------------------

@pytest.mark.parametrize("random_non_queries", [True, False])
def test_mqar_obeys_definition(random_non_queries):
    V, D, T, B = 64, 6, 48, 32
    x, y = mqar_batch(B, T, V, D, power_a=0.01, random_non_queries=random_non_queries,
                      generator=generator(0, 1, 0))
    assert x.shape == y.shape == (B, T)
    for b in range(B):
        keys, vals = x[b, 0:2 * D:2], x[b, 1:2 * D:2]
        assert ((1 <= keys) & (keys < V // 2)).all() and ((V // 2 <= vals) & (vals < V)).all()
        assert len(set(keys.tolist())) == D  # each key once
        pairs = dict(zip(keys.tolist(), vals.tolist()))
        labelled = (y[b] != IGNORE).nonzero().flatten()
        assert len(labelled) == D and (y[b, :2 * D] == IGNORE).all()
        queried = x[b, labelled].tolist()
        assert sorted(queried) == sorted(pairs)  # every key queried exactly once
        for p in labelled.tolist():
            assert (p - 2 * D) % 2 == 0
            assert y[b, p].item() == pairs[x[b, p].item()]  # answer recoverable from the input
        if not random_non_queries:
            rest = torch.ones(T, dtype=torch.bool)
            rest[:2 * D] = False
            rest[labelled] = False
            assert (x[b, rest] == 0).all()
    x2, y2 = mqar_batch(B, T, V, D, generator=generator(0, 1, 0))
    assert torch.equal(x, x2) or not random_non_queries
    assert torch.equal(y, y2)


def test_mqar_gaps_follow_power_law():
    _, y = mqar_batch(2000, 64, 64, 2, power_a=0.01, generator=generator(1, 1, 0))
    pos = (y != IGNORE).nonzero()[:, 1] - 4
    counts = torch.bincount(pos // 2, minlength=30).float()
    assert counts[:3].sum() > 3 * counts[-3:].sum()  # near gaps far more likely than far ones


def test_passkey_obeys_definition():
    prompt, at = passkey_prompt(300, 0.5, "12345")
    assert len(prompt) == 300 and prompt.endswith(QUESTION)
    assert prompt[at:].startswith(needle_text("12345"))
    n_fill = 300 - len(needle_text("12345")) - len(QUESTION)
    assert at == round(0.5 * n_fill)
    assert passkey_prompt(300, 0.0, "1")[1] == 0
    from attnlab.train.config import PasskeyConfig

    task = PasskeyTask(PasskeyConfig(digits=5), seq_len=160, seed=0, tokenizer=ByteTokenizer(), max_seq_len=320)
    x, y = task.train_batch(0, 4)
    assert x.shape == (4, 160)
    assert (y[:, :-5] == IGNORE).all() and (y[:, -5:] != IGNORE).all()
    for b in range(4):
        key = bytes(y[b, -5:].tolist()).decode()
        text = bytes(x[b].tolist()).decode()
        assert f"The pass key is {key}." in text  # the answer is in the input
    assert task.eval_lengths() == [160, 320]
    with pytest.raises(ConfigError, match="train.seq_len"):
        PasskeyTask(PasskeyConfig(), seq_len=40, seed=0, tokenizer=ByteTokenizer(), max_seq_len=64)


# -- tokenizers and data -----------------------------------------------------------------------

def test_tokenizers_roundtrip(tmp_path):
    docs = ["hello world, héllo!", "second doc\nwith lines"] * 20
    for tok in (CharTokenizer.fit(iter(docs)), ByteTokenizer(), BPETokenizer.fit(iter(docs), 300)):
        for d in docs[:2]:
            assert tok.decode(tok.encode(d)) == d
        assert tok.sep_id is not None and tok.sep_id < tok.vocab_size
        save_tokenizer(tok, tmp_path / tok.kind)
        back = load_tokenizer(tmp_path / tok.kind)
        assert back.encode(docs[0]) == tok.encode(docs[0]) and back.vocab_size == tok.vocab_size
    assert CharTokenizer.fit(iter(["one doc"])).sep_id is None


def test_text_corpus_packed_no_loss_across_separator(tmp_path):
    from attnlab.train.config import DataConfig

    corpus = TextCorpus.prepare(DataConfig(task="text", path=str(write_docs(tmp_path)), val_fraction=0.2),
                                tmp_path / "data")
    assert isinstance(corpus.train, np.memmap)
    sep = corpus.tokenizer.sep_id
    assert sep is not None and int((np.asarray(corpus.train) == sep).sum()) >= 1
    task = TextTask(corpus, seq_len=64, seed=3)
    seen_sep = False
    for i in range(20):
        x, y = task.train_batch(i, 8)
        assert torch.equal(y[:, :-1][y[:, :-1] != IGNORE], x[:, 1:][y[:, :-1] != IGNORE])
        assert (y[x == sep] == IGNORE).all()
        seen_sep |= bool((x == sep).any())
    assert seen_sep
    assert torch.equal(task.train_batch(5, 8)[0], TextTask(corpus, 64, 3).train_batch(5, 8)[0])
    assert not torch.equal(task.train_batch(5, 8)[0], TextTask(corpus, 64, 4).train_batch(5, 8)[0])
    again = TextCorpus.prepare(DataConfig(task="text", path=str(tmp_path / "docs"), val_fraction=0.2),
                               tmp_path / "data")  # reused
    assert again.meta == corpus.meta


@pytest.mark.skipif(not HAS_SHAKESPEARE, reason="../shared/data/tinyshakespeare/input.txt not present")
def test_shakespeare_from_shared_cache(tmp_path):
    from attnlab.train.config import DataConfig

    cfg = DataConfig(task="shakespeare", cache_dir=str(SHARED), download=False)
    assert shakespeare_path(cfg).stat().st_size == 1_115_394
    corpus = TextCorpus.prepare(cfg, tmp_path / "data")
    assert corpus.tokenizer.vocab_size == 65 and corpus.meta["n_tokens"] == 1_115_394


def test_shakespeare_missing_and_checksum(tmp_path, monkeypatch):
    from attnlab.train import data as data_mod
    from attnlab.train.config import DataConfig

    with pytest.raises(ConfigError, match="data.cache_dir: TinyShakespeare not found"):
        shakespeare_path(DataConfig(cache_dir=str(tmp_path / "empty"), download=False))
    with pytest.raises(ConfigError, match="data.path: file not found"):
        shakespeare_path(DataConfig(path=str(tmp_path / "nope.txt")))
    bad = tmp_path / "c" / "tinyshakespeare" / "input.txt"
    bad.parent.mkdir(parents=True)
    bad.write_text("not shakespeare")
    with pytest.raises(ConfigError, match="checksum mismatch"):
        shakespeare_path(DataConfig(cache_dir=str(tmp_path / "c")))
    # download (faked, no network): a corrupt download is refused and not kept
    monkeypatch.setattr(data_mod.urllib.request, "urlretrieve", lambda url, dest: Path(dest).write_text("junk"))
    with pytest.raises(ConfigError, match="checksum mismatch"):
        shakespeare_path(DataConfig(cache_dir=str(tmp_path / "dl")))
    assert not (tmp_path / "dl" / "tinyshakespeare" / "input.txt").exists()


@pytest.mark.skipif(not HAS_SHAKESPEARE, reason="needs ../shared/data/tinyshakespeare/input.txt")
def test_shakespeare_download_once(tmp_path, monkeypatch):
    """No network: the "download" copies the shared file. It lands in the cache with its sha256
    checked, and the next lookup uses the cached file without downloading again."""
    import shutil

    from attnlab.train import data as data_mod
    from attnlab.train.config import DataConfig

    calls = []

    def fake_urlretrieve(url, dest):
        calls.append(url)
        shutil.copyfile(SHARED / "tinyshakespeare" / "input.txt", dest)

    monkeypatch.setattr(data_mod.urllib.request, "urlretrieve", fake_urlretrieve)
    p = shakespeare_path(DataConfig(cache_dir=str(tmp_path / "dl")))
    assert p == tmp_path / "dl" / "tinyshakespeare" / "input.txt" and p.stat().st_size == 1_115_394
    assert calls == [data_mod.SHAKESPEARE_URL]
    assert shakespeare_path(DataConfig(cache_dir=str(tmp_path / "dl"))) == p and len(calls) == 1
    assert not list(p.parent.glob("*.part"))


# -- trainer -----------------------------------------------------------------------------------

@pytest.mark.parametrize("mixer", ["mha", "mla"])
def test_tiny_run_validation_loss_falls(tmp_path, mixer):
    d = exp_dict(tmp_path, task="text", mixer=mixer, steps=30, lr=3e-3, eval_every=10)
    d["data"]["path"] = str(write_docs(tmp_path))
    exp = ExperimentConfig.from_dict(d)
    s = Trainer(exp).train()
    losses = [e["val_loss"] for e in s["evals"]]
    assert len(losses) == 3 and losses[-1] < losses[0] - 0.5
    lines = [json.loads(ln) for ln in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert {ln["kind"] for ln in lines} == {"train", "eval"}
    assert (tmp_path / "run" / "tokenizer" / "attnlab_tokenizer.json").is_file()


@pytest.mark.parametrize("optimizer,accum", [("adamw", 1), ("muon", 2)])
def test_resume_is_bit_exact(tmp_path, optimizer, accum):
    kw = dict(mixer="mha,mla", optimizer=optimizer, grad_accum=accum, checkpoint_every=3)
    full = Trainer(make_exp(tmp_path / "a", **kw))
    full.train()
    first = Trainer(make_exp(tmp_path / "b", **kw))
    first.train(until=3)
    resumed = Trainer(make_exp(tmp_path / "b", **kw))
    resumed.train(resume=True)
    assert resumed.step == 6
    for (k, a), (_, b) in zip(full.model.state_dict().items(), resumed.model.state_dict().items()):
        assert torch.equal(a, b), k
    for oa, ob in zip(full.optimizers, resumed.optimizers):
        for sa, sb in zip(oa.state.values(), ob.state.values()):
            for k in sa:
                assert torch.equal(torch.as_tensor(sa[k]), torch.as_tensor(sb[k]))
    train_a = [json.loads(x) for x in (tmp_path / "a" / "run" / "metrics.jsonl").read_text().splitlines()]
    train_b = [json.loads(x) for x in (tmp_path / "b" / "run" / "metrics.jsonl").read_text().splitlines()]
    strip = lambda rs: [{k: v for k, v in r.items() if k != "tok_s"} for r in rs]
    assert strip(train_a) == strip(train_b)


def test_interrupted_checkpoint_write_keeps_previous(tmp_path, monkeypatch):
    tr = Trainer(make_exp(tmp_path, checkpoint_every=2))
    tr.train(until=2)
    good = {k: v.clone() for k, v in tr.model.state_dict().items()}

    def crash(tensors, path):  # dies half-way through writing the optimizer file
        Path(path).write_bytes(b"partial")
        raise KeyboardInterrupt("power cut")

    monkeypatch.setattr(ckpt_mod, "save_file", crash)
    with pytest.raises(KeyboardInterrupt):
        tr.train(until=4)
    monkeypatch.undo()
    found = ckpt_mod.find_checkpoint(tmp_path / "run")
    assert found.name == "step_00000002"
    fresh = Trainer(make_exp(tmp_path))
    fresh.resume()
    assert fresh.step == 2
    for k, v in fresh.model.state_dict().items():
        assert torch.equal(v, good[k])


def test_nan_stops_with_last_checkpoint_intact(tmp_path):
    tr = Trainer(make_exp(tmp_path, checkpoint_every=2))
    tr.train(until=2)
    with torch.no_grad():
        tr.model.head.weight.fill_(float("nan"))
    with pytest.raises(TrainingDiverged, match=r"step 3: the loss is nan.*step_00000002"):
        tr.train()
    fresh = Trainer(make_exp(tmp_path, lr=1e-4))  # resume with a lower lr: the new lr applies
    fresh.resume()
    assert all(torch.isfinite(v).all() for v in fresh.model.state_dict().values())
    assert all(g["initial_lr"] == 1e-4 for g in fresh.optimizers[0].param_groups)


def test_activation_checkpointing_same_result(tmp_path):
    a = Trainer(make_exp(tmp_path / "a", steps=2, mixer="mla"))
    b = Trainer(make_exp(tmp_path / "b", steps=2, mixer="mla", activation_checkpointing=True))
    a.train()
    b.train()
    for (k, x), (_, y) in zip(a.model.state_dict().items(), b.model.state_dict().items()):
        assert torch.allclose(x, y, atol=1e-6), k


def test_compile_same_result_and_plain_checkpoint(tmp_path, monkeypatch):
    """--train.compile wraps the model for training only: the same updates as eager, and
    checkpoints with the plain state-dict keys (no _orig_mod.) that an eager run resumes from.
    Inductor's C++ build takes a minute on CPU, so the test traces with the aot_eager backend."""
    import functools

    a = Trainer(make_exp(tmp_path / "a", steps=3, mixer="mla", checkpoint_every=2))
    a.train()
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="aot_eager"))
    b = Trainer(make_exp(tmp_path / "b", steps=3, mixer="mla", checkpoint_every=2, compile=True))
    assert b.forward_model is not b.model
    b.train()
    for (k, x), (_, y) in zip(a.model.state_dict().items(), b.model.state_dict().items()):
        assert torch.allclose(x, y, atol=1e-5), k
    from safetensors import safe_open

    ckpt = ckpt_mod.find_checkpoint(b.run_dir)
    with safe_open(str(ckpt / "model.safetensors"), "pt") as f:
        assert not any("_orig_mod" in k for k in f.keys())
    monkeypatch.undo()
    c = Trainer(make_exp(tmp_path / "b", steps=4, mixer="mla"))  # eager, resumes the compiled run
    c.train(resume=True)
    assert c.step == 4


def test_loading_never_unpickles(tmp_path, monkeypatch, capsys):
    """Resume and generate read safetensors and JSON only: with every unpickling entry point
    patched to fail, both still work."""
    import pickle

    docs = write_docs(tmp_path)
    d = exp_dict(tmp_path, task="text", steps=4, checkpoint_every=2, seq_len=32)
    d["data"]["path"] = str(docs)
    exp = ExperimentConfig.from_dict(d)
    Trainer(exp).train(until=2)

    def refuse(*a, **k):
        raise AssertionError("unpickling attempted")

    class NoUnpickler:
        def __init__(self, *a, **k):
            refuse()

    for name in ("load", "loads"):
        monkeypatch.setattr(pickle, name, refuse)
    monkeypatch.setattr(pickle, "Unpickler", NoUnpickler)
    monkeypatch.setattr(torch, "load", refuse)
    tr = Trainer(exp)
    tr.train(resume=True)
    assert tr.step == 4
    assert main(["generate", "--checkpoint", str(tr.run_dir), "--prompt", "the", "--max-new-tokens", "3"]) == 0


def test_checkpoint_from_other_config_refused(tmp_path):
    Trainer(make_exp(tmp_path, steps=2)).train()
    d = exp_dict(tmp_path, steps=4)
    d["model"]["dim"] = 48
    with pytest.raises(ConfigError, match=r"another model config:\n  dim: 32 \(checkpoint\) vs 48 \(this run\)"):
        Trainer(ExperimentConfig.from_dict(d)).resume()
    d = exp_dict(tmp_path, steps=4)
    d["data"]["mqar"]["num_kv_pairs"] = 3
    with pytest.raises(ConfigError, match="another data config:\n  mqar.num_kv_pairs: 4"):
        Trainer(ExperimentConfig.from_dict(d)).resume()


def test_tied_embeddings_checkpoint_roundtrip(tmp_path):
    d = exp_dict(tmp_path, steps=2)
    d["model"]["tie_embeddings"] = True
    tr = Trainer(ExperimentConfig.from_dict(d))
    tr.train()
    fresh = Trainer(ExperimentConfig.from_dict(d))
    fresh.resume()
    assert fresh.model.head.weight is fresh.model.embed.weight
    assert torch.equal(fresh.model.embed.weight, tr.model.embed.weight)


def test_passkey_run_reports_exact_match(tmp_path):
    d = exp_dict(tmp_path, task="passkey", steps=2, seq_len=128, eval_every=2)
    d["model"]["max_seq_len"] = 256
    d["data"]["passkey"] = {"eval_examples": 1, "depths": [0.5]}
    s = Trainer(ExperimentConfig.from_dict(d)).train()
    assert set(s["final"]) >= {"val_loss", "accuracy", "passkey@128", "passkey@256"}


# -- configs and errors ------------------------------------------------------------------------

@pytest.mark.parametrize("change,match", [
    ({"data": {"task": "nosuch"}}, "data.task: unknown task 'nosuch'"),
    ({"model": {"mixer": "nosuch"}}, "mixer: unknown mixer 'nosuch'"),
    ({"preset": "nosuch"}, "preset: unknown preset 'nosuch'"),
    ({"train": {"seq_len": 4096}}, "train.seq_len: 4096 exceeds the model's max_seq_len=128"),
    ({"train": {"nosuch": 1}}, "train.nosuch: no such option"),
    ({"data": {"mqar": {"nosuch": 1}}}, "data.mqar.nosuch: no such option"),
    ({"nosuch": 1}, "nosuch: no such option"),
    ({"train": {"steps": "many"}}, "train.steps: expected int"),
    ({"train": {"optimizer": "sgd"}}, "train.optimizer: unknown optimizer 'sgd'"),
    ({"data": {"tokenizer": "words"}}, "data.tokenizer: unknown tokenizer"),
    ({"data": {"mqar": {"num_kv_pairs": 40}}}, "data.mqar.num_kv_pairs"),
])
def test_config_errors(tmp_path, change, match):
    from attnlab.cli.common import merge

    with pytest.raises(ConfigError, match=match):
        ExperimentConfig.from_dict(merge(exp_dict(tmp_path), change))


def test_vocab_from_data_and_explicit_too_small(tmp_path):
    exp = make_exp(tmp_path)
    assert exp.model_config(32).vocab_size == 32
    exp.model["vocab_size"] = 16
    with pytest.raises(ConfigError, match="model.vocab_size: 16 is smaller"):
        exp.model_config(32)


def test_toml_config_and_overrides(tmp_path):
    from attnlab.cli.common import experiment_config, parse_overrides

    f = tmp_path / "exp.toml"
    f.write_text('preset = "tiny"\n[model]\nmixer = "mla"\n[model.mixer_options.mla]\nkv_lora_rank = 8\n'
                 '[data]\ntask = "mqar"\n[train]\nsteps = 7\nlr = 1e-3\n')
    exp = experiment_config(str(f), parse_overrides(["--train.steps", "9", "--data.mqar.num_kv_pairs=5",
                                                     "--model.dim", "48"]))
    assert exp.train.steps == 9 and exp.train.lr == 1e-3 and exp.data.mqar.num_kv_pairs == 5
    assert exp.train.seq_len == 32  # the mqar task default
    cfg = exp.model_config(256)
    assert cfg.dim == 48 and cfg.mixer == "mla" and cfg.options_for("mla").kv_lora_rank == 8
    with pytest.raises(ConfigError, match="unknown override section"):
        experiment_config(None, parse_overrides(["--trian.steps", "3"]))
    with pytest.raises(ConfigError, match="config file not found"):
        experiment_config(str(tmp_path / "missing.toml"), {})


# -- CLI ---------------------------------------------------------------------------------------

CLI_SMALL = ["--model.dim", "32", "--model.n_heads", "2", "--train.batch_size", "8", "--train.seq_len", "32",
             "--data.mqar.vocab_size", "32", "--data.mqar.num_kv_pairs", "4", "--data.mqar.val_examples", "16",
             "--train.eval_every", "1", "--train.progress", "false", "--model.mixer_options.mla.kv_lora_rank", "16",
             "--model.mixer_options.mla.qk_rope_head_dim", "8", "--train.device", "cpu"]


def test_cli_compare_writes_outputs(tmp_path, capsys):
    out = tmp_path / "cmp"
    rc = main(["compare", "--steps", "2", "--seeds", "2", "--out", str(out), "--decode-context", "16"] + CLI_SMALL)
    assert rc == 0
    for f in ("compare.json", "compare.md", "loss_curves.png", "cache_bytes.png"):
        assert (out / f).is_file() and (out / f).stat().st_size > 0
    res = json.loads((out / "compare.json").read_text())["results"]
    assert set(res) == {"mha", "mla"}
    for r in res.values():
        assert len(r["runs"]) == 2 and r["val_loss_std"] is not None and r["accuracy_mean"] is not None
        assert r["kv_bytes_per_token_fp32"] > 0 and r["decode_ms_per_token"] > 0
        assert r["best_val_loss_mean"] <= r["val_loss_mean"] + 1e-12 and len(r["best_val_steps"]) == 2
    assert res["mla"]["kv_bytes_per_token_fp32"] < res["mha"]["kv_bytes_per_token_fp32"]
    assert "decode ms/token @16" in capsys.readouterr().out
    # --resume reuses the finished runs of the same config (no retraining)
    before = json.loads((out / "compare.json").read_text())["results"]["mla"]["val_loss_mean"]
    rc = main(["compare", "--steps", "2", "--seeds", "2", "--out", str(out), "--decode-context", "16", "--resume",
               "--no-plots"] + CLI_SMALL)
    assert rc == 0 and capsys.readouterr().out.count("reusing the finished run") == 4
    assert json.loads((out / "compare.json").read_text())["results"]["mla"]["val_loss_mean"] == before


@pytest.mark.parametrize("argv,match", [
    (["compare", "--task", "nosuch"], "unknown task 'nosuch'"),
    (["compare", "--mixers", "mha,nosuch"], "unknown mixer 'nosuch'"),
    (["compare", "--preset", "nosuch"], "unknown preset 'nosuch'"),
    (["train", "--data.task", "text", "--data.path", "/nonexistent/file.txt"], "data.path: file or directory not found"),
    (["train", "--data.task", "mqar", "--train.seq_len", "100000"], "exceeds the model's max_seq_len"),
    (["train", "--data.task", "mqar", "--train.nosuch", "1"], "train.nosuch: no such option"),
])
def test_cli_errors(argv, match, capsys, tmp_path):
    assert main(argv + ["--train.out_dir", str(tmp_path)]) == 2
    assert match in capsys.readouterr().err


def test_cli_train_then_generate(tmp_path, capsys):
    docs = write_docs(tmp_path)
    run = tmp_path / "run"
    rc = main(["train", "--data.task", "text", "--data.path", str(docs), "--data.tokenizer", "bpe",
               "--data.bpe_vocab_size", "300", "--train.steps", "3", "--train.out_dir", str(run)]
              + CLI_SMALL[:8] + ["--train.progress", "false"])
    assert rc == 0
    assert (run / "tokenizer" / "tokenizer.json").is_file()
    capsys.readouterr()
    assert main(["generate", "--checkpoint", str(run), "--prompt", "the cat", "--max-new-tokens", "5"]) == 0
    assert capsys.readouterr().out.startswith("the cat")
    assert main(["generate", "--checkpoint", str(tmp_path / "nothing"), "--prompt", "x"]) == 2


def test_muon_missing_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.delattr(torch.optim, "Muon")
    with pytest.raises(ConfigError, match="train.optimizer: muon needs torch.optim.Muon"):
        Trainer(make_exp(tmp_path, optimizer="muon"))


def test_hf_without_datasets_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "datasets", None)  # as if not installed
    d = exp_dict(tmp_path, task="hf")
    d["data"]["hf_name"] = "tiny_shakespeare"
    with pytest.raises(ConfigError, match="needs the `datasets` package"):
        Trainer(ExperimentConfig.from_dict(d))


# -- Hugging Face datasets, offline ------------------------------------------------------------

@pytest.fixture
def hf_offline(monkeypatch):
    """`datasets`, with every Hub access switched off (the env for a fresh import, the config
    attributes for an already imported one)."""
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    datasets = pytest.importorskip("datasets")
    import huggingface_hub.constants

    for mod, name in ((datasets.config, "HF_HUB_OFFLINE"), (datasets.config, "HF_DATASETS_OFFLINE"),
                      (huggingface_hub.constants, "HF_HUB_OFFLINE")):
        if hasattr(mod, name):
            monkeypatch.setattr(mod, name, True)
    return datasets


HF_DOCS = [f"document {i}: " + "the quick brown fox jumps over the lazy dog. " * (3 + i) for i in range(12)]


def hf_exp(tmp_path, **data):
    d = exp_dict(tmp_path, task="hf", mixer="mla", steps=12, seq_len=32, batch_size=4, eval_every=12,
                 warmup_steps=2, lr=3e-3)
    d["data"].update({"val_fraction": 0.25, **data})
    return ExperimentConfig.from_dict(d)


def test_hf_json_data_files_offline(tmp_path, hf_offline):
    f = tmp_path / "corpus.jsonl"
    f.write_text("".join(json.dumps({"id": i, "body": t}) + "\n" for i, t in enumerate(HF_DOCS)))
    exp = hf_exp(tmp_path, hf_name="json", hf_data_files=str(f), hf_text_field="body", hf_max_docs=10)
    tr = Trainer(exp)
    tok = tr.task.tokenizer
    tokens = np.concatenate([tr.task.corpus.train, tr.task.corpus.val]).tolist()
    expect = []
    for i, t in enumerate(HF_DOCS[:10]):  # hf_max_docs, joined by the separator
        expect += ([tok.sep_id] if i else []) + tok.encode(t)
    assert tokens == expect
    s = tr.train()
    assert s["evals"][-1]["val_loss"] < math.log(tok.vocab_size)  # learnt something
    # the same data files again: the tokenized corpus is reused; edited files are tokenized again
    key = json.loads((tr.run_dir / "data" / "meta.json").read_text())["key"]
    f.write_text("".join(json.dumps({"body": t}) + "\n" for t in HF_DOCS[:5]))
    tr2 = Trainer(exp)
    assert json.loads((tr2.run_dir / "data" / "meta.json").read_text())["key"] != key
    assert len(tr2.task.corpus.train) + len(tr2.task.corpus.val) < len(tokens)


def test_hf_saved_to_disk_offline(tmp_path, hf_offline):
    ds = hf_offline.DatasetDict({"train": hf_offline.Dataset.from_dict({"text": HF_DOCS}),
                                 "test": hf_offline.Dataset.from_dict({"text": HF_DOCS[:2]})})
    ds.save_to_disk(str(tmp_path / "saved"))
    tr = Trainer(hf_exp(tmp_path, hf_name=str(tmp_path / "saved"), hf_split="train"))
    n = len(tr.task.corpus.train) + len(tr.task.corpus.val)
    assert n == sum(len(tr.task.tokenizer.encode(t)) for t in HF_DOCS) + len(HF_DOCS) - 1
    with pytest.raises(ConfigError, match=r"data.hf_split: no split 'validation' in .*splits: train, test"):
        Trainer(hf_exp(tmp_path, hf_name=str(tmp_path / "saved"), hf_split="validation"))
    # a single saved Dataset (no splits)
    ds["test"].save_to_disk(str(tmp_path / "one"))
    tr = Trainer(hf_exp(tmp_path, hf_name=str(tmp_path / "one"), val_fraction=0.4))
    assert tr.task.corpus.meta["n_tokens"] == sum(len(tr.task.tokenizer.encode(t)) for t in HF_DOCS[:2]) + 1


def test_cli_train_hf_json(tmp_path, hf_offline, capsys):
    f = tmp_path / "c.jsonl"
    f.write_text("".join(json.dumps({"body": t}) + "\n" for t in HF_DOCS))
    run = tmp_path / "run"
    rc = main(["train", "--data.task", "hf", "--data.hf_name", "json", "--data.hf_data_files", str(f),
               "--data.hf_text_field", "body", "--data.val_fraction", "0.25", "--train.steps", "2",
               "--train.out_dir", str(run), "--train.device", "cpu"] + CLI_SMALL[:8] + ["--train.progress", "false"])
    assert rc == 0 and (run / "summary.json").is_file()
    assert json.loads((run / "config.json").read_text())["experiment"]["data"]["hf_data_files"] == str(f)


def test_hf_bad_input_errors(tmp_path, hf_offline):
    f = tmp_path / "c.jsonl"
    f.write_text("".join(json.dumps({"body": t, "n": i}) + "\n" for i, t in enumerate(HF_DOCS)))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"text": broken\n')
    cases = [
        (dict(hf_name="json", hf_data_files=str(f)), r"data.hf_text_field: no column 'text' .*columns: body, n"),
        (dict(hf_name="json", hf_data_files=str(f), hf_text_field="n"), r"data.hf_text_field: column 'n' .* int"),
        (dict(hf_name="json", hf_data_files=str(tmp_path / "missing.jsonl")), r"data.hf_data_files: file not found"),
        (dict(hf_name="json", hf_data_files=str(f), hf_split="validation"), r"data.hf_split: .*validation"),
        (dict(hf_name="json", hf_data_files=str(bad)), r"data.hf_data_files: could not read the rows of 'json'"),
        (dict(hf_name="nosuch-user/nosuch-dataset"),
         r"data.hf_name: could not load dataset 'nosuch-user/nosuch-dataset'"),
    ]
    for data, match in cases:
        with pytest.raises(ConfigError, match=match):
            Trainer(hf_exp(tmp_path, **data))
    with pytest.raises(ConfigError, match="data.hf_name: task 'hf' needs a dataset name"):
        hf_exp(tmp_path)


@pytest.mark.parametrize("name", ["mqar", "shakespeare-384", "shakespeare-512"])
def test_shipped_configs_parse(name):
    from attnlab.cli.common import experiment_config

    exp = experiment_config(str(_ROOT / "configs" / f"{name}.toml"), {})
    cfg = exp.model_config(65 if "shakespeare" in name else None)
    assert exp.train.seq_len <= cfg.max_seq_len
    if name == "shakespeare-384":
        assert (cfg.dim, cfg.n_heads, exp.train.batch_size, exp.train.seq_len) == (384, 6, 16, 1024)
        assert cfg.options_for("mla").kv_lora_rank == 64
    if name == "shakespeare-512":
        assert (cfg.dim, cfg.n_heads, cfg.options_for("mla").kv_lora_rank) == (512, 8, 128)


def test_mixer_aux_loss_is_added(tmp_path, monkeypatch):
    from attnlab.model import LanguageModel

    tr = Trainer(make_exp(tmp_path))
    x, y = tr.task.train_batch(0, 4)
    base, _ = tr.loss(x, y)
    monkeypatch.setattr(LanguageModel, "aux_loss", property(lambda self: torch.tensor(0.25)))
    with_aux, _ = tr.loss(x, y)
    assert torch.allclose(with_aux, base + 0.25)
    with torch.no_grad():  # not in the validation loss
        assert torch.allclose(tr.loss(x, y)[0], base)


# -- TensorBoard -------------------------------------------------------------------------------

def _tb_scalars(run_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_tensorboard_scalars_written(tmp_path):
    pytest.importorskip("tensorboard")
    tr = Trainer(make_exp(tmp_path, steps=4, eval_every=2, log_every=1))
    tr.train()
    sc = _tb_scalars(tr.run_dir)
    for tag in ("train/loss", "train/lr", "train/grad_norm", "train/tok_s"):
        assert [s for s, _ in sc[tag]] == [1, 2, 3, 4], tag
    for tag in ("eval/val_loss", "eval/val_ppl", "eval/accuracy"):
        assert [s for s, _ in sc[tag]] == [2, 4], tag
    # the same numbers as the jsonl log
    recs = [json.loads(ln) for ln in (tr.run_dir / "metrics.jsonl").read_text().splitlines()]
    train_loss = [r["loss"] for r in recs if r["kind"] == "train"]
    assert [v for _, v in sc["train/loss"]] == pytest.approx(train_loss, rel=1e-6)
    val = [r["val_loss"] for r in recs if r["kind"] == "eval"]
    assert [v for _, v in sc["eval/val_loss"]] == pytest.approx(val, rel=1e-6)


def test_tensorboard_resume_purges_steps_past_checkpoint(tmp_path):
    pytest.importorskip("tensorboard")
    # the first process checkpoints at step 2 and logs up to step 3, then "dies"
    tr = Trainer(make_exp(tmp_path, steps=4, eval_every=2, log_every=1, checkpoint_every=2))
    tr.train(until=3)
    tr2 = Trainer(make_exp(tmp_path, steps=4, eval_every=2, log_every=1, checkpoint_every=2))
    tr2.train(resume=True)
    sc = _tb_scalars(tr2.run_dir)
    assert [s for s, _ in sc["train/loss"]] == [1, 2, 3, 4]  # step 3 once, from the resumed run
    recs = [json.loads(ln) for ln in (tr2.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [v for _, v in sc["train/loss"]] == pytest.approx([r["loss"] for r in recs if r["kind"] == "train"])
    # a fresh run in the same directory replaces the old curves
    Trainer(make_exp(tmp_path, steps=2, eval_every=2, log_every=1)).train()
    assert [s for s, _ in _tb_scalars(tr2.run_dir)["train/loss"]] == [1, 2]


def test_tensorboard_off_or_missing_writes_no_events(tmp_path, monkeypatch):
    tr = Trainer(make_exp(tmp_path, steps=2, tensorboard=False))
    tr.train()
    assert not (tr.run_dir / "tensorboard").exists()
    monkeypatch.setitem(__import__("sys").modules, "torch.utils.tensorboard", None)  # as if not installed
    tr = Trainer(make_exp(tmp_path, steps=2, out_dir=str(tmp_path / "run2")))
    tr.train()
    assert not (tr.run_dir / "tensorboard").exists() and (tr.run_dir / "metrics.jsonl").is_file()
