"""Network faults for the fault suite: Toxiproxy between a worker and Kafka/Valkey.

Kafka tells its clients to connect to its advertised listener (127.0.0.1:<port>), so a
proxy on another port would be bypassed after the first metadata request. Instead the
worker runs in a network namespace of its own, where 127.0.0.1:<port> is a plain relay
(a Toxiproxy without toxics) to the host end of a veth pair; there a second Toxiproxy
— the one the tests put toxics on — forwards to the real service on the host's
loopback. Every address the worker dials, advertised or not, goes through the toxics,
and nothing else on the machine is slowed down::

    netns crf-N: worker → 127.0.0.1:P (relay) ─veth─→ 10.203.N.1:P (toxics) → 127.0.0.1:P

The kernel here has no netem, so `tc` cannot add latency or loss; Toxiproxy can.
Needs root (network namespaces) and the toxiproxy-server binary: ``python -m
stack.toxiproxy install`` builds it with ``go install`` into the virtualenv's bin
(idempotent).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stack.process import HOST, LOG_DIR, StackError, log, wait_for

VERSION = os.environ.get("CR_TOXIPROXY_VERSION", "v2.12.0")  # the release built and tested
MODULE = "github.com/Shopify/toxiproxy/v2"  # its Go module; the server is cmd/server
BIN = Path(os.environ.get("CR_TOXIPROXY_BIN", Path(sys.executable).parent / "toxiproxy-server"))
API_PORT = int(os.environ.get("CR_TOXIPROXY_PORT", "28474"))  # the host proxy's REST API
RELAY_API_PORT = 8474  # the relay's REST API, on the namespace's own loopback
SUBNET = "10.203"  # veth addresses: 10.203.<n>.1 (host) and 10.203.<n>.2 (namespace)


# --------------------------------------------------------------------------- install


def go() -> str:
    found = shutil.which("go") or ("/usr/local/go/bin/go"
                                   if Path("/usr/local/go/bin/go").exists() else None)
    if found is None:
        raise StackError("toxiproxy: Go not found (put go on PATH or install it at "
                         "/usr/local/go); it builds toxiproxy-server")
    return found


def installed_version(binary: Path = BIN) -> str | None:
    if not binary.exists():
        return None
    proc = subprocess.run([str(binary), "-version"], capture_output=True, text=True,
                          check=False, timeout=10)
    text = (proc.stdout + proc.stderr).strip()
    return text.split()[-1] if text else None


def install(binary: Path = BIN) -> Path:
    """Build toxiproxy-server VERSION into `binary` unless it is already there."""
    if installed_version(binary) in (VERSION, VERSION.lstrip("v")):
        return binary
    log(f"toxiproxy: go install {MODULE}/cmd/server@{VERSION} → {binary}")
    with tempfile.TemporaryDirectory() as gobin:
        proc = subprocess.run(
            [go(), "install", "-trimpath", "-ldflags",
             f"-s -w -X {MODULE}.Version={VERSION.lstrip('v')}", f"{MODULE}/cmd/server@{VERSION}"],
            env={**os.environ, "GOBIN": gobin, "CGO_ENABLED": "0"},
            capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise StackError(f"toxiproxy: go install failed:\n{proc.stderr[-3000:]}")
        binary.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(Path(gobin) / "server"), binary)
    return binary


# --------------------------------------------------------------------------- the API


@dataclass
class Toxiproxy:
    """A toxiproxy-server we started, and its REST API."""

    api: str
    proc: subprocess.Popen[bytes] | None = None

    def call(self, method: str, path: str, body: object | None = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(f"{self.api}{path}", data=data, method=method,
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                raw = response.read()
        except urllib.error.HTTPError as exc:
            raise StackError(f"toxiproxy {method} {path}: {exc.code} "
                             f"{exc.read().decode(errors='replace')}") from exc
        return json.loads(raw) if raw else None

    def proxy(self, name: str, listen: str, upstream: str) -> None:
        self.call("POST", "/proxies", {"name": name, "listen": listen, "upstream": upstream,
                                       "enabled": True})

    def add(self, proxy: str, kind: str, *, name: str | None = None,
            stream: str = "downstream", toxicity: float = 1.0, **attributes: Any) -> str:
        """Add a toxic (latency, reset_peer, timeout, limit_data, slicer…); its name."""
        name = name or f"{kind}_{stream}"
        self.call("POST", f"/proxies/{proxy}/toxics", {
            "name": name, "type": kind, "stream": stream, "toxicity": toxicity,
            "attributes": attributes})
        return name

    def remove(self, proxy: str, name: str) -> None:
        self.call("DELETE", f"/proxies/{proxy}/toxics/{name}")

    def clear(self) -> None:
        """Remove every toxic of every proxy (POST /reset also re-enables them)."""
        self.call("POST", "/reset")

    def traffic(self) -> dict[str, float]:
        """Bytes each proxy has carried, both directions (needs -proxy-metrics)."""
        request = urllib.request.Request(f"{self.api}/metrics")
        with urllib.request.urlopen(request, timeout=10) as response:
            text = response.read().decode()
        carried: dict[str, float] = {}
        for line in text.splitlines():
            if line.startswith("toxiproxy_proxy_received_bytes_total{"):
                labels, _, value = line.rpartition(" ")
                proxy = labels.split('proxy="', 1)[1].split('"', 1)[0]
                carried[proxy] = carried.get(proxy, 0.0) + float(value)
        return carried

    def toxics(self, proxy: str) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = self.call("GET", f"/proxies/{proxy}/toxics")
        return found

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def _server(argv: Sequence[str], name: str, api_host: str, api_port: int,
            prefix: Sequence[str] = ()) -> Toxiproxy:
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    log_path = LOG_DIR / f"{name}.log"
    with open(log_path, "ab") as out:
        proc = subprocess.Popen(
            [*prefix, str(install()), "-host", api_host, "-port", str(api_port), *argv],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    server = Toxiproxy(f"http://{api_host}:{api_port}", proc)

    def answers() -> bool:
        server.call("GET", "/version")
        return True

    try:
        wait_for(name, answers, log_path, timeout=30, alive=lambda: proc.poll() is None)
    except BaseException:
        server.stop()
        raise
    return server


# --------------------------------------------------------------------------- the netns


def ip(*args: str, netns: str | None = None, check: bool = True) -> None:
    argv = ["ip", *(["netns", "exec", netns, "ip"] if netns else []), *args]
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise StackError(f"{' '.join(argv)}: {proc.stderr.strip()} (network namespaces "
                         "need root)")


@dataclass
class FaultNet:
    """A network namespace whose loopback reaches `ports` of the host only through the
    host Toxiproxy (`toxics`). Run a process inside with `prefix`; it is reachable from
    the host at `address`."""

    ports: Mapping[str, int]  # proxy name -> port on the host's loopback
    index: int = field(default_factory=lambda: os.getpid() % 250 + 1)
    toxics: Toxiproxy | None = None
    relay: Toxiproxy | None = None

    @property
    def netns(self) -> str:
        return f"crf{self.index}"

    @property
    def gateway(self) -> str:
        return f"{SUBNET}.{self.index}.1"

    @property
    def address(self) -> str:
        """The namespace's address, reachable from the host (for /metrics)."""
        return f"{SUBNET}.{self.index}.2"

    @property
    def prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.netns]

    def start(self) -> FaultNet:
        self.remove()  # leftovers of a run that was killed
        host_if, ns_if = f"crf{self.index}h", f"crf{self.index}n"
        ip("netns", "add", self.netns)
        ip("link", "add", host_if, "type", "veth", "peer", "name", ns_if)
        ip("link", "set", ns_if, "netns", self.netns)
        ip("addr", "add", f"{self.gateway}/30", "dev", host_if)
        ip("link", "set", host_if, "up")
        ip("addr", "add", f"{self.address}/30", "dev", ns_if, netns=self.netns)
        ip("link", "set", ns_if, "up", netns=self.netns)
        ip("link", "set", "lo", "up", netns=self.netns)
        self.toxics = _server(["-proxy-metrics"], "toxiproxy", HOST, API_PORT)
        for name, port in self.ports.items():
            self.toxics.proxy(name, f"{self.gateway}:{port}", f"{HOST}:{port}")
        config = LOG_DIR / f"toxiproxy-relay-{self.index}.json"
        config.write_text(json.dumps([
            {"name": name, "listen": f"{HOST}:{port}", "upstream": f"{self.gateway}:{port}",
             "enabled": True} for name, port in self.ports.items()]))
        self.relay = _server(["-config", str(config)], "toxiproxy-relay", self.address,
                             RELAY_API_PORT, prefix=self.prefix)
        return self

    def remove(self) -> None:
        for server in (self.relay, self.toxics):
            if server is not None:
                server.stop()
        self.relay = self.toxics = None
        ip("link", "del", f"crf{self.index}h", check=False)
        ip("netns", "del", self.netns, check=False)

    def __enter__(self) -> FaultNet:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.remove()


def main(argv: list[str] | None = None) -> int:
    args = argv if argv is not None else sys.argv[1:]
    if args != ["install"]:
        print("usage: python -m stack.toxiproxy install", file=sys.stderr)
        return 2
    try:
        print(install())
    except StackError as exc:
        print(f"[toxiproxy] error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
