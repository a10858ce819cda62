"""The bottom of the stack: its folders, its error, and the processes it runs.

Every service module (postgres, kafka, connect, valkey) starts its server with
`spawn()` (detached, logging to ``.stack/logs/<name>.log``, its pid in
``.stack/run/<name>.pid``), waits for it with `wait_for()` and stops it with
`terminate()`. A port held by a process that is not ours is reported by
`ensure_port_free()`, naming the service, the port and the variable that moves it.

Only the standard library: this module runs before the project is installed.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# A relative CR_STACK_DIR is read from the repository root: Postgres runs in its data
# folder and would not find a relative socket folder.
STACK_DIR = ROOT / os.environ.get("CR_STACK_DIR", ".stack")
LOG_DIR = STACK_DIR / "logs"  # one <service>.log each
RUN_DIR = STACK_DIR / "run"  # one <service>.pid each
LIB_DIR = STACK_DIR / "lib"  # the jars Maven resolved, and Connect's plugin folder
HOST = "127.0.0.1"  # every service listens on loopback only

START_TIMEOUT = float(os.environ.get("CR_STACK_TIMEOUT", "180"))  # seconds, per service


class StackError(RuntimeError):
    """A service could not be started, checked or stopped."""


@dataclass(frozen=True)
class Service:
    """What `python -m stack` knows of a service: how to start, stop and probe it."""

    name: str
    start: Callable[[], None]  # idempotent: a no-op while it runs
    stop: Callable[[], None]
    running: Callable[[], bool]


def log(message: str) -> None:
    print(f"[stack] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- ports


def port_open(port: int, host: str = HOST) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def ensure_port_free(service: str, port: int, env_var: str) -> None:
    if port_open(port):
        raise StackError(
            f"{service}: port {HOST}:{port} is already in use by another process "
            f"(not one this stack started). Free it, or choose another port with "
            f"{env_var}=<port>."
        )
    low, high = ephemeral_ports()
    if low <= port <= high:
        log(f"warning: {service}: port {port} ({env_var}) is in this machine's ephemeral "
            f"range {low}-{high}: any outgoing connection may take it (a client retrying a "
            f"stopped service can even connect to itself on it) and the service then fails "
            f"to bind; prefer a port below {low}")


def ephemeral_ports() -> tuple[int, int]:
    """The kernel's range of local ports for outgoing connections (Linux's default when
    it cannot be read). The stack's default ports all lie below it."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def http_json(method: str, url: str, body: object | None = None, timeout: float = 10.0) -> Any:
    """A JSON request to a service's REST API (Kafka Connect's); the decoded answer."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        raw = response.read()
    return json.loads(raw) if raw else None


# --------------------------------------------------------------------------- processes


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (our own exited child) counts as dead.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0]
    except (OSError, IndexError):
        return True
    return state != "Z"


def read_pid(name: str) -> int | None:
    path = RUN_DIR / f"{name}.pid"
    try:
        pid = int(path.read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if pid_alive(pid) else None


def tail(path: Path, lines: int = 25) -> str:
    try:
        content = path.read_text(errors="replace").splitlines()
    except OSError:
        return f"(no log at {path})"
    return "\n".join(content[-lines:])


def wait_for(what: str, check: Callable[[], bool], log_path: Path, timeout: float = START_TIMEOUT,
             alive: Callable[[], bool] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception:  # noqa: BLE001 - any failure of a probe means "not yet"
            pass
        if alive is not None and not alive():
            raise StackError(
                f"{what} exited while starting; see {log_path}:\n{tail(log_path)}"
            )
        time.sleep(0.5)
    raise StackError(
        f"{what} did not come up within {timeout:.0f}s; see {log_path}:\n{tail(log_path)}"
    )


def spawn(name: str, argv: list[str], env: dict[str, str] | None = None,
          cwd: Path | None = None) -> int:
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    log_path = LOG_DIR / f"{name}.log"
    with open(log_path, "ab") as out:
        out.write(f"\n==== {time.strftime('%Y-%m-%dT%H:%M:%S')} starting {name}\n".encode())
        out.flush()
        proc = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})}, cwd=cwd, start_new_session=True,
        )
    (RUN_DIR / f"{name}.pid").write_text(str(proc.pid))
    return proc.pid


def terminate(name: str, timeout: float = 60.0, sig: int = signal.SIGTERM) -> bool:
    pid = read_pid(name)
    if pid is None:
        return False
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, sig) if _is_group_leader(pid) else os.kill(pid, sig)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and pid_alive(pid):
        _reap(pid)
        time.sleep(0.2)
    if pid_alive(pid):
        log(f"{name} (pid {pid}) ignored SIGTERM for {timeout:.0f}s; killing it")
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        while pid_alive(pid):
            _reap(pid)
            time.sleep(0.1)
    (RUN_DIR / f"{name}.pid").unlink(missing_ok=True)
    return True


def daemon(name: str, port: int, env_var: str, command: Callable[[], list[str]],
           ready: Callable[[], bool], *, label: str | None = None,
           timeout: float = START_TIMEOUT, stop_timeout: float = 60.0,
           then: Callable[[], None] | None = None) -> Service:
    """A server we spawn, listening on `port` (moved with `env_var`).

    `start()` is a no-op while it runs; otherwise it checks the port is free, asks
    `command()` for the argv (preparing files and folders on the way), spawns it and
    waits until `ready()`. `then()`, if given, runs after every start, running or not
    (registering users, a connector: idempotent). `label` names it in messages.
    """
    what = label or name

    def running() -> bool:
        return read_pid(name) is not None and port_open(port)

    def start() -> None:
        if running():
            log(f"{what} already running")
        else:
            ensure_port_free(what, port, env_var)
            pid = spawn(name, command())
            wait_for(what, ready, LOG_DIR / f"{name}.log", timeout=timeout,
                     alive=lambda: pid_alive(pid))
        if then is not None:
            then()

    def stop() -> None:
        terminate(name, timeout=stop_timeout)

    return Service(name, start, stop, running)


def _is_group_leader(pid: int) -> bool:
    try:
        return os.getpgid(pid) == pid
    except ProcessLookupError:
        return False


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)
