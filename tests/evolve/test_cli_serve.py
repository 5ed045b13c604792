"""`evolve serve`: loopback by default, another host only with --allow-remote and a warning, one-line errors."""

from __future__ import annotations

import http.client
import socket
import subprocess
import sys

import pytest
from click.testing import CliRunner

from analysis.cli_serve import is_loopback, url_of
from autoevolve.cli import main
from genome.workspace import init_workspace


def evolve(*args: str):
    """The command in this process (click's runner): the error paths never start a server."""
    return CliRunner().invoke(main, list(args))


@pytest.fixture
def workspace(tmp_path):
    return init_workspace(tmp_path / "ws", run="s1", profile="tiny").root


def _one_line_error(result) -> str:
    assert result.exit_code == 1, result.output
    assert result.stderr.startswith("error: ") and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and result.stdout == ""
    return result.stderr


def test_a_host_other_than_loopback_needs_the_flag(workspace):
    err = _one_line_error(evolve("serve", "-w", str(workspace), "--host", "0.0.0.0"))
    assert "--allow-remote" in err and "ssh -L 8765:127.0.0.1:8765" in err


def test_with_the_flag_it_warns_and_answers_any_host_name(workspace):
    proc = subprocess.Popen(
        [sys.executable, "-c", "from autoevolve.cli import main; main()", "serve", "-w", str(workspace),
         "--host", "0.0.0.0", "--port", "0", "--allow-remote"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        line = proc.stdout.readline()
        assert line.startswith(f"serving {workspace} at http://127.0.0.1:"), line
        warning = proc.stderr.readline()
        assert warning.startswith("warning: listening on 0.0.0.0:") and "anyone who can reach" in warning
        port = int(line.split("http://127.0.0.1:")[1].split("/")[0])
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("GET", "/api/state", headers={"Host": "my-box.example:8765"})
        assert conn.getresponse().status == 200
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_a_port_in_use_is_a_one_line_error(workspace):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        err = _one_line_error(evolve("serve", "-w", str(workspace), "--port", str(port)))
    assert f"cannot listen on 127.0.0.1:{port}" in err and "--port" in err


def test_not_a_workspace_is_a_one_line_error(tmp_path):
    err = _one_line_error(evolve("serve", "-w", str(tmp_path)))
    assert "evolve init" in err or "workspace" in err


def test_help_explains_the_pages_and_the_tunnel():
    out = evolve("serve", "--help").output
    for word in ("/progress", "/tree", "/transfer", "/operators", "--allow-remote", "ssh -L", "read"):
        assert word in out


def test_loopback_and_urls():
    for host in ("127.0.0.1", "127.5.0.1", "localhost", "::1", "[::1]", "LOCALHOST"):
        assert is_loopback(host), host
    for host in ("0.0.0.0", "::", "192.168.1.2", "example.com", "10.0.0.1"):
        assert not is_loopback(host), host
    assert url_of("0.0.0.0", 80) == "http://127.0.0.1:80/" and url_of("::1", 9) == "http://[::1]:9/"
