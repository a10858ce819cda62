"""Doctor: a preflight checklist that catches misconfiguration before it bites.

Each check yields one line, ``OK | WARN | FAIL <check>: <detail> — <what to do>``:

- kafka: the brokers answer; every configured topic exists (or the regex matches
  some); every table has a topic; the dead-letter topic exists; the group's committed
  offsets are not below the log start (retention deleted changes it never processed).
- shards: each answers, runs Valkey/Redis ≥ 7 (Functions), has (or accepts) the
  functions library, and lets the ACL user run every command the reconciler and the
  functions need (ACL DRYRUN, else a harmless probe); what only audit needs is a WARN.
  A cluster shard: cluster_state ok with every slot served, then those checks on every
  node (the library on each primary) and the cluster's own commands (CLUSTER SLOTS,
  ASKING); a replica down is a WARN. A sentinel shard: its Sentinels answer (a refusal
  or an unknown service FAILs), agree on a primary none sees down, and have a replica
  to promote; then those checks on the primary.
- connect (optional ``connect.url``): the Debezium connector and its tasks RUNNING,
  and capturing every configured table; its ExtractNewRecordState settings against
  the topics' formats (``formats``).
- formats: each table read from a flattened topic, and whether it loses move
  detection (a template built from the shard key: WARN).
- postgres (optional ``postgres.dsn``): each table exists with its primary key, shard
  key and version column; a BEFORE UPDATE trigger bumps the version, and the version
  never goes back across a delete and re-insert (a sequence on INSERT and UPDATE, not
  ``DEFAULT 1`` plus ``OLD + 1``: a WARN with the SQL); the replica identity carries
  what deletes and moves need; a partitioned table's publishing mode (via the root, or
  per leaf: then every leaf matched by ``partitions``); the table is in the
  connector's publication; the replication slot is active and its retained WAL bounded.
- With several ``sources``, the connect and postgres checks run once per source (its
  connector, its database), each line named ``<source>/<check>``; kafka checks that
  every table has a consumed topic with each source's prefix.

Any FAIL makes the exit status non-zero. Checks never write, except loading the
functions library on a shard where it is missing (what the worker does on first use).
Modules, one per service: ``kafka``, ``valkey`` (the shards; ``cluster``, ``sentinel``
for those kinds), ``connect``, ``postgres``; ``formats`` (the topics' formats);
``checklist`` holds a line of the checklist (``Check``) and its rendering.
"""

from __future__ import annotations

import dataclasses

from reconciler.ops.doctor.checklist import Check
from reconciler.ops.doctor.connect import connect_checks
from reconciler.ops.doctor.formats import connector_checks, move_checks
from reconciler.ops.doctor.kafka import kafka_checks
from reconciler.ops.doctor.postgres import DEFAULT_MAX_RETAINED_WAL, postgres_checks
from reconciler.ops.doctor.valkey import shard_checks
from reconciler.settings import Settings, SourceSettings

__all__ = ["DEFAULT_MAX_RETAINED_WAL", "Doctor", "run_doctor"]


class Doctor:
    """Runs every check against the services the config names."""

    def __init__(self, settings: Settings, *,
                 max_retained_wal_bytes: int = DEFAULT_MAX_RETAINED_WAL) -> None:
        self.settings = settings
        self.max_retained_wal = max_retained_wal_bytes

    def run(self) -> list[Check]:
        checks = list(kafka_checks(self.settings))
        checks += move_checks(self.settings)
        checks += shard_checks(self.settings)
        for source in self.settings.source_list():
            checks += self._source(source)
        return checks

    def _source(self, source: SourceSettings) -> list[Check]:
        """A source's connector and database, its lines named after it when there are
        several sources."""
        checks: list[Check] = []
        connector: dict[str, str] | None = None
        for check in connect_checks(self.settings, source):
            if isinstance(check, dict):
                connector = check
            else:
                checks.append(check)
        checks += connector_checks(self.settings, connector)
        checks += postgres_checks(self.settings, connector, source=source,
                                  max_retained_wal_bytes=self.max_retained_wal)
        if not self.settings.sources:
            return checks
        return [dataclasses.replace(check, name=f"{source.name}/{check.name}")
                for check in checks]


def run_doctor(settings: Settings, *,
               max_retained_wal_bytes: int = DEFAULT_MAX_RETAINED_WAL) -> list[Check]:
    return Doctor(settings, max_retained_wal_bytes=max_retained_wal_bytes).run()
