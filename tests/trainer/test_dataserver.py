"""The harness's clock: the data server opens the window, ends the stream at a step boundary, and times the handover."""

from __future__ import annotations

import socket
import threading
import time

import numpy as np
import pytest
import torch

from prepare import protocol as P
from trainer.dataserver import DataServer


def _server(tmp_path, tiny_data, **kw) -> DataServer:
    kw.setdefault("budget", 4 * 2 * 256)  # four batches of 2 rows of 256 tokens
    kw.setdefault("unit", "tokens")
    kw.setdefault("startup", 30.0)
    kw.setdefault("expected_world", 1)
    art = tmp_path / "artifact"
    art.mkdir(exist_ok=True)
    return DataServer(
        tmp_path / "s.sock", data_dir=tiny_data, seq_len=256, seed=1, artifact_dir=art, **kw
    ).start()


class Client:
    def __init__(self, server: DataServer, rank=0, world=1, batch=2, accum=1):
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.connect(str(server.path))
        P.send(self.sock, P.HELLO, rank=rank, world_size=world, batch_size=batch, accum=accum, seq_len=256)

    def next(self) -> tuple[dict, bytes]:
        P.send(self.sock, P.NEXT)
        header = P.recv_header(self.sock)
        return header, P.recv_payload(self.sock, header["size"])

    def until_end(self) -> list[dict]:
        got = []
        while True:
            header, _ = self.next()
            got.append(header)
            if header["kind"] == P.END:
                return got


def test_a_token_budget_ends_after_exactly_its_batches(tmp_path, tiny_data):
    server = _server(tmp_path, tiny_data)
    try:
        client = Client(server)
        got = client.until_end()
        header, payload = client.next()  # asking again: still the end
    finally:
        server.close()
    assert [h["kind"] for h in got] == [P.BATCH] * 4 + [P.END]
    assert [h["progress"] for h in got[:4]] == [0.0, 0.25, 0.5, 0.75]
    assert header["kind"] == P.END and payload == b""
    led = server.ledger
    assert led.tokens == 2048 and led.steps == 4 and led.training_seconds >= 0


def test_batches_are_the_seeded_training_rows(tmp_path, tiny_data):
    from prepare.contract import run_config
    from prepare.dataloader import make_loader

    server = _server(tmp_path, tiny_data)
    try:
        header, payload = Client(server).next()
    finally:
        server.close()
    rows = np.frombuffer(payload, dtype="<u2").reshape(2, 257)
    import os

    os.environ["EVOLVE_DATA"], os.environ["EVOLVE_PROFILE"], os.environ["EVOLVE_SEED"] = (
        str(tiny_data),
        "tiny",
        "1",
    )
    try:
        expected = make_loader("train", batch_size=2, cfg=run_config(), device="cpu").next_rows()
    finally:
        for name in ("EVOLVE_DATA", "EVOLVE_PROFILE", "EVOLVE_SEED"):
            os.environ.pop(name)
    assert np.array_equal(rows, expected)


def test_the_stream_ends_at_an_optimizer_step_boundary_within_the_token_budget(tmp_path, tiny_data):
    # 5 batches' worth of tokens with 2 batches a step: the stream ends after 4 (the 2 whole steps
    # that fit; a third would take the run to 6 batches' worth, over its budget)
    server = _server(tmp_path, tiny_data, budget=5 * 512)
    try:
        got = Client(server, accum=2).until_end()
    finally:
        server.close()
    assert sum(h["kind"] == P.BATCH for h in got) == 4 and server.ledger.steps == 2
    assert server.ledger.tokens <= 5 * 512


@pytest.mark.parametrize("batch, accum", [(8192, 1), (2, 256)])
def test_no_batch_size_or_accumulation_takes_a_run_past_its_token_budget(tmp_path, tiny_data, batch, accum):
    # An attack seen in review: one batch of 8192 rows (32x the budget) was served whole, since the
    # budget was only checked before a batch; a long accumulation overshot it to the step's end.
    server = _server(tmp_path, tiny_data, budget=65536)
    try:
        got = Client(server, batch=batch, accum=accum).until_end()
    finally:
        server.close()
    assert [h["kind"] for h in got] == [P.END]  # a step bigger than the whole budget gets nothing
    assert server.ledger.tokens == 0 and not server.ledger.problems


def test_ranks_stop_at_the_same_batch_and_see_the_same_progress(tmp_path, tiny_data):
    server = _server(tmp_path, tiny_data, budget=6 * 2 * 256 * 2, expected_world=2)
    results: dict[int, list[dict]] = {}
    try:
        server.ledger.graph_at = time.monotonic()  # rank 1 waits for rank 0's graph otherwise
        clients = {r: Client(server, rank=r, world=2) for r in (0, 1)}
        threads = [
            threading.Thread(target=lambda r=r: results.__setitem__(r, clients[r].until_end()))
            for r in (0, 1)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    finally:
        server.close()
    # a late rank's first batch once failed the server (KeyError: its progress entry was dropped)
    assert not server.ledger.problems and set(results) == {0, 1}, server.ledger.problems
    batches = {r: [h for h in got if h["kind"] == P.BATCH] for r, got in results.items()}
    assert len(batches[0]) == len(batches[1]) == 6
    assert [h["progress"] for h in batches[0]] == [h["progress"] for h in batches[1]]


def test_a_seconds_budget_is_the_server_clock_from_the_first_batch(tmp_path, tiny_data):
    server = _server(tmp_path, tiny_data, budget=0.5, unit="seconds")
    try:
        time.sleep(0.6)  # start-up before the first batch is not charged
        client = Client(server)
        first, _ = client.next()
        time.sleep(0.6)
        last = client.until_end()
    finally:
        server.close()
    assert first["progress"] < 0.01 and first["seconds"] < 0.01
    assert [h["kind"] for h in last] == [P.END] and 0.5 <= last[0]["seconds"] < 1.0


def test_the_window_opens_when_the_startup_allowance_runs_out(tmp_path, tiny_data):
    server = _server(tmp_path, tiny_data, budget=0.3, unit="seconds", startup=0.2)
    try:
        time.sleep(0.3)
        assert server.tick() is None and server.ledger.window_start is not None
        time.sleep(0.4)
        header, _ = Client(server).next()  # compiling late cost it the whole budget
    finally:
        server.close()
    assert header["kind"] == P.END


def test_weights_long_after_the_budget_are_training_after_it(tmp_path, tiny_data):
    server = _server(tmp_path, tiny_data, budget=2 * 256 * 2)
    try:
        client = Client(server)
        client.until_end()
        assert server.tick() is None
        server.ledger.end_due -= server.handover_limit() + 1  # as if the weights were that late
        reason = server.tick()
    finally:
        server.close()
    assert "not handed over within" in reason and reason in server.ledger.problems


@pytest.mark.parametrize(
    ("hello", "problem"),
    [
        (dict(rank=0, world_size=3, batch_size=2, accum=1, seq_len=256), "the run has 1 processes"),
        (dict(rank=0, world_size=1, batch_size=2, accum=1, seq_len=64), "bad hello"),
        (dict(rank="0", world_size=1, batch_size=2, accum=1, seq_len=256), "bad hello"),
    ],
)
def test_a_bad_hello_is_a_protocol_violation(tmp_path, tiny_data, hello, problem):
    server = _server(tmp_path, tiny_data)
    try:
        sock = socket.socket(socket.AF_UNIX)
        sock.connect(str(server.path))
        P.send(sock, P.HELLO, **hello)
        with pytest.raises((EOFError, ConnectionError)):
            P.recv_header(sock)  # the server hung up
    finally:
        server.close()
    assert any(problem in p for p in server.ledger.problems), server.ledger.problems


def test_weights_before_the_end_and_oversized_graphs_are_refused(tmp_path, tiny_data, monkeypatch):
    import trainer.dataserver as ds

    server = _server(tmp_path, tiny_data)
    try:
        client = Client(server)
        P.send(client.sock, P.WEIGHTS, b"x" * 10)
        with pytest.raises((EOFError, ConnectionError)):
            P.recv_header(client.sock)
    finally:
        server.close()
    assert any("after the stream ended" in p for p in server.ledger.problems)

    monkeypatch.setattr(ds, "GRAPH_LIMIT", 16)
    (tmp_path / "2").mkdir()
    server = _server(tmp_path / "2", tiny_data)
    try:
        client = Client(server)
        P.send(client.sock, P.GRAPH, b"x" * 17)
        with pytest.raises((EOFError, ConnectionError)):
            P.recv_header(client.sock)
    finally:
        server.close()
    assert any("over the limit" in p for p in server.ledger.problems)


def _graph() -> bytes:
    from prepare.artifact import export_graph

    return export_graph(torch.nn.Embedding(1024, 8), seq_len=256, vocab=1024, batch_size=2).graph


def _wait(predicate, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.02)
    return predicate()


def test_a_slow_start_up_still_hands_its_graph_over_and_loses_only_training_time(tmp_path, tiny_data):
    server = _server(tmp_path, tiny_data, budget=0.3, unit="seconds", startup=0.1)
    try:
        client = Client(server)
        time.sleep(0.2)
        assert server.tick() is None and server.ledger.window_start is not None  # the allowance ran out
        P.send(client.sock, P.GRAPH, _graph())  # the trace was slow: no batch was served yet
        assert _wait(lambda: server.ledger.graph_at is not None)
        assert not server.ledger.problems
    finally:
        server.close()


def test_a_graph_after_the_first_batch_breaks_the_protocol(tmp_path, tiny_data):
    server = _server(tmp_path, tiny_data)
    try:
        client = Client(server)
        client.next()  # a batch before any graph
        try:
            P.send(client.sock, P.GRAPH, _graph())
        except BrokenPipeError:  # the server hung up on it, before the payload was all read
            pass
        assert _wait(lambda: bool(server.ledger.problems))
    finally:
        server.close()
    assert server.ledger.graph_at is None
    assert any("the graph must come once, before the first batch" in p for p in server.ledger.problems)


def test_weights_bigger_than_the_graph_declared_are_refused_before_they_fill_the_disk(tmp_path, tiny_data):
    # Seen in review: the weights were read up to 128 GiB onto the host's disk whatever the graph said.
    from trainer.dataserver import WEIGHTS_SLACK

    server = _server(tmp_path, tiny_data)
    try:
        client = Client(server)
        P.send(client.sock, P.GRAPH, _graph())
        assert _wait(lambda: server.ledger.graph_at is not None)
        declared = server.ledger.weight_bytes
        assert declared == 1024 * 8 * 4  # the embedding's float32 weights
        client.until_end()
        try:
            P.send(client.sock, P.WEIGHTS, b"\0" * (declared + WEIGHTS_SLACK + 1))
        except BrokenPipeError:  # the server hung up on it after the header, before the payload
            pass
        assert _wait(lambda: bool(server.ledger.problems))
    finally:
        server.close()
    assert server.ledger.weights_at is None
    assert any("weights of" in p and "over the limit" in p for p in server.ledger.problems)
    assert not (tmp_path / "artifact" / "weights.bin").exists()
