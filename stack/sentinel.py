"""``valkey-sentinel``: a Valkey primary, one replica and three Sentinels monitoring
them as service ``cache-s`` (quorum 2), for the ``sentinel`` shard kind and failover
scenarios. Started only when named (``python -m stack up valkey-sentinel``).

Ports: ``CR_STACK_VALKEY_SENTINEL_PORT`` (default 26470) and the next are the data
nodes, the three after them the Sentinels; the primary moves with failovers (ask
`primary()`). ``CR_STACK_VALKEY_SENTINEL_APPENDONLY=yes`` when a node starts turns
persistence on for it. ``up`` is idempotent and repairs: it starts what is not running
(a node as a replica of the primary the Sentinels name) and waits until they agree on
it and see the replica and each other; with nothing running it starts afresh.

Credentials: default users without a password, plus on the nodes the stack's
``admin`` and least-privileged ``reconciler`` users, on the Sentinels a ``reconciler``
user with a password of its own (secret ``valkey-sentinel-reconciler``) and only the
commands a client needs (`SENTINEL_COMMANDS`): tests prove each credential reaches
the server it is meant for.

Failovers for the tests: `failover()` (``SENTINEL FAILOVER``), `kill_primary()`
(SIGKILL: the replica promoted after ``down-after-milliseconds``), `restart_node()`,
`settle()`, and `hold_back_replica()` then `kill_primary()`: a lossy failover, the
promoted replica lacking writes the primary acknowledged (`wait_replicated()` first, so
that it lacks only those). Only the standard library.
"""

from __future__ import annotations

import hashlib
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from stack import security
from stack.process import (
    HOST,
    LOG_DIR,
    STACK_DIR,
    Service,
    StackError,
    ensure_port_free,
    log,
    pid_alive,
    port_open,
    read_pid,
    spawn,
    terminate,
    wait_for,
)
from stack.resp import ReplyError, command
from stack.valkey import server_argv, valkey_server

NAME = "valkey-sentinel"  # the service
SERVICE_NAME = "cache-s"  # the name the Sentinels monitor the primary under
PORT_VAR = "CR_STACK_VALKEY_SENTINEL_PORT"  # moves the five ports (the first; then +1…)
APPENDONLY_VAR = "CR_STACK_VALKEY_SENTINEL_APPENDONLY"  # "yes": persistence for nodes started
FIRST_PORT = int(os.environ.get(PORT_VAR, "26470"))
NODE_PORTS = (FIRST_PORT, FIRST_PORT + 1)  # node 0 starts as the primary, node 1 its replica
SENTINEL_PORTS = (FIRST_PORT + 2, FIRST_PORT + 3, FIRST_PORT + 4)
QUORUM = 2  # Sentinels that must agree the primary is down
DOWN_AFTER_MS = 2000  # no valid PING reply for this long: the primary is (s)down
FAILOVER_TIMEOUT_MS = 3000  # a stuck failover is abandoned after this; and 2x between two
FOLDER = STACK_DIR / NAME  # node<i>/ and sentinel<j>/ (data, sentinel.conf)
SENTINEL_USER = "reconciler"  # the worker's user on the Sentinels
SENTINEL_SECRET = "valkey-sentinel-reconciler"  # its password's secret (stack/security.py)
# What a client of Sentinel (valkey-py's Sentinel, the worker's doctor) sends.
SENTINEL_COMMANDS = ("ping", "sentinel|masters", "sentinel|master", "sentinel|replicas",
                     "sentinel|slaves", "sentinel|sentinels", "sentinel|get-master-addr-by-name")
TIMEOUT = 30.0  # seconds for a start, a failover, a promotion


def _fields(reply: list[Any]) -> dict[str, Any]:
    return dict(zip(reply[0::2], reply[1::2], strict=True))


# --------------------------------------------------------------------------- state


def node_name(port: int) -> str:
    return f"{NAME}-node{NODE_PORTS.index(port)}"


def sentinel_name(port: int) -> str:
    return f"{NAME}-sentinel{SENTINEL_PORTS.index(port)}"


def _alive(name: str, port: int) -> bool:
    return read_pid(name) is not None and port_open(port)


def node_running(port: int) -> bool:
    return _alive(node_name(port), port)


def masters(port: int) -> dict[str, Any]:
    """What the Sentinel on `port` says of the service (SENTINEL MASTER's fields)."""
    return _fields(command(port, "SENTINEL", "MASTER", SERVICE_NAME))


def primary() -> int:
    """The port of the primary the running Sentinels agree on (StackError if they do
    not, or none answers)."""
    seen = set()
    for port in SENTINEL_PORTS:
        try:
            answer = command(port, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE_NAME)
        except (OSError, ReplyError):
            continue
        seen.add(int(answer[1]))
    if len(seen) != 1:
        raise StackError(f"{NAME}: the Sentinels name {sorted(seen) or 'no'} primary")
    return seen.pop()


def replica() -> int:
    """The port of the other node (the replica, when both run)."""
    current = primary()
    return next(port for port in NODE_PORTS if port != current)


def role(port: int) -> str:
    """``master`` or ``slave`` (ROLE's first field), as the node itself says."""
    return str(command(port, "ROLE")[0])


def healthy() -> bool:
    """Both nodes and the three Sentinels run; every Sentinel names the same primary,
    which says it is one, sees it up, and knows the replica and the other Sentinels;
    the replica's link to the primary is up."""
    try:
        current = primary()
        other = next(port for port in NODE_PORTS if port != current)
        if role(current) != "master" or not node_running(other):
            return False
        link = command(other, "INFO", "replication")
        if f"master_port:{current}\r" not in link or "master_link_status:up" not in link:
            return False
        for port in SENTINEL_PORTS:
            state = masters(port)
            if (state["flags"] != "master" or int(state["num-slaves"]) != 1
                    or int(state["num-other-sentinels"]) != len(SENTINEL_PORTS) - 1):
                return False
            replicas = [_fields(r) for r in command(port, "SENTINEL", "REPLICAS", SERVICE_NAME)]
            if [r["flags"] for r in replicas] != ["slave"]:
                return False
    except (OSError, ReplyError, StackError, KeyError, IndexError, ValueError):
        return False
    return True


def wait_healthy(timeout: float = TIMEOUT) -> None:
    wait_for(f"{NAME} (primary, replica and Sentinels agreeing)", healthy,
             LOG_DIR / f"{NAME}-sentinel0.log", timeout=timeout)


# --------------------------------------------------------------------------- start, stop


def _digest(secret: str) -> str:
    return hashlib.sha256(security.secret(secret).encode()).hexdigest()


def _node_argv(port: int, replica_of: int | None) -> list[str]:
    folder = FOLDER / f"node{NODE_PORTS.index(port)}"
    folder.mkdir(parents=True, exist_ok=True)
    users = folder / "users.acl"
    users.write_text(
        "user default on nopass ~* &* +@all\n"
        f"user {security.VALKEY_ADMIN} on #{_digest(f'valkey-{security.VALKEY_ADMIN}')} "
        "~* &* +@all\n"
        f"{security.valkey_acl_rule(_digest(f'valkey-{security.VALKEY_USER}'))}\n")
    os.chmod(users, 0o600)
    options = ["--aclfile", str(users), "--protected-mode", "no"]
    if os.environ.get(APPENDONLY_VAR, "").lower() in ("1", "yes", "true"):
        options += ["--appendonly", "yes"]
    if replica_of is not None:
        options += ["--replicaof", HOST, str(replica_of)]
    return server_argv(port, folder, *options)


def _sentinel_conf(port: int, primary_port: int) -> Path:
    """The Sentinel's configuration file, written afresh unless it exists (a Sentinel
    rewrites it with what it learns: the primary after a failover, the others)."""
    folder = FOLDER / f"sentinel{SENTINEL_PORTS.index(port)}"
    folder.mkdir(parents=True, exist_ok=True)
    conf = folder / "sentinel.conf"
    if not conf.exists():
        commands = " ".join(f"+{name}" for name in SENTINEL_COMMANDS)
        conf.write_text(
            f"port {port}\nbind {HOST}\ndir {folder}\ndaemonize no\nprotected-mode no\n"
            f"sentinel monitor {SERVICE_NAME} {HOST} {primary_port} {QUORUM}\n"
            f"sentinel down-after-milliseconds {SERVICE_NAME} {DOWN_AFTER_MS}\n"
            f"sentinel failover-timeout {SERVICE_NAME} {FAILOVER_TIMEOUT_MS}\n"
            f"sentinel parallel-syncs {SERVICE_NAME} 1\n"
            f"user {SENTINEL_USER} on #{_digest(SENTINEL_SECRET)} resetchannels -@all "
            f"{commands}\n")
        os.chmod(conf, 0o600)
    return conf


def _spawn(name: str, port: int, argv: list[str], ready: Callable[[], bool]) -> None:
    ensure_port_free(name, port, PORT_VAR)
    pid = spawn(name, argv)
    wait_for(name, ready, LOG_DIR / f"{name}.log", timeout=TIMEOUT,
             alive=lambda: pid_alive(pid))


def _ping(port: int) -> bool:
    return bool(command(port, "PING", timeout=1) == "PONG")


def start_node(port: int) -> None:
    """Start the node on `port` (no-op if it runs): the primary if no Sentinel names
    another, else a replica of the one they name."""
    if node_running(port):
        return
    try:
        current: int | None = primary()
    except StackError:
        running = [p for p in NODE_PORTS if p != port and node_running(p)]
        current = running[0] if running else None
    replica_of = None if current in (None, port) else current
    _spawn(node_name(port), port, _node_argv(port, replica_of), partial(_ping, port))


def start() -> None:
    """Start what is not running (afresh if nothing is), then wait until healthy."""
    if running():
        log(f"{NAME} already running")
    _start_missing()
    wait_healthy()


def _start_missing() -> None:
    FOLDER.mkdir(parents=True, exist_ok=True)
    names = [node_name(p) for p in NODE_PORTS] + [sentinel_name(p) for p in SENTINEL_PORTS]
    if all(read_pid(name) is None for name in names):
        for port in SENTINEL_PORTS:  # afresh: forget what the Sentinels learnt
            (FOLDER / f"sentinel{SENTINEL_PORTS.index(port)}" / "sentinel.conf").unlink(
                missing_ok=True)
        _spawn(node_name(NODE_PORTS[0]), NODE_PORTS[0], _node_argv(NODE_PORTS[0], None),
               partial(_ping, NODE_PORTS[0]))
    for port in NODE_PORTS:
        start_node(port)
    for port in SENTINEL_PORTS:
        if not _alive(sentinel_name(port), port):
            try:
                current = primary()
            except StackError:
                current = next(p for p in NODE_PORTS if role(p) == "master")
            conf = _sentinel_conf(port, current)
            _spawn(sentinel_name(port), port, [valkey_server(), str(conf), "--sentinel"],
                   partial(_ping, port))


def settle(timeout: float = TIMEOUT) -> None:
    """Back to healthy whatever a test left behind: a hold ended, stopped processes
    started (a node as a replica), and a former primary that the Sentinels have not
    converted yet made a replica of the one they name (what they do themselves some
    10 s after ``SENTINEL FAILOVER``)."""
    release_replica()
    _start_missing()
    wait_for(f"{NAME}: the Sentinels agreeing on a primary", lambda: primary() > 0,
             LOG_DIR / f"{NAME}-sentinel0.log", timeout=timeout)
    current = primary()
    for port in NODE_PORTS:
        if port != current and role(port) == "master":
            command(port, "REPLICAOF", HOST, current)
    wait_healthy(timeout)


def stop() -> None:
    """The Sentinels first (no failover while the nodes stop), then the nodes."""
    for port in SENTINEL_PORTS:
        terminate(sentinel_name(port), timeout=15)
    for port in NODE_PORTS:
        terminate(node_name(port), timeout=15)


def running() -> bool:
    return (all(node_running(port) for port in NODE_PORTS)
            and all(_alive(sentinel_name(port), port) for port in SENTINEL_PORTS))


SERVICE = Service(NAME, start, stop, running)  # for stack.services


def sentinel_urls() -> list[str]:
    return [f"valkey://{HOST}:{port}" for port in SENTINEL_PORTS]


def endpoints() -> dict[str, object]:
    """What a client needs: the Sentinels' URLs, the service name, the users."""
    return {
        "sentinels": sentinel_urls(),
        "service": SERVICE_NAME,
        "nodes": [f"valkey://{HOST}:{port}/0" for port in NODE_PORTS],
        "sentinel_user": SENTINEL_USER,
        "sentinel_password_file": str(security.secret_file(SENTINEL_SECRET)),
    }


# --------------------------------------------------------------------------- failovers


@dataclass(frozen=True)
class Failover:
    """One failover, as the Sentinels saw it."""

    old: int  # the port of the primary before
    new: int  # the port of the primary after
    seconds: float  # from the helper's action to the Sentinels agreeing on `new`


def wait_primary(other_than: int, timeout: float = TIMEOUT) -> int:
    """Wait until the Sentinels agree on a primary other than `other_than` that says it
    is one; its port."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            current = primary()
            if current != other_than and role(current) == "master":
                return current
        except (OSError, StackError):
            pass
        time.sleep(0.05)
    raise StackError(f"{NAME}: no new primary {timeout:.0f}s after {other_than} "
                     f"(see {LOG_DIR}/{NAME}-sentinel*.log)")


def failover(timeout: float = TIMEOUT) -> Failover:
    """``SENTINEL FAILOVER cache-s``, once the service is healthy: a clean failover (the
    old primary, demoted, goes on answering as one until the Sentinels convert it)."""
    wait_healthy(timeout)
    old = primary()
    started = time.monotonic()
    command(SENTINEL_PORTS[0], "SENTINEL", "FAILOVER", SERVICE_NAME)
    new = wait_primary(old, timeout)
    return Failover(old, new, time.monotonic() - started)


def kill_primary(timeout: float = TIMEOUT, *, wait: bool = True) -> Failover:
    """SIGKILL the primary (an unclean failover): the Sentinels see it down after
    DOWN_AFTER_MS and promote the replica. A replica held back by `hold_back_replica`
    is released only once its link to the dead primary is down, which drops what it
    held back, so it is promoted without those writes. `wait=False` returns at once
    (new = old)."""
    old = primary()
    other = next(port for port in NODE_PORTS if port != old)
    started = time.monotonic()
    terminate(node_name(old), timeout=5, sig=signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while "master_link_status:down" not in command(other, "INFO", "replication"):
        if time.monotonic() > deadline:
            raise StackError(f"{NAME}: node {other} still linked to {old} after the kill")
        time.sleep(0.02)
    command(other, "CLIENT", "UNPAUSE")  # a no-op unless held back
    if not wait:
        return Failover(old, old, 0.0)
    new = wait_primary(old, timeout)
    return Failover(old, new, time.monotonic() - started)


def restart_node(port: int, timeout: float = TIMEOUT) -> None:
    """Start the stopped node on `port` again: it rejoins as a replica of the primary
    the Sentinels name (its own writes, if any, replaced by a full resync), and the
    service is waited for until healthy."""
    start_node(port)
    wait_healthy(timeout)


def wait_replicated(timeout: float = TIMEOUT) -> None:
    """Wait until the replica has applied every write the primary had when called (its
    ``slave_repl_offset`` reached the primary's ``master_repl_offset``)."""
    def offset(port: int, field: str) -> int:
        text = command(port, "INFO", "replication")
        return int(dict(line.split(":", 1) for line in text.splitlines()
                        if ":" in line)[field])

    current = primary()
    other = next(port for port in NODE_PORTS if port != current)
    wanted = offset(current, "master_repl_offset")
    wait_for(f"{NAME} node {other} to copy the primary's writes up to offset {wanted}",
             lambda: offset(other, "slave_repl_offset") >= wanted,
             LOG_DIR / f"{node_name(other)}.log", timeout=timeout)


def hold_back_replica(seconds: float = 120.0) -> int:
    """From now on the replica applies nothing more from the primary (CLIENT PAUSE
    WRITE on it: its link stays up, what the primary streams waits unapplied in its
    input buffer, and its acknowledged offset stops, so WAIT times out), while the
    primary keeps acknowledging writes. Follow with `kill_primary()`: the replica is
    promoted without them — a lossy failover. `release_replica()` instead lets it
    catch up; the hold also ends by itself after `seconds`. Returns its port."""
    port = replica()
    command(port, "CLIENT", "PAUSE", int(seconds * 1000), "WRITE")
    return port


def release_replica() -> None:
    """End a hold: the replica applies what it held back."""
    for port in NODE_PORTS:
        if node_running(port):
            command(port, "CLIENT", "UNPAUSE")
