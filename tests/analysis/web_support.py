"""Helpers of the web view's tests: a real `evolve serve` subprocess, raw HTTP requests, Chromium."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"]  # fmt: skip
PAGES = ("/", "/progress", "/tree", "/transfer", "/operators")


def evolve_cmd(*args: str) -> list[str]:
    return [sys.executable, "-c", "from autoevolve.cli import main; main()", *args]


@dataclass
class Server:
    url: str
    proc: subprocess.Popen
    stderr: list[str]

    @property
    def port(self) -> int:
        return int(urlsplit(self.url).port or 80)


@contextmanager
def serve(
    workspace: Path, *extra: str, env: dict[str, str] | None = None, timeout: float = 60
) -> Iterator[Server]:
    """`evolve serve -w WORKSPACE --port 0` until the block ends; yields its URL once it listens."""
    proc = subprocess.Popen(
        evolve_cmd("serve", "-w", str(workspace), "--port", "0", *extra),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    lines: queue.Queue[str] = queue.Queue()
    errors: list[str] = []
    threading.Thread(target=lambda: [lines.put(x) for x in proc.stdout], daemon=True).start()
    threading.Thread(target=lambda: [errors.append(x) for x in proc.stderr], daemon=True).start()
    try:
        first = lines.get(timeout=timeout)
    except queue.Empty:
        proc.kill()
        raise AssertionError(
            f"evolve serve printed nothing in {timeout} s: {''.join(errors)[-2000:]}"
        ) from None
    assert first.startswith("serving "), first + "".join(errors)
    url = first.split(" at ", 1)[1].split(" ", 1)[0]
    try:
        yield Server(url, proc, errors)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise AssertionError("evolve serve did not stop within 20 s of Ctrl-C") from None


def request(
    server: Server, path: str, *, method: str = "GET", headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    """One raw HTTP request (the path is sent exactly as given, `..` and %-escapes included)."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    try:
        conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        sent = {"Host": f"127.0.0.1:{server.port}", **(headers or {})}
        for k, v in sent.items():
            conn.putheader(k, v)
        conn.endheaders()
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def get_json(server: Server, path: str) -> dict:
    status, headers, body = request(server, path)
    assert status == 200, (path, status, body[:500])
    assert headers["content-type"].startswith("application/json")
    return json.loads(body)


def digest(*paths: Path) -> dict[str, str]:
    """sha256 of every file under `paths` (a file or a folder), by path."""
    out = {}
    for root in paths:
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for p in files:
            out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


needs_chromium = pytest.mark.skipif(
    CHROMIUM is None and not os.environ.get("CI"),
    reason="Chromium is not installed (apt-get install -y chromium); in CI it must be",
)


@pytest.fixture(scope="module")
def browser():
    """A headless Chromium driven by Playwright (its own browser download is not used)."""
    if CHROMIUM is None:
        pytest.fail("CI must have Chromium for the web view's browser tests (.ci/run installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        try:
            yield b
        finally:
            b.close()


class PageErrors(list):
    """Errors a page's scripts threw or logged (a test asserts there are none)."""

    def watch(self, page) -> None:
        page.on("pageerror", lambda exc: self.append(f"pageerror: {exc}"))
        page.on("console", lambda m: self.append(f"console: {m.text}") if m.type == "error" else None)
