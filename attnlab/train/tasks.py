"""Training tasks: the common interface, and the embedded synthetic tasks (no download).

A task hands out batches ``(x, y)`` of int64 ``[B, T]`` where ``y`` is the next-token target with
``IGNORE`` (-100) wherever no loss is taken. Training batch ``index`` (the global micro-batch
number) is a pure function of (seed, index), so a resumed run sees exactly the batches it would
have seen; validation batches are fixed (independent of the seed, the same for every run).

- ``MQARTask``: multi-query associative recall as in Zoology (Arora et al. 2023).
- ``PasskeyTask``: a numeric pass key hidden in filler text, retrieved by exact match, also at
  lengths beyond the training length.
"""

from __future__ import annotations

import torch

from ..errors import ConfigError

IGNORE = -100
_VAL_STREAM = 0x5EED_0F_FA1  # validation examples use their own seed, the same for every run


def generator(seed: int, stream: int, index: int) -> torch.Generator:
    """A CPU generator determined by (seed, stream, index)."""
    g = torch.Generator()
    g.manual_seed(((seed * 1_000_003 + stream) * 1_000_000_007 + index) % (2**63 - 1))
    return g


class Task:
    """Base class. ``has_accuracy``: the eval reports an accuracy at the labelled positions."""

    name = "task"
    has_accuracy = False
    tokenizer = None

    def __init__(self, seq_len: int, seed: int, vocab_size: int):
        self.seq_len, self.seed, self.vocab_size = seq_len, seed, vocab_size

    def train_batch(self, index: int, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def val_batches(self, batch_size: int, n_batches: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        raise NotImplementedError

    def segments(self, x: torch.Tensor) -> torch.Tensor | None:
        """Document ids [B, T] of packed windows (None: one document per row)."""
        return None

    def extra_metrics(self, model, device, autocast) -> dict:
        """Metrics needing generation (passkey exact match); the model is in eval mode."""
        return {}


# -- MQAR -------------------------------------------------------------------------------------

def mqar_batch(batch_size: int, seq_len: int, vocab_size: int, num_kv_pairs: int, power_a: float = 0.01,
               random_non_queries: bool = True, generator: torch.Generator | None = None):
    """Zoology's multi-query associative recall.

    Each sequence starts with ``num_kv_pairs`` pairs ``k v`` (keys: distinct ids from
    1..vocab_size//2 - 1; values: distinct ids from vocab_size//2..vocab_size-1). The rest holds
    each key once more, at even offsets ``2*g`` after the pairs, the gaps g drawn without
    replacement with p(g) ~ (g+1)^(power_a - 1). The target at a queried key's position is its
    value; every other target is IGNORE. Non-query positions hold token 0, or random tokens.
    Returns x, y int64 [B, seq_len].
    """
    b, d, t = batch_size, num_kv_pairs, seq_len
    half = vocab_size // 2
    space = (t - 2 * d) // 2
    if d < 1 or d > half - 1 or space < d:
        raise ConfigError("data.mqar.num_kv_pairs", f"{d} pairs do not fit vocab_size={vocab_size}, seq_len={t}")
    keys = torch.rand(b, half - 1, generator=generator).argsort(dim=1)[:, :d] + 1
    values = torch.rand(b, vocab_size - half, generator=generator).argsort(dim=1)[:, :d] + half
    kv = torch.stack([keys, values], dim=2).reshape(b, 2 * d)
    p = (torch.arange(1, space + 1, dtype=torch.float64) ** (power_a - 1)).expand(b, space)
    gaps = torch.multinomial(p, d, replacement=False, generator=generator)
    queries = torch.zeros(b, t - 2 * d, dtype=torch.long)
    queries.scatter_(1, 2 * gaps, keys)
    x = torch.cat([kv, queries], dim=1)
    y = torch.full((b, t), IGNORE, dtype=torch.long)
    y.scatter_(1, 2 * d + 2 * gaps, values)
    if random_non_queries:
        filler = torch.randint(0, vocab_size, (b, t), generator=generator)
        free = torch.zeros(b, t, dtype=torch.bool)
        free[:, 2 * d:] = True
        free.scatter_(1, 2 * d + 2 * gaps, False)
        x = torch.where(free, filler, x)
    return x, y


class MQARTask(Task):
    name = "mqar"
    has_accuracy = True

    def __init__(self, cfg, seq_len: int, seed: int):
        super().__init__(seq_len, seed, cfg.vocab_size)
        self.cfg = cfg

    def _batch(self, n: int, g: torch.Generator):
        c = self.cfg
        return mqar_batch(n, self.seq_len, c.vocab_size, c.num_kv_pairs, c.power_a, c.random_non_queries, g)

    def train_batch(self, index, batch_size):
        return self._batch(batch_size, generator(self.seed, 1, index))

    def val_batches(self, batch_size, n_batches):
        n = self.cfg.val_examples
        x, y = self._batch(n, generator(_VAL_STREAM, 1, 0))
        return [(x[i:i + batch_size], y[i:i + batch_size]) for i in range(0, n, batch_size)]


# -- passkey retrieval ------------------------------------------------------------------------

FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
QUESTION = "What is the pass key? The pass key is "


def needle_text(key: str) -> str:
    return f"The pass key is {key}. Remember it. {key} is the pass key. "


def passkey_prompt(length: int, depth: float, key: str) -> tuple[str, int]:
    """A prompt of exactly ``length`` characters: filler with the needle starting at fraction
    ``depth`` of the filler, then the question. Returns (prompt, needle start)."""
    needle = needle_text(key)
    n_fill = length - len(needle) - len(QUESTION)
    if n_fill < 0:
        raise ConfigError("train.seq_len", f"passkey prompts need at least {len(needle) + len(QUESTION)} "
                          f"characters; got {length}")
    filler = FILLER * (n_fill // len(FILLER) + 1)
    at = round(depth * n_fill)
    return filler[:at] + needle + filler[at:n_fill] + QUESTION, at


def random_key(digits: int, g: torch.Generator) -> str:
    lo = 10 ** (digits - 1) if digits > 1 else 0
    return str(int(torch.randint(lo, 10**digits, (1,), generator=g)))


class PasskeyTask(Task):
    """Byte-level passkey retrieval. Training sequences are prompt + answer with the loss on the
    answer digits only; the eval generates greedily and scores exact matches."""

    name = "passkey"
    has_accuracy = True

    def __init__(self, cfg, seq_len: int, seed: int, tokenizer, max_seq_len: int):
        super().__init__(seq_len, seed, tokenizer.vocab_size)
        self.cfg, self.tokenizer, self.max_seq_len = cfg, tokenizer, max_seq_len
        passkey_prompt(seq_len + 1 - cfg.digits, 0.0, "9" * cfg.digits)  # fits?

    def _examples(self, n: int, length: int, g: torch.Generator, depths=None):
        """n sequences of ``length`` tokens (prompt + answer)."""
        d = self.cfg.digits
        rows = []
        for i in range(n):
            depth = float(torch.rand((), generator=g)) if depths is None else depths[i % len(depths)]
            key = random_key(d, g)
            prompt, _ = passkey_prompt(length - d, depth, key)
            rows.append(self.tokenizer.encode(prompt + key))
        seq = torch.tensor(rows, dtype=torch.long)
        return seq

    def _xy(self, seq: torch.Tensor):
        x, y = seq[:, :-1], seq[:, 1:].clone()
        y[:, : y.shape[1] - self.cfg.digits] = IGNORE
        return x, y

    def train_batch(self, index, batch_size):
        return self._xy(self._examples(batch_size, self.seq_len + 1, generator(self.seed, 2, index)))

    def val_batches(self, batch_size, n_batches):
        seq = self._examples(batch_size * n_batches, self.seq_len + 1, generator(_VAL_STREAM, 2, 0))
        return [self._xy(seq[i:i + batch_size]) for i in range(0, len(seq), batch_size)]

    def eval_lengths(self) -> list[int]:
        if self.cfg.eval_lengths:
            return [int(n) for n in self.cfg.eval_lengths]
        return [n for n in (self.seq_len, 2 * self.seq_len, 4 * self.seq_len) if n <= self.max_seq_len]

    @torch.no_grad()
    def extra_metrics(self, model, device, autocast) -> dict:
        out = {}
        d = self.cfg.digits
        for length in self.eval_lengths():
            if length > model.config.max_seq_len:
                raise ConfigError("data.passkey.eval_lengths", f"{length} exceeds the model's "
                                  f"max_seq_len={model.config.max_seq_len}")
            n = self.cfg.eval_examples * len(self.cfg.depths)
            seq = self._examples(n, length, generator(_VAL_STREAM, 3, length), depths=self.cfg.depths)
            with autocast():
                gen = model.generate(seq[:, :-d].to(device), max_new_tokens=d)
            hit = (gen[:, -d:].cpu() == seq[:, -d:]).all(dim=1).float().mean().item()
            out[f"passkey@{length}"] = hit
        if self.seq_len in self.eval_lengths():
            out["accuracy"] = out[f"passkey@{self.seq_len}"]
        return out
