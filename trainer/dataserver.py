"""The harness's clock: it serves a run its training data and ends the stream when the budget is spent.

One `DataServer` per run listens on a Unix socket inside the run's private folder; the training
process (every rank) connects through `prepare.train_loader` and speaks prepare.protocol. The
server owns every number that decides what a run may train on:

- the **window** opens when the first batch is asked for, or when the start-up allowance runs
  out (compiling late then costs training time); just before it opens, `on_window` is called (the
  compile cache is snapshotted there: what the run writes later never reaches another run);
- the **budget** is seconds of that window, or training tokens; once it is spent the stream ends
  at the next optimizer-step boundary, for every rank at the same batch, so DDP ranks stop
  together; `progress` in each batch header is the budget fraction when that batch was asked for;
- the **handover**: rank 0 sends the model's graph before its first batch and its weights right
  after the end; weights that come later than a few steps' time after the budget ended mean the
  run kept training, and the run is invalid.

Nothing here trusts the client: sizes are capped, an unknown message is a protocol violation,
and every failure becomes a `problem` the judge reads, never an exception in the controller.
"""

from __future__ import annotations

import math
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from prepare import protocol as P
from prepare.artifact import weight_bytes
from prepare.dataloader import DataLoader
from prepare.shards import open_split

GRAPH_LIMIT = 1 << 30  # bytes: a graph with its constant tensors
WEIGHTS_LIMIT = 1 << 37
WEIGHTS_SLACK = (
    1 << 20
)  # bytes of weights beyond what the graph declared (headers, alignment)  # bytes: 128 GiB of weights, far above any model a profile trains
# After the budget is spent, the weights must arrive within HANDOVER_FIXED seconds, plus
# HANDOVER_BATCHES times the median time between rank 0's requests (the batch being trained, the
# one asked for ahead, the optimizer step; twice over), plus the weights' bytes at HANDOVER_RATE.
# Anything later is training after the budget. The median is over the whole window, so one long
# pause (hoarding batches to train on past the end) does not stretch it.
HANDOVER_FIXED = 3.0
# Under a token budget, training after the end on batches it kept buys nothing the window does not
# allow anyway (more passes over served data; bounded by window_limit): the allowance is only a
# timeout there, wide enough for a loaded CPU, where one process gets a fraction of a core.
HANDOVER_FIXED_TOKENS = 30.0
HANDOVER_BATCHES = 6.0
HANDOVER_RATE = 300e6


@dataclass
class Ledger:
    """What the server saw; read by the runner and the judge once the run is over."""

    window_start: float | None = None  # time.monotonic()
    end_due: float | None = None  # when the budget was spent
    end_sent: float | None = None  # when rank 0 was told the stream ended
    graph_at: float | None = None
    weights_at: float | None = None
    batches: dict[int, int] = field(default_factory=dict)  # rank -> batches served
    end_index: int | None = None
    world_size: int | None = None
    batch_size: int | None = None
    accum: int = 1
    seq_len: int | None = None
    tokens: int = 0  # training tokens served, all ranks
    problems: list[str] = field(default_factory=list)  # protocol violations, late handover
    denied: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)  # the client could not hand over its model
    weight_bytes: int = 0  # what the graph's parameters and buffers add up to

    @property
    def training_seconds(self) -> float | None:
        if self.window_start is None:
            return None
        end = self.end_sent if self.end_sent is not None else self.end_due
        return None if end is None else end - self.window_start

    @property
    def steps(self) -> int:
        return (self.end_index or 0) // max(1, self.accum)

    @property
    def handover_seconds(self) -> float | None:
        if self.weights_at is None or self.end_due is None:
            return None
        return self.weights_at - self.end_due


class DataServer:
    """Serves one run. `budget` is in `unit` ("seconds" or "tokens")."""

    def __init__(
        self,
        socket_path: Path,
        *,
        data_dir: Path,
        seq_len: int,
        seed: int,
        budget: float,
        unit: str,
        startup: float,
        artifact_dir: Path,
        expected_world: int,
        on_window: Callable[[], None] | None = None,
        on_graph: Callable[[Path], None] | None = None,
    ):
        self.path = Path(socket_path)
        self.data_dir = Path(data_dir)
        self.seq_len, self.seed = seq_len, seed
        self.budget, self.unit = float(budget), unit
        self.startup = startup
        self.artifact_dir = Path(artifact_dir)
        self.expected_world = expected_world
        self.on_window, self.on_graph = on_window, on_graph
        self.ledger = Ledger()
        self._lock = threading.Condition()
        self._progress: dict[int, tuple[float, float, int]] = {}  # index -> (progress, seconds, tokens)
        self._started = time.monotonic()
        self._closing = False
        self._threads: list[threading.Thread] = []
        self._split = None
        self._loaders: dict[int, DataLoader] = {}
        self._asked: list[float] = []  # when rank 0 asked for each of its batches
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.bind(str(self.path))
        os.chmod(self.path, 0o777)  # the sandbox's user may differ from ours
        self._sock.listen(16)
        self._sock.settimeout(0.2)

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> DataServer:
        thread = threading.Thread(target=self._accept, name="evolve-data", daemon=True)
        thread.start()
        self._threads.append(thread)
        return self

    def close(self) -> None:
        self._closing = True
        try:
            self._sock.close()
        except OSError:
            pass
        for t in self._threads:
            t.join(timeout=5)
        try:
            self.path.unlink()
        except OSError:
            pass

    def tick(self) -> str | None:
        """Called by the supervisor now and then: opens a late window, and returns a reason to stop
        the process when it kept training after its budget (None otherwise)."""
        now = time.monotonic()
        with self._lock:
            led = self.ledger
            if led.window_start is None and now - self._started >= self.startup:
                self._open_window("the start-up allowance ran out before the first batch was asked for")
            if led.window_start is not None and led.end_due is None and self.unit == "seconds":
                if now - led.window_start >= self.budget:
                    led.end_due = led.window_start + self.budget
            if led.end_due is not None and led.weights_at is None and not led.failed and led.batches:
                limit = self.handover_limit()
                if now > led.end_due + limit:
                    problem = (
                        f"the model was not handed over within {limit:.1f} s of the end of its budget: "
                        "training after the budget does not count"
                    )
                    if problem not in led.problems:
                        led.problems.append(problem)
                    return problem
            if led.problems:
                return led.problems[0]
        return None

    def handover_limit(self) -> float:
        """Seconds after the budget's end by which the weights must have arrived."""
        led = self.ledger
        # the first gap is the prefetch right behind the first batch, not a batch's time
        gaps = sorted(b - a for a, b in zip(self._asked[1:], self._asked[2:], strict=False))
        if gaps:
            batch = gaps[len(gaps) // 2]
        else:  # too few batches to tell: the whole window so far, a generous guess
            batch = (led.end_due or time.monotonic()) - (led.window_start or self._started)
        fixed = HANDOVER_FIXED_TOKENS if self.unit == "tokens" else HANDOVER_FIXED
        return fixed + HANDOVER_BATCHES * batch + led.weight_bytes / HANDOVER_RATE

    # ------------------------------------------------------------------ the window
    def _open_window(self, why: str = "") -> None:
        led = self.ledger
        if led.window_start is not None:
            return
        if self.on_window is not None:
            try:
                self.on_window()
            except Exception as exc:  # the snapshot is ours; a failure must not cost the run
                led.problems.append(f"harness: the compile-cache snapshot failed: {exc}")
        led.window_start = time.monotonic()

    def _spent(self, index: int, now: float) -> float:
        led = self.ledger
        if self.unit == "tokens":
            return index * (led.batch_size or 0) * self.seq_len * (led.world_size or 1)
        return now - (led.window_start or now)

    def _over(self, index: int, now: float) -> bool:
        """Whether batch `index` (of this rank) is past the budget: under a time budget, the window is
        spent; under a token budget, the step it starts would take the tokens over the budget."""
        if self.unit == "tokens":
            accum = self.ledger.accum or 1
            return index % accum == 0 and self._spent(index + accum, now) > self.budget
        return self._spent(index, now) >= self.budget

    def _serve(self, rank: int) -> tuple[dict, bytes]:
        with self._lock:
            led = self.ledger
            # Other ranks get no data before rank 0's graph is in: it traces the model while they
            # are ready, and nothing traced may have seen data. The clock still opens at the
            # allowance (tick), so a slow trace costs training time, not fairness.
            while rank != 0 and led.graph_at is None and not self._closing:
                self._lock.wait(timeout=0.5)
            self._open_window()
            index = led.batches.get(rank, 0)
            now = time.monotonic()
            if led.end_index is None and self._over(index, now):
                # Seconds: the step in progress is finished. Tokens: a step is served only if all of
                # it fits in the budget (a batch of any size is never a way past it).
                led.end_index = index if self.unit == "tokens" else math.ceil(index / led.accum) * led.accum
                if led.end_due is None:
                    led.end_due = now if self.unit == "tokens" else min(now, led.window_start + self.budget)
            if led.end_index is not None and index >= led.end_index:
                if rank == 0 and led.end_sent is None:
                    led.end_sent = now
                seconds = (led.end_sent or now) - led.window_start
                return {
                    "kind": P.END,
                    "reason": "budget spent",
                    "seconds": seconds,
                    "tokens": led.tokens,
                }, b""
            if index not in self._progress:
                spent = self._spent(index, now)
                self._progress[index] = (min(1.0, spent / self.budget), now - led.window_start, led.tokens)
                # Kept until every rank is past it: a rank not served yet is at batch 0 (counting
                # only the ranks seen so far dropped the entry a late rank was about to read).
                slowest = min(led.batches.get(r, 0) for r in range(led.world_size or 1))
                for old in [i for i in self._progress if i < slowest - 2]:
                    del self._progress[old]
            progress, seconds, tokens = self._progress[index]
            led.batches[rank] = index + 1
            if rank == 0:
                self._asked.append(now)
            led.tokens += (led.batch_size or 0) * self.seq_len
            loader = self._loaders[rank]
        rows = loader.next_rows()
        header = {"kind": P.BATCH, "index": index, "progress": progress, "seconds": seconds, "tokens": tokens}
        return header, rows.tobytes()

    # ------------------------------------------------------------------ connections
    def _accept(self) -> None:
        while not self._closing:
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(None)
            thread = threading.Thread(target=self._talk, args=(conn,), name="evolve-data-conn", daemon=True)
            thread.start()
            self._threads.append(thread)

    def _violation(self, message: str) -> None:
        with self._lock:
            if message not in self.ledger.problems:
                self.ledger.problems.append(message)

    def _hello(self, header: dict) -> int:
        fields = {k: header.get(k) for k in ("rank", "world_size", "batch_size", "accum", "seq_len")}
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in fields.values()):
            raise P.ProtocolError(f"bad hello {fields}")
        rank, world = fields["rank"], fields["world_size"]
        if world != self.expected_world or not 0 <= rank < world:
            raise P.ProtocolError(
                f"rank {rank} of {world} connected; the run has {self.expected_world} processes"
            )
        if (
            fields["seq_len"] != self.seq_len
            or not 1 <= fields["batch_size"] <= 1 << 16
            or not 1 <= fields["accum"] <= 1 << 16
        ):
            raise P.ProtocolError(f"bad hello {fields}")
        with self._lock:
            led = self.ledger
            if rank in self._loaders:
                raise P.ProtocolError(f"rank {rank} connected twice")
            if led.batch_size is not None and (led.batch_size, led.accum) != (
                fields["batch_size"],
                fields["accum"],
            ):
                raise P.ProtocolError(
                    f"rank {rank} asks for batches of {fields['batch_size']} x{fields['accum']}, "
                    f"another rank for {led.batch_size} x{led.accum}"
                )
            led.world_size, led.batch_size, led.accum, led.seq_len = (
                world,
                fields["batch_size"],
                fields["accum"],
                self.seq_len,
            )
            if self._split is None:
                self._split = open_split(self.data_dir, "train")
            self._loaders[rank] = DataLoader(
                self._split.tokens, self._split.offsets, led.batch_size, self.seq_len,
                seed=self.seed, rank=rank, world_size=world,
            )  # fmt: skip
        return rank

    def _receive(self, conn: socket.socket, header: dict, name: str, limit: int) -> Path:
        size = header["size"]
        if size > limit:
            raise P.ProtocolError(f"{name} of {size} bytes is over the limit of {limit}")
        path = self.artifact_dir / f"{name}.bin"
        with open(path, "wb") as f:
            P.copy_payload(conn, size, f.write)
        return path

    def _talk(self, conn: socket.socket) -> None:
        rank = None
        try:
            with conn:
                header = P.recv_header(conn)
                if header["kind"] != P.HELLO:
                    raise P.ProtocolError(f"expected hello, got {header['kind']}")
                rank = self._hello(header)
                while True:
                    try:
                        header = P.recv_header(conn)
                    except EOFError:
                        return
                    kind = header["kind"]
                    if kind == P.NEXT:
                        if header["size"]:
                            raise P.ProtocolError("next carries no payload")
                        reply, payload = self._serve(rank)
                        P.send(conn, reply.pop("kind"), payload, **reply)
                    elif kind == P.GRAPH and rank == 0:
                        with self._lock:
                            # a window the allowance opened (a slow start-up) still takes the graph:
                            # the lateness cost training time; nothing traced has seen a batch
                            if self.ledger.graph_at is not None or self.ledger.batches:
                                raise P.ProtocolError("the graph must come once, before the first batch")
                        path = self._receive(conn, header, "graph", GRAPH_LIMIT)
                        expected = weight_bytes(path)
                        with self._lock:
                            self.ledger.graph_at = time.monotonic()
                            self.ledger.weight_bytes = expected
                            self._lock.notify_all()
                        if self.on_graph is not None:
                            self.on_graph(path)
                    elif kind == P.WEIGHTS and rank == 0:
                        with self._lock:
                            if self.ledger.end_sent is None or self.ledger.weights_at is not None:
                                raise P.ProtocolError("the weights must come once, after the stream ended")
                        declared = self.ledger.weight_bytes or 0
                        self._receive(conn, header, "weights", min(WEIGHTS_LIMIT, declared + WEIGHTS_SLACK))
                        with self._lock:
                            self.ledger.weights_at = time.monotonic()
                    elif kind in (P.DENIED, P.FAILED):
                        message = str(header.get("message", ""))[:2000]
                        P.recv_payload(conn, min(header["size"], 1 << 20))
                        with self._lock:
                            (self.ledger.denied if kind == P.DENIED else self.ledger.failed).append(message)
                    else:
                        raise P.ProtocolError(f"unexpected {kind!r} from rank {rank}")
        except (P.ProtocolError, ValueError) as exc:
            self._violation(f"the training process broke the data protocol: {exc}")
        except (EOFError, OSError):
            return  # the process went away; what it did not hand over is judged as missing
        except Exception as exc:  # ours: record, never raise into the controller
            self._violation(f"harness: the data server failed: {type(exc).__name__}: {exc}")
