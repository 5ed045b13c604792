"""The training loader: batches served by the harness, which owns the clock and the budget.

    loader = prepare.train_loader(model, batch_size=rows, accum=accum)
    for x, y in loader.warmup(steps=2):    # random tokens, before the clock starts: compile here
        model(x, y).backward()
    for x, y in loader:                    # real data until the budget is spent, then it stops
        ...                                # loader.progress (0..1) drives the schedule

Inside a run the trainer serves the training split over a socket (`EVOLVE_STREAM`); the training
window opens when the first real batch is asked for (or when the start-up allowance runs out) and
the stream ends when the budget (seconds or tokens) is spent, at an optimizer-step boundary.
Before the first batch the loader traces `model` into a graph (`prepare.artifact`) and hands it
to the harness; when the stream ends it hands over the model's weights, before the loop sees the
end, and a fresh evaluator process scores that graph with those weights. So the model that is
scored is the one trained inside the window, and `train.py` keeps no time of its own.

Outside a run (no `EVOLVE_STREAM`, e.g. `python train.py` by hand) the loader reads the prepared
training split itself and stops after the budget of `prepare.run_config()`, so the same script
runs anywhere; only the trainer's runs count.
"""

from __future__ import annotations

import fcntl
import os
import queue
import socket
import threading
import time
from collections.abc import Iterator

import numpy as np
import torch

from . import protocol as P
from .artifact import ArtifactError, export_graph, pack_weights, unwrap
from .contract import RunConfig, run_config
from .errors import PrepareError

STREAM_VAR = "EVOLVE_STREAM"


class _Local:
    """Stand-in for the harness when train.py runs by hand: the prepared split, the config's budget."""

    def __init__(self, cfg: RunConfig, batch_size: int, accum: int):
        from .dataloader import DataLoader
        from .shards import open_split

        split = open_split(cfg.data_dir, "train")
        self.loader = DataLoader(
            split.tokens, split.offsets, batch_size, cfg.profile.seq_len,
            seed=cfg.seed, rank=cfg.rank, world_size=cfg.world_size,
        )  # fmt: skip
        self.cfg, self.accum, self.per_batch = cfg, accum, batch_size * cfg.profile.seq_len * cfg.world_size
        self.start: float | None = None
        self.index = 0
        self.end: int | None = None

    def next(self) -> tuple[dict, bytes | None]:
        now = time.monotonic()
        self.start = now if self.start is None else self.start
        spent = self.index * self.per_batch if self.cfg.budget_unit == "tokens" else now - self.start
        if self.end is None and spent >= self.cfg.budget:
            self.end = -(-self.index // self.accum) * self.accum
        if self.end is not None and self.index >= self.end:
            return {"kind": P.END, "seconds": now - self.start, "tokens": self.index * self.per_batch}, None
        header = {
            "kind": P.BATCH, "index": self.index, "progress": min(1.0, spent / self.cfg.budget),
            "seconds": now - self.start, "tokens": self.index * self.per_batch,
        }  # fmt: skip
        self.index += 1
        return header, self.loader.next_rows().tobytes()


class TrainLoader:
    """Iterate for (x, y) int64 batches of shape (batch_size, seq_len) on the run's device.

    `model` is the module that will be scored (the bare one, or a compiled / DDP wrapper around
    it): its graph is traced before the first batch and its weights are handed over when the
    stream ends. `accum` is how many batches make one optimizer step; the stream always ends
    after a whole step. `progress` is the fraction of the budget spent when the current batch was
    asked for, `seconds` and `tokens` the training time and tokens so far (all the harness's)."""

    def __init__(self, model: torch.nn.Module, batch_size: int, accum: int = 1, cfg: RunConfig | None = None):
        if batch_size < 1 or accum < 1:
            raise PrepareError(f"batch_size and accum must be >= 1, got {batch_size} and {accum}")
        self.cfg = cfg or run_config()
        self.model = model
        self.batch_size, self.accum = int(batch_size), int(accum)
        self.seq_len = self.cfg.profile.seq_len
        self.device = _device_of(model, self.cfg)  # batches arrive where the model is
        self.progress = 0.0
        self.seconds = 0.0
        self.tokens = 0
        self.batches = 0
        self._started = False
        self._ended = False
        self._weights: tuple[str, ...] = ()
        self._queue: queue.Queue = queue.Queue()
        self._credit = threading.Semaphore(1)  # one batch asked for ahead of the one in use, no more
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._local: _Local | None = None
        path = os.environ.get(STREAM_VAR)
        if path:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(path)
            # Out of stdio's way: a script that closed fd 1 and then prints must not write into the stream.
            high = fcntl.fcntl(sock.fileno(), fcntl.F_DUPFD_CLOEXEC, 64)
            sock.close()
            self._sock = socket.socket(fileno=high)
            self._send(
                P.HELLO, rank=self.cfg.rank, world_size=self.cfg.world_size,
                batch_size=self.batch_size, accum=self.accum, seq_len=self.seq_len,
            )  # fmt: skip
        else:
            self._local = _Local(self.cfg, self.batch_size, self.accum)

    # ------------------------------------------------------------------ talking to the harness
    def _send(self, kind: str, payload: bytes = b"", **fields) -> None:
        with self._lock:
            P.send(self._sock, kind, payload, **fields)

    def _fetch(self) -> tuple[dict, bytes | None]:
        if self._local is not None:
            return self._local.next()
        with self._lock:
            P.send(self._sock, P.NEXT)
            header = P.recv_header(self._sock)
            payload = P.recv_payload(self._sock, header["size"])
        if header["kind"] == P.ERROR:
            raise PrepareError(f"the harness refused a batch: {header.get('message')}")
        return header, payload

    def _prefetch(self) -> None:
        """Background: keep the next batch ready (decoded, in pinned memory on a GPU run)."""
        try:
            while True:
                self._credit.acquire()  # the harness's clock sees when the previous batch was taken
                header, payload = self._fetch()
                if header["kind"] != P.BATCH:
                    self._queue.put((header, None))
                    return
                rows = np.frombuffer(payload, dtype="<u2").reshape(self.batch_size, self.seq_len + 1)
                self._queue.put((header, _pair(rows, self.device.type == "cuda")))
        except BaseException as exc:  # surfaced in the training thread
            self._queue.put(({"kind": "exception"}, exc))

    def report_denied(self, message: str) -> None:
        if self._sock is not None:
            try:
                self._send(P.DENIED, message=message[:2000])
            except OSError:
                pass

    # ------------------------------------------------------------------ the loops
    def warmup(self, steps: int = 1) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """`steps` batches of random tokens, outside the budget: for compiling and lazy set-up.

        Train on them if you like; they carry nothing about the data."""
        vocab = _vocab(self.cfg)
        gen = torch.Generator().manual_seed(self.cfg.seed + 7919 * self.cfg.rank)
        for _ in range(max(0, int(steps))):
            rows = torch.randint(0, vocab, (self.batch_size, self.seq_len + 1), generator=gen).numpy()
            pair = _pair(rows, False).to(self.device)
            yield pair[0], pair[1]

    def __iter__(self) -> TrainLoader:
        if not self._started:
            self._start()
        return self

    def _start(self) -> None:
        self._started = True
        if self.cfg.is_master:
            try:
                handover = export_graph(self.model, self.seq_len, _vocab(self.cfg), self.batch_size)
            except ArtifactError as exc:
                if self._sock is not None:
                    self._send(P.FAILED, message=str(exc)[:2000])
                raise
            self._weights = handover.weight_names
            if self._sock is not None:
                self._send(P.GRAPH, handover.graph)
        threading.Thread(target=self._prefetch, name="evolve-loader", daemon=True).start()

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        if not self._started:
            self._start()
        if self._ended:
            raise StopIteration
        header, item = self._queue.get()
        self._credit.release()
        if header["kind"] == "exception":
            raise item
        if header["kind"] != P.BATCH:
            self._ended = True
            self.seconds = float(header.get("seconds", self.seconds))
            self.tokens = int(header.get("tokens", self.tokens))
            self._hand_over()
            raise StopIteration
        self.progress = float(header["progress"])
        self.seconds = float(header["seconds"])
        self.tokens = int(header["tokens"])
        self.batches += 1
        pair = item.to(self.device, non_blocking=True)
        return pair[0], pair[1]

    def _hand_over(self) -> None:
        if not self.cfg.is_master or self._sock is None:
            return
        try:
            payload = pack_weights(self.model, self._weights)
        except ArtifactError as exc:
            self._send(P.FAILED, message=str(exc)[:2000])
            raise
        self._send(P.WEIGHTS, payload)

    @property
    def steps(self) -> int:
        """Optimizer steps the batches so far make (batches // accum)."""
        return self.batches // self.accum


def _device_of(model: torch.nn.Module, cfg: RunConfig) -> torch.device:
    for t in list(model.parameters()) + list(model.buffers()):
        return t.device
    return torch.device(cfg.device, cfg.local_rank) if cfg.device == "cuda" else torch.device("cpu")


def _pair(rows: np.ndarray, pin: bool) -> torch.Tensor:
    """(2, B, T) int64: inputs and targets in one buffer, so one copy moves both and each is contiguous."""
    B, T1 = rows.shape
    host = torch.empty((2, B, T1 - 1), dtype=torch.int64, pin_memory=pin)
    view = host.numpy()
    view[0] = rows[:, :-1]
    view[1] = rows[:, 1:]
    return host


def _vocab(cfg: RunConfig) -> int:
    from .tokenizer import load_tokenizer

    return load_tokenizer(cfg.data_dir).vocab_size


def train_loader(
    model: torch.nn.Module, batch_size: int, accum: int = 1, cfg: RunConfig | None = None
) -> TrainLoader:
    """The loader of a training run (see the module docstring); `model` is the module to score."""
    return TrainLoader(unwrap(model) if model is not None else model, batch_size, accum, cfg)
