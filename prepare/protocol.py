"""The wire format between a training run and the harness that serves it data.

A message is a 4-byte big-endian header length, a JSON header (an object with at least `kind`),
then `size` bytes of payload when the header names a `size`. The training process speaks it
through `prepare.stream` (the loader); the trainer's data server (`trainer.dataserver`) answers.
Both ends treat the other as untrusted: sizes are capped and a malformed message ends the talk.
"""

from __future__ import annotations

import json
import socket
import struct
from collections.abc import Callable

HEADER_LIMIT = 1 << 16  # bytes of JSON header

# client -> server
HELLO = "hello"  # {rank, world_size, batch_size, accum, seq_len}
NEXT = "next"  # ask for the next training batch
GRAPH = "graph"  # payload: the scored model's graph (prepare.artifact), rank 0, before the first batch
WEIGHTS = "weights"  # payload: the scored model's tensors, rank 0, right after the data ended
DENIED = "denied"  # {message}: the in-process tripwire refused something
FAILED = "failed"  # {message}: the model could not be handed over (e.g. it does not export)
# server -> client
BATCH = "batch"  # {index, progress, seconds, tokens}; payload: uint16 rows (batch, seq_len + 1)
END = "end"  # {reason, seconds, tokens}: the budget is spent; no more data
ERROR = "error"  # {message}: the request was refused


class ProtocolError(Exception):
    """The other end sent something this protocol does not allow."""


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = sock.recv_into(view[got:], n - got)
        if k == 0:
            raise EOFError("connection closed")
        got += k
    return bytes(buf)


def send(sock: socket.socket, kind: str, payload: bytes | memoryview = b"", **fields) -> None:
    """Send one message; `payload` (if any) follows the header."""
    header = {"kind": kind, **fields}
    if payload:
        header["size"] = len(payload)
    raw = json.dumps(header, separators=(",", ":")).encode()
    if len(raw) > HEADER_LIMIT:
        raise ProtocolError(f"header of {len(raw)} bytes is over the limit")
    sock.sendall(struct.pack(">I", len(raw)) + raw)
    if payload:
        sock.sendall(payload)


def recv_header(sock: socket.socket) -> dict:
    """The next message's header; its payload (header['size'] bytes) is still to be read."""
    (n,) = struct.unpack(">I", _recv_exact(sock, 4))
    if n > HEADER_LIMIT:
        raise ProtocolError(f"header of {n} bytes is over the limit")
    try:
        header = json.loads(_recv_exact(sock, n))
    except ValueError as exc:
        raise ProtocolError(f"header is not JSON: {exc}") from None
    if not isinstance(header, dict) or not isinstance(header.get("kind"), str):
        raise ProtocolError("header is not an object with a kind")
    size = header.get("size", 0)
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise ProtocolError(f"bad payload size {size!r}")
    header["size"] = size
    return header


def recv_payload(sock: socket.socket, size: int) -> bytes:
    return _recv_exact(sock, size) if size else b""


def copy_payload(
    sock: socket.socket, size: int, write: Callable[[bytes], object], chunk: int = 1 << 22
) -> None:
    """Stream `size` payload bytes to `write` in chunks (large payloads never sit in memory whole)."""
    left = size
    while left:
        part = sock.recv(min(chunk, left))
        if not part:
            raise EOFError("connection closed inside a payload")
        write(part)
        left -= len(part)
