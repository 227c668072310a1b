"""Text data: sources, tokenization into memory-mapped token files, packed training windows.

Sources: TinyShakespeare (a local file or cache directory; otherwise downloaded once, sha256
checked), any local text file or directory (one document per file), a Hugging Face dataset when
``datasets`` is installed. Documents are tokenized once into ``<dir>/tokens.bin`` (uint16/uint32,
read back with ``np.memmap`` so a corpus larger than memory works), joined by the tokenizer's
separator id; the last ``val_fraction`` of the tokens is the validation split.

Training windows are packed: a window may span documents, but no loss is taken across a
separator (the target after a separator, i.e. the next document's first token predicted from the
previous document, is ignored).
"""

from __future__ import annotations

import hashlib
import json
import os
import urllib.request
from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError
from .tasks import IGNORE, Task, generator
from .tokenizers import build_tokenizer, load_tokenizer, save_tokenizer

SHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
SHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
SHAKESPEARE_BYTES = 1_115_394


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _check_sha(path: Path, field: str) -> Path:
    got = sha256_file(path)
    if got != SHAKESPEARE_SHA256:
        raise ConfigError(field, f"checksum mismatch for {path}: sha256 {got}, expected TinyShakespeare's "
                          f"{SHAKESPEARE_SHA256}; remove the file to download it again, or pass the right file")
    return path


def data_dirs(cache_dir: str | None) -> list[Path]:
    if cache_dir:
        return [Path(cache_dir).expanduser()]
    dirs = []
    if os.environ.get("ATTNLAB_DATA"):
        dirs.append(Path(os.environ["ATTNLAB_DATA"]).expanduser())
    dirs.append(Path("~/.cache/attnlab/data").expanduser())
    return dirs


def shakespeare_path(cfg) -> Path:
    """TinyShakespeare's input.txt: ``data.path`` if given, else ``<dir>/tinyshakespeare/input.txt``
    in the cache directories, else downloaded into the first of them (when ``data.download``)."""
    if cfg.path:
        p = Path(cfg.path).expanduser()
        if not p.is_file():
            raise ConfigError("data.path", f"file not found: {p}")
        return _check_sha(p, "data.path")
    dirs = data_dirs(cfg.cache_dir)
    for d in dirs:
        p = d / "tinyshakespeare" / "input.txt"
        if p.is_file():
            return _check_sha(p, "data.cache_dir")
    where = ", ".join(str(d / "tinyshakespeare" / "input.txt") for d in dirs)
    if not cfg.download:
        raise ConfigError("data.cache_dir", f"TinyShakespeare not found (looked for {where}) and "
                          "--data.download is false")
    return download_shakespeare(dirs[0] / "tinyshakespeare" / "input.txt")


def download_shakespeare(dest: Path, url: str = SHAKESPEARE_URL) -> Path:
    """Download into a temporary file, verify the sha256, then move it to ``dest``."""
    import shutil
    import tempfile

    print(f"downloading TinyShakespeare from {url} to {dest}")
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir) / "input.txt"
        try:
            urllib.request.urlretrieve(url, tmp)
        except OSError as e:
            raise ConfigError("data.download", f"could not download {url}: {e}; put input.txt at {dest} "
                              "or pass --data.path FILE") from None
        _check_sha(tmp, "data.download")
        dest.parent.mkdir(parents=True, exist_ok=True)
        part = dest.with_suffix(".part")
        shutil.copyfile(tmp, part)
        os.replace(part, dest)
    return dest


# -- documents ---------------------------------------------------------------------------------

def _text_files(cfg) -> list[Path]:
    p = Path(cfg.path).expanduser()
    if p.is_file():
        return [p]
    if p.is_dir():
        files = sorted(f for f in p.rglob(cfg.glob) if f.is_file())
        if not files:
            raise ConfigError("data.path", f"no files matching {cfg.glob!r} under {p}")
        return files
    raise ConfigError("data.path", f"file or directory not found: {p}")


def document_source(cfg):
    """(docs_factory, fingerprint): a callable yielding document texts, and what identifies them."""
    if cfg.task in ("shakespeare", "text"):
        files = [shakespeare_path(cfg)] if cfg.task == "shakespeare" else _text_files(cfg)
        fp = [[str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns] for f in files]

        def docs():
            for f in files:
                yield f.read_text(encoding="utf-8", errors="replace")

        return docs, fp
    if cfg.task == "hf":
        return hf_document_source(cfg)
    raise ConfigError("data.task", f"{cfg.task!r} is not a text task")


# -- Hugging Face datasets ---------------------------------------------------------------------

def _is_saved_dataset(p: Path) -> bool:
    """A directory written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``."""
    return p.is_dir() and any((p / f).is_file() for f in ("state.json", "dataset_dict.json"))


def _data_file_list(data_files) -> list[str]:
    if data_files is None:
        return []
    if isinstance(data_files, str):
        return [data_files]
    if isinstance(data_files, dict):
        return [f for v in data_files.values() for f in _data_file_list(v)]
    return [str(f) for f in data_files]


def _expand_user(data_files):
    """``~`` in local data file names (``datasets`` does not expand it)."""
    if isinstance(data_files, str):
        return os.path.expanduser(data_files)
    if isinstance(data_files, dict):
        return {k: _expand_user(v) for k, v in data_files.items()}
    return None if data_files is None else [_expand_user(str(f)) for f in data_files]


def _local_fingerprint(paths: list[str]) -> list:
    """Name, size and mtime of every local file (a glob is expanded), so that edited data is
    tokenized again; anything else (a hub name, a URL) stands for itself."""
    out = []
    for s in paths:
        p = Path(s).expanduser()
        files = [p] if p.is_file() else sorted(p.rglob("*")) if p.is_dir() else sorted(Path().glob(s)) if any(
            c in s for c in "*?[") else []
        out += [[str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns] for f in files if f.is_file()] or [s]
    return out


def hf_document_source(cfg):
    """Documents from a Hugging Face dataset, three ways (``data.hf_name``):

    - a directory saved with ``save_to_disk`` (read with ``load_from_disk``, no network);
    - a packaged builder (``json``, ``csv``, ``parquet``, ``text``, ...) with local
      ``data.hf_data_files`` (no network);
    - a dataset on the Hub, streamed (``load_dataset(..., streaming=True)``); offline
      (``HF_DATASETS_OFFLINE=1``) only what is in the local cache loads.
    """
    try:
        import datasets
    except ImportError:
        raise ConfigError("data.task", "task 'hf' needs the `datasets` package "
                          "(pip install 'attnlab[datasets]' or pip install datasets)") from None
    name, split, field = cfg.hf_name, cfg.hf_split, cfg.hf_text_field
    saved = _is_saved_dataset(Path(name).expanduser())
    for f in _data_file_list(cfg.hf_data_files):
        local = not f.startswith(("hf://", "http://", "https://", "s3://", "gs://"))
        if local and not any(c in f for c in "*?[") and not Path(f).expanduser().exists():
            raise ConfigError("data.hf_data_files", f"file not found: {f}")
    if saved and cfg.hf_data_files:
        raise ConfigError("data.hf_data_files", f"{name} is a dataset saved with save_to_disk; "
                          "data files go with a builder name (json, csv, parquet, text)")

    def open_rows():
        if saved:
            try:
                ds = datasets.load_from_disk(str(Path(name).expanduser()))
            except Exception as e:  # noqa: BLE001 - a corrupt directory: name it
                raise ConfigError("data.hf_name", f"could not load the saved dataset {name}: "
                                  f"{type(e).__name__}: {e}") from None
            if isinstance(ds, datasets.DatasetDict):
                if split not in ds:
                    raise ConfigError("data.hf_split", f"no split {split!r} in {name}; splits: {', '.join(ds)}")
                ds = ds[split]
            return ds
        try:
            return datasets.load_dataset(name, cfg.hf_config, data_files=_expand_user(cfg.hf_data_files),
                                         split=split, streaming=True)
        except ValueError as e:
            if "split" in str(e).lower():
                raise ConfigError("data.hf_split", f"{e}") from None
            raise ConfigError("data.hf_name", f"could not load dataset {name!r}: {e}") from None
        except Exception as e:  # noqa: BLE001 - not found, offline, no access: one clear message
            hint = (" (offline: HF_DATASETS_OFFLINE is set and it is not in the local cache; for local data "
                    "pass a save_to_disk directory, or a builder name such as json with --data.hf_data_files)"
                    if getattr(datasets.config, "HF_HUB_OFFLINE", False)
                    or getattr(datasets.config, "HF_DATASETS_OFFLINE", False) else "")
            raise ConfigError("data.hf_name", f"could not load dataset {name!r}: {type(e).__name__}: "
                              f"{e}{hint}") from None

    def rows():
        """The rows; a read error while streaming (a malformed file, a broken connection) is a
        ConfigError naming the source."""
        it = iter(open_rows())
        while True:
            try:
                yield next(it)
            except StopIteration:
                return
            except Exception as e:  # noqa: BLE001
                where = "data.hf_data_files" if cfg.hf_data_files else "data.hf_name"
                raise ConfigError(where, f"could not read the rows of {name!r}: {type(e).__name__}: {e}") from None

    def docs():
        for i, row in enumerate(rows()):
            if cfg.hf_max_docs is not None and i >= cfg.hf_max_docs:
                break
            if field not in row:
                raise ConfigError("data.hf_text_field", f"no column {field!r} in {name}; columns: {', '.join(row)}")
            text = row[field]
            if not isinstance(text, str):
                raise ConfigError("data.hf_text_field", f"column {field!r} of {name} holds "
                                  f"{type(text).__name__} values, not text")
            yield text

    fp = [name, cfg.hf_config, split, field, cfg.hf_max_docs,
          _local_fingerprint([name] if Path(name).expanduser().exists() else [])
          + _local_fingerprint(_data_file_list(cfg.hf_data_files))]
    return docs, fp


class TextCorpus:
    """Token files of a tokenized corpus (memory-mapped) and its tokenizer."""

    def __init__(self, directory: Path):
        self.dir = Path(directory)
        meta = json.loads((self.dir / "meta.json").read_text())
        self.meta = meta
        self.tokenizer = load_tokenizer(self.dir / "tokenizer")
        tokens = np.memmap(self.dir / "tokens.bin", dtype=meta["dtype"], mode="r")
        self.train, self.val = tokens[: meta["n_train"]], tokens[meta["n_train"]:]

    @classmethod
    def prepare(cls, cfg, directory: str | Path) -> "TextCorpus":
        """Tokenize the configured documents into ``directory`` (reused when already done)."""
        d = Path(directory)
        docs, fp = document_source(cfg)
        key = {"sources": fp, "tokenizer": cfg.tokenizer, "val_fraction": cfg.val_fraction,
               "bpe_vocab_size": cfg.bpe_vocab_size if cfg.tokenizer == "bpe" else None}
        meta_path = d / "meta.json"
        if meta_path.is_file() and json.loads(meta_path.read_text()).get("key") == key:
            return cls(d)
        d.mkdir(parents=True, exist_ok=True)
        tok = build_tokenizer(cfg.tokenizer, docs, cfg.bpe_vocab_size)
        dtype = np.uint16 if tok.vocab_size <= 2**16 else np.uint32
        tmp = d / "tokens.bin.tmp"
        n = 0
        with open(tmp, "wb") as f:
            for i, text in enumerate(docs()):
                ids = ([tok.sep_id] if i and tok.sep_id is not None else []) + tok.encode(text)
                f.write(np.asarray(ids, dtype=dtype).tobytes())
                n += len(ids)
        os.replace(tmp, d / "tokens.bin")
        save_tokenizer(tok, d / "tokenizer")
        n_val = int(n * cfg.val_fraction)
        meta = {"key": key, "dtype": np.dtype(dtype).name, "n_tokens": n, "n_train": n - n_val,
                "vocab_size": tok.vocab_size, "sep_id": tok.sep_id}
        meta_path.write_text(json.dumps(meta, indent=1))
        return cls(d)


class TextTask(Task):
    """Next-token prediction over packed windows of a TextCorpus."""

    name = "text"

    def __init__(self, corpus: TextCorpus, seq_len: int, seed: int):
        super().__init__(seq_len, seed, corpus.tokenizer.vocab_size)
        self.corpus, self.tokenizer = corpus, corpus.tokenizer
        self.sep = corpus.tokenizer.sep_id
        for split, arr in (("train", corpus.train), ("validation", corpus.val)):
            if len(arr) < seq_len + 2:
                raise ConfigError("train.seq_len", f"the {split} split has {len(arr)} tokens, too few for "
                                  f"windows of seq_len={seq_len} (+1 target)")

    def _windows(self, arr, offsets) -> tuple[torch.Tensor, torch.Tensor]:
        t = self.seq_len
        w = torch.from_numpy(np.stack([np.asarray(arr[o:o + t + 1], dtype=np.int64) for o in offsets]))
        x, y = w[:, :-1], w[:, 1:].clone()
        if self.sep is not None:
            y[x == self.sep] = IGNORE  # no loss across a document boundary
        return x.contiguous(), y

    def segments(self, x):
        # A separator opens the next document, so it takes that document's id.
        return None if self.sep is None else (x == self.sep).cumsum(dim=1)

    def train_batch(self, index, batch_size):
        hi = len(self.corpus.train) - self.seq_len - 1
        offs = torch.randint(0, hi + 1, (batch_size,), generator=generator(self.seed, 0, index))
        return self._windows(self.corpus.train, offs.tolist())

    def val_batches(self, batch_size, n_batches):
        hi = len(self.corpus.val) - self.seq_len - 1
        offs = torch.linspace(0, hi, batch_size * n_batches).long().tolist()
        return [self._windows(self.corpus.val, offs[i:i + batch_size]) for i in range(0, len(offs), batch_size)]


def build_task(exp, data_dir: str | Path, corpus: TextCorpus | None = None) -> Task:
    """The task of an experiment. Text corpora are tokenized into ``data_dir`` (or passed in, so
    that several runs share one tokenization)."""
    from .tasks import MQARTask, PasskeyTask
    from .tokenizers import ByteTokenizer

    d, t = exp.data, exp.train
    if d.task == "mqar":
        return MQARTask(d.mqar, t.seq_len, t.seed)
    if d.task == "passkey":
        tok = ByteTokenizer()
        return PasskeyTask(d.passkey, t.seq_len, t.seed, tok, exp.model_config(tok.vocab_size).max_seq_len)
    return TextTask(corpus or TextCorpus.prepare(d, data_dir), t.seq_len, t.seed)
