"""Fixtures of the LLM tests: the scripted loopback server and a real tiny workspace pointed at it."""

from __future__ import annotations

import os

import pytest
from loopback import SECRET, LLMServer, Run


@pytest.fixture
def llm_server(monkeypatch):
    """A running scripted server; OPENAI_* variables point at it, with a fake key."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    server = LLMServer()
    monkeypatch.setenv("OPENAI_BASE_URL", server.url)
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    monkeypatch.delenv("OPENAI_MODEL", raising=False)
    yield server
    server.close()


@pytest.fixture
def run(tmp_path, llm_server):
    """A workspace whose [llm] table points at the loopback server (fast retries, byte-count tokens)."""
    llm = {"model": "m1", "timeout": 5.0, "backoff": 0.01, "max_backoff": 0.05, "tokenizer": "approx",
           "insights_every": 0, "prices": {"m1": [1.0, 2.0]}}  # fmt: skip
    r = Run(tmp_path / "ws", llm)
    yield r
    r.store.close()


@pytest.fixture
def env(tmp_path, tiny_data, llm_server):
    """`evolve`'s environment: the endpoint comes only from the flags, the key from the variable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EVOLVE_", "OPENAI_"))}
    env.update(EVOLVE_HOME=str(tmp_path / "home"), EVOLVE_DATA=str(tiny_data), OMP_NUM_THREADS="1",
               OPENAI_API_KEY=SECRET)  # fmt: skip
    return env
