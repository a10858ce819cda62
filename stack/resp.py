"""One command to a local Valkey node or Sentinel over a socket of its own, in RESP2:
what the stack's helpers use to form a cluster, watch a failover or read a role,
without a client library between them and the server."""

from __future__ import annotations

import socket
from typing import Any, BinaryIO

from stack.process import HOST, StackError


class ReplyError(StackError):
    """A server answered a command with an error."""


def encode(*parts: object) -> bytes:
    """A command as RESP: an array of bulk strings."""
    out = [b"*%d\r\n" % len(parts)]
    for part in parts:
        data = part if isinstance(part, bytes) else str(part).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


def read(reader: BinaryIO) -> Any:
    """One reply: text, an int, None, or a list of them; an error reply raises."""
    line = reader.readline()
    if not line.endswith(b"\r\n"):
        raise ConnectionError("connection closed")
    kind, rest = line[:1], line[1:-2].decode(errors="replace")
    if kind in (b"$", b"*") and int(rest) < 0:
        return None
    if kind == b"$":
        return reader.read(int(rest) + 2)[:-2].decode(errors="replace")
    if kind == b"*":
        return [read(reader) for _ in range(int(rest))]
    if kind == b"-":
        raise ReplyError(rest)
    if kind == b":":
        return int(rest)
    if kind == b"+":
        return rest
    raise ConnectionError(f"unexpected reply {line[:80]!r}")


def command(port: int, *args: object, timeout: float = 2.0) -> Any:
    """One command to the server on `port` (as its default user); its decoded reply."""
    with socket.create_connection((HOST, port), timeout=timeout) as sock:
        sock.sendall(encode(*args))
        with sock.makefile("rb") as reader:
            return read(reader)
