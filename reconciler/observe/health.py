"""The metrics port: ``/metrics``, ``/healthz``, ``/readyz`` and ``/freshness``.

- ``/healthz``: the process is alive and its consume loop is turning (liveness).
- ``/readyz``: the worker has joined its consumer group (its assignment may be empty
  when there are more replicas than partitions — a spare must not block a rollout)
  and every shard answered its last call or probe. The JSON body says which check
  failed.
- ``/freshness``: the freshness watermarks (see ``reconciler.observe.freshness``).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Status:
    ok: bool
    detail: dict[str, Any]


class HealthServer:
    """A small threaded HTTP server; ``start()`` returns once it listens."""

    def __init__(self, host: str, port: int, registry: CollectorRegistry, *,
                 live: Callable[[], Status], ready: Callable[[], Status],
                 freshness: Callable[[], dict[str, Any]]) -> None:
        routes: dict[str, Callable[[], tuple[int, str, bytes]]] = {
            "/metrics": lambda: (200, CONTENT_TYPE_LATEST, generate_latest(registry)),
            "/healthz": lambda: _status(live()),
            "/readyz": lambda: _status(ready()),
            "/freshness": lambda: (200, "application/json",
                                   json.dumps(freshness()).encode()),
        }

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                route = routes.get(self.path.split("?", 1)[0])
                if route is None:
                    code, kind, body = 404, "text/plain", b"not found\n"
                else:
                    try:
                        code, kind, body = route()
                    except Exception:
                        log.exception("serving %s failed", self.path)
                        code, kind, body = 500, "text/plain", b"internal error\n"
                self.send_response(code)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # probes every few seconds would flood the log

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        name="metrics-http", daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _status(status: Status) -> tuple[int, str, bytes]:
    body = json.dumps({"ok": status.ok, **status.detail}).encode()
    return (200 if status.ok else 503), "application/json", body
