"""`evolve serve`: the live, read-only web view of a workspace (analysis.web), served by uvicorn."""

from __future__ import annotations

import ipaddress
import socket
import sys
from pathlib import Path

import click

from evolve.errors import EvolveError

WEB_EXTRA = "pip install 'autoevolve[web]'"


def is_loopback(host: str) -> bool:
    """True for localhost and loopback addresses (127.0.0.0/8, ::1); names other than localhost are not."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def url_of(host: str, port: int) -> str:
    h = host.strip("[]")
    shown = "127.0.0.1" if h in ("0.0.0.0", "") else f"[{h}]" if ":" in h else h
    return f"http://{shown}:{port}/"


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on (host, port); port 0 takes a free one. Errors are one line."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host.strip("[]"), port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, kind, proto)
    except (OSError, UnicodeError) as exc:
        raise EvolveError(f"cannot listen on {host!r}: {exc}") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        hint = "; pick another with --port" if exc.errno in (98, 48) else ""
        raise EvolveError(f"cannot listen on {host}:{port}: {exc.strerror or exc}{hint}") from None
    sock.set_inheritable(True)
    return sock


@click.command("serve")
@click.option(
    "--workspace",
    "-w",
    default=".",
    type=click.Path(file_okay=False, path_type=Path),
    help="Workspace directory (default: the current one, or the nearest above it).",
)
@click.option("--port", default=8765, show_default=True, type=click.IntRange(0, 65535),
              help="TCP port; 0 takes a free one (the URL is printed).")  # fmt: skip
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on. Anything but a loopback address needs --allow-remote.")  # fmt: skip
@click.option(
    "--allow-remote",
    is_flag=True,
    help="Listen on a non-loopback --host. The view has no login and no TLS: anyone who reaches the "
    "port can read the run. An SSH tunnel keeps it private instead.",
)
def serve_cmd(workspace: Path, port: int, host: str, allow_remote: bool) -> None:
    """A live web view of the run in a workspace: overview, progress, lineage tree, transfer, operators.

    \b
    It only reads: the store through read-only SQLite connections (no lock that could slow
    `evolve run` down) and the git repository's objects, so it is safe to start, stop and reload
    beside a running evolution, and it follows the run as it goes (server-sent events). Pages:
      /            the run at a glance: devices, experiments per hour, best, noise floor, LLM spend, events
      /progress    every experiment and the running best
      /tree        the family tree; click an individual for its diffs, seeds, curve, log and LLM calls
      /transfer    the verdicts of `evolve validate`
      /operators   what each operator made, and its current chance of being drawn
    From another machine, tunnel it:  ssh -L 8765:127.0.0.1:8765 HOST, then open http://127.0.0.1:8765/
    """
    try:
        import uvicorn

        from .web import create_app
    except ImportError as exc:
        raise EvolveError(f"evolve serve needs the web extra ({exc.name} is missing): {WEB_EXTRA}") from None
    local = is_loopback(host)
    if not local and not allow_remote:
        raise EvolveError(
            f"--host {host} would serve the run to the network (no login, no TLS); add --allow-remote "
            f"if you mean it, or keep 127.0.0.1 and tunnel: ssh -L {port or 8765}:127.0.0.1:{port or 8765} HOST"
        )
    app = create_app(workspace, allowed_hosts=["127.0.0.1", "localhost", "::1", "[::1]"] if local else ["*"])
    sock = bind(host, port)
    bound = sock.getsockname()[1]
    if not local:
        click.echo(
            f"warning: listening on {host}:{bound}: anyone who can reach this port can read the run "
            "(no login, no TLS); an SSH tunnel to 127.0.0.1 keeps it private",
            err=True,
        )
    click.echo(f"serving {app.state.view.root} at {url_of(host, bound)} (read-only; Ctrl-C stops)")
    sys.stdout.flush()
    config = uvicorn.Config(
        app, log_level="warning", access_log=False, lifespan="off", timeout_graceful_shutdown=1,
        server_header=False,
    )  # fmt: skip
    uvicorn.Server(config).run(sockets=[sock])
