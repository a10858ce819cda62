"""The stack script's promises: up twice is a no-op, down then up needs no clean-up, and a
port held by someone else stops `up` with a message naming the service and the knob.

These run a second, isolated stack instance (its own folder and ports) with the cheap
services (Postgres, one Valkey), so the shared stack the other tests use is untouched.
Kafka and Connect restarts are exercised by the fault-injection suite.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.e2e
SERVICES = ["postgres", "valkey-a"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Instance:
    def __init__(self, folder: Path) -> None:
        self.env = {
            **os.environ,
            "CR_STACK_DIR": str(folder),
            "CR_STACK_PG_PORT": str(free_port()),
            "CR_STACK_VALKEY_A_PORT": str(free_port()),
            "CR_STACK_VALKEY_B_PORT": str(free_port()),
        }

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "stack", *args], cwd=ROOT, env=self.env,
                              capture_output=True, text=True, timeout=300, check=False)

    def pids(self) -> dict[str, str]:
        run = Path(self.env["CR_STACK_DIR"]) / "run"
        return {p.stem: p.read_text() for p in run.glob("*.pid")}


@pytest.fixture
def instance() -> Iterator[Instance]:
    # Not under pytest's tmp_path: that is private to root, and Postgres runs as the
    # `postgres` user, which must reach its data folder.
    folder = Path(tempfile.mkdtemp(prefix="cr-stack-test-"))
    os.chmod(folder, 0o755)
    inst = Instance(folder)
    yield inst
    inst.run("down", *SERVICES)
    shutil.rmtree(folder, ignore_errors=True)


def test_up_twice_is_a_no_op_and_down_then_up_needs_no_cleanup(instance: Instance) -> None:
    first = instance.run("up", *SERVICES)
    assert first.returncode == 0, first.stderr
    pids = instance.pids()

    started = time.monotonic()
    again = instance.run("up", *SERVICES)
    assert again.returncode == 0, again.stderr
    assert "postgres already running" in again.stderr
    assert "valkey-a already running" in again.stderr
    assert instance.pids() == pids, "a second up must not restart anything"
    assert time.monotonic() - started < 10

    status = instance.run("status")
    assert "postgres             running" in status.stdout

    assert instance.run("down", *SERVICES).returncode == 0
    stopped = instance.run("status")
    assert "postgres             stopped" in stopped.stdout
    assert "valkey-a             stopped" in stopped.stdout

    restarted = instance.run("up", *SERVICES)
    assert restarted.returncode == 0, restarted.stderr  # the data folder is reused as is


def test_a_port_taken_by_another_process_gives_a_clear_error(instance: Instance) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", int(instance.env["CR_STACK_VALKEY_A_PORT"])))
        squatter.listen()
        result = instance.run("up", "valkey-a")
    assert result.returncode == 1
    message = result.stderr
    assert "valkey-a" in message
    assert f"127.0.0.1:{instance.env['CR_STACK_VALKEY_A_PORT']}" in message
    assert "already in use by another process" in message
    assert "CR_STACK_VALKEY_A_PORT" in message


def test_a_stack_folder_the_postgres_user_cannot_reach_still_starts(tmp_path: Path) -> None:
    """A checkout under a private folder (pytest's tmp_path is 0700, like /root): the
    cluster moves to the postgres user's home instead of failing in initdb."""
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    inst = Instance(private / "stack")
    try:
        result = inst.run("up", "postgres")
        assert result.returncode == 0, result.stderr
        log = private / "stack" / "logs" / "postgres.log"
        assert log.is_symlink() and log.resolve().exists()
    finally:
        inst.run("down", "postgres")
