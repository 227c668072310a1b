"""Tokenizers: char-level (the research notebooks'), byte-level, and BPE (``tokenizers`` library).

Every tokenizer has ``encode(text) -> list[int]``, ``decode(ids) -> str``, ``vocab_size``, an
optional document separator id ``sep_id``, and saves itself as JSON into a directory (no pickle):
``tokenizer.json`` (``attnlab`` kind + data; for BPE the ``tokenizers`` file beside it).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

from ..errors import ConfigError, InputError

SEP = "<|sep|>"
META = "attnlab_tokenizer.json"


class CharTokenizer:
    """One id per distinct character of the corpus (sorted), plus a separator id when the corpus
    has several documents."""

    kind = "char"

    def __init__(self, chars: list[str], with_sep: bool):
        self.chars = list(chars)
        self.index = {c: i for i, c in enumerate(self.chars)}
        self.sep_id = len(self.chars) if with_sep else None

    @classmethod
    def fit(cls, docs: Iterable[str]) -> "CharTokenizer":
        seen: set[str] = set()
        n = 0
        for d in docs:
            seen.update(d)
            n += 1
        return cls(sorted(seen), with_sep=n > 1)

    @property
    def vocab_size(self) -> int:
        return len(self.chars) + (self.sep_id is not None)

    def encode(self, text: str) -> list[int]:
        try:
            return [self.index[c] for c in text]
        except KeyError:
            bad = sorted({c for c in text if c not in self.index})
            raise InputError(f"characters not in this char-level vocabulary: {bad!r}") from None

    def decode(self, ids) -> str:
        return "".join(self.chars[i] if i < len(self.chars) else "\n\n" for i in ids)

    def state(self) -> dict:
        return {"chars": self.chars, "with_sep": self.sep_id is not None}


class ByteTokenizer:
    """UTF-8 bytes 0..255; id 256 separates documents."""

    kind = "byte"
    sep_id = 256
    vocab_size = 257

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids) -> str:
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")

    def state(self) -> dict:
        return {}


class BPETokenizer:
    """Byte-level BPE trained on the corpus with the ``tokenizers`` library."""

    kind = "bpe"

    def __init__(self, tok):
        self.tok = tok
        self.sep_id = tok.token_to_id(SEP)

    @classmethod
    def fit(cls, docs: Iterable[str], vocab_size: int) -> "BPETokenizer":
        try:
            from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
        except ImportError:
            raise ConfigError("data.tokenizer", "bpe needs the `tokenizers` package "
                              "(pip install 'attnlab[train]')") from None
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[SEP], show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        tok.train_from_iterator(docs, trainer=trainer)
        return cls(tok)

    @property
    def vocab_size(self) -> int:
        return self.tok.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text).ids

    def decode(self, ids) -> str:
        return self.tok.decode(list(ids))

    def state(self) -> dict:
        return {"file": "tokenizer.json"}


def build_tokenizer(kind: str, docs_factory, bpe_vocab_size: int = 2048):
    """docs_factory() yields the documents' texts (called once per pass needed)."""
    if kind == "char":
        return CharTokenizer.fit(docs_factory())
    if kind == "byte":
        return ByteTokenizer()
    if kind == "bpe":
        return BPETokenizer.fit(docs_factory(), bpe_vocab_size)
    raise ConfigError("data.tokenizer", f"unknown tokenizer {kind!r}; tokenizers: char, byte, bpe")


def save_tokenizer(tok, directory: str | Path) -> None:
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    if tok.kind == "bpe":
        tok.tok.save(str(d / "tokenizer.json"))
    (d / META).write_text(json.dumps({"kind": tok.kind, **tok.state()}))


def load_tokenizer(directory: str | Path):
    """The tokenizer saved in ``directory``, or None if there is none (e.g. an MQAR run)."""
    d = Path(directory)
    if not (d / META).is_file():
        return None
    meta = json.loads((d / META).read_text())
    if meta["kind"] == "char":
        return CharTokenizer(meta["chars"], meta["with_sep"])
    if meta["kind"] == "byte":
        return ByteTokenizer()
    if meta["kind"] == "bpe":
        from tokenizers import Tokenizer

        return BPETokenizer(Tokenizer.from_file(str(d / meta["file"])))
    raise ConfigError("tokenizer", f"unknown tokenizer kind {meta['kind']!r} in {d / META}")
