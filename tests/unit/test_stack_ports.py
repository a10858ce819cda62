"""The local stack's default ports stay out of the kernel's ephemeral range: a port in
it can be taken by any outgoing connection (or by a client that keeps retrying a stopped
service and connects to itself), and the service then cannot bind when it starts."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from stack.process import ephemeral_ports
from tests.conftest import ROOT

DEFAULTS = """
import json
from stack import (apicurio, connect, kafka, postgres, security, sentinel, toxiproxy, valkey,
                   valkey_cluster)
print(json.dumps({"postgres": postgres.PG_PORT, "kafka": kafka.KAFKA_PORT,
                  "kafka controller": kafka.KAFKA_CONTROLLER_PORT,
                  "kafka sasl": security.KAFKA_SASL_PORT, "connect": connect.CONNECT_PORT,
                  "apicurio": apicurio.APICURIO_PORT,
                  **valkey.VALKEY_PORTS, "valkey-acl": security.VALKEY_ACL_PORT,
                  "valkey-tls": security.VALKEY_TLS_PORT, "toxiproxy": toxiproxy.API_PORT,
                  **{f"valkey-cluster {port}": port for port in valkey_cluster.ports()},
                  **{f"valkey-cluster bus {port}": port + valkey_cluster.BUS_OFFSET
                     for port in valkey_cluster.ports()},
                  **{f"valkey-sentinel {port}": port
                     for port in sentinel.NODE_PORTS + sentinel.SENTINEL_PORTS}}))
"""


def test_default_ports_are_below_the_ephemeral_range() -> None:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("CR_STACK_", "CR_TOXIPROXY_"))}
    out = subprocess.run([sys.executable, "-c", DEFAULTS], cwd=ROOT, env=env, check=True,
                         capture_output=True, text=True).stdout
    ports: dict[str, int] = json.loads(out)
    low, _ = ephemeral_ports()
    assert len(set(ports.values())) == len(ports), ports
    assert {name: port for name, port in ports.items() if port >= low} == {}, (
        f"in the ephemeral range (from {low}): {ports}")
