"""Doctor's checks of a cluster shard (a Valkey Cluster behind one shard-map name).

First the cluster as a whole — a seed answers CLUSTER SLOTS, and CLUSTER INFO says
``cluster_state:ok`` with every slot served — then every node of the slot map as if it
were a standalone shard (reachable, its version, the functions library on each
primary, the ACL user's commands: `valkey.shard_checks` hands its per-server checks in
as `node_checks`), then the commands only a cluster needs on each node: CLUSTER SLOTS
(the slot map) and ASKING (a redirection during a slot migration), and CLUSTER INFO
(this check; a WARN only).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from valkey import exceptions as vx

from connectors.errors import ConnectorError, ValkeyRejected, ValkeyShardError
from connectors.valkey.cluster import ClusterShard
from connectors.valkey.functions import load_functions, translate
from connectors.valkey.topology import SLOTS, NodeInfo
from reconciler.ops.doctor.checklist import FAIL, OK, WARN, Check

# What the worker's user needs on every node of a cluster, besides a standalone
# shard's commands (ACL DRYRUN on each), and what only doctor needs (a WARN).
CLUSTER_COMMANDS = (("CLUSTER", "SLOTS"), ("ASKING",))
DOCTOR_COMMANDS = (("CLUSTER", "INFO"),)


class Server(Protocol):
    """What the per-server checks read: a standalone `Shard`, or one node of a cluster."""

    @property
    def url(self) -> str: ...

    @property
    def client(self) -> Any: ...

    def server_version(self) -> str: ...

    def ensure_functions(self) -> None: ...


@dataclass(frozen=True)
class NodeServer:
    """One node of a cluster, seen as a standalone server."""

    url: str
    client: Any
    shard: ClusterShard
    primary: bool

    def server_version(self) -> str:
        try:
            info: dict[str, Any] = self.client.info("server")
        except (vx.ValkeyError, OSError) as error:
            raise translate(error, shard=self.shard.name, command="INFO") from error
        return str(info.get("valkey_version") or info.get("redis_version") or "unknown")

    def ensure_functions(self) -> None:
        load_functions(self.client, shard=self.shard.name, library=self.shard.library)


def cluster_checks(name: str, shard: ClusterShard, *, user: str,
                   node_checks: Callable[..., Iterator[Check]]) -> Iterator[Check]:
    """`node_checks(name, server, library=…)`: a server's checks, the library's only on
    a primary (a replica copies its primary's)."""
    check = f"shard {name}"
    try:
        nodes = shard.nodes()
    except ValkeyRejected as exc:
        yield Check(FAIL, check, f"{shard.url} refused CLUSTER SLOTS: {exc}",
                    f"check valkey.username/password; grant ACL SETUSER {user} "
                    "+cluster|slots +asking on every node")
        return
    except ValkeyShardError as exc:
        yield Check(FAIL, check, f"{shard.url}: no seed answered CLUSTER SLOTS: {exc}",
                    "check the seed URLs in the shard map (any node of the cluster), the "
                    "network, and that the nodes run with cluster-enabled yes")
        return
    primaries = [node for node in nodes if node.primary is None]
    yield _state(check, shard, primaries, len(nodes))
    for node in nodes:
        view = NodeServer(f"valkey://{node.name} ({_role(node)})", shard.node(node.name),
                          shard, node.primary is None)
        if node.primary is not None and not _answers(view.client):
            yield Check(WARN, f"{check} {node.name}", f"{view.url} unreachable",
                        "a replica the cluster may fail over to: bring it back")
            continue
        yield from node_checks(f"{name} {node.name}", view, library=view.primary)
        yield _cluster_acl(f"{check} {node.name} cluster acl", user, view.client)


def _state(check: str, shard: ClusterShard, primaries: list[NodeInfo], nodes: int) -> Check:
    try:
        text = shard.node(primaries[0].name).execute_command("CLUSTER", "INFO")
    except (vx.ValkeyError, OSError, IndexError) as exc:
        return Check(WARN, f"{check} cluster", f"could not read CLUSTER INFO: {exc}",
                     "grant +cluster|info to check the cluster's state")
    info = dict(line.split(":", 1) for line in
                (text.decode() if isinstance(text, bytes) else str(text)).splitlines()
                if ":" in line)
    state = info.get("cluster_state", "?").strip()
    assigned = int(info.get("cluster_slots_assigned", 0))
    served = int(info.get("cluster_slots_ok", 0))
    shape = (f"{len(primaries)} primaries, {nodes - len(primaries)} replicas, "
             f"{served} of {SLOTS} slots served")
    if state != "ok" or assigned < SLOTS:
        return Check(FAIL, f"{check} cluster", f"{shard.url}: cluster_state {state}, {shape}, "
                     f"{assigned} assigned",
                     "every slot must be served by a reachable primary: bring the failed "
                     "nodes back or fail them over, assign the missing slots (valkey-cli "
                     "--cluster fix); with cluster-require-full-coverage yes (the default) "
                     "one missing slot stops the whole cluster")
    if served < SLOTS:
        return Check(WARN, f"{check} cluster", f"{shard.url}: {shape} (some in PFAIL)",
                     "a primary is suspected down: check its node")
    return Check(OK, f"{check} cluster", f"{shard.url}: cluster_state ok, {shape}")


def _cluster_acl(check: str, user: str, client: Any) -> Check:
    commands = CLUSTER_COMMANDS + DOCTOR_COMMANDS
    try:
        pipe = client.pipeline(transaction=False)
        for command in commands:
            pipe.execute_command("ACL", "DRYRUN", user, *command)
        replies = pipe.execute(raise_on_error=False)
    except (vx.ValkeyError, OSError) as exc:
        return Check(WARN, check, f"could not check: {exc}", "run doctor again")
    how = "ACL DRYRUN"
    if all(isinstance(reply, Exception) for reply in replies):  # DRYRUN refused: probe
        how = "probes: ACL DRYRUN not permitted"
        replies = [_run(client, command) for command in commands]
        _run(client, ("PING",))  # what the ASKING probe applied to
    refused = sorted({" ".join(command).lower().replace(" ", "|")
                      for command, reply in zip(commands, replies, strict=True)
                      if reply != b"OK" and command in CLUSTER_COMMANDS})
    if refused:
        return Check(FAIL, check, f"user {user} is refused {', '.join(refused).upper()} "
                                  f"({how}): the worker cannot read the slot map or follow "
                                  "a slot migration",
                     f"ACL SETUSER {user} " + " ".join(f"+{c}" for c in refused))
    if replies[-1] != b"OK":
        return Check(WARN, check, f"user {user} may run CLUSTER SLOTS and ASKING, but not "
                                  f"CLUSTER INFO ({how}; doctor's check of the cluster's "
                                  "state)", f"ACL SETUSER {user} +cluster|info")
    return Check(OK, check, f"user {user} may run CLUSTER SLOTS, ASKING and CLUSTER INFO "
                            f"({how})")


def _run(client: Any, command: tuple[str, ...]) -> Any:
    """b"OK" if `command` is allowed (its answer ignored), else the refusal."""
    try:
        client.execute_command(*command)
    except (vx.ValkeyError, OSError) as exc:
        return exc
    return b"OK"


def _role(node: NodeInfo) -> str:
    return "primary" if node.primary is None else f"replica of {node.primary}"


def _answers(client: Any) -> bool:
    try:
        return bool(client.ping())
    except (vx.ValkeyError, OSError, ConnectorError):
        return False
