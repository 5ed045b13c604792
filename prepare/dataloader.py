"""The training dataloader: documents packed BOS-aligned into rows, with no padding.

Every row holds `seq_len + 1` tokens and starts at the beginning of a document, so every row
starts with BOS and the model never sees a context that began in the middle of a document. A
row opens with the oldest document of a buffer of candidates (so none waits for ever), then is
filled best-fit: the longest candidate that still fits, again and again; when none fits, the
shortest candidate is cropped to fill the row exactly and its tail is dropped (as is the tail of
a document longer than a row). Inputs are the first `seq_len` tokens of each row, targets the
last `seq_len`.

    loader = prepare.make_loader("train", batch_size=32)
    x, y = next(loader)             # int64 (32, seq_len) each, on cfg.device
    loader.state                    # {"epoch": 1, "tokens": ..., ...} for logging
"""

from __future__ import annotations

import bisect
import itertools
from collections import deque
from collections.abc import Iterator

import numpy as np
import torch

from .contract import RunConfig, run_config
from .errors import PrepareError
from .shards import open_split

BUFFER_DOCS = 1000  # candidate documents for best-fit; more packs tighter but costs CPU


class Exhausted(Exception):
    """The document stream ended before a row could be filled (only for finite streams)."""


class BestFitPacker:
    """Turns a stream of document ids into rows of `row_len` tokens, as (start, length) segments.

    Each row starts with the oldest document in the buffer (so no document waits longer than
    about `buffer_docs` rows, whatever its length), then takes the longest documents that still
    fit; when none fits, the shortest is cropped to fill the row exactly. Deterministic: the same
    stream gives the same rows; among candidates of equal length the earliest is used first."""

    def __init__(
        self, offsets: np.ndarray, doc_ids: Iterator[int], row_len: int, buffer_docs: int = BUFFER_DOCS
    ):
        self.offsets = offsets
        self.row_len = row_len
        self.buffer_docs = max(1, buffer_docs)
        self.used = 0  # documents placed into rows
        self.cropped_tokens = 0  # tokens dropped from the tails of cropped documents
        self._ids = iter(doc_ids)
        self._lengths = np.diff(offsets)
        self._arrival = itertools.count()
        self._by_length: list[tuple[int, int, int]] = []  # (length, arrival, doc), sorted
        self._by_arrival: deque[tuple[int, int, int]] = deque()  # the same, oldest first
        self._taken: set[int] = set()  # arrivals used out of order, still in _by_arrival

    def _refill(self) -> None:
        while len(self._by_length) < self.buffer_docs:
            doc = next(self._ids, None)
            if doc is None:
                return
            key = (int(self._lengths[doc]), next(self._arrival), int(doc))
            bisect.insort(self._by_length, key)
            self._by_arrival.append(key)

    def _take_oldest(self) -> tuple[int, int, int]:
        while self._by_arrival[0][1] in self._taken:
            self._taken.remove(self._by_arrival.popleft()[1])
        key = self._by_arrival.popleft()
        del self._by_length[bisect.bisect_left(self._by_length, key)]
        return key

    def _take_best_fit(self, remaining: int) -> tuple[int, int, int]:
        keys = self._by_length
        i = bisect.bisect_right(keys, (remaining, float("inf"))) - 1  # longest that fits
        # earliest of that length; if nothing fits, the shortest (index 0) is the one to crop
        i = bisect.bisect_left(keys, (keys[i][0],)) if i >= 0 else 0
        key = keys.pop(i)
        self._taken.add(key[1])
        return key

    def rows(self, n_rows: int) -> tuple[np.ndarray, np.ndarray]:
        """Segment starts and lengths (in token positions) of the next `n_rows` rows, in order."""
        starts: list[int] = []
        lengths: list[int] = []
        for _ in range(n_rows):
            remaining = self.row_len
            while remaining:
                self._refill()
                if not self._by_length:
                    raise Exhausted
                first = remaining == self.row_len
                length, _, doc = self._take_oldest() if first else self._take_best_fit(remaining)
                if length > remaining:
                    self.cropped_tokens += length - remaining
                    length = remaining
                self.used += 1
                starts.append(int(self.offsets[doc]))
                lengths.append(length)
                remaining -= length
        return np.asarray(starts, dtype=np.int64), np.asarray(lengths, dtype=np.int64)


def gather(tokens: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """The tokens of all segments, concatenated, with one vectorised read of the memmap."""
    total = int(lengths.sum())
    out_starts = np.cumsum(lengths) - lengths
    index = np.arange(total, dtype=np.int64) + np.repeat(starts - out_starts, lengths)
    return np.asarray(tokens[index])


def _shuffled_epochs(n_docs: int, seed: int, rank: int, world_size: int) -> Iterator[list[int]]:
    # Every rank draws the same permutation per epoch and takes its own stride of it, so ranks
    # see disjoint documents within an epoch.
    for epoch in itertools.count(1):
        order = np.random.default_rng([seed, epoch]).permutation(n_docs)
        yield order[rank::world_size].tolist()


class DataLoader:
    """An endless iterator of `(x, y)` int64 batches of shape (batch_size, seq_len); y is x shifted by one.

    For logging: `epoch` (1 during the first pass over the documents), `batches`,
    `tokens_served` (input tokens served by this rank), `documents` (documents used so far),
    `cropped_tokens` (document tails dropped to fill rows exactly); `state` has them all."""

    def __init__(
        self,
        tokens: np.ndarray,
        offsets: np.ndarray,
        batch_size: int,
        seq_len: int,
        device: str | torch.device = "cpu",
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if batch_size < 1 or seq_len < 1:
            raise PrepareError(f"batch_size and seq_len must be >= 1, got {batch_size} and {seq_len}")
        if not 0 <= rank < world_size:
            raise PrepareError(f"rank {rank} is outside world size {world_size}")
        n_docs = len(offsets) - 1
        if n_docs < world_size:
            raise PrepareError(
                f"{n_docs} documents cannot be shared by {world_size} ranks; prepare more data"
            )
        self.tokens = tokens
        self.batch_size = batch_size
        self.seq_len = seq_len
        self.device = torch.device(device)
        self.batches = 0
        self.tokens_served = 0
        self._pin = self.device.type == "cuda"
        self._docs_per_epoch = len(range(rank, n_docs, world_size))
        stream = itertools.chain.from_iterable(_shuffled_epochs(n_docs, seed, rank, world_size))
        # A buffer larger than an epoch would only mix epochs (tiny datasets).
        buffer_docs = min(BUFFER_DOCS, self._docs_per_epoch)
        self._packer = BestFitPacker(offsets, stream, seq_len + 1, buffer_docs)

    @property
    def documents(self) -> int:
        """Documents placed into rows so far (whole or cropped)."""
        return self._packer.used

    @property
    def epoch(self) -> int:
        """The pass over this rank's documents that rows are being filled from (1 = the first)."""
        return 1 + self.documents // self._docs_per_epoch

    @property
    def cropped_tokens(self) -> int:
        return self._packer.cropped_tokens

    @property
    def state(self) -> dict[str, int]:
        return {
            "epoch": self.epoch,
            "batches": self.batches,
            "tokens": self.tokens_served,
            "documents": self.documents,
            "cropped_tokens": self.cropped_tokens,
        }

    def next_rows(self) -> np.ndarray:
        """The next batch as a uint16 array of shape (batch_size, seq_len + 1), on the CPU."""
        starts, lengths = self._packer.rows(self.batch_size)
        self.batches += 1
        self.tokens_served += self.batch_size * self.seq_len
        return gather(self.tokens, starts, lengths).reshape(self.batch_size, self.seq_len + 1)

    def __iter__(self) -> DataLoader:
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        rows = self.next_rows()
        # x and y share one (2, B, T) buffer so that a single host-to-device copy moves both.
        host = torch.empty((2, self.batch_size, self.seq_len), dtype=torch.int64, pin_memory=self._pin)
        view = host.numpy()
        view[0] = rows[:, :-1]
        view[1] = rows[:, 1:]
        if self.device.type != "cpu":
            # The caching host allocator keeps a pinned block until the copy using it is done.
            host = host.to(self.device, non_blocking=self._pin)
        return host[0], host[1]


def make_loader(
    split: str,
    batch_size: int,
    cfg: RunConfig | None = None,
    seq_len: int | None = None,
    device: str | torch.device | None = None,
    seed: int | None = None,
) -> DataLoader:
    """An endless loader of `(x, y)` batches of the prepared `split` ("train" or "val").

    Defaults come from the run (`cfg = prepare.run_config()`): `seq_len` from the profile,
    `device` and `seed` from the run; under torchrun each rank reads different documents.
    Document order is shuffled by `seed` and reshuffled every epoch, deterministically. Inside
    a trainer run the data is not on disk: train on `prepare.train_loader(model, ...)`."""
    import os

    if os.environ.get("EVOLVE_STREAM"):
        raise PrepareError(
            "inside a run the training data is served by the harness: train on "
            "prepare.train_loader(model, batch_size, accum) instead of make_loader"
        )
    cfg = cfg or run_config()
    data = open_split(cfg.data_dir, split)  # refuses an incomplete or altered dataset
    return DataLoader(
        data.tokens,
        data.offsets,
        batch_size=batch_size,
        seq_len=seq_len or cfg.profile.seq_len,
        device=device or cfg.device,
        seed=cfg.seed if seed is None else seed,
        rank=cfg.rank,
        world_size=cfg.world_size,
    )
