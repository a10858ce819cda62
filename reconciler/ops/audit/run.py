"""``run_audit``: the shard clients of the shard map, a Postgres session per source, one
`Auditor` over them, and the report."""

from __future__ import annotations

import time
from collections.abc import Sequence

from prometheus_client import CollectorRegistry

from connectors.errors import ConnectorError
from connectors.postgres import Postgres
from reconciler.errors import ConfigError, FatalError
from reconciler.observe.metrics import Metrics
from reconciler.ops.audit.auditor import DEFAULT_GRACE_SECONDS, DEFAULT_ROWS_PER_SECOND, Auditor
from reconciler.ops.audit.findings import AuditReport
from reconciler.ops.audit.targets import targets
from reconciler.pipeline.shards import ShardPool
from reconciler.settings import IMPLICIT_SOURCE, Settings, SourceSettings
from shard_map import ShardMapError, load_shard_map


def run_audit(settings: Settings, *, tables: Sequence[str] | None = None,
              sample: int | None = None, repair: bool = False,
              rows_per_second: float = DEFAULT_ROWS_PER_SECOND,
              grace_seconds: float = DEFAULT_GRACE_SECONDS) -> AuditReport:
    """Audit the chosen tables (all by default) on every shard of the shard map, against
    every source's database."""
    sources = settings.source_list()
    dsns = {source.name: source.postgres.dsn_value() for source in sources}
    if not all(dsns.values()):
        field = (f"sources[{', '.join(n for n, dsn in dsns.items() if not dsn)}].postgres"
                 if settings.sources else "postgres")
        raise ConfigError(f"{field}.dsn (or {field}.dsn_file) is required for audit: the "
                          "rows' versions are read from Postgres")
    chosen, skipped = targets(settings, tables)
    try:
        shard_map = load_shard_map(settings.shard_map)
    except ShardMapError as exc:
        raise ConfigError(f"shard_map: {exc}") from exc
    report = AuditReport(not_auditable=skipped, sample=sample, repair=repair,
                         sources=[source.name for source in sources])
    pool = ShardPool(settings, Metrics.create(CollectorRegistry()))
    pool.update(shard_map)
    began = time.monotonic()
    sessions: dict[str, Postgres] = {}
    try:
        for source in sources:
            sessions["" if len(sources) == 1 else source.name] = _connect(source)
    except FatalError:
        for session in sessions.values():
            session.close()
        pool.close()
        raise
    try:
        auditor = Auditor(dict(pool.clients()), sessions, sample=sample,
                          rows_per_second=rows_per_second, grace_seconds=grace_seconds,
                          user=settings.valkey.username or "default")
        report.findings = auditor.audit(chosen)
        if repair:
            auditor.repair(report.findings)
    finally:
        for session in sessions.values():
            session.close()
        pool.close()
        report.elapsed = time.monotonic() - began
    return report


def _connect(source: SourceSettings) -> Postgres:
    dsn = source.postgres.dsn_value()
    assert dsn is not None
    try:
        return Postgres(dsn)
    except ConnectorError as exc:
        where = f" (source {source.name})" if source.name != IMPLICIT_SOURCE else ""
        raise FatalError(f"audit{where}: {exc}") from exc
