"""Doctor's Kafka Connect checks (optional ``connect.url``): the Debezium connector.

The connector and its tasks are RUNNING and it captures every configured table (a
table with ``partitions``: its leaves or root, checked with the Postgres checks). Its
config (passwords left out) is handed to the Postgres checks: the publication and the
replication slot it uses. With several ``sources``, once per source: its connector is
``sources[].connector``, or the one whose topic.prefix is its ``topic_prefix``.
"""

from __future__ import annotations

import base64
import json
import re
import urllib.request
from collections.abc import Iterator
from typing import Any

from reconciler.ops.doctor.checklist import FAIL, OK, WARN, Check
from reconciler.settings import ConnectSettings, Settings, SourceSettings


def connect_checks(settings: Settings, source: SourceSettings | None = None
                   ) -> Iterator[Check | dict[str, str]]:
    """The connector's (`source`'s, by default the only one's) and its tasks' state and
    the tables it captures; last, its config (passwords left out), for the Postgres
    checks."""
    source = source or settings.source_list()[0]
    connect = settings.connect
    if connect is None:
        yield Check(WARN, "connect", "not configured: the Debezium connector's state is "
                                     "not checked",
                    "set connect.url (the Kafka Connect REST API, e.g. "
                    "http://connect:8083)")
        return
    base = connect.url.rstrip("/")
    try:
        found = _get(connect, f"{base}/connectors?expand=status&expand=info")
    except (OSError, ValueError) as exc:
        yield Check(FAIL, "connect", f"cannot reach {base}: {exc}",
                    "check connect.url and the network")
        return
    assert isinstance(found, dict)
    name = source.connector or _guess_connector(settings, source, found)
    if name is None or name not in found:
        what = (f"{name} not found" if name else
                "no single Debezium Postgres connector whose topic.prefix is "
                + (repr(source.topic_prefix) if source.topic_prefix else "the topics'"))
        field = f"sources[{source.name}].connector" if settings.sources else "connect.connector"
        yield Check(FAIL, "connector", f"{what} (connectors: "
                                       f"{', '.join(sorted(found)) or 'none'})",
                    f"deploy the connector, or set {field} to its name")
        return
    status = found[name].get("status", {})
    config = found[name].get("info", {}).get("config", {})
    state = status.get("connector", {}).get("state", "UNKNOWN")
    tasks = status.get("tasks") or []
    bad = [t for t in tasks if t.get("state") != "RUNNING"]
    check = f"connector {name}"
    if state == "RUNNING" and tasks and not bad:
        yield Check(OK, check, f"RUNNING with {len(tasks)} task(s) RUNNING")
    elif state in ("PAUSED", "STOPPED"):
        yield Check(FAIL, check, f"{state}: no change is streamed, so the cache goes "
                                 "stale unnoticed",
                    f"resume it: curl -X PUT {base}/connectors/{name}/resume")
    elif state != "RUNNING":
        yield Check(FAIL, check, f"connector is {state}: {_trace(status.get('connector'))}",
                    f"fix the cause, then curl -X POST {base}/connectors/{name}/restart")
    else:
        task = bad[0] if bad else {}
        yield Check(FAIL, check, f"task {task.get('id', '?')} is "
                                 f"{task.get('state', 'missing')}: {_trace(task)}",
                    f"fix the cause, then curl -X POST {base}/connectors/{name}/tasks/"
                    f"{task.get('id', 0)}/restart")
    include = [p.strip() for p in config.get("table.include.list", "").split(",")
               if p.strip()]
    missing = [t for t, spec in settings.tables.items() if include and not spec.partitions
               and not any(re.fullmatch(p, t) for p in include)]
    if missing:
        yield Check(WARN, f"{check} tables", f"table.include.list does not capture "
                                             f"{', '.join(missing)}",
                    "add them to the connector's table.include.list (and publication)")
    yield {k: v for k, v in config.items() if "password" not in k}


def _guess_connector(settings: Settings, source: SourceSettings,
                     found: dict[str, Any]) -> str | None:
    prefixes = ({source.topic_prefix} if source.topic_prefix else
                {t.split(".", 1)[0] for t in settings.kafka.topics})
    candidates = [name for name, entry in found.items()
                  if "postgres" in entry.get("info", {}).get("config", {})
                  .get("connector.class", "").lower()
                  and entry["info"]["config"].get("topic.prefix") in prefixes]
    return candidates[0] if len(candidates) == 1 else None


def _get(connect: ConnectSettings, url: str) -> Any:
    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    if connect.username is not None:
        secret = connect.password.get_secret_value() if connect.password else ""
        token = base64.b64encode(f"{connect.username}:{secret}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    with urllib.request.urlopen(request, timeout=connect.timeout_seconds) as response:
        return json.loads(response.read())


def _trace(item: Any) -> str:
    trace = (item or {}).get("trace") or ""
    return trace.strip().splitlines()[0][:300] if trace.strip() else "no trace"
