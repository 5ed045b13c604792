"""Test helpers: a loopback HTTP server speaking the OpenAI chat-completions API with scripted answers.

The real `openai` client talks to it over 127.0.0.1. Each request takes the next scripted reply:
an answer, an HTTP error (with headers such as Retry-After), a hold (no answer until the test sets
an event: a client timeout, or calls kept in flight), a delay, a connection reset, or a body that
is not JSON. When the script runs out, `default` answers.
"""

from __future__ import annotations

import json
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

SECRET = "sk-test-SECRET0123456789abcdef"
HANG = 60.0  # seconds: a guard against a hang only (a held reply, a wait); every wait ends on an event
BIGRAM = Path(__file__).parents[1] / "evolve" / "data" / "train_bigram.py"


@dataclass
class Reply:
    """One scripted reply. `text` for a 200 answer; `status` for an error; see the module docstring."""

    text: str | None = None
    finish: str = "stop"
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: Any = None  # an error body (JSON) or, with raw=True, the literal body of a 200
    delay: float = 0.0
    hold: threading.Event | None = None  # answer only once it is set (at most HANG seconds)
    reset: bool = False
    raw: bool = False
    usage: tuple[int, int] | None = (100, 20)


def wait_until(done: Callable[[], bool], what: str, timeout: float = HANG) -> None:
    """Return once `done()`; an AssertionError naming `what` after `timeout` seconds (a hang)."""
    give_up = time.monotonic() + timeout
    while not done():
        if time.monotonic() > give_up:
            raise AssertionError(f"waited {timeout:g} s for {what}")
        time.sleep(0.005)


def answer(description: str, search: str, replace: str, rationale: str = "it should help") -> str:
    """An answer in program.md's format with one SEARCH/REPLACE block."""
    return (
        f"DESCRIPTION: {description}\nRATIONALE: {rationale}\n\n"
        f"<<<<<<< SEARCH\n{search}\n=======\n{replace}\n>>>>>>> REPLACE\n"
    )


class LLMServer:
    def __init__(self) -> None:
        self.script: list[Reply] = []
        self.default: Callable[[dict], Reply] | None = None
        self.requests: list[dict] = []  # {"body": ..., "headers": ..., "time": ...}
        self.lock = threading.Lock()
        self.in_flight = 0
        self.max_in_flight = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # keep test output quiet
                pass

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                with server.lock:
                    server.requests.append(
                        {
                            "body": body,
                            "headers": {k.lower(): v for k, v in self.headers.items()},
                            "time": time.time(),
                        }
                    )
                    reply = server.script.pop(0) if server.script else None
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    if reply is None:
                        reply = (
                            server.default(body) if server.default else Reply(status=500, body="script ended")
                        )
                    self._send(reply, body)
                finally:
                    with server.lock:
                        server.in_flight -= 1

            def _send(self, reply: Reply, body: dict) -> None:
                if reply.hold is not None:
                    reply.hold.wait(HANG)
                if reply.delay:
                    time.sleep(reply.delay)
                if reply.reset:
                    # SO_LINGER 0: close() sends a TCP RST instead of a FIN.
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self.connection.close()
                    self.close_connection = True
                    return
                if reply.status != 200:
                    data = json.dumps({"error": {"message": reply.body or "error", "type": "test"}}).encode()
                elif reply.raw:
                    data = str(reply.body).encode()
                else:
                    message = {"role": "assistant", "content": reply.text}
                    payload: dict[str, Any] = {
                        "id": f"chatcmpl-{len(server.requests)}",
                        "object": "chat.completion",
                        "created": int(time.time()),
                        "model": body.get("model", ""),
                        "choices": [{"index": 0, "message": message, "finish_reason": reply.finish}],
                    }
                    if reply.usage is not None:
                        p, c = reply.usage
                        payload["usage"] = {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}
                    data = json.dumps(payload).encode()
                try:
                    self.send_response(reply.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for k, v in reply.headers.items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (a timeout test)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def push(self, *replies: Reply) -> None:
        with self.lock:
            self.script.extend(replies)

    def bodies(self) -> list[dict]:
        return [r["body"] for r in self.requests]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


# ---------------------------------------------------------------------------------------------
# A real workspace and store, and proposal contexts built the way the engine builds them
# ---------------------------------------------------------------------------------------------
class Run:
    """A tiny-profile workspace with its store; `add` records individuals and their scores."""

    def __init__(self, root, llm: dict[str, Any]) -> None:
        from evolve.store import Store
        from genome import init_workspace

        ws = init_workspace(root, "t", profile="tiny")
        self.ws = ws.__class__(root=ws.root, settings=ws.settings.with_changes(llm=llm))
        self.repo = self.ws.repo()
        self.store = Store(self.ws.state_dir / "evolve.db")
        self.depth = self.ws.settings.depth
        self.store.add_run("t", strategy="population", profile="tiny")
        base = self.repo.baseline()
        self.store.add_individual(id=base.id, run="t", commit=base.commit, branch=base.branch,
                                  operator=base.operator, description=base.description, status="queued")  # fmt: skip
        self.score(base.id, 1.30)

    def add(self, genome, *, island: int = 0, val_bpb: float | None = None, error: str = "", status="queued"):
        from evolve.novelty import tree_hash
        from evolve.pairs import files_at

        self.store.add_individual(id=genome.id, run="t", commit=genome.commit, branch=genome.branch,
                                  parents=genome.parents, operator=genome.operator,
                                  description=genome.description, island=island, status=status,
                                  code_hash=tree_hash(files_at(self.repo, genome.commit)))  # fmt: skip
        if status == "queued":
            self.score(genome.id, val_bpb, error)
        return self.store.get(genome.id)

    def score(self, ind: str, val_bpb: float | None, error: str = "", seed: int = 42, metrics=None) -> None:
        from evolve.store import Evaluation, Status

        if self.store.get(ind).status is not Status.QUEUED:
            self.store.set_status(ind, Status.QUEUED)  # a re-evaluation
        self.store.set_status(ind, Status.RUNNING)
        self.store.record_evaluation(
            Evaluation(
                individual=ind,
                depth=self.depth,
                budget=5.0,
                seed=seed,
                profile="tiny",
                status="ok" if val_bpb is not None else "crash",
                val_bpb=val_bpb,
                metrics=dict(metrics or {}),
                device="cpu",
                error_tail=error,
                reason="exit code 1" if error else "",
            )  # fmt: skip
        )

    def setup(self):
        from evolve.operators.base import OperatorSetup

        return OperatorSetup(root=self.ws.root, state_dir=self.ws.state_dir, run="t", settings=self.ws.settings,
                             store=self.store, depth=self.depth)  # fmt: skip

    def context(self, *parent_ids: str, operator: str = "llm_mutation", elites: tuple[str, ...] = (), seed=0):
        import random

        from evolve.operators.base import Parent, ProposalContext

        scores = self.store.scores(self.depth, "t")
        parent = lambda i: Parent(self.store.get(i), scores.get(i))
        return ProposalContext(
            repo=self.repo, store=self.store, run="t", settings=self.ws.settings,
            parents=tuple(parent(i) for i in parent_ids), island=0, depth=self.depth,
            rng=random.Random(seed), noise_floor=None, elites=tuple(parent(i) for i in elites),
            report_llm=lambda **kw: self.store.add_llm_call(run="t", operator=operator, **kw),
            settle_llm=lambda call, outcome, why="": self.store.settle_llm_call(call, outcome, why),
        )  # fmt: skip


# ---------------------------------------------------------------------------------------------
# `evolve` itself, in a subprocess, on a bigram workspace
# ---------------------------------------------------------------------------------------------
def make_workspace(root: Path, search: str, prices: dict[str, list[float]], insights_every: int = 0):
    """A tiny bigram workspace (2 islands in evolve.toml) whose [llm] table has a [llm.prices] table."""
    from genome.repo import MACHINE_IDENTITY, run_git
    from genome.settings import SETTINGS_FILE, to_toml
    from genome.workspace import init_workspace

    ws = init_workspace(root / "ws", run="mix", profile="tiny", islands=2, budget=81920, train_py=BIGRAM)
    llm = {"tokenizer": "approx", "insights_every": insights_every, "timeout": 10.0, "backoff": 0.01,
           "max_backoff": 0.05, "prices": prices}  # fmt: skip
    (ws.root / SETTINGS_FILE).write_text(to_toml(ws.settings.with_changes(llm=llm)) + search)
    run_git(ws.root, "commit", "-q", "-m", "test settings", "--", SETTINGS_FILE, env=MACHINE_IDENTITY)
    return ws


def evolve(ws, env: dict[str, str], *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """`evolve ARGS[0] -w WORKSPACE ARGS[1:]` with `env` (see the `env` fixture)."""
    cmd = [str(Path(sys.executable).with_name("evolve")), args[0], "-w", str(ws.root), *args[1:]]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
