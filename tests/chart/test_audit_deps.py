"""scripts/audit-deps: the vulnerability scan of the lock that scripts/test runs.

Against a fake package index (the JSON API the scan reads): a vulnerable pin is
reported and fails the scan; an index it cannot reach, or one that has no advisory
data for a pin, fails it loudly (NOT AUDITED) instead of passing.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.chart.conftest import ROOT

pytestmark = pytest.mark.chart

SCRIPT = ROOT / "scripts" / "audit-deps"
VULN = {"id": "PYSEC-2099-1", "aliases": ["CVE-2099-0001", "GHSA-xxxx-yyyy-zzzz"],
        "fixed_in": ["1.0.1"], "summary": "remote code execution in load()",
        "details": "", "withdrawn": None}
# What the fake index knows: {path: document}; anything else is a 404.
DOCUMENTS: dict[str, Any] = {
    "/pypi/vulnerable/1.0.0/json": {"info": {"version": "1.0.0"}, "vulnerabilities": [VULN]},
    "/pypi/clean/2.0.0/json": {"info": {"version": "2.0.0"}, "vulnerabilities": []},
    # Only the project document: its advisories are the latest release's.
    "/pypi/latest-only/json": {"info": {"version": "3.1.0"}, "vulnerabilities": []},
}


class Index(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        document = DOCUMENTS.get(self.path)
        body = json.dumps(document or {"message": "Not Found"}).encode()
        self.send_response(200 if document else 404)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def index() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Index)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/pypi"
    server.shutdown()


def scan(tmp_path: Path, index: str, *pins: str) -> subprocess.CompletedProcess[str]:
    lock = tmp_path / "constraints.txt"
    lock.write_text("".join(f"{p} \\\n    --hash=sha256:{'0' * 64}\n" for p in pins))
    env = {**os.environ, "AUDIT_INDEX_URL": index, "AUDIT_TIMEOUT": "5"}
    return subprocess.run([sys.executable, str(SCRIPT), str(lock)], capture_output=True,
                          text=True, env=env, timeout=60, check=False)


def test_a_known_vulnerability_is_reported_and_fails_the_scan(tmp_path: Path,
                                                              index: str) -> None:
    out = scan(tmp_path, index, "vulnerable==1.0.0", "clean==2.0.0")
    assert out.returncode == 1, out.stdout + out.stderr
    assert ("VULNERABLE  vulnerable==1.0.0: PYSEC-2099-1 / CVE-2099-0001 / GHSA-xxxx-yyyy-zzzz"
            " (fixed in 1.0.1) remote code execution in load()") in out.stdout
    assert "ok          clean==2.0.0 (release)" in out.stdout
    assert "1 known vulnerabilit" in out.stderr


def test_nothing_known_passes(tmp_path: Path, index: str) -> None:
    out = scan(tmp_path, index, "clean==2.0.0", "latest-only==3.1.0")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "ok          latest-only==3.1.0 (latest release)" in out.stdout


def test_a_pin_without_advisory_data_is_not_audited_and_fails_loudly(tmp_path: Path,
                                                                    index: str) -> None:
    out = scan(tmp_path, index, "clean==2.0.0", "latest-only==3.0.0", "unknown==1.0")
    assert out.returncode == 2, out.stdout + out.stderr
    assert "NOT AUDITED latest-only==3.0.0: the index serves advisories for the latest " \
           "release only (3.1.0)" in out.stdout
    assert "NOT AUDITED unknown==1.0: unknown to the index" in out.stdout
    assert "2 pin(s) NOT AUDITED" in out.stderr


def test_an_unreachable_advisory_source_fails_loudly(tmp_path: Path) -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        dead = sock.getsockname()[1]
    out = scan(tmp_path, f"http://127.0.0.1:{dead}/pypi", "clean==2.0.0")
    assert out.returncode == 2, out.stdout + out.stderr
    assert "NOT AUDITED clean==2.0.0: advisory source unreachable" in out.stdout
    assert "no known vulnerability" not in out.stdout
