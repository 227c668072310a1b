"""The cache protocol.

A ``LayerCache`` holds one layer's decode state: dense K/V, a latent, a recurrent state, a
compressed or quantized store. The mixer that owns the layer creates it (``Mixer.new_cache``)
and is the only code that reads or writes it. Every cache counts the tokens it has seen, which
is where positions come from, and reports ``nbytes()`` from the tensors it actually holds.

A ``ModelCache`` groups the per-layer caches of one model.
"""

from __future__ import annotations

import torch

from ..errors import InputError


def held_bytes(tensors) -> int:
    """Bytes of the distinct storages behind ``tensors`` (views of one buffer count once)."""
    seen: dict[int, int] = {}
    for t in tensors:
        if t is None:
            continue
        s = t.untyped_storage()
        seen[s.data_ptr()] = s.nbytes()
    return sum(seen.values())


class LayerCache:
    """Base class: token count, capacity check, measured size, reset.

    Subclasses hold their tensors and list them in ``tensors()``. ``max_len`` is the number of
    tokens the cache accepts (None: unbounded, e.g. a recurrent state).
    """

    def __init__(self, batch_size: int, max_len: int | None):
        self.batch_size = batch_size
        self.max_len = max_len
        self.seen = 0  # tokens written so far; the next token's position

    def tensors(self) -> list[torch.Tensor]:
        raise NotImplementedError

    def nbytes(self) -> int:
        return held_bytes(self.tensors())

    def reset(self) -> None:
        """Forget all tokens; buffers are kept for reuse."""
        self.seen = 0

    def check_room(self, n: int) -> None:
        if self.max_len is not None and self.seen + n > self.max_len:
            raise InputError(
                f"{n} new tokens do not fit in the cache: it holds {self.seen} of max_len={self.max_len}"
            )


class ModelCache:
    """The caches of all layers of one model, in layer order."""

    def __init__(self, layers: list[LayerCache]):
        self.layers = list(layers)

    def __len__(self) -> int:
        return len(self.layers)

    def __getitem__(self, i: int) -> LayerCache:
        return self.layers[i]

    def __iter__(self):
        return iter(self.layers)

    @property
    def seen(self) -> int:
        return self.layers[0].seen if self.layers else 0

    @property
    def max_len(self) -> int | None:
        caps = [c.max_len for c in self.layers if c.max_len is not None]
        return min(caps) if caps else None

    @property
    def batch_size(self) -> int:
        return self.layers[0].batch_size

    def check_room(self, n: int) -> None:
        for c in self.layers:
            c.check_room(n)

    def nbytes(self) -> int:
        return sum(c.nbytes() for c in self.layers)

    def nbytes_by_layer(self) -> list[int]:
        return [c.nbytes() for c in self.layers]

    def reset(self) -> None:
        for c in self.layers:
            c.reset()
